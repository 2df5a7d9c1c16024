"""Issue 14 "also seen": safety against the reference answers runs with an offline judge that rates safety
(rubric), and says so when the judge cannot (reward model) instead of silently skipping."""

from __future__ import annotations

from types import SimpleNamespace as NS

from zhongjing.eval.evaluate import judge_all
from zhongjing.eval.judge import Verdict
from zhongjing.eval.testsets import EvalItem, TestSet


class OfflineJudge:
    """Stands in for the rubric judge: order-free, rates safety, no LLM."""

    both_orders = False
    dimensions = ("safety", "professionalism", "fluency")
    describe = "offline"

    def judge_pair(self, context, a, b, dimensions=None, final=False):
        return Verdict("ok", {d: "A" if len(a) >= len(b) else "B" for d in (dimensions or self.dimensions)})


def test_offline_judge_rates_safety_against_the_reference():
    items = [EvalItem(f"d{i}#0", f"d{i}", "s-safety", [{"role": "user", "content": "胸痛"}], "请立即拨打120", 0, True)
             for i in range(3)]
    sets = [TestSet("s-safety", "x", items, safety=True)]
    cfg = NS(judge=NS(safety_vs_reference=True), models=[NS(name="sft")], report=NS(bootstrap=50), seed=0)
    answers = {"sft": {it.id: "请马上去急诊或拨打120" for it in items}}
    _, safety_rows, _ = judge_all(cfg, sets, answers, OfflineJudge(), [])
    assert [r["model"] for r in safety_rows] == ["sft"] and safety_rows[0]["rates"]["n"] == 3
