"""Build step `kg_check`: each dialogue's doctor turns against the knowledge graph (zhongjing.data.kg), and a
policy per flag kind decides keep / review (separate file) / drop."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable

from zhongjing.data.kg import Action, KGConfig, check_dialogue, load_index
from zhongjing.data.schema import Dialogue
from zhongjing.dataset.report import StepReport


def decide(flags: list[dict], cfg: KGConfig) -> Action:
    actions = {cfg.policy.get(f["kind"], cfg.default_action) for f in flags}
    return "drop" if "drop" in actions else "review" if "review" in actions else "keep"


def run_kg_check(dialogues: Iterable[Dialogue], cfg: KGConfig, report: StepReport,
                 review: list[Dialogue] | None = None, progress: Callable | None = None) -> list[Dialogue]:
    """Annotate each dialogue with `meta["kg"]`; return the kept ones, append review ones to `review`."""
    index = load_index(cfg)
    report.details["kg"] = {"diseases": len(index.diseases), "dictionary_terms": index.matcher.size}
    kept: list[Dialogue] = []
    flagged_terms: Counter = Counter()
    for d in (progress or (lambda x: x))(dialogues):
        report.n_in += 1
        res = check_dialogue(d, index, cfg)
        report.add("with_disease_mention", bool(res["diseases"]))
        report.add("with_drug_mention", bool(res["drugs"]))
        for f in res["flags"]:
            report.add(f"flag:{f['kind']}")
            flagged_terms[f"{f['kind']}:{f['term']}"] += 1
        action = decide(res["flags"], cfg) if res["flags"] else "keep"
        report.add(f"action:{action}")
        d = Dialogue(d.id, d.messages, {**d.meta, "kg": res})
        if action == "keep":
            kept.append(d)
        elif action == "review" and review is not None:
            review.append(d)
    report.details["top_flagged_terms"] = dict(flagged_terms.most_common(10))
    return kept
