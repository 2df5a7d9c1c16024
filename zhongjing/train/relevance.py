"""Relevance accuracy of a reward model: does it prefer the real reply to THIS patient over a real reply to another?

Both replies were written by real doctors, so length, style and fluency cannot decide; only whether the reply
answers this patient can. 50% is chance. Pairs come from held-out data only:
- rankings that carry the real reply (`meta.reference`, e.g. the RM's validation rankings), each against the real
  reply of a ranking from another dialogue (`meta.source_id`);
- dialogue files (e.g. the built test split): every doctor turn, with the real history before it, against a doctor
  turn of another dialogue.
The pairs are ordinary two-answer rankings (own > other), so the RM's own batching and loss score them.

Beside each accuracy stands its trivial baseline on the same pairs, no model at all: the reply whose character
bigrams overlap the patient's turns more (F1) wins, a tie counts half. A reward model below it has not learnt
more about relevance than surface matching.
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


def overlap_baseline(rankings: list[Ranking]) -> float:
    """Share of own-vs-other pairs where the own reply's character-bigram F1 with the patient's turns is higher
    (ties half): the trivial baseline printed beside relevance accuracy."""
    from zhongjing.data.simulate import overlap_f1

    wins = 0.0
    for r in rankings:
        patient = "".join(m.content for m in r.messages if m.role == "user")
        own, other = (overlap_f1(a, patient) for a in r.responses[:2])
        wins += 1.0 if own > other else 0.5 if own == other else 0.0
    return wins / len(rankings) if rankings else float("nan")


def batches(cfg, tokenizer, data, rankings: list[Ranking]):
    """Relevance rankings encoded and batched the way the RM's validation rankings are (None when there are none),
    and the rankings that fit max_length (the pairs scored)."""
    from collections import Counter

    from zhongjing.data.render import Renderer
    from zhongjing.train.pref_batches import RankingBatches
    from zhongjing.train.prefs import encode

    renderer = Renderer(tokenizer, max_length=cfg.max_length, strategy="last")
    enc, kept = [], []
    for r in rankings:
        e = encode([r], renderer, Counter())
        enc += e
        kept += [r] * len(e)
    if not enc:
        return None, []
    return RankingBatches([], enc, cfg.train.batch_size, seed=cfg.train.seed, group=1, pad_id=data.pad_id,
                          pack=cfg.pack, share_prefix=data.share_prefix).val_batches(), kept


def held_out_pairs(cfg) -> list[Ranking]:
    """Own-vs-other pairs from the RM's own validation rankings that carry the real reply (same split as train rm's)."""
    from zhongjing.train.prefs import load_prefs

    prefs = load_prefs(cfg.data, cfg.format, val_paths=cfg.val_data, val_ratio=cfg.val_ratio, seed=cfg.train.seed,
                       idk_answer=cfg.idk_answer, skip_bad=cfg.skip_bad)
    return from_rankings(prefs.val, cfg.train.seed, cfg.relevance_limit)


def held_out_batches(cfg, tokenizer, data):
    return batches(cfg, tokenizer, data, held_out_pairs(cfg))[0]


def record(cfg, out, tokenizer, data, loss_fn) -> dict:
    """The best (saved) reward model's relevance on the validation rankings and on `cfg.relevance_data`, into
    OUT/meta.json's metrics (`val_relevance`, `data_relevance`, and the bigram-overlap baseline on the same pairs:
    `val_relevance_overlap`, `data_relevance_overlap`) with the pair counts under `relevance`."""
    from pathlib import Path

    from zhongjing.data.readers import read_dialogues
    from zhongjing.io import write_json
    from zhongjing.model.load import read_meta
    from zhongjing.model.value_head import load_reward_model

    model = load_reward_model(out)[0]
    found: dict = {}
    sets = {"val": held_out_pairs(cfg)}
    if cfg.relevance_data:
        sets["data"] = from_dialogues(read_dialogues(list(cfg.relevance_data)), cfg.train.seed, cfg.relevance_limit)
    for k, pairs in sets.items():
        b, kept = batches(cfg, tokenizer, data, pairs)
        if b is not None:
            found[k] = (*accuracy(model, b, loss_fn), overlap_baseline(kept))
    meta = read_meta(out)
    meta.setdefault("metrics", {}).update({f"{k}_relevance": a for k, (a, _, _) in found.items()})
    meta["metrics"].update({f"{k}_relevance_overlap": o for k, (_, _, o) in found.items()})
    meta["relevance"] = {k: {"accuracy": a, "pairs": n, "overlap_baseline": o} for k, (a, n, o) in found.items()}
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
