"""Serving throughput and latency at 1, 4 and 16 concurrent clients, next to plain `transformers` `generate`.

    python benchmarks/bench_serve.py [--model DIR] [--max-tokens 64] [--requests-per-client 4]

Starts `zhongjing serve` on a free loopback port; every client sends its requests one after another (streaming, greedy),
all clients at once. The peer is what a plain script does with the same model: `model.generate` (KV cache, greedy) on
the same prompts, in static left-padded batches of the client count. Greedy decoding makes both produce the same tokens,
so tokens/s compare like for like. Each level runs --repeat times, interleaved; the fastest run of each side is
reported (the least disturbed by other work on the machine). Without --model, a ~5M-parameter LLaMA (the init-model default shape, random
weights) is built in a temp folder. Numbers on a shared 2-core machine move by ±10–20% between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zhongjing.model.init_model import InitModelConfig, build_model, train_tokenizer  # noqa: E402
from zhongjing.model.load import load_model, load_tokenizer, setup_torch  # noqa: E402

WORDS = "头痛 发烧 咳嗽 胸闷 腹泻 失眠 血压 血糖 过敏 皮疹 关节 疼痛 三天 一周 晚上 加重 孩子 老人 医生 建议 检查 服药".split()


def build_default_model(out: Path) -> Path:
    rng = random.Random(0)
    texts = ["".join(rng.choice(WORDS) for _ in range(40)) + " fever cough pain day night" for _ in range(3000)]
    tok = train_tokenizer(texts, vocab_size=8000, min_frequency=1)
    model = build_model(InitModelConfig(), tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def prompts(n: int) -> list[str]:
    rng = random.Random(1)
    return ["".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) + "，怎么办？" for _ in range(n)]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def start_server(model: Path, port: int, max_batch: int, threads: int | None) -> subprocess.Popen:
    extra = ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen([sys.executable, "-m", "zhongjing", "serve", "--model", str(model), "--port", str(port),
                             "--max-batch", str(max_batch), "--queue", "256", "--no-safety-prompt", "--log-level",
                             "warning", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


def run_clients(url: str, name: str, jobs: list[tuple[str, int]], clients: int) -> dict:
    """jobs: (user message, max_tokens) pairs; client i sends jobs i, i+clients, ... one after another."""
    lat, ttft, tokens = [], [], []
    per = [jobs[i::clients] for i in range(clients)]
    barrier = threading.Barrier(clients)

    def client(mine):
        with httpx.Client(timeout=600) as http:
            barrier.wait()
            for text, max_tokens in mine:
                body = {"model": name, "messages": [{"role": "user", "content": text}], "temperature": 0,
                        "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
                t0, first = time.perf_counter(), None
                with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    for line in r.iter_lines():  # parse only what is measured: the client shares the CPU
                        if first is None and '"content": "' in line and '"content": ""' not in line:
                            first = time.perf_counter() - t0
                        elif line.startswith("data: {") and '"usage"' in line:
                            tokens.append(json.loads(line[6:])["usage"]["completion_tokens"])
                lat.append(time.perf_counter() - t0)
                ttft.append(first if first is not None else lat[-1])

    threads = [threading.Thread(target=client, args=(m,)) for m in per]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"tok_s": sum(tokens) / wall, "p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "ttft50": pct(ttft, 0.5),
            "ttft95": pct(ttft, 0.95), "tokens": sum(tokens)}


@torch.inference_mode()
def run_hf(model, tok, jobs: list[tuple[str, int]], batch: int) -> dict:
    """Plain transformers: static left-padded batches through model.generate, one batch after another; a batch
    runs to its longest request's max_tokens (generate has one limit per call), each row counts up to its own."""
    tok.padding_side = "left"
    stop = {tok.eos_token_id, tok.pad_token_id}
    lat, total = [], 0
    t0 = time.perf_counter()
    for i in range(0, len(jobs), batch):
        group = jobs[i:i + batch]
        chunk = [tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
                 for t, _ in group]
        t1 = time.perf_counter()
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        limit = max(m for _, m in group)
        out = model.generate(**enc, max_new_tokens=limit, do_sample=False, pad_token_id=tok.pad_token_id)
        for row, (_, own) in zip(out[:, enc["input_ids"].shape[1]:].tolist(), group):
            total += min(own, next((k + 1 for k, t in enumerate(row) if t in stop), len(row)))
        lat += [time.perf_counter() - t1] * len(chunk)  # like the clients: the next batch starts after this one
    wall = time.perf_counter() - t0
    return {"tok_s": total / wall, "p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "tokens": total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the server and the peer alike")
    p.add_argument("--repeat", type=int, default=3, help="interleaved runs per level; the fastest of each is kept")
    a = p.parse_args()
    setup_torch(seed=0, threads=a.threads)
    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(a.model) if a.model else build_default_model(Path(tmp.name) / "bench-model")
    levels = [int(x) for x in a.concurrency.split(",")]
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    params = sum(x.numel() for x in model.parameters())
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = start_server(model_dir, port, max(levels), a.threads)
    url, name = f"http://127.0.0.1:{port}", model_dir.resolve().name
    rows = []
    rng = random.Random(2)
    try:
        run_clients(url, name, [(t, 8) for t in prompts(2)], 1)  # warm-up
        run_hf(model, tok, [(t, 8) for t in prompts(2)], 1)
        for lengths in ("fixed", "mixed"):
            for c in levels:
                texts = prompts(c * a.requests_per_client)
                # mixed: every request asks for its own answer length, as real clients do
                jobs = [(t, a.max_tokens if lengths == "fixed" else rng.randint(8, 2 * a.max_tokens - 8)) for t in texts]
                runs = [(run_clients(url, name, jobs, c), run_hf(model, tok, jobs, c))
                        for _ in range(a.repeat)]  # interleaved, so a burst of load elsewhere hits both sides
                rows.append((lengths, c, max((r[0] for r in runs), key=lambda x: x["tok_s"]),
                             max((r[1] for r in runs), key=lambda x: x["tok_s"])))
    finally:
        server.terminate()
        server.wait(10)
    print(f"\nmodel: {params / 1e6:.1f}M params, greedy; max_tokens {a.max_tokens} (fixed) or 8..{2 * a.max_tokens - 8} "
          f"(mixed); {a.requests_per_client} requests per client; best of {a.repeat}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} cores\n")
    print("| answer lengths | clients | zhongjing serve tok/s | p50 / p95 latency (s) | p50 / p95 first token (s) | "
          "HF generate tok/s (static batch) | HF p50 / p95 (s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for lengths, c, srv, hf in rows:
        print(f"| {lengths} | {c} | {srv['tok_s']:.0f} | {srv['p50']:.2f} / {srv['p95']:.2f} | {srv['ttft50']:.3f} / "
              f"{srv['ttft95']:.3f} | {hf['tok_s']:.0f} | {hf['p50']:.2f} / {hf['p95']:.2f} | "
              f"{srv['tok_s'] / hf['tok_s']:.2f}× |")
    print("\nratios (zhongjing serve / HF generate, same run): " + ", ".join(
        f"{lengths} {c} client{'s' * (c > 1)} {srv['tok_s'] / hf['tok_s']:.2f}×" for lengths, c, srv, hf in rows))
    one = [srv for _, c, srv, _ in rows if c == 1]
    if one:
        print("p95 time to first token at 1 client: " + ", ".join(f"{x['ttft95'] * 1000:.0f} ms" for x in one))


if __name__ == "__main__":
    main()
