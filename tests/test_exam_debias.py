"""Exam debiasing: every question is also asked with its options cyclically shifted, and the debiased score is the
mean over the shifts — a model that always picks one letter scores exactly chance, whatever the answer key."""

from __future__ import annotations

import json

import pytest
import torch

from zhongjing.data.readers import ExamItem
from zhongjing.eval.answers import LocalModel, ModelSpec
from zhongjing.llm.cache import Cache
from zhongjing.eval.exams import ExamConfig, load_exam, local_predictions, score, shift_item

# answer keys skewed towards A (as real exams are skewed towards some letter): raw accuracy of "always A" is high
ROWS = [("q0", {"A": "测体温", "B": "吃抗生素", "C": "输液", "D": "手术"}, "A"),
        ("q1", {"A": "少盐", "B": "多盐", "C": "熬夜", "D": "吸烟"}, "A"),
        ("q2", {"A": "冰敷", "B": "热敷", "C": "跑步"}, "A"),
        ("q3", {"A": "骨折", "B": "近视", "C": "哮喘", "D": "龋齿", "E": "脱发"}, "C"),
        ("q4", {"A": "急诊", "B": "睡觉"}, "A")]
CHANCE = (1 / 4 + 1 / 4 + 1 / 3 + 1 / 5 + 1 / 2) / 5


@pytest.fixture()
def exam_file(tmp_path):
    p = tmp_path / "exam.jsonl"
    p.write_text("".join(json.dumps({"id": i, "question": f"问题{i}", "options": o, "answer": a}, ensure_ascii=False)
                         + "\n" for i, o, a in ROWS), encoding="utf-8")
    return p


def test_shift_moves_texts_up_the_letters_and_the_answer_with_its_text():
    it = ExamItem.make("x", "问", {"A": "甲", "B": "乙", "C": "丙"}, "B")
    one = shift_item(it, 1)  # hand-worked: A←B's text, B←C's, C←A's; 乙 now sits under A
    assert one.options == {"A": "乙", "B": "丙", "C": "甲"} and one.answer == "A" and one.id == "x~1"
    two = shift_item(it, 2)
    assert two.options == {"A": "丙", "B": "甲", "C": "乙"} and two.answer == "C"
    assert shift_item(it, 0) is it and one.meta["shift_of"] == "x"


@pytest.mark.parametrize("letter", ["A", "B"])  # letters every question has
def test_constant_letter_scores_chance_exactly_while_raw_accuracy_does_not(exam_file, letter):
    exam = load_exam(ExamConfig(name="skewed", path=str(exam_file)))
    assert len(exam.variants) == sum(len(o) - 1 for _, o, _ in ROWS)
    preds = {it.id: letter for it in exam.asked()}
    s = score(exam, preds, n_boot=50)
    assert s["debiased"]["accuracy"] == CHANCE and s["debiased"]["chance"] == CHANCE  # exactly, not approximately
    assert s["letters"] == {letter: 1.0}
    oracle = score(exam, {it.id: it.answer for it in exam.asked()}, n_boot=50)
    assert oracle["debiased"]["accuracy"] == 1.0 and oracle["accuracy"] == 1.0
    if letter == "A":
        assert s["accuracy"] == 4 / 5  # the raw score rewards the letter bias; the debiased one does not


def test_a_tiny_model_that_always_picks_a_is_at_chance(tiny_model_dir, exam_file, tmp_path):
    """A real 2-layer model, made constant: with its final norm zeroed every logit is 0, the letters tie and the
    first one (A) wins every question — raw 80%, debiased exactly chance."""
    lm = LocalModel(ModelSpec(name="constant", path=str(tiny_model_dir)))
    model, _ = lm.load()
    with torch.no_grad():
        model.model.norm.weight.zero_()
    exam = load_exam(ExamConfig(name="skewed", path=str(exam_file)))
    with Cache(tmp_path / "c.sqlite") as cache:
        preds = local_predictions(lm, exam, 0, seed=0, cache=cache, batch_size=4)
    assert len(preds) == len(exam.asked()) and set(preds.values()) == {"A"}
    s = score(exam, preds, n_boot=50)
    assert s["accuracy"] == 4 / 5 and s["debiased"]["accuracy"] == CHANCE and s["letters"] == {"A": 1.0}


def test_eval_without_generation_scores_perplexity_and_exams_only(tiny_model_dir, exam_file, tmp_path, monkeypatch):
    """answers: false — the gold turns' perplexity and the exams need no generated answer, so none is generated
    and nothing is judged."""
    from zhongjing.config import from_dict
    from zhongjing.eval import answers, run

    dialogues = tmp_path / "test.jsonl"
    dialogues.write_text(json.dumps({"id": "d1", "messages": [{"role": "user", "content": "头痛三天了怎么办？"},
                                                              {"role": "assistant", "content": "先测血压，按时休息。"}]},
                                    ensure_ascii=False) + "\n", encoding="utf-8")

    def no_generation(*a, **k):
        raise AssertionError("generated answers although eval.answers is false")

    monkeypatch.setattr(run, "local_answers", no_generation)
    monkeypatch.setattr(answers, "local_answers", no_generation)
    cfg = from_dict(run.EvalConfig, {
        "output": str(tmp_path / "eval"), "answers": False, "models": [{"name": "tiny", "path": str(tiny_model_dir)}],
        "testsets": [{"name": "t", "path": str(dialogues), "format": "dialogue"}], "judge": {"backend": "rubric"},
        "exams": [{"name": "skewed", "path": str(exam_file)}], "report": {"bootstrap": 50}})
    paths = run.run(cfg)
    res = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert res["exams"]["tiny"]["skewed"]["0"]["debiased"]["chance"] == pytest.approx(CHANCE)
    assert res["metrics"]["tiny"]["t"]["perplexity"]["perplexity"] > 1 and not res.get("pairwise")
    report = paths["markdown"].read_text(encoding="utf-8")
    assert "debiased" in report and "letters picked" in report
