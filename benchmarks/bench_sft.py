"""Multi-turn SFT throughput: `zhongjing train sft` against TRL `SFTTrainer`, same tiny model (~5M parameters),
same real multi-turn dialogues, assistant-only loss, LoRA r=16 (all linear layers, dropout 0.1), batch 8, CPU, fp32.

    pip install -c constraints.txt 'zhongjing[bench]'
    python benchmarks/bench_sft.py [--dialogues 160] [--rounds 2]

Both train one epoch over the same examples: every dialogue rendered once by zhongjing's renderer (≤ 1024 tokens,
latest turns kept) and handed to TRL pre-tokenized with its assistant mask, so both optimise exactly the same
tokens. The figure is trained (doctor-turn) tokens per second from the end of step 2 to the last step. TRL pads each
random batch to its longest dialogue; zhongjing groups dialogues of similar length and projects only trained
positions onto the vocabulary. Padding fraction = pad tokens / batch tensor size. Both use one torch thread and run
alternately `--rounds` times (see train_common.py): best wall-clock round, median per CPU-second.
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

BATCH, MAX_LEN, LR, SKIP = 8, 1024, 2e-4, 2


def sft_config(model: str, data: str, out: str):
    from zhongjing.model.lora import LoraSettings
    from zhongjing.train.common import TrainSettings
    from zhongjing.train.sft import SFTConfig, SFTSource

    return SFTConfig(model=model, output=out, data=[SFTSource(data)], mix={}, max_length=MAX_LEN, val_fraction=0.0,
                     batching="group", finetune="lora", lora=LoraSettings(r=16, alpha=32, dropout=0.1),
                     train=TrainSettings(batch_size=BATCH, epochs=1, lr=LR, warmup_steps=0, progress=False,
                                         overwrite=True, mixed_precision="no", threads=THREADS))


def result(clock: StepClock, trained: list[int], tokens: list[int], padding: float) -> dict:
    wall, cpu, secs = clock.rates(trained, SKIP)
    tok_wall, _, _ = clock.rates(tokens, SKIP)
    return {"trained_per_s": wall, "trained_per_s_cpu": cpu, "tokens_per_s": tok_wall, "seconds": secs,
            "padding_fraction": padding, "peak_mib": peak_mib()}


def run_ours(model: str, data: str, work: Path) -> dict:
    from zhongjing.train.sft import run

    clock = clock_our_loop()
    cfg = sft_config(model, data, str(work / "ours"))
    run(cfg)
    recs = our_records(Path(cfg.output))
    meta = json.loads((Path(cfg.output) / "meta.json").read_text())
    return result(clock, [r["trained"] for r in recs], [r["tokens"] for r in recs],
                  meta["metrics"]["padding_fraction"])


def run_trl(model_dir: str, data: str, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from zhongjing.data.readers import read_dialogues
    from zhongjing.data.render import IGNORE, Renderer
    from zhongjing.model.load import load_tokenizer, setup_torch

    setup_torch(seed=42, threads=THREADS)
    tok = load_tokenizer(model_dir)
    renderer = Renderer(tok, max_length=MAX_LEN)
    rows = [r for r in (renderer.render(d.messages) for d in read_dialogues(data)) if r is not None]
    ds = Dataset.from_dict({"input_ids": [r.input_ids for r in rows],
                            "assistant_masks": [[int(x != IGNORE) for x in r.labels] for r in rows]})
    seen = []

    class Counting(DataCollatorForLanguageModeling):
        def __call__(self, examples):
            b = super().__call__(examples)
            seen.append(((b["labels"][:, 1:] != IGNORE).sum().item(), b["attention_mask"].sum().item(),
                         b["input_ids"].numel()))
            return b

    clock = StepClock()
    args = SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=BATCH, num_train_epochs=1,
                     learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, max_length=MAX_LEN,
                     save_strategy="no", report_to=[], logging_steps=10**6, use_cpu=True, seed=42,
                     dataloader_num_workers=0, disable_tqdm=True, bf16=False, fp16=False,  # TRL defaults to bf16
                     gradient_checkpointing=False)  # TRL's default recomputes activations; zhongjing's does not
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora,
                         data_collator=Counting(pad_token_id=tok.pad_token_id), callbacks=[hf_clock_callback(clock)])
    trainer.train()
    steps = seen[: len(clock.marks)]  # batch i is step i (no workers; one batch may be fetched ahead)
    padding = 1 - sum(k[1] for k in steps) / sum(k[2] for k in steps)
    return result(clock, [k[0] for k in steps], [k[1] for k in steps], padding)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dialogues", type=int, default=160)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", nargs=4, metavar=("SYSTEM", "MODEL", "DATA", "WORK"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        system, model, data, work = a.child
        fn = run_ours if system == "ours" else run_trl
        print(json.dumps(fn(model, data, Path(work))))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    rows = multi_turn_dialogues(a.dialogues)
    data = write_jsonl(work / "dialogues.jsonl", rows)
    model = build_model(work / "model", rows)
    systems = [(name, ["--child", system, str(model), str(data), str(work / f"{system}-run")])
               for name, system in (("zhongjing train sft", "ours"), ("TRL SFTTrainer", "trl"))]
    results = alternate(__file__, systems, a.rounds, "trained_per_s")
    print_table(f"multi-turn SFT, {len(rows)} real dialogues × 1 epoch, LoRA r=16, assistant-only loss, batch {BATCH}",
                results, "trained_per_s", "trained tokens/s", ["tokens_per_s", "padding_fraction", "seconds"])


if __name__ == "__main__":
    main()
