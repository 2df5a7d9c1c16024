"""Departments: map source labels to the paper's 14 departments, classify the rest, plot the distribution.

Order of evidence for each dialogue: its own label (`meta.department`, then `meta.subdepartment`)
through the alias map; then keywords in the patient's turns; then (optionally) a naive-Bayes
classifier over characters trained on the labelled dialogues of the same run; else the fallback.
`meta.department_source` records which one decided, so users can audit it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from zhongjing.dataset.report import StepReport
from zhongjing.config import read_yaml
from zhongjing.data.schema import Dialogue
from zhongjing.errors import ConfigError


@dataclass
class DepartmentsConfig:
    map: str = ""  # YAML with departments/aliases/keywords/fallback; empty = the packaged default
    classifier: Literal["keywords", "keywords+nb", "none"] = "keywords+nb"
    nb_min_per_class: int = 20  # labelled dialogues a department needs before the classifier may predict it
    nb_min_confidence: float = 0.6
    relabel: bool = False  # also re-classify dialogues whose label is unknown to the map (default: fallback)
    plot: bool = True

    def __post_init__(self):  # NaN made the classifier never confident, silently
        if not 0 <= self.nb_min_confidence <= 1:
            raise ConfigError(f"departments.nb_min_confidence must be a probability in [0, 1], got {self.nb_min_confidence}")
        if self.nb_min_per_class < 1:
            raise ConfigError(f"departments.nb_min_per_class must be ≥ 1, got {self.nb_min_per_class}")


@dataclass
class DepartmentMap:
    departments: dict[str, str]
    aliases: dict[str, str]
    keywords: dict[str, list[str]]
    fallback: str

    @classmethod
    def load(cls, path: str = "") -> "DepartmentMap":
        data = read_yaml(path) if path else read_yaml(resources.files("zhongjing.dataset") / "departments.yaml")
        where = path or "default department map"
        depts = data.get("departments") or {}
        if not isinstance(depts, dict) or not depts:
            raise ConfigError(f"{where}: 'departments' must map department names to English labels")
        aliases = {str(k): str(v) for k, v in (data.get("aliases") or {}).items()}
        keywords = {str(k): [str(w) for w in v] for k, v in (data.get("keywords") or {}).items()}
        fallback = str(data.get("fallback") or next(iter(depts)))
        for name in [*aliases.values(), *keywords, fallback]:
            if name not in depts:
                raise ConfigError(f"{where}: {name!r} is not one of its departments ({', '.join(depts)})")
        return cls({str(k): str(v) for k, v in depts.items()}, aliases, keywords, fallback)

    def lookup(self, label: str | None) -> str | None:
        if not label:
            return None
        label = str(label).strip()
        return label if label in self.departments else self.aliases.get(label)

    def by_keywords(self, text: str) -> str | None:
        scores = {dept: sum(text.count(w) for w in words) for dept, words in self.keywords.items()}
        best = max(scores.items(), key=lambda kv: kv[1], default=(None, 0))
        return best[0] if best[1] > 0 else None


class CharNB:
    """Multinomial naive Bayes over character unigrams and bigrams (Laplace smoothing)."""

    def __init__(self):
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.docs: Counter = Counter()

    @staticmethod
    def features(text: str) -> list[str]:
        text = re.sub(r"\s+", "", text)[:600]
        return list(text) + [text[i:i + 2] for i in range(len(text) - 1)]

    def fit(self, texts: list[str], labels: list[str], min_per_class: int) -> "CharNB":
        n = Counter(labels)
        for t, y in zip(texts, labels):
            if n[y] >= min_per_class:
                self.counts[y].update(self.features(t))
                self.docs[y] += 1
        self.totals = {y: sum(c.values()) for y, c in self.counts.items()}
        self.known = set().union(*self.counts.values()) if self.counts else set()
        self.vocab = len(self.known)
        return self

    def predict(self, text: str) -> tuple[str | None, float]:
        if len(self.counts) < 2:
            return None, 0.0
        feats = self.features(text)
        if not feats or sum(f in self.known for f in feats) < 0.3 * len(feats):
            return None, 0.0  # mostly unseen characters: no evidence, whatever the priors say
        n_docs = sum(self.docs.values())
        logp = {}
        for y, c in self.counts.items():
            denom = math.log(self.totals[y] + self.vocab + 1)
            logp[y] = math.log(self.docs[y] / n_docs) + sum(math.log(c.get(f, 0) + 1) - denom for f in feats)
        top = max(logp.values())
        z = sum(math.exp(v - top) for v in logp.values())
        best = max(logp, key=logp.get)
        return best, 1.0 / z


def _patient_text(d: Dialogue) -> str:
    return "\n".join(m.content for m in d.messages if m.role == "user")


def run_departments(dialogues: list[Dialogue], cfg: DepartmentsConfig, report: StepReport,
                    plot_path: str | Path | None = None) -> list[Dialogue]:
    dmap = DepartmentMap.load(cfg.map)
    report.n_in = len(dialogues)
    decided: list[tuple[str | None, str]] = []
    unknown_labels: Counter = Counter()
    for d in dialogues:
        dept = dmap.lookup(d.meta.get("department")) or dmap.lookup(d.meta.get("subdepartment"))
        if dept:
            decided.append((dept, "label"))
            continue
        label = d.meta.get("department")
        if label and not cfg.relabel:
            unknown_labels[str(label)] += 1
            decided.append((dmap.fallback, "unknown_label"))
            continue
        kw = dmap.by_keywords(_patient_text(d)) if cfg.classifier != "none" else None
        decided.append((kw, "keywords") if kw else (None, "none"))
    if cfg.classifier == "keywords+nb" and any(src == "none" for _, src in decided):
        labelled = [(_patient_text(d), dep) for d, (dep, src) in zip(dialogues, decided) if src == "label"]
        nb = CharNB().fit([t for t, _ in labelled], [y for _, y in labelled], cfg.nb_min_per_class)
        report.details["classifier_classes"] = sorted(nb.counts)
        for i, (d, (dep, src)) in enumerate(zip(dialogues, decided)):
            if src == "none":
                y, p = nb.predict(_patient_text(d))
                if y and p >= cfg.nb_min_confidence:
                    decided[i] = (y, "classifier")
    out, dist, by_source = [], Counter(), Counter()
    for d, (dep, src) in zip(dialogues, decided):
        if dep is None:
            dep, src = dmap.fallback, "fallback"
        dist[dep] += 1
        by_source[src] += 1
        meta = {**d.meta, "department": dep, "department_source": src}
        if d.meta.get("department") and d.meta.get("department") != dep:
            meta["source_department"] = d.meta["department"]
        out.append(Dialogue(d.id, d.messages, meta))
    for src, n in by_source.items():
        report.add(f"decided_by:{src}", n)
    report.details["distribution"] = dict(dist.most_common())
    report.details["unknown_labels"] = dict(unknown_labels.most_common(20))
    # second panel: scenarios when the data knows them (CMtMedQA-style labels), else the sources
    group_key = "scenario" if any(d.meta.get("scenario") for d in out) else "source"
    groups = Counter((d.meta["department"], str(d.meta.get(group_key) or "unknown")) for d in out)
    report.details[f"by_{group_key}"] = {f"{a}/{b}": n for (a, b), n in groups.most_common()}
    if cfg.plot and plot_path and out:
        plot_distribution(dist, groups, dmap, plot_path, group_key)
        report.details["plot"] = str(plot_path)
    return out


def plot_distribution(dist: Counter, scenarios: Counter, dmap: DepartmentMap, path: str | Path,
                      group_name: str = "scenario") -> None:
    """A donut of departments like the paper's Figure 3, plus stacked bars per scenario (or source).

    Labels are Chinese with the English name when a CJK font is installed, English otherwise.
    """
    from zhongjing.plots import distinct_colors, pyplot

    plt, cjk = pyplot()

    from zhongjing.io import atomic_path

    def label(k: str) -> str:
        en = dmap.departments.get(k, k)
        return f"{k} {en}" if cjk and en != k else en

    items = [(label(k), v) for k, v in dist.most_common()]
    ncols = 2 if scenarios else 1
    fig, axes = plt.subplots(1, ncols, figsize=(8 * ncols, 7))
    ax = axes[0] if ncols == 2 else axes
    total = sum(v for _, v in items)
    wedges, _ = ax.pie([v for _, v in items], startangle=90, counterclock=False,
                       wedgeprops={"width": 0.45, "edgecolor": "white"}, colors=distinct_colors(len(items)))
    ax.legend(wedges, [f"{k}: {v} ({100 * v / total:.1f}%)" for k, v in items], loc="center left",
              bbox_to_anchor=(0.92, 0.5), fontsize=9, frameon=False)
    ax.set_title(f"Department distribution ({total} dialogues)")
    if scenarios:
        ax2 = axes[1]
        names = [k for k, _ in dist.most_common()]
        scen = sorted({s for _, s in scenarios})
        left = [0] * len(names)
        palette = distinct_colors(len(scen))
        for j, s in enumerate(scen):
            vals = [scenarios.get((n, s), 0) for n in names]
            ax2.barh([label(n) for n in names], vals, left=left, label=str(s),
                     color=palette[j])
            left = [a + b for a, b in zip(left, vals)]
        ax2.invert_yaxis()
        ax2.legend(title=group_name, fontsize=8)
        ax2.set_title(f"Dialogues per department and {group_name}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
