"""Readers for CMB-Exam, CMB-Clin, CMExam, MedQA-MCMLE and MLEC-QA on small samples written here in each
upstream layout (field names, file type, answer encoding), detection by content, per-subject exam scores and
one-line errors for bad records."""

from __future__ import annotations

import csv
import json

import pytest

from zhongjing.data.readers import detect_format, read_dialogues, read_exam
from zhongjing.errors import DataError
from zhongjing.eval.exams import ExamConfig, load_exam, score

CMB = [{"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "临床执业医师", "question": "测试题干一，下列哪项正确",
        "answer": "C", "question_type": "单项选择题", "option": {"A": "甲", "B": "乙", "C": "丙", "D": "丁", "E": "戊"}},
       {"exam_type": "护理考试", "exam_class": "护士", "exam_subject": "护士资格", "question": "测试题干二，哪些正确",
        "answer": "AB", "question_type": "多项选择题", "option": {"A": "一", "B": "二", "C": "三", "D": "四"}}]
CLIN = [{"id": 0, "title": "案例分析-测试病", "description": "现病史\n患者，男，四十岁，测试描述。",
         "QA_pairs": [{"question": "简述诊断。", "solution": "测试诊断。"}, {"question": "简述治疗原则。", "solution": "测试治疗。"}]}]
CMEXAM_HEAD = ["Question", "Options", "Answer", "Explanation", "Disease Group", "Clinical Department",
               "Medical Discipline", "Competency", "Difficulty level"]
CMEXAM = [["测试题一？", "A 选项一\nB 选项二\nC 选项三\nD 选项四\nE 选项五", "B", "测试解析", "测试病组", "内科", "临床医学", "医学知识", "3"],
          ["测试题二？", "A 甲\nB 乙\nC 丙\nD 丁", "ACD", "", "", "外科", "中医学", "", "2"]]
MEDQA = [{"question": "测试题一？", "options": {"A": "一", "B": "二", "C": "三", "D": "四", "E": "五"}, "answer": "四",
          "meta_info": "卫生法规", "answer_idx": "D"},
         {"question": "测试题二？", "options": {"A": "一", "B": "二", "C": "三", "D": "四"}, "answer": "一",
          "meta_info": "第一部分", "answer_idx": "A"}]
MLEC = [{"qid": "Clinic_test_1", "qtype": "A1型题", "qtext": "测试题一？", "qimage": "",
         "options": {"A": "一", "B": "二", "C": "三", "D": "四", "E": "五"}, "answer": "E"},
        {"qid": "Clinic_test_2", "qtype": "A2型题", "qtext": "测试题二，见图。", "qimage": "img/2.png",
         "options": {"A": "一", "B": "二", "C": "三", "D": "四", "E": "五"}, "answer": "A"}]


def write_json(path, rows, lines=False):
    text = ("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n" if lines
            else json.dumps(rows, ensure_ascii=False, indent=2))
    path.write_text(text, encoding="utf-8")
    return path


def write_cmexam(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(CMEXAM_HEAD)
        w.writerows(rows)
    return path


def test_cmb_exam(tmp_path):
    path = write_json(tmp_path / "CMB-val-merge.json", CMB)
    assert detect_format(path) == "cmb_exam"
    a, b = read_exam(path)
    assert (a.answer, a.subject, len(a.options), a.meta["question_type"]) == ("C", "执业医师", 5, "单项选择题")
    assert (b.answer, b.subject) == ("AB", "护士")


def test_cmb_clin_is_a_multi_turn_case(tmp_path):
    path = write_json(tmp_path / "CMB-Clin-qa.json", CLIN)
    assert detect_format(path) == "cmb_clin"
    (d,) = read_dialogues(path)
    roles = [m.role for m in d.messages]
    assert roles == ["user", "assistant", "user", "assistant"] and d.id == "0"
    assert d.messages[0].content.startswith("以下是一位病人的病例：\n现病史") and d.messages[0].content.endswith("简述诊断。")
    assert d.messages[3].content == "测试治疗。" and d.meta["title"] == "案例分析-测试病"


def test_cmexam_csv(tmp_path):
    path = write_cmexam(tmp_path / "test.csv", CMEXAM)
    assert detect_format(path) == "cmexam"
    a, b = read_exam(path)
    assert a.options == {"A": "选项一", "B": "选项二", "C": "选项三", "D": "选项四", "E": "选项五"}
    assert (a.answer, a.subject, a.meta["department"], a.meta["difficulty"]) == ("B", "临床医学", "内科", "3")
    assert (b.answer, b.subject) == ("ACD", "中医学")


def test_medqa_mcmle_jsonl(tmp_path):
    path = write_json(tmp_path / "test.jsonl", MEDQA, lines=True)
    assert detect_format(path) == "medqa_mcmle"
    a, b = read_exam(path)
    assert (a.answer, a.subject, b.answer) == ("D", "卫生法规", "A")


def test_mlecqa_subset_from_file_name(tmp_path):
    path = write_json(tmp_path / "Clinic_test.json", MLEC)
    assert detect_format(path) == "mlecqa"
    a, b = read_exam(path)
    assert (a.id, a.answer, a.subject, a.meta["qtype"]) == ("Clinic_test_1", "E", "Clinic", "A1型题")
    assert b.meta["has_image"] is True and "has_image" not in a.meta


def test_per_subject_scores_and_few_shot_pool(tmp_path):
    rows = [dict(CMB[0], question=f"测试题{i}", answer="ABCDE"[i % 5], exam_class=("执业医师", "护士")[i % 2])
            for i in range(10)]
    exam = load_exam(ExamConfig(name="cmb", path=str(write_json(tmp_path / "c.json", rows)), shots=[0, 1]))
    assert len(exam.pool) == 2 and {x.subject for x in exam.pool} == {"执业医师", "护士"}  # one shot per subject
    preds = {it.id: it.answer if it.subject == "护士" else "A" for it in exam.items}
    s = score(exam, preds, n_boot=50)
    assert s["subjects"]["护士"]["accuracy"] == 1.0 and set(s["subjects"]) == {"执业医师", "护士"}


@pytest.mark.parametrize("name, rows, msg", [
    ("cmb.json", [CMB[0], {**CMB[0], "answer": ""}], "no 'answer'"),
    ("Clinic_dev.json", [MLEC[0], {**MLEC[0], "answer": "F"}], "option(s) F"),
    ("medqa.jsonl", [MEDQA[0], {**MEDQA[0], "answer": "三"}], "disagree"),
    ("clin.json", [CLIN[0], {**CLIN[0], "QA_pairs": [{"question": "q"}]}], "QA_pairs[0]"),
])
def test_bad_records_are_one_line_errors(tmp_path, name, rows, msg):
    path = write_json(tmp_path / name, rows, lines=name.endswith(".jsonl"))
    with pytest.raises(DataError) as e:
        list(read_dialogues(path) if "clin" in name else read_exam(path))
    text = str(e.value)
    assert msg in text and name in text and ("record 2" in text or "line 2" in text) and "\n" not in text


def test_bad_cmexam_row(tmp_path):
    path = write_cmexam(tmp_path / "bad.csv", [CMEXAM[0], ["题？", "没有选项", "A", "", "", "", "", "", ""]])
    with pytest.raises(DataError) as e:
        list(read_exam(path))
    assert "Options" in str(e.value) and "bad.csv:line 7" in str(e.value)  # row 1 spans lines 2–6 (5 option lines)


def test_report_has_a_per_subject_table():
    from zhongjing.eval.report import to_markdown
    from zhongjing.eval.report_blocks import subject_blocks

    results = {"exams": {"m": {"cmb": {0: {"subjects": {"护士": {"n": 4, "accuracy": 0.5},
                                                        "执业医师": {"n": 4, "accuracy": 1.0}}}}}}}
    md = to_markdown(subject_blocks(results))
    assert "### cmb: m, 0-shot, per subject" in md and "| 护士 | 4 | 50.0% |" in md
    assert subject_blocks({"exams": {"m": {"x": {0: {"subjects": {"all": {"n": 1, "accuracy": 1.0}}}}}}}) == []
