"""`zhongjing train rm`: reward model from K-way rankings (ties allowed) or chosen/rejected pairs.

Reward model = parent + a linear head on the last token of (dialogue, answer). The parent is the *pre-trained* base
by default — the paper's choice: the SFT model's chat habits interfere with judging. Loss per ranking:
−1/C(K,2) · Σ log σ(r_better − r_worse) over its pairs (the other normalisers, `pair_norm`: train/losses.ranking_loss);
a batch holds whole rankings, so every answer is encoded once however many pairs it takes part in. Rankings whose
answers were all wrong learn the honest "I don't know" reply as best (zhongjing/train/prefs.py).
Validation reports pairwise accuracy (beside the "longer answer wins" baseline on the same pairs), also per kind of
pair (real reply vs sample, sample vs sample, vs another patient's reply: train/prefs.PAIR_KINDS), and mean margin;
the best checkpoint (lowest validation loss, or `train.best_metric`) is the result,
and its reward mean/std on the validation answers go to meta.json for PPO's reward normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from zhongjing.config import at_least, parse_stage_args
from zhongjing.errors import ConfigError
from zhongjing.model.lora import Finetune, LoraSettings, apply_lora
from zhongjing.train.common import TrainSettings, print_once
from zhongjing.train.prefs import IDK_ANSWER, PAIR_KINDS


@dataclass
class RMConfig:
    model: str = ""  # parent: the pre-trained base (the paper); any model or adapter folder works
    data: list[str] = field(default_factory=list)  # Ranking JSONL, chosen/rejected pairs, ... (any ranking format)
    format: str | None = None  # input format (None = detected per file)
    val_data: list[str] = field(default_factory=list)  # separate validation rankings; else val_ratio of data
    val_ratio: float = 0.1  # the paper holds out 10%
    output: str = "runs/rm"
    finetune: Finetune = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(lr=1e-4, batch_size=8))  # batch = rankings
    max_length: int = 4096  # dialogue + answer; older exchanges are dropped to fit
    pair_norm: Literal["ckn", "pairs", "one"] = "ckn"  # per-ranking normaliser (losses.ranking_loss): C(K,2), pairs, 1
    idk_answer: str = IDK_ANSWER  # best answer for all-wrong rankings without an annotator replacement
    length_group: int = 16  # sort windows of batch_size × this many rankings by length (less padding); 1 = off
    pack: bool = True  # several answers per row (attention kept inside each): little padding
    redraw_negatives: bool = False  # own-vs-other pairs (meta.negative "other-patient") get another patient's reply
    #                                 each epoch after the first, drawn from the other such pairs (train/pref_batches.py)
    share_prefix: bool = True  # a ranking's dialogue encoded once, its answers branching off it (same scores; SDPA or
    #                            eager attention only, else off with a note); real-data rankings: 1.7× fewer tokens
    dtype: str = "float32"
    skip_bad: bool = False  # leave out malformed records (counted) instead of stopping
    # relevance (train/relevance.py): own real reply vs another dialogue's, on the validation rankings that carry
    # the real reply at every evaluation, and once on these dialogue files (e.g. a test split) with the best model
    relevance_data: list[str] = field(default_factory=list)
    relevance_limit: int = 500  # pairs drawn from each (0 = all)

    def __post_init__(self):
        if not 0 <= self.val_ratio < 1:
            raise ConfigError(f"config key 'val_ratio': must be in [0, 1), got {self.val_ratio}")
        at_least(self, 1, "max_length")
        at_least(self, 0, "relevance_limit")


def rm_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Σ over the batch's rankings of the per-ranking loss; metrics are sums the loop divides by Σ rankings."""
    from zhongjing.model.value_head import position_scores
    from zhongjing.train.losses import ranking_loss

    scores = position_scores(model, batch["input_ids"], batch.get("position_ids"), batch.get("attention_mask"))  # (rows, width)
    r = scores[batch["ends"][:, 0], batch["ends"][:, 1]]  # (N,) each answer read at its end-of-turn token
    per_ranking = ranking_loss(r, batch["better"], batch["worse"], batch["owner"], batch["norm"])  # (R,)
    diff = (r[batch["better"]] - r[batch["worse"]]).detach()
    rd = r.detach()
    return per_ranking.sum(), {"pairs": float(diff.numel()), "correct": float((diff > 0).sum()),
                               "margin": float(diff.sum()), "answers": float(rd.numel()),
                               "reward": float(rd.sum()), "reward_sq": float((rd ** 2).sum()),
                               "longer_correct": longer_correct(batch)} | by_kind(batch, diff)


def by_kind(batch: dict, diff: torch.Tensor) -> dict:
    """Pairs, correct pairs and longer-answer-wins pairs of each PAIR_KINDS kind (every key always present: the
    validation sums must have the same fields in every process)."""
    if "pair_kind" not in batch:
        return {}
    out = {}
    for i, name in enumerate(PAIR_KINDS):
        sel = batch["pair_kind"] == i  # (P,)
        out[f"pairs/{name}"] = float(sel.sum())
        out[f"correct/{name}"] = float(((diff > 0) & sel).sum())
        out[f"longer/{name}"] = longer_correct(batch, sel)
    return out


def kind_metrics(rec: dict) -> dict:
    """{kind: {pairs, accuracy, longer_wins}} for the kinds present in a validation record (sums divided by val_n:
    the ratios are exact, the pair count is recovered)."""
    out = {}
    for name in PAIR_KINDS:
        p = rec.get(f"val_pairs/{name}") or 0.0
        if p > 0:
            out[name] = {"pairs": round(p * rec["val_n"]), "accuracy": rec[f"val_correct/{name}"] / p,
                         "longer_wins": rec[f"val_longer/{name}"] / p}
    return out


def longer_correct(batch: dict, sel: torch.Tensor | None = None) -> float:
    """The trivial baseline beside pairwise accuracy: pairs whose better answer is the longer one (a tie in length
    counts half, like a coin), over the pairs `sel` (P,) bool picks (all when None). A reward model that learnt only
    length scores this; the report shows both."""
    if "lengths" not in batch:
        return float("nan")
    d = batch["lengths"][batch["better"]] - batch["lengths"][batch["worse"]]  # (P,) tokens, better − worse
    d = d if sel is None else d[sel]
    return float((d > 0).sum()) + 0.5 * float((d == 0).sum())


def rm_metrics(rec: dict) -> dict:
    """Ratios of the summed validation metrics: pairwise accuracy, mean margin, reward mean and std."""
    pairs, answers = rec.get("val_pairs") or float("nan"), rec.get("val_answers") or float("nan")
    mean = rec["val_reward"] / answers
    var = max(rec["val_reward_sq"] / answers - mean ** 2, 0.0)
    return {"val_accuracy": rec["val_correct"] / pairs, "val_margin": rec["val_margin"] / pairs,
            "val_longer_wins": rec.get("val_longer_correct", float("nan")) / pairs,
            "val_reward_mean": mean, "val_reward_std": math.sqrt(var)} | {
            f"val_accuracy/{k}": v["accuracy"] for k, v in kind_metrics(rec).items()}


def train_rm(cfg: RMConfig) -> Path:
    from zhongjing.model.load import load_tokenizer
    from zhongjing.model.load import REWARD_TASK
    from zhongjing.model.value_head import new_reward_model
    from zhongjing.train.common import make_accelerator
    from zhongjing.train.pref_batches import pref_batches
    from zhongjing.train.pref_fit import fit_prefs

    if not cfg.model or not cfg.data:
        raise ConfigError("train rm needs model=PARENT_DIR and data=RANKINGS (a file, folder or list)")
    acc = make_accelerator(cfg.train)
    tok = load_tokenizer(cfg.model)
    data, counts = pref_batches(cfg, tok, per="ranking", with_targets=False)
    model = new_reward_model(cfg.model, cfg.dtype, pad_token_id=tok.pad_token_id, quantize=cfg.lora.quantize)
    model.config.use_cache = False
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_lora(model, cfg.lora, "SEQ_CLS") if cfg.finetune == "lora" else model.requires_grad_(True)
    from zhongjing.model.value_head import attention_kind, takes_custom_mask

    data.share_prefix = cfg.share_prefix and cfg.pack and takes_custom_mask(model)
    if cfg.share_prefix and cfg.pack and not data.share_prefix:
        print_once(f"rm: {attention_kind(model)} attention cannot take a branching mask; every answer is encoded "
                   "with its own copy of the dialogue (share_prefix off)")
    for p in model.parameters():  # trained weights in fp32 even over an fp16 base (the fp16 scaler needs them so)
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16) and cfg.finetune == "lora":
            p.data = p.data.float()
    model.train()
    meta = {"task": REWARD_TASK, "pad_token_id": tok.pad_token_id,
            "head": {"type": "linear", "layer": "score", "outputs": 1, "pooling": "rightmost non-pad token",
                     "load": "AutoModelForSequenceClassification(num_labels=1) [+ PeftModel]"}}

    def reward_stats(best: dict) -> dict:  # for PPO's reward normalisation; and the best model's per-kind accuracy
        return {"reward_stats": {"mean": best["val_reward_mean"], "std": best["val_reward_std"],
                                 "on": "validation answers", "step": best["step"]},
                "pair_kinds": kind_metrics(best)}

    from zhongjing.train import relevance

    val_rel = relevance.held_out_batches(cfg, tok, data)

    def on_eval(rec: dict) -> dict:
        out = rm_metrics(rec)
        if val_rel is not None:
            out["val_relevance"] = relevance.accuracy(model, val_rel, rm_loss)[0]
        return out

    out = fit_prefs("rm", cfg, model, tok, data, counts, rm_loss, on_eval, accelerator=acc, meta=meta,
                    best_extra=reward_stats)
    if acc.is_main_process:
        relevance.record(cfg, out, tok, data, rm_loss)
    return out


def main(argv: list[str]) -> int:
    cfg = parse_stage_args("zhongjing train rm", RMConfig, argv, __doc__.split("\n\n")[0])
    out = train_rm(cfg)
    from zhongjing.model.load import read_meta

    meta = read_meta(out)
    m = meta.get("metrics", {})
    acc = m.get("val_accuracy")
    rel = "".join(f", {k.replace('_', ' ')} {m[k]:.3f}"
                  + (f" [bigram overlap: {m[k + '_overlap']:.3f}]" if k + "_overlap" in m else "")
                  for k in ("val_relevance", "data_relevance") if k in m)
    rel = (f" [the longer answer wins: {m['val_longer_wins']:.3f}]" if "val_longer_wins" in m else "") + rel
    print_once(f"reward model → {out}" + (f" (val pairwise accuracy {acc:.3f}, margin {m.get('val_margin'):.3f}{rel})"
                                      if acc is not None else ""))
    for k, v in (meta.get("pair_kinds") or {}).items():
        print_once(f"  {k.replace('_', ' ')}: accuracy {v['accuracy']:.3f} [the longer answer wins: "
                   f"{v['longer_wins']:.3f}], {v['pairs']} held-out pairs")
    return 0

