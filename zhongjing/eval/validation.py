"""How far to trust a judge: its agreement with human preference labels, Cohen's κ, position consistency.

Human labels come from any ranking file the readers know (our `zhongjing annotate export` Rankings,
MedicalGPT chosen/rejected pairs, reward pairs): every two answers of a ranking in different tiers (or in the
same tier: a human tie) become one labelled pair. The judge sees each pair exactly as in `zhongjing eval`
(`judge.judge_pairs`: both answer orders when it has positions, the same cache and retries), and its
verdict is the overall one by priority (Safety > Professionalism > Fluency); orders that disagree count as a tie.

Which answer is shown first is drawn per pair with the seed: MedicalGPT files always list the chosen answer
first, and with a fixed orientation every human label would be "first is better" — Cohen's κ would be 0
by construction and a judge that always says "A" would look perfect.

  agreement             share of pairs where the judge's verdict (first better / second better / tie) is the human's;
  agreement_decisive    the same over pairs where both human and judge chose a side;
  kappa                 Cohen's κ of those two three-way labels (chance-corrected agreement);
  position_consistency  share of pairs whose two orders gave the same verdict (order-free judges: not applicable).

Intervals: percentile bootstrap over rankings (a ranking's pairs are drawn together).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from zhongjing.config import at_least
from zhongjing.data.rubric import PRIORITY
from zhongjing.errors import ZhongjingError

LABELS = (1, 0, -1)  # first answer better, tie, second answer better


@dataclass
class JudgeValidationConfig:
    files: list[str] = field(default_factory=list)  # ranking / preference files (must exist)
    if_present: list[str] = field(default_factory=list)  # used when they exist (e.g. ../shared data), else noted
    format: str = "auto"
    limit: int = 0  # labelled pairs per file, sampled with the seed; 0 = all
    max_pairs_per_ranking: int = 6  # a K=4 ranking gives 6 pairs

    def __post_init__(self):
        at_least(self, 0, "limit")
        at_least(self, 1, "max_pairs_per_ranking")


def cohen_kappa(a: Sequence[int], b: Sequence[int], labels: Sequence[int] = LABELS) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e); NaN when undefined (both raters use one label only)."""
    if len(a) != len(b):
        raise ValueError("two raters must label the same items")
    n = len(a)
    if n == 0:
        return float("nan")
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((list(a).count(k) / n) * (list(b).count(k) / n) for k in labels)
    return float("nan") if pe >= 1 else (po - pe) / (1 - pe)


def agreement_stats(human: Sequence[int], judge: Sequence[int], consistent: Sequence[bool | None]) -> dict:
    """Point estimates over labelled pairs (see the module docstring)."""
    n = len(human)
    decisive = [(h, j) for h, j in zip(human, judge) if h != 0 and j != 0]
    cons = [c for c in consistent if c is not None]
    return {
        "n": n,
        "agreement": sum(h == j for h, j in zip(human, judge)) / n if n else float("nan"),
        "agreement_decisive": sum(h == j for h, j in decisive) / len(decisive) if decisive else float("nan"),
        "n_decisive": len(decisive),
        "kappa": cohen_kappa(human, judge),
        "position_consistency": sum(cons) / len(cons) if cons else None,
        "judge_ties": sum(j == 0 for j in judge) / n if n else float("nan"),
    }


def bootstrap(human, judge, consistent, groups, n_boot: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """95% percentile intervals of agreement, kappa and position consistency, resampling groups."""
    by: dict[str, list[int]] = {}
    for k, g in enumerate(groups):
        by.setdefault(g, []).append(k)
    keys = sorted(by)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {"agreement": [], "agreement_decisive": [], "kappa": [], "position_consistency": []}
    for _ in range(n_boot if keys else 0):
        idx = [k for g in rng.integers(0, len(keys), size=len(keys)) for k in by[keys[g]]]
        s = agreement_stats([human[k] for k in idx], [judge[k] for k in idx], [consistent[k] for k in idx])
        for key in samples:
            if s[key] is not None and s[key] == s[key]:
                samples[key].append(s[key])
    return {k: ([float(x) for x in np.percentile(v, [2.5, 97.5])] if v else [float("nan")] * 2)
            for k, v in samples.items()}


@dataclass
class LabelledPair:
    id: str
    group: str
    context: list[dict]
    first: str
    second: str
    human: int  # +1 first better, 0 tie, -1 second better


def labelled_pairs(path: str, fmt: str = "auto", *, seed: int = 0, limit: int = 0,
                   max_per_ranking: int = 6) -> list[LabelledPair]:
    """Human-labelled answer pairs of a ranking file, shown in a seeded random order."""
    from zhongjing.data.readers import read_rankings

    if not Path(path).exists():
        raise ZhongjingError(f"judge_validation: {path} not found")
    out = []
    for r in read_rankings(path, None if fmt in ("", "auto") else fmt):
        if r.all_wrong:
            continue
        tier = {i: t for t, grp in enumerate(r.ranking) for i in grp}
        ctx = [m.to_dict() for m in r.messages]
        pairs = [(i, j) for i in sorted(tier) for j in sorted(tier) if i < j]
        rng = random.Random(f"{seed}:{r.id}")
        if len(pairs) > max_per_ranking:
            pairs = sorted(rng.sample(pairs, max_per_ranking))
        for i, j in pairs:
            if rng.random() < 0.5:
                i, j = j, i
            human = 0 if tier[i] == tier[j] else (1 if tier[i] < tier[j] else -1)
            out.append(LabelledPair(f"{r.id}#{i}-{j}", r.id, ctx, r.responses[i], r.responses[j], human))
    if not out:
        raise ZhongjingError(f"judge_validation: {path} has no labelled answer pairs")
    if limit and limit < len(out):
        keep = sorted(random.Random(seed).sample(range(len(out)), limit))
        out = [out[k] for k in keep]
    return out


def validate(judge, pairs: Sequence[LabelledPair], *, concurrency: int = 1, n_boot: int = 1000,
             seed: int = 0, progress=None) -> dict:
    """The judge's agreement with the human labels of `pairs`, with bootstrap intervals."""
    from zhongjing.eval.judge import PairTask, judge_pairs
    from zhongjing.eval.stats import by_priority

    priority = [d for d in PRIORITY if d in judge.dimensions] or list(judge.dimensions)
    tasks = [PairTask(p.id, p.group, p.context, p.first, p.second) for p in pairs]
    judged, raw = judge_pairs(judge, tasks, concurrency, progress=progress)
    human, verdict, consistent, groups = [], [], [], []
    failed = 0
    for p, j in zip(pairs, judged):
        comb = j.combined()
        if comb is None:
            failed += 1
            continue
        human.append(p.human)
        verdict.append(by_priority(comb, priority))
        consistent.append(None if j.second is None or j.first is None
                          else by_priority(j.first, priority) == by_priority(j.second, priority))
        groups.append(p.group)
    out = agreement_stats(human, verdict, consistent)
    out["ci"] = bootstrap(human, verdict, consistent, groups, n_boot, seed)
    out["failed"] = failed
    out["human_ties"] = sum(h == 0 for h in human)
    out["both_orders"] = bool(judge.both_orders)
    return out


def run_validation(cfg: JudgeValidationConfig, judge, *, seed: int = 0, n_boot: int = 1000, concurrency: int = 1,
                   log=print) -> list[dict]:
    """One result row per file (missing `if_present` files are listed with a note instead)."""
    rows = []
    for path in list(cfg.files) + list(cfg.if_present):
        if path in cfg.if_present and not Path(path).exists():
            rows.append({"file": path, "missing": True})
            log(f"judge validation: {path} not present, skipped")
            continue
        pairs = labelled_pairs(path, cfg.format, seed=seed, limit=cfg.limit, max_per_ranking=cfg.max_pairs_per_ranking)
        res = validate(judge, pairs, concurrency=concurrency, n_boot=n_boot, seed=seed)
        rows.append({"file": path, "judge": getattr(judge, "describe", ""), **res})
        log(f"judge validation on {path}: {res['n']} pairs, agreement {res['agreement']:.3f}, κ {res['kappa']:.3f}")
    return rows
