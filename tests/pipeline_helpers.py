"""The pipeline tests' shared pieces: configs/demo.yaml shrunk to a tiny model, and how a test runs the pipeline.

A session fixture (conftest.py `tiny_pipeline`) owns one work dir: test_pipeline.py kills and resumes a first run
in it, test_pipeline_reruns.py then changes, selects and reruns stages in the finished work dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO

DEMO = REPO / "zhongjing" / "demo"
ORDER = ["init", "build", "pt", "sft", "generate", "rank", "rm", "ppo", "eval"]


def tiny_config(work: Path) -> dict:
    """configs/demo.yaml shrunk: a 2-layer model, a few dozen dialogues, a handful of steps per stage."""
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    cfg["work_dir"] = str(work)
    cfg["splits"] |= {"generate": "train", "generate_limit": 12, "ppo_limit": 8, "test_limit": 3}
    cfg["init"] |= {"vocab_size": 600, "hidden_size": 64, "num_layers": 2, "num_heads": 2, "num_kv_heads": 2,
                    "intermediate_size": 176, "max_position_embeddings": 512}
    cfg["build"]["inputs"] = [{"path": str(DEMO / "dialogues.jsonl"), "limit": 48},
                              {"path": str(DEMO / "single_turn.jsonl"), "limit": 8}]
    cfg["pt"] |= {"block_size": 128, "data": [{"path": str(DEMO / "kg.jsonl"), "name": "kg"}]}
    cfg["pt"]["train"] |= {"max_steps": 4, "batch_size": 4, "eval_every": 2, "max_eval_batches": 2}
    cfg["sft"] |= {"max_length": 320}
    # checkpoints every step, so the kill below always finds one to resume from
    cfg["sft"]["train"] |= {"max_steps": 8, "batch_size": 2, "eval_every": 4, "save_every": 1,
                            "max_eval_batches": 2}
    cfg["generate"] |= {"max_new_tokens": 16, "max_length": 320}
    cfg["rm"] |= {"max_length": 256}
    cfg["rm"]["train"] |= {"max_steps": 3, "batch_size": 2}
    cfg["ppo"] = tiny_ppo(cfg.get("ppo") or {})
    cfg["eval"]["testsets"] = [{"name": "safety", "path": str(DEMO / "safety.jsonl"), "format": "dialogue",
                                "limit": 2}]
    cfg["eval"]["exams"] = [{"name": "exam", "path": str(DEMO / "exam.jsonl"), "format": "exam", "limit": 4,
                             "shots": [0]}]
    cfg["eval"] |= {"generation": {"max_new_tokens": 12, "batch_size": 8, "max_length": 320},
                    "report": {"examples": 1, "bootstrap": 50}}
    cfg["init"]["corpus"] = [str(DEMO / "corpus")]
    cfg["build"]["kg"]["path"] = str(DEMO / "kg.jsonl")
    cfg["rank"]["kg"] = str(DEMO / "kg.jsonl")
    cfg["eval"]["judge"]["rubric_kg"] = str(DEMO / "kg.jsonl")
    return cfg


def tiny_ppo(section: dict) -> dict:
    """The demo's ppo section with two updates of 4 answers."""
    section = dict(section) | {"eval_prompts": 4, "max_length": 320, "rollout_prompts": 0}  # 0: batch_size × grad_accum
    section["generation"] = dict(section.get("generation") or {}) | {"max_new_tokens": 12}
    section["train"] = dict(section.get("train") or {}) | {"max_steps": 2, "batch_size": 4, "grad_accum": 1}
    return section


def run(cfg_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "zhongjing", "pipeline", "--config", str(cfg_path), *args],
                       cwd=REPO, env=command_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"pipeline {args} failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p


def actions(work: Path) -> dict[str, str]:
    return {r["stage"]: r["action"] for r in json.loads((work / "summary.json").read_text())["stages"]}


def state(work: Path) -> dict:
    return json.loads((work / "pipeline-state.json").read_text())["stages"]


def write_tiny_config(root: Path) -> tuple[Path, Path]:
    """(the config file, its work dir) under `root`."""
    work = root / "work"
    cfg_path = root / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(work), allow_unicode=True), encoding="utf-8")
    return cfg_path, work


def command_env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
