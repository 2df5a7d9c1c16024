"""Preference batches for `train rm` and `train dpo`: whole rankings per micro-batch, each answer encoded once however
many pairs it is in (packed into shared rows by default), pairs as index tensors."""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Callable

from zhongjing.data.mismatch import OTHER_PATIENT, redraw_other
from zhongjing.data.render import Renderer
from zhongjing.data.schema import group_pairs
from zhongjing.errors import ZhongjingError
from zhongjing.model.load import cap_config_length, context_of
from zhongjing.train.prefs import PAIR_KINDS, Encoded, encode, load_prefs


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


def shared_prefix(ids: list[list[int]]) -> int:
    """Tokens every answer of a ranking starts with (the rendered dialogue, often more), leaving each answer at least
    its last token of its own: that is where its reward is read."""
    n = min(len(x) for x in ids) - 1
    first = ids[0]
    for p in range(n):
        if any(x[p] != first[p] for x in ids[1:]):
            return p
    return max(n, 0)


def tree_rows(items: list[Encoded], pad_id: int) -> dict:
    """Each ranking's shared prefix (the dialogue) once, then every answer's own tokens after it — the answers branch
    off the prefix: an answer token attends to the prefix and to its own earlier tokens only, with positions
    continuing from the prefix, so it sees exactly what it would see alone (same logits), while the dialogue is
    computed once instead of K times. Rankings are packed into rows (first-fit decreasing); the mask is the
    (rows, 1, width, width) boolean "may attend" (padding attends to itself only). `ends` as in `collate`."""
    import numpy as np
    import torch

    prefix = [shared_prefix(e.ids) for e in items]
    sizes = [p + sum(len(x) - p for x in e.ids) for e, p in zip(items, prefix)]
    rows = pack_answers(sizes)
    width = max(sum(sizes[i] for i in r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    position_ids = np.zeros((len(rows), width), dtype=np.int64)
    group = np.full((len(rows), width), -1, dtype=np.int64)  # which ranking each position belongs to
    branch = np.zeros((len(rows), width), dtype=np.int64)  # 0 = the shared prefix, k + 1 = answer k's own tokens
    ends = np.zeros((sum(len(e.ids) for e in items), 2), dtype=np.int64)
    offsets = np.cumsum([0] + [len(e.ids) for e in items])
    for r, row in enumerate(rows):
        col = 0
        for g in row:
            e, p = items[g], prefix[g]
            input_ids[r, col:col + p], position_ids[r, col:col + p], group[r, col:col + p] = e.ids[0][:p], np.arange(p), g
            col += p
            for k, x in enumerate(e.ids):
                n = len(x) - p
                input_ids[r, col:col + n], position_ids[r, col:col + n] = x[p:], np.arange(p, len(x))
                group[r, col:col + n], branch[r, col:col + n] = g, k + 1
                ends[offsets[g] + k] = (r, col + n - 1)
                col += n
    grp, br = torch.from_numpy(group), torch.from_numpy(branch)
    same = (grp[:, :, None] == grp[:, None, :]) & (grp[:, :, None] >= 0)  # (rows, q, k)
    visible = (br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None])  # the key is prefix or the query's branch
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (same & visible & causal) | torch.eye(width, dtype=torch.bool)  # padding: itself, so no row is empty
    return {"input_ids": torch.from_numpy(input_ids), "position_ids": torch.from_numpy(position_ids),
            "attention_mask": mask[:, None], "ends": torch.from_numpy(ends), "ntokens": int(sum(sizes)),
            "numel": int(input_ids.size)}


class RankingBatches:
    """Micro-batches of whole rankings (batch_size of them): every answer encoded once however many pairs it is in,
    pairs as index tensors. `n` (the loss normaliser) counts rankings (RM) or pairs (DPO).

    With `pack` (default) the answers share rows, each with position ids restarting at 0 — transformers then keeps
    attention inside each answer — and `ends` (N, 2) gives the (row, column) of every answer's last token, `seg`
    (rows, width) which answer each position belongs to (−1 = padding), `lengths` (N,) each answer's tokens with its
    dialogue (the same dialogue for every answer of a ranking: the "longer answer wins" baseline reads it),
    `pair_kind` (P,) what each pair compares (train/prefs.PAIR_KINDS).
    With `share_prefix` (reward model: one score per answer, no per-token targets) a ranking's dialogue is encoded
    once and its answers branch off it (`tree_rows`); the batch then has an `attention_mask` and no `seg`."""

    def __init__(self, train: list[Encoded], val: list[Encoded], batch_size: int, *, seed: int, group: int,
                 pad_id: int, pair_norm: str = "ckn", per: str = "ranking", pack: bool = True,
                 share_prefix: bool = False, redraw: Callable[[int], list[Encoded]] | None = None):
        self.train, self.val, self.bs, self.seed, self.group = train, val, batch_size, seed, group
        self.pad_id, self.pair_norm, self.per, self.pack = pad_id, pair_norm, per, pack
        self.share_prefix = share_prefix
        self.redraw = redraw  # epoch → the training rankings of that epoch (epoch 0: `train` as read)
        self._epoch: tuple[int, list[Encoded]] | None = None

    def train_items(self, epoch: int) -> list[Encoded]:
        if not self.redraw or epoch == 0:
            return self.train
        if self._epoch is None or self._epoch[0] != epoch:  # the loop asks for an epoch's batches more than once
            self._epoch = (epoch, self.redraw(epoch))
        return self._epoch[1]

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
        n_pairs = torch.bincount(owner, minlength=len(items)).tolist()  # per ranking
        norms = [ranking_norm(e.k, n, self.pair_norm) for e, n in zip(items, n_pairs)]
        kinds = [k for e, n in zip(items, n_pairs) for k in (e.kinds or (PAIR_KINDS.index("other"),) * n)]
        common = {"better": better, "worse": worse, "owner": owner, "norm": torch.tensor(norms),
                  "lengths": torch.tensor([len(a.input_ids) for a in answers]),
                  "pair_kind": torch.tensor(kinds, dtype=torch.long),  # (P,) same order as better/worse
                  "n": len(items) if self.per == "ranking" else len(better)}
        if self.share_prefix and items and items[0].targets is None:  # per-token targets (DPO) need their own rows
            return tree_rows(items, self.pad_id) | common
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
        batch |= common | {"seg": seg, "ends": ends}
        if items and items[0].targets is None:
            del batch["targets"]
        return batch

    def train_batches(self, epoch: int):
        from zhongjing.train.batching import LazyBatches, group_by_length
        from zhongjing.train.mix import rng

        items = self.train_items(epoch)
        order = rng(self.seed, "rankings", epoch).permutation(len(items)).tolist()
        lengths = [sum(len(x) for x in e.ids) for e in items]
        plan = group_by_length(order, lengths, self.bs, self.group, self.seed, epoch)
        return LazyBatches(plan, lambda rows: self.collate([items[r[0]] for r in rows]))

    def val_batches(self):
        from zhongjing.train.batching import LazyBatches

        order = sorted(range(len(self.val)), key=lambda i: sum(len(x) for x in self.val[i].ids))
        plan = [order[i:i + self.bs] for i in range(0, len(order), self.bs)]
        return LazyBatches(plan, lambda idx: self.collate([self.val[i] for i in idx]))


def redrawn(kept: list, train: list[Encoded], renderer, with_targets: bool, seed: int) -> Callable[[int], list[Encoded]]:
    """epoch → `train` with every own-vs-other ranking's negative drawn anew (data.mismatch.redraw_other): each epoch
    pairs a patient's real reply with a different other patient's reply, so the reward model cannot learn the
    negatives by heart; one whose new negative does not fit max_length keeps its old one."""

    def epoch_items(epoch: int) -> list[Encoded]:
        fresh = redraw_other(kept, f"{seed}:{epoch}")
        out = list(train)
        for i, (old, new) in enumerate(zip(kept, fresh)):
            if new is not old:
                enc = encode([new], renderer, Counter(), with_targets=with_targets)
                out[i] = enc[0] if enc else train[i]
        return out

    return epoch_items


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
    kept: list = []
    train = encode(prefs.train, renderer, counts, with_targets=with_targets, kept=kept)
    val = encode(prefs.val, renderer, counts, with_targets=with_targets)
    redraw = None
    if getattr(cfg, "redraw_negatives", False):
        redraw = redrawn(kept, train, renderer, with_targets, seed=cfg.train.seed)
        counts["redrawn_per_epoch"] = sum(r.meta.get("negative") == OTHER_PATIENT for r in kept)
    # what is actually trained on: a ranking with an answer too long for max_length was just left out
    counts["train"], counts["val"] = len(train), len(val)
    counts["train_pairs"] = sum(len(group_pairs(e.groups)) for e in train)
    if not train:
        raise ZhongjingError(f"no usable rankings in {cfg.data} ({dict(counts)})")
    return RankingBatches(train, val, cfg.train.batch_size, seed=cfg.train.seed, group=cfg.length_group,
                          pad_id=tokenizer.pad_token_id, pair_norm=getattr(cfg, "pair_norm", "ckn"), per=per,
                          pack=cfg.pack, redraw=redraw), counts
