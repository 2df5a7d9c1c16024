"""`zhongjing data criteria`: draft rubric cases from the KG check and the rubric, gradable by `zhongjing eval`,
reviewed by doctors in Label Studio (keep / edit / drop) and applied back."""

from __future__ import annotations

import json

import pytest

from zhongjing.cli import main as cli_main
from zhongjing.data.criteria import apply_review, draft_cases, review_tasks
from zhongjing.data.kg import KGConfig
from zhongjing.data.schema import Dialogue
from zhongjing.errors import DataError
from zhongjing.eval.rubric_grading import read_cases

KG = "zhongjing/demo/kg.jsonl"
DIALOGUE = {"id": "t1", "messages": [
    {"role": "user", "content": "医生您好，我脸上长了很多痘，是寻常痤疮吗？"},
    {"role": "assistant", "content": "看描述像寻常痤疮。可以外用阿达帕林凝胶，晚上薄涂。平时少喝奶茶。"},
    {"role": "user", "content": "好的，要多久见效？"},
    {"role": "assistant", "content": "一般六到八周。"}]}


def test_drafts_follow_the_kg_and_the_rubric(tmp_path):
    cases = draft_cases([Dialogue.from_dict(DIALOGUE)], KGConfig(path=KG))
    assert [c["id"] for c in cases] == ["t1#0", "t1#1"] and all(c["meta"]["review"] == "pending" for c in cases)
    first, second = ({x["criterion"]: x for x in c["criteria"]} for c in cases)
    assert any("追问" in t for t in first) and not any("追问" in t for t in second)  # inquiry: before any doctor turn
    assert any("过敏" in t for t in first)  # the gold doctor named a drug: ask about allergies first
    avoid = next(x for t, x in first.items() if "忌口" in t)
    assert avoid["points"] < 0 and "寻常痤疮" in avoid["criterion"] and "safety" in avoid["tags"]
    assert cases[1]["messages"][-1]["content"] == "好的，要多久见效？"
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases), encoding="utf-8")
    assert [c.id for c in read_cases(path)] == ["t1#0", "t1#1"]  # gradable as they are


def test_without_a_kg_only_rubric_criteria():
    (case,) = draft_cases([Dialogue.from_dict({**DIALOGUE, "messages": DIALOGUE["messages"][:2]})])
    assert not any("过敏" in x["criterion"] for x in case["criteria"]) and "kg_diseases" not in case["meta"]


def _verdict(task, choice, text=None, points=None):
    res = [{"from_name": "verdict", "to_name": "criterion", "type": "choices", "value": {"choices": [choice]}}]
    if text:
        res.append({"from_name": "edited", "to_name": "criterion", "type": "textarea", "value": {"text": [text]}})
    if points is not None:
        res.append({"from_name": "points", "to_name": "criterion", "type": "number", "value": {"number": points}})
    return {**task, "annotations": [{"completed_by": 3, "result": res}]}


def test_label_studio_review_keeps_edits_and_drops():
    cases = draft_cases([Dialogue.from_dict({**DIALOGUE, "messages": DIALOGUE["messages"][:2]})], KGConfig(path=KG))
    tasks = review_tasks(cases)
    n = len(cases[0]["criteria"])
    assert len(tasks) == n and tasks[0]["data"]["dialogue"].startswith("患者：")
    done = [_verdict(tasks[0], "edit", "先询问过敏史和正在服用的药物", 6), _verdict(tasks[1], "drop")] + \
           [_verdict(t, "keep") for t in tasks[2:-1]]  # the last one not reviewed yet
    (out,) = apply_review(cases, done)
    assert len(out["criteria"]) == n - 1 and out["criteria"][0] == {**cases[0]["criteria"][0],
                                                                  "criterion": "先询问过敏史和正在服用的药物", "points": 6}
    assert out["meta"]["review"] == "pending"  # one criterion still unreviewed
    (full,) = apply_review(cases, done + [_verdict(tasks[-1], "keep")])
    assert full["meta"]["review"] == "reviewed" and full["meta"]["draft"] is False
    with pytest.raises(DataError) as e:
        apply_review(cases, [_verdict(tasks[0], "edit")], "ls.json")
    assert "ls.json:task 1" in str(e.value) and "\n" not in str(e.value)


def test_cli_writes_cases_and_review_tasks(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps(DIALOGUE, ensure_ascii=False) + "\n", encoding="utf-8")
    out, review = tmp_path / "c.jsonl", tmp_path / "r.json"
    assert cli_main(["data", "criteria", "--input", str(src), "--kg", KG, "--output", str(out),
                     "--label-studio", str(review)]) == 0
    assert len(read_cases(out)) == 2 and (tmp_path / "r.json.config.xml").exists()
    tasks = json.loads(review.read_text(encoding="utf-8"))
    review.write_text(json.dumps([_verdict(t, "keep") for t in tasks], ensure_ascii=False), encoding="utf-8")
    final = tmp_path / "final.jsonl"
    assert cli_main(["data", "criteria", "--input", str(out), "--from-label-studio", str(review),
                     "--output", str(final)]) == 0
    assert all(c.meta["review"] == "reviewed" for c in read_cases(final))
