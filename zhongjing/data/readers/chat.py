"""Chat-shaped formats: our own Dialogue/Document/Ranking JSONL, OpenAI `messages`, ShareGPT
`conversations`, MedicalGPT preference pairs (`conversations, chosen, rejected` and the older
`question, response_chosen, response_rejected`) and MedicalGPT role-play personas."""

from __future__ import annotations

from typing import Any

from zhongjing.data.readers.base import Raw, Source, clean_meta, json_format, make_dialogue, need, record_id, text_field
from zhongjing.data.schema import Dialogue, Document, Message, Ranking
from zhongjing.errors import DataError

SHAREGPT_ROLES = {
    "human": "user", "user": "user", "patient": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "model": "assistant", "bot": "assistant",
    "system": "system",
}
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _own_meta(d: dict, fmt: str) -> dict:
    meta = d.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError("'meta' must be an object")
    return {"source": fmt, **meta}


@json_format("dialogue", "dialogue", "our Dialogue JSONL: {id, messages: [{role, content}], meta}", own=True)
def _dialogue(obj: Any, raw: Raw, src: Source) -> Dialogue:
    d = Dialogue.from_dict(obj)
    d.meta = _own_meta(obj, "dialogue")
    d.id = d.id or record_id(src, raw)
    src.claim_id(d.id, raw.where)
    return d


@json_format("document", "document", "our Document JSONL: {text, meta} (also plain {\"text\": ...} lines)", own=True)
def _document(obj: Any, raw: Raw, src: Source) -> Document:
    doc = Document.from_dict(obj)
    doc.meta = _own_meta(obj, "document")
    return doc


@json_format("ranking", "ranking", "our Ranking JSONL: {id, messages, responses, ranking, annotators, meta}", own=True)
def _ranking(obj: Any, raw: Raw, src: Source) -> Ranking:
    r = Ranking.from_dict(obj)
    r.meta = _own_meta(obj, "ranking")
    r.id = r.id or record_id(src, raw)
    src.claim_id(r.id, raw.where)
    return r


def _openai_turns(messages: Any) -> list[tuple[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise DataError("'messages' must be a non-empty list")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"message {i} needs 'role' and 'content'")
        role = OPENAI_ROLES.get(m["role"])
        if role is None:
            raise DataError(f"message {i} has unknown role {m['role']!r} (expected system, user or assistant)")
        content = m["content"]
        if isinstance(content, list):  # content parts: keep text, refuse what we cannot train on
            kinds = {p.get("type") for p in content if isinstance(p, dict)}
            if not content or kinds != {"text"} or not all(isinstance(p, dict) for p in content):
                raise DataError(f"message {i} has non-text content parts ({', '.join(sorted(map(str, kinds)))})")
            content = "\n".join(str(p.get("text", "")) for p in content)
        turns.append((role, content))
    return turns


@json_format("openai", "dialogue", "OpenAI chat fine-tuning JSONL: {messages: [{role, content}]}")
def _openai(obj: Any, raw: Raw, src: Source) -> Dialogue:
    need(obj, "messages")
    return make_dialogue(_openai_turns(obj["messages"]), id=record_id(src, raw, obj.get("id")), meta={"source": "openai"})


def sharegpt_turns(obj: dict, key: str = "conversations") -> list[tuple[str, Any]]:
    conv = obj[key]
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{key!r} must be a non-empty list")
    turns = []
    system = obj.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise DataError(f"field 'system' must be a string, got {type(system).__name__}")
        if system.strip():
            turns.append(("system", system))
    for i, t in enumerate(conv):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise DataError(f"{key}[{i}] needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(t["from"]).lower())
        if role is None:
            raise DataError(f"{key}[{i}] has unknown role {t['from']!r} (expected human, gpt or system)")
        turns.append((role, t["value"]))
    return turns


@json_format("sharegpt", "dialogue", "ShareGPT JSON/JSONL: {conversations: [{from: human|gpt|system, value}], system?}")
def _sharegpt(obj: Any, raw: Raw, src: Source) -> Dialogue:
    need(obj, "conversations")
    return make_dialogue(sharegpt_turns(obj), id=record_id(src, raw, obj.get("id")), meta={"source": "sharegpt"})


def _pair(messages: list[Message], chosen: Any, rejected: Any, *, id: str, fmt: str) -> Ranking:
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{name!r} answer is empty or not a string")
    if chosen.strip() == rejected.strip():
        raise DataError("'chosen' and 'rejected' are the same answer")
    return Ranking.from_dict({"id": id, "messages": [m.to_dict() for m in messages], "responses": [chosen, rejected],
                              "ranking": [0, 1], "meta": {"source": fmt}})


@json_format("medicalgpt_pref", "ranking", "MedicalGPT/LLaMA-Factory preference pairs: {conversations, chosen, rejected}")
def _pref(obj: Any, raw: Raw, src: Source) -> Ranking:
    need(obj, "conversations", "chosen", "rejected")
    context = make_dialogue(sharegpt_turns(obj), id="", meta={})
    if context.messages[-1].role != "user":
        raise DataError("'conversations' must end with a human turn (the prompt both answers reply to)")
    return _pair(context.messages, obj["chosen"], obj["rejected"], id=record_id(src, raw, obj.get("id")), fmt="medicalgpt_pref")


def history_turns(history: Any, key: str = "history") -> list[tuple[str, Any]]:
    """[[question, answer], ...] → turns; each pair must have exactly two items."""
    if history in (None, ""):
        return []
    if not isinstance(history, list):
        raise DataError(f"{key!r} must be a list of [question, answer] pairs")
    turns = []
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            n = len(pair) if isinstance(pair, (list, tuple)) else type(pair).__name__
            raise DataError(f"{key}[{i}] must be a [question, answer] pair, got {n} item(s)")
        turns += [("user", pair[0]), ("assistant", pair[1])]
    return turns


@json_format("reward_pairs", "ranking", "MedicalGPT reward pairs: {question, response_chosen, response_rejected, history?, system?}")
def _reward_pairs(obj: Any, raw: Raw, src: Source) -> Ranking:
    need(obj, "question", "response_chosen", "response_rejected")
    turns = [("system", obj["system"])] if str(obj.get("system") or "").strip() else []
    turns += history_turns(obj.get("history")) + [("user", obj["question"])]
    context = make_dialogue(turns, id="", meta={})
    return _pair(context.messages, obj["response_chosen"], obj["response_rejected"],
                 id=record_id(src, raw, obj.get("id")), fmt="reward_pairs")


@json_format("persona", "document", "role-play personas {system_prompt} (patient/nurse simulators) → Documents")
def _persona(obj: Any, raw: Raw, src: Source) -> Document:
    need(obj, "system_prompt")
    text = text_field(obj, "system_prompt")
    if not text.strip():
        raise DataError("field 'system_prompt' is empty")
    return Document(text.strip(), clean_meta(source="persona", id=record_id(src, raw, obj.get("id"))))
