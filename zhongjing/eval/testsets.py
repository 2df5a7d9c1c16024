"""Test sets → evaluation items: one item per doctor turn to answer, given the gold history.

Most CMtMedQA test dialogues close with "thanks" → "you're welcome"; judging only the last turn
would mostly measure pleasantries. So by default every doctor turn becomes an item whose context
is the gold dialogue up to that patient turn (`turns: all`). Safety / red-team prompts found in a
file (meta `safety`) form their own set, `<name>-safety`. Sampling picks whole dialogues with a
seed, so a dialogue's turns stay together (the bootstrap resamples them together, too).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zhongjing.config import at_least
from zhongjing.data.schema import Dialogue
from zhongjing.errors import ZhongjingError


@dataclass
class TestSetConfig:
    name: str = ""
    path: str = ""
    format: str = "auto"  # any dialogue format the readers know: cmtmedqa, huatuo, dialogue (our JSONL), ...
    limit: int = 0  # dialogues sampled per subset (regular / safety); 0 = all
    turns: Literal["all", "last", "first"] = "all"  # which doctor turns become items
    split_safety: bool = True  # safety prompts (meta.safety) become their own set "<name>-safety" (all of them: "<name>")

    def __post_init__(self):
        at_least(self, 0, "limit")


@dataclass
class EvalItem:
    id: str  # "<dialogue id>#<turn>"
    group: str  # the dialogue id: resampling unit of the bootstrap
    set: str
    context: list[dict]  # gold messages ending with the patient turn to answer
    reference: str | None  # the gold doctor reply, when the set has one
    turn: int  # 0-based doctor-turn index within the dialogue
    safety: bool = False

    def to_dict(self) -> dict:
        return {"id": self.id, "group": self.group, "set": self.set, "context": self.context,
                "reference": self.reference, "turn": self.turn, "safety": self.safety}


@dataclass
class TestSet:
    name: str
    source: str
    items: list[EvalItem]
    dialogues: list[Dialogue] = field(default_factory=list)  # the gold dialogues (perplexity)
    safety: bool = False

    @property
    def multi_turn(self) -> bool:
        return any(it.turn > 0 for it in self.items)

    def summary(self) -> dict:
        return {"name": self.name, "source": self.source, "dialogues": len(self.dialogues), "items": len(self.items),
                "safety": self.safety, "multi_turn": self.multi_turn}


def _read(cfg: TestSetConfig) -> list[Dialogue]:
    from zhongjing.data.readers import read_dialogues

    if not Path(cfg.path).exists():
        raise ZhongjingError(f"test set {cfg.name!r}: {cfg.path} not found")
    fmt = None if cfg.format in ("", "auto") else cfg.format
    return list(read_dialogues(cfg.path, fmt))


def sample_dialogues(dialogues: list[Dialogue], limit: int, seed: int) -> list[Dialogue]:
    """`limit` dialogues chosen with `seed`, in file order (all when limit is 0 or larger than the set)."""
    if not limit or limit >= len(dialogues):
        return list(dialogues)
    keep = sorted(random.Random(seed).sample(range(len(dialogues)), limit))
    return [dialogues[i] for i in keep]


def items_of(d: Dialogue, set_name: str, turns: str = "all", *, safety: bool = False) -> list[EvalItem]:
    msgs = [m.to_dict() for m in d.messages]
    # (index of the patient turn to answer, the gold reply or None for a trailing patient turn)
    slots = [(i, msgs[i + 1]["content"] if i + 1 < len(msgs) else None)
             for i, m in enumerate(msgs) if m["role"] == "user"]
    out = [EvalItem(f"{d.id}#{k}", d.id, set_name, msgs[: i + 1], ref, k, safety) for k, (i, ref) in enumerate(slots)]
    if turns == "last":
        return out[-1:]
    if turns == "first":
        return out[:1]
    return out


def _named(dialogues: list[Dialogue], name: str) -> list[Dialogue]:
    """Item ids are built from dialogue ids (the readers make them unique); give id-less ones a position."""
    return [d if d.id else Dialogue(f"{name}:{i}", d.messages, d.meta) for i, d in enumerate(dialogues)]


def load_testset(cfg: TestSetConfig, seed: int = 0) -> list[TestSet]:
    """The set (and its safety subset, if any) as sampled items."""
    if not cfg.name:
        raise ZhongjingError(f"test set {cfg.path!r}: give it a name")
    dialogues = _named(_read(cfg), cfg.name)
    if not dialogues:
        raise ZhongjingError(f"test set {cfg.name!r}: {cfg.path} has no dialogues")
    regular = [d for d in dialogues if not (cfg.split_safety and d.meta.get("safety"))]
    risky = [d for d in dialogues if cfg.split_safety and d.meta.get("safety")]
    out = []
    risky_name = f"{cfg.name}-safety" if regular else cfg.name  # a set of safety prompts only keeps its name
    for name, group, is_safety in ((cfg.name, regular, False), (risky_name, risky, True)):
        if not group:
            continue
        chosen = sample_dialogues(group, cfg.limit, seed)
        items = [it for d in chosen for it in items_of(d, name, cfg.turns, safety=is_safety)]
        out.append(TestSet(name, cfg.path, items, chosen, is_safety))
    return out


def load_testsets(cfgs: list[TestSetConfig], seed: int = 0) -> list[TestSet]:
    sets = [s for c in cfgs for s in load_testset(c, seed)]
    names = [s.name for s in sets]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ZhongjingError(f"two test sets are named {dup!r}; names must be unique")
    return sets
