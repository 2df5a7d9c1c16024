"""Language-modelling loss for pre-training and SFT: summed cross-entropy over trained targets only.

The output layer runs only on positions that have a target (doctor turns in SFT): for a small model the
vocabulary projection is the biggest matmul, and prompt and padding positions would waste it. The selection is
a forward pre-hook on the model's own output layer, so the forward still goes through the DDP/DeepSpeed
wrapper (gradient sync) and any architecture with `get_output_embeddings()` works.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from zhongjing.data.render import IGNORE
from zhongjing.model.wrappers import unwrap


@contextlib.contextmanager
def only_positions(model, keep: torch.Tensor):
    """While active, the output layer sees hidden[keep] (N, H) instead of (B, L, H) and returns (N, V)."""
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise RuntimeError("model has no output embeddings to select positions on")
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0][keep],) + tuple(args[1:]))
    try:
        yield
    finally:
        handle.remove()


DENSE = 0.9  # above this share of trained positions (pre-training blocks) selecting them costs more than it saves


def lm_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Σ cross-entropy over targets != IGNORE. → (scalar loss sum, {}) — the loop divides by Σ batch["n"]."""
    targets = batch["targets"]  # (B, L)
    kwargs = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
    if batch["n"] >= DENSE * targets.numel():
        logits = model(input_ids=batch["input_ids"], use_cache=False, **kwargs).logits  # (B, L, V)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                               reduction="sum"), {}
    keep = targets != IGNORE  # (B, L)
    with only_positions(model, keep):
        logits = model(input_ids=batch["input_ids"], use_cache=False, **kwargs).logits  # (N, V)
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), {}


def start_lm(stage: str, cfg):
    """Start-up pt and sft share: accelerator (seeded), a main-process logger, tokenizer, the model to train."""
    from zhongjing.model.load import load_tokenizer
    from zhongjing.model.lora import count_params, prepare_model
    from zhongjing.train.common import make_accelerator

    acc = make_accelerator(cfg.train)
    log = print if acc.is_main_process else (lambda *_: None)
    tokenizer = load_tokenizer(cfg.model)
    model = prepare_model(cfg.model, cfg.finetune, cfg.lora, dtype=cfg.dtype,
                          gradient_checkpointing=cfg.train.gradient_checkpointing)
    trainable, total = count_params(model)
    log(f"{stage}: {cfg.finetune} fine-tuning, {trainable:,} of {total:,} parameters trained")
    return acc, log, tokenizer, model


def train_lm(stage: str, cfg, *, accelerator, model, tokenizer, data, data_records: list[dict],
             metrics: dict | None = None):
    """What pt and sft share after their data is ready: meta.json identity, TrainedIO, fit with the LM loss
    and validation perplexity. Returns the FitResult."""
    from zhongjing.model.identity import training_meta
    from zhongjing.model.lora import TrainedIO
    from zhongjing.train.loop import fit, perplexity

    parent = str(Path(cfg.model).resolve())
    meta = training_meta(stage, cfg, parent, data_records, kind="adapter" if cfg.finetune == "lora" else "full",
                         metrics=metrics or {})
    return fit(model, data, lm_loss, cfg.train, cfg.output, accelerator=accelerator,
               io=TrainedIO(tokenizer, parent), meta=meta,
               on_eval=lambda rec: {"val_ppl": perplexity(rec["val_loss"])})
