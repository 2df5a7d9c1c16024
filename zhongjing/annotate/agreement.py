"""Agreement between two annotators' rankings (tie groups over the same K answers).

Pure functions: the web app, the exporter and the progress report all call these, and the tests
check them against hand-computed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean

Groups = list[list[int]]  # [[best], [tied, tied], ..., [worst]] over response indices


def tiers(ranking: Groups) -> dict[int, int]:
    """Response index → tier number (0 = best); tied answers share a tier."""
    return {i: t for t, group in enumerate(ranking) for i in group}


def _same_items(a: Groups, b: Groups) -> list[int]:
    ia, ib = sorted(tiers(a)), sorted(tiers(b))
    if ia != ib:
        raise ValueError(f"rankings cover different answers: {ia} vs {ib}")
    return ia


def kendall_tau_b(a: Groups, b: Groups) -> float | None:
    """Kendall's τ-b with ties; None when undefined (one ranking puts everything in one tier).

    τ-b = (C − D) / sqrt((n0 − n1)(n0 − n2)), n0 = pairs, n1/n2 = pairs tied in a/b.
    """
    items = _same_items(a, b)
    ta, tb = tiers(a), tiers(b)
    conc = disc = tied_a = tied_b = 0
    for x in range(len(items)):
        for y in range(x + 1, len(items)):
            i, j = items[x], items[y]
            da, db = ta[i] - ta[j], tb[i] - tb[j]
            tied_a += da == 0
            tied_b += db == 0
            if da * db > 0:
                conc += 1
            elif da * db < 0:
                disc += 1
    n0 = len(items) * (len(items) - 1) // 2
    denom = math.sqrt((n0 - tied_a) * (n0 - tied_b))
    return (conc - disc) / denom if denom else None


def top1_agree(a: Groups, b: Groups) -> bool:
    """Exact top-1 agreement: both put the same set of answers in their best tier."""
    _same_items(a, b)
    return set(a[0]) == set(b[0])


def consensus(a: Groups, b: Groups) -> Groups:
    """Order by mean tier; answers the two annotators order differently end up tied.

    Ties give no training pair, so an order two doctors could not agree on is never learned.
    """
    items = _same_items(a, b)
    ta, tb = tiers(a), tiers(b)
    score = {i: ta[i] + tb[i] for i in items}
    return [sorted(i for i in items if score[i] == s) for s in sorted(set(score.values()))]


@dataclass(frozen=True)
class Judgement:
    ranking: Groups
    all_wrong: bool = False


@dataclass(frozen=True)
class Decision:
    tau: float | None
    top1: bool
    disputed: bool
    reason: str  # why it is disputed, "" when agreed
    ranking: Groups  # consensus order when agreed, [] when disputed
    all_wrong: bool


def decide(a: Judgement, b: Judgement, *, min_tau: float, require_top1: bool) -> Decision:
    """Agreement of two judgements and whether an expert must adjudicate.

    Disputed when: only one says "all answers wrong"; τ-b is below `min_tau`; τ-b is undefined
    and the rankings differ; or `require_top1` and the best tiers differ.
    """
    tau, top1 = kendall_tau_b(a.ranking, b.ranking), top1_agree(a.ranking, b.ranking)
    identical = tiers(a.ranking) == tiers(b.ranking)
    reason = ""
    if a.all_wrong != b.all_wrong:
        reason = "only one annotator marked all answers wrong"
    elif tau is None and not identical:
        reason = "one ranking ties every answer and the other does not"
    elif tau is not None and tau < min_tau:
        reason = f"Kendall tau {tau:.3f} below {min_tau:g}"
    elif require_top1 and not top1:
        reason = "different best answers"
    agreed = not reason
    return Decision(tau, top1, not agreed, reason, consensus(a.ranking, b.ranking) if agreed else [],
                    a.all_wrong and agreed)


def summarize(taus: list[float | None], top1s: list[bool], disputed: list[bool]) -> dict:
    """Batch-level agreement statistics over completed double annotations."""
    defined = [t for t in taus if t is not None]
    n = len(top1s)
    return {
        "pairs": n,
        "mean_tau": round(mean(defined), 4) if defined else None,
        "top1_rate": round(sum(top1s) / n, 4) if n else None,
        "dispute_rate": round(sum(disputed) / n, 4) if n else None,
    }


def krippendorff_alpha(units: list[list[float]], level: str = "ordinal") -> float | None:
    """Krippendorff's α over units, each the values the coders who rated it gave (missing ones left out).

    α = 1 − D_o / D_e from the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"):
    units rated by fewer than two coders are not pairable and are dropped. `level`: "nominal" (δ = 0 if equal else 1),
    "ordinal" (δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k)/2)², n_g the marginal counts) or "interval" ((c − k)²).
    None when undefined (fewer than two pairable values, or only one value in use).
    """
    units = [list(u) for u in units if len(u) >= 2]
    values = sorted({v for u in units for v in u})
    if len(values) < 2:
        return None
    idx = {v: i for i, v in enumerate(values)}
    o = [[0.0] * len(values) for _ in values]
    for u in units:
        m = len(u)
        for a in range(m):
            for b in range(m):
                if a != b:
                    o[idx[u[a]]][idx[u[b]]] += 1 / (m - 1)
    n_c = [sum(row) for row in o]
    n = sum(n_c)

    def delta2(c: int, k: int) -> float:
        if level == "nominal":
            return float(c != k)
        if level == "interval":
            return float(values[c] - values[k]) ** 2
        if level == "ordinal":
            lo, hi = min(c, k), max(c, k)
            return (sum(n_c[lo:hi + 1]) - (n_c[c] + n_c[k]) / 2) ** 2
        raise ValueError(f"unknown level {level!r} (nominal, ordinal, interval)")

    d_o = sum(o[c][k] * delta2(c, k) for c in range(len(values)) for k in range(len(values)))
    d_e = sum(n_c[c] * n_c[k] * delta2(c, k) for c in range(len(values)) for k in range(len(values)))
    return None if d_e == 0 else 1 - (n - 1) * d_o / d_e


def rankings_alpha(judgements: list[list[Groups]], level: str = "ordinal") -> float | None:
    """Ordinal α of several annotators' rankings: one unit per (item, answer), its value the answer's tier.

    `judgements[i]` holds every annotator's tie groups for item i (two or more to count)."""
    units = []
    for rankings in judgements:
        maps = [tiers(r) for r in rankings]
        for ans in sorted(set().union(*maps)) if maps else []:
            units.append([m[ans] for m in maps if ans in m])
    return krippendorff_alpha(units, level)
