"""Judged comparisons per second against a fake OpenAI-compatible judge, at concurrency 1 and 8.

A comparison is one question judged in both answer orders (two requests). The fake server answers
after a fixed latency (default 100 ms, a fast hosted LLM's order of magnitude), so the number shows
how well the judge overlaps requests; concurrency 1 is what a sequential evaluation script (as in
peer projects) achieves. Each run starts from an empty cache.

    python benchmarks/bench_judge.py [--pairs 64] [--latency 0.1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai import FakeOpenAI  # noqa: E402

from zhongjing.llm.cache import Cache  # noqa: E402
from zhongjing.llm.client import Endpoint, EndpointConfig  # noqa: E402
from zhongjing.eval.judge import LLMJudge, PairTask, judge_pairs  # noqa: E402

DIMS = ("safety", "professionalism", "fluency")


def reply(latency: float):
    def fn(body: dict) -> str:
        time.sleep(latency)
        return json.dumps({"reason": "按标准比较", "safety": "tie", "professionalism": "A", "fluency": "B"})

    return fn


def run(url: str, pairs: int, concurrency: int) -> tuple[float, int]:
    ctx = [{"role": "user", "content": "医生，我最近总是头晕，早上起床时更明显。"}]
    tasks = [PairTask(f"q{i}", f"q{i}", ctx, f"回答甲{i}：建议先测量血压。", f"回答乙{i}：多休息。") for i in range(pairs)]
    with tempfile.TemporaryDirectory() as tmp, Cache(Path(tmp) / "c.sqlite") as cache:
        cfg = EndpointConfig(base_url=url, model="judge", concurrency=concurrency, timeout=30)
        judge = LLMJudge(Endpoint(cfg, "judge"), cache, DIMS)
        t0 = time.perf_counter()
        judged, _ = judge_pairs(judge, tasks, concurrency=concurrency)
        dt = time.perf_counter() - t0
    return pairs / dt, sum(j.combined() is not None for j in judged)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--latency", type=float, default=0.1, help="seconds the fake judge takes per request")
    a = p.parse_args()
    with FakeOpenAI(reply(a.latency)) as srv:
        run(srv.url, 4, 2)  # warm-up: imports, first connections
        seq, ok1 = run(srv.url, a.pairs, 1)
        par, ok8 = run(srv.url, a.pairs, 8)
    assert ok1 == ok8 == a.pairs
    print(f"judge latency {a.latency * 1000:.0f} ms, {a.pairs} comparisons (2 orders each)")
    print(f"concurrency 1 (sequential, as peer eval scripts): {seq:.2f} comparisons/s")
    print(f"concurrency 8:                                    {par:.2f} comparisons/s")
    print(f"ratio 8 / 1: {par / seq:.2f}x")


if __name__ == "__main__":
    main()
