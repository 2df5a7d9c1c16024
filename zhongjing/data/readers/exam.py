"""Multiple-choice exams: our ExamItem JSONL, CNMLEQA (JSON, options opa…ope) and CMMLU (CSV)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from zhongjing.data.readers.base import Raw, Source, clean_meta, convert_rows, json_format, record_id, register
from zhongjing.errors import DataError


@dataclass
class ExamItem:
    """One question. `answer` holds the correct option letters ("B", or "ACD" for multiple answers)."""

    id: str
    question: str
    options: dict[str, str]
    answer: str
    subject: str = ""
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any) -> "ExamItem":
        if not isinstance(d, dict):
            raise DataError(f"expected a JSON object, got {type(d).__name__}")
        for key in ("question", "options", "answer"):
            if key not in d:
                raise DataError(f"missing field {key!r}")
        return cls.make(str(d.get("id", "")), d["question"], d["options"], d["answer"], str(d.get("subject") or ""),
                        dict(d.get("meta") or {}))

    @classmethod
    def make(cls, id: str, question: Any, options: Any, answer: Any, subject: str = "", meta: dict | None = None) -> "ExamItem":
        if not isinstance(question, str) or not question.strip():
            raise DataError("question is empty or not a string")
        if not isinstance(options, dict) or len(options) < 2:
            raise DataError("'options' must map at least two letters to option texts")
        for k, v in options.items():
            if not re.fullmatch(r"[A-Z]", str(k)):
                raise DataError(f"option key {k!r} is not a capital letter")
            if not isinstance(v, (str, int, float)) or not str(v).strip():
                raise DataError(f"option {k} is empty or not text")
        if not isinstance(answer, str) or not re.fullmatch(r"[A-Za-z]+", answer.strip()):
            raise DataError(f"answer must be option letters, got {answer!r}")
        letters = "".join(sorted(set(answer.strip().upper())))
        unknown = [c for c in letters if c not in options]
        if unknown:
            raise DataError(f"answer {answer!r} names option(s) {', '.join(unknown)} that the question does not have")
        return cls(id, question.strip(), {str(k): str(v).strip() for k, v in options.items()}, letters, subject, meta or {})

    def to_dict(self) -> dict:
        return {"id": self.id, "question": self.question, "options": self.options, "answer": self.answer,
                "subject": self.subject, "meta": self.meta}

    def prompt(self) -> str:
        """Question and lettered options, one per line."""
        return self.question + "\n" + "\n".join(f"{k}. {v}" for k, v in self.options.items())


@json_format("exam", "exam", "our ExamItem JSONL: {id, question, options: {A: …}, answer: 'B' | 'ACD', subject, meta}", own=True)
def _exam(obj: Any, raw: Raw, src: Source) -> ExamItem:
    item = ExamItem.from_dict(obj)
    item.id = item.id or record_id(src, raw)
    item.meta = {"source": "exam", **item.meta}
    src.claim_id(item.id, raw.where)
    return item


CNMLEQA_OPTIONS = {"opa": "A", "opb": "B", "opc": "C", "opd": "D", "ope": "E"}
CNMLEQA_ENTITIES = ("disease or diagnosis", "surgery", "medication", "laboratory examination", "symptom or sign")


@json_format("cnmleqa", "exam", "CNMLEQA licensing exam: {id, question, opa…ope, answer: 'opd', year, question_type, …}")
def _cnmleqa(obj: Any, raw: Raw, src: Source) -> ExamItem:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("question", "answer", "opa", "opb"):
        if key not in obj:
            raise DataError(f"missing field {key!r}")
    options = {letter: obj[k] for k, letter in CNMLEQA_OPTIONS.items() if k in obj}
    answer = obj["answer"]
    answer = CNMLEQA_OPTIONS.get(answer, answer) if isinstance(answer, str) else answer
    entities = {k: obj[k] for k in CNMLEQA_ENTITIES if obj.get(k) not in (None, "", "无")}
    meta = clean_meta(source="cnmleqa", year=obj.get("year"), question_type=obj.get("question_type"), entities=entities)
    return ExamItem.make(record_id(src, raw, obj.get("id")), obj["question"], options, answer, "", meta)


def _cmmlu_row(row: dict, raw: Raw, src: Source) -> ExamItem:
    options = {k: v for k, v in row.items() if re.fullmatch(r"[A-Z]", k)}
    split = src.path.parent.name if src.path.parent.name in ("dev", "test", "val", "train") else ""
    row_id = (row.get("") or "").strip() or str(raw.index)
    item_id = f"{split}/{src.stem}:{row_id}" if split else f"{src.stem}:{row_id}"
    return ExamItem.make(item_id, row["Question"], options, row["Answer"], src.stem, clean_meta(source="cmmlu", split=split))


@register("cmmlu", "exam", "CMMLU CSV: ,Question,A,B,C,D,Answer (subject = file name, split = folder)")
def _cmmlu(src: Source) -> Iterator[Any]:
    return convert_rows(src, ("Question", "A", "B", "Answer"), _cmmlu_row)
