"""Chinese medical benchmarks in their upstream layouts → ExamItem (multiple choice) or Dialogue (CMB-Clin).

  cmb_exam     FreedomIntelligence/CMB, CMB-Exam JSON list: {exam_type, exam_class, exam_subject, question,
               answer: "D" | "ABD", question_type: 单项选择题 | 多项选择题, option: {A: …}, id?}; subject = exam_class
               (the 28 sub-categories). The test split ships without answers (scored by the authors): such a
               record is an error naming the field — use CMB-val or join the released answers first.
  cmb_clin     CMB-Clin JSON list: {id, title, description, QA_pairs: [{question, solution}]} → one multi-turn
               Dialogue per case: the case record and the first question, then question/solution turns.
  cmexam       williamliujl/CMExam CSV: Question, Options ("A 文本\\nB 文本…"), Answer ("A" | "ACD"), Explanation,
               Disease Group, Clinical Department, Medical Discipline, Competency, Difficulty level;
               subject = Medical Discipline, the other annotations kept in meta.
  medqa_mcmle  jind11/MedQA, Mainland China (MCMLE) JSON lines: {question, options: {A: …}, answer: option text,
               meta_info, answer_idx: "E"}; the answer text must be the text of option `answer_idx`.
  mlecqa       Judenpech/MLEC-QA JSON list (Clinic/Stomatology/PublicHealth/TCM/CWM_{train,dev,test}.json):
               {qid, qtype: A1型题 | A2型题 | A3/A4型题 | B1型题, qtext, qimage, options: {A: …}, answer: "B"};
               subject = the file's subset (its name before "_"); questions with an image are marked in meta.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from zhongjing.data.readers.base import (Raw, Source, clean_meta, convert_rows, json_format, make_dialogue, need,
                                         record_id, register, text_field)
from zhongjing.data.readers.exam import ExamItem
from zhongjing.data.schema import Dialogue
from zhongjing.errors import DataError


def _options(obj: Any, key: str) -> dict:
    opts = obj.get(key)
    if not isinstance(opts, dict):
        raise DataError(f"field {key!r} must be an object of option letters → texts, got {type(opts).__name__}")
    return {str(k).strip(): v for k, v in opts.items() if v not in (None, "")}


def _letters(answer: Any, field: str = "answer") -> str:
    if isinstance(answer, list) and all(isinstance(x, str) for x in answer):
        answer = "".join(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"field {field!r} is empty or not option letters (got {answer!r})")
    return re.sub(r"[\s,，、]", "", answer)


@json_format("cmb_exam", "exam", "CMB-Exam (FreedomIntelligence/CMB): {exam_type, exam_class, exam_subject, question, "
             "answer, question_type, option: {A: …}}")
def _cmb_exam(obj: Any, raw: Raw, src: Source) -> ExamItem:
    need(obj, "question", "option")
    if obj.get("answer") in (None, ""):
        raise DataError("no 'answer' (CMB's test split ships without answers: use CMB-val or join the answer file)")
    meta = clean_meta(source="cmb_exam", exam_type=obj.get("exam_type"), exam_subject=obj.get("exam_subject"),
                      question_type=obj.get("question_type"))
    return ExamItem.make(record_id(src, raw, obj.get("id")), text_field(obj, "question"), _options(obj, "option"),
                         _letters(obj["answer"]), str(obj.get("exam_class") or obj.get("exam_type") or ""), meta)


@json_format("cmb_clin", "dialogue", "CMB-Clin cases: {id, title, description, QA_pairs: [{question, solution}]} → "
             "multi-turn dialogues")
def _cmb_clin(obj: Any, raw: Raw, src: Source) -> Dialogue:
    need(obj, "description", "QA_pairs")
    pairs = obj["QA_pairs"]
    if not isinstance(pairs, list) or not pairs:
        raise DataError("'QA_pairs' must be a non-empty list of {question, solution}")
    turns = []
    for k, qa in enumerate(pairs):
        if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or not isinstance(qa.get("solution"), str):
            raise DataError(f"QA_pairs[{k}] must be {{question: text, solution: text}}")
        q = qa["question"]
        if k == 0:
            q = f"以下是一位病人的病例：\n{text_field(obj, 'description').strip()}\n{q}"
        turns += [("user", q), ("assistant", qa["solution"])]
    return make_dialogue(turns, id=record_id(src, raw, obj.get("id")),
                         meta=clean_meta(source="cmb_clin", title=obj.get("title")))


def _cmexam_row(row: dict, raw: Raw, src: Source) -> ExamItem:
    options = {}
    for line in (row.get("Options") or "").splitlines():
        m = re.match(r"\s*([A-Z])[\s.、．:：]+(.*\S)", line)
        if m:
            options[m.group(1)] = m.group(2)
    if not options:
        raise DataError("'Options' has no lines like 'A 选项'")
    extra = {k: row.get(c) for k, c in (("disease_group", "Disease Group"), ("department", "Clinical Department"),
                                        ("competency", "Competency"), ("difficulty", "Difficulty level"))}
    meta = clean_meta(source="cmexam", explanation=row.get("Explanation"), **extra)
    return ExamItem.make(f"{src.stem}:{raw.index}", row["Question"], options, _letters(row.get("Answer"), "Answer"),
                         (row.get("Medical Discipline") or "").strip(), meta)


@register("cmexam", "exam", "CMExam CSV: Question, Options ('A 文本' lines), Answer, Explanation, Disease Group, "
          "Clinical Department, Medical Discipline, Competency, Difficulty level")
def _cmexam(src: Source) -> Iterator[Any]:
    return convert_rows(src, ("Question", "Options", "Answer"), _cmexam_row)


@json_format("medqa_mcmle", "exam", "MedQA Mainland China (MCMLE) JSONL: {question, options, answer (text), "
             "meta_info, answer_idx}")
def _medqa(obj: Any, raw: Raw, src: Source) -> ExamItem:
    need(obj, "question", "options", "answer_idx")
    options = _options(obj, "options")
    idx = _letters(obj["answer_idx"], "answer_idx")
    text = obj.get("answer")
    if isinstance(text, str) and text.strip() and idx in options and str(options[idx]).strip() != text.strip():
        raise DataError(f"'answer' text is not option {idx}'s text (answer_idx and answer disagree)")
    return ExamItem.make(record_id(src, raw, obj.get("id")), text_field(obj, "question"), options, idx,
                         str(obj.get("meta_info") or ""), clean_meta(source="medqa_mcmle"))


@json_format("mlecqa", "exam", "MLEC-QA JSON: {qid, qtype, qtext, qimage, options: {A: …}, answer}")
def _mlecqa(obj: Any, raw: Raw, src: Source) -> ExamItem:
    need(obj, "qtext", "options", "answer")
    meta = clean_meta(source="mlecqa", qtype=obj.get("qtype"), has_image=bool(obj.get("qimage")) or None)
    return ExamItem.make(record_id(src, raw, obj.get("qid")), text_field(obj, "qtext"), _options(obj, "options"),
                         _letters(obj["answer"]), src.stem.split("_")[0], meta)
