"""The decoder alone, in one process, next to plain `transformers` `generate` — and the floor under both.

    python benchmarks/bench_decode.py [--model DIR] [--rows 16] [--tokens 64] [--threads 1]

`bench_serve.py` measures the server with its HTTP streaming and client threads sharing the machine; this measures
only what the serving engine drives: zhongjing's batch decoder (`model.generation.sample`, the lean step) against
`model.generate` on the same left-padded prompts, greedy, `--rows` rows × `--tokens` new tokens, no stop token (both
sides produce every token). Best of 5 each. A third run of each under `torch.profiler` splits a step into the time
in matrix products and in the attention kernel: arithmetic no batching or scheduling removes, so `generate`'s step
time over that floor bounds what any server built on eager PyTorch can reach against it. A third side runs the
server's own loop (`serve.engine.Engine`: a request per row, all submitted at once, its worker thread, callbacks and
incremental detokenisation) without HTTP, so the server's cost splits into decoding, the loop, and the HTTP layer.
Without --model, the ~5M-parameter default-shape model of bench_serve.py is built in a temp folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import build_default_model, prompts  # noqa: E402
from zhongjing.model.generation import SamplingParams, sample  # noqa: E402
from zhongjing.model.load import load_model, load_tokenizer, setup_torch  # noqa: E402
from zhongjing.serve.engine import Engine  # noqa: E402

ENGINE = "zhongjing engine (the server's loop, no HTTP)"

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm")


def floor_ms(run, steps: int) -> tuple[float, float]:
    """(matrix products, attention kernel) in ms per step, from one profiled run."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    ev = prof.key_averages()
    mm = sum(e.self_cpu_time_total for e in ev if e.key in MATMUL) / 1e3 / steps
    att = sum(e.self_cpu_time_total for e in ev if "scaled_dot_product" in e.key and "attention" in e.key
              and e.key != "aten::scaled_dot_product_attention") / 1e3 / steps
    return mm, att


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    setup_torch(seed=0, threads=a.threads)
    tmp = tempfile.TemporaryDirectory()
    path = Path(a.model) if a.model else build_default_model(Path(tmp.name) / "bench-model")
    model, tok = load_model(path).eval(), load_tokenizer(path)
    texts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
             for t in prompts(a.rows)]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    engine = Engine(model, tok, max_batch=a.rows, queue_size=a.rows, stop_ids=set()).start()

    def serve_loop():  # every row a request, submitted at once; back when the last one is done
        left, ended = [len(ids)], threading.Event()

        def on_event(kind, row, payload):
            if kind == "error":
                raise SystemExit(f"engine: {payload}")
            if kind == "done":
                left[0] -= 1
                if not left[0]:
                    ended.set()
        for p in ids:
            engine.submit(p, SamplingParams(a.tokens, temperature=0), on_event)
        ended.wait()

    sides = {
        "zhongjing decoder": lambda: sample(model, tok, ids, max_new_tokens=a.tokens, temperature=0,
                                            batch_size=a.rows, stop_ids=set()),
        ENGINE: serve_loop,
        "HF generate": lambda: model.generate(**enc, max_new_tokens=a.tokens, min_new_tokens=a.tokens, do_sample=False,
                                              pad_token_id=tok.pad_token_id),
    }
    rows = {}
    with torch.inference_mode():
        for name, run in sides.items():
            run()  # warm-up
        for name, run in sides.items():
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t0)
            # the engine decodes on its own thread, which the profiler does not follow: no split for it
            split = floor_ms(run, a.tokens) if name != ENGINE else (float("nan"), float("nan"))
            rows[name] = (best / a.tokens * 1e3, *split)
    engine.close()
    print(f"\n{a.rows} rows × {a.tokens} tokens, greedy, {torch.get_num_threads()} thread(s), torch {torch.__version__}\n")
    print("| side | ms per step (best of 5) | matrix products | attention kernel | the rest |")
    print("|---|---:|---:|---:|---:|")
    for name, (step, mm, att) in rows.items():
        print(f"| {name} | {step:.2f} | " + (f"{mm:.2f} | {att:.2f} | {step - mm - att:.2f} |" if mm == mm else "– | – | – |"))
    ours, hf = rows["zhongjing decoder"], rows["HF generate"]
    floor = ours[1] + ours[2]
    print(f"\nratio (zhongjing decoder / HF generate, tokens/s): {hf[0] / ours[0]:.2f}×; the arithmetic floor of a "
          f"zhongjing step ({floor:.2f} ms) bounds it at {hf[0] / floor:.2f}×")
    print(f"ratio (zhongjing engine, the serving loop without HTTP / HF generate): "
          f"{hf[0] / rows[ENGINE][0]:.2f}×")


if __name__ == "__main__":
    main()
