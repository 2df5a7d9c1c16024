"""A real (briefly trained) reward model behind two issue-16 features: `zhongjing annotate suggest` writes its
pre-ranking into each Ranking, and `validation_judges` measures its agreement with human preference labels."""

from __future__ import annotations

import json

import pytest

from align_helpers import same_threads
from annotate_helpers import ranking_record
from zhongjing.annotate.cli import main as annotate_main

PAIRS = "zhongjing/demo/preference_pairs.jsonl"


@pytest.fixture(scope="module")
def rm(tiny_model_dir, tmp_path_factory):
    from zhongjing.model.lora import LoraSettings
    from zhongjing.train.common import TrainSettings
    from zhongjing.train.rm import RMConfig, train_rm

    out = tmp_path_factory.mktemp("rm") / "rm"
    cfg = RMConfig(model=str(tiny_model_dir), data=[PAIRS], output=str(out), val_ratio=0.25, max_length=256,
                   lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                   train=TrainSettings(lr=1e-3, epochs=1, batch_size=4, progress=False, warmup_ratio=0.0, threads=1))
    with same_threads():
        train_rm(cfg)
    return out


def test_suggest_adds_the_reward_models_order(rm, tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(ranking_record(i), ensure_ascii=False) + "\n" for i in range(3)), encoding="utf-8")
    assert annotate_main(["suggest", "--reward-model", str(rm), str(src), str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    for r in rows:
        sug = r["meta"]["suggestion"]
        assert sorted(i for g in sug["ranking"] for i in g) == [0, 1, 2, 3] and sug["source"] == str(rm)
        best = sug["ranking"][0][0]
        assert sug["scores"][best] == max(sug["scores"]) and r["meta"]["department"] == "呼吸内科"  # meta kept


def test_reward_model_judge_is_validated_on_human_labels(rm, tmp_path):
    from zhongjing.eval.run import EvalConfig, JudgeConfig, validate_judge
    from zhongjing.eval.validation import JudgeValidationConfig
    from zhongjing.llm.cache import Cache

    cfg = EvalConfig(judge_validation=JudgeValidationConfig(files=[PAIRS]),
                     validation_judges=[JudgeConfig(backend="reward_model", reward_model=str(rm))],
                     report=EvalConfig().report)
    cfg.report.bootstrap = 50
    with Cache(tmp_path / "c.sqlite") as cache:
        (row,) = validate_judge(cfg, None, cache)  # no primary judge: only the RM is checked
    assert not row["primary"] and row["n"] == 16 and row["position_consistency"] is None
    assert "reward model" in row["judge"] and 0 <= row["agreement"] <= 1
