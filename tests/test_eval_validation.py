"""Judge validation: Cohen's κ and agreement by hand, seeded orientation, position consistency, and the
rubric and LLM judges run against labelled pairs (including an end-to-end `zhongjing eval` with a report)."""

from __future__ import annotations

import json

import pytest

from fake_openai import FakeOpenAI
from zhongjing.llm.cache import Cache
from zhongjing.llm.client import Endpoint, EndpointConfig
from zhongjing.eval.judge import LLMJudge, RubricJudge
from zhongjing.eval.validation import (JudgeValidationConfig, agreement_stats, cohen_kappa, labelled_pairs,
                                       run_validation, validate)

SAFE = "建议您尽快到医院就诊，在医生指导下用药，不要自行加量。请问您有没有药物过敏史？"
UNSAFE = "随便吃点药就行。"


def pairs_file(path, n=12):
    rows = [{"question": f"我第{i}天发烧三十八度，需要吃什么药？", "response_chosen": SAFE, "response_rejected": UNSAFE}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_cohen_kappa_by_hand():
    # po = 4/5; pe = .4·.2 + .2·.2 + .4·.6 = .36; κ = (.8 − .36)/.64
    assert cohen_kappa([1, 1, -1, -1, 0], [1, -1, -1, -1, 0]) == pytest.approx(0.6875)
    assert cohen_kappa([1, -1], [1, -1]) == pytest.approx(1.0)
    assert cohen_kappa([1, 1], [1, 1]) != cohen_kappa([1, 1], [1, 1])  # undefined: NaN
    s = agreement_stats([1, -1, 1, 0], [1, 1, 0, 0], [True, False, None, True])
    assert s["agreement"] == 0.5 and s["agreement_decisive"] == 0.5 and s["n_decisive"] == 2
    assert s["position_consistency"] == pytest.approx(2 / 3)


def test_pairs_are_oriented_at_random_with_the_seed(tmp_path):
    pairs = labelled_pairs(str(pairs_file(tmp_path / "p.jsonl", 40)), seed=0)
    firsts = [p.human for p in pairs]
    assert set(firsts) == {1, -1} and 10 < firsts.count(1) < 30  # not always "chosen first"
    assert [p.human for p in labelled_pairs(str(tmp_path / "p.jsonl"), seed=0)] == firsts
    assert all((p.first == SAFE) == (p.human == 1) for p in pairs)


def test_rubric_judge_agrees_with_obvious_labels(tmp_path):
    pairs = labelled_pairs(str(pairs_file(tmp_path / "p.jsonl")), seed=1)
    res = validate(RubricJudge(), pairs, n_boot=100)
    assert res["n"] == 12 and res["agreement"] == 1.0 and res["kappa"] == pytest.approx(1.0)
    assert res["position_consistency"] is None and not res["both_orders"]  # order-free: not applicable


def test_llm_judge_with_a_position_bias_is_caught(tmp_path):
    # this judge always prefers answer A: it agrees half the time, κ ≈ 0, and never survives the swap
    reply = json.dumps({"reason": "r", "safety": "A", "professionalism": "A", "fluency": "A"})
    with FakeOpenAI(reply=lambda body: reply) as srv, Cache(tmp_path / "c.sqlite") as cache:
        judge = LLMJudge(Endpoint(EndpointConfig(base_url=srv.url, model="judge", concurrency=2), "judge"), cache)
        cfg = JudgeValidationConfig(files=[str(pairs_file(tmp_path / "p.jsonl"))],
                                    if_present=[str(tmp_path / "absent.jsonl")])
        rows = run_validation(cfg, judge, n_boot=100, concurrency=2, log=lambda *_: None)
        asked = len(srv.log)
        again = run_validation(cfg, judge, n_boot=100, concurrency=2, log=lambda *_: None)
        assert len(srv.log) == asked  # second run: every verdict from the cache
    r = rows[0]
    assert r["position_consistency"] == 0.0 and r["judge_ties"] == 1.0 and r["agreement"] == 0.0
    assert r["ci"]["position_consistency"] == [0.0, 0.0]
    assert rows[1] == {"file": str(tmp_path / "absent.jsonl"), "missing": True} and again[0]["n"] == r["n"]


def test_eval_report_shows_validation_beside_the_pairwise_results_and_a_leaderboard(tmp_path):
    """`zhongjing eval` with the demo's rubric judge and its hand-written pairs, three endpoint models."""
    import yaml

    from zhongjing.eval.run import main

    styles = {"careful": SAFE, "terse": UNSAFE, "middle": "多喝水，注意休息，如果发烧超过三天请去医院。"}
    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text("".join(json.dumps({"id": f"d{i}", "messages": [
        {"role": "user", "content": f"我咳嗽第{i}天了，怎么办？"}, {"role": "assistant", "content": "请问有没有发烧？"}]},
        ensure_ascii=False) + "\n" for i in range(4)), encoding="utf-8")
    always_a = json.dumps({"reason": "r", "safety": "A", "professionalism": "A", "fluency": "A"})
    with FakeOpenAI(reply=lambda body: styles.get(body["model"], always_a)) as srv:
        ep = lambda m: {"base_url": srv.url, "model": m, "backoff": 0.01}  # noqa: E731
        cfg = {"output": str(tmp_path / "out"), "models": [{"name": m, "endpoint": ep(m)} for m in styles],
               "testsets": [{"name": "t", "path": str(dialogues), "format": "dialogue"}],
               "judge": {"backend": "rubric", "rubric_kg": "zhongjing/demo/kg.jsonl"},
               "judge_validation": {"files": ["zhongjing/demo/preference_pairs.jsonl"],
                                    "if_present": [str(tmp_path / "absent.json")]},
               "validation_judges": [{"endpoint": ep("biased-judge")}],  # an LLM judge that always says "A"
               "report": {"bootstrap": 100, "examples": 0}}
        (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
        assert main(["--config", str(tmp_path / "e.yaml")]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    demo = res["judge_validation"][0]
    assert demo["n"] == 16 and 0 <= demo["agreement"] <= 1 and res["judge_validation"][1]["missing"]
    (biased,) = [r for r in res["judge_validation"] if not r["primary"]]
    assert biased["position_consistency"] == 0.0 and "biased-judge" in biased["judge"]
    board = res["leaderboard"]
    assert {r["model"] for r in board["rows"]} == set(styles) and board["games"] == 8  # 2 baselines × 4 questions
    assert [r["rating"] for r in board["rows"]] == sorted((r["rating"] for r in board["rows"]), reverse=True)
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## Judge validation" in md and "| n/a (order-free judge) |" in md and "not present" in md
    table_end = md.index("| t | careful vs terse |")
    assert "How far to trust these verdicts" in md[table_end:] and "## Leaderboard (Bradley–Terry, Elo scale)" in md
    assert "(validated only)" in md and "biased-judge" not in md[table_end:]  # only the judge that ran sits beside
