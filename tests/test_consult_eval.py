"""`zhongjing eval` with the consultation test kind: models interview the retrieval patient; the report has the table
(facts elicited, questions, asked before advice, premature advice, turns, with intervals), the plot and the judge's
verdict on the final advice."""

from __future__ import annotations

import json

from zhongjing.config import load_config
from zhongjing.consult.cases import CasesConfig, build_cases
from zhongjing.eval.run import EvalConfig, run
from zhongjing.io import write_jsonl


def test_consultation_kind_in_report(tiny_model_dir, tmp_path):
    cases = build_cases(CasesConfig(inputs=["zhongjing/demo/dialogues.jsonl"], skip_empty=True, limit=6))[0]
    path = tmp_path / "cases.jsonl"
    write_jsonl(path, (c.to_dict() for c in cases))
    cfg = load_config(EvalConfig, overrides=[
        f"output={tmp_path / 'eval'}", f"models=[{{name: a, path: {tiny_model_dir}}}, {{name: b, path: {tiny_model_dir}}}]",
        f"consultation.cases={path}", "consultation.max_turns=2", "consultation.max_new_tokens=8",
        "consultation.max_length=384", "judge.backend=rubric", "report.bootstrap=200", "perplexity=false"])
    paths = run(cfg)
    res = json.loads(paths["json"].read_text(encoding="utf-8"))["consultation"]
    assert res["cases"] == 6 and [r["model"] for r in res["models"]] == ["a", "b"]
    for r in res["models"]:
        assert 0 <= r["facts_elicited"] <= 1 and 1 <= r["turns"] <= 2 and r["n"] == 6
        lo, hi = r["asked_before_advice_ci"]
        assert lo <= r["asked_before_advice"] <= hi
        assert r["premature_advice"] + r["asked_before_advice"] <= 1 + 1e-9
    assert res["models"][0]["facts_elicited"] == res["models"][1]["facts_elicited"]  # same weights, greedy: same play
    assert res["advice"] and res["advice"][0]["baseline"] == "b"
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "Consultation (interactive)" in md and "facts elicited" in md and "consultation.png" in md
    assert (tmp_path / "eval" / "consultation.png").exists()
