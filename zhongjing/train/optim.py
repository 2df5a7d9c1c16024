"""Optimizer, learning-rate schedule and the gradient-explosion guard — building blocks every stage uses,
including loops (PPO) that do not go through `fit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def build_optimizer(model, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
    """AdamW over the trainable parameters; no weight decay on biases and norm weights (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    if not decay and not no_decay:
        raise RuntimeError("model has no trainable parameters")
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
              if g["params"]]
    # fused: one kernel for all tensors (what HF Trainer uses by default); foreach where fused is unsupported
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, foreach=True)


class CosineSchedule:
    """Linear warm-up to the peak lr, cosine decay to min_ratio·peak at `total` steps.

    `decay` is a persistent multiplier the explosion guard lowers; it is part of the state, so a resumed run
    continues with the decayed rate. Not an accelerate-prepared scheduler on purpose: accelerate would step it
    once per process.
    """

    def __init__(self, optimizer, total: int, warmup: int = 0, min_ratio: float = 0.0):
        self.optimizer, self.total, self.warmup, self.min_ratio = optimizer, max(1, total), max(0, warmup), min_ratio
        self.peak = [g["lr"] for g in optimizer.param_groups]
        self.step_count, self.decay = 0, 1.0
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        f = self.factor(self.step_count) * self.decay
        for g, peak in zip(self.optimizer.param_groups, self.peak):
            g["lr"] = peak * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "decay": self.decay, "total": self.total, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.decay = int(state["step_count"]), float(state["decay"])
        self._apply()


def build_scheduler(optimizer, total_steps: int, warmup_steps: int = 0, warmup_ratio: float = 0.0,
                    min_lr_ratio: float = 0.0) -> CosineSchedule:
    warmup = warmup_steps or int(round(warmup_ratio * total_steps))
    return CosineSchedule(optimizer, total_steps, warmup, min_lr_ratio)


@dataclass
class Guard:
    """The paper's remedy for gradient explosion: skip the update, halve the loss scale, decay the learning rate.

    An explosion is a non-finite loss or gradient norm, or a finite norm above `max_norm` (0 = only non-finite).
    With fp16 the accelerate GradScaler also skips overflowing steps and halves its scale by itself; those
    early calibration overflows are counted as `overflows`, not as explosions, and do not decay the rate.
    """

    max_norm: float = 0.0
    lr_decay: float = 0.5
    explosions: int = 0
    overflows: int = 0

    def check(self, loss: float, grad_norm: float | None, fp16: bool) -> str | None:
        """'explosion', 'overflow' (fp16 scaler handles it) or None."""
        norm_bad = grad_norm is not None and not math.isfinite(grad_norm)
        if fp16 and norm_bad and math.isfinite(loss):
            return "overflow"
        if not math.isfinite(loss) or norm_bad:
            return "explosion"
        if self.max_norm > 0 and grad_norm is not None and grad_norm > self.max_norm:
            return "explosion"
        return None

    def on_explosion(self, scheduler: CosineSchedule, scaler=None) -> None:
        self.explosions += 1
        scheduler.decay *= self.lr_decay
        scheduler._apply()
        if scaler is not None:  # halve the loss scale (fp16); update() also resets the unscale bookkeeping
            scaler.update(scaler.get_scale() * 0.5)

    def state_dict(self) -> dict:
        return {"explosions": self.explosions, "overflows": self.overflows}

    def load_state_dict(self, state: dict) -> None:
        self.explosions, self.overflows = int(state.get("explosions", 0)), int(state.get("overflows", 0))
