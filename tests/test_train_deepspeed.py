"""DeepSpeed ZeRO on 2 CPU processes (gloo), launched the way users launch it (`accelerate launch --config_file
configs/accelerate/zero{2,3}_cpu.yaml -m zhongjing train ...`):
- ZeRO-2 and ZeRO-3 give the loss curve of one process with the same global batch (pt full fine-tuning with
  accumulation inside ZeRO, sft LoRA, dpo over a LoRA parent), and write a result folder that loads with plain
  transformers (+ peft for an adapter) and holds the same weights as the one-process run — under ZeRO-3 gathered
  from the shards;
- a ZeRO-2 run killed with SIGKILL after a checkpoint and resumed still gives that curve (the fp32 master weights
  and optimizer shards come back from DeepSpeed's own checkpoint);
- FSDP, which accelerate enables only on accelerators, is refused on CPU instead of silently running as DDP."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train_helpers import dialogues, tiny_model, write_docs, write_jsonl

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # 5 two-process launches: ~1.5 min on 2 idle cores
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


@pytest.mark.parametrize("stage,launch", [("sft", "zero2_cpu.yaml"), ("pt", "zero3_cpu.yaml")])
def test_zero_matches_one_process_and_saves_a_loadable_model(runs, stage, launch):
    """sft = LoRA adapter under ZeRO-2; pt = full weights under ZeRO-3, gathered from the shards at each checkpoint."""
    one = finished(stage, runs, None)
    same_as_one_process(finished(stage, runs, launch), one, "full" if stage == "pt" else "adapter")
    assert not torch.allclose(logits(one), logits(runs["base"]), atol=1e-2)  # it did train


def test_zero2_killed_and_resumed_matches_one_process(runs):
    """Full fine-tuning with accumulation inside ZeRO-2, SIGKILLed after a checkpoint and resumed: the fp32 master
    weights and optimizer shards come back from DeepSpeed's own checkpoint, so the curve is still one process's."""
    out = runs["dir"] / "pt-killed"
    proc = subprocess.Popen(command("pt", runs, out, "zero2_cpu.yaml"), env=ENV, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "checkpoints" / "step-000004" / "trainer" / "state.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both training processes
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "meta.json").exists()
    assert max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*")) < PT_STEPS

    again = subprocess.run(command("pt", runs, out, "zero2_cpu.yaml", "train.resume=true"), env=ENV,
                           capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout + again.stderr
    assert [json.loads(x)["step"] for x in (out / "logs" / "train.jsonl").read_text().splitlines()] == \
        list(range(1, PT_STEPS + 1))
    same_as_one_process(out, finished("pt", runs, None), "full")


def rankings(path: Path) -> Path:
    """K=3 rankings over templated dialogues: the real doctor answer > a follow-up question > "I don't know"."""
    rows = [{"id": d["id"], "messages": d["messages"][:-1], "ranking": [0, 2, 1],
             "responses": [d["messages"][-1]["content"], "不知道。", "请问有没有发烧？"]} for d in dialogues(100, seed=7)]
    return write_jsonl(path, rows)


def test_zero3_dpo_over_an_adapter_parent_matches_one_process(runs):
    """The parent is a LoRA adapter (the sft result), merged while loading: under ZeRO-3 the weights must load whole
    (accelerate would have transformers shard them while loading), and the new adapter equals one process's."""
    parent, data = finished("sft", runs, None), rankings(runs["dir"] / "rankings.jsonl")
    outs = []
    for launch in (None, "zero3_cpu.yaml"):
        out = runs["dir"] / f"dpo-{launch or 'one'}"
        cmd = command("sft", runs, out, launch)  # the same launcher, with dpo's own arguments
        cmd = cmd[:cmd.index("sft") - 1] + ["train", "dpo", f"model={parent}", f"data=[{data}]", f"output={out}",
                                            "max_length=256", "lora.dropout=0.0", "val_ratio=0.2",
                                            "train.max_steps=6", "train.eval_every=3", "train.batch_size=4",
                                            f"train.grad_accum={1 if launch else 2}", "train.lr=5e-3",
                                            "train.progress=false"] + ([] if launch else ["train.threads=1"])
        r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, cwd=REPO, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(out)
    same_as_one_process(outs[1], outs[0], "adapter")


def test_fsdp_on_cpu_is_refused_not_silently_ddp(monkeypatch):
    from zhongjing.errors import ConfigError
    from zhongjing.train.common import TrainSettings, make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for configs/accelerate/fsdp.yaml
    if torch.cuda.is_available():
        pytest.skip("has a GPU: FSDP runs there")
    with pytest.raises(ConfigError, match="zero3_cpu.yaml"):
        make_accelerator(TrainSettings())
