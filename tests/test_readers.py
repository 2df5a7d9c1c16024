"""Every dataset file in ../shared/data: detected format, exact record and doctor-turn counts
(checked against each SOURCE.md), content cross-checked against an independent parse of the raw
file, and convert → read-back round trips."""

from __future__ import annotations

import ast
import csv
import io
import json
import re
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from zhongjing.cli import main as cli
from zhongjing.data.readers import (
    FORMATS, ExamItem, count_aux, detect_format, list_files, load_entity_list, load_kg, read_dialogues,
    read_documents, read_exam, read_rankings, read_records,
)
from zhongjing.data.schema import Dialogue, Document, Ranking
from zhongjing.errors import DataError

pytestmark = [pytest.mark.shared,
              pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")]

# (file, format, records, doctor turns) — records/entries as stated in each SOURCE.md; turns
# computed independently (see the content tests below). None: not a dialogue file.
FILES = [
    ("bentsao_instruct/cmcoqa_question_sample.json", "prompts", 200, 0),
    ("bentsao_instruct/knowledge_tuning_data_sample.txt", "prompt_lines", 200, 0),
    ("bentsao_instruct/liver_cancer.json", "bentsao_multiturn", 1000, 2310),
    ("bentsao_instruct/llama_data.json", "alpaca", 8658, 8658),
    ("chatmed_consult_test/ChatMed-Consult_test.json", "chatmed_consult", 450, 450),
    ("cmmlu_medical/dev/anatomy.csv", "cmmlu", 5, None),
    ("cmmlu_medical/dev/clinical_knowledge.csv", "cmmlu", 5, None),
    ("cmmlu_medical/dev/college_medical_statistics.csv", "cmmlu", 5, None),
    ("cmmlu_medical/dev/college_medicine.csv", "cmmlu", 5, None),
    ("cmmlu_medical/dev/genetics.csv", "cmmlu", 5, None),
    ("cmmlu_medical/dev/nutrition.csv", "cmmlu", 5, None),
    ("cmmlu_medical/dev/professional_medicine.csv", "cmmlu", 5, None),
    ("cmmlu_medical/dev/traditional_chinese_medicine.csv", "cmmlu", 5, None),
    ("cmmlu_medical/dev/virology.csv", "cmmlu", 5, None),
    ("cmmlu_medical/test/anatomy.csv", "cmmlu", 148, None),
    ("cmmlu_medical/test/clinical_knowledge.csv", "cmmlu", 237, None),
    ("cmmlu_medical/test/college_medical_statistics.csv", "cmmlu", 106, None),
    ("cmmlu_medical/test/college_medicine.csv", "cmmlu", 273, None),
    ("cmmlu_medical/test/genetics.csv", "cmmlu", 176, None),
    ("cmmlu_medical/test/nutrition.csv", "cmmlu", 145, None),
    ("cmmlu_medical/test/professional_medicine.csv", "cmmlu", 375, None),
    ("cmmlu_medical/test/traditional_chinese_medicine.csv", "cmmlu", 185, None),
    ("cmmlu_medical/test/virology.csv", "cmmlu", 167, None),
    ("cmtmedqa_test/CMtMedQA_test.shared.json", "cmtmedqa", 686, 2825),
    ("cnmleqa_3k/CNMLEQA-3k.shared.json", "cnmleqa", 1949, None),
    ("covid_dialogue_zh/COVID-Dialogue-Dataset-Chinese.json", "covid_json", 1088, 4747),
    ("covid_dialogue_zh/COVID-Dialogue-Dataset-Chinese.txt", "covid_txt", 1393, 6607),
    ("covid_dialogue_zh/test_data.json", "covid_json", 109, 458),
    ("covid_dialogue_zh/train_data.json", "covid_json", 870, 3922),
    ("covid_dialogue_zh/validate_data.json", "covid_json", 109, 367),
    ("dxy_dialog/dxy_dialog_data_dialog_v2.txt", "dxy", 527, 1408),
    ("huatuo26m_test/huatuo26M_test.json", "huatuo", 6000, 6000),
    ("huatuogpt_eval/KUAKE-QIC_100.json", "prompts", 100, 0),
    ("huatuogpt_eval/Med-dialog_100.json", "huatuogpt_eval", 100, 100),
    ("medicalgpt_samples/dpo_zh_500.jsonl", "medicalgpt_pref", 500, None),
    ("medicalgpt_samples/grpo_sample.jsonl", "qa", 32, 32),
    ("medicalgpt_samples/medical_corpus.txt", "qa", 87, 87),
    ("medicalgpt_samples/medical_sft_1K_format.jsonl", "sharegpt", 1000, 1000),
    ("medicalgpt_samples/reward_medical_test.json", "reward_pairs", 100, None),
    ("medicalgpt_samples/seed_nurse_role.jsonl", "persona", 66, None),
    ("medicalgpt_samples/seed_patient_role.jsonl", "persona", 95, None),
    ("promptcblue_toy/dev.json", "promptcblue", 80, 80),
    ("promptcblue_toy/test.json", "promptcblue", 80, 0),  # the test split ships without targets
    ("promptcblue_toy/train.json", "promptcblue", 80, 80),
    ("qizhen_drug_eval/药品适应症评测数据集.csv", "qizhen_drug", 94, 94),
    ("toyhom_medical_dialogue/内科.txt", "toyhom_txt", 4048, 4048),
    ("toyhom_medical_dialogue/样例_内科5000-6000.csv", "toyhom_csv", 7644, 7644),
] + [(f"medical_kg_xywy/tonystark_records/medical_{i}.json", "kg_xywy", 292 if i == 17 else 500, None) for i in range(18)]

# side files: recognised, no units; entries as stated in SOURCE.md
SIDE_FILES = [
    ("dxy_dialog/all_norm_symptoms.txt", "entity_list", 41),
    ("dxy_dialog/diseases_dxy.txt", "entity_list", 5),
    ("dxy_dialog/slot_set_dxy.txt", "entity_list", 47),
    ("dxy_dialog/symptoms_dxy.txt", "entity_list", 41),
    ("dxy_dialog/norm_symptom_list.txt", "entity_synonyms", 41),
    ("dxy_dialog/dise_sym_num_dict_dxy.txt", "dxy_kb", 5),
    ("dxy_dialog/req_dise_sym_dict_dxy.txt", "dxy_kb", 5),
    ("dxy_dialog/dise_sym_pro_dxy.txt", "number_matrix", 5),
    ("dxy_dialog/sym_dise_pro_dxy.txt", "number_matrix", 41),
    ("dxy_dialog/goal_dict_original_dxy.txt", "dxy_goals", 527),
    ("dxy_dialog/train_goal_dict_dxy.txt", "dxy_goals", 423),
    ("dxy_dialog/test_goal_dict_dxy.txt", "dxy_goals", 104),
    ("medical_kg_xywy/liuhuanyong_dict/check.txt", "entity_list", 3353),
    ("medical_kg_xywy/liuhuanyong_dict/deny.txt", "entity_list", 37),
    ("medical_kg_xywy/liuhuanyong_dict/department.txt", "entity_list", 54),
    ("medical_kg_xywy/liuhuanyong_dict/disease.txt", "entity_list", 8807),
    ("medical_kg_xywy/liuhuanyong_dict/drug.txt", "entity_list", 3828),
    ("medical_kg_xywy/liuhuanyong_dict/food.txt", "entity_list", 4870),
    ("medical_kg_xywy/liuhuanyong_dict/producer.txt", "entity_list", 17201),
    ("medical_kg_xywy/liuhuanyong_dict/symptom.txt", "entity_list", 5998),
]

# one Document per chapter introduction and per section (bibliographies dropped); 107 files
TEX = {
    "免疫学": {"chap01": 6, "chap02": 5, "chap03": 5, "chap04": 5, "chap05": 5, "chap06": 5, "chap07": 5, "chap08": 4,
            "chap09": 7, "chap10": 5, "chap11": 3, "chap12": 3, "main": 58},
    "内科疾病鉴别诊断学": {
        "chap01": 4, "chap02": 10, "chap03": 9, "chap04": 1, "chap05": 9, "chap06": 14, "chap07": 3, "chap08": 3,
        "chap09": 5, "chap10": 8, "chap11": 6, "chap12": 9, "chap13": 3, "chap14": 6, "chap15": 6, "chap16": 5,
        "chap17": 13, "chap18": 5, "chap19": 7, "chap20": 5, "chap21": 7, "chap22": 5, "chap23": 7, "chap24": 5,
        "chap25": 8, "chap26": 14, "chap27": 8, "chap28": 10, "chap29": 13, "chap30": 5, "chap31": 6, "chap32": 6,
        "chap33": 6, "chap34": 5, "chap35": 3, "chap36": 6, "chap37": 7, "chap38": 7, "chap39": 4, "chap40": 6,
        "chap41": 4, "chap42": 5, "chap43": 8, "chap44": 9, "chap45": 6, "chap46": 8, "chap47": 8, "chap48": 8,
        "chap49": 7, "chap50": 8, "chap51": 7, "main": 347},
    "病理学": {"appendix": 2, "chap01": 4, "chap02": 6, "chap03": 7, "chap04": 7, "chap05": 12, "chap06": 9, "chap07": 7,
            "chap08": 9, "chap09": 4, "chap10": 5, "chap11": 7, "chap12": 4, "chap13": 6, "chap14": 6, "chap15": 4,
            "intro": 1, "main": 100},
    "精神病学": {"appendix": 3, "chap01": 4, "chap02": 2, "chap03": 12, "chap04": 6, "chap05": 2, "chap06": 6, "chap07": 4,
             "chap08": 9, "chap09": 3, "chap10": 1, "chap11": 7, "chap12": 3, "chap13": 4, "chap14": 2, "chap15": 6,
             "chap16": 4, "chap17": 4, "chap18": 8, "chap19": 8, "chap20": 4, "chap21": 5, "chap22": 2, "main": 109},
}
TEX_FILES = [(book, stem, n) for book, d in TEX.items() for stem, n in d.items()]


def _tex_path(book: str, stem: str) -> Path:
    return SHARED_DATA / "medical_books_tex" / book / ("main.tex" if stem == "main" else f"content/{stem}.tex")


def test_every_shared_file_is_listed():
    """A new file in shared/data must get a row here (and a reader) before the suite passes."""
    on_disk = {str(p.relative_to(SHARED_DATA)) for p in SHARED_DATA.rglob("*")
               if p.is_file() and p.suffix != ".md"}
    listed = {f for f, *_ in FILES} | {f for f, *_ in SIDE_FILES} | {
        str(_tex_path(b, s).relative_to(SHARED_DATA)) for b, s, _ in TEX_FILES}
    assert on_disk == listed
    assert len(TEX_FILES) == 107  # SOURCE.md: 107 .tex files


@pytest.mark.parametrize("rel,fmt,records,turns", FILES, ids=[f[0] for f in FILES])
def test_real_file(rel, fmt, records, turns):
    path = SHARED_DATA / rel
    assert detect_format(path) == fmt
    units = list(read_records(path))
    assert len(units) == records
    unit_type = {"dialogue": Dialogue, "document": Document, "kg": Document, "ranking": Ranking, "exam": ExamItem}
    assert all(isinstance(u, unit_type[FORMATS[fmt].kind]) for u in units)
    if turns is not None:
        assert sum(u.turns for u in units) == turns
        assert all(u.meta["source"] in (fmt, "cmtmedqa") for u in units)
        ids = [u.id for u in units]
        assert len(set(ids)) == len(ids) and all(ids)
    # forcing the detected format reads the same; the reader does not depend on detection
    assert len(list(read_records(path, fmt))) == records


@pytest.mark.parametrize("rel,fmt,entries", SIDE_FILES, ids=[f[0] for f in SIDE_FILES])
def test_side_file(rel, fmt, entries):
    path = SHARED_DATA / rel
    assert detect_format(path) == fmt
    assert count_aux(path, fmt) == entries
    with pytest.raises(DataError, match="nothing to convert") as e:
        list(read_records(path))
    assert str(path) in str(e.value)


@pytest.mark.parametrize("book,stem,n", TEX_FILES, ids=[f"{b}/{s}" for b, s, _ in TEX_FILES])
def test_tex_file(book, stem, n):
    path = _tex_path(book, stem)
    assert detect_format(path) == "tex"
    docs = list(read_documents(path))
    assert len(docs) == n
    for d in docs:
        assert not re.search(r"\\[A-Za-z]+|[{}$]", d.text), d.text[:200]  # no LaTeX left
        assert d.meta["source"] == "tex" and d.text.strip()


def test_tex_driver_reads_its_chapters_once():
    # the book's main.tex follows its \input lines; a directory read takes chapters only through it
    for book, counts in TEX.items():
        assert counts["main"] == sum(n for stem, n in counts.items() if stem != "main")
    docs = list(read_documents(SHARED_DATA / "medical_books_tex"))
    assert len(docs) == sum(c["main"] for c in TEX.values())
    assert len(list_files(SHARED_DATA / "medical_books_tex")) == 4


def test_cmtmedqa_content_matches_raw():
    raw = json.loads((SHARED_DATA / "cmtmedqa_test/CMtMedQA_test.shared.json").read_text(encoding="utf-8"))
    dialogues = list(read_dialogues(SHARED_DATA / "cmtmedqa_test"))
    assert len(dialogues) == len(raw)
    for r, d in zip(raw, dialogues):
        if "instruct" in r:
            assert d.meta["safety"] is True and [m.content for m in d.messages] == [r["instruct"].strip(), r["output"].strip()]
            continue
        want = [x.strip() for pair in r["history"] for x in pair] + [r["instruction"].strip(), r["output"].strip()]
        assert [m.content for m in d.messages] == want
        assert [m.role for m in d.messages] == ["user", "assistant"] * (len(want) // 2)
        assert d.id == r["id"] and d.meta["department"] == r["cate1"]
        assert d.meta.get("subdepartment", "") == r["cate2"]  # one record has an empty cate2: left out of meta


def test_covid_txt_merges_same_speaker_and_keeps_description_as_first_turn():
    text = (SHARED_DATA / "covid_dialogue_zh/COVID-Dialogue-Dataset-Chinese.txt").read_text(encoding="utf-8")
    dialogues = {d.id: d for d in read_dialogues(SHARED_DATA / "covid_dialogue_zh/COVID-Dialogue-Dataset-Chinese.txt")}
    assert len(dialogues) == 1393 and set(dialogues) == {str(i) for i in range(1, 1394)}
    for d in dialogues.values():
        roles = [m.role for m in d.messages]
        assert roles[0] == "user" and all(a != b for a, b in zip(roles, roles[1:]))  # merged, alternating
    # the first consultation: its raw 医生：/病人： markers collapse into runs of one speaker
    block = text.split("id=2\n")[0].split("\nDialogue\n")[1]
    markers = [ln for ln in block.splitlines() if ln.strip() in ("医生：", "病人：")]
    runs = [m for i, m in enumerate(markers) if i == 0 or markers[i - 1] != m]
    assert dialogues["1"].turns == runs.count("医生：")
    assert sum(1 for d in dialogues.values() if d.meta.get("department")) == text.count("\nDoctor faculty\n")


def test_covid_json_splits_are_the_processed_set():
    full = list(read_dialogues(SHARED_DATA / "covid_dialogue_zh/COVID-Dialogue-Dataset-Chinese.json"))
    splits = [d for name in ("train_data", "validate_data", "test_data")
              for d in read_dialogues(SHARED_DATA / f"covid_dialogue_zh/{name}.json")]
    key = lambda d: tuple((m.role, m.content) for m in d.messages)  # noqa: E731
    assert sorted(map(key, full)) == sorted(map(key, splits))


def test_dxy_roles_and_meta_match_raw():
    lines = (SHARED_DATA / "dxy_dialog/dxy_dialog_data_dialog_v2.txt").read_text(encoding="utf-8").splitlines()
    raw = [(split, r) for ln in lines for split, _, body in [ln.partition("@")] for r in ast.literal_eval(body)]
    dialogues = list(read_dialogues(SHARED_DATA / "dxy_dialog/dxy_dialog_data_dialog_v2.txt"))
    assert len(dialogues) == len(raw) == 527
    for (split, r), d in zip(raw, dialogues):
        assert [m.content for m in d.messages] == [u.strip() for u in r["dialog"]]
        assert d.messages[-1].role == "assistant" and d.meta["disease"] == r["disease_tag"] and d.meta["split"] == split


def test_toyhom_is_gb18030_and_keeps_departments():
    path = SHARED_DATA / "toyhom_medical_dialogue/样例_内科5000-6000.csv"
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="gb18030"), newline="")))
    dialogues = list(read_dialogues(path))
    assert [d.meta["department"] for d in dialogues] == [r["department"] for r in rows]
    assert [d.messages[1].content for d in dialogues] == [r["answer"].strip() for r in rows]
    assert all(r["ask"].strip() in d.messages[0].content or r["ask"].strip() == "无" for r, d in zip(rows, dialogues))
    txt = list(read_dialogues(SHARED_DATA / "toyhom_medical_dialogue/内科.txt"))
    assert all(d.meta["department"] == "内科" for d in txt)


def test_preference_pairs_are_k2_rankings():
    raw = [json.loads(ln) for ln in (SHARED_DATA / "medicalgpt_samples/dpo_zh_500.jsonl").read_text(encoding="utf-8").splitlines()]
    rankings = list(read_rankings(SHARED_DATA / "medicalgpt_samples/dpo_zh_500.jsonl"))
    for r, k in zip(raw, rankings):
        assert k.responses == [r["chosen"], r["rejected"]] and k.ranking == [[0], [1]] and k.pairs() == [(0, 1)]
        assert k.messages[-1].role == "user" and k.messages[-1].content == r["conversations"][-1]["value"].strip()
    assert sum(k.messages[0].role == "system" for k in rankings) == 84  # 84 records carry a system turn
    med = list(read_rankings(SHARED_DATA / "medicalgpt_samples/reward_medical_test.json"))
    assert len(med) == 100 and all(k.k == 2 and len(k.messages) == 1 for k in med)
    with pytest.raises(DataError, match="ranking data"):
        list(read_dialogues(SHARED_DATA / "medicalgpt_samples/dpo_zh_500.jsonl"))


def test_exams_map_answers_to_letters():
    raw = json.loads((SHARED_DATA / "cnmleqa_3k/CNMLEQA-3k.shared.json").read_text(encoding="utf-8"))
    items = list(read_exam(SHARED_DATA / "cnmleqa_3k"))
    for r, it in zip(raw, items):
        assert it.id == r["id"] and len(it.options) == 5
        assert it.options[it.answer] == str(r[r["answer"]]).strip()
    cmmlu = list(read_exam(SHARED_DATA / "cmmlu_medical"))
    assert len(cmmlu) == 1812 + 45 and len({it.id for it in cmmlu}) == len(cmmlu)
    assert {it.subject for it in cmmlu} == {p.stem for p in (SHARED_DATA / "cmmlu_medical/test").glob("*.csv")}
    assert all(len(it.options) == 4 and it.answer in "ABCD" for it in cmmlu)


def test_kg_records_normalised_and_rendered():
    records = load_kg(SHARED_DATA / "medical_kg_xywy")  # the entity dictionaries beside them are not KG files
    assert len(records) == 8792
    raw = json.loads((SHARED_DATA / "medical_kg_xywy/tonystark_records/medical_0.json").read_text(encoding="utf-8"))
    first = raw["0"]
    rec = records[0]
    assert rec["name"] == first["gaishu_info"]["name"]
    assert rec["symptoms"] == first["symptom_data"]["symptoms"] and rec["checks"] == first["inspect_info"]
    assert rec["departments"] == first["gaishu_info"]["belongs_to_department"] and rec["department"] == rec["departments"][0]
    assert set(rec["drugs"]) == set(first["gaishu_info"]["common_drug"])
    doc = next(iter(read_documents(SHARED_DATA / "medical_kg_xywy/tonystark_records/medical_0.json")))
    assert rec["name"] in doc.text and all(s in doc.text for s in rec["symptoms"][:3])
    assert doc.meta["department"] == rec["department"]


def test_entity_dictionaries_load():
    drugs = load_entity_list(SHARED_DATA / "medical_kg_xywy/liuhuanyong_dict/drug.txt")
    assert len(drugs) == 3828
    synonyms = load_entity_list(SHARED_DATA / "dxy_dialog/norm_symptom_list.txt")
    assert len(synonyms) > 41  # names plus their synonyms


def _cli(*args: str) -> int:
    return cli(["data", *args])


@pytest.mark.parametrize("rels", [
    ["cmtmedqa_test", "covid_dialogue_zh/COVID-Dialogue-Dataset-Chinese.txt", "dxy_dialog", "huatuo26m_test",
     "toyhom_medical_dialogue", "bentsao_instruct", "promptcblue_toy", "medicalgpt_samples/medical_sft_1K_format.jsonl"],
])
def test_convert_round_trip_dialogues(tmp_path, rels, capsys):
    inputs = [str(SHARED_DATA / r) for r in rels]
    out = tmp_path / "all.jsonl"
    assert _cli("convert", *inputs, "-o", str(out)) == 0
    want = [d.to_dict() for d in read_dialogues(inputs)]
    back = [d.to_dict() for d in read_dialogues(out, "dialogue")]
    assert back == want and len(back) == sum(1 for _ in out.open(encoding="utf-8"))
    assert detect_format(out) == "dialogue"
    assert f"wrote {len(want)} dialogue(s)" in capsys.readouterr().out


@pytest.mark.parametrize("kind,rels,fmt", [
    ("document", ["medical_books_tex/病理学", "medicalgpt_samples/seed_patient_role.jsonl",
                  "medical_kg_xywy/tonystark_records/medical_3.json", "huatuogpt_eval/Med-dialog_100.json"], "document"),
    ("ranking", ["medicalgpt_samples/dpo_zh_500.jsonl", "medicalgpt_samples/reward_medical_test.json"], "ranking"),
    ("exam", ["cnmleqa_3k", "cmmlu_medical/test"], "exam"),
])
def test_convert_round_trip_other_kinds(tmp_path, kind, rels, fmt):
    inputs = [str(SHARED_DATA / r) for r in rels]
    out = tmp_path / f"{kind}.jsonl"
    assert _cli("convert", *inputs, "-o", str(out), "--kind", kind) == 0
    assert detect_format(out) == fmt
    reader = {"document": read_documents, "ranking": read_rankings, "exam": read_exam}[kind]
    assert [u.to_dict() for u in reader(out, fmt)] == [u.to_dict() for u in reader(inputs)]


def test_dialogues_flatten_to_documents():
    d = next(iter(read_dialogues(SHARED_DATA / "cmtmedqa_test")))
    doc = next(iter(read_documents(SHARED_DATA / "cmtmedqa_test")))
    lines = doc.text.split("\n")
    assert lines[0] == "患者：" + d.messages[0].content.split("\n")[0] and doc.meta["id"] == d.id
    assert doc.text.count("医生：") >= d.turns


def test_stats_on_every_dataset(capsys):
    # one run over the whole shared folder: every file gets a line, nothing is "bad"
    assert _cli("stats", str(SHARED_DATA), "--json") == 0
    res = json.loads(capsys.readouterr().out)
    assert res["bad_records"] == 0
    by_path = {Path(f["path"]).relative_to(SHARED_DATA).as_posix(): f for f in res["files"]}
    for rel, fmt, records, _ in FILES:
        assert by_path[rel]["format"] == fmt and by_path[rel]["records"] == records
    assert {Path(a["path"]).relative_to(SHARED_DATA).as_posix(): a["entries"] for a in res["side_files"]} == \
        {rel: n for rel, _, n in SIDE_FILES}
    dialogue_files = [(rel, t) for rel, _, _, t in FILES if t is not None]
    assert res["dialogue"]["turns_per_dialogue"]["total"] == sum(t for _, t in dialogue_files)
    assert res["exam"]["records"] == 1949 + 1812 + 45 and res["ranking"]["records"] == 600
    assert res["document"]["records"] == 8792 + 66 + 95 + sum(c["main"] for c in TEX.values())


def test_stats_text_for_dxy(capsys):
    assert _cli("stats", str(SHARED_DATA / "dxy_dialog")) == 0
    out = capsys.readouterr().out
    assert "dialogues: 527" in out and "total 1408" in out
    # every DXY dialogue is inquiry turns plus one diagnosis: 1408 - 527 doctor turns ask
    assert f"doctor turns that ask a question: {(1408 - 527) / 1408:.1%}" in out
    assert "entity_list side file, 41 entries" in out
