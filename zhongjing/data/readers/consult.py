"""Real consultation sources: Toyhom (CSV and TXT, GB18030), COVID-Dialogue (raw TXT and processed
JSON) and DXY (python-literal lines). Here one speaker's message is often split over several
lines or utterances, so consecutive turns of the same role are merged rather than rejected."""

from __future__ import annotations

import ast
import re
from typing import Any, Iterable, Iterator

from zhongjing.data.readers.base import (
    Raw, Source, clean_meta, convert_records, convert_rows, join_parts, located, make_dialogue, record_id, register,
)
from zhongjing.data.schema import Dialogue
from zhongjing.errors import DataError

ROLE_PREFIX = {"病人": "user", "患者": "user", "医生": "assistant"}


def _toyhom_question(title: str, ask: str) -> str:
    """The patient's turn: the title is a one-line summary, `ask` the full question ('无' when empty)."""
    title, ask = title.strip(), ask.strip()
    if ask in ("", "无"):
        return title
    if title in ask:
        return ask
    return join_parts(title, ask)


def _department(src: Source) -> str | None:
    """Toyhom ships one TXT per department, named after it (内科.txt)."""
    return src.stem if src.stem.endswith("科") else None


def _toyhom_row(row: dict, raw: Raw, src: Source) -> Dialogue:
    meta = clean_meta(source="toyhom_csv", department=row["department"].strip())
    return make_dialogue([("user", _toyhom_question(row["title"], row["ask"])), ("assistant", row["answer"])],
                         id=f"{src.stem}:{raw.index}", meta=meta)


@register("toyhom_csv", "dialogue", "Toyhom CSV (GB18030): department, title, ask, answer")
def _toyhom_csv(src: Source) -> Iterator[Any]:
    return convert_rows(src, ("department", "title", "ask", "answer"), _toyhom_row)


def blocks(lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, list[str]]]:
    """(first line number, stripped lines) of each run of non-blank lines."""
    start, run = 0, []
    for n, line in lines:
        if line.strip():
            start = start or n
            run.append(line.strip())
        elif run:
            yield start, run
            start, run = 0, []
    if run:
        yield start, run


@register("toyhom_txt", "dialogue", "Toyhom TXT (GB18030): blocks of 'title,ask' + answer lines, blank-line separated")
def _toyhom_txt(src: Source) -> Iterator[Any]:
    for index, (n, lines) in enumerate(blocks(src.lines())):
        if len(lines) != 2:
            yield src.error(f"block has {len(lines)} line(s), expected 2 ('title,ask' then the answer)", f"line {n}", lines[0])
            continue
        title, _, ask = lines[0].partition(",")
        meta = clean_meta(source="toyhom_txt", department=_department(src))
        try:
            yield make_dialogue([("user", _toyhom_question(title, ask) if ask else title), ("assistant", lines[1])],
                                id=f"{src.stem}:{index}", meta=meta)
        except DataError as e:
            yield located(e, src.path, f"line {n}", lines[0])


# ---------------------------------------------------------------------------- COVID-Dialogue

SECTIONS = {"Description": "description", "Dialogue": "dialogue", "Diagnosis and suggestions": "diagnosis",
            "Doctor faculty": "faculty"}
_MARKER = re.compile(r"^(病人|患者|医生)[：:]\s*(.*)$")


def _covid_block(src: Source, cid: str, lines: list[tuple[int, str]]) -> Dialogue:
    turns: list[tuple[str, str]] = []
    diagnosis: list[str] = []
    section, role, url, department, notes = None, None, None, None, 0
    for n, line in lines:
        if line in SECTIONS:
            section, role = SECTIONS[line], None
            continue
        if section is None:
            if line.startswith("http"):
                url = line
                continue
            raise DataError("text before the Description/Dialogue sections", None, f"line {n}")
        if section == "description":  # the consultation form the patient filled in: their first turn
            turns.append(("user", line))
        elif section == "diagnosis":  # the doctor's written summary, kept apart from the conversation
            diagnosis.append(line)
        elif section == "faculty":  # '<hospital>  <department>'
            parts = re.split(r"\s{2,}", line)
            department = department or (parts[1] if len(parts) > 1 else None)
        else:
            m = _MARKER.match(line)
            if m:
                role, line = ROLE_PREFIX[m.group(1)], m.group(2)
                if not line:
                    continue
            if role is None:  # site notes before anyone speaks ('预约医生：…'): not part of the conversation
                notes += 1
                continue
            turns.append((role, line))
    meta = clean_meta(source="covid_txt", department=department, url=url, diagnosis="\n".join(diagnosis),
                      site_notes_dropped=notes)
    return make_dialogue(turns, id=cid, meta=meta, merge=True)


@register("covid_txt", "dialogue", "COVID-Dialogue raw TXT: id=N, URL, Description, Dialogue (医生：/病人：), Diagnosis")
def _covid_txt(src: Source) -> Iterator[Any]:
    cid, start, lines = None, 0, []
    text = src.text.lstrip("\ufeff")
    for n, line in enumerate(text.splitlines() + ["id=<end>"], 1):
        line = line.strip()
        m = re.fullmatch(r"id=(\S+)", line)
        if m:
            if cid is not None:
                try:
                    yield _covid_block(src, cid, lines)
                except DataError as e:
                    yield located(e, src.path, f"line {start}", f"id={cid}")
            elif lines:
                yield src.error("text before the first 'id=' line", f"line {lines[0][0]}", lines[0][1])
            cid, start, lines = m.group(1), n, []
        elif line:
            lines.append((n, line))


def covid_turns(utterances: Any) -> list[tuple[str, str]]:
    if not isinstance(utterances, list) or not utterances:
        raise DataError("dialogue must be a non-empty list of '病人：…'/'医生：…' utterances")
    turns = []
    for i, u in enumerate(utterances):
        if not isinstance(u, str):
            raise DataError(f"utterance {i} must be a string, got {type(u).__name__}")
        m = _MARKER.match(u.strip())
        if not m:
            raise DataError(f"utterance {i} does not start with 病人：/医生：")
        turns.append((ROLE_PREFIX[m.group(1)], m.group(2)))
    return turns


def _covid_json(obj: Any, raw: Raw, src: Source) -> Dialogue:
    if isinstance(obj, dict):  # {"Turn", "Id", "Dialogue"}; split files hold bare lists
        if "Dialogue" not in obj:
            raise DataError(f"missing field 'Dialogue' (has: {', '.join(obj)})")
        return make_dialogue(covid_turns(obj["Dialogue"]), id=record_id(src, raw, obj.get("Id")),
                             meta={"source": "covid_json"}, merge=True)
    return make_dialogue(covid_turns(obj), id=record_id(src, raw), meta={"source": "covid_json"}, merge=True)


register("covid_json", "dialogue", "COVID-Dialogue JSON: [{Turn, Id, Dialogue: ['病人：…', '医生：…']}] or [['病人：…', …]]")(
    lambda src: convert_records(src, _covid_json))


# ---------------------------------------------------------------------------- DXY

def _dxy_record(rec: Any, split: str) -> Dialogue:
    if not isinstance(rec, dict) or not isinstance(rec.get("dialog"), list):
        raise DataError("record needs a 'dialog' list")
    # self-report first, then doctor question / patient answer alternating, the diagnosis last
    turns = [("user" if i % 2 == 0 else "assistant", u) for i, u in enumerate(rec["dialog"])]
    goal = rec.get("goal") if isinstance(rec.get("goal"), dict) else {}
    meta = clean_meta(source="dxy", disease=rec.get("disease_tag"), split=split,
                      explicit_symptoms=goal.get("explicit_inform_slots"),
                      implicit_symptoms=goal.get("implicit_inform_slots"))
    return make_dialogue(turns, id=str(rec.get("consult_id") or ""), meta=meta)


@register("dxy", "dialogue", "DXY dialogues: lines 'train@[{consult_id, self_repo, dialog, disease_tag, goal}, …]' (python literals)")
def _dxy(src: Source) -> Iterator[Any]:
    index = 0
    for n, line in enumerate(src.text.lstrip("\ufeff").splitlines(), 1):
        if not line.strip():
            continue
        split, sep, body = line.partition("@")
        if not sep or not split.strip().isidentifier():
            raise DataError("expected '<split>@[...]'", src.name, f"line {n}")
        try:
            records = ast.literal_eval(body.strip())
        except (ValueError, SyntaxError) as e:
            raise DataError(f"not a python literal list ({type(e).__name__}: {getattr(e, 'msg', e)})",
                            src.name, f"line {n}") from None
        if not isinstance(records, list):
            raise DataError("expected a list after '@'", src.name, f"line {n}")
        for i, rec in enumerate(records):
            where = f"line {n} record {i + 1}"
            try:
                d = _dxy_record(rec, split.strip())
                d.id = d.id or f"{src.stem}:{index}"
                yield d
            except DataError as e:
                yield located(e, src.path, where, rec)
            index += 1
