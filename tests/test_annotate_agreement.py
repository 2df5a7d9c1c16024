"""Agreement between two annotators (hand-computed values) and the rubric's structure."""

from __future__ import annotations

import math

import pytest

from zhongjing.data import rubric
from zhongjing.annotate.agreement import Judgement, consensus, decide, kendall_tau_b, summarize, top1_agree


def test_tau_b_strict_orders():
    assert kendall_tau_b([[0], [1], [2], [3]], [[0], [1], [2], [3]]) == 1.0
    assert kendall_tau_b([[0], [1], [2], [3]], [[3], [2], [1], [0]]) == -1.0
    # one adjacent swap: 5 concordant, 1 discordant of 6 pairs
    assert kendall_tau_b([[0], [1], [2], [3]], [[1], [0], [2], [3]]) == pytest.approx(4 / 6)


def test_tau_b_with_ties():
    # a ties 0 and 1 (n1 = 1 tied pair), b is strict; the other 5 pairs are concordant: 5 / sqrt(5 * 6)
    assert kendall_tau_b([[0, 1], [2], [3]], [[0], [1], [2], [3]]) == pytest.approx(5 / math.sqrt(30))
    # a = {0,1} > {2,3}; b = 0 > 2 > 1 > 3. Pairs: (0,2) C, (0,3) C, (1,2) D, (1,3) C; (0,1), (2,3) tied in a.
    # C=3, D=1, n1=2, n2=0 → 2 / sqrt(4 * 6)
    assert kendall_tau_b([[0, 1], [2, 3]], [[0], [2], [1], [3]]) == pytest.approx(2 / math.sqrt(24))
    # both tie in different places: a = 3 > {1,2} > 0, b = 1 > {2,3} > 0 → C=3, D=1, n1=n2=1 → 2/5
    assert kendall_tau_b([[3], [1, 2], [0]], [[1], [2, 3], [0]]) == pytest.approx(0.4)
    # symmetric in its arguments
    assert kendall_tau_b([[0], [2], [1], [3]], [[0, 1], [2, 3]]) == pytest.approx(2 / math.sqrt(24))


def test_tau_b_undefined_when_everything_tied():
    assert kendall_tau_b([[0, 1, 2, 3]], [[0], [1], [2], [3]]) is None
    assert kendall_tau_b([[0, 1, 2, 3]], [[0, 1, 2, 3]]) is None


def test_rankings_must_cover_the_same_answers():
    with pytest.raises(ValueError, match="different answers"):
        kendall_tau_b([[0], [1]], [[0], [2]])


def test_top1_and_consensus():
    assert top1_agree([[0, 1], [2], [3]], [[1, 0], [3], [2]])
    assert not top1_agree([[0, 1], [2], [3]], [[0], [1], [2], [3]])
    # one swap at the top: the two answers become tied; the rest keeps its order
    assert consensus([[0], [1], [2], [3]], [[1], [0], [2], [3]]) == [[0, 1], [2], [3]]
    # mean tiers: 0 → (0+0)/2, 1 → (0+1)/2, 2 → (1+1)/2, 3 → (2+2)/2
    assert consensus([[0, 1], [2], [3]], [[0], [1], [2], [3]]) == [[0], [1], [2], [3]]


def test_decide():
    strict = dict(min_tau=0.5, require_top1=True)
    agreed = decide(Judgement([[0], [1], [2], [3]]), Judgement([[0], [1], [3], [2]]), **strict)
    assert not agreed.disputed and agreed.tau == pytest.approx(4 / 6) and agreed.top1
    assert agreed.ranking == [[0], [1], [2, 3]] and agreed.reason == ""

    top_swap = decide(Judgement([[0], [1], [2], [3]]), Judgement([[1], [0], [2], [3]]), **strict)
    assert top_swap.disputed and top_swap.reason == "different best answers" and top_swap.ranking == []
    lenient = decide(Judgement([[0], [1], [2], [3]]), Judgement([[1], [0], [2], [3]]), min_tau=0.5, require_top1=False)
    assert not lenient.disputed and lenient.ranking == [[0, 1], [2], [3]]

    low = decide(Judgement([[0], [1], [2], [3]]), Judgement([[0], [3], [2], [1]]), **strict)
    assert low.disputed and "below" in low.reason  # tau = 0: (0 vs others) C=3, rest D=3

    one_wrong = decide(Judgement([[0], [1], [2], [3]], True), Judgement([[0], [1], [2], [3]], False), **strict)
    assert one_wrong.disputed and "all answers wrong" in one_wrong.reason

    both_wrong = decide(Judgement([[0, 1, 2, 3]], True), Judgement([[0, 1, 2, 3]], True), **strict)
    assert not both_wrong.disputed and both_wrong.all_wrong and both_wrong.tau is None
    assert both_wrong.ranking == [[0, 1, 2, 3]]

    all_tied_vs_strict = decide(Judgement([[0, 1, 2, 3]]), Judgement([[0], [1], [2], [3]]), **strict)
    assert all_tied_vs_strict.disputed


def test_summarize():
    s = summarize([1.0, None, 0.5], [True, True, False], [False, False, True])
    assert s == {"pairs": 3, "mean_tau": 0.75, "top1_rate": round(2 / 3, 4), "dispute_rate": round(1 / 3, 4)}
    assert summarize([], [], []) == {"pairs": 0, "mean_tau": None, "top1_rate": None, "dispute_rate": None}


def test_rubric_structure_and_priority():
    assert rubric.PRIORITY == ("safety", "professionalism", "fluency")
    assert [len(d.abilities) for d in rubric.RUBRIC] == [3, 3, 3]
    keys = [a.key for a in rubric.abilities()]
    assert keys == ["accuracy", "harmlessness", "ethics", "comprehension", "clarity", "initiative",
                    "coherence", "consistency", "warmth"]
    assert rubric.dimension_of("initiative").key == "professionalism"
    with pytest.raises(KeyError, match="unknown rubric ability"):
        rubric.dimension_of("speed")
    text = rubric.rubric_text()
    # dimensions appear in priority order and the priority rule is stated
    assert text.index("安全性") < text.index("专业性") < text.index("流畅性")
    assert "安全性 > 专业性 > 流畅性" in text
    partial = rubric.rubric_text(dimensions=("fluency", "professionalism"))
    assert "安全性" not in partial and partial.index("专业性") < partial.index("流畅性")
    assert all(t.strip() for t in rubric.IDK_TEMPLATES) and set(rubric.FLAGS) == {"factually_wrong", "unsafe"}
