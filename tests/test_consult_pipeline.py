"""The consult stage is one opt-in row of the pipeline: wired from the SFT doctor and the built train split, and eval
then plays the consultation kind on the built test split with the consult model among the compared ones."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(overrides):
    from zhongjing.pipeline.run import build_configs, load_pipeline_config

    return build_configs(load_pipeline_config(str(REPO / "configs" / "demo.yaml"), overrides))


def test_consult_stage_wiring(tmp_path):
    w, configs = _load([f"work_dir={tmp_path}", "stages=[init,build,pt,sft,generate,rank,rm,ppo,consult,eval]",
                        "consult.estimator=rloo"])
    c = configs["consult"]
    assert type(c).__name__ == "ConsultConfig" and c.estimator == "rloo"
    assert c.model == str(tmp_path / "sft") and c.dialogues == [str(tmp_path / "data" / "train.jsonl")]
    ev = configs["eval"]
    assert [m.name for m in ev.models][:3] == ["aligned", "consult", "sft"]
    assert ev.consultation.dialogues == [str(tmp_path / "data" / "test.jsonl")]
    assert ev.consultation.target == "consult"  # the consult model's advice is judged against the others'


def test_consult_is_opt_in(tmp_path):
    from zhongjing.pipeline.run import PipelineConfig

    assert "consult" not in PipelineConfig().stages
    w, configs = _load([f"work_dir={tmp_path}"])
    assert "consult" not in configs and not configs["eval"].consultation.dialogues
