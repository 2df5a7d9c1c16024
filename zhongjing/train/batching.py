"""Turning token lists into micro-batches: fixed blocks (pre-training), length-grouped or packed rows (SFT).

Every batch is a dict the loop and the LM loss understand:
  input_ids     (B, L) long
  targets       (B, L) long — the token each position must predict, IGNORE where untrained. Shifted per sample
                before samples are joined, so the last token of one sample never learns the first of the next.
  position_ids  (B, L) long — only for packed rows: restarts at 0 for every sample. With attention_mask=None,
                transformers then builds a block-diagonal causal mask (sdpa/eager) or uses varlen kernels (flash),
                so attention never crosses a sample boundary (tests/test_train_batching.py checks the logits).
  n             int — trained targets in the batch: the loss normaliser
  ntokens       int — real (non-pad) tokens; numel — B·L. Padding fraction = 1 − ntokens/numel.
Rows are right-padded and no attention mask is passed: under a causal mask no real token can see a pad to its
right, so padded and unpadded logits agree and sdpa keeps its fast causal path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from zhongjing.data.render import IGNORE
from zhongjing.train.mix import rng


def shift(labels: Sequence[int]) -> list[int]:
    """labels (the token at each position, or IGNORE) → targets (what each position predicts)."""
    return list(labels[1:]) + [IGNORE]


class LazyBatches(Sequence):
    """A list of batch plans collated on access, so an epoch never holds all its tensors at once."""

    def __init__(self, plan: list, collate: Callable[[object], dict]):
        self.plan, self.collate = plan, collate

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i):
        return self.collate(self.plan[i])


# ----------------------------------------------------------------------------- pre-training blocks

def pack_stream(docs: Sequence[np.ndarray], order: Sequence[int], block_size: int, eos: int) -> np.ndarray:
    """Documents in `order`, each followed by eos, cut into (n_blocks, block_size); the ragged tail is dropped."""
    parts = []
    for i in order:
        parts += [docs[i], np.array([eos], dtype=docs[i].dtype)]
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    n = len(stream) // block_size
    return stream[: n * block_size].reshape(n, block_size)


def collate_blocks(blocks: np.ndarray) -> dict:
    """(B, L) token blocks: every position but the last of a block predicts the next token."""
    ids = torch.from_numpy(blocks.astype(np.int64))
    targets = torch.full_like(ids, IGNORE)
    targets[:, :-1] = ids[:, 1:]
    n = ids.shape[0] * (ids.shape[1] - 1)
    return {"input_ids": ids, "targets": targets, "n": n, "ntokens": ids.numel(), "numel": ids.numel()}


# ----------------------------------------------------------------------------- SFT rows


@dataclass
class Example:
    """One rendered sample, kept as int32 arrays: 70k dialogues × 4096 tokens as Python int lists would take GBs."""

    input_ids: np.ndarray  # (L,) int32
    targets: np.ndarray  # (L,) int32, already shifted (see `shift`)
    n: int  # trained targets

    @classmethod
    def from_labels(cls, input_ids: Sequence[int], labels: Sequence[int]) -> "Example":
        t = np.asarray(shift(labels), dtype=np.int32)
        return cls(np.asarray(input_ids, dtype=np.int32), t, int((t != IGNORE).sum()))


def group_by_length(order: Sequence[int], lengths: Sequence[int], batch_size: int, group: int,
                    seed: int, epoch: int) -> list[list[list[int]]]:
    """Micro-batches of `batch_size` samples of similar length (padding stays small): sort within windows of
    batch_size·group samples of the shuffled order, cut, then shuffle the batches. group=1 → plain batches."""
    window = max(1, batch_size * group)
    batches = []
    for s in range(0, len(order), window):
        chunk = list(order[s:s + window])
        if group > 1:
            chunk.sort(key=lambda i: -lengths[i])
        batches += [[[i] for i in chunk[k:k + batch_size]] for k in range(0, len(chunk), batch_size)]
    if group > 1:
        perm = rng(seed, "batches", epoch).permutation(len(batches))
        batches = [batches[k] for k in perm]
    return batches


def pack_rows(order: Sequence[int], lengths: Sequence[int], row_length: int, batch_size: int, group: int,
              seed: int, epoch: int) -> list[list[list[int]]]:
    """Pack samples into rows of ≤ row_length tokens (first-fit decreasing inside windows of the shuffled order),
    then `batch_size` rows per micro-batch. A sample longer than row_length gets a row of its own."""
    window = max(1, batch_size * group * 4)
    rows: list[list[int]] = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s:s + window], key=lambda i: -lengths[i])
        open_rows: list[tuple[int, list[int]]] = []  # (free room, samples)
        for i in chunk:
            for k, (free, row) in enumerate(open_rows):
                if lengths[i] <= free:
                    row.append(i)
                    open_rows[k] = (free - lengths[i], row)
                    break
            else:
                open_rows.append((row_length - lengths[i], [i]))
        rows += [r for _, r in open_rows]
    perm = rng(seed, "rows", epoch).permutation(len(rows))
    rows = [rows[k] for k in perm]
    return [rows[k:k + batch_size] for k in range(0, len(rows), batch_size)]


def collate_rows(rows: list[list[int]], examples, pad_id: int) -> dict:
    """Rows of samples → one right-padded batch; position_ids only when some row holds several samples."""
    packed = any(len(r) > 1 for r in rows)
    ids_rows = [np.concatenate([examples[i].input_ids for i in r]) for r in rows]
    width = max(len(x) for x in ids_rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    targets = np.full((len(rows), width), IGNORE, dtype=np.int64)
    position_ids = np.zeros((len(rows), width), dtype=np.int64)
    n = 0
    for b, (r, ids) in enumerate(zip(rows, ids_rows)):
        input_ids[b, : len(ids)] = ids
        targets[b, : len(ids)] = np.concatenate([examples[i].targets for i in r])
        position_ids[b] = np.concatenate([np.arange(len(examples[i].input_ids)) for i in r]
                                         # padding is its own "sample" from 0, so it never joins the one before it
                                         + [np.arange(width - len(ids))])
        n += sum(examples[i].n for i in r)
    batch = {"input_ids": torch.from_numpy(input_ids), "targets": torch.from_numpy(targets), "n": n,
             "ntokens": sum(len(x) for x in ids_rows), "numel": input_ids.size}
    if packed:
        batch["position_ids"] = torch.from_numpy(position_ids)
    return batch


def plan_padding(plan: list[list[list[int]]], lengths) -> float:
    """Padding fraction of a batch plan without building tensors."""
    tokens = numel = 0
    for rows in plan:
        row_len = [sum(lengths[i] for i in r) for r in rows]
        tokens += sum(row_len)
        numel += max(row_len) * len(rows)
    return 1.0 - tokens / numel if numel else 0.0
