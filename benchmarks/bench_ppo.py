"""PPO seconds per update and peak memory: `zhongjing train ppo` against TRL 1.12's `trl.experimental.ppo.PPOTrainer`
(TRL ≥ 1.13 has no PPO), which runs from its own virtualenv:

    python -m venv benchmarks/.env-trl112
    benchmarks/.env-trl112/bin/pip install torch==2.13.0
    benchmarks/.env-trl112/bin/pip install -c constraints.txt 'trl==1.12.*'
    python benchmarks/bench_ppo.py [--updates 8] [--answer-tokens 64] [--rounds 2]

Same tiny policy (the init-model default shape, ~5M parameters), same reward model (that model with a scalar head,
briefly trained by `zhongjing train rm` on real preference pairs, full weights so TRL can load it), same prompts
(real patient turns, rendered by the chat template, ≤ 192 tokens), 8 prompts per update, answers of up to
`--answer-tokens` sampled at temperature 1, 2 PPO epochs per rollout in one minibatch, LoRA r=16 on all linear
layers of the policy (TRL: the same `peft_config`, so its reference is also the adapter disabled), fp32, CPU,
flush-denormal on in both. TRL's critic is a separate sequence-classification model (its design); ours is a value
head on the policy's trunk. Figure: seconds per update, from the end of update 1 to the last; generation tokens/s
inside the rollout; peak RSS of each system's own process. Both use one torch thread and run alternately
`--rounds` times (train_common.py): best wall-clock round, median CPU seconds per update.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_common import StepClock, alternate, hf_clock_callback, peak_mib  # noqa: E402

TRL_PY = HERE / ".env-trl112" / "bin" / "python"
BATCH, EPOCHS, LR, PROMPT_MAX = 8, 2, 1e-5, 192


def result(clock: StepClock, gen_tokens_per_s: float) -> dict:
    n = len(clock.marks)
    per_s, per_cpu_s, _ = clock.rates([1] * n, 1)  # updates per second, from the end of update 1
    return {"updates_per_s": per_s, "updates_per_s_cpu": per_cpu_s, "updates": n,
            "gen_tokens_per_s": gen_tokens_per_s, "peak_mib": peak_mib()}


# ----------------------------------------------------------------------------- TRL (runs in .env-trl112)


def run_trl(work: Path, updates: int, answer_tokens: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorWithPadding)
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as mod

    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(work / "policy")
    tok.padding_side = "left"
    prompts = json.loads((work / "prompts.json").read_text())
    ds = Dataset.from_dict({"input_ids": prompts})
    gen = {"seconds": 0.0, "tokens": 0}
    original = mod.batch_generation

    def timed(model, queries, *a, **kw):  # generation tokens/s inside TRL's rollout
        t = time.perf_counter()
        out = original(model, queries, *a, **kw)
        gen["seconds"] += time.perf_counter() - t
        gen["tokens"] += int((out[0][:, queries.shape[1]:] != tok.pad_token_id).sum())
        return out

    mod.batch_generation = timed
    clock = StepClock()

    args = PPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
                     num_mini_batches=1, num_ppo_epochs=EPOCHS, learning_rate=LR, total_episodes=BATCH * updates,
                     response_length=answer_tokens, stop_token="eos", temperature=1.0, kl_coef=0.05,
                     local_rollout_forward_batch_size=BATCH, num_sample_generations=0, save_strategy="no",
                     report_to=[], use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                     logging_steps=10**6, disable_tqdm=True, seed=42)
    policy = AutoModelForCausalLM.from_pretrained(work / "policy", dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(work / "rm", num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(work / "rm", num_labels=1, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                         train_dataset=ds, eval_dataset=ds.select(range(BATCH)), value_model=value,
                         data_collator=DataCollatorWithPadding(tok), peft_config=lora,
                         callbacks=[hf_clock_callback(clock)])
    trainer.train()
    return result(clock, gen["tokens"] / gen["seconds"])


# ----------------------------------------------------------------------------- zhongjing (main venv)


def run_ours(work: Path, updates: int, answer_tokens: int) -> dict:
    from train_common import THREADS, clock_our_loop

    from zhongjing.config import load_config
    from zhongjing.train.ppo import PPOConfig, train_ppo

    clock = clock_our_loop()
    out = work / "ours"
    cfg = load_config(PPOConfig, overrides=[
        f"model={work / 'policy'}", f"prompts={work / 'prompts.jsonl'}", f"output={out}", f"reward.rm={work / 'rm'}",
        "reward.normalize_rm=false", "eval_prompts=0", f"max_length={PROMPT_MAX + answer_tokens}",
        f"generation.max_new_tokens={answer_tokens}", "generation.temperature=1.0", f"generation.batch_size={BATCH}",
        f"generation.forward_batch={BATCH}", f"update_epochs={EPOCHS}", "ppo.kl_coef=0.05", "lora.r=16",
        "lora.alpha=32", "lora.dropout=0.0", f"train.batch_size={BATCH}", "train.grad_accum=1",
        f"train.max_steps={updates}", f"train.lr={LR}", "train.warmup_ratio=0", "train.progress=false",
        "train.overwrite=true", "train.mixed_precision='no'", f"train.threads={THREADS}"])
    train_ppo(cfg)
    rows = [json.loads(x) for x in (out / "logs" / "train.jsonl").read_text().splitlines()]
    gen = sum(r["gen_tokens_per_s"] * r["t_generate"] for r in rows) / sum(r["t_generate"] for r in rows)
    return result(clock, gen)


# ----------------------------------------------------------------------------- set-up


def prepare(work: Path, prompts_n: int) -> None:
    """Policy, reward model and prompts, all from real shared data (main venv)."""
    sys.path.insert(0, str(HERE))
    from train_common import SHARED, build_model, multi_turn_dialogues, write_jsonl

    from zhongjing.data.render import Renderer
    from zhongjing.errors import ZhongjingError
    from zhongjing.model.load import load_tokenizer
    from zhongjing.train.rm import RMConfig, train_rm

    rows = multi_turn_dialogues(prompts_n)
    build_model(work / "policy", rows)
    prompts, items = [], []
    renderer = Renderer(load_tokenizer(work / "policy"), max_length=PROMPT_MAX)
    for d in rows:
        ctx = d["messages"][:1]  # the patient's opening turn
        try:
            prompts.append(renderer.prompt_ids(ctx))
        except ZhongjingError:  # longer than PROMPT_MAX
            continue
        items.append({"id": d.get("id", str(len(items))), "messages": ctx})
    (work / "prompts.json").write_text(json.dumps(prompts))
    write_jsonl(work / "prompts.jsonl", items)
    pairs = SHARED / "medicalgpt_samples" / "reward_medical_test.json"
    train_rm(RMConfig(model=str(work / "policy"), data=[str(pairs)], output=str(work / "rm"), finetune="full",
                      val_ratio=0.0, max_length=256, train=load_train()))


def load_train():
    from zhongjing.train.common import TrainSettings

    return TrainSettings(epochs=1, batch_size=8, lr=1e-4, max_steps=3, progress=False, overwrite=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=8)
    p.add_argument("--answer-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", nargs=2, metavar=("SYSTEM", "WORK"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        if a.child[0] == "trl" and Path(sys.executable) != TRL_PY:  # TRL 1.12 lives in its own virtualenv
            os.execv(TRL_PY, [str(TRL_PY), __file__, *sys.argv[1:]])
        fn = run_ours if a.child[0] == "ours" else run_trl
        print(json.dumps(fn(Path(a.child[1]), a.updates, a.answer_tokens)))
        return
    if not TRL_PY.exists():
        raise SystemExit(f"TRL 1.12 virtualenv not found at {TRL_PY.parent.parent}; see this file's docstring")
    work = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    prepare(work, 4 * BATCH * a.updates)
    common = ["--updates", str(a.updates), "--answer-tokens", str(a.answer_tokens), "--child"]
    rows = alternate(__file__, [("zhongjing train ppo", common + ["ours", str(work)]),
                                ("TRL 1.12 PPOTrainer", common + ["trl", str(work)])], a.rounds, "updates_per_s")
    (_, ours), (_, trl) = rows
    print(f"\nPPO: {BATCH} prompts × ≤ {a.answer_tokens} answer tokens per update, {EPOCHS} PPO epochs, LoRA r=16, "
          f"{a.updates} updates\n(1 torch thread per system; {a.rounds} alternating rounds: best wall-clock round, "
          f"median per CPU-second; load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print("| system | s / update | speed-up | CPU s / update | speed-up | generation tok/s (rollout) | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {1 / r['updates_per_s']:.2f} | {r['updates_per_s'] / trl['updates_per_s']:.2f}× | "
              f"{1 / r['updates_per_s_cpu']:.2f} | {r['updates_per_s_cpu'] / trl['updates_per_s_cpu']:.2f}× | "
              f"{r['gen_tokens_per_s']:,.0f} | {r['peak_mib']:,.0f} |")


if __name__ == "__main__":
    main()
