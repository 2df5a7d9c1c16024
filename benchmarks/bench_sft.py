"""Multi-turn SFT throughput: `zhongjing train sft` against TRL `SFTTrainer`, same tiny model (~5M parameters),
same real multi-turn dialogues, assistant-only loss, LoRA r=16 (all linear layers, dropout 0.1), batch 8, CPU, fp32.

    pip install -c constraints.txt 'zhongjing[bench]'
    python benchmarks/bench_sft.py [--dialogues 480]

Both train one epoch over the same examples: every dialogue rendered once by zhongjing's renderer (≤ 1024 tokens,
latest turns kept) and handed to TRL pre-tokenized with its assistant mask, so both optimise exactly the same
tokens. The figure is trained (doctor-turn) tokens per second from the end of step 2 to the last step. TRL pads each
random batch to its longest dialogue; zhongjing groups dialogues of similar length and projects only trained
positions onto the vocabulary. Padding fraction = pad tokens / batch tensor size.
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

BATCH, MAX_LEN, LR, SKIP = 8, 1024, 2e-4, 2


def sft_config(model: str, data: str, out: str):
    from zhongjing.model.lora import LoraSettings
    from zhongjing.train.common import TrainSettings
    from zhongjing.train.sft import SFTConfig, SFTSource

    return SFTConfig(model=model, output=out, data=[SFTSource(data)], mix={}, max_length=MAX_LEN, val_fraction=0.0,
                     batching="group", finetune="lora", lora=LoraSettings(r=16, alpha=32, dropout=0.1),
                     train=TrainSettings(batch_size=BATCH, epochs=1, lr=LR, warmup_steps=0, progress=False,
                                         overwrite=True, mixed_precision="no"))


def run_ours(model: str, data: str, work: Path) -> dict:
    from zhongjing.train.sft import run

    cfg = sft_config(model, data, str(work / "ours"))
    run(cfg)
    secs, trained, tokens = our_steps(Path(cfg.output), SKIP)
    meta = json.loads((Path(cfg.output) / "meta.json").read_text())
    return {"trained_per_s": trained / secs, "tokens_per_s": tokens / secs, "seconds": secs,
            "padding_fraction": meta["metrics"]["padding_fraction"], "peak_mib": peak_mib()}


def run_trl(model_dir: str, data: str, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from zhongjing.data.readers import read_dialogues
    from zhongjing.data.render import IGNORE, Renderer
    from zhongjing.model.load import load_tokenizer, setup_torch

    setup_torch(seed=42)
    tok = load_tokenizer(model_dir)
    renderer = Renderer(tok, max_length=MAX_LEN)
    rows = [r for r in (renderer.render(d.messages) for d in read_dialogues(data)) if r is not None]
    ds = Dataset.from_dict({"input_ids": [r.input_ids for r in rows],
                            "assistant_masks": [[int(x != IGNORE) for x in r.labels] for r in rows]})
    seen, marks = [], []

    class Counting(DataCollatorForLanguageModeling):
        def __call__(self, examples):
            b = super().__call__(examples)
            seen.append(((b["labels"][:, 1:] != IGNORE).sum().item(), b["attention_mask"].sum().item(),
                         b["input_ids"].numel()))
            return b

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    args = SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=BATCH, num_train_epochs=1,
                     learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, max_length=MAX_LEN,
                     save_strategy="no", report_to=[], logging_steps=10**6, use_cpu=True, seed=42,
                     dataloader_num_workers=0, disable_tqdm=True, bf16=False, fp16=False,  # TRL defaults to bf16
                     gradient_checkpointing=False)  # TRL's default recomputes activations; zhongjing's does not
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora,
                         data_collator=Counting(pad_token_id=tok.pad_token_id), callbacks=[Clock()])
    trainer.train()
    steps = len(marks)
    kept = seen[SKIP:steps]
    secs = marks[-1] - marks[SKIP - 1]
    return {"trained_per_s": sum(k[0] for k in kept) / secs, "tokens_per_s": sum(k[1] for k in kept) / secs,
            "seconds": secs, "padding_fraction": 1 - sum(k[1] for k in seen[:steps]) / sum(k[2] for k in seen[:steps]),
            "peak_mib": peak_mib()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dialogues", type=int, default=480)
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
    results = []
    for name, system in (("zhongjing train sft", "ours"), ("TRL SFTTrainer", "trl")):
        results.append((name, child(__file__, "--child", system, str(model), str(data), str(work))))
    print_table(f"multi-turn SFT, {len(rows)} real dialogues × 1 epoch, LoRA r=16, assistant-only loss, batch {BATCH}",
                results, "trained_per_s", "trained tokens/s", ["tokens_per_s", "padding_fraction", "seconds"])


if __name__ == "__main__":
    main()
