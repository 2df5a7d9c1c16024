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


THREADS = 1  # one torch thread per system: on a shared, oversubscribed machine 2 OpenMP threads spin and the
# speed of a run swings by several times; with 1 thread the CPU seconds a step costs stay stable


class StepClock:
    """(wall, CPU) time at the end of every optimizer step; `rates` turns them into per-second figures."""

    def __init__(self):
        import time

        self._t = time
        self.marks: list[tuple[float, float]] = []

    def tick(self) -> None:
        self.marks.append((self._t.perf_counter(), self._t.process_time()))

    def rates(self, amounts: list[float], skip: int) -> tuple[float, float, float]:
        """amounts[i] = units processed by step i; → (units per wall second, per CPU second, wall seconds)
        over the steps after the first `skip` (warm-up)."""
        (w0, c0), (w1, c1) = self.marks[skip - 1], self.marks[len(amounts) - 1]
        done = sum(amounts[skip:])
        return done / (w1 - w0), done / (c1 - c0), w1 - w0


def clock_our_loop() -> StepClock:
    """Tick at every logged step of zhongjing's loop (the logger is called once per optimizer step)."""
    from zhongjing.train import logs

    clock, step = StepClock(), logs.RunLogger.step

    def timed(self, record):
        clock.tick()
        step(self, record)

    logs.RunLogger.step = timed
    return clock


def our_records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "logs" / "train.jsonl").read_text().splitlines()]


def hf_clock_callback(clock: StepClock):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.tick()

    return Clock()


def child(script: str, *args: str, threads: int | None = None) -> dict:
    """Run `script args...` (a --child mode) and return the JSON dict it prints last."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def alternate(script: str, systems: list[tuple[str, list[str]]], rounds: int, metric: str) -> list[tuple[str, dict]]:
    """Run the systems' children alternately `rounds` times. Per system: the best round's wall-clock figure (the
    least disturbed by other jobs) and the median of the per-CPU-second figures."""
    import statistics

    runs: dict[str, list[dict]] = {}
    for r in range(rounds):
        for name, args in (systems if r % 2 == 0 else systems[::-1]):
            res = child(script, *args, threads=THREADS)
            runs.setdefault(name, []).append(res)
            print(f"  round {r + 1}: {name}: {res[metric]:,.0f}/s wall, {res[metric + '_cpu']:,.0f}/CPU-s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    out = []
    for name, _ in systems:
        rs = runs[name]
        best = max(rs, key=lambda x: x[metric])
        out.append((name, best | {metric + "_cpu": statistics.median(x[metric + "_cpu"] for x in rs),
                                  "peak_mib": max(x["peak_mib"] for x in rs), "rounds": [x[metric] for x in rs]}))
    return out


def print_table(title: str, rows: list[tuple[str, dict]], metric: str, unit: str, extra: list[str]) -> None:
    """One markdown table; rows from `alternate` also get the per-CPU-second column and the round count."""
    cpu = all(metric + "_cpu" in r for _, r in rows)
    base = rows[-1][1][metric]
    note = (f"{THREADS} torch thread per system; {len(rows[0][1].get('rounds', [1]))} alternating rounds: best "
            f"wall-clock round, median per CPU-second; " if cpu else "one run each; ")
    print(f"\n{title}\n({note}load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    head = (f"| system | {unit} | ratio | " + (f"{unit} per CPU-s | ratio | " if cpu else "")
            + " | ".join(extra) + " | peak RSS MiB |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, r in rows:
        cells = " | ".join(f"{r[k]:.1%}" if "fraction" in k else f"{r[k]:,.0f}" for k in extra)
        per_cpu = (f"{r[metric + '_cpu']:,.0f} | {r[metric + '_cpu'] / rows[-1][1][metric + '_cpu']:.2f}× | "
                   if cpu else "")
        print(f"| {name} | {r[metric]:,.0f} | {r[metric] / base:.2f}× | {per_cpu}{cells} | {r['peak_mib']:,.0f} |")


def our_steps(out: Path, skip: int) -> tuple[float, int, int]:
    """Seconds, trained targets and real tokens of a zhongjing run's steps after the first `skip` (warm-up),
    from the `elapsed` field of logs/train.jsonl."""
    rows = our_records(out)
    kept = rows[skip:]
    return rows[-1]["elapsed"] - rows[skip - 1]["elapsed"], sum(r["trained"] for r in kept), sum(r["tokens"] for r in kept)
