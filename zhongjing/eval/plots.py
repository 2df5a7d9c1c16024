"""Paper-style figures (matplotlib, PNG): stacked win / tie / lose bars per baseline and dimension,
and the before/after-RLHF ablation with response length.

Labels are in English so the figures read the same with or without a CJK font; model names are used as
given (rendered in Chinese when `zhongjing.plots` finds a CJK font).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

from zhongjing.io import atomic_path

COLORS = {"win": "#4c9a2a", "tie": "#c9c9c9", "lose": "#c0392b"}
DIM_LABELS = {"safety": "Safety", "professionalism": "Professionalism", "fluency": "Fluency", "overall": "Overall",
              "reward": "Reward model"}


def _plt():
    from zhongjing.plots import pyplot

    return pyplot()[0]  # headless, with a CJK font when installed (model names may be Chinese)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _stacked(ax, labels: Sequence[str], rates: Sequence[dict], title: str) -> None:
    """Horizontal bars, one per label, stacked win | tie | lose with percentages inside."""
    ys = list(range(len(labels)))[::-1]
    for y, r in zip(ys, rates):
        left = 0.0
        for o in ("win", "tie", "lose"):
            v = r.get(f"{o}_rate") or 0.0
            if v != v:  # NaN: no valid verdicts
                v = 0.0
            ax.barh(y, v, left=left, color=COLORS[o], edgecolor="white", height=0.7)
            if v >= 0.07:
                ax.text(left + v / 2, y, f"{v:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if o != "tie" else "black")
            left += v
        if not r.get("n"):
            ax.text(0.5, y, "no verdicts", ha="center", va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
    ax.set_xticklabels(["0", "25%", "50%", "75%", "100%"], fontsize=7)
    ax.set_title(title, fontsize=9)


def pairwise_figure(path: Path, title: str, dims: Sequence[str], rows: Sequence[tuple[str, dict]]) -> Path:
    """One panel per dimension; `rows` = (baseline label, {dimension: rates dict}), one bar each."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(dims), figsize=(3.2 * len(dims) + 1, 0.5 * len(rows) + 1.6), squeeze=False)
    for ax, d in zip(axes[0], dims):
        _stacked(ax, [lab for lab, _ in rows], [r.get(d, {}) for _, r in rows], DIM_LABELS.get(d, d))
    _legend(fig)
    fig.suptitle(title, fontsize=10, y=1.04)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing-glyph warnings for non-Latin model names
        _save(fig, path)
    plt.close(fig)
    return path


def _legend(fig) -> None:
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=COLORS[o], label=o.capitalize()) for o in ("win", "tie", "lose")],
               loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.08))


def ablation_figure(path: Path, title: str, dims: Sequence[str], rates: dict, lengths: Sequence[tuple[str, float, float]],
                    before: str, after: str) -> Path:
    """Left: win/tie/lose of `after` vs `before` per dimension. Right: mean answer length per test set."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 0.45 * max(len(dims), len(lengths)) + 2.2),
                                   gridspec_kw={"width_ratios": [3, 2]})
    _stacked(ax1, [DIM_LABELS.get(d, d) for d in dims], [rates.get(d, {}) for d in dims], f"{after} vs {before}")
    names = [n for n, _, _ in lengths]
    x = range(len(names))
    w = 0.38
    ax2.bar([i - w / 2 for i in x], [b for _, b, _ in lengths], width=w, color="#8da0cb", label=before)
    ax2.bar([i + w / 2 for i in x], [a for _, _, a in lengths], width=w, color="#fc8d62", label=after)
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(names, fontsize=8, rotation=15)
    ax2.set_ylabel("mean answer length (characters)", fontsize=8)
    ax2.set_title("Response length", fontsize=9)
    ax2.legend(fontsize=8, frameon=False)
    _legend(fig)
    fig.suptitle(title, fontsize=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _save(fig, path)
    plt.close(fig)
    return path
