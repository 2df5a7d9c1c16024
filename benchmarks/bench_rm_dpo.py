"""Reward-model and DPO training throughput: `zhongjing train rm|dpo` against TRL `RewardTrainer` / `DPOTrainer`.

    pip install -c constraints.txt 'zhongjing[bench]'
    python benchmarks/bench_rm_dpo.py [--pairs 256] [--rounds 2]

Same tiny model (the init-model default shape, ~5M parameters, tokenizer trained on the data), same preference
pairs (MedicalGPT's 100 medical pairs + its general Chinese pairs, chosen/rejected), LoRA r=16 on all linear
layers without dropout (TRL switches dropout off by default), batch 8 pairs, ≤ 512 tokens, one epoch, fp32, CPU,
no activation checkpointing on either side (TRL's default recomputes activations). The RM reads the answers
rendered by zhongjing's chat-template renderer (handed to TRL pre-tokenized); TRL's DPO tokenizes the same
conversations with the same chat template. A pair's chosen and rejected answers differ several-fold in length:
TRL pads every row of a batch to the longest, zhongjing packs the answers of a batch into shared rows (attention
kept inside each answer) — the padding fraction (pad tokens / batch tensor size) is printed with the result. Figure:
tokens of the pairs per second, each answer counted with its dialogue — what TRL feeds its model (real, non-pad
tokens); zhongjing's reward model encodes a ranking's dialogue once and branches the answers off it
(`share_prefix`), so for the RM it passes fewer tokens through the model for the same pairs — from the
end of step 2 to the last step; each system runs in its own process so its peak RSS is its own. Both use one torch
thread and run alternately `--rounds` times (train_common.py): best wall-clock round, median per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import (SHARED, THREADS, StepClock, alternate, build_model, clock_our_loop,  # noqa: E402
                          hf_clock_callback, our_records, peak_mib, print_table, write_jsonl)

BATCH, MAX_LEN, LR, SKIP, BETA = 8, 512, 2e-4, 2, 0.1
PAIRS = [SHARED / "medicalgpt_samples" / "reward_medical_test.json", SHARED / "medicalgpt_samples" / "dpo_zh_500.jsonl"]


def load_pairs(limit: int) -> list:
    """Rankings (K=2) from the MedicalGPT files, the ones whose answers fit MAX_LEN (both systems get the same)."""
    from zhongjing.data.readers import read_rankings

    return [r for p in PAIRS for r in read_rankings(p)][:limit]


def _lora():
    from zhongjing.model.lora import LoraSettings

    return LoraSettings(r=16, alpha=32, dropout=0.0)


def _train():
    from zhongjing.train.common import TrainSettings

    return TrainSettings(batch_size=BATCH, epochs=1, lr=LR, warmup_steps=0, progress=False, overwrite=True,
                         mixed_precision="no", max_grad_norm=1.0, threads=THREADS)


def result(clock: StepClock, tokens: list[int], shapes: list[tuple[int, int]]) -> dict:
    """shapes: (real tokens, tensor size) of every batch, for the padding fraction."""
    wall, cpu, secs = clock.rates(tokens, SKIP)
    padding = 1 - sum(t for t, _ in shapes) / sum(n for _, n in shapes)
    return {"tokens_per_s": wall, "tokens_per_s_cpu": cpu, "seconds": secs, "padding_fraction": padding,
            "peak_mib": peak_mib()}


def run_ours(stage: str, model: str, data: str, work: Path, share_prefix: bool = True) -> dict:
    from zhongjing.train.pref_batches import RankingBatches

    clock, shapes, counted, collate = clock_our_loop(), [], [], RankingBatches.collate

    def counting(self, items):
        b = collate(self, items)
        shapes.append((b["ntokens"], b["numel"]))
        counted.append(int(b["lengths"].sum()))  # every answer with its dialogue: the tokens TRL feeds its model
        return b

    RankingBatches.collate = counting
    out = work / f"ours-{stage}"
    if stage == "rm":
        from zhongjing.train.rm import RMConfig, train_rm

        train_rm(RMConfig(model=model, data=[data], output=str(out), val_ratio=0.0, max_length=MAX_LEN, lora=_lora(),
                          train=_train(), share_prefix=share_prefix))
    else:
        from zhongjing.train.dpo import DPOConfig, train_dpo

        train_dpo(DPOConfig(model=model, data=[data], output=str(out), val_ratio=0.0, max_length=MAX_LEN, beta=BETA,
                            lora=_lora(), train=_train()))
    steps = len(our_records(out))
    assert len(counted) == steps, (len(counted), steps)  # one batch per step (no validation split, no accumulation)
    return result(clock, counted, shapes)


def run_trl(stage: str, model_dir: str, data: str, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig

    from zhongjing.data.readers import read_rankings
    from zhongjing.model.load import load_tokenizer, setup_torch

    setup_torch(seed=42)
    tok = load_tokenizer(model_dir)
    rankings = list(read_rankings(data))
    seen, clock = [], StepClock()

    common = dict(output_dir=str(work / f"trl-{stage}"), per_device_train_batch_size=BATCH, num_train_epochs=1,
                  learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, max_length=MAX_LEN,
                  save_strategy="no", report_to=[], logging_steps=10**6, use_cpu=True, seed=42,
                  dataloader_num_workers=0, disable_tqdm=True, bf16=False, fp16=False,  # TRL defaults to bf16
                  gradient_checkpointing=False, disable_dropout=True, max_grad_norm=1.0)
    if stage == "rm":
        from transformers import AutoModelForSequenceClassification
        from trl import RewardConfig, RewardTrainer

        from zhongjing.data.render import Renderer
        from zhongjing.model.reward import reward_input_ids

        renderer = Renderer(tok, max_length=MAX_LEN, strategy="last")
        ds = Dataset.from_dict({
            "chosen_ids": [reward_input_ids(renderer, r.messages, r.responses[0]) for r in rankings],
            "rejected_ids": [reward_input_ids(renderer, r.messages, r.responses[1]) for r in rankings]})
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="SEQ_CLS")
        trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=ds, processing_class=tok,
                                peft_config=lora, callbacks=[hf_clock_callback(clock)])
    else:
        from transformers import AutoModelForCausalLM
        from trl import DPOConfig, DPOTrainer

        conv = lambda ms: [m.to_dict() for m in ms]  # noqa: E731
        ds = Dataset.from_list([{"prompt": conv(r.messages),
                                 "chosen": [{"role": "assistant", "content": r.responses[0]}],
                                 "rejected": [{"role": "assistant", "content": r.responses[1]}]} for r in rankings])
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=DPOConfig(beta=BETA, **common), train_dataset=ds, processing_class=tok,
                             peft_config=lora, callbacks=[hf_clock_callback(clock)])
    collate = trainer.data_collator

    def counting(examples):
        b = collate(examples)
        seen.append((int(b["attention_mask"].sum()), b["input_ids"].numel()))
        return b

    trainer.data_collator = counting
    trainer.train()
    steps = seen[: len(clock.marks)]  # batch i is step i (no workers; one may be fetched ahead)
    return result(clock, [t for t, _ in steps], steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--stages", default="rm,dpo", help="which to measure (comma-separated: rm, dpo)")
    p.add_argument("--child", nargs=5, metavar=("SYSTEM", "STAGE", "MODEL", "DATA", "WORK"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        system, stage, model, data, work = a.child
        if system == "ours-unshared":
            print(json.dumps(run_ours(stage, model, data, Path(work), share_prefix=False)))
        else:
            print(json.dumps((run_ours if system == "ours" else run_trl)(stage, model, data, Path(work))))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-rm-dpo-"))
    rankings = load_pairs(a.pairs * 2)
    model = build_model(work / "model", [{"messages": [m.to_dict() for m in r.messages] + [
        {"role": "assistant", "content": x} for x in r.responses]} for r in rankings])
    from zhongjing.data.render import Renderer
    from zhongjing.model.load import load_tokenizer
    from zhongjing.model.reward import reward_input_ids

    renderer = Renderer(load_tokenizer(model), max_length=MAX_LEN, strategy="last")
    fit = [r for r in rankings if all(reward_input_ids(renderer, r.messages, x) for x in r.responses)][:a.pairs]
    data = write_jsonl(work / "pairs.jsonl", [r.to_dict() for r in fit])
    for stage, peer in (("rm", "TRL RewardTrainer"), ("dpo", "TRL DPOTrainer")):
        if stage not in a.stages.split(","):
            continue
        names = [(f"zhongjing train {stage}", "ours"), (peer, "trl")]
        if stage == "rm":  # the same trainer with every answer encoded with its own copy of the dialogue
            names.insert(1, ("zhongjing train rm share_prefix=false", "ours-unshared"))
        systems = [(name, ["--child", system, stage, str(model), str(data), str(work)]) for name, system in names]
        print_table(f"{stage.upper()}: {len(fit)} preference pairs × 1 epoch, LoRA r=16, batch {BATCH}, ≤ {MAX_LEN} "
                    "tokens", alternate(__file__, systems, a.rounds, "tokens_per_s"), "tokens_per_s", "tokens/s",
                    ["padding_fraction", "seconds"])


if __name__ == "__main__":
    main()
