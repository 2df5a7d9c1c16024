"""Real replies to OTHER patients: the mismatched negatives of the ranking sources and the relevance check.

A reply written by a real doctor is fluent, safe and on-topic for *some* patient; scored against a different
patient it should lose to that patient's own reply. Both the `mismatched` ranking source (dataset/sources.py) and
the reward model's relevance accuracy (train/relevance.py) draw such replies here, so they agree on what "another
dialogue" means: a different `group` (the dialogue id), never just another turn of the same dialogue.
"""

from __future__ import annotations

import random
from typing import Sequence

# meta["negative"] of a two-answer ranking [own reply, a real reply to another dialogue's patient], ranked [[0], [1]]:
# any other patient's reply would do as its negative, so a trainer may draw a new one (rm.redraw_negatives)
OTHER_PATIENT = "other-patient"


def redraw_other(rankings: Sequence, seed: int | str) -> list:
    """For each own-vs-other ranking (meta.negative = OTHER_PATIENT), the same ranking with a new negative: the own
    reply of another such ranking from a different dialogue, never this one's own text; rankings of other kinds, and
    any for which no such reply exists, come back unchanged. Seeded: the same seed gives the same draw."""
    from dataclasses import replace

    idx = [i for i, r in enumerate(rankings) if r.meta.get("negative") == OTHER_PATIENT and len(r.responses) == 2]
    groups = [rankings[i].meta.get("source_id") or rankings[i].id for i in idx]
    rnd = random.Random(f"redraw:{seed}")
    out = list(rankings)
    for i, g in zip(idx, groups):
        r = rankings[i]
        for j in draw(groups, g, 3, rnd):  # a few candidates: a reply may repeat this one's own text
            other = rankings[idx[j]].responses[0]
            if other != r.responses[0]:
                out[i] = replace(r, responses=[r.responses[0], other])
                break
    return out


def draw(groups: Sequence[str], mine: str, n: int, rnd: random.Random) -> list[int]:
    """n distinct indices j with groups[j] != mine (fewer when too few exist), drawn with `rnd`."""
    picks: list[int] = []
    for _ in range(20 * (n + 1)):  # rejection sampling: almost every draw is another dialogue
        if len(picks) == n or not groups:
            break
        j = rnd.randrange(len(groups))
        if groups[j] != mine and j not in picks:
            picks.append(j)
    if len(picks) < n:  # tiny inputs: a scan, so the result never depends on luck
        picks += [j for j in range(len(groups)) if groups[j] != mine and j not in picks][: n - len(picks)]
    return picks


def others(groups: Sequence[str], n: int = 1, seed: int | str = 0) -> list[list[int]]:
    """For each item i, n distinct indices j (seeded) with groups[j] != groups[i]."""
    rnd = random.Random(f"mismatch:{seed}")
    return [draw(groups, g, n, rnd) for g in groups]


def turn_items(dialogues) -> list[tuple[str, list, str]]:
    """(dialogue id, messages before the doctor turn, the real doctor reply) for every answered patient turn."""
    items = []
    for d in dialogues:
        for i, m in enumerate(d.messages):
            if m.role == "assistant" and i and d.messages[i - 1].role == "user" and m.content.strip():
                items.append((d.id, d.messages[:i], m.content.strip()))
    return items


def own_vs_other(items: list[tuple[str, list, str]], seed: int | str = 0, limit: int = 0, tag: str = "relevance"):
    """Two-answer rankings: the real reply to this patient above a real reply from another dialogue."""
    from zhongjing.data.schema import Ranking

    if limit and len(items) > limit:
        items = random.Random(f"{tag}:{seed}").sample(items, limit)
    picks = others([g for g, _, _ in items], 1, f"{tag}:{seed}")
    out = []
    for n, ((g, ctx, own), p) in enumerate(zip(items, picks)):
        if p and items[p[0]][2] != own:
            out.append(Ranking(f"{tag}:{g}:{n}", ctx, [own, items[p[0]][2]], [[0], [1]], [tag],
                               {"source": tag, "source_id": g, "negative": OTHER_PATIENT}))
    return out
