"""Shared by the DeepSpeed test files (tests/test_train_deepspeed*.py): the data, tiny model and memo of finished
runs, the launch command (one process, or two under `accelerate launch` with a DeepSpeed config, same global batch)
and the check that a ZeRO run equals the one-process run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_helpers import dialogues, tiny_model, write_docs, write_jsonl

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
PT_STEPS = 16


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Data, a tiny model and a memo of finished runs (several tests compare against the same reference)."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.fail("DeepSpeed is not installed: scripts/install.sh --dev "
                    "(or DS_BUILD_OPS=0 pip install -c constraints.txt 'zhongjing[deepspeed]')")
    d = tmp_path_factory.mktemp("ds")
    return {"dir": d, "base": tiny_model(d / "base"), "docs": write_docs(d / "docs.jsonl", 300),
            "dialogues": write_jsonl(d / "d.jsonl", dialogues(160, seed=4)), "done": {}}


def command(stage: str, runs: dict, out: Path, launch: str | None, *extra: str) -> list[str]:
    """One process with grad_accum 2× (pt: 4) or 2 processes under `launch` — the same global batch."""
    procs = 2 if launch else 1
    if stage == "pt":
        args = [f"data=[{{path: {runs['docs']}}}]", "block_size=64", "finetune=full", f"train.max_steps={PT_STEPS}",
                "train.save_every=4", "train.eval_every=8", f"train.grad_accum={4 // procs}"]
    else:  # LoRA dropout would draw differently on 1 and 2 processes
        args = [f"data=[{{path: {runs['dialogues']}}}]", "max_length=256", "finetune=lora", "lora.dropout=0.0",
                "batching=pad", "train.max_steps=8", "train.eval_every=4", f"train.grad_accum={2 // procs}"]
    args += [f"model={runs['base']}", f"output={out}", "train.batch_size=4", "train.lr=5e-3", "train.progress=false",
             "train.keep_checkpoints=1", *extra]
    if launch is None:
        return [sys.executable, "-m", "zhongjing", "train", stage, *args, "train.threads=1"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "configs" / "accelerate" / launch), "-m", "zhongjing", "train", stage, *args]


def finished(stage: str, runs: dict, launch: str | None) -> Path:
    key = (stage, launch)
    if key not in runs["done"]:
        out = runs["dir"] / f"{stage}-{launch or 'one'}"
        r = subprocess.run(command(stage, runs, out, launch), env=ENV, capture_output=True, text=True, cwd=REPO,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        runs["done"][key] = out
    return runs["done"][key]


def curve(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "logs" / "train.jsonl").read_text().splitlines()]


def logits(folder: Path) -> torch.Tensor:
    """The result folder through plain transformers (an adapter folder loads over its base via the PEFT integration);
    an adapter over an adapter (dpo over the sft result) through zhongjing's loader, which follows the chain."""
    from transformers import AutoModelForCausalLM

    from zhongjing.model.load import load_model

    chained = (folder / "adapter_config.json").exists() and \
        (Path(json.loads((folder / "meta.json").read_text())["base_model"]) / "adapter_config.json").exists()
    model = (load_model(folder) if chained else AutoModelForCausalLM.from_pretrained(folder)).eval()
    ids = torch.arange(3, 43).reshape(2, 20)
    with torch.no_grad():
        return model(input_ids=ids).logits


def same_as_one_process(zero: Path, one: Path, kind: str, rel: float = 1e-4) -> None:
    """Loss curve, best validation loss and the result folder's weights (through plain transformers) agree."""
    a, b = curve(one), curve(zero)
    assert len(b) == len(a) and b == pytest.approx(a, rel=rel)  # ZeRO-3 reduces in another order: not bit-identical
    assert a[-1] < a[0]
    ma, mb = (json.loads((d / "meta.json").read_text()) for d in (one, zero))
    assert mb["metrics"]["best_val_loss"] == pytest.approx(ma["metrics"]["best_val_loss"], rel=rel)
    assert mb["kind"] == kind
    assert torch.allclose(logits(zero), logits(one), atol=2e-3)
    last = sorted((zero / "checkpoints").glob("step-*"))[-1]
    shards = sorted(p.name for p in (last / "trainer" / "deepspeed").glob("*optim_states.pt"))
    assert len(shards) == 2, shards  # one optimizer shard per process, in DeepSpeed's own format


def rankings(path: Path) -> Path:
    """K=3 rankings over templated dialogues: the real doctor answer > a follow-up question > "I don't know"."""
    rows = [{"id": d["id"], "messages": d["messages"][:-1], "ranking": [0, 2, 1],
             "responses": [d["messages"][-1]["content"], "不知道。", "请问有没有发烧？"]} for d in dialogues(100, seed=7)]
    return write_jsonl(path, rows)
