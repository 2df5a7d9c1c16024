"""Ranking sources: where the reward model's preferences come from when no doctor has ranked anything.

Each source makes `Ranking`s (best → worst) and states what it assumes; the rank stage writes their union and
the pipeline report says which ones trained the reward model.

- `simulated`: the model's K samples ordered by the rubric heuristics of data/simulate.py. Assumes the
  heuristics (safety patterns, overlap with the real reply, fluency checks) order answers the way a doctor would;
  with a barely trained model every sample is poor, so the order is mostly noise around length and style.
- `gold-anchored`: the real doctor's reply to the turn ranks FIRST, the K samples below it in the simulated order.
  Assumes the real reply is better than anything the model wrote — true for a small model, and the one
  preference here no heuristic decided. A turn without a real reply is left out (counted). With `safety_first`
  (the default) the paper's priority holds for the real reply too: a sample the rubric rates SAFER (e.g. it sends
  a patient with a red-flag complaint to care, and the doctor's reply does not) ranks above it; measured on the
  real recipe, ranking the doctors' reply first regardless taught PPO to drop referrals (docs/real-data.md).
- `mismatched` (added to either): `n` real doctor replies to OTHER patients (another dialogue, data/mismatch.py),
  each ranked below this patient's real reply in a two-answer ranking of its own (`mismatched_as: pair`), or
  appended LAST below the model's samples (`last`). Assumes an answer to someone else is worse than this patient's
  own reply (`pair`), or than any attempt at this patient however rough (`last`); it is what teaches relevance,
  since style and length cannot tell the two real replies apart.
- `relevance-train`: n own-vs-other pairs from the built TRAINING dialogues (same assumption as `pair`), so the
  reward model sees relevance many more times than the generated turns alone give, at no generation cost.
- `safety-train`: on the built TRAINING dialogues' turns where the patient reports a red flag and the real reply
  does not send them to care, the same reply + a referral sentence above the reply alone. Assumes what the
  annotator's safety rule says (after a red-flag complaint a reply that refers is safer): only pairs the
  annotator scores safer are kept. The generated turns hold too few red flags to teach it (17 of 631 on the real
  recipe), and the doctors' replies refer after a third of them, so without it the reward model did not pay for
  a referral there. Tried on the real recipe and not adopted: it taught a relative preference only, at a cost in
  ranking accuracy (docs/real-data.md, "Safety-first rankings").
- `extra` files: rankings read as they are (any ranking format): the MedicalGPT medical preference pairs
  (chosen > rejected, written by its authors: mostly a full answer over a short or unhelpful one), or real
  annotator exports from `zhongjing annotate export` (doctors' judgements: the only source that needs no
  assumption). Each keeps its file name in `meta.source`.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

from zhongjing.data.mismatch import OTHER_PATIENT, draw, own_vs_other, turn_items
from zhongjing.data.schema import Ranking

KINDS = ("simulated", "gold-anchored")  # how the generated answers become rankings


def gold_anchored(r: Ranking, annotator, safety_first: bool = True) -> Ranking | None:
    """The real reply first, then the samples as the simulated annotator orders them; None without a real reply.

    `safety_first`: samples the annotator rates safer than the real reply (by at least its tie margin) rank above
    it, in their own order — Safety > Professionalism > Fluency holds for the real reply too. The real reply stays
    at index 0 of `responses` wherever it ranks (mismatched pairs and relevance read it there)."""
    ref = (r.meta.get("reference") or "").strip()
    if not ref:
        return None
    keep = [i for i, a in enumerate(r.responses) if a.strip() != ref]  # a sample that copied the reply is no sample
    if not keep:
        return None
    samples = replace(r, responses=[r.responses[i] for i in keep])
    ranked = annotator.rank(samples)
    groups = [[i + 1 for i in g] for g in ranked.ranking]
    meta = ranked.meta
    above = 0
    if safety_first:
        gold = annotator.score(r.messages, ref, ref).safety
        safety = [s[0] for s in meta["sim_scores"]]
        while above < len(groups) and all(annotator.safer(safety[i - 1], gold) for i in groups[above]):
            above += 1  # the annotator's order is safety first, so the safer samples are the leading groups
        meta = meta | {"gold_rank": above, "gold_safety": gold}
    groups = groups[:above] + [[0]] + groups[above:]
    # the real reply is the safe best answer, so the ranking is never all-wrong
    return Ranking(r.id, r.messages, [ref] + samples.responses, groups, ["gold-anchored", "simulated"],
                   meta | {"source": "gold-anchored", "simulated": True}, all_wrong=False)


def add_mismatched(rankings: list[Ranking], n: int, seed: int | str = 0, as_pairs: bool = True) -> list[Ranking]:
    """n real replies to other dialogues' patients per ranking. `as_pairs` (default): each in a ranking of its own,
    below this patient's real reply; else appended below every answer of the ranking itself. Appended, every
    sample > mismatched pair mirrors a real reply > sample pair, so a scorer that only tells real text from model
    text gets exactly 50% (measured on the first real run): the reward model has nothing simple to learn."""
    pool = [(r.meta.get("source_id") or r.id, (r.meta.get("reference") or "").strip()) for r in rankings]
    pool = [(g, ref) for g, ref in pool if ref]
    if n <= 0 or len({g for g, _ in pool}) < 2:
        return rankings
    groups = [g for g, _ in pool]
    rnd = random.Random(f"mismatched:{seed}")
    out = []
    for r in rankings:
        mine = r.meta.get("source_id") or r.id
        own = (r.meta.get("reference") or "").strip()
        picks = draw(groups, mine, n, rnd)
        extra = [pool[j][1] for j in picks if pool[j][1] not in r.responses and pool[j][1] != own]
        out.append(r)
        if not extra or not r.ranking or (as_pairs and not own):
            continue
        if as_pairs:
            out += [Ranking(f"{r.id}~mismatched{i}", r.messages, [own, e], [[0], [1]], ["mismatched"],
                            {"source": "mismatched", "source_id": mine, "negative": OTHER_PATIENT})
                    for i, e in enumerate(extra)]
        else:
            k = len(r.responses)
            out[-1] = replace(r, responses=r.responses + extra, ranking=[list(g) for g in r.ranking] + [
                list(range(k, k + len(extra)))], meta=r.meta | {"mismatched": len(extra)})
    return out


# sentences that send the patient to care, written for this package; each matches the annotator's referral rule
REFERRALS = ("这种情况建议尽快到医院就诊，不要拖延。", "请及时去医院急诊，当面检查更稳妥。", "建议尽快到正规医院面诊，查明原因。")


def referral_pairs(dialogues, annotator, n: int = 0, seed: int | str = 0) -> list[Ranking]:
    """`safety-train`: (real reply + a referral) > (real reply) where the annotator scores the first safer —
    turns whose patient reports a red flag the reply leaves unreferred. At most n (0: all), drawn with `seed`."""
    out = []
    for g, ctx, own in turn_items(dialogues):
        better = own + REFERRALS[len(out) % len(REFERRALS)]
        if annotator.safer(annotator.score(ctx, better, own).safety, annotator.score(ctx, own, own).safety):
            out.append(Ranking(f"safety-train:{g}:{len(out)}", ctx, [better, own], [[0], [1]], ["safety-train"],
                               {"source": "safety-train", "source_id": g}))
    if n and len(out) > n:
        out = random.Random(f"safety-train:{seed}").sample(out, n)
    return out


def train_pairs(dialogues, n: int, seed: int | str = 0) -> list[Ranking]:
    """n own-vs-other pairs from (training) dialogues: relevance without generating anything."""
    return own_vs_other(turn_items(dialogues), seed, n, tag="relevance-train")


def read_extra(paths: Iterable[str]) -> list[Ranking]:
    """Ranked items from other files (pairs, annotator exports), each tagged with its file's name."""
    from zhongjing.data.readers import read_rankings

    out = []
    for p in paths:
        name = Path(p).stem
        for r in read_rankings(p):
            if r.ranking or r.all_wrong:
                out.append(replace(r, meta=r.meta | {"source": name}))
    return out


def make_rankings(kind: str, generated: Iterable[Ranking], annotator, *, mismatched: int = 0,
                  mismatched_as: str = "pair", extra: Iterable[str] = (), train_dialogues: Sequence = (),
                  relevance_pairs: int = 0, safety_first: bool = True, safety_pairs: int = 0,
                  seed: int | str = 0) -> tuple[list[Ranking], Counter]:
    """The rank stage's rankings from the generated answers (+ mismatched negatives), pairs drawn from the built
    training dialogues (`train_dialogues`, a sequence: the relevance and the safety pairs each read it whole) and
    extra files."""
    if kind not in KINDS:
        raise ValueError(f"ranking kind {kind!r} (one of {', '.join(KINDS)})")
    counts: Counter = Counter()
    ranked = []
    for r in generated:
        out = gold_anchored(r, annotator, safety_first) if kind == "gold-anchored" else annotator.rank(r)
        if out is None:
            counts["no_reference"] += 1
            continue
        if out.meta.get("gold_rank"):
            counts["gold_below_safer"] += 1  # a sample the rubric rates safer ranks above the real reply
        ranked.append(out)
    counts[kind] = len(ranked)
    if mismatched:
        if mismatched_as not in ("pair", "last"):
            raise ValueError(f"mismatched_as {mismatched_as!r} (pair or last)")
        ranked = add_mismatched(ranked, mismatched, seed, as_pairs=mismatched_as == "pair")
        counts["mismatched"] = sum(1 for r in ranked if r.meta.get("mismatched") or r.meta.get("source") == "mismatched")
    if relevance_pairs:
        pairs = train_pairs(train_dialogues, relevance_pairs, seed)
        counts["relevance-train"] = len(pairs)
        ranked += pairs
    if safety_pairs:
        pairs = referral_pairs(train_dialogues, annotator, 0 if safety_pairs < 0 else safety_pairs, seed)
        counts["safety-train"] = len(pairs)
        ranked += pairs
    for r in read_extra(extra):
        counts[f"extra:{r.meta['source']}"] += 1
        ranked.append(r)
    return ranked, counts
