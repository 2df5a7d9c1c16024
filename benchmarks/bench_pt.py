"""Continued pre-training throughput: `zhongjing train pt` against Hugging Face `Trainer`, same tiny model
(~5M parameters), same packed 8 × 256-token blocks in the same order, CPU, fp32 weights, full fine-tuning.

zhongjing's pt runs with its default `train.fp32_matmul: fast` (torch float32 matmul precision "medium": fp32
weights and activations, matmul inner products in bf16 on CPUs with AMX, TF32 on GPUs); HF Trainer with its
default IEEE fp32. The loss curves are compared at equal steps (same blocks, same order, same schedule) and the
largest difference is printed: the speed must not cost the curve.

    python benchmarks/bench_pt.py [--steps 20] [--rounds 3]

Documents are the real dialogues of benchmarks/train_common.py flattened to text. Both systems train the same
steps; time counts from the end of step 2 to the last step (warm-up excluded). Each runs in its own process, so
the peak RSS is its own. Both use one torch thread and run alternately `--rounds` times (see train_common.py):
the table shows each system's best wall-clock round and its median tokens per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import (THREADS, StepClock, alternate, build_model, clock_our_loop, hf_clock_callback,  # noqa: E402
                          multi_turn_dialogues, our_records, peak_mib, print_table, write_jsonl)

BLOCK, BATCH, LR, SKIP = 256, 8, 5e-4, 2


def pt_config(model: str, docs: str, out: str, steps: int):
    from zhongjing.train.common import TrainSettings
    from zhongjing.train.pt import PTConfig, PTSource

    return PTConfig(model=model, output=out, data=[PTSource(docs)], block_size=BLOCK, val_fraction=0.0,
                    finetune="full", train=TrainSettings(batch_size=BATCH, max_steps=steps, lr=LR, warmup_steps=0,
                                                         warmup_ratio=0.0, progress=False, overwrite=True,
                                                         mixed_precision="no", threads=THREADS, fp32_matmul="fast"))


def result(clock: StepClock, tokens: list[int], losses: list[float]) -> dict:
    wall, cpu, secs = clock.rates(tokens, SKIP)
    return {"tokens_per_s": wall, "tokens_per_s_cpu": cpu, "seconds": secs, "peak_mib": peak_mib(), "losses": losses}


def run_ours(model: str, docs: str, work: Path, steps: int) -> dict:
    from zhongjing.train.pt import run

    clock = clock_our_loop()
    cfg = pt_config(model, docs, str(work / "ours"), steps)
    run(cfg)
    recs = our_records(Path(cfg.output))
    return result(clock, [r["tokens"] for r in recs], [r["loss"] for r in recs])


def run_hf(model_dir: str, docs: str, work: Path, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from zhongjing.model.load import load_tokenizer, setup_torch
    from zhongjing.train.pt import load_documents

    setup_torch(seed=42, threads=THREADS)
    data, _, _ = load_documents(pt_config(model_dir, docs, str(work / "x"), steps), load_tokenizer(model_dir),
                                log=lambda *_: None)
    blocks = data._epoch_blocks(0)[: steps * BATCH]  # exactly the blocks our run trains on
    ds = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})
    clock = StepClock()
    args = TrainingArguments(output_dir=str(work / "hf"), per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0,
                             save_strategy="no", report_to=[], logging_steps=1, use_cpu=True, seed=42,
                             dataloader_num_workers=0, disable_tqdm=True, bf16=False, fp16=False,
                             train_sampling_strategy="sequential", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
                             adam_epsilon=1e-8)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[hf_clock_callback(clock)])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return result(clock, [BATCH * BLOCK] * steps, losses)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
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
    names = (("zhongjing train pt", "ours"), ("HF Trainer", "hf"))
    systems = [(name, ["--steps", str(a.steps), "--child", system, str(model), str(docs), str(work / f"{system}-run")])
               for name, system in names]
    results = alternate(__file__, systems, a.rounds, "tokens_per_s")
    print_table(f"pre-training, {a.steps} steps of {BATCH}×{BLOCK} tokens, full fine-tuning, fp32 weights",
                results, "tokens_per_s", "tokens/s", ["seconds"])
    ours, hf = results[0][1], results[1][1]
    diff = max(abs(x - y) for x, y in zip(ours["losses"], hf["losses"]))
    print(f"\nloss curves at equal steps ({min(len(ours['losses']), len(hf['losses']))} steps): largest difference "
          f"{diff:.4f} (first {ours['losses'][0]:.4f} vs {hf['losses'][0]:.4f}, last {ours['losses'][-1]:.4f} vs "
          f"{hf['losses'][-1]:.4f}) — {'same curve' if diff <= 0.02 else 'CURVES DIFFER'} (tolerance 0.02)")
    import statistics

    paired = [a / b for a, b in zip(ours["rounds"], hf["rounds"])]  # same round = similar load from other jobs
    print(f"ratio zhongjing / HF Trainer: {ours['tokens_per_s_cpu'] / hf['tokens_per_s_cpu']:.2f}× tokens per "
          f"CPU-second (median), {statistics.median(paired):.2f}× tokens/s wall-clock (median of the rounds' pairs: "
          f"{', '.join(f'{r:.2f}×' for r in paired)}), {ours['tokens_per_s'] / hf['tokens_per_s']:.2f}× best rounds")


if __name__ == "__main__":
    main()
