"""Weighted mixing of data pools and deterministic train/validation splits.

A *pool* is a list of items (documents, dialogues) that share one weight: a pre-training source, or an SFT
kind such as "multi" / "single" (the paper mixes multi-turn : single-turn = 7 : 1). Weighted pools are drawn in
proportion to their weights; pools without a weight are used whole. How large the weighted part of an epoch is:
  "min"  the largest epoch in which no weighted item repeats (the scarcest pool, relative to its weight, is used
         whole; bigger pools contribute a fresh subset each epoch, so several epochs see more of them),
  "max"  the smallest epoch in which no weighted item is left out (scarce pools repeat),
  N      exactly N weighted items.
Everything here is a pure function of (seed, epoch): a resumed run draws exactly the same batches.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from zhongjing.errors import ConfigError


def rng(seed: int, *salt: int | str) -> np.random.Generator:
    """An independent generator per (seed, salt...) — e.g. (seed, "epoch", 3) — stable across runs and machines."""
    words = [seed] + [int(hashlib.sha256(str(s).encode()).hexdigest()[:8], 16) for s in salt]
    return np.random.default_rng(np.random.SeedSequence(words))


@dataclass
class Pool:
    name: str
    size: int
    weight: float | None = None  # None → every item once per epoch


def plan_counts(pools: Sequence[Pool], mix_size: str | int = "min") -> list[int]:
    """Items drawn from each pool per epoch (see the module docstring for `mix_size`)."""
    weighted = [p for p in pools if p.weight is not None and p.weight > 0 and p.size > 0]
    for p in pools:
        if p.weight is not None and p.weight < 0:
            raise ConfigError(f"mix weight of '{p.name}' must be ≥ 0, got {p.weight}")
    total_w = sum(p.weight for p in weighted)
    if not weighted:
        total = 0
    elif mix_size == "min":
        total = min(p.size * total_w / p.weight for p in weighted)
    elif mix_size == "max":
        total = max(p.size * total_w / p.weight for p in weighted)
    elif isinstance(mix_size, int) and mix_size > 0:
        total = mix_size
    else:
        raise ConfigError(f"mix_size must be 'min', 'max' or a positive integer, got {mix_size!r}")
    counts = []
    for p in pools:
        if p.weight is None:
            counts.append(p.size)
        elif p.weight == 0 or p.size == 0:
            counts.append(0)
        else:  # round, but never past the pool in "min" mode (float error must not force a repeat)
            c = int(round(total * p.weight / total_w))
            counts.append(min(c, p.size) if mix_size == "min" else max(c, 1))
    return counts


def draw(size: int, count: int, gen: np.random.Generator) -> np.ndarray:
    """`count` indices of range(size): whole permutations first, then a partial one — no item repeats more
    often than it must."""
    if size == 0 or count == 0:
        return np.zeros(0, dtype=np.int64)
    full, rest = divmod(count, size)
    parts = [gen.permutation(size) for _ in range(full)]
    if rest:
        parts.append(gen.permutation(size)[:rest])
    return np.concatenate(parts)


def epoch_items(pools: Sequence[Pool], counts: Sequence[int], seed: int, epoch: int) -> list[tuple[int, int]]:
    """This epoch's (pool index, item index) list, shuffled across pools."""
    chosen = []
    for i, (p, c) in enumerate(zip(pools, counts)):
        idx = draw(p.size, c, rng(seed, "draw", p.name, epoch))
        chosen += [(i, int(j)) for j in idx]
    order = rng(seed, "shuffle", epoch).permutation(len(chosen))
    return [chosen[k] for k in order]


def split_keys(keys: Sequence[str], fraction: float, seed: int, min_val: int = 1) -> tuple[list[int], list[int]]:
    """Deterministic (train, val) index split by item key (dialogue id or text): the same item always lands on
    the same side whatever the file order. At least `min_val` items go to validation when fraction > 0 and
    there are 2+ items."""
    if fraction <= 0 or len(keys) < 2:
        return list(range(len(keys))), []
    if fraction >= 1:
        raise ConfigError(f"val_fraction must be < 1, got {fraction}")
    score = [hashlib.sha256(f"{seed}\x00{k}".encode()).hexdigest() for k in keys]
    order = sorted(range(len(keys)), key=lambda i: (score[i], i))
    n_val = min(max(min_val, int(math.floor(len(keys) * fraction + 0.5))), len(keys) - 1)
    val = sorted(order[:n_val])
    val_set = set(val)
    return [i for i in range(len(keys)) if i not in val_set], val
