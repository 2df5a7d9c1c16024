"""The hand-written knowledge table behind the demo data: conditions, phrase bank, hand-made items.

The sources live in `zhongjing/demo/source/` as YAML (one file per department group) so a medical
reviewer can read and correct them without touching code. Loading validates every field and names
the file and condition on error, because a typo in a table should never silently thin the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zhongjing.errors import DataError

SOURCE_DIR = Path(__file__).resolve().parent / "source"

# The 14 departments of the paper's CMtMedQA statistics (Figure 3), as the labels appear in its data.
DEPARTMENTS = (
    "内科", "外科", "妇产科", "儿科", "五官科", "皮肤科", "皮肤性病科",
    "肿瘤科", "男科", "中医科", "心理科", "整形美容", "家居健康", "其他",
)
SCENARIOS = ("疾病诊断", "用药咨询", "健康咨询", "医学知识", "检查解读", "饮食调理", "康复护理", "心理疏导", "急症识别", "孕产咨询")
PATIENTS = ("self", "child", "elder")
LEVELS = ("info", "abnormal", "urgent")  # how a doctor must react to an answer (see dialogues.py)


@dataclass(frozen=True)
class Answer:
    text: str
    note: str | None = None   # what the doctor says about this answer
    level: str = "info"       # info | abnormal (narrow the reasoning) | urgent (send to hospital)


@dataclass(frozen=True)
class Ask:
    questions: tuple[str, ...]
    answers: tuple[Answer, ...]
    slot: str | None = None   # global slot name; age-like slots get answers from the persona
    sex: str = ""             # ask only patients of this sex (e.g. last menstrual period)


@dataclass(frozen=True)
class Followup:
    questions: tuple[str, ...]
    answer: str


@dataclass
class Condition:
    name: str
    short: str
    dept: str
    sub: str
    course: str
    scenario: str
    overview: str
    people: str
    cause: str
    symptoms: list[str]
    complications: list[str]
    complaints: list[str]
    ask: list[Ask]
    think: list[str]
    advice: list[str]
    drugs: list[str]
    checks: list[str]
    flags: list[str]
    donts: list[str]
    followups: list[Followup]
    prevent: list[str]
    good_food: list[str]
    avoid_food: list[str]
    course_text: str
    treat: list[str]
    cycle: str
    contagious: str = "本病没有传染性。"
    drug_note: str = ""
    who: str = "self"
    kind: str = "disease"     # "topic" for non-disease entries (a vaccine, falls, weight loss): no "考虑{short}" wording
    sex: str = ""             # "男" / "女" when the condition concerns one sex only
    ages: tuple[int, int] = (18, 65)  # years; months when who == "child"
    insurance: str = "否"
    source: str = field(default="", compare=False)


_REQUIRED_TEXT = ("name", "short", "dept", "sub", "overview", "people", "cause", "course_text", "cycle")
_REQUIRED_LISTS = ("symptoms", "complaints", "ask", "think", "advice", "checks", "flags", "prevent",
                   "good_food", "avoid_food", "treat")
_OPTIONAL_LISTS = ("complications", "drugs", "donts", "followups")


def _answer(raw: Any, default_level: str, where: str) -> Answer:
    if isinstance(raw, str):
        return Answer(raw)
    if isinstance(raw, list) and len(raw) in (2, 3) and all(isinstance(x, str) for x in raw):
        level = raw[2] if len(raw) == 3 else default_level
        if level not in LEVELS:
            raise DataError(f"{where}: answer level {level!r} not in {LEVELS}")
        return Answer(raw[0], raw[1], level)
    raise DataError(f"{where}: an answer is a string or [answer, doctor's note, level?], got {raw!r}")


def _strings(raw: Any, where: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise DataError(f"{where}: expected a non-empty string or list of strings, got {raw!r}")
    return tuple(items)


def load_phrases(path: Path | None = None) -> dict:
    path = path or SOURCE_DIR / "phrases.yaml"
    with open(path, encoding="utf-8") as f:
        phrases = yaml.safe_load(f)
    for name, slot in phrases["slots"].items():
        where = f"{path.name}: slot {name!r}"
        slot["q"] = _strings(slot["q"], where + " q")
        if "a" in slot:
            slot["a"] = tuple(_answer(a, "info", where) for a in slot["a"])
    return phrases


def _ask(raw: Any, slots: dict, where: str) -> Ask:
    if isinstance(raw, str):
        if raw not in slots:
            raise DataError(f"{where}: unknown slot {raw!r} (known: {', '.join(slots)})")
        return Ask(slots[raw]["q"], slots[raw].get("a", ()), slot=raw)
    if not isinstance(raw, dict) or not {"q", "a"} <= set(raw) <= {"q", "a", "sex"}:
        raise DataError(f"{where}: an ask item is a slot name or {{q, a, sex?}}, got {raw!r}")
    answers = raw["a"] if isinstance(raw["a"], list) else [raw["a"]]
    return Ask(_strings(raw["q"], where), tuple(_answer(a, "abnormal", where) for a in answers), sex=raw.get("sex", ""))


def _condition(raw: dict, slots: dict, source: str) -> Condition:
    name = raw.get("name", "?") if isinstance(raw, dict) else "?"
    where = f"{source}: condition {name!r}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a mapping")
    known = set(Condition.__dataclass_fields__) - {"source"}
    if unknown := set(raw) - known:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}")
    for key in _REQUIRED_TEXT:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise DataError(f"{where}: field {key!r} must be a non-empty string")
    for key in _REQUIRED_LISTS:
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise DataError(f"{where}: field {key!r} must be a non-empty list")
    for key in _OPTIONAL_LISTS:
        if not isinstance(raw.get(key, []), list):
            raise DataError(f"{where}: field {key!r} must be a list")
    if raw["dept"] not in DEPARTMENTS:
        raise DataError(f"{where}: department {raw['dept']!r} is not one of the 14: {', '.join(DEPARTMENTS)}")
    if raw.get("scenario", "疾病诊断") not in SCENARIOS:
        raise DataError(f"{where}: scenario {raw['scenario']!r} not in {SCENARIOS}")
    if raw.get("who", "self") not in PATIENTS or raw.get("course") not in ("acute", "chronic"):
        raise DataError(f"{where}: 'who' must be one of {PATIENTS} and 'course' acute|chronic")
    if raw.get("kind", "disease") not in ("disease", "topic"):
        raise DataError(f"{where}: 'kind' must be disease or topic")
    d = dict(raw)
    d["ask"] = [_ask(a, slots, f"{where} ask {i}") for i, a in enumerate(raw["ask"])]
    d["followups"] = [
        Followup(_strings(f.get("q"), f"{where} followup {i}"), _strings(f.get("a"), f"{where} followup {i}")[0])
        for i, f in enumerate(raw.get("followups", []))
    ]
    d.setdefault("scenario", "疾病诊断")
    d["ages"] = tuple(raw.get("ages", (6, 96) if raw.get("who") == "child" else (65, 88) if raw.get("who") == "elder" else (18, 65)))
    for key in (*_REQUIRED_LISTS, *_OPTIONAL_LISTS):
        if key not in ("ask", "followups"):
            d[key] = [str(x) for x in raw.get(key, [])]
    return Condition(**d, source=source)


def load_conditions(phrases: dict | None = None, directory: Path | None = None) -> list[Condition]:
    phrases = phrases or load_phrases()
    directory = directory or SOURCE_DIR / "conditions"
    out: list[Condition] = []
    for path in sorted(directory.glob("*.yaml")):
        with open(path, encoding="utf-8") as f:
            items = yaml.safe_load(f) or []
        if not isinstance(items, list):
            raise DataError("expected a list of conditions", str(path))
        out += [_condition(raw, phrases["slots"], path.name) for raw in items]
    names = [c.name for c in out]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise DataError(f"condition(s) defined twice: {dupes}", str(directory))
    return out


def load_yaml(name: str) -> Any:
    """A hand-written source file (safety.yaml, exam.yaml, ...)."""
    with open(SOURCE_DIR / name, encoding="utf-8") as f:
        return yaml.safe_load(f)
