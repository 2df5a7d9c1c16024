"""Every YAML under configs/ parses into the dataclass of its stage; the paper configs carry Table 4.

A YAML's stage is declared by a comment line `# stage: <command words>` (e.g. `# stage: train sft`) or implied
by its file name: `sft.yaml` → `zhongjing train sft`, `eval.example.yaml` → `zhongjing eval`. The stage's config
class is the dataclass named `<Stage>Config` in the command's module (PTConfig, SFTConfig, EvalConfig, ...).
Files under configs/accelerate/ are accelerate launch configs.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from zhongjing.cli import COMMANDS
from zhongjing.config import load_config

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "accelerate" not in p.parts)
ACCELERATE = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


def stage_of(path: Path) -> str:
    m = re.search(r"^#\s*stage:\s*(.+)$", path.read_text(encoding="utf-8"), re.M)
    if m:
        return m.group(1).strip()
    stem = path.name.split(".")[0]
    for words in (f"train {stem}", stem):
        if words in COMMANDS:
            return words
    raise AssertionError(f"{path}: cannot tell its stage; add a '# stage: <command>' line")


def config_class(words: str):
    module = importlib.import_module(COMMANDS[words][0])
    want = words.split()[-1].replace("-", "").lower() + "config"
    found = [v for k, v in vars(module).items() if k.lower() == want and dataclasses.is_dataclass(v)]
    assert found, f"{module.__name__} has no dataclass named like {want!r}"
    return found[0]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_parses_into_its_stage(path):
    cls = config_class(stage_of(path))
    cfg = load_config(cls, path)
    assert isinstance(cfg, cls)


PAPER = {  # Table 4: lr, LoRA rank, epochs, batch, accumulation
    "pt": (5e-5, 32, 4, 16, 4),
    "sft": (7e-5, 16, 3, 16, 4),
}


@pytest.mark.parametrize("stage", sorted(PAPER))
def test_paper_configs_follow_table_4(stage):
    path = REPO / "configs" / "paper" / f"{stage}.yaml"
    cfg = load_config(config_class(f"train {stage}"), path)
    t = cfg.train
    assert (t.lr, cfg.lora.r, t.epochs, t.batch_size, t.grad_accum) == PAPER[stage]
    assert cfg.lora.dropout == 0.1 and cfg.val_fraction == 0.1
    if stage == "sft":
        assert cfg.max_length == 4096 and cfg.mix["multi"] / cfg.mix["single"] == 7 and cfg.finetune == "lora"


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 2
    if path.name == "zero2.yaml":  # the paper: 4 GPUs, fp16, ZeRO-2, accumulation as in configs/paper
        assert (cfg.distributed_type.value, cfg.mixed_precision, cfg.num_processes) == ("DEEPSPEED", "fp16", 4)
        assert cfg.deepspeed_config["zero_stage"] == 2 and cfg.deepspeed_config["gradient_accumulation_steps"] == 4
