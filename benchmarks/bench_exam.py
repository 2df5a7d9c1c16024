"""Exam scoring speed on the tiny model: 1,000 questions by letter likelihood, today's path vs the old one.

The old path is the per-question `local_predictions` of zhongjing/eval/exams.py as of commit 652dbca (loaded from
git, so its timing method stays runnable): a chat-template render, tokenisation of every option letter, a right-padded
batch of 8 with the full (B, L, V) logits, and one SQLite commit per question. The new path sorts by length, reads the
logits of the answer position only and writes the cache once per chunk. Both start from an empty cache; the new path
is also timed with the cyclic debiasing shifts (every question asked once per option order).

    OMP_NUM_THREADS=2 python benchmarks/bench_exam.py [--questions 1000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "652dbca"
TINY = dict(vocab_size=2000, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=176,
            max_position_embeddings=1024)  # tests/conftest.py's tiny model


def old_module():
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:zhongjing/eval/exams.py"], check=True,
                         capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("old_exams", loader=None)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_exams"] = mod  # dataclasses look their module up
    exec(compile(src, "old_exams.py", "exec"), mod.__dict__)
    return mod


def questions(n: int, path: Path) -> Path:
    """n questions made from the demo exam with their options shuffled (distinct prompts, realistic lengths)."""
    from zhongjing.demo import demo_path

    base = [json.loads(x) for x in (demo_path("exam.jsonl")).read_text(encoding="utf-8").splitlines() if x.strip()]
    rng, rows = random.Random(0), []
    for i in range(n):
        q = base[i % len(base)]
        texts = list(q["options"].values())
        right = q["options"][q["answer"]]
        rng.shuffle(texts)
        letters = "ABCDEFGH"[:len(texts)]
        rows.append({"id": f"q{i}", "question": q["question"], "options": dict(zip(letters, texts)),
                     "answer": letters[texts.index(right)], "subject": q.get("subject", "")})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def timed(fn) -> tuple[float, float, object]:
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=8, help="eval's generation.batch_size (the old path's batch)")
    args = ap.parse_args()
    from zhongjing.eval import exams as new
    from zhongjing.eval.answers import LocalModel, ModelSpec
    from zhongjing.llm.cache import Cache
    from zhongjing.model.init_model import InitModelConfig, init_model
    from zhongjing.model.load import setup_torch

    setup_torch(seed=0)
    old = old_module()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = init_model(InitModelConfig(output=str(tmp / "tiny"), **TINY))
        path = questions(args.questions, tmp / "exam.jsonl")
        lm = LocalModel(ModelSpec(name="tiny", path=str(model_dir)))
        lm.load()
        rows = []
        for name, mod, debias in [("old (652dbca)", old, None), ("new", new, "none"), ("new + cyclic shifts", new, "cyclic")]:
            cfg = mod.ExamConfig(name="bench", path=str(path), **({"debias": debias} if debias else {}))
            exam = mod.load_exam(cfg)
            with Cache(tmp / f"{name[:3]}-{debias}.sqlite") as cache:
                wall, cpu, preds = timed(lambda: mod.local_predictions(lm, exam, 0, 0, cache, args.batch_size))
            rows.append((name, len(preds), wall, cpu, preds))
    ref = rows[0]
    print(f"{args.questions} exam questions, tiny model (2 layers), letter likelihood, 0-shot:")
    for name, n, wall, cpu, preds in rows:
        print(f"  {name:22s} {n:5d} prompts  {wall:6.2f} s wall  {cpu:6.2f} s CPU  "
              f"{ref[2] / wall:5.2f}× the old path's speed")
    same = sum(rows[1][4].get(k) == v for k, v in ref[4].items())
    print(f"  predictions equal to the old path's: {same}/{len(ref[4])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
