"""GRPO: groups of K answers per prompt, group-normalised advantages, no critic; a rule reward for follow-up
questions raises the ask rate on held-out prompts with KL bounded."""

from __future__ import annotations

import json

import pytest

from align_helpers import keep_threads, medical_base, sft_policy  # noqa: F401
from zhongjing.config import load_config
from zhongjing.errors import ConfigError
from zhongjing.train.grpo import GRPOConfig, train_grpo

pytestmark = pytest.mark.usefixtures("keep_threads")


def test_question_reward_raises_ask_rate(sft_policy, tmp_path):
    cfg = load_config(GRPOConfig, overrides=[
        f"model={sft_policy}", f"prompts={sft_policy.parent / 'short.jsonl'}", f"output={tmp_path / 'grpo'}",
        "reward.ask_question=1.0", "grpo.group_size=4", "eval_prompts=32", "max_length=128",
        "generation.max_new_tokens=24", "train.batch_size=16", "train.grad_accum=1", "train.max_steps=10",
        "train.lr=1e-3", "train.eval_every=10", "train.progress=false", "train.threads=1"])
    out = train_grpo(cfg)
    ev = [json.loads(x) for x in (out / "logs" / "eval.jsonl").read_text().splitlines()]
    train = [json.loads(x) for x in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert ev[-1]["eval_reward_asks_question"] >= ev[0]["eval_reward_asks_question"] + 0.2, ev
    assert all(r["kl"] < 8.0 for r in train) and all("kl_ref" in r and "groups_without_signal" in r for r in train)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["stage"] == "grpo" and meta["critic"] is None and not (out / "value_head.safetensors").exists()
    assert meta["counts"]["train_prompts"] > 0 and meta["step"] == 10


def test_group_of_one_is_refused():
    with pytest.raises(ConfigError, match="group_size"):
        load_config(GRPOConfig, overrides=["grpo.group_size=1"])


def test_resume_on_other_prompts_is_refused(sft_policy, tmp_path):
    # every other stage refuses to resume on changed data (the saved position would mean nothing); ppo/grpo resumed
    import shutil

    from zhongjing.errors import ZhongjingError

    prompts = sft_policy.parent / "short.jsonl"
    other = tmp_path / "other.jsonl"
    shutil.copy(prompts, other)
    other.write_text("\n".join(prompts.read_text(encoding="utf-8").splitlines()[:-1]) + "\n", encoding="utf-8")

    def cfg(p, resume):
        return load_config(GRPOConfig, overrides=[
            f"model={sft_policy}", f"prompts={p}", f"output={tmp_path / 'grpo'}", "grpo.group_size=2",
            "reward.ask_question=1.0",
            "eval_prompts=2", "max_length=128", "generation.max_new_tokens=8", "train.batch_size=4",
            "train.max_steps=1", "train.progress=false", "train.threads=1", f"train.resume={resume}"])

    train_grpo(cfg(prompts, False))
    with pytest.raises(ZhongjingError, match="data changed"):
        train_grpo(cfg(other, True))
