"""Preference data shared by `train rm` and `train dpo`: rankings read, all-wrong rankings completed, split.

A ranking whose every answer the annotators marked wrong gets the honest "I don't know" answer (their replacement,
or `IDK_ANSWER`) as a new best answer above all of them (DESIGN.md §3), so the model learns where its knowledge ends.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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


@dataclass
class Encoded:
    """One ranking, tokenized: each answer with the dialogue before it (see model.reward.render_answer)."""

    ids: list[list[int]]  # K token lists, through the answer's end-of-turn token
    groups: list[list[int]]  # tie groups best → worst
    k: int
    targets: list[list[int]] | None = None  # K shifted label lists (next-token targets on the answer only), DPO


def encode(rankings: list[Ranking], renderer, counts: Counter, with_targets: bool = False) -> list[Encoded]:
    from zhongjing.train.batching import shift
    from zhongjing.model.reward import render_answer

    out = []
    for r in rankings:
        rendered = [render_answer(renderer, r.messages, resp) for resp in r.responses]
        if any(x is None for x in rendered):
            counts["too_long"] += 1  # an answer alone does not fit max_length
            continue
        targets = [shift(labels) for _, labels in rendered] if with_targets else None
        out.append(Encoded([ids for ids, _ in rendered], r.ranking, r.k, targets))
    return out


def pack_answers(lengths: list[int]) -> list[list[int]]:
    """First-fit decreasing: answers (by index) into rows no longer than the longest one. A pair's chosen and rejected
    answers often differ several-fold in length; padding each to the longest would waste most of the batch."""
    width = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r in range(len(rows)) if lengths[i] <= room[r]), None)
        if r is None:
            rows.append([]), room.append(width)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


class RankingBatches:
    """Micro-batches of whole rankings (batch_size of them): every answer encoded once however many pairs it is in,
    pairs as index tensors. `n` (the loss normaliser) counts rankings (RM) or pairs (DPO).

    With `pack` (default) the answers share rows, each with position ids restarting at 0 — transformers then keeps
    attention inside each answer — and `ends` (N, 2) gives the (row, column) of every answer's last token, `seg`
    (rows, width) which answer each position belongs to (−1 = padding)."""

    def __init__(self, train: list[Encoded], val: list[Encoded], batch_size: int, *, seed: int, group: int,
                 pad_id: int, pair_norm: str = "ckn", per: str = "ranking", pack: bool = True):
        self.train, self.val, self.bs, self.seed, self.group = train, val, batch_size, seed, group
        self.pad_id, self.pair_norm, self.per, self.pack = pad_id, pair_norm, per, pack

    def collate(self, items: list[Encoded]) -> dict:
        import torch

        from zhongjing.data.render import IGNORE
        from zhongjing.train.batching import Example, collate_rows
        from zhongjing.train.losses import ranking_norm, ranking_pairs

        answers, offsets, groups = [], [], []
        for e in items:
            offsets.append(len(answers))
            targets = e.targets or [[IGNORE] * len(ids) for ids in e.ids]
            answers += [Example(ids, t, 0) for ids, t in zip(e.ids, targets)]
            groups.append(e.groups)
        better, worse, owner = ranking_pairs(groups, offsets)
        norms = [ranking_norm(e.k, int((owner == r).sum()), self.pair_norm) for r, e in enumerate(items)]
        rows = pack_answers([len(a.input_ids) for a in answers]) if self.pack else [[i] for i in range(len(answers))]
        batch = collate_rows(rows, answers, self.pad_id)
        seg = torch.full_like(batch["input_ids"], -1)
        ends = torch.zeros(len(answers), 2, dtype=torch.long)
        for r, row in enumerate(rows):
            col = 0
            for i in row:
                n = len(answers[i].input_ids)
                seg[r, col:col + n] = i
                ends[i] = torch.tensor([r, col + n - 1])
                col += n
        batch |= {"better": better, "worse": worse, "owner": owner, "norm": torch.tensor(norms), "seg": seg,
                  "ends": ends, "n": len(items) if self.per == "ranking" else len(better)}
        if items and items[0].targets is None:
            del batch["targets"]
        return batch

    def train_batches(self, epoch: int):
        from zhongjing.train.batching import LazyBatches, group_by_length
        from zhongjing.train.mix import rng

        order = rng(self.seed, "rankings", epoch).permutation(len(self.train)).tolist()
        lengths = [sum(len(x) for x in e.ids) for e in self.train]
        plan = group_by_length(order, lengths, self.bs, self.group, self.seed, epoch)
        return LazyBatches(plan, lambda rows: self.collate([self.train[r[0]] for r in rows]))

    def val_batches(self):
        from zhongjing.train.batching import LazyBatches

        order = sorted(range(len(self.val)), key=lambda i: sum(len(x) for x in self.val[i].ids))
        plan = [order[i:i + self.bs] for i in range(0, len(order), self.bs)]
        return LazyBatches(plan, lambda idx: self.collate([self.val[i] for i in idx]))


# ----------------------------------------------------------------------------- what train rm and train dpo share


def pref_batches(cfg, tokenizer, *, per: str, with_targets: bool) -> tuple[RankingBatches, Counter]:
    """cfg (RMConfig / DPOConfig) → the encoded rankings as batches, and what was counted on the way."""
    from zhongjing.data.render import Renderer
    from zhongjing.errors import ZhongjingError

    prefs = load_prefs(cfg.data, cfg.format, val_paths=cfg.val_data, val_ratio=cfg.val_ratio, seed=cfg.train.seed,
                       idk_answer=cfg.idk_answer, skip_bad=cfg.skip_bad)
    counts = Counter(prefs.counts)
    import os
    import sys

    from zhongjing.model.load import cap_config_length, context_of

    def say(msg: str) -> None:  # once, not per launched process
        if os.environ.get("RANK", "0") == "0":
            print(msg, file=sys.stderr)

    cap_config_length(cfg, context_of(cfg.model), say)  # as sft
    renderer = Renderer(tokenizer, max_length=cfg.max_length, strategy="last")
    train = encode(prefs.train, renderer, counts, with_targets=with_targets)
    val = encode(prefs.val, renderer, counts, with_targets=with_targets)
    # what is actually trained on: a ranking with an answer too long for max_length was just left out
    counts["train"], counts["val"] = len(train), len(val)
    counts["train_pairs"] = sum(len(group_pairs(e.groups)) for e in train)
    if not train:
        raise ZhongjingError(f"no usable rankings in {cfg.data} ({dict(counts)})")
    return RankingBatches(train, val, cfg.train.batch_size, seed=cfg.train.seed, group=cfg.length_group,
                          pad_id=tokenizer.pad_token_id, pair_norm=getattr(cfg, "pair_norm", "ckn"), per=per,
                          pack=cfg.pack), counts


def fit_prefs(stage: str, cfg, model, tokenizer, data: RankingBatches, counts: Counter, loss_fn, on_eval, *,
              accelerator, meta: dict, best_extra=None):
    """fit() with the meta.json every preference stage writes; afterwards the best validation record's accuracy and
    margin (and best_extra(record), e.g. the RM's reward statistics) are added to OUT/meta.json."""
    import sys
    import time
    from pathlib import Path

    from zhongjing.io import write_json
    from zhongjing.model.identity import data_record, training_meta
    from zhongjing.model.load import read_meta
    from zhongjing.model.lora import TrainedIO, count_params
    from zhongjing.train.loop import fit

    t0 = time.time()
    trainable, total = count_params(model)
    parent = str(Path(cfg.model).resolve())
    records = [data_record(p) for p in list(cfg.data) + list(cfg.val_data)]
    meta = training_meta(stage, cfg, parent, records,
                         kind="full" if getattr(cfg, "finetune", "lora") == "full" else "adapter",
                         counts=dict(counts), params={"trainable": trainable, "total": total}) | meta
    if accelerator.is_main_process:
        left = {"too_long": "too long for max_length", "unranked": "unranked", "all_tied": "all tied"}
        left = ", ".join(f"{counts[k]} {why}" for k, why in left.items() if counts[k])
        print(f"{stage}: {counts['train']} rankings ({counts['train_pairs']} pairs) train, {counts['val']} val"
              + (f" (left out: {left})" if left else "") + f"; {trainable:,}/{total:,} trainable parameters",
              file=sys.stderr)
    result = fit(model, data, loss_fn, cfg.train, cfg.output, accelerator=accelerator,
                 io=TrainedIO(tokenizer, parent), meta=meta, on_eval=on_eval)
    out = Path(cfg.output)
    if accelerator.is_main_process:
        final = read_meta(out)
        best = next((h for h in result.history if h["step"] == result.best_step), None)
        if best is not None:
            final["metrics"] |= {"val_accuracy": best["val_accuracy"], "val_margin": best["val_margin"]}
            final |= best_extra(best) if best_extra else {}
        final["seconds"] = round(time.time() - t0, 1)
        write_json(out / "meta.json", final)
    accelerator.wait_for_everyone()
    return out
