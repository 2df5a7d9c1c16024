"""Side files that ship next to the datasets but hold no dialogue or text to train on: entity
dictionaries (one name per line), synonym tables, DXY user-goal and symptom-statistics files,
number matrices. They are recognised so that a directory read skips them with a note and a
single-file read says what they are instead of guessing a format; `load_entity_list` gives the
names to whoever needs them (the builder's knowledge checks)."""

from __future__ import annotations

import json
from typing import Any, Iterator

from zhongjing.data.readers.base import Source, register
from zhongjing.errors import DataError

AUX_WHAT = {
    "entity_list": "an entity dictionary (one name per line)",
    "entity_synonyms": "a synonym table (name<TAB>synonym/synonym/…)",
    "dxy_goals": "DXY user goals (symptom slots only, no dialogue text)",
    "dxy_kb": "DXY disease–symptom statistics",
    "number_matrix": "a matrix of numbers",
}


def _lines(src: Source) -> list[str]:
    return [ln.strip() for ln in src.text.lstrip("\ufeff").splitlines() if ln.strip()]


def count_entries(src: Source) -> int:
    """How many entries an aux file holds (lines, goals or diseases) — for `data stats`."""
    if src.format in ("entity_list", "entity_synonyms", "number_matrix"):
        return len(_lines(src))
    try:
        obj = json.loads(src.text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", src.name, f"line {e.lineno}") from None
    if src.format == "dxy_goals" and isinstance(obj, dict):
        found = obj.get("all")
        return len(found) if isinstance(found, list) else sum(len(vs) for vs in obj.values() if isinstance(vs, list))
    if not isinstance(obj, (dict, list)):
        raise DataError(f"expected {AUX_WHAT[src.format]} (a JSON object or list), got {type(obj).__name__}", src.name)
    return len(obj)


def load_entity_list(src: Source) -> list[str]:
    """Names of an entity dictionary; for a synonym table, each name followed by its synonyms."""
    out: list[str] = []
    for ln in _lines(src):
        name, _, syn = ln.partition("\t")
        out += [name.strip()] + [s.strip() for s in syn.split("/") if s.strip()]
    return list(dict.fromkeys(out))


def no_units(fmt: str, path: str, forced: bool = False) -> DataError:
    """The error for a side file asked for its units: it holds none. `forced`: the user named the format, so the
    file was not recognised as one, only read as one."""
    what = AUX_WHAT[fmt]
    if forced:
        return DataError(f"format {fmt!r} is a side file ({what}) with nothing to convert; leave --format out to "
                         "detect the file's format, or name a format of dialogues, documents, rankings or exams", path)
    return DataError(f"this is {what}, not dialogues, documents, rankings or exam questions: nothing to convert", path)


def _no_units(src: Source) -> Iterator[Any]:
    raise no_units(src.format, src.name)
    yield  # pragma: no cover  (makes this a generator like the other readers)


for _name, _what in AUX_WHAT.items():
    register(_name, "aux", f"recognised side file: {_what}; no units")(_no_units)
