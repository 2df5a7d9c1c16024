"""The three data units every stage speaks (DESIGN.md §2).

Doctor = assistant, patient = user. `from_dict` validates and raises DataError naming what is
wrong; callers add the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zhongjing.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str
    content: str

    def to_dict(self) -> dict:
        return {"role": self.role, "content": self.content}


def _messages(raw: Any, *, end_with: tuple[str, ...]) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise DataError("'messages' must be a non-empty list")
    out: list[Message] = []
    for i, m in enumerate(raw):
        if isinstance(m, Message):
            m = m.to_dict()
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"message {i} needs 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(f"message {i} has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise DataError(f"message {i} content must be a string, got {type(content).__name__}")
        if not content.strip():
            raise DataError(f"message {i} ({role}) is empty")
        out.append(Message(role, content))
    check_roles([m.role for m in out], end_with=end_with)
    return out


def check_roles(roles: list[str], *, end_with: tuple[str, ...] = ("user", "assistant")) -> None:
    """Optional system first, then strictly user/assistant alternation starting with user."""
    start = 1 if roles and roles[0] == "system" else 0
    if start == len(roles):
        raise DataError("dialogue has no user turn")
    for i, role in enumerate(roles[start:], start):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if role != expected:
            raise DataError(f"wrong role order: message {i} is {role!r}, expected {expected!r}")
    if roles[-1] not in end_with:
        raise DataError(f"dialogue must end with a {' or '.join(end_with)} turn, ends with {roles[-1]!r}")


@dataclass
class Dialogue:
    id: str
    messages: list[Message]
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> "Dialogue":
        if not isinstance(d, dict):
            raise DataError(f"expected a JSON object, got {type(d).__name__}")
        if "messages" not in d:
            raise DataError("missing field 'messages'")
        meta = d.get("meta") or {}
        if not isinstance(meta, dict):
            raise DataError("'meta' must be an object")
        return cls(str(d.get("id", "")), _messages(d["messages"], end_with=("user", "assistant")), dict(meta))

    def to_dict(self) -> dict:
        return {"id": self.id, "messages": [m.to_dict() for m in self.messages], "meta": self.meta}

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    @property
    def turns(self) -> int:
        """Number of doctor (assistant) turns."""
        return sum(m.role == "assistant" for m in self.messages)

    def is_multi_turn(self) -> bool:
        return self.turns > 1


@dataclass
class Document:
    text: str
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> "Document":
        if not isinstance(d, dict):
            raise DataError(f"expected a JSON object, got {type(d).__name__}")
        if "text" not in d:
            raise DataError("missing field 'text'")
        if not isinstance(d["text"], str) or not d["text"].strip():
            raise DataError("'text' must be a non-empty string")
        return cls(d["text"], dict(d.get("meta") or {}))

    def to_dict(self) -> dict:
        return {"text": self.text, "meta": self.meta}


def normalize_ranking(ranking: Any, k: int) -> list[list[int]]:
    """Accept [best, ..., worst] or tie groups [[best], [tied, tied], ...]; return tie groups.

    An empty ranking means "not yet ranked". A non-empty one must name every response once.
    """
    if not isinstance(ranking, list):
        raise DataError("'ranking' must be a list")
    if not ranking:
        return []
    groups = [g if isinstance(g, list) else [g] for g in ranking]
    flat = [i for g in groups for i in g]
    if any(not isinstance(i, int) or isinstance(i, bool) for i in flat):
        raise DataError(f"'ranking' must hold response indices, got {ranking!r}")
    if any(not g for g in groups):
        raise DataError("'ranking' has an empty tie group")
    if sorted(flat) != list(range(k)):
        raise DataError(f"'ranking' {ranking!r} must name each of the {k} responses exactly once")
    return groups


@dataclass
class Ranking:
    """K answers to the last user turn of `messages`, ranked best → worst (ties as groups).

    `all_wrong`: annotators judged every answer wrong; `replacement` is then the honest
    "I don't know"-style answer that the reward model learns as best (DESIGN.md §3).
    """

    id: str
    messages: list[Message]
    responses: list[str]
    ranking: list[list[int]] = field(default_factory=list)
    annotators: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    all_wrong: bool = False
    replacement: str | None = None

    @classmethod
    def from_dict(cls, d: Any) -> "Ranking":
        if not isinstance(d, dict):
            raise DataError(f"expected a JSON object, got {type(d).__name__}")
        for key in ("messages", "responses"):
            if key not in d:
                raise DataError(f"missing field '{key}'")
        responses = d["responses"]
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError("'responses' must be a list of at least 2 answers")
        for i, r in enumerate(responses):
            if not isinstance(r, str) or not r.strip():
                raise DataError(f"response {i} is empty or not a string")
        replacement = d.get("replacement")
        if replacement is not None and (not isinstance(replacement, str) or not replacement.strip()):
            raise DataError("'replacement' must be a non-empty string")
        return cls(
            id=str(d.get("id", "")),
            messages=_messages(d["messages"], end_with=("user",)),
            responses=list(responses),
            ranking=normalize_ranking(d.get("ranking") or [], len(responses)),
            annotators=[str(a) for a in d.get("annotators") or []],
            meta=dict(d.get("meta") or {}),
            all_wrong=bool(d.get("all_wrong", False)),
            replacement=replacement,
        )

    def to_dict(self) -> dict:
        d = {
            "id": self.id,
            "messages": [m.to_dict() for m in self.messages],
            "responses": self.responses,
            "ranking": self.ranking,
            "annotators": self.annotators,
            "meta": self.meta,
        }
        if self.all_wrong:
            d["all_wrong"] = True
        if self.replacement is not None:
            d["replacement"] = self.replacement
        return d

    @property
    def k(self) -> int:
        return len(self.responses)

    def completed(self, default_replacement: str | None = None) -> "Ranking":
        """All answers wrong → the honest replacement (the annotators', else the default) becomes answer K,
        ranked above every original answer (unranked originals tie below it). Otherwise unchanged."""
        honest = self.replacement or default_replacement
        if not self.all_wrong or not honest:
            return self
        k = len(self.responses)
        below = self.ranking or [list(range(k))]
        return Ranking(self.id, self.messages, self.responses + [honest], [[k]] + below, self.annotators, self.meta)

    def pairs(self) -> list[tuple[int, int]]:
        """Ordered (better, worse) index pairs implied by the ranking; tied answers give no pair."""
        return group_pairs(self.ranking)


def group_pairs(groups: list[list[int]]) -> list[tuple[int, int]]:
    """(better, worse) for every two answers in different tie groups (groups listed best → worst); tied answers
    give no pair. The one place rankings become pairs: the losses, exports, counts and scores all use it."""
    return [(b, w) for gi, hi in enumerate(groups) for lo in groups[gi + 1:] for b in hi for w in lo]
