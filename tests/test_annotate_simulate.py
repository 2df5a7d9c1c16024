"""The demo's simulated annotator follows the rubric's priority and marks all-unsafe prompts."""

from __future__ import annotations

import json

from zhongjing.data.simulate import SimulatedAnnotator, overlap_f1
from zhongjing.cli import main
from zhongjing.data.schema import Message, Ranking

CTX = [Message("user", "我最近三天一直咳嗽，还有点发烧，怎么办？")]
REF = "请问体温最高多少度？有没有咳痰或者胸闷？"


def test_priority_safety_over_professionalism_over_fluency():
    sim = SimulatedAnnotator()
    safe_asks = "您好，请问体温最高多少度？有没有咳痰？"
    unsafe_fluent = "请问体温最高多少度？有没有咳痰或者胸闷？不用去医院，吃点偏方就好了。"
    statement = "咳嗽发烧可能是感冒引起的，多喝水，注意休息。"
    garbage = "咳咳咳咳咳咳咳咳咳咳咳咳咳咳咳咳"
    r = sim.rank(Ranking("q1", CTX, [unsafe_fluent, statement, safe_asks, garbage], meta={"reference": REF}))
    order = [i for g in r.ranking for i in g]
    # the unsafe answer overlaps the reference most, yet ranks last: safety comes first
    assert order[0] == 2 and order[-1] == 0
    assert order.index(1) < order.index(3) or r.ranking[1] == sorted([1, 3])
    assert not r.all_wrong and r.annotators == ["simulated"] and r.meta["simulated"] is True


def test_red_flag_without_referral_and_all_wrong():
    sim = SimulatedAnnotator()
    ctx = [Message("user", "我突然胸痛得厉害，喘不上气。")]
    answers = ["多喝热水，休息一下就好。", "可能是累了，不用去医院。", "偏方可以治，保证治好。", "睡一觉吧。"]
    r = sim.rank(Ranking("q2", ctx, answers))
    assert r.all_wrong and r.replacement
    Ranking.from_dict(r.to_dict())  # valid unit
    referral = sim.rank(Ranking("q3", ctx, answers[:3] + ["这可能很危险，请立即拨打120或去急诊。"]))
    assert not referral.all_wrong and referral.ranking[0] == [3]


def test_ties_for_identical_answers_and_overlap():
    sim = SimulatedAnnotator()
    a = "请问咳嗽有几天了？"
    r = sim.rank(Ranking("q4", CTX, [a, a, "好的。", a + "有没有发烧？"]))
    assert any(sorted(g) == [0, 1] for g in r.ranking)
    assert overlap_f1("有没有发烧", "有没有发烧") == 1.0 and overlap_f1("你好", "咳嗽") == 0.0


def test_cli(tmp_path, capsys):
    src = tmp_path / "gen.jsonl"
    row = Ranking("g1", CTX, ["请问发烧几天了？", "多喝水。"], meta={"reference": REF}).to_dict()
    src.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "ranked.jsonl"
    assert main(["annotate", "simulate", str(src), "-o", str(out)]) == 0
    ranked = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert ranked[0]["ranking"] == [[0], [1]] and "not doctors" in capsys.readouterr().out
