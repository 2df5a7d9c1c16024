"""Disease-centred knowledge graph records from xywy.com crawls.

Two layouts of the same facts: the re-crawl's nested records (`{"0": {"gaishu_info": {...},
"symptom_data": {...}, ...}}`, format `kg_xywy`) and the original flat JSON lines
(`{"name", "symptom", "acompany", "cure_department", "common_drug", "recommand_drug", ...}`,
format `kg_xywy_flat`). Both normalise to one dict (see `KG_FIELDS`) that the builder uses to check
doctor turns against, and render into plain Chinese sentences for pre-training.
"""

from __future__ import annotations

from typing import Any, Iterator

from zhongjing.data.readers.base import Source, convert, json_records, register
from zhongjing.data.schema import Document
from zhongjing.errors import DataError

LIST_FIELDS = ("departments", "symptoms", "drugs", "recommended_drugs", "common_drugs", "checks", "complications",
               "treatments", "good_food", "avoid_food", "recipes")
TEXT_FIELDS = ("name", "department", "desc", "cause", "prevent", "nursing", "symptom_text", "diet_text", "cure_time",
               "cure_rate", "susceptible", "transmission", "incidence", "insurance", "cost")
KG_FIELDS = TEXT_FIELDS + LIST_FIELDS


def _list(value: Any, key: str) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise DataError(f"field {key!r} must be a list, got {type(value).__name__}")
    return [str(v).strip() for v in value if str(v).strip()]


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v).strip() for v in value if str(v).strip())
    return "" if value is None else str(value).strip()


def _finish(rec: dict) -> dict:
    if not rec["name"]:
        raise DataError("record has no disease name")
    rec["department"] = rec["departments"][0] if rec["departments"] else ""
    rec["drugs"] = list(dict.fromkeys(rec["common_drugs"] + rec["recommended_drugs"]))
    return rec


def from_nested(obj: Any) -> dict:
    """The re-crawl layout (gaishu_info / symptom_data / food_info / ...)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("gaishu_info"), dict):
        raise DataError("missing object 'gaishu_info'")
    g, sym, food = obj["gaishu_info"], obj.get("symptom_data") or {}, obj.get("food_info") or {}
    if not isinstance(sym, dict) or not isinstance(food, dict):
        raise DataError("'symptom_data' and 'food_info' must be objects")
    return _finish({
        "name": _text(g.get("name")), "desc": _text(g.get("desc")), "cause": _text(obj.get("cause_info")),
        "prevent": _text(obj.get("prevent_info")), "nursing": _text(obj.get("nursing_info")),
        "symptom_text": _text(sym.get("symptom_detail")),
        "diet_text": "\n".join(t for t in (_text(food.get("good_diet_text")), _text(food.get("avoid_diet_text"))) if t),
        "cure_time": _text(g.get("treat_cycle")), "cure_rate": _text(g.get("cure_prob")),
        "susceptible": _text(g.get("susceptible_people")), "transmission": _text(g.get("transmission_way")),
        "incidence": _text(g.get("disease_ratio")), "insurance": _text(g.get("medical_insurance")),
        "cost": _text(g.get("treat_cost")),
        "departments": _list(g.get("belongs_to_department"), "belongs_to_department"),
        "symptoms": _list(sym.get("symptoms"), "symptoms"), "common_drugs": _list(g.get("common_drug"), "common_drug"),
        "recommended_drugs": [], "checks": _list(obj.get("inspect_info"), "inspect_info"),
        "complications": _list(g.get("has_complication"), "has_complication"),
        "treatments": _list(g.get("treat_way"), "treat_way"), "good_food": _list(food.get("good_food"), "good_food"),
        "avoid_food": _list(food.get("avoid_food"), "avoid_food"),
        "recipes": _list(food.get("recommand_recipes"), "recommand_recipes"),
    })


def from_flat(obj: Any) -> dict:
    """The original QASystemOnMedicalKG `medical.json` layout (one disease per line)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise DataError("missing field 'name'")
    return _finish({
        "name": obj["name"].strip(), "desc": _text(obj.get("desc")), "cause": _text(obj.get("cause")),
        "prevent": _text(obj.get("prevent")), "nursing": "", "symptom_text": "", "diet_text": "",
        "cure_time": _text(obj.get("cure_lasttime")), "cure_rate": _text(obj.get("cured_prob")),
        "susceptible": _text(obj.get("easy_get")), "transmission": _text(obj.get("get_way")),
        "incidence": _text(obj.get("get_prob")), "insurance": _text(obj.get("yibao_status")),
        "cost": _text(obj.get("cost_money")),
        "departments": _list(obj.get("cure_department"), "cure_department"),
        "symptoms": _list(obj.get("symptom"), "symptom"), "common_drugs": _list(obj.get("common_drug"), "common_drug"),
        "recommended_drugs": _list(obj.get("recommand_drug"), "recommand_drug"),
        "checks": _list(obj.get("check"), "check"), "complications": _list(obj.get("acompany"), "acompany"),
        "treatments": _list(obj.get("cure_way"), "cure_way"), "good_food": _list(obj.get("do_eat"), "do_eat"),
        "avoid_food": _list(obj.get("not_eat"), "not_eat"), "recipes": _list(obj.get("recommand_eat"), "recommand_eat"),
    })


NORMALISE = {"kg_xywy": from_nested, "kg_xywy_flat": from_flat}


def kg_records(src: Source) -> Iterator[dict | DataError]:
    """Normalised disease dicts of one KG file (bad records as located DataErrors)."""
    fn = NORMALISE[src.format]
    return convert(json_records(src), src, lambda obj, raw, src: fn(obj))


def _items(xs: list[str], limit: int = 12) -> str:
    return "、".join(xs[:limit]) + ("等" if len(xs) > limit else "")


def render(rec: dict) -> str:
    """One disease's facts as plain sentences, then its long descriptions (pre-training text)."""
    n = rec["name"]
    facts = []
    if rec["departments"]:
        facts.append(f"{n}一般在{_items(rec['departments'])}就诊。")
    if rec["symptoms"]:
        facts.append(f"{n}的常见症状有{_items(rec['symptoms'])}。")
    if rec["checks"]:
        facts.append(f"诊断{n}常做的检查有{_items(rec['checks'])}。")
    if rec["complications"]:
        facts.append(f"{n}可能并发{_items(rec['complications'])}。")
    if rec["treatments"]:
        facts.append(f"{n}的治疗方法有{_items(rec['treatments'])}。")
    if rec["common_drugs"] or rec["recommended_drugs"]:
        facts.append(f"治疗{n}常用的药物有{_items(rec['drugs'])}，具体用药须遵医嘱。")
    for label, key in (("易感人群", "susceptible"), ("传播途径", "transmission"), ("治疗周期", "cure_time"),
                       ("治愈率", "cure_rate")):
        if rec[key]:
            facts.append(f"{n}的{label}：{rec[key]}。")
    if rec["good_food"]:
        facts.append(f"{n}患者宜吃{_items(rec['good_food'])}。")
    if rec["avoid_food"]:
        facts.append(f"{n}患者忌吃{_items(rec['avoid_food'])}。")
    parts = [n, rec["desc"], "".join(facts)]
    for label, key in (("病因", "cause"), ("症状", "symptom_text"), ("预防", "prevent"), ("护理", "nursing"),
                       ("饮食", "diet_text")):
        if rec[key]:
            parts.append(f"{n}的{label}：\n{rec[key]}")
    return "\n\n".join(p for p in parts if p)


def _kg_reader(src: Source) -> Iterator[Any]:
    for rec in kg_records(src):
        if isinstance(rec, DataError):
            yield rec
        else:
            yield Document(render(rec), {"source": src.format, "name": rec["name"], "department": rec["department"]})


register("kg_xywy", "kg", "xywy disease KG, nested records {\"0\": {gaishu_info, symptom_data, ...}} → one Document per disease")(_kg_reader)
register("kg_xywy_flat", "kg", "xywy disease KG, flat JSON lines {name, symptom, acompany, cure_department, ...}")(_kg_reader)
