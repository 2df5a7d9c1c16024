"""DeepSpeed ZeRO on 2 CPU processes (gloo), continued from tests/test_train_deepspeed.py:
- a ZeRO-2 run killed with SIGKILL after a checkpoint and resumed still gives the one-process curve (the fp32 master
  weights and optimizer shards come back from DeepSpeed's own checkpoint);
- dpo over a LoRA parent under ZeRO-3 equals one process's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.deepspeed_helpers import (ENV, PT_STEPS, REPO, command, finished, rankings, runs,  # noqa: F401 (runs)
                                     same_as_one_process)

pytestmark = pytest.mark.slow  # 3 two-process launches + 3 one-process runs


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
