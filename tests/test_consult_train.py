"""train consult: RLVR on a planted easy exam raises accuracy; kill + resume repeats the same losses; each estimator
trains end to end on consultation episodes (2-layer model)."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from align_helpers import keep_threads, same_threads, write_jsonl  # noqa: F401
from zhongjing.config import load_config
from zhongjing.consult.loop import run_consult
from zhongjing.consult.rewards import answer_letter, exam_prompt
from zhongjing.consult.trainer import ConsultConfig
from zhongjing.errors import ConfigError

pytestmark = pytest.mark.usefixtures("keep_threads")
DEMO_EXAM = "zhongjing/demo/exam.jsonl"


@pytest.fixture(scope="module")
def planted(tiny_model_dir, tmp_path_factory):
    """An exam whose key is always B (planted, easy) and a tiny model fine-tuned to answer '答案：X' with a random
    letter: it has the format but no knowledge, so accuracy starts near chance."""
    from zhongjing.train.sft import SFTConfig, run

    d = tmp_path_factory.mktemp("rlvr")
    qs = [json.loads(x) for x in open(DEMO_EXAM, encoding="utf-8")]
    qs = [q | {"answer": "B"} for q in qs if "B" in q["options"]]
    exam = write_jsonl(d / "exam.jsonl", qs)
    rnd = random.Random(0)
    sft = write_jsonl(d / "sft.jsonl", [
        {"id": f"s{i}", "messages": [{"role": "user", "content": exam_prompt(q["question"], q["options"])},
                                     {"role": "assistant", "content": rnd.choice("ABCD")}]}
        for i, q in enumerate(qs * 4)])
    cfg = load_config(SFTConfig, overrides=[
        f"model={tiny_model_dir}", f"output={d / 'sft'}", f"data=[{{path: {sft}}}]", "finetune=full",
        "max_length=256", "train.epochs=2", "train.lr=1e-2", "train.batch_size=16", "train.progress=false",
        "train.warmup_ratio=0", "train.threads=1"])
    with same_threads():
        run(cfg)
    return d / "sft", exam


def exam_cfg(planted, out, *extra):
    model, exam = planted
    return load_config(ConsultConfig, overrides=[
        f"model={model}", f"cases={exam}", "env=exam", f"output={out}", "estimator=grpo", "group_size=8",
        "cases_per_update=4", "eval_cases=16", "episode.max_new_tokens=6", "max_length=256", "beta=0.0",
        "train.batch_size=32", "train.lr=3e-3", "train.progress=false", "train.threads=1", *extra])


def test_rlvr_raises_accuracy_on_planted_exam(planted, tmp_path):
    out = run_consult(exam_cfg(planted, tmp_path / "rlvr", "train.max_steps=8", "train.eval_every=8", "train.lr=2e-2",
                               "update_epochs=2"))
    ev = [json.loads(x) for x in (out / "logs" / "eval.jsonl").read_text().splitlines()]
    assert ev[0]["eval_reward_format"] > 0.5  # the SFT model already answers in the format
    assert ev[-1]["eval_reward_correct"] >= ev[0]["eval_reward_correct"] + 0.25, ev  # measured 0.125 → 0.5625
    assert ev[-1]["eval_kl"] < 2.0  # bounded: it moved towards B, it did not collapse
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["stage"] == "consult" and meta["step"] == 8


def test_kill_and_resume_gives_the_same_losses(planted, tmp_path):
    args = ("train.max_steps=2", "train.save_every=1", "estimator=reinforce_pp", "group_size=4", "cases_per_update=2",
            "eval_cases=4")
    a = run_consult(exam_cfg(planted, tmp_path / "a", *args))
    b = tmp_path / "b"
    run_consult(exam_cfg(planted, b, *args))
    # as if killed after update 1: the later checkpoint, its log line and the output are gone
    for p in sorted((b / "checkpoints").iterdir())[1:]:
        shutil.rmtree(p)
    (b / "meta.json").unlink()
    lines = (b / "logs" / "train.jsonl").read_text().splitlines()
    (b / "logs" / "train.jsonl").write_text(lines[0] + "\n")
    run_consult(exam_cfg(planted, b, *args, "train.resume=true"))
    la = [json.loads(x) for x in (a / "logs" / "train.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (b / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [1, 2]
    for x, y in zip(la, lb):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6) and x["reward"] == y["reward"]


def test_letters_and_config_errors():
    assert answer_letter("答案：C") == "C" and answer_letter("我选 B 吧") == "B" and answer_letter("不知道") is None
    with pytest.raises(ConfigError, match="estimator"):
        load_config(ConsultConfig, overrides=["estimator=vtrace"])
    with pytest.raises(ConfigError, match="group_size"):
        load_config(ConsultConfig, overrides=["estimator=rloo", "group_size=1"])
