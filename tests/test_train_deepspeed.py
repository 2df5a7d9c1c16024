"""DeepSpeed ZeRO on 2 CPU processes (gloo), launched the way users launch it (`accelerate launch --config_file
configs/accelerate/zero{2,3}_cpu.yaml -m zhongjing train ...`):
- ZeRO-2 (sft LoRA) and ZeRO-3 (pt full fine-tuning with accumulation inside ZeRO) give the loss curve of one
  process with the same global batch, and write a result folder that loads with plain transformers (+ peft for an
  adapter) and holds the same weights as the one-process run — under ZeRO-3 gathered from the shards;
- FSDP, which accelerate enables only on accelerators, is refused on CPU instead of silently running as DDP.
Resume after SIGKILL and dpo over an adapter parent: tests/test_train_deepspeed_resume.py."""

from __future__ import annotations

import pytest
import torch

from tests.deepspeed_helpers import finished, logits, runs, same_as_one_process  # noqa: F401 (runs: fixture)

pytestmark = pytest.mark.slow  # 2 two-process launches + 2 one-process runs


@pytest.mark.parametrize("stage,launch", [("sft", "zero2_cpu.yaml"), ("pt", "zero3_cpu.yaml")])
def test_zero_matches_one_process_and_saves_a_loadable_model(runs, stage, launch):
    """sft = LoRA adapter under ZeRO-2; pt = full weights under ZeRO-3, gathered from the shards at each checkpoint."""
    one = finished(stage, runs, None)
    same_as_one_process(finished(stage, runs, launch), one, "full" if stage == "pt" else "adapter")
    assert not torch.allclose(logits(one), logits(runs["base"]), atol=1e-2)  # it did train


def test_fsdp_on_cpu_is_refused_not_silently_ddp(monkeypatch):
    from zhongjing.errors import ConfigError
    from zhongjing.train.common import TrainSettings, make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for configs/accelerate/fsdp.yaml
    if torch.cuda.is_available():
        pytest.skip("has a GPU: FSDP runs there")
    with pytest.raises(ConfigError, match="zero3_cpu.yaml"):
        make_accelerator(TrainSettings())
