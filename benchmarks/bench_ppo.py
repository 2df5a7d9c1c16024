"""PPO seconds per update and peak memory: `zhongjing train ppo` against TRL 1.12's `trl.experimental.ppo.PPOTrainer`
(TRL ≥ 1.13 has no PPO), which runs from its own virtualenv:

    python -m venv benchmarks/.env-trl112
    benchmarks/.env-trl112/bin/pip install torch==2.13.0
    benchmarks/.env-trl112/bin/pip install -c constraints.txt 'trl==1.12.*'
    python benchmarks/bench_ppo.py [--updates 8] [--answer-tokens 64]

Same tiny policy (the init-model default shape, ~5M parameters), same reward model (that model with a scalar head,
briefly trained by `zhongjing train rm` on real preference pairs, full weights so TRL can load it), same prompts
(real patient turns, rendered by the chat template, ≤ 192 tokens), 8 prompts per update, answers of up to
`--answer-tokens` sampled at temperature 1, 2 PPO epochs per rollout in one minibatch, LoRA r=16 on all linear
layers of the policy (TRL: the same `peft_config`, so its reference is also the adapter disabled), fp32, CPU,
flush-denormal on in both. TRL's critic is a separate sequence-classification model (its design); ours is a value
head on the policy's trunk. Figure: seconds per update, from the end of update 1 to the last; generation tokens/s
inside the rollout; peak RSS of each system's own process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_PY = HERE / ".env-trl112" / "bin" / "python"
BATCH, EPOCHS, LR, PROMPT_MAX = 8, 2, 1e-5, 192


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- TRL (runs in .env-trl112)


def run_trl(work: Path, updates: int, answer_tokens: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              DataCollatorWithPadding, TrainerCallback)
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
    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

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
                         data_collator=DataCollatorWithPadding(tok), peft_config=lora, callbacks=[Clock()])
    trainer.train()
    per_update = (marks[-1] - marks[0]) / (len(marks) - 1)
    return {"s_per_update": per_update, "updates": len(marks), "gen_tokens_per_s": gen["tokens"] / gen["seconds"],
            "peak_mib": peak_mib()}


# ----------------------------------------------------------------------------- zhongjing (main venv)


def run_ours(work: Path, updates: int, answer_tokens: int) -> dict:
    from zhongjing.config import load_config
    from zhongjing.train.ppo import PPOConfig, train_ppo

    out = work / "ours"
    cfg = load_config(PPOConfig, overrides=[
        f"model={work / 'policy'}", f"prompts={work / 'prompts.jsonl'}", f"output={out}", f"reward.rm={work / 'rm'}",
        "reward.normalize_rm=false", "eval_prompts=0", f"max_length={PROMPT_MAX + answer_tokens}",
        f"generation.max_new_tokens={answer_tokens}", "generation.temperature=1.0", f"generation.batch_size={BATCH}",
        f"generation.forward_batch={BATCH}", f"update_epochs={EPOCHS}", "ppo.kl_coef=0.05", "lora.r=16",
        "lora.alpha=32", "lora.dropout=0.0", f"train.batch_size={BATCH}", "train.grad_accum=1",
        f"train.max_steps={updates}", f"train.lr={LR}", "train.warmup_ratio=0", "train.progress=false",
        "train.overwrite=true", "train.mixed_precision='no'"])
    train_ppo(cfg)
    rows = [json.loads(x) for x in (out / "logs" / "train.jsonl").read_text().splitlines()]
    kept = rows[1:]  # as for TRL: from the end of update 1
    return {"s_per_update": sum(r["seconds"] for r in kept) / len(kept), "updates": len(rows),
            "gen_tokens_per_s": sum(r["gen_tokens_per_s"] * r["t_generate"] for r in rows) /
            sum(r["t_generate"] for r in rows), "peak_mib": peak_mib()}


# ----------------------------------------------------------------------------- set-up


def prepare(work: Path, prompts_n: int) -> None:
    """Policy, reward model and prompts, all from real shared data (main venv)."""
    sys.path.insert(0, str(HERE))
    from train_common import SHARED, build_model, multi_turn_dialogues, write_jsonl

    from zhongjing.data.render import Renderer
    from zhongjing.model.load import load_tokenizer
    from zhongjing.train.rm import RMConfig, train_rm

    rows = multi_turn_dialogues(prompts_n)
    build_model(work / "policy", rows)
    prompts, items = [], []
    renderer = Renderer(load_tokenizer(work / "policy"), max_length=PROMPT_MAX)
    for d in rows:
        ctx = d["messages"][:1]  # the patient's opening turn
        ids = renderer.prompt_ids(ctx) if len(renderer.prompt_ids(ctx)) <= PROMPT_MAX else None
        if ids:
            prompts.append(ids)
            items.append({"id": d.get("id", str(len(items))), "messages": ctx})
    (work / "prompts.json").write_text(json.dumps(prompts))
    write_jsonl(work / "prompts.jsonl", items)
    pairs = SHARED / "medicalgpt_samples" / "reward_medical_test.json"
    train_rm(RMConfig(model=str(work / "policy"), data=[str(pairs)], output=str(work / "rm"), finetune="full",
                      val_ratio=0.0, max_length=256, train=load_train()))


def load_train():
    from zhongjing.train.common import TrainSettings

    return TrainSettings(epochs=1, batch_size=8, lr=1e-4, max_steps=3, progress=False, overwrite=True)


def child(python: str, *args: str) -> dict:
    repo = HERE.parent
    env = dict(os.environ, PYTHONPATH=str(repo), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    r = subprocess.run([python, __file__, *args], capture_output=True, text=True, env=env, cwd=repo)
    if r.returncode != 0:
        raise SystemExit(f"{python} {__file__} {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--updates", type=int, default=8)
    p.add_argument("--answer-tokens", type=int, default=64)
    p.add_argument("--child", nargs=2, metavar=("SYSTEM", "WORK"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        fn = run_ours if a.child[0] == "ours" else run_trl
        print(json.dumps(fn(Path(a.child[1]), a.updates, a.answer_tokens)))
        return
    if not TRL_PY.exists():
        raise SystemExit(f"TRL 1.12 virtualenv not found at {TRL_PY.parent.parent}; see this file's docstring")
    work = Path(tempfile.mkdtemp(prefix="bench-ppo-"))
    prepare(work, 4 * BATCH * a.updates)
    load = os.getloadavg()[0]
    common = ["--updates", str(a.updates), "--answer-tokens", str(a.answer_tokens)]
    ours = child(sys.executable, *common, "--child", "ours", str(work))
    trl = child(str(TRL_PY), *common, "--child", "trl", str(work))
    print(f"\nPPO: {BATCH} prompts × ≤ {a.answer_tokens} answer tokens per update, {EPOCHS} PPO epochs, LoRA r=16, "
          f"{a.updates} updates  (load average before: {load:.1f} on {os.cpu_count()} cores; one run each)")
    print("| system | s / update | speed-up | generation tok/s (rollout) | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, r in (("zhongjing train ppo", ours), ("TRL 1.12 PPOTrainer", trl)):
        print(f"| {name} | {r['s_per_update']:.2f} | {trl['s_per_update'] / r['s_per_update']:.2f}× | "
              f"{r['gen_tokens_per_s']:,.0f} | {r['peak_mib']:,.0f} |")


if __name__ == "__main__":
    main()
