"""Shared pieces of the alignment tests: a tiny model whose tokenizer knows the shared medical text, and real
dialogues from the shared data (tests may read ../shared/data; the package never does)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, TINY

CMTMEDQA = SHARED_DATA / "cmtmedqa_test" / "CMtMedQA_test.shared.json"
MEDICAL_PAIRS = SHARED_DATA / "medicalgpt_samples" / "reward_medical_test.json"


def need_shared(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shared data not found: {', '.join(missing)} (set ZHONGJING_SHARED_DATA)")


def real_dialogues(limit: int | None = None):
    from zhongjing.data.readers import read_dialogues

    need_shared(CMTMEDQA)
    out = [d for d in read_dialogues(CMTMEDQA) if d.messages[-1].role == "assistant"]
    return out[:limit] if limit else out


def build_tiny(out: Path, texts: list[str], seed: int = 0) -> Path:
    """A tiny LLaMA (random weights) with a byte-level BPE tokenizer trained on `texts`; a normal HF folder."""
    from zhongjing.model.init_model import InitModelConfig, build_model, train_tokenizer

    tok = train_tokenizer(texts, TINY["vocab_size"], 2)
    model = build_model(InitModelConfig(seed=seed, **{k: v for k, v in TINY.items() if k != "vocab_size"}), tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "meta.json").write_text(json.dumps({"stage": "init-model", "kind": "base"}), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def medical_base(tmp_path_factory) -> Path:
    """Tiny base model whose tokenizer was trained on shared medical dialogues and preference pairs."""
    need_shared(CMTMEDQA, MEDICAL_PAIRS)
    texts = [m.content for d in real_dialogues() for m in d.messages]
    for line in MEDICAL_PAIRS.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        texts += [r["question"], r["response_chosen"], r["response_rejected"]]
    return build_tiny(tmp_path_factory.mktemp("align") / "base", texts)


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r.to_dict() if hasattr(r, "to_dict") else r, ensure_ascii=False) + "\n")
    return path


def run_cli(*args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "zhongjing", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **popen)


def kill_when(cmd: list[str], ready, timeout: float = 120) -> int:
    """Start `zhongjing cmd`, SIGKILL it as soon as ready() is true; returns its exit code (negative: killed)."""
    import time

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    p = subprocess.Popen([sys.executable, "-m", "zhongjing", *cmd], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while p.poll() is None and time.time() - t0 < timeout:
            if ready():
                p.kill()
                break
            time.sleep(0.05)
        return p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()


def short_turns(limit: int = 40, n_statements: int = 600) -> list[dict]:
    """(patient turn, one short doctor sentence) dialogues from real data: every doctor question sentence there is
    (about a third of the set), then plain statements — a starting policy that sometimes asks, sometimes not."""
    import re

    questions, statements = [], []
    for d in real_dialogues():
        msgs = d.messages
        for i in range(len(msgs) - 1):
            if msgs[i].role != "user" or msgs[i + 1].role != "assistant":
                continue
            parts = [p for p in re.split(r"(?<=[。？！])", msgs[i + 1].content) if p.strip()]
            asked = [p for p in parts if "？" in p and len(p) <= limit]
            reply, pool = (asked[0], questions) if asked else (parts[0][:limit], statements)
            pool.append({"id": f"{d.id}-{i}", "messages": [{"role": "user", "content": msgs[i].content[:60]},
                                                          {"role": "assistant", "content": reply}]})
    return questions + statements[:n_statements]


@pytest.fixture(scope="session")
def sft_policy(medical_base, tmp_path_factory) -> Path:
    """The tiny base briefly fine-tuned (full) on short real doctor replies: it writes short Chinese-like replies,
    a minority of them questions. The starting policy of the PPO/GRPO tests."""
    from zhongjing.config import load_config
    from zhongjing.train.sft import SFTConfig, run

    d = tmp_path_factory.mktemp("sft")
    data = write_jsonl(d / "short.jsonl", short_turns())
    cfg = load_config(SFTConfig, overrides=[
        f"model={medical_base}", f"output={d / 'sft'}", f"data=[{{path: {data}}}]", "finetune=full", "max_length=128",
        "train.epochs=3", "train.lr=3e-3", "train.batch_size=16", "train.progress=false", "train.warmup_ratio=0",
        "train.threads=1"])
    with same_threads():
        run(cfg)
    return d / "sft"


@contextlib.contextmanager
def same_threads():
    """Stages set torch's thread count for the whole process (train.threads); put it back afterwards."""
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=False)
def keep_threads():
    with same_threads():
        yield
