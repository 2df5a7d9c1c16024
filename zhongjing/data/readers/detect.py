"""Which format a file is in: by extension, then by the first record's shape.

Each rule looks at fields that only its format has (checked most specific first), so a file gets
exactly one answer or an error that shows what was seen and how to name the format.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from zhongjing.data.readers.base import SNIFF_BYTES, sniff_text
from zhongjing.data.readers.consult import blocks
from zhongjing.data.readers.instruct import PROMPT_KEYS, QA_KEYS, _TAG
from zhongjing.errors import DataError

_ROLE_UTTERANCE = re.compile(r"^\s*(病人|患者|医生)[：:]")


def _record_format(r: Any) -> str | None:
    if isinstance(r, list):
        if r and all(isinstance(u, str) for u in r) and _ROLE_UTTERANCE.match(r[0]):
            return "covid_json"
        return None
    if not isinstance(r, dict):
        return None
    k = set(r)

    def has(*keys: str) -> bool:
        return k.issuperset(keys)

    if "gaishu_info" in k:
        return "kg_xywy"
    if has("name", "desc") and k & {"cure_department", "acompany", "symptom", "common_drug", "recommand_drug", "check"}:
        return "kg_xywy_flat"
    if isinstance(r.get("Dialogue"), list):
        return "covid_json"
    if has("instruction", "output") and k & {"cate1", "cate2"}:
        return "cmtmedqa"
    if has("instruct", "output"):
        return "cmtmedqa_safety"
    if has("conversations", "chosen", "rejected"):
        return "medicalgpt_pref"
    if "conversations" in k:
        return "sharegpt"
    if has("messages", "responses"):
        return "ranking"
    if "messages" in k:
        return "dialogue" if k & {"id", "meta"} else "openai"
    if has("question", "response_chosen", "response_rejected"):
        return "reward_pairs"
    if has("question", "options", "answer_idx"):
        return "medqa_mcmle"
    if has("question", "option") and k & {"exam_type", "exam_class", "question_type"}:
        return "cmb_exam"
    if has("description", "QA_pairs"):
        return "cmb_clin"
    if has("qtext", "options"):
        return "mlecqa"
    if has("question", "options", "answer"):
        return "exam"
    if has("question", "opa", "opb", "answer"):
        return "cnmleqa"
    if has("input", "target") and k & {"task_type", "task_dataset", "answer_choices"}:
        return "promptcblue"
    if has("query", "response"):
        return "chatmed_consult"
    if has("medical_case", "doctor_diagnosis"):
        return "huatuogpt_eval"
    if has("instruction", "output"):
        ins = r["instruction"]
        if isinstance(ins, list):
            return "huatuo"
        if isinstance(ins, str) and ins.lstrip().startswith("<user>") and _TAG.search(ins):
            return "bentsao_multiturn"
        return "alpaca"
    if "text" in k and not k & {"question", "answer", "messages", "instruction"}:
        return "document"
    if "system_prompt" in k and len(k) <= 3:
        return "persona"
    if any(has(q, a) for q, a in QA_KEYS):
        return "qa"
    if k & {"request_slots", "implicit_inform_slots", "explicit_inform_slots"}:
        return "dxy_goals"
    if k & set(PROMPT_KEYS):
        return "prompts"
    return None


def _object_format(obj: dict) -> str | None:
    """A file that is one JSON object, not records: the DXY goal and statistics files."""
    values = list(obj.values())
    if values and all(isinstance(v, list) for v in values):
        if all(_record_format(x) == "dxy_goals" for v in values for x in v[:3]):
            return "dxy_goals"
        if len(values) > 1 and all(isinstance(x, str) for v in values for x in v):
            return "dxy_kb"
    # statistics name several diseases: one record with one nested object ({"turns": {...}}) is not that file
    if len(values) > 1 and all(isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values())
                               for v in values):
        return "dxy_kb"
    return None


def _first_json(text: str, partial: bool = True) -> tuple[Any, str]:
    """(first record, container) without parsing the whole file: 'list', 'jsonl', 'keyed' or 'object'.
    `partial`: `text` is a cut prefix of a larger file (a big keyed object may then be cut mid-record)."""
    s = text.lstrip("\ufeff").lstrip()
    dec = json.JSONDecoder()
    if s.startswith("["):
        i = len(s) - len(s[1:].lstrip())
        if s[i:i + 1] == "]":
            raise DataError("empty JSON list")
        try:
            return dec.raw_decode(s, i)[0], "list"
        except json.JSONDecodeError as e:  # a list whose first record is already broken
            raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", where=f"line {e.lineno}") from None
    try:
        obj, end = dec.raw_decode(s)
    except json.JSONDecodeError as e:
        lines = [ln for ln in s.splitlines()[:50] if ln.strip()]
        if len(lines) > 1:  # JSON lines whose first line is bad: judge by the next one
            try:
                return json.loads(lines[1]), "jsonl"
            except json.JSONDecodeError:
                pass
        m = re.match(r'\{\s*"(?:[^"\\]|\\.)*"\s*:\s*', s) if partial else None
        if m:  # a large object of records {"0": {...}, ...}: decode just the first value
            try:
                value = dec.raw_decode(s, m.end())[0]
                return value, "keyed" if isinstance(value, dict) else "object"
            except json.JSONDecodeError:
                pass
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", where=f"line {e.lineno}") from None
    if s[end:].strip():
        return obj, "jsonl"
    if isinstance(obj, dict) and len(obj) > 1 and all(isinstance(v, dict) for v in obj.values()):
        return next(iter(obj.values())), "keyed"
    return obj, "object"


def _json_format(text: str, partial: bool = True) -> str | None:
    first, container = _first_json(text, partial)
    if container == "object" and isinstance(first, dict):
        return _record_format(first) or _object_format(first)
    if container == "keyed" and _record_format(first) is None and all(isinstance(x, (int, float)) for x in first.values()):
        return "dxy_kb"
    return _record_format(first)


def _csv_format(text: str) -> str | None:
    header = {h.strip() for h in next(csv.reader([text.lstrip("\ufeff").splitlines()[0]]))}
    if header >= {"department", "title", "ask", "answer"}:
        return "toyhom_csv"
    if header >= {"Question", "Options", "Answer"}:
        return "cmexam"
    if header >= {"Question", "A", "B", "Answer"}:
        return "cmmlu"
    if header >= {"药品", "医学专家标注的适应病症", "instruction"}:
        return "qizhen_drug"
    return None


def _number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def _names(lines: list[str]) -> bool:
    """Short lines that are names, not sentences: a dictionary such as disease.txt or drug.txt."""
    lengths = sorted(len(ln) for ln in lines)
    sentences = sum(bool(re.search(r"[。？！?!]$", ln)) for ln in lines)
    return lengths[-1] <= 80 and lengths[len(lengths) // 2] <= 16 and sentences <= len(lines) // 20


def _text_format(text: str, partial: bool) -> str:
    lines = [ln.strip() for ln in text.lstrip("\ufeff").splitlines()]
    body = [ln for ln in lines if ln]
    if partial:
        body = body[:-1] or body  # the last sniffed line may be cut
    first = body[0]
    if re.match(r"^\w+@\s*\[", first):
        return "dxy"
    if re.fullmatch(r"id=\S+", first) and {"Description", "Dialogue"} & set(body[:200]):
        return "covid_txt"
    if first in PROMPT_KEYS and len(body) > 1:
        return "prompt_lines"
    sample = body[:500]
    if all("\t" in ln for ln in sample):
        return "entity_synonyms"
    if all(_number(tok) for ln in sample for tok in ln.split()):
        return "number_matrix"
    bl = list(blocks(enumerate(text.split("\n"), 1)))[:51]
    if partial and len(bl) > 1:
        bl = bl[:-1]  # the last sniffed block may be cut
    if len(bl) >= 2 and sum(len(b) == 2 and "," in b[0] for _, b in bl) >= 0.9 * len(bl):  # a bad block or two is
        # the reader's to report, not a reason to call the file plain text
        return "toyhom_txt"
    if len(sample) >= 3 and len(bl) == 1 and _names(sample):
        return "entity_list"
    return "text"


def detect_format(path: str | Path, *, encoding: str | None = None) -> str:
    """The format name (a key of FORMATS) of one file; DataError naming the file when it cannot tell."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file" if not path.exists() else "not a regular file", str(path))
    ext = path.suffix.lower()
    if ext == ".tex":
        return "tex"
    text = sniff_text(path, encoding)
    partial = path.stat().st_size > SNIFF_BYTES
    try:
        if ext == ".csv":
            fmt = _csv_format(text)
            what = "CSV columns " + text.splitlines()[0][:120]
        elif text.lstrip("\ufeff").lstrip()[:1] in ("[", "{"):
            fmt = _json_format(text, partial)
            first, _ = _first_json(text, partial)
            what = ("first record's fields: " + ", ".join(map(str, first))[:160]) if isinstance(first, dict) \
                else f"first record is a {type(first).__name__}"
        else:
            fmt, what = _text_format(text, partial), ""
    except DataError as e:
        raise DataError(e.reason, str(path), e.where) from None
    if fmt is None:
        raise DataError(f"unknown format ({what}); pass --format (see `zhongjing data convert --list-formats`)", str(path))
    return fmt
