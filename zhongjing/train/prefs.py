"""Preference data shared by `train rm` and `train dpo`: rankings read, all-wrong rankings completed, split.

A ranking whose every answer the annotators marked wrong gets the honest "I don't know" answer (their replacement,
or `IDK_ANSWER`) as a new best answer above all of them (DESIGN.md §3), so the model learns where its knowledge ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from zhongjing.data.mismatch import OTHER_PATIENT
from zhongjing.data.rubric import IDK_TEMPLATES
from zhongjing.data.schema import Ranking, group_pairs
from zhongjing.io import sha256_json

# Our default honest answer for all-wrong rankings: admit the limit, do not guess, send the patient to a doctor.
IDK_ANSWER = IDK_TEMPLATES[0]


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
                r = r.completed(idk_answer)
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


# What a pair compares, as far as its ranking's record says (answer_roles): the reward model's validation accuracy
# is reported per kind, each beside "the longer answer wins" on the same pairs — an average over kinds hides that
# a real reply above a model sample is learnt while two samples ordered by their overlap with a reply the model
# never sees are not (docs/real-data.md)
PAIR_KINDS = ("vs_other_patient", "real_vs_sample", "sample_vs_sample", "other")


def answer_roles(r: Ranking) -> tuple[str, ...]:
    """Per answer: 'real' (this patient's real doctor reply, `meta.reference`), 'other' (a real reply to another
    patient: an own-vs-other ranking's second answer, or the `meta.mismatched` answers appended last), 'sample' (any
    other answer of a ranking that has a reference: a model sample), '' (the record does not say)."""
    k = len(r.responses)
    if r.meta.get("negative") == OTHER_PATIENT and k == 2:
        return ("real", "other")
    ref = (r.meta.get("reference") or "").strip()
    roles = ["real" if ref and a.strip() == ref else ("sample" if ref else "") for a in r.responses]
    appended = min(int(r.meta.get("mismatched") or 0), k)
    roles[k - appended:] = ["other"] * appended
    return tuple(roles)


def pair_kinds(roles: tuple[str, ...], groups: list[list[int]]) -> list[int]:
    """The PAIR_KINDS index of every pair of `group_pairs(groups)`, in its order."""
    def kind(b: int, w: int) -> int:
        pair = {roles[b], roles[w]} if roles else {""}
        if "other" in pair:
            return 0
        if pair == {"real", "sample"}:
            return 1
        return 2 if pair == {"sample"} else 3
    return [kind(b, w) for b, w in group_pairs(groups)]


@dataclass
class Encoded:
    """One ranking, tokenized: each answer with the dialogue before it (see model.reward.render_answer)."""

    ids: list[list[int]]  # K token lists, through the answer's end-of-turn token
    groups: list[list[int]]  # tie groups best → worst
    k: int
    targets: list[list[int]] | None = None  # K shifted label lists (next-token targets on the answer only), DPO
    kinds: tuple[int, ...] = ()  # PAIR_KINDS index of each pair, in group_pairs order (empty: all "other")


def encode(rankings: list[Ranking], renderer, counts: Counter, with_targets: bool = False,
           kept: list[Ranking] | None = None) -> list[Encoded]:
    """The rankings that fit `renderer.max_length`, encoded (the others counted as too_long); `kept` gets the
    rankings encoded, in the same order."""
    from zhongjing.train.batching import shift
    from zhongjing.model.reward import render_answer

    out = []
    for r in rankings:
        rendered = [render_answer(renderer, r.messages, resp) for resp in r.responses]
        if any(x is None for x in rendered):
            counts["too_long"] += 1  # an answer alone does not fit max_length
            continue
        targets = [shift(labels) for _, labels in rendered] if with_targets else None
        out.append(Encoded([ids for ids, _ in rendered], r.ranking, r.k, targets,
                           tuple(pair_kinds(answer_roles(r), r.ranking))))
        if kept is not None:
            kept.append(r)
    return out
