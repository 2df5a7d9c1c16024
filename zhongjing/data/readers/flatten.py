"""Any unit → a pre-training Document (dialogues as '患者：…\\n医生：…' lines)."""

from __future__ import annotations

from typing import Any

from zhongjing.data.readers.exam import ExamItem
from zhongjing.data.schema import Dialogue, Document, Message, Ranking

SPEAKER = {"user": "患者", "assistant": "医生"}


def dialogue_text(messages: list[Message]) -> str:
    return "\n".join(m.content if m.role == "system" else f"{SPEAKER[m.role]}：{m.content}" for m in messages)


def to_document(unit: Any) -> Document:
    if isinstance(unit, Document):
        return unit
    if isinstance(unit, Dialogue):
        return Document(dialogue_text(unit.messages), {**unit.meta, "id": unit.id})
    if isinstance(unit, Ranking):  # the context and its best answer (unranked: the context only)
        text = dialogue_text(unit.messages)
        best = unit.replacement if unit.all_wrong and unit.replacement else (
            unit.responses[unit.ranking[0][0]] if unit.ranking else None)
        return Document(text + (f"\n{SPEAKER['assistant']}：{best}" if best else ""), {**unit.meta, "id": unit.id})
    if isinstance(unit, ExamItem):
        return Document(f"{unit.prompt()}\n答案：{unit.answer}", {**unit.meta, "id": unit.id, "subject": unit.subject})
    raise TypeError(f"not a data unit: {type(unit).__name__}")
