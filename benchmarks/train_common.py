"""Shared set-up of the training benchmarks (bench_pt.py, bench_sft.py): one tiny model, real dialogues, child
processes (so each system's peak memory is its own), and the printed table."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ZHONGJING_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCES = [SHARED / "cmtmedqa_test" / "CMtMedQA_test.shared.json", SHARED / "covid_dialogue_zh" / "train_data.json"]


def multi_turn_dialogues(limit: int) -> list[dict]:
    """Real multi-turn dialogues (CMtMedQA test + COVID-Dialogue), interleaved; the demo dialogues without them."""
    from zhongjing.data.readers import read_dialogues

    sources = [s for s in SOURCES if s.exists()]
    if not sources:
        from zhongjing.demo import demo_path

        print(f"(shared data not found at {SHARED}: using the demo dialogues)")
        sources = [demo_path("dialogues")]
    per = [[d.to_dict() for d in read_dialogues(s) if d.is_multi_turn()] for s in sources]
    out, i = [], 0
    while len(out) < limit and any(i < len(p) for p in per):
        out += [p[i] for p in per if i < len(p)]
        i += 1
    return out[:limit]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def build_model(out: Path, rows: list[dict]) -> Path:
    """The init-model default shape (~5M parameters: 4 layers, hidden 256, vocab 8000), tokenizer trained on the data."""
    from zhongjing.model.init_model import InitModelConfig, build_model as build, train_tokenizer

    tok = train_tokenizer((m["content"] for r in rows for m in r["messages"]), vocab_size=8000)
    model = build(InitModelConfig(), tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(script: str, *args: str) -> dict:
    """Run `script args...` (a --child mode) and return the JSON dict it prints last."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def print_table(title: str, rows: list[tuple[str, dict]], metric: str, unit: str, extra: list[str]) -> None:
    base = rows[-1][1][metric]
    print(f"\n{title}  (load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; one run each)")
    head = f"| system | {unit} | ratio | " + " | ".join(extra) + " | peak RSS MiB |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, r in rows:
        cells = " | ".join(f"{r[k]:.1%}" if "fraction" in k else f"{r[k]:,.0f}" for k in extra)
        print(f"| {name} | {r[metric]:,.0f} | {r[metric] / base:.2f}× | {cells} | {r['peak_mib']:,.0f} |")


def our_steps(out: Path, skip: int) -> tuple[float, int, int]:
    """Seconds, trained targets and real tokens of our run's steps after the first `skip` (warm-up)."""
    rows = [json.loads(x) for x in (out / "logs" / "train.jsonl").read_text().splitlines()]
    kept = rows[skip:]
    return rows[-1]["elapsed"] - rows[skip - 1]["elapsed"], sum(r["trained"] for r in kept), sum(r["tokens"] for r in kept)
