"""Continued pre-training throughput: `zhongjing train pt` against Hugging Face `Trainer`, same tiny model
(~5M parameters), same packed 8 × 256-token blocks, CPU, fp32, full fine-tuning.

    python benchmarks/bench_pt.py [--steps 60]

Documents are the real dialogues of benchmarks/train_common.py flattened to text. Both systems train the same
steps; time counts from the end of step 2 to the last step (warm-up excluded). Each runs in its own process, so
the peak RSS is its own. Numbers on a shared 2-core machine move by ±10% between runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import build_model, child, multi_turn_dialogues, our_steps, peak_mib, print_table, write_jsonl  # noqa: E402

BLOCK, BATCH, LR, SKIP = 256, 8, 5e-4, 2


def pt_config(model: str, docs: str, out: str, steps: int):
    from zhongjing.train.common import TrainSettings
    from zhongjing.train.pt import PTConfig, PTSource

    return PTConfig(model=model, output=out, data=[PTSource(docs)], block_size=BLOCK, val_fraction=0.0,
                    finetune="full", train=TrainSettings(batch_size=BATCH, max_steps=steps, lr=LR, warmup_steps=0,
                                                         progress=False, overwrite=True, mixed_precision="no"))


def run_ours(model: str, docs: str, work: Path, steps: int) -> dict:
    from zhongjing.train.pt import run

    cfg = pt_config(model, docs, str(work / "ours"), steps)
    run(cfg)
    secs, trained, tokens = our_steps(Path(cfg.output), SKIP)
    return {"tokens_per_s": tokens / secs, "seconds": secs, "peak_mib": peak_mib()}


def run_hf(model_dir: str, docs: str, work: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from zhongjing.model.load import load_tokenizer, setup_torch
    from zhongjing.train.pt import load_documents

    setup_torch(seed=42)
    data, _, _ = load_documents(pt_config(model_dir, docs, str(work / "x"), steps), load_tokenizer(model_dir),
                                log=lambda *_: None)
    blocks = data._epoch_blocks(0)[: steps * BATCH]  # exactly the blocks our run trains on
    ds = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})
    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(work / "hf"), per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0,
                             save_strategy="no", report_to=[], logging_steps=10**6, use_cpu=True, seed=42,
                             dataloader_num_workers=0, disable_tqdm=True, bf16=False, fp16=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    Trainer(model=model, args=args, train_dataset=ds, callbacks=[Clock()]).train()
    secs = marks[-1] - marks[SKIP - 1]
    return {"tokens_per_s": (steps - SKIP) * BATCH * BLOCK / secs, "seconds": secs, "peak_mib": peak_mib()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--dialogues", type=int, default=900)
    p.add_argument("--child", nargs=4, metavar=("SYSTEM", "MODEL", "DOCS", "WORK"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        system, model, docs, work = a.child
        fn = run_ours if system == "ours" else run_hf
        print(json.dumps(fn(model, docs, Path(work), a.steps)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-pt-"))
    rows = multi_turn_dialogues(a.dialogues)
    docs = write_jsonl(work / "docs.jsonl", [{"text": "\n".join(m["content"] for m in r["messages"])} for r in rows])
    model = build_model(work / "model", rows)
    results = []
    for name, system in (("zhongjing train pt", "ours"), ("HF Trainer", "hf")):
        results.append((name, child(__file__, "--steps", str(a.steps), "--child", system, str(model), str(docs),
                                    str(work))))
    print_table(f"pre-training, {a.steps} steps of {BATCH}×{BLOCK} tokens, full fine-tuning, fp32",
                results, "tokens_per_s", "tokens/s", ["seconds"])


if __name__ == "__main__":
    main()
