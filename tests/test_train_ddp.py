"""The same command under `accelerate launch` with 2 CPU processes (gloo) gives the loss curve of 1 process with the
same global batch: each process takes every 2nd micro-batch and the loss is normalised by the global token count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_helpers import dialogues, tiny_model, write_docs, write_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    return {"base": tiny_model(d / "base"), "docs": write_docs(d / "docs.jsonl", 150),
            "dialogues": write_jsonl(d / "d.jsonl", dialogues(160, seed=4))}


def args(stage, setup, out, grad_accum):
    data = setup["docs"] if stage == "pt" else setup["dialogues"]
    extra = ["block_size=64", "finetune=full"] if stage == "pt" else \
        ["max_length=256", "finetune=lora", "lora.dropout=0.0", "batching=pad"]  # dropout would differ per process
    return ["train", stage, f"model={setup['base']}", f"output={out}", f"data=[{{path: {data}}}]", *extra,
            "train.max_steps=8", "train.eval_every=4", "train.batch_size=4", f"train.grad_accum={grad_accum}",
            "train.lr=5e-3", "train.progress=false"]


def curve(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "logs" / "train.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage", ["pt", "sft"])
def test_two_processes_match_one(setup, tmp_path, stage):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    one = tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", "zhongjing", *args(stage, setup, one, 2), "train.threads=1"],
                       env=env, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    two = tmp_path / "two"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "configs" / "accelerate" / "cpu_ddp2.yaml"), "-m", "zhongjing", *args(stage, setup, two, 1)]
    r = subprocess.run(launch, env=env, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = curve(one), curve(two)
    assert len(a) == len(b) == 8
    assert b == pytest.approx(a, rel=2e-4)
    assert a[-1] < a[0]
    ma, mb = (json.loads((d / "meta.json").read_text()) for d in (one, two))
    assert mb["metrics"]["best_val_loss"] == pytest.approx(ma["metrics"]["best_val_loss"], rel=2e-4)
    assert [h["val_n"] for h in mb["metrics"]["history"]] == [h["val_n"] for h in ma["metrics"]["history"]]


def test_ppo_under_two_processes_measures_the_whole_rollout(setup, tmp_path):
    """Each process samples its share of the prompts; the logged numbers (and the adaptive KL controller) must be
    those of the whole rollout, not of rank 0's share."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = tmp_path / "ppo"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "configs" / "accelerate" / "cpu_ddp2.yaml"), "-m", "zhongjing", "train", "ppo",
              f"model={setup['base']}", f"prompts={setup['dialogues']}", f"output={out}", "eval_prompts=6",
              "max_length=192", "generation.max_new_tokens=8", "train.batch_size=4", "train.grad_accum=1",
              "train.max_steps=2", "train.eval_every=2", "train.progress=false", "ppo.kl_target=1.0",
              "reward.ask_question=1.0"]
    r = subprocess.run(launch, env=env, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    ev = [json.loads(x) for x in (out / "logs" / "eval.jsonl").read_text().splitlines()]
    tr = [json.loads(x) for x in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert [e["eval_answers"] for e in ev] == [6, 6]  # 3 held-out prompts per process, counted together
    assert len(tr) == 2 and all(t["answers"] == 4 for t in tr)  # rollout_prompts = 4 per update, 2 per process
    assert tr[0]["kl_coef"] != tr[1]["kl_coef"] or tr[0]["kl"] == 1.0  # the controller moved


def test_bare_num_processes_on_cpu_is_refused_not_run_as_one_process(monkeypatch):
    # `accelerate launch --num_processes 2 -m zhongjing ...` without a config on a GPU-less machine takes accelerate's
    # simple launcher: one process, only MASTER_ADDR set — it trained quietly with half the intended global batch
    from zhongjing.errors import ConfigError
    from zhongjing.train.common import TrainSettings, make_accelerator

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(ConfigError, match="cpu_ddp2.yaml"):
        make_accelerator(TrainSettings())
