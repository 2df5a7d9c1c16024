"""Preference data shared by `train rm` and `train dpo`: rankings read, all-wrong rankings completed, split.

A ranking whose every answer the annotators marked wrong gets the honest "I don't know" answer (their replacement,
or `IDK_ANSWER`) as a new best answer above all of them (DESIGN.md §3), so the model learns where its knowledge ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from zhongjing.data.schema import Ranking
from zhongjing.io import sha256_json

# Our default honest answer for all-wrong rankings: admit the limit, do not guess, send the patient to a doctor.
IDK_ANSWER = ("抱歉，这个问题我没有把握给出准确的回答，不想用可能有误的信息误导您。"
              "建议您尽快到正规医院的相关科室就诊，由医生当面了解情况、做必要的检查后再确定诊断和治疗方案。")


def complete_all_wrong(r: Ranking, idk_answer: str = IDK_ANSWER) -> Ranking:
    """All answers wrong → the replacement (or the default) becomes response K, ranked above every original one."""
    if not r.all_wrong:
        return r
    k = len(r.responses)
    below = r.ranking or [list(range(k))]  # unranked wrong answers tie below the honest one
    return Ranking(r.id, r.messages, r.responses + [r.replacement or idk_answer], [[k]] + below, r.annotators,
                   r.meta, all_wrong=False, replacement=None)


@dataclass
class PrefData:
    train: list[Ranking]
    val: list[Ranking]
    counts: Counter = field(default_factory=Counter)


def in_val(r: Ranking, ratio: float, seed: int) -> bool:
    """Deterministic split by id: the same ranking is on the same side in every run and every stage."""
    return int(sha256_json([seed, r.id])[:8], 16) / 0xFFFFFFFF < ratio


def load_prefs(paths: list[str], fmt: str | None, *, val_paths: list[str] = (), val_ratio: float = 0.1,
               seed: int = 0, idk_answer: str = IDK_ANSWER, skip_bad: bool = False) -> PrefData:
    """Rankings from any ranking format (Ranking JSONL, chosen/rejected pairs), unranked ones left out and counted."""
    from zhongjing.data.readers import read_rankings

    counts: Counter = Counter()

    def usable(src) -> list[Ranking]:
        out = []
        for r in read_rankings(src, fmt, skip_bad=skip_bad):
            if r.all_wrong:
                counts["all_wrong"] += 1
                r = complete_all_wrong(r, idk_answer)
            if not r.pairs():
                counts["unranked" if not r.ranking else "all_tied"] += 1
                continue
            out.append(r)
        return out

    rankings = usable(list(paths))
    if val_paths:
        train, val = rankings, usable(list(val_paths))
    else:
        train = [r for r in rankings if not in_val(r, val_ratio, seed)]
        val = [r for r in rankings if in_val(r, val_ratio, seed)]
    counts["train"], counts["val"] = len(train), len(val)
    counts["train_pairs"] = sum(len(r.pairs()) for r in train)
    return PrefData(train, val, counts)
