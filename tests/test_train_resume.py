"""A run killed with SIGKILL after a checkpoint and resumed gives the same per-step losses as an uninterrupted run
(weights, optimizer, schedule, RNG — LoRA dropout draws from it — and the data position all come back)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train_helpers import dialogues, tiny_model, write_docs, write_jsonl

REPO = Path(__file__).resolve().parents[1]
STEPS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    return {"base": tiny_model(d / "base"), "dialogues": write_jsonl(d / "d.jsonl", dialogues(200, seed=2)),
            "docs": write_docs(d / "docs.jsonl", 150)}


def command(stage: str, setup: dict, out: Path, *extra: str) -> list[str]:
    common = [f"model={setup['base']}", f"output={out}", f"train.max_steps={STEPS}", "train.save_every=5",
              "train.eval_every=15", "train.batch_size=4", "train.grad_accum=2", "train.lr=5e-3",
              "train.threads=1", "train.progress=false", "train.keep_checkpoints=1"]
    if stage == "sft":  # LoRA with dropout 0.1: the resumed run must continue the same random stream
        args = [f"data=[{{path: {setup['dialogues']}}}]", "max_length=256", "finetune=lora"]
    else:
        args = [f"data=[{{path: {setup['docs']}}}]", "block_size=64", "finetune=full"]
    return [sys.executable, "-m", "zhongjing", "train", stage, *args, *common, *extra]


def losses(out: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(x) for x in (out / "logs" / "train.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"]) for r in rows]


@pytest.mark.parametrize("stage", ["sft", "pt"])
def test_kill_and_resume_reproduces_the_uninterrupted_run(setup, tmp_path, stage):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ref = tmp_path / "ref"
    subprocess.run(command(stage, setup, ref), check=True, env=env, capture_output=True, cwd=REPO)

    out = tmp_path / "killed"
    proc = subprocess.Popen(command(stage, setup, out), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "checkpoints" / "step-000010" / "trainer" / "state.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "meta.json").exists()  # a killed run never looks finished
    done = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*")]
    assert max(done) < STEPS

    again = subprocess.run(command(stage, setup, out, "train.resume=true"), env=env, capture_output=True,
                           text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr
    got, want = losses(out), losses(ref)
    assert [s for s, _, _ in got] == list(range(1, STEPS + 1))
    for (s, l1, lr1), (_, l2, lr2) in zip(got, want):
        assert l1 == pytest.approx(l2, rel=1e-6, abs=1e-7), f"step {s}"
        assert lr1 == pytest.approx(lr2, rel=1e-9)
    a, b = (json.loads((d / "meta.json").read_text()) for d in (out, ref))
    assert a["best_step"] == b["best_step"] and a["inputs_hash"] == b["inputs_hash"]
    assert a["metrics"]["best_val_loss"] == pytest.approx(b["metrics"]["best_val_loss"], rel=1e-6)


def test_a_damaged_checkpoint_is_named_in_one_line_and_the_one_before_still_resumes(setup, tmp_path):
    """Checkpoints are written atomically, so a damaged one is a disk's or a hand's doing: resuming from it ended in a
    JSONDecodeError / torch / safetensors traceback. Now one line names the folder, the file and the ways out."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "run"
    first = command("sft", setup, out, "train.keep_checkpoints=2")
    first[first.index(f"train.max_steps={STEPS}")] = "train.max_steps=10"
    subprocess.run(first, check=True, env=env, capture_output=True, cwd=REPO)
    last = out / "checkpoints" / "step-000010"
    for damage, named in ((last / "trainer" / "optimizer-0.pt", "optimizer-0.pt:"),
                          (last / "trainer" / "state.json", "state.json:"),
                          (next(last.glob("*.safetensors")), "SafetensorError")):
        good = damage.read_bytes()
        damage.write_bytes(good[: len(good) // 3])
        r = subprocess.run(command("sft", setup, out, "train.resume=true"), env=env, capture_output=True, text=True,
                           cwd=REPO)
        damage.write_bytes(good)
        line = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert line.startswith(f"zhongjing: error: {last}: cannot resume from this checkpoint (") and named in line
        assert "delete this folder to resume from the one before it" in line, line
    (last / "trainer" / "rng-0.pt").unlink()  # a missing file is named too ...
    r = subprocess.run(command("sft", setup, out, "train.resume=true"), env=env, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "(rng-0.pt is missing)" in r.stderr, r.stderr[-1500:]
    import shutil

    shutil.rmtree(last)  # ... and the way out it names works
    r = subprocess.run(command("sft", setup, out, "train.resume=true"), env=env, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and f"resumed from {out / 'checkpoints' / 'step-000005'} (step 5)" in r.stderr, r.stderr[-1500:]
