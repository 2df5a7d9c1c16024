"""The packaged demo data: every file parses with our readers and schema, counts and the 7:1 mix hold,
the doctor asks before advising, departments cover the paper's 14, the raw manifest matches what is
really in the raw files (recounted independently, e.g. ID numbers by their check digit), regeneration
is byte-identical, and no sentence was taken from the shared CMtMedQA / Huatuo test sets."""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from zhongjing.data.readers import detect_format, read_dialogues, read_documents, read_exam
from zhongjing.data.schema import Dialogue
from zhongjing.data.text import asks_question
from zhongjing.demo import DEMO_DIR, FILES, demo_path
from zhongjing.demo.make_demo import differences, generate, write
from zhongjing.errors import DataError, ZhongjingError

# Figure 3 of the paper (CMtMedQA department statistics), as the labels appear in its data.
PAPER_DEPARTMENTS = {"内科", "外科", "妇产科", "儿科", "五官科", "皮肤科", "皮肤性病科", "肿瘤科", "男科", "中医科",
                     "心理科", "整形美容", "家居健康", "其他"}
CJK = re.compile(r"[\u4e00-\u9fff]")


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in demo_path(name).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dialogues() -> list[Dialogue]:
    return [Dialogue.from_dict(d) for d in _jsonl("dialogues")]


# ---- files, schema, readers ------------------------------------------------------------------
def test_every_named_file_exists_and_unknown_names_fail():
    for name in FILES:
        assert demo_path(name).exists(), name
    with pytest.raises(ZhongjingError, match="unknown demo file"):
        demo_path("no-such-file")
    with pytest.raises(ZhongjingError):
        demo_path("../../pyproject.toml")  # stays inside the demo folder


@pytest.mark.parametrize("name,fmt", [("dialogues", "dialogue"), ("single_turn", "dialogue"), ("safety", "dialogue"),
                                      ("self_cognition", "dialogue"), ("exam", "exam"), ("kg", "kg_xywy"),
                                      ("raw_covid", "covid_txt"), ("raw_cmtmedqa", "cmtmedqa"), ("raw_toyhom", "toyhom_csv")])
def test_readers_detect_each_file(name, fmt):
    assert detect_format(demo_path(name)) == fmt


def test_dialogue_files_parse_with_schema_and_readers():
    for name in ("dialogues", "single_turn", "safety", "self_cognition"):
        rows = _jsonl(name)
        units = [Dialogue.from_dict(r) for r in rows]
        assert [u.id for u in units] == [r["id"] for r in rows]
        assert len({u.id for u in units}) == len(units), f"{name}: duplicate ids"
        assert all(u.messages[-1].role == "assistant" and u.meta.get("source") == "zhongjing-demo" for u in units)
        assert len(list(read_dialogues(demo_path(name)))) == len(units)


def test_corpus_kg_and_exam_read_as_documents_and_exam_items():
    docs = list(read_documents(demo_path("corpus")))
    size = sum(p.stat().st_size for p in demo_path("corpus").glob("*.txt"))
    assert 300_000 <= size <= 600_000 and len(docs) >= 250
    kg = _jsonl("kg")
    assert len(list(read_documents(demo_path("kg")))) == len(kg)
    info = [r["gaishu_info"] for r in kg]
    assert all(i["name"] and i["belongs_to_department"][0] in PAPER_DEPARTMENTS and i["common_drug"] is not None for i in info)
    exam = list(read_exam(demo_path("exam")))
    assert len(exam) >= 60
    for item in exam:
        assert len(item.options) in (4, 5) and item.answer in item.options and item.subject
    assert len(Counter(item.answer for item in exam)) >= 4  # the right answer is not always in one place


def test_total_size_is_small():
    total = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 3 * 1024 * 1024


# ---- what the dialogues teach ----------------------------------------------------------------
def test_counts_and_the_seven_to_one_mix(dialogues):
    multi = [d for d in dialogues if d.is_multi_turn()]
    single = [d for d in dialogues if not d.is_multi_turn()]
    assert len(multi) == 400 and len(single) == 60
    assert len(single) * 7 >= len(multi)  # all multi-turn data fits a 7:1 mix
    assert {d.turns for d in multi} <= {2, 3, 4, 5} and {2, 3, 4, 5} <= {d.turns for d in multi}
    assert 5 <= sum(d.system is not None for d in dialogues) <= 30
    thanked = sum("谢" in d.messages[-2].content and "？" not in d.messages[-2].content for d in multi)
    assert 0.1 * len(multi) < thanked < 0.5 * len(multi)  # some end with thanks, most do not


def test_the_doctor_asks_before_advising(dialogues):
    drugs = {r["gaishu_info"]["name"]: r["gaishu_info"]["common_drug"] for r in _jsonl("kg")}
    advised_later = 0
    multi = [d for d in dialogues if d.is_multi_turn()]
    for d in multi:
        doctor = [m.content for m in d.messages if m.role == "assistant"]
        assert asks_question(doctor[0]), (d.id, doctor[0])
        named = drugs[d.meta["condition"]]
        assert not any(x in doctor[0] for x in named) and "就医" not in doctor[0], (d.id, doctor[0])
        advised_later += any(x in t for t in doctor[1:] for x in [*named, "就医", "医院", "急诊"])
    assert advised_later >= 0.95 * len(multi)
    # single-turn patients already say what a doctor would ask, so the answer advises directly
    single = [d for d in dialogues if not d.is_multi_turn()]
    assert sum(asks_question(d.messages[-1].content) for d in single) <= len(single) // 10


def test_departments_and_scenarios(dialogues):
    depts = Counter(d.meta["department"] for d in dialogues)
    assert set(depts) <= PAPER_DEPARTMENTS and len(depts) >= 10
    assert min(depts.values()) >= 10
    assert len({d.meta["scenario"] for d in dialogues}) >= 8
    assert len({d.meta["condition"] for d in dialogues}) >= 40


def test_dialogues_are_varied_not_one_template(dialogues):
    multi = [d for d in dialogues if d.is_multi_turn()]
    firsts = [next(m.content for m in d.messages if m.role == "assistant") for d in multi]
    assert len(set(firsts)) == len(firsts)
    openings = Counter(f[:6] for f in firsts)
    assert openings.most_common(1)[0][1] < 0.2 * len(firsts)
    texts = [" ".join(m.content for m in d.messages) for d in multi]
    assert len(set(texts)) == len(texts)


def test_safety_self_cognition_and_knowledge_sets():
    safety = _jsonl("safety")
    assert 35 <= len(safety) <= 60 and len({r["meta"]["category"] for r in safety}) >= 6
    harm = [r for r in safety if r["meta"]["category"] == "self_harm"]
    assert harm and all(("120" in r["messages"][1]["content"] or "急诊" in r["messages"][1]["content"]) for r in harm)
    selfc = _jsonl("self_cognition")
    assert 15 <= len(selfc) <= 30 and sum("仲景" in json.dumps(r, ensure_ascii=False) for r in selfc) >= 0.7 * len(selfc)
    assert sum("不是医生" in json.dumps(r, ensure_ascii=False) for r in selfc) >= 3
    qa = _jsonl("single_turn")
    assert len(qa) >= 60 and all(len(r["messages"]) == 2 for r in qa)
    assert {r["meta"]["condition"] for r in qa} >= {r["meta"]["condition"] for r in _jsonl("dialogues")}


# ---- the raw material and its manifest ------------------------------------------------------
def _id_ok(s: str) -> bool:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return "10X98765432"[sum(int(c) * w for c, w in zip(s[:17], weights)) % 11] == s[17]


def _raw_records() -> dict[str, dict]:
    """{file: {record key: text of the record}} parsed independently of the package."""
    out: dict[str, dict] = {}
    txt = demo_path("raw_covid").read_text(encoding="utf-8")
    out[FILES["raw_covid"]] = {int(m.group(1)): m.group(2) for m in re.finditer(r"(?ms)^id=(\d+)\n(.*?)(?=^id=|\Z)", txt)}
    rows = json.loads(demo_path("raw_cmtmedqa").read_text(encoding="utf-8"))
    out[FILES["raw_cmtmedqa"]] = {r["id"]: json.dumps({k: v for k, v in r.items() if k != "id"}, ensure_ascii=False) for r in rows}
    data = demo_path("raw_toyhom").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")  # really GB18030, as Toyhom ships it
    table = list(csv.reader(io.StringIO(data.decode("gb18030"))))
    assert table[0] == ["department", "title", "ask", "answer"]
    out[FILES["raw_toyhom"]] = {i: "\n".join(row) for i, row in enumerate(table[1:], 1)}
    return out


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(demo_path("manifest").read_text(encoding="utf-8"))


def test_manifest_files_and_totals(manifest):
    recs = _raw_records()
    assert {f: len(r) for f, r in recs.items()} == {f: v["records"] for f, v in manifest["files"].items()}
    assert sum(len(r) for r in recs.values()) == manifest["total_dialogues"] == 150
    assert not any(p.name.lower().endswith("manifest.json") for p in demo_path("raw").iterdir())


def test_planted_identifiers_are_really_there(manifest):
    recs = _raw_records()
    items, counts = manifest["identifiers"]["items"], manifest["identifiers"]["counts"]
    assert counts == dict(Counter(i["type"] for i in items)) and all(n >= 10 for n in counts.values())
    for i in items:
        key = i["record"]
        assert i["value"] in recs[i["file"]][key], i
    texts = "\n".join(t for r in recs.values() for t in r.values())
    ids = [m for m in re.findall(r"(?<![0-9])\d{17}[0-9X](?![0-9])", texts) if _id_ok(m)]
    assert len(ids) == counts["id_card"]
    assert len(re.findall(r"(?<![0-9])1[3-9]\d{9}(?![0-9])", texts)) == counts["mobile"]
    assert len(re.findall(r"[\w.]+@[\w-]+\.[\w.]+", texts)) == counts["email"]
    assert len(re.findall(r"(?:我叫|患者|姓名：)", texts)) >= counts["name"]


def test_planted_problems_match_the_files(manifest):
    recs = _raw_records()
    rows = {r["id"]: r for r in json.loads(demo_path("raw_cmtmedqa").read_text(encoding="utf-8"))}

    def body(f, key):  # a record without its own id/url line
        return re.sub(r"https://\S+", "", recs[f][key])

    exact, near = manifest["duplicates"]["exact"], manifest["duplicates"]["near"]
    assert len(exact) >= 5 and len(near) >= 5
    for d in exact:
        a, b = d["records"]
        assert body(d["file"], a) == body(d["file"], b), d
    for d in near:
        a, b = (body(d["file"], k) for k in d["records"])
        assert a != b and difflib.SequenceMatcher(None, a, b).ratio() > 0.9, d
    for e in manifest["empty_answers"]:
        if e["file"] == FILES["raw_cmtmedqa"]:
            assert rows[e["record"]]["output"] == ""
    for e in manifest["copy_paste_answers"]:
        if e["file"] == FILES["raw_cmtmedqa"]:
            assert rows[e["record"]]["output"] == rows[e["record"]]["instruction"]
    for e in manifest["non_chinese"]:  # only the format's own labels ("病情描述：", "医生：") are Chinese
        content = "\n".join(re.sub(r"^[\u4e00-\u9fff]{2,10}：\s*", "", line) for line in recs[e["file"]][e["record"]].splitlines())
        assert not CJK.search(content), (e, content)
    kg = {r["gaishu_info"]["name"]: r["gaishu_info"]["common_drug"] for r in _jsonl("kg")}
    assert len(manifest["kg_conflicts"]) >= 3
    known = {d for drugs in kg.values() for d in drugs}
    for k in manifest["kg_conflicts"]:  # a drug the KG knows (so a KG check can see it), but not for this condition
        text = recs[k["file"]][k["record"]]
        assert k["drug"] in text and k["condition"] in text, k
        assert k["drug"] in known and k["drug"] not in kg[k["condition"]], k


def test_department_labels_map_to_the_14(manifest):
    m = manifest["departments"]["map"]
    assert set(m.values()) <= PAPER_DEPARTMENTS
    raw_only = set(m) - PAPER_DEPARTMENTS
    assert {"消化内科", "小儿科"} <= raw_only and len(raw_only) >= 20
    for r in manifest["departments"]["records"]:
        if r["raw"] and r["department"]:
            assert m[r["raw"]] == r["department"], r


# ---- sources, determinism, originality -----------------------------------------------------
def test_regeneration_is_byte_identical(tmp_path):
    files = generate()
    assert files == generate()
    write(files, tmp_path)
    committed = {str(p.relative_to(DEMO_DIR)) for p in DEMO_DIR.rglob("*")
                 if p.is_file() and p.suffix in (".jsonl", ".json", ".txt", ".csv") and "source" not in p.parts}
    assert committed == set(files), "a generated file is missing or a stale one is left in zhongjing/demo"
    assert differences(files, DEMO_DIR) == [], "run: python -m zhongjing.demo.make_demo"
    assert differences(files, tmp_path) == []


def test_a_broken_source_names_file_and_field(tmp_path):
    from zhongjing.demo.facts import SOURCE_DIR, load_conditions

    src = (SOURCE_DIR / "conditions" / "surgery.yaml").read_text(encoding="utf-8")
    (tmp_path / "surgery.yaml").write_text(src.replace("  dept: 外科\n", "  dept: 骨科门诊\n", 1), encoding="utf-8")
    with pytest.raises(DataError, match=r"surgery\.yaml: condition '急性阑尾炎': department '骨科门诊'"):
        load_conditions(directory=tmp_path)
    (tmp_path / "surgery.yaml").write_text(src.replace("  short: 阑尾炎\n", "", 1), encoding="utf-8")
    with pytest.raises(DataError, match="field 'short'"):
        load_conditions(directory=tmp_path)


def _strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _strings(v)


@pytest.mark.shared
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")
def test_no_sentence_copied_from_the_shared_test_sets():
    shared = "\n".join(_strings(json.loads((SHARED_DATA / "cmtmedqa_test" / "CMtMedQA_test.shared.json").read_text(encoding="utf-8"))))
    shared += "\n" + "\n".join(_strings(json.loads((SHARED_DATA / "huatuo26m_test" / "huatuo26M_test.json").read_text(encoding="utf-8"))))
    sentences = set()
    for rel in generate():  # every generated file, read as committed
        data = (DEMO_DIR / rel).read_bytes()
        text = data.decode("gb18030" if rel.endswith(".csv") else "utf-8")
        if rel.endswith(".jsonl"):
            text = "\n".join(s for line in text.splitlines() for s in _strings(json.loads(line)))
        elif rel.endswith(".json"):
            text = "\n".join(_strings(json.loads(text)))
        sentences |= {s.strip() for s in re.split(r"[。！？!?；;\n]", text) if len(s.strip()) >= 20}
    assert len(sentences) > 3000
    copied = sorted(s for s in sentences if s in shared)
    assert copied == [], copied[:5]
