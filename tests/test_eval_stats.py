"""Evaluation arithmetic with hand-computed expectations: order rule, priority, cluster bootstrap,
verdict parsing, BLEU-4 / ROUGE-L, behaviour metrics, exam letter parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zhongjing.eval.exams import parse_letters
from zhongjing.eval.judge import ParseError, parse_verdict
from zhongjing.eval.metrics import corpus_bleu, is_cautious, is_refusal, lcs_length, length_stats, rouge_l, tokenize
from zhongjing.eval.stats import Judged, bootstrap_ci, bootstrap_rates, by_priority, summarize

DIMS = ("safety", "professionalism", "fluency")


def J(item, first, second, group=None):
    mk = lambda t: None if t is None else dict(zip(DIMS, t))
    return Judged(item, group or item, mk(first), mk(second))


def test_order_rule_priority_and_consistency_hand_computed():
    judged = [
        J("q1", (1, 1, 1), (1, 1, 1)),  # prefers the target in both orders
        J("q2", (1, 1, 1), (-1, -1, -1)),  # always prefers position A: orders disagree → tie
        J("q3", (0, 1, -1), (0, 1, -1)),  # safety tied, professionalism decides overall → win
        J("q4", (-1, 1, 1), (-1, 1, 1)),  # safety lost: overall lost despite the rest
        J("q5", (1, 1, 1), None),  # second order failed → the question failed, not half-counted
    ]
    r = summarize(judged, DIMS, priority=DIMS, n_boot=200)
    assert (r["safety"].win, r["safety"].tie, r["safety"].lose) == (1, 2, 1)
    assert (r["professionalism"].win, r["professionalism"].tie, r["professionalism"].lose) == (3, 1, 0)
    assert (r["fluency"].win, r["fluency"].tie, r["fluency"].lose) == (2, 1, 1)
    assert (r["overall"].win, r["overall"].tie, r["overall"].lose) == (2, 1, 1)
    for d in (*DIMS, "overall"):
        assert r[d].n == 4 and r[d].failed == 1
        assert r[d].consistency == pytest.approx(3 / 4)  # only q2 flips with the order
        assert r[d].win_rate + r[d].tie_rate + r[d].lose_rate == pytest.approx(1.0)
    assert r["safety"].win_rate == pytest.approx(0.25) and r["professionalism"].win_rate == pytest.approx(0.75)
    assert by_priority({"safety": 0, "professionalism": 0, "fluency": -1}, DIMS) == -1
    assert by_priority({"safety": 0, "professionalism": 0, "fluency": 0}, DIMS) == 0


def test_bootstrap_resamples_dialogues_not_judgments():
    # dialogue g1: three turns all won; dialogue g2: one turn lost. Drawing 2 dialogues with replacement gives a
    # win rate of 1 (g1,g1: p=1/4), 3/4 (mixed: p=1/2) or 0 (g2,g2: p=1/4) — never 1/4 or 1/2, which
    # resampling single judgments would produce.
    counts = np.array([[3, 0, 0], [0, 0, 1]])
    win = bootstrap_rates(counts, 8000, np.random.default_rng(0))[:, 0]
    values, freq = np.unique(np.round(win, 6), return_counts=True)
    assert set(values.tolist()) == {0.0, 0.75, 1.0}
    freq = dict(zip(values.tolist(), (freq / len(win)).tolist()))
    assert freq[1.0] == pytest.approx(0.25, abs=0.03)
    assert freq[0.75] == pytest.approx(0.5, abs=0.03)
    assert freq[0.0] == pytest.approx(0.25, abs=0.03)
    ci = bootstrap_ci(counts, n_boot=8000, seed=0)
    assert ci["win"] == [0.0, 1.0] and ci["lose"] == [0.0, 1.0]

    judged = [J(f"t{i}", (1, 1, 1), (1, 1, 1), group="g1") for i in range(3)] + [J("u", (-1, -1, -1), (-1, -1, -1), "g2")]
    r = summarize(judged, DIMS, n_boot=2000)
    assert r["safety"].win_rate == pytest.approx(0.75) and r["safety"].ci["win"] == [0.0, 1.0]


def test_bootstrap_interval_of_a_large_sample_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    outcomes = rng.choice(3, size=400, p=[0.5, 0.2, 0.3])
    counts = np.eye(3, dtype=int)[outcomes]  # one question per group
    lo, hi = bootstrap_ci(counts, n_boot=4000, seed=2)["win"]
    p = counts[:, 0].mean()
    half = 1.96 * math.sqrt(p * (1 - p) / 400)
    assert lo == pytest.approx(p - half, abs=0.015) and hi == pytest.approx(p + half, abs=0.015)
    # unanimous results have a degenerate interval, and an empty comparison has none
    assert bootstrap_ci(np.array([[2, 0, 0], [1, 0, 0]]), n_boot=100)["win"] == [1.0, 1.0]
    assert all(math.isnan(x) for x in bootstrap_ci(np.zeros((2, 3), dtype=int), n_boot=10)["win"])


@pytest.mark.parametrize("reply,expected", [
    ('{"reason": "…", "safety": "A", "professionalism": "tie", "fluency": "B"}', ("A", "tie", "B")),
    ('```json\n{"safety":"b","professionalism":"A","fluency":"平"}\n```', ("B", "A", "tie")),
    ('我的结论如下：{"安全性": "回答A", "专业性": "平局", "流畅性": "B更好"}。', ("A", "tie", "B")),
    ('{"Safety": "A>B", "Professionalism": "Tie", "Fluency": "draw"}', ("A", "tie", "tie")),
    ("安全性：A\n专业性: tie\n流畅性：“B”", ("A", "tie", "B")),
    ('{"reason": "示例 {不是JSON}", "safety": "A", "professionalism": "A", "fluency": "A"}', ("A", "A", "A")),
])
def test_verdict_parsing_accepts_common_shapes(reply, expected):
    assert tuple(parse_verdict(reply, DIMS).values()) == expected


@pytest.mark.parametrize("reply", ["", "A 更好", '{"safety": "A"}', '{"safety": "A", "professionalism": "maybe", '
                                   '"fluency": "B"}', '{"safety": "A|B|tie", "professionalism": "A", "fluency": "A"}',
                                   '{"safety": 1, "professionalism": "A", "fluency": "A"}'])
def test_verdict_parsing_never_guesses(reply):
    with pytest.raises(ParseError):
        parse_verdict(reply, DIMS)


def test_bleu4_and_rouge_l_hand_computed():
    h, r = list("abcde"), list("abcdf")
    # precisions 4/5, 3/4, 2/3, 1/2; equal lengths → no brevity penalty
    assert corpus_bleu([h], [r]) == pytest.approx(100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # a hypothesis half as long as its reference: BP = exp(1 - 2)
    assert corpus_bleu([list("abcd")], [list("abcdabcd")]) == pytest.approx(100 * math.exp(-1))
    assert corpus_bleu([list("xyz")], [list("abc")]) == 0.0
    assert rouge_l(h, r) == pytest.approx(0.8)
    assert rouge_l(list("abc"), list("xyz")) == 0.0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert tokenize("服用阿莫西林500mg，每日3次。") == ["服", "用", "阿", "莫", "西", "林", "500", "mg", "每", "日", "3", "次"]


def test_behaviour_detectors_and_length():
    assert is_refusal("抱歉，我不能提供这种药物的获取方法。")
    assert not is_refusal("建议多喝水，注意休息。")
    assert is_cautious("请不要自行加量，最好在医生指导下用药。") and not is_cautious("多喝热水就好了。")
    assert length_stats(["一二三", "一 二", "一二三四五"]) == {"mean": 10 / 3, "median": 3.0, "n": 3}


@pytest.mark.parametrize("reply,expected", [
    ("答案：C", "C"), ("C", "C"), ("正确答案是 B。", "B"), ("（D）肝硬化", "D"), ("答案为A、C", "AC"),
    ("我选择E，因为……", "E"), ("不确定", None), ("A 或 B 都有可能", None), ("", None),
])
def test_exam_letter_parsing(reply, expected):
    assert parse_letters(reply, list("ABCDE")) == expected


@pytest.mark.parametrize("name", ["demo/eval.yaml", "eval.example.yaml"])
def test_shipped_eval_configs_parse_and_check(name):
    from conftest import REPO
    from zhongjing.config import load_config
    from zhongjing.eval.run import EvalConfig, check, comparisons

    cfg = load_config(EvalConfig, REPO / "configs" / name)
    check(cfg)
    kinds = {k for k, _, _ in comparisons(cfg)}
    assert "ablation" in kinds


@pytest.mark.parametrize("override,message", [
    (["baselines=[nobody]"], "no model named 'nobody'"),
    (["models=[{name: a, path: x, endpoint: {base_url: u, model: m}}]"], "exactly one of"),
    (["judge.dimensions=[safety, empathy]"], "unknown 'empathy'"),
    (["ablation.before=a"], "set both"),
    (["consultation.target=nobody"], "consultation.target: no model named 'nobody'"),
    (["judge.backend=gpt4"], "expected one of"),
])
def test_bad_eval_configs_are_one_line_errors(override, message):
    from zhongjing.config import load_config
    from zhongjing.errors import ConfigError
    from zhongjing.eval.run import EvalConfig, check

    base = ["models=[{name: a, path: x}, {name: b, path: y}]", "testsets=[{name: t, path: t.jsonl}]",
            "judge.endpoint={base_url: u, model: j}"]
    with pytest.raises(ConfigError, match=message):
        check(load_config(EvalConfig, None, base + override))


def test_missing_judge_endpoint_fails_before_any_work():
    from zhongjing.config import load_config
    from zhongjing.errors import ConfigError
    from zhongjing.eval.run import EvalConfig, check

    cfg = load_config(EvalConfig, None, ["models=[{name: a, path: x}]", "testsets=[{name: t, path: t.jsonl}]"])
    with pytest.raises(ConfigError, match="judge.endpoint.base_url"):
        check(cfg)
