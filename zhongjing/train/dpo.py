"""`zhongjing train dpo`: direct preference optimisation (sigmoid loss) from the same rankings the RM reads.

Policy = parent (usually the SFT model) + a trainable LoRA adapter; reference = the same weights with the adapter
disabled, so no second model is held. A K-way ranking gives all its (better, worse) pairs; a batch holds whole
rankings and each answer is run once per batch whatever the number of pairs it is in. Log-probabilities are
summed over the answer tokens only (the vocabulary projection runs on those positions alone). All-wrong rankings
teach the honest "I don't know" answer as preferred (prefs.py). Loss normaliser: pairs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zhongjing.config import at_least, parse_stage_args
from zhongjing.errors import ConfigError
from zhongjing.model.lora import LoraSettings
from zhongjing.train.common import TrainSettings, print_once
from zhongjing.train.prefs import IDK_ANSWER


@dataclass
class DPOConfig:
    model: str = ""  # policy parent: the SFT model (full folder or adapter)
    data: list[str] = field(default_factory=list)  # Ranking JSONL, chosen/rejected pairs, ...
    format: str | None = None
    val_data: list[str] = field(default_factory=list)
    val_ratio: float = 0.1
    output: str = "runs/dpo"
    beta: float = 0.1  # strength of the implicit KL to the reference
    label_smoothing: float = 0.0  # conservative DPO: assumed fraction of flipped labels
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(lr=5e-5, batch_size=4))  # batch = rankings
    max_length: int = 4096
    idk_answer: str = IDK_ANSWER
    length_group: int = 16
    pack: bool = True  # several answers per row (attention kept inside each): little padding
    dtype: str = "float32"
    skip_bad: bool = False

    def __post_init__(self):
        if not 0 < self.beta < float("inf"):  # (NaN fails too: it trained to a NaN loss and wrote the model)
            raise ConfigError(f"config key 'beta': must be positive, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"config key 'label_smoothing': must be in [0, 0.5), got {self.label_smoothing}")
        if not 0 <= self.val_ratio < 1:  # -1 held nothing out silently; 1.5 said "no usable rankings"
            raise ConfigError(f"config key 'val_ratio': must be in [0, 1), got {self.val_ratio}")
        at_least(self, 1, "max_length", "length_group")


def sequence_logprobs(model, batch: dict) -> torch.Tensor:
    """Σ log π(answer token) per answer → (N,). Rows may hold several answers (batch["seg"] says whose each position
    is); logits are computed only where a target exists."""
    from zhongjing.data.render import IGNORE
    from zhongjing.train.lm import only_positions
    from zhongjing.train.losses import token_logprobs

    targets = batch["targets"]
    keep = targets != IGNORE  # (rows, width)
    kw = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
    with only_positions(model, keep):
        logits = model(input_ids=batch["input_ids"], use_cache=False, **kw).logits  # (T, V)
    per_token = token_logprobs(logits[None], targets[keep][None])[0]  # (T,)
    n = batch["ends"].shape[0]
    return torch.zeros(n, dtype=per_token.dtype, device=per_token.device).index_add(0, batch["seg"][keep], per_token)


def dpo_loss_fn(model, batch: dict, *, beta: float, label_smoothing: float) -> tuple[torch.Tensor, dict]:
    """Σ over the batch's pairs of the sigmoid DPO loss; metrics are sums the loop divides by Σ pairs."""
    from zhongjing.train.losses import dpo_loss
    from zhongjing.train.rollout import reference_mode

    b, w = batch["better"], batch["worse"]
    with torch.no_grad(), reference_mode(model):
        ref = sequence_logprobs(model, batch)
    pol = sequence_logprobs(model, batch)
    loss, chosen, rejected = dpo_loss(pol[b], pol[w], ref[b], ref[w], beta, label_smoothing)
    margin = chosen - rejected
    return loss.sum(), {"correct": float((margin > 0).sum()), "margin": float(margin.sum()),
                        "chosen_reward": float(chosen.sum()), "rejected_reward": float(rejected.sum()),
                        "chosen_logp": float(pol[b].detach().sum())}


def dpo_metrics(rec: dict) -> dict:
    return {"val_accuracy": rec["val_correct"]}  # already Σcorrect / Σpairs


def train_dpo(cfg: DPOConfig) -> Path:
    from zhongjing.model.load import load_tokenizer
    from zhongjing.model.lora import prepare_model
    from zhongjing.train.common import make_accelerator
    from zhongjing.train.pref_batches import pref_batches
    from zhongjing.train.pref_fit import fit_prefs

    if not cfg.model or not cfg.data:
        raise ConfigError("train dpo needs model=POLICY_PARENT and data=RANKINGS")
    acc = make_accelerator(cfg.train)
    tok = load_tokenizer(cfg.model)
    data, counts = pref_batches(cfg, tok, per="pair", with_targets=True)
    model = prepare_model(cfg.model, "lora", cfg.lora, dtype=cfg.dtype,
                          gradient_checkpointing=cfg.train.gradient_checkpointing)
    loss_fn = functools.partial(dpo_loss_fn, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
    return fit_prefs("dpo", cfg, model, tok, data, counts, loss_fn, dpo_metrics, accelerator=acc, meta={})


def main(argv: list[str]) -> int:
    cfg = parse_stage_args("zhongjing train dpo", DPOConfig, argv, __doc__.split("\n\n")[0])
    out = train_dpo(cfg)
    from zhongjing.model.load import read_meta

    m = read_meta(out).get("metrics", {})
    acc = m.get("val_accuracy")
    print_once(f"dpo policy → {out}" + (f" (val preference accuracy {acc:.3f})"
                                    if acc is not None and not math.isnan(acc) else ""))
    return 0
