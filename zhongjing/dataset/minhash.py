"""MinHash signatures over character shingles and banded LSH, vectorised with numpy.

Chinese has no spaces, so shingles are k consecutive characters. A shingle is hashed with a
polynomial over its code points (stable across processes, unlike `hash`), and each of the
`num_perm` permutations is a multiply-shift hash of that 64-bit value.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

_P = np.uint64(1_000_003)
_MASK32 = np.uint64(0xFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the polynomial hash over all 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(text: str, k: int = 5) -> np.ndarray:
    """Unique 64-bit hashes of the text's k-character shingles (the whole text if shorter)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(codes) == 0:
        return np.zeros(1, dtype=np.uint64)
    k = min(k, len(codes))
    n = len(codes) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = h * _P + codes[j:j + n]
        return np.unique(_mix(h))


class MinHasher:
    def __init__(self, num_perm: int = 128, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=(num_perm, 1), dtype=np.uint64) | np.uint64(1)  # odd multipliers
        self.b = rng.integers(0, 2**63, size=(num_perm, 1), dtype=np.uint64)
        self.num_perm = num_perm

    def signature(self, hashes: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((self.a * hashes[None, :] + self.b) >> np.uint64(32)).min(axis=1).astype(np.uint32)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two shingle-hash sets."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter) if len(a) + len(b) else 1.0


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising weighted false-positive + false-negative area around `threshold`."""
    xs = np.linspace(0, 1, 201)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        r = num_perm // b
        p = 1 - (1 - xs**r) ** b  # chance a pair of similarity x shares a band
        fp = np.trapezoid(p[xs < threshold], xs[xs < threshold]) if (xs < threshold).sum() > 1 else 0.0
        fn = np.trapezoid(1 - p[xs >= threshold], xs[xs >= threshold])
        err = fp_weight * fp + (1 - fp_weight) * fn
        if err < best_err:
            best, best_err = (b, r), err
    return best


def near_duplicate_clusters(signatures: list[np.ndarray], threshold: float) -> list[list[int]]:
    """Groups (size ≥ 2) of indices whose estimated Jaccard ≥ threshold, linked transitively."""
    if not signatures:
        return []
    num_perm = len(signatures[0])
    bands, rows = lsh_params(threshold, num_perm)
    parent = list(range(len(signatures)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for band in range(bands):
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i, sig in enumerate(signatures):
            buckets[sig[band * rows:(band + 1) * rows].tobytes()].append(i)
        for members in buckets.values():
            first = members[0]
            for j in members[1:]:
                ri, rj = find(first), find(j)
                if ri != rj and np.mean(signatures[first] == signatures[j]) >= threshold:
                    parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(signatures)):
        groups[find(i)].append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])
