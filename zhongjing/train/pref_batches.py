"""Preference batches for `train rm` and `train dpo`: whole rankings per micro-batch, each answer encoded once however
many pairs it is in (packed into shared rows by default), pairs as index tensors."""

from __future__ import annotations

import os
import sys
from collections import Counter

from zhongjing.data.render import Renderer
from zhongjing.data.schema import group_pairs
from zhongjing.errors import ZhongjingError
from zhongjing.model.load import cap_config_length, context_of
from zhongjing.train.prefs import Encoded, encode, load_prefs


def pack_answers(lengths: list[int]) -> list[list[int]]:
    """First-fit decreasing: answers (by index) into rows no longer than the longest one. A pair's chosen and rejected
    answers often differ several-fold in length; padding each to the longest would waste most of the batch."""
    width = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r in range(len(rows)) if lengths[i] <= room[r]), None)
        if r is None:
            rows.append([]), room.append(width)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


class RankingBatches:
    """Micro-batches of whole rankings (batch_size of them): every answer encoded once however many pairs it is in,
    pairs as index tensors. `n` (the loss normaliser) counts rankings (RM) or pairs (DPO).

    With `pack` (default) the answers share rows, each with position ids restarting at 0 — transformers then keeps
    attention inside each answer — and `ends` (N, 2) gives the (row, column) of every answer's last token, `seg`
    (rows, width) which answer each position belongs to (−1 = padding), `lengths` (N,) each answer's tokens with its
    dialogue (the same dialogue for every answer of a ranking: the "longer answer wins" baseline reads it)."""

    def __init__(self, train: list[Encoded], val: list[Encoded], batch_size: int, *, seed: int, group: int,
                 pad_id: int, pair_norm: str = "ckn", per: str = "ranking", pack: bool = True):
        self.train, self.val, self.bs, self.seed, self.group = train, val, batch_size, seed, group
        self.pad_id, self.pair_norm, self.per, self.pack = pad_id, pair_norm, per, pack

    def collate(self, items: list[Encoded]) -> dict:
        import torch

        from zhongjing.data.render import IGNORE
        from zhongjing.train.batching import Example, collate_rows
        from zhongjing.train.losses import ranking_norm, ranking_pairs

        answers, offsets, groups = [], [], []
        for e in items:
            offsets.append(len(answers))
            targets = e.targets or [[IGNORE] * len(ids) for ids in e.ids]
            answers += [Example(ids, t, 0) for ids, t in zip(e.ids, targets)]
            groups.append(e.groups)
        better, worse, owner = ranking_pairs(groups, offsets)
        norms = [ranking_norm(e.k, int((owner == r).sum()), self.pair_norm) for r, e in enumerate(items)]
        rows = pack_answers([len(a.input_ids) for a in answers]) if self.pack else [[i] for i in range(len(answers))]
        batch = collate_rows(rows, answers, self.pad_id)
        seg = torch.full_like(batch["input_ids"], -1)
        ends = torch.zeros(len(answers), 2, dtype=torch.long)
        for r, row in enumerate(rows):
            col = 0
            for i in row:
                n = len(answers[i].input_ids)
                seg[r, col:col + n] = i
                ends[i] = torch.tensor([r, col + n - 1])
                col += n
        batch |= {"better": better, "worse": worse, "owner": owner, "norm": torch.tensor(norms), "seg": seg,
                  "ends": ends, "lengths": torch.tensor([len(a.input_ids) for a in answers]),
                  "n": len(items) if self.per == "ranking" else len(better)}
        if items and items[0].targets is None:
            del batch["targets"]
        return batch

    def train_batches(self, epoch: int):
        from zhongjing.train.batching import LazyBatches, group_by_length
        from zhongjing.train.mix import rng

        order = rng(self.seed, "rankings", epoch).permutation(len(self.train)).tolist()
        lengths = [sum(len(x) for x in e.ids) for e in self.train]
        plan = group_by_length(order, lengths, self.bs, self.group, self.seed, epoch)
        return LazyBatches(plan, lambda rows: self.collate([self.train[r[0]] for r in rows]))

    def val_batches(self):
        from zhongjing.train.batching import LazyBatches

        order = sorted(range(len(self.val)), key=lambda i: sum(len(x) for x in self.val[i].ids))
        plan = [order[i:i + self.bs] for i in range(0, len(order), self.bs)]
        return LazyBatches(plan, lambda idx: self.collate([self.val[i] for i in idx]))


def pref_batches(cfg, tokenizer, *, per: str, with_targets: bool) -> tuple[RankingBatches, Counter]:
    """cfg (RMConfig / DPOConfig) → the encoded rankings as batches, and what was counted on the way."""
    prefs = load_prefs(cfg.data, cfg.format, val_paths=cfg.val_data, val_ratio=cfg.val_ratio, seed=cfg.train.seed,
                       idk_answer=cfg.idk_answer, skip_bad=cfg.skip_bad)
    counts = Counter(prefs.counts)

    def say(msg: str) -> None:  # once, not per launched process
        if os.environ.get("RANK", "0") == "0":
            print(msg, file=sys.stderr)

    cap_config_length(cfg, context_of(cfg.model), say)  # as sft
    renderer = Renderer(tokenizer, max_length=cfg.max_length, strategy="last")
    train = encode(prefs.train, renderer, counts, with_targets=with_targets)
    val = encode(prefs.val, renderer, counts, with_targets=with_targets)
    # what is actually trained on: a ranking with an answer too long for max_length was just left out
    counts["train"], counts["val"] = len(train), len(val)
    counts["train_pairs"] = sum(len(group_pairs(e.groups)) for e in train)
    if not train:
        raise ZhongjingError(f"no usable rankings in {cfg.data} ({dict(counts)})")
    return RankingBatches(train, val, cfg.train.batch_size, seed=cfg.train.seed, group=cfg.length_group,
                          pad_id=tokenizer.pad_token_id, pair_norm=getattr(cfg, "pair_norm", "ckn"), per=per,
                          pack=cfg.pack), counts
