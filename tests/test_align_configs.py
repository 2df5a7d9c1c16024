"""The paper recipe configs of the alignment stages carry Table 4 (RM and PPO columns)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zhongjing.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("stage, table4", [("rm", (1e-4, 16, 10, 32, 4)), ("ppo", (5e-5, 16, 2, 8, 4))])
def test_paper_table_4(stage, table4):
    from zhongjing.train.ppo import PPOConfig
    from zhongjing.train.rm import RMConfig

    cfg = load_config({"rm": RMConfig, "ppo": PPOConfig}[stage], CONFIGS / "paper" / f"{stage}.yaml")
    t = cfg.train
    assert (t.lr, cfg.lora.r, t.epochs, t.batch_size, t.grad_accum) == table4
    assert cfg.max_length == 4096 and cfg.dtype == "float16"
    if stage == "rm":
        assert cfg.model.endswith("pt") and cfg.pair_norm == "ckn" and cfg.val_ratio == 0.1
    else:
        assert cfg.model.endswith("sft") and cfg.reward.rm


@pytest.mark.parametrize("name", ["rm", "dpo", "ppo", "grpo"])
def test_demo_configs_parse(name):
    from zhongjing.train import dpo, grpo, ppo, rm

    cls = {"rm": rm.RMConfig, "dpo": dpo.DPOConfig, "ppo": ppo.PPOConfig, "grpo": grpo.GRPOConfig}[name]
    cfg = load_config(cls, CONFIGS / "demo" / f"{name}.yaml")
    assert cfg.output.startswith("runs/demo/")
