"""The one supervised training loop (on `accelerate`), shared by pt, sft, rm, dpo — and its building blocks.

Plugging in a new stage
-----------------------
1. Model: `zhongjing.model.lora.prepare_model(parent, finetune, lora)` (or your own module, e.g. with a value head).
2. Data: an object with `train_batches(epoch) -> Sequence[dict]` (a pure function of seed + epoch — that is what
   makes resume exact; `batching.LazyBatches` collates on access) and `val_batches() -> Sequence[dict]` (may be
   empty). Each batch dict carries tensors plus `n`, its loss normaliser (trained tokens for LM, rankings for RM),
   and optionally `ntokens` (real tokens, for tokens/s) and `numel`.
3. Loss: `loss_fn(model, batch) -> (loss_sum, metrics)`, a scalar SUM over the batch's n items plus a dict of
   per-batch sums (e.g. {"correct": 5.0}); the loop divides by Σn over the whole accumulation window and all
   processes, so the result does not depend on how the global batch is split (1×8 = 8×1 = 2 processes × 4).
4. Saving: an `io` object with `save(model, folder, state_dict)` and `restore(model, folder)`
   (`zhongjing.model.lora.TrainedIO` for causal LMs), and a `meta` dict (stage, kind, base_model, inputs_hash,
   data, config) — see checkpoint.py for the folder layout every stage shares.
5. `fit(model, data, loss_fn, settings, out, accelerator=..., io=..., meta=...)`.
Loops that are not "batch → loss → step" (PPO, GRPO, consult) reuse `train_step`, optim.build_optimizer /
build_scheduler / Guard and the same `checkpoint.Bookkeeper` fit uses (folder, resume, logs, saves, final model).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from zhongjing.errors import ConfigError, ZhongjingError
from zhongjing.train import checkpoint as ckpt
from zhongjing.train.common import TrainSettings
from zhongjing.train.logs import RunLogger
from zhongjing.train.optim import Guard, build_optimizer, build_scheduler

__all__ = ["fit", "evaluate", "FitResult", "build_optimizer", "build_scheduler", "Guard", "RunLogger"]


@dataclass
class FitResult:
    step: int
    best_step: int
    best_val: float | None
    history: list[dict] = field(default_factory=list)  # eval records
    skipped: dict = field(default_factory=dict)


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _reduce(accelerator, values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, "sum").tolist() if accelerator.num_processes > 1 else t.tolist()


@torch.no_grad()
def evaluate(model, batches, loss_fn, accelerator, max_batches: int = 0) -> dict:
    """Σloss/Σn (and Σmetric/Σn) over the validation batches, each process taking every W-th one."""
    was_training = model.training
    model.eval()
    n_total = len(batches) if not max_batches else min(max_batches, len(batches))
    loss = n = 0.0
    sums: dict[str, float] = {}
    mine: list = list(range(accelerator.process_index, n_total, accelerator.num_processes))
    if ckpt.sharded_params(accelerator):  # every forward gathers weights collectively: same count everywhere
        mine += [None] * (-(-n_total // accelerator.num_processes) - len(mine))
    for i in mine:
        b = _to_device(batches[0 if i is None else i], accelerator.device)
        l, m = loss_fn(model, b)
        if i is None:  # a repeat that only keeps this process in step
            continue
        loss += float(l)
        n += b["n"]
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    keys = sorted(sums)
    if accelerator.num_processes > 1:  # a process with no validation batch must still send the same fields
        from accelerate.utils import broadcast_object_list

        keys = broadcast_object_list([keys])[0]
    loss, n, *vals = _reduce(accelerator, [loss, n] + [sums.get(k, 0.0) for k in keys])
    model.train(was_training)
    out = {"val_loss": loss / n if n else float("nan"), "val_n": int(n)}
    out.update({f"val_{k}": v / n if n else float("nan") for k, v in zip(keys, vals)})
    return out


def _plan(data, settings: TrainSettings, world: int) -> tuple[list[int], int]:
    """Optimizer steps per epoch (full accumulation windows only) and the total."""
    per = settings.grad_accum * world
    steps = []
    for e in range(settings.epochs if not settings.max_steps else 1):
        steps.append(len(data.train_batches(e)) // per)
    if steps[0] == 0:
        raise ZhongjingError(f"too little training data: {len(data.train_batches(0))} micro-batches, but one "
                             f"optimizer step needs grad_accum × processes = {per}")
    total = settings.max_steps or sum(steps)
    return steps, total


def train_step(model, window: list[dict], loss_fn, acc, optimizer, scheduler, guard: Guard,
                settings: TrainSettings, log: RunLogger) -> dict:
    """One optimizer step over this process's micro-batches of the window; returns the step's log record."""
    t0 = time.perf_counter()
    lr = scheduler.get_last_lr()[0]  # the rate this step uses (a guard decay applies from the next one)
    world = acc.num_processes
    ds = acc.distributed_type.name == "DEEPSPEED"  # DeepSpeed clips and steps inside the window's last backward
    fp16 = acc.scaler is not None or (ds and model.fp16_enabled())
    # every window ends in a gradient sync, a short one too (the last of a PPO rollout): restart accelerate's count
    acc.gradient_accumulation_steps, acc.step = len(window), 0
    div = model.gradient_accumulation_steps() if ds else len(window)  # what accelerate / DeepSpeed divide a loss by
    n_global = _reduce(acc, [float(sum(b["n"] for b in window))])[0]
    loss_sum, tokens, msum = 0.0, 0, {}
    for b in window:
        b = _to_device(b, acc.device)
        with acc.accumulate(model):
            l, m = loss_fn(model, b)
            # accelerate/DeepSpeed divide by the window and DDP/ZeRO average over processes: undo both, ÷ global Σn
            acc.backward(l * (div * world / max(n_global, 1.0)))
        loss_sum += float(l.detach())
        tokens += b.get("ntokens", 0)
        for k, v in m.items():
            msum[k] = msum.get(k, 0.0) + float(v)
    keys = sorted(msum)
    loss_sum, tokens, *mvals = _reduce(acc, [loss_sum, float(tokens)] + [msum[k] for k in keys])
    loss = loss_sum / n_global if n_global else float("nan")
    clip = settings.max_grad_norm if settings.max_grad_norm > 0 else float("inf")
    norm = acc.clip_grad_norm_(model.parameters(), clip)
    norm = float(norm) if norm is not None else None
    verdict = guard.check(loss, norm, fp16) if n_global else "empty"
    if verdict == "explosion":
        guard.on_explosion(scheduler, acc.scaler)
        # DeepSpeed skips a non-finite update itself (halving its fp16 scale) but has applied a finite one, clipped
        applied = ds and norm is not None and math.isfinite(norm)
        log.info(f"gradient explosion (loss {loss}, grad norm {norm}): "
                 + ("DeepSpeed applied the clipped update" if applied else "step skipped")
                 + f", lr × {guard.lr_decay}" + (", loss scale halved" if fp16 and not applied else ""))
    elif verdict == "empty":
        if acc.scaler is not None:
            acc.scaler.update()  # reset the scaler's per-step bookkeeping after unscale
    else:
        optimizer.step()
        if fp16 and acc.optimizer_step_was_skipped:
            guard.overflows += 1
            verdict = "overflow"
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    dt = time.perf_counter() - t0
    rec = {"loss": loss, "lr": lr, "grad_norm": norm, "trained": int(n_global), "tokens": int(tokens),
           "tokens_per_s": tokens / dt, "trained_per_s": n_global / dt, "skipped": verdict,
           **{k: v / n_global for k, v in zip(keys, mvals)}}
    if fp16:
        rec["loss_scale"] = acc.scaler.get_scale() if acc.scaler is not None else model.optimizer.loss_scale
    return rec



def fit(model, data, loss_fn: Callable, settings: TrainSettings, out: str | Path, *, accelerator, io, meta: dict,
        optimizer=None, scheduler=None, on_eval: Callable[[dict], dict] | None = None) -> FitResult:
    """Train, evaluate, checkpoint and finally put the best checkpoint's model into `out` (see checkpoint.py)."""
    out = Path(out)
    acc, world, rank = accelerator, accelerator.num_processes, accelerator.process_index
    ga = settings.grad_accum
    _, total = _plan(data, settings, world)
    if optimizer is None:
        optimizer = build_optimizer(model, settings.lr, settings.weight_decay, settings.betas, settings.eps)
    if scheduler is None:
        scheduler = build_scheduler(optimizer, total, settings.warmup_steps, settings.warmup_ratio,
                                    settings.min_lr_ratio)
    model, optimizer = acc.prepare(model, optimizer)
    scheduler.optimizer = optimizer  # the prepared wrapper shares param_groups with the raw optimizer
    guard = Guard(settings.explode_grad_norm, settings.explode_lr_decay)
    book = ckpt.Bookkeeper(out, settings, accelerator=acc, model=model, io=io, optimizer=optimizer,
                           scheduler=scheduler, guard=guard, meta=meta,
                           batch={"grad_accum": ga, "batch_size": settings.batch_size})
    val = data.val_batches()

    step, epoch, in_epoch, best_step, best_val, history = 0, 0, 0, -1, None, []
    st = book.resume()
    if st is not None:
        step, epoch, in_epoch = st["step"], st["epoch"], st["in_epoch"]
        best_step, best_val, history = st["best_step"], st["best_val"], st["history"]

    def score(rec: dict) -> float:
        """rec's value of train.best_metric, signed so that lower is better."""
        name = settings.best_metric
        if name not in rec:
            raise ConfigError(f"train.best_metric {name!r}: this stage's validation logs no such metric "
                              f"(it logs: {', '.join(sorted(k for k in rec if k.startswith('val_')))})")
        return float(rec[name]) if settings.best_mode == "min" else -float(rec[name])
    log = book.logger(total, step)

    def exhausted() -> bool:
        """train.patience evaluations in a row since the best one (early stopping; from `history`, so resume-safe)."""
        return bool(settings.patience) and sum(h["step"] > best_step for h in history) >= settings.patience

    def state() -> dict:
        return {"step": step, "epoch": epoch, "in_epoch": in_epoch, "best_step": best_step, "best_val": best_val,
                "history": history}

    def eval_and_save(do_eval: bool) -> None:
        nonlocal best_step, best_val
        if do_eval and len(val):
            raw = evaluate(model, val, loss_fn, acc, settings.max_eval_batches)
            extra = on_eval(raw) if on_eval else {}
            rec = {"step": step, "epoch": epoch, **raw, **extra}
            history.append(rec)
            # on_eval turns the loss function's per-batch sums into metrics: log those, not the sums
            shown = set(extra) | {"step", "epoch", "val_loss", "val_n"}
            log.eval({k: v for k, v in rec.items() if not on_eval or k in shown})
            now, best = score(rec), next((h for h in history if h["step"] == best_step), None)
            if best is None or math.isnan(score(best)) or now < score(best):  # ties: the earlier
                best_step, best_val = step, rec["val_loss"]
        elif not len(val):
            best_step = step  # no validation: the last checkpoint is the result
        book.save(step, state(), best_step, protect={best_step})

    t_start = time.perf_counter()
    while step < total and not exhausted():
        batches = data.train_batches(epoch)
        n_steps = len(batches) // (ga * world)
        if n_steps == 0:
            raise ZhongjingError(f"epoch {epoch} has too few micro-batches ({len(batches)}) for one step")
        while step < total:
            rec = train_step(model, [batches[(in_epoch * ga + j) * world + rank] for j in range(ga)], loss_fn,
                              acc, optimizer, scheduler, guard, settings, log)
            step, in_epoch = step + 1, in_epoch + 1
            log.step({"step": step, "epoch": epoch, **rec, "elapsed": round(time.perf_counter() - t_start, 4)})
            end_of_epoch = in_epoch >= n_steps
            if end_of_epoch:  # the saved data position is the start of the next epoch
                epoch, in_epoch = epoch + 1, 0
            do_eval = step == total or (step % settings.eval_every == 0 if settings.eval_every else end_of_epoch)
            if do_eval or (settings.save_every and step % settings.save_every == 0):
                eval_and_save(do_eval)
            if end_of_epoch or (do_eval and exhausted()):  # patience only changes at an evaluation
                break
    stopped_early = exhausted() and step < total
    if stopped_early:
        log.info(f"early stop at step {step} of {total}: {settings.patience} evaluation(s) without beating step "
                 f"{best_step}'s {settings.best_metric}")
    book.finish(best_step, {"step": step,
                            "metrics": {**meta.get("metrics", {}), "best_val_loss": best_val, "history": history,
                                        "best_by": {"metric": settings.best_metric, "mode": settings.best_mode},
                                        "stopped_early": stopped_early, "planned_steps": total,
                                        "explosions": guard.explosions, "overflows": guard.overflows,
                                        "train_seconds": round(time.perf_counter() - t_start, 1)}})
    log.info(f"done: {step} steps, best step {best_step}" + (f" (val loss {best_val:.4f})" if best_val else "")
             + f" → {out}")
    log.close()
    return FitResult(step, best_step, best_val, history, guard.state_dict())


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")
