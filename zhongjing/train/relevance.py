"""Relevance accuracy of a reward model: does it prefer the real reply to THIS patient over a real reply to another?

Both replies were written by real doctors, so length, style and fluency cannot decide; only whether the reply
answers this patient can. 50% is chance. Pairs come from held-out data only:
- rankings that carry the real reply (`meta.reference`, e.g. the RM's validation rankings), each against the real
  reply of a ranking from another dialogue (`meta.source_id`);
- dialogue files (e.g. the built test split): every doctor turn, with the real history before it, against a doctor
  turn of another dialogue.
The pairs are ordinary two-answer rankings (own > other), so the RM's own batching and loss score them.
"""

from __future__ import annotations

from typing import Iterable

from zhongjing.data.mismatch import own_vs_other, turn_items
from zhongjing.data.schema import Dialogue, Ranking


def from_rankings(rankings: Iterable[Ranking], seed: int | str = 0, limit: int = 0) -> list[Ranking]:
    items = [(r.meta.get("source_id") or r.id, r.messages, (r.meta.get("reference") or "").strip())
             for r in rankings]
    return own_vs_other([i for i in items if i[2]], seed, limit)


def from_dialogues(dialogues: Iterable[Dialogue], seed: int | str = 0, limit: int = 0) -> list[Ranking]:
    return own_vs_other(turn_items(dialogues), seed, limit)


def batches(cfg, tokenizer, data, rankings: list[Ranking]):
    """Relevance rankings encoded and batched the way the RM's validation rankings are (None when there are none)."""
    from collections import Counter

    from zhongjing.data.render import Renderer
    from zhongjing.train.pref_batches import RankingBatches
    from zhongjing.train.prefs import encode

    enc = encode(rankings, Renderer(tokenizer, max_length=cfg.max_length, strategy="last"), Counter())
    if not enc:
        return None
    return RankingBatches([], enc, cfg.train.batch_size, seed=cfg.train.seed, group=1, pad_id=data.pad_id,
                          pack=cfg.pack).val_batches()


def held_out_batches(cfg, tokenizer, data):
    """Pairs from the RM's own validation rankings that carry the real reply (same split as train rm's)."""
    from zhongjing.train.prefs import load_prefs

    prefs = load_prefs(cfg.data, cfg.format, val_paths=cfg.val_data, val_ratio=cfg.val_ratio, seed=cfg.train.seed,
                       idk_answer=cfg.idk_answer, skip_bad=cfg.skip_bad)
    return batches(cfg, tokenizer, data, from_rankings(prefs.val, cfg.train.seed, cfg.relevance_limit))


def record(cfg, out, tokenizer, data, loss_fn) -> dict:
    """The best (saved) reward model's relevance on the validation rankings and on `cfg.relevance_data`, into
    OUT/meta.json's metrics (`val_relevance`, `data_relevance`) with the pair counts under `relevance`."""
    from pathlib import Path

    from zhongjing.data.readers import read_dialogues
    from zhongjing.io import write_json
    from zhongjing.model.load import read_meta
    from zhongjing.model.value_head import load_reward_model

    model = load_reward_model(out)[0]
    found: dict = {}
    val = held_out_batches(cfg, tokenizer, data)
    if val is not None:
        found["val"] = accuracy(model, val, loss_fn)
    if cfg.relevance_data:
        pairs = from_dialogues(read_dialogues(list(cfg.relevance_data)), cfg.train.seed, cfg.relevance_limit)
        b = batches(cfg, tokenizer, data, pairs)
        if b is not None:
            found["data"] = accuracy(model, b, loss_fn)
    meta = read_meta(out)
    meta.setdefault("metrics", {}).update({f"{k}_relevance": a for k, (a, _) in found.items()})
    meta["relevance"] = {k: {"accuracy": a, "pairs": n} for k, (a, n) in found.items()}
    meta["relevance"]["data_files"] = [Path(p).name for p in cfg.relevance_data]
    write_json(Path(out) / "meta.json", meta)
    return found


def accuracy(model, batches, loss_fn) -> tuple[float, int]:
    """Share of pairs whose own reply scores higher, over batches collated like the RM's validation batches."""
    import torch

    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = pairs = 0.0
    try:
        with torch.no_grad():
            for batch in batches:
                batch = {k: v.to(dev) if hasattr(v, "to") else v for k, v in batch.items()}
                _, m = loss_fn(model, batch)
                correct, pairs = correct + m["correct"], pairs + m["pairs"]
    finally:
        model.train(was)
    return (correct / pairs if pairs else float("nan")), int(pairs)
