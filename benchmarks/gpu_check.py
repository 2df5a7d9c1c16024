"""The GPU check: zhongjing's own stages on a ~0.5B Qwen2-shaped random model (Qwen2.5-0.5B's shape), bf16.

    python benchmarks/gpu_check.py [--out gpu.txt]      # one GPU, ≤ 8 minutes on an H200
    python benchmarks/gpu_check.py --dry                # CPU, tiny shapes, seconds (run by the tests)

Prints one markdown table: SFT tokens/s and MFU (full fine-tuning, packed 2048-token rows, bf16 autocast over fp32
master weights) with plain PyTorch SDPA and with Liger / FlashAttention-2 when installed; RM and PPO update times;
generation tokens/s at batch 1/16/64; peak GPU memory; `accelerate launch` with DeepSpeed ZeRO-2 and with FSDP on
one GPU, each saving a checkpoint and resuming from it. A missing package prints 'skipped: X not installed'; a
failing section prints its error and the check goes on. MFU = model FLOPs (6·N per token for the matmul
parameters, lm_head included, + 12·layers·seq·hidden for attention) / time / the GPU's dense bf16 peak (989 TFLOP/s
for an H100/H200 by the datasheet; the measured matmul rate is printed too). Data are synthetic dialogues.
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
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
ROWS: list[tuple[str, str]] = []
OUT_FILE: list[Path] = []  # the table file, rewritten after every row (a run stopped at its limit keeps what it had)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

SYMPTOMS = ["头痛", "咳嗽", "发热", "腹痛", "腰痛", "失眠", "咽痛", "皮疹", "胸闷", "乏力"]
ASKS = ["持续多久了", "有没有发烧", "吃过什么药", "睡眠怎么样", "有没有过敏史", "以前有过类似情况吗"]
REPLIES = ["三天了", "没有发烧", "吃过布洛芬", "睡得不好", "没有过敏", "以前没有过"]
ADVICE = ["多喝水注意休息", "清淡饮食按时复诊", "先做血常规检查", "症状加重请及时就医", "避免熬夜适当运动"]


def row(name: str, value: str) -> None:
    ROWS.append((name, value))
    print(f"| {name} | {value} |", flush=True)
    for f in OUT_FILE:
        f.write_text("| check | result |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in ROWS),
                     encoding="utf-8")


def section(name: str):
    def wrap(fn):
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except Exception as e:  # one failing section must not hide the others
                traceback.print_exc()
                row(name, f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        return run
    return wrap


def dialogues(n: int, turns: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sym = rng.choice(SYMPTOMS)
        msgs = [{"role": "user", "content": f"医生您好，我{sym}{rng.randint(2, 9)}天了，" + "，".join(
            rng.sample(REPLIES, 3)) + "，请问怎么办？"}]
        for _ in range(turns - 1):
            msgs += [{"role": "assistant", "content": "请问" + "，".join(rng.sample(ASKS, 3)) + "？"},
                     {"role": "user", "content": "，".join(rng.sample(REPLIES, 4)) + "。"}]
        msgs.append({"role": "assistant", "content": f"{sym}的话，建议" + "，".join(rng.sample(ADVICE, 3)) + "。"})
        out.append({"id": f"d{i}", "messages": msgs})
    return out


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def flops_per_token(model_dir: Path, seq: int) -> tuple[float, int]:
    """6·N (matmul parameters incl. the output layer) + 12·L·S·H; N returned too."""
    cfg = json.loads((model_dir / "config.json").read_text())
    h, L, v, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // heads
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter
    n = L * per_layer + h * v
    return 6.0 * n + 12.0 * L * seq * h, n


def train_logs(out: Path) -> list[dict]:
    f = out / "logs" / "train.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []


def steady(values: list[float], skip: int) -> float:
    vals = values[skip:] or values
    return statistics.median(vals) if vals else float("nan")


def peak_mem(reset: bool = False) -> str:
    import torch

    if not torch.cuda.is_available():
        import resource

        return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS (CPU)"
    gib = torch.cuda.max_memory_allocated() / 2**30
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return f"{gib:.1f} GiB"


@section("matmul peak")
def matmul_peak(dry: bool) -> float:
    import torch

    if not torch.cuda.is_available():
        row("device", f"CPU ({os.cpu_count()} cores) — dry run, tiny shapes")
        return float("nan")
    name = torch.cuda.get_device_name()
    row("device", f"{name}, torch {torch.__version__}")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    rate = 10 * 2 * 8192**3 / (time.perf_counter() - t)
    row("bf16 matmul 8192³ (measured ceiling)", f"{rate / 1e12:.0f} TFLOP/s")
    return rate


def packages() -> None:
    from zhongjing.model.kernels import installed

    for mod, name in [("liger_kernel", "liger-kernel"), ("flash_attn", "flash-attn"), ("deepspeed", "deepspeed"),
                      ("bitsandbytes", "bitsandbytes")]:
        if installed(mod):
            import importlib.metadata as md

            row(f"package {name}", md.version(name))
        else:
            row(f"package {name}", f"skipped: {name} not installed")


def sft_config(base: Path, data: Path, out: Path, steps: int, pack: int, batch: int, finetune: str = "full"):
    return [f"model={base}", f"output={out}", f"data=[{{path: {data}}}]", f"finetune={finetune}",
            f"max_length={pack}", f"pack_length={pack}", "batching=pack", "val_fraction=0.0",
            f"train.batch_size={batch}", f"train.max_steps={steps}", "train.lr=1e-5", "train.warmup_steps=0",
            "train.mixed_precision=bf16", "train.progress=false", "train.overwrite=true", "train.save_every=0",
            "mix={multi: 1.0, single: 1.0}"]


def run_sft(overrides: list[str], kernels: str) -> Path:
    from zhongjing.config import load_config
    from zhongjing.train.sft import SFTConfig, run

    os.environ["ZHONGJING_KERNELS"] = kernels
    cfg = load_config(SFTConfig, overrides=overrides)
    run(cfg)
    return Path(cfg.output)


@section("SFT")
def sft(base: Path, data: Path, work: Path, dry: bool, peak: float) -> None:
    import torch

    from zhongjing.model.kernels import installed

    pack, batch, steps = (128, 2, 4) if dry else (2048, 8, 12)
    fpt, n = flops_per_token(base, pack)
    row("model", f"Qwen2-shaped, {n / 1e6:.0f}M matmul parameters, packed rows of {pack} tokens × {batch}")
    variants = [("plain PyTorch (SDPA)", "none")]
    if installed("liger_kernel"):
        variants.append(("Liger kernels", "liger"))
    else:
        row("SFT with Liger", "skipped: liger-kernel not installed")
    if installed("flash_attn"):
        variants.append(("FlashAttention-2 + Liger", "fa2,liger"))
    else:
        row("SFT with FlashAttention-2", "skipped: flash-attn not installed")
    for label, kernels in variants:
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        out = run_sft(sft_config(base, data, work / f"sft-{kernels}", steps, pack, batch), kernels)
        recs = train_logs(out)
        tps = steady([r["tokens_per_s"] for r in recs], 3)
        meta = json.loads((out / "meta.json").read_text())
        mfu = tps * fpt / PEAK_BF16.get(_gpu_kind(), peak) if torch.cuda.is_available() else float("nan")
        row(f"SFT full bf16, {label}", f"{tps:,.0f} tokens/s, MFU {mfu:.1%} (steps {len(recs)}, "
            f"loss {recs[0]['loss']:.2f}→{recs[-1]['loss']:.2f}), peak {peak_mem()}, kernels {meta.get('kernels')}")


def _gpu_kind() -> str:
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((k for k in PEAK_BF16 if k in name), "")


@section("QLoRA SFT")
def qlora(base: Path, data: Path, work: Path, dry: bool) -> None:
    import torch

    from zhongjing.model.kernels import installed

    if not installed("bitsandbytes"):
        return row("QLoRA SFT (4-bit base)", "skipped: bitsandbytes not installed")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    pack, batch, steps = (128, 2, 3) if dry else (2048, 8, 8)
    out = run_sft(sft_config(base, data, work / "qlora", steps, pack, batch, finetune="lora")
                  + ["lora.quantize=4bit", "train.lr=1e-4"], "none")
    recs = train_logs(out)
    row("QLoRA SFT (4-bit NF4 base, LoRA r=16, bf16)", f"{steady([r['tokens_per_s'] for r in recs], 2):,.0f} tokens/s, "
        f"loss {recs[0]['loss']:.2f}→{recs[-1]['loss']:.2f}, peak {peak_mem(reset=True)}")


@section("RM")
def rm(base: Path, work: Path, dry: bool) -> None:
    from zhongjing.config import load_config
    from zhongjing.train.rm import RMConfig, train_rm

    rng = random.Random(1)
    pairs = []
    for d in dialogues(64 if dry else 256, 3, seed=3):
        good = d["messages"][-1]["content"]
        pairs.append({"question": d["messages"][0]["content"], "response_chosen": good,
                      "response_rejected": rng.choice(ADVICE)})
    data = write_jsonl(work / "pairs.jsonl", pairs)
    steps = 3 if dry else 8
    out = train_rm(load_config(RMConfig, overrides=[
        f"model={base}", f"data=[{data}]", f"output={work / 'rm'}", "finetune=lora", "val_ratio=0.0",
        "max_length=512", f"train.batch_size={4 if dry else 32}", f"train.max_steps={steps}",
        "train.mixed_precision=bf16", "train.progress=false", "train.overwrite=true"]))
    recs = train_logs(Path(out))
    secs = [r["tokens"] / r["tokens_per_s"] for r in recs if r.get("tokens_per_s")]
    row("RM update (LoRA, 32 pairs, bf16)", f"{steady(secs, 2) * 1000:.0f} ms/step over {len(recs)} steps, "
        f"peak {peak_mem(reset=True)}")


@section("PPO")
def ppo(base: Path, data: Path, work: Path, dry: bool) -> None:
    from zhongjing.config import load_config
    from zhongjing.train.ppo import PPOConfig, train_ppo

    out = train_ppo(load_config(PPOConfig, overrides=[
        f"model={base}", f"prompts=[{data}]", f"output={work / 'ppo'}", "eval_prompts=0", "max_length=1024",
        f"generation.max_new_tokens={8 if dry else 64}", f"train.batch_size={4 if dry else 32}",
        "train.grad_accum=1", f"train.max_steps={2 if dry else 3}", "reward.ask_question=1.0",
        "train.mixed_precision=bf16", "train.progress=false", "train.overwrite=true"]))
    recs = train_logs(Path(out))
    el = [r["elapsed"] for r in recs]
    per = [b - a for a, b in zip([0.0] + el, el)]
    row("PPO update (LoRA policy + value head, rollout + 2 epochs, bf16)",
        f"{steady(per, 1):.2f} s/update over {len(recs)} updates, peak {peak_mem(reset=True)}")


@section("generation")
def generation(base: Path, dry: bool) -> None:
    import torch

    from zhongjing.data.render import Renderer
    from zhongjing.model.generation import sample
    from zhongjing.model.load import load_model, load_tokenizer

    tok = load_tokenizer(base)
    model = load_model(base, dtype="bfloat16" if torch.cuda.is_available() else "float32")
    if torch.cuda.is_available():
        model = model.cuda()
    r = Renderer(tok, max_length=1024)
    prompts = [r.prompt_ids(d["messages"][:1]) for d in dialogues(64, 1, seed=5)]
    new = 8 if dry else 128
    for bs in (1, 16, 64):
        if dry and bs == 64:
            continue
        ps = prompts[:bs]
        sample(model, tok, ps[:1], max_new_tokens=4, temperature=1.0, seed=0, batch_size=bs)  # warm-up
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        gens = sample(model, tok, ps, max_new_tokens=new, temperature=1.0, seed=0, batch_size=bs, stop_ids=set())
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        toks = sum(len(g.token_ids) for g in gens)
        row(f"generation batch {bs}", f"{toks / dt:,.0f} tokens/s ({toks} tokens in {dt:.2f} s)")
    row("peak memory (generation, bf16 weights)", peak_mem(reset=True))
    del model


ACCEL = {
    "zero2": "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n  zero3_init_flag: false\n"
             "  offload_optimizer_device: none\n  offload_param_device: none\n",
    "fsdp": "distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
            "  fsdp_state_dict_type: FULL_STATE_DICT\n  fsdp_cpu_ram_efficient_loading: false\n"
            "  fsdp_reshard_after_forward: true\n",
}


MP = {True: "bf16", False: '"no"'}  # YAML reads a bare no as false


@section("accelerate launch")
def launch(kind: str, base: Path, data: Path, work: Path, dry: bool) -> None:
    import torch

    name = f"accelerate launch {'DeepSpeed ZeRO-2' if kind == 'zero2' else 'FSDP'}"
    if kind == "zero2":
        from zhongjing.model.kernels import installed

        if not installed("deepspeed"):
            return row(name, "skipped: deepspeed not installed")
    if not torch.cuda.is_available() and kind == "fsdp":
        return row(name, "skipped: FSDP needs a GPU (accelerate enables it only on accelerators)")
    gpu = torch.cuda.is_available()
    cfg = work / f"{kind}.yaml"
    cfg.write_text("compute_environment: LOCAL_MACHINE\n" + ACCEL[kind]
                   + f"mixed_precision: {MP[gpu]}\nnum_machines: 1\nnum_processes: 1\n"
                   + f"machine_rank: 0\nuse_cpu: {'false' if gpu else 'true'}\n")
    pack, batch = (128, 2) if dry else (2048, 4)
    out = work / f"launch-{kind}"
    base_args = sft_config(base, data, out, 0, pack, batch, finetune="lora")
    base_args = [a for a in base_args if not a.startswith(("train.max_steps", "train.save_every",
                                                           "train.mixed_precision", "train.overwrite"))]
    env = dict(os.environ, ZHONGJING_KERNELS="none", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    times, said = [], ""
    for steps, extra in ((2, ["train.overwrite=true"]), (4, ["train.resume=true"])):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), "-m", "zhongjing",
               "train", "sft", *base_args, f"train.max_steps={steps}", "train.save_every=2", *extra]
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        times.append(time.perf_counter() - t)
        said = p.stdout + p.stderr
        log = (OUT_FILE[0].parent if OUT_FILE else work) / f"launch-{kind}-{steps}.log"
        log.write_text(said, encoding="utf-8")  # the whole launch output, next to the table
        if p.returncode != 0:
            errors = [x.strip() for x in said.splitlines() if "Error" in x and "elastic/errors" not in x]
            return row(name, f"error (exit {p.returncode}, run to step {steps}; log {log.name}): "
                             f"{(errors[-1] if errors else said.strip().splitlines()[-1])[:300]}")
    recs = train_logs(out)
    resumed = "resumed from" in said
    meta = json.loads((out / "meta.json").read_text())
    row(name, f"ok: 2 steps + save, then resume to step {meta.get('step')} "
        f"({'resumed' if resumed else 'resume line not found'}; steps logged {[r['step'] for r in recs]}; "
        f"{times[0]:.0f} s + {times[1]:.0f} s)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU, tiny shapes, seconds")
    p.add_argument("--out", default=None, help="also write the table here")
    p.add_argument("--work", default=None)
    p.add_argument("--skip", nargs="*", default=[], help="sections to leave out: sft qlora rm ppo gen zero2 fsdp")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from zhongjing.model.families import QWEN2_05B, TINY, build_family

    if a.out:
        OUT_FILE.append(Path(a.out))
    work = Path(a.work or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print("| check | result |\n|---|---|", flush=True)
    peak = matmul_peak(a.dry) or float("nan")
    packages()
    dlg = dialogues(120 if a.dry else 900, 2 if a.dry else 8)
    data = write_jsonl(work / "dialogues.jsonl", dlg)
    texts = [m["content"] for d in dlg[:100] for m in d["messages"]]
    shape = TINY if a.dry else QWEN2_05B
    base = build_family("qwen2", work / "base", texts, shape=shape, vocab_size=600 if a.dry else 3000,
                        model_vocab=None if a.dry else QWEN2_05B["vocab_size"])
    row("setup", f"model + tokenizer built in {time.time() - t0:.0f} s")
    if "sft" not in a.skip:
        sft(base, data, work, a.dry, peak)
    if "rm" not in a.skip:
        rm(base, work, a.dry)
    if "ppo" not in a.skip:
        ppo(base, data, work, a.dry)
    if "gen" not in a.skip:
        generation(base, a.dry)
    for kind in ("zero2", "fsdp"):
        if kind not in a.skip:
            launch(kind, base, data, work, a.dry)
    if "qlora" not in a.skip:
        qlora(base, data, work, a.dry)
    row("total", f"{time.time() - t0:.0f} s")
    return 1 if any(v.startswith("error") for _, v in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
