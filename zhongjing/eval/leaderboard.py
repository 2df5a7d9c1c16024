"""One ranking of every compared model: Bradley–Terry strengths from pairwise judgements, as Elo-style ratings.

Model: P(i beats j) = p_i / (p_i + p_j). By default ties count as half a win for each side (the "ties as
half-wins" treatment); `ties: davidson` fits Davidson's (1970) model instead, whose tie parameter ν absorbs a
judge's taste for ties (P(tie) = ν·√(p_i p_j) / (p_i + p_j + ν·√(p_i p_j))). Fitted by Hunter's (2004) MM iteration, which converges to the
maximum-likelihood strengths whenever the comparison graph is connected and no model wins or loses every game.
`prior` adds that many virtual ties to every pair that met, so a model that won every game still gets a
finite rating (0 = the plain maximum-likelihood fit; the report uses 1).

Every order of a position-swapped judgement is one game: a judge that answered "A" and then "A" again after
the swap gave one game to each side. The rating is 1000 + 400·log10(p_i / geometric mean of p): a 400-point gap
means 10:1 odds, and the average model sits at 1000. The bootstrap resamples groups (dialogues) with their
games, refits, and takes percentile intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from zhongjing.config import within

ELO_BASE, ELO_SCALE = 1000.0, 400.0


@dataclass(frozen=True)
class Game:
    a: str
    b: str
    score: float  # a's result: 1 win, 0.5 tie, 0 loss
    group: str = ""  # the bootstrap's resampling unit (a dialogue)


def _matrices(games: Sequence[Game], models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(wins[i, j] = points i took from j, n[i, j] = games between i and j)."""
    idx = {m: k for k, m in enumerate(models)}
    w = np.zeros((len(models), len(models)))
    n = np.zeros_like(w)
    for g in games:
        if g.score not in (0, 0.5, 1):
            raise ValueError(f"game score must be 0, 0.5 or 1, got {g.score!r}")
        i, j = idx[g.a], idx[g.b]
        w[i, j] += g.score
        w[j, i] += 1 - g.score
        n[i, j] += 1
        n[j, i] += 1
    return w, n


def components(models: Sequence[str], games: Iterable[Game]) -> list[list[str]]:
    """Groups of models linked by comparisons; ratings are only comparable inside one group."""
    parent = {m: m for m in models}

    def root(m):
        while parent[m] != m:
            parent[m] = parent[parent[m]]
            m = parent[m]
        return m

    for g in games:
        parent[root(g.a)] = root(g.b)
    out: dict[str, list[str]] = {}
    for m in models:
        out.setdefault(root(m), []).append(m)
    return list(out.values())


def fit(games: Sequence[Game], models: Sequence[str], prior: float = 1.0, iters: int = 10000,
        tol: float = 1e-10) -> np.ndarray:
    """Log-strengths θ (mean 0) of `models`; NaN for a model without games."""
    w, n = _matrices(games, models)
    met = n > 0
    w = w + prior / 2 * met
    n = n + prior * met
    played = n.sum(1) > 0
    p = np.ones(len(models))
    for _ in range(iters):
        denom = (n / (p[:, None] + p[None, :])).sum(1)
        new = np.where(played, w.sum(1) / np.where(denom > 0, denom, 1), 1.0)
        new = np.maximum(new, 1e-300)
        new /= np.exp(np.log(new[played]).mean()) if played.any() else 1.0
        done = np.max(np.abs(np.log(new) - np.log(p))) < tol
        p = new
        if done:
            break
    theta = np.log(p)
    theta[~played] = np.nan
    return theta - np.nanmean(theta) if played.any() else theta


def fit_davidson(games: Sequence[Game], models: Sequence[str], prior: float = 1.0, iters: int = 20000,
                 tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """Davidson's (1970) model with an explicit tie parameter ν: P(i beats j) = p_i / D, P(tie) = ν·√(p_i p_j) / D,
    D = p_i + p_j + ν·√(p_i p_j). Fixed-point maximum likelihood (stationary equations of the log-likelihood);
    `prior` virtual games per pair that met, split as half a win for each side (virtual ties would not keep an
    unbeaten model finite here: ν would grow instead). Returns (log-strengths with mean 0, ν)."""
    w, n = _matrices(games, models)
    ties = np.zeros_like(w)
    idx = {m: k for k, m in enumerate(models)}
    for g in games:
        if g.score == 0.5:
            i, j = idx[g.a], idx[g.b]
            ties[i, j] += 1
            ties[j, i] += 1
    met = n > 0
    n = n + prior * met
    played = n.sum(1) > 0
    p, nu = np.ones(len(models)), max(ties.sum() / max(n.sum(), 1), 1e-6)
    score = (w + prior / 2 * met).sum(1)  # outright wins + half of every tie + the virtual half wins
    for _ in range(iters):
        root = np.sqrt(p[:, None] * p[None, :])
        d = p[:, None] + p[None, :] + nu * root
        denom = (n * (1 + nu / 2 * np.sqrt(p[None, :] / p[:, None])) / d).sum(1)
        new = np.where(played, score / np.where(denom > 0, denom, 1), 1.0)
        new = np.maximum(new, 1e-300)
        new /= np.exp(np.log(new[played]).mean()) if played.any() else 1.0
        root = np.sqrt(new[:, None] * new[None, :])
        d = new[:, None] + new[None, :] + nu * root
        t = np.triu(ties, 1).sum()
        new_nu = t / max(np.triu(n * root / d, 1).sum(), 1e-300) if t > 0 else 0.0
        done = np.max(np.abs(np.log(new) - np.log(p))) < tol and abs(new_nu - nu) < tol
        p, nu = new, new_nu
        if done:
            break
    theta = np.log(p)
    theta[~played] = np.nan
    return (theta - np.nanmean(theta) if played.any() else theta), float(nu)


def elo(theta: np.ndarray) -> np.ndarray:
    return ELO_BASE + ELO_SCALE / math.log(10) * np.asarray(theta)


def leaderboard(games: Sequence[Game], models: Sequence[str] | None = None, *, prior: float = 1.0,
                n_boot: int = 1000, seed: int = 0, ties: str = "half") -> dict:
    """Ratings with 95% bootstrap intervals, win/tie/loss counts and the number of games, best first.
    `ties`: "half" (a tie is half a win for each side) or "davidson" (a fitted tie parameter ν)."""
    if ties not in ("half", "davidson"):
        raise ValueError(f"ties must be 'half' or 'davidson', got {ties!r}")
    games = list(games)
    models = list(models or dict.fromkeys(m for g in games for m in (g.a, g.b)))
    strengths = (lambda gs: fit(gs, models, prior)) if ties == "half" else (lambda gs: fit_davidson(gs, models, prior)[0])
    theta = strengths(games)
    nu = fit_davidson(games, models, prior)[1] if ties == "davidson" else None
    ratings = elo(theta)
    groups: dict[str, list[Game]] = {}
    for g in games:
        groups.setdefault(g.group, []).append(g)
    keys = sorted(groups)
    rng = np.random.default_rng(seed)
    boot = np.full((n_boot, len(models)), np.nan)
    for b in range(n_boot if keys else 0):
        pick = rng.integers(0, len(keys), size=len(keys))
        boot[b] = elo(strengths([g for k in pick for g in groups[keys[k]]]))
    rows = []
    for k, m in enumerate(models):
        mine = [g for g in games if m in (g.a, g.b)]
        pts = [g.score if g.a == m else 1 - g.score for g in mine]
        col = boot[:, k][~np.isnan(boot[:, k])]
        ci = [float(x) for x in np.percentile(col, [2.5, 97.5])] if len(col) else [float("nan")] * 2
        rows.append({"model": m, "rating": float(ratings[k]), "strength": float(theta[k]), "ci": ci,
                     "games": len(mine), "wins": sum(x == 1 for x in pts), "ties": sum(x == 0.5 for x in pts),
                     "losses": sum(x == 0 for x in pts)})
    rows.sort(key=lambda r: -r["rating"] if r["rating"] == r["rating"] else math.inf)
    parts = components(models, games)
    return {"rows": rows, "games": len(games), "groups": len(keys), "prior": prior, "bootstrap": n_boot,
            "ties": ties, "nu": nu,
            "connected": len([c for c in parts if any(g.a in c for g in games)]) <= 1,
            "components": parts}


def games_from_judged(judged, target: str, baseline: str, priority: Sequence[str]) -> list[Game]:
    """Every answer order of every judged question (stats.Judged, target's side) as one game, by priority."""
    from zhongjing.eval.stats import by_priority

    out = []
    for j in judged:
        for side in (j.first, j.second):
            if side is not None:
                v = by_priority(side, priority)
                out.append(Game(target, baseline, (v + 1) / 2, j.group))
    return out


def plot(board: dict, path: str | Path, title: str = "Bradley–Terry ratings (Elo scale)") -> None:
    """Horizontal bars of the ratings with their 95% intervals, best on top."""
    from zhongjing.eval.plots import _plt, _save

    plt = _plt()
    rows = [r for r in board["rows"] if r["rating"] == r["rating"]][::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 * len(rows) + 1.2))
    ys = range(len(rows))
    vals = [r["rating"] for r in rows]
    lo = [r["rating"] - r["ci"][0] if r["ci"][0] == r["ci"][0] else 0 for r in rows]
    hi = [r["ci"][1] - r["rating"] if r["ci"][1] == r["ci"][1] else 0 for r in rows]
    ax.errorbar(vals, list(ys), xerr=[lo, hi], fmt="o", color="#2c6fbb", capsize=4)
    ax.axvline(ELO_BASE, color="#999", lw=0.8, ls="--")
    ax.set_yticks(list(ys), [r["model"] for r in rows])
    ax.set_xlabel("rating (1000 = average; 400 points = 10:1 odds)")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)


@dataclass
class LeaderboardConfig:
    enabled: bool = True  # Bradley–Terry ratings of every model that took part in a judged comparison
    prior: float = 1.0  # virtual ties added to every pair that met (0 = plain maximum likelihood)
    ties: Literal["half", "davidson"] = "half"  # half a win each side, or Davidson's model with a tie parameter

    def __post_init__(self):  # NaN or a negative prior gave NaN ratings in the report, silently
        within(self, 0.0, float("inf"), "prior")
