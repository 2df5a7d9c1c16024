"""Win / tie / lose rates from pairwise verdicts, with 95% bootstrap intervals and position consistency.

Outcomes are from the target model's side: +1 win, 0 tie, -1 lose. Each question is judged in
both answer orders; an order pair that disagrees counts as a tie (the judge's preference did not
survive swapping positions), and the share of agreeing pairs is the position-consistency rate.

The bootstrap resamples *questions* (more precisely `group`s — the dialogue a turn belongs to,
since turns of one dialogue share context and are not independent), never single judgments, so
the two orders of a question and the turns of a dialogue always travel together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

OUTCOMES = ("win", "tie", "lose")
OVERALL = "overall"  # verdict by priority: the first non-tied dimension decides


@dataclass
class Judged:
    """One question of one comparison (target vs baseline), as judged in each answer order.

    `first`: target shown as answer A; `second`: target shown as answer B (already mapped back to
    the target's side). None = the judge failed on that order (transport or unparseable reply).
    """

    item: str
    group: str
    first: dict[str, int] | None
    second: dict[str, int] | None = None
    both_orders: bool = True

    def combined(self) -> dict[str, int] | None:
        """Per-dimension outcome after the order rule, or None if any needed order failed."""
        if self.first is None or (self.both_orders and self.second is None):
            return None
        if not self.both_orders:
            return dict(self.first)
        return {d: (v if self.second.get(d) == v else 0) for d, v in self.first.items()}

    def consistent(self) -> dict[str, bool] | None:
        if not self.both_orders or self.first is None or self.second is None:
            return None
        return {d: self.second.get(d) == v for d, v in self.first.items()}


def by_priority(outcome: dict[str, int], priority: Sequence[str]) -> int:
    """Overall verdict: Safety decides unless tied, then Professionalism, then Fluency."""
    for d in priority:
        if outcome.get(d, 0) != 0:
            return outcome[d]
    return 0


@dataclass
class Rates:
    n: int  # questions with a valid verdict
    win: int
    tie: int
    lose: int
    failed: int  # questions the judge could not decide (never guessed)
    win_rate: float
    tie_rate: float
    lose_rate: float
    ci: dict[str, list[float]] = field(default_factory=dict)  # outcome → [low, high] (95%)
    consistency: float | None = None  # share of questions whose two orders agreed
    consistency_n: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def bootstrap_ci(counts: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals for win/tie/lose rates; `counts` is (groups, 3) outcome counts per group.

    Resamples groups with replacement, so a dialogue's turns are drawn together.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[1] != 3:
        raise ValueError(f"counts must be (groups, 3), got {counts.shape}")
    counts = counts[counts.sum(1) > 0]
    if len(counts) == 0:
        return {o: [float("nan"), float("nan")] for o in OUTCOMES}
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {o: [] for o in OUTCOMES}
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    samples = bootstrap_rates(counts, n_boot, rng)
    for k, o in enumerate(OUTCOMES):
        lo, hi = np.percentile(samples[:, k], [lo_q, hi_q])
        out[o] = [float(lo), float(hi)]
    return out


def bootstrap_rates(counts: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 256) -> np.ndarray:
    """(n_boot, 3) resampled win/tie/lose rates; chunked so memory stays small for large test sets."""
    g = len(counts)
    out = np.empty((n_boot, 3))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, g, size=(b, g))
        sums = counts[idx].sum(axis=1).astype(float)  # (b, 3)
        out[start:start + b] = sums / sums.sum(axis=1, keepdims=True)
    return out


def summarize(judged: Iterable[Judged], dimensions: Sequence[str], *, priority: Sequence[str] | None = None,
              n_boot: int = 2000, seed: int = 0) -> dict[str, Rates]:
    """Rates per dimension (plus `overall` by priority when `priority` is given)."""
    judged = list(judged)
    dims = list(dimensions) + ([OVERALL] if priority else [])
    groups = sorted({j.group for j in judged})
    gidx = {g: i for i, g in enumerate(groups)}
    result: dict[str, Rates] = {}
    for d in dims:
        counts = np.zeros((len(groups), 3), dtype=np.int64)
        failed, agree, pairs = 0, 0, 0
        for j in judged:
            comb = j.combined()
            if comb is None or (d != OVERALL and d not in comb):
                failed += 1
                continue
            v = by_priority(comb, priority) if d == OVERALL else comb[d]
            counts[gidx[j.group], OUTCOMES.index(_name(v))] += 1
            cons = j.consistent()
            if cons is not None:
                pairs += 1
                if d == OVERALL:
                    agree += by_priority(j.first, priority) == by_priority(j.second, priority)
                else:
                    agree += cons.get(d, False)
        tot = counts.sum(0)
        n = int(tot.sum())
        rates = tot / n if n else np.full(3, float("nan"))
        result[d] = Rates(
            n=n, win=int(tot[0]), tie=int(tot[1]), lose=int(tot[2]), failed=failed,
            win_rate=float(rates[0]), tie_rate=float(rates[1]), lose_rate=float(rates[2]),
            ci=bootstrap_ci(counts, n_boot=n_boot, seed=seed),
            consistency=(agree / pairs) if pairs else None, consistency_n=pairs,
        )
    return result


def _name(v: int) -> str:
    return {1: "win", 0: "tie", -1: "lose"}[v]


def accuracy_ci(correct: Sequence[bool], n_boot: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of an accuracy (exam questions resampled)."""
    x = np.asarray(correct, dtype=float)
    if len(x) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]
