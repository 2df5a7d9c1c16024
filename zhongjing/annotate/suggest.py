"""A reward model's pre-ranking as a suggestion for annotators — off unless a batch's file was run through this.

    zhongjing annotate suggest --reward-model runs/demo/rm generated.jsonl suggested.jsonl
    zhongjing annotate import --batch round2-suggested suggested.jsonl

Each Ranking gets `meta.suggestion = {ranking, scores, source}` (tie groups by score, best first; scores closer than
`tie` are tied). The item page then shows the order as a hint in the annotator's own display labels; items of
batches imported without it show nothing. The suggestion travels with the item into `annotate export`
(`meta.suggestion`, plus `meta.annotation.suggestion_shown` and each judgement's τ against it), so agreement with
and without suggestions — and how far annotators follow them — can be compared batch by batch (`annotate progress`:
τ and Krippendorff α per batch).
"""

from __future__ import annotations

import argparse
from typing import Callable, Iterable, Sequence

from zhongjing.annotate.interop import LABELS
from zhongjing.config import non_negative
from zhongjing.errors import ZhongjingError


def groups_by_score(scores: Sequence[float], tie: float = 0.0) -> list[list[int]]:
    """Tie groups, best first: an answer joins the group above when within `tie` of that group's lowest score."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and scores[groups[-1][-1]] - scores[i] <= tie:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [sorted(g) for g in groups]


def add_suggestions(rankings: Iterable[dict], scorer: Callable[[list, list[str]], Sequence[float]], source: str,
                    tie: float = 0.0) -> list[dict]:
    out = []
    for r in rankings:
        ctx = [m for m in r["messages"]]
        scores = [float(x) for x in scorer([ctx] * len(r["responses"]), list(r["responses"]))]
        meta = dict(r.get("meta") or {})
        meta["suggestion"] = {"ranking": groups_by_score(scores, tie), "scores": [round(s, 4) for s in scores],
                              "source": source}
        out.append({**r, "meta": meta})
    return out


def suggestion_text(record: dict, order: Sequence[int]) -> str | None:
    """The suggested order in this annotator's display labels ('回答 B > 回答 A = 回答 C'), or None."""
    sug = (record.get("meta") or {}).get("suggestion")
    if not sug or not sug.get("ranking"):
        return None
    label = {ans: LABELS[pos] for pos, ans in enumerate(order)}
    return " > ".join(" = ".join(f"回答 {label[i]}" for i in sorted(g, key=lambda i: label[i]))
                      for g in sug["ranking"] if all(i in label for i in g))


def main(argv: list[str]) -> int:
    from zhongjing.annotate.interop import read_rankings_jsonl
    from zhongjing.io import write_jsonl

    p = argparse.ArgumentParser(prog="zhongjing annotate suggest",
                                description="add a reward model's pre-ranking to each Ranking as meta.suggestion")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--reward-model", required=True, help="a `zhongjing train rm` folder")
    p.add_argument("--tie", type=non_negative, default=0.0, help="score differences up to this are tied")
    args = p.parse_args(argv)
    from zhongjing.model.reward import RewardModelScorer

    try:
        scorer = RewardModelScorer(args.reward_model)
    except OSError as e:
        raise ZhongjingError(f"{args.reward_model}: cannot load the reward model ({e})") from None
    rows = add_suggestions(read_rankings_jsonl(args.input), lambda c, a: scorer.score(c, a).tolist(),
                           args.reward_model, args.tie)
    n = write_jsonl(args.output, rows)
    print(f"wrote {n} rankings with suggestions to {args.output}")
    return 0
