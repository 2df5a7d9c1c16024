"""The pairwise judge against a real loopback OpenAI-compatible server with scripted replies:
position swap, retries of unparseable replies, transport failures, the on-disk cache, concurrency."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from fake_openai import FakeOpenAI
from zhongjing.llm.cache import Cache
from zhongjing.llm.client import Endpoint, EndpointConfig
from zhongjing.eval.judge import LLMJudge, PairTask, RewardJudge, build_prompt, judge_pairs
from zhongjing.eval.stats import summarize

DIMS = ("safety", "professionalism", "fluency")

# What the scripted judge thinks of each question: for each dimension who is better, "T" (target), "O" (other),
# "=" (tie), or "pos-A" (whatever is shown first: pure position bias). Special behaviours for q5/q6.
SCRIPT = {
    "q1": ("T", "T", "T"),
    "q2": ("pos-A", "pos-A", "pos-A"),
    "q3": ("=", "T", "O"),
    "q4": ("O", "T", "T"),
    "q5": "garbage",  # never parseable → recorded failure after the retries
    "q6": "garbage-once",  # parseable after the correction note → counts normally (prefers the target)
}


def answers_in(prompt: str) -> tuple[str, str]:
    a = prompt.split("【回答A】\n")[1].split("\n\n【回答B】")[0]
    b = prompt.split("【回答B】\n")[1].split("\n\n【评审要求】")[0]
    return a, b


CORRECTIONS: list[str] = []  # the follow-up notes the judge received after an unparseable reply


def scripted_judge(body: dict) -> str:
    msgs = body["messages"]
    if len(msgs) > 2:
        CORRECTIONS.append(msgs[-1]["content"])
    a, b = answers_in(msgs[1]["content"])
    q = re.match(r"(q\d)", a).group(1)
    target_is_a = a.endswith("-target")
    plan = SCRIPT[q]
    if plan == "garbage":
        return "两个回答各有千秋，我无法判断。"
    if plan == "garbage-once":
        if len(msgs) == 2:
            return "我认为回答A更好一些（但没有给出JSON）"
        plan = ("T", "T", "T")
    pick = {"T": "A" if target_is_a else "B", "O": "B" if target_is_a else "A", "=": "tie", "pos-A": "A"}
    return json.dumps({"reason": "按标准比较", **{d: pick[p] for d, p in zip(DIMS, plan)}}, ensure_ascii=False)


def tasks() -> list[PairTask]:
    ctx = [{"role": "user", "content": "医生，我最近总是头晕。"}]
    return [PairTask(q, q, ctx, f"{q}-target", f"{q}-other") for q in SCRIPT]


def make_judge(srv, cache, **kw) -> LLMJudge:
    cfg = EndpointConfig(base_url=srv.url, model="judge", backoff=0.01, concurrency=kw.pop("concurrency", 2),
                         retries=kw.pop("retries", 3), timeout=5)
    return LLMJudge(Endpoint(cfg, "judge"), cache, DIMS, **kw)


def test_position_swap_retries_failures_and_cache(tmp_path):
    CORRECTIONS.clear()
    with FakeOpenAI(scripted_judge) as srv, Cache(tmp_path / "c.sqlite") as cache:
        judge = make_judge(srv, cache)
        judged, raw = judge_pairs(judge, tasks(), concurrency=2)
        # q1..q4: 2 orders × 1 request; q5: 2 × (1 + 2 retries); q6: 2 × 2
        assert len(srv.log) == 4 * 2 + 6 + 4
        rates = summarize(judged, DIMS, priority=DIMS, n_boot=500)
        # hand-computed over the 5 decided questions (q1 q2 q3 q4 q6); q2's position bias becomes a tie
        expect = {"safety": (2, 2, 1), "professionalism": (4, 1, 0), "fluency": (3, 1, 1), "overall": (3, 1, 1)}
        for d, (w, t, l) in expect.items():
            r = rates[d]
            assert (r.win, r.tie, r.lose, r.failed) == (w, t, l, 1), d
            assert r.win_rate == pytest.approx(w / 5) and r.consistency == pytest.approx(4 / 5)
        assert raw["q5"]["first"]["status"] == "unparseable" and len(raw["q5"]["first"]["replies"]) == 3
        assert raw["q6"]["second"]["status"] == "ok" and len(raw["q6"]["second"]["replies"]) == 2
        # each re-ask carries a note saying why the reply was rejected and asking for JSON only
        assert len(CORRECTIONS) == 2 * 2 + 2 and all("JSON" in c and "无法解析" in c for c in CORRECTIONS)

        # a second judge over the same cache asks nothing, and gets the same numbers
        n = len(srv.log)
        judged2, _ = judge_pairs(make_judge(srv, cache), tasks(), concurrency=2)
        assert len(srv.log) == n
        assert [j.combined() for j in judged2] == [j.combined() for j in judged]
        # failures are kept unless asked to retry them: then only q5's two orders are asked again (3 tries each)
        judge_pairs(make_judge(srv, cache, retry_failed=True), tasks(), concurrency=2)
        assert len(srv.log) == n + 6


def test_transport_failures_are_retried_and_never_cached(tmp_path):
    fails = ("429", "500", "garbage_body", "no_choices", "empty_content")
    with FakeOpenAI(scripted_judge, failure_rate=1.0, failures=fails, max_failures=2) as srv, \
            Cache(tmp_path / "c.sqlite") as cache:
        # every request fails twice: with one retry the judge gives up → "error", not cached
        judged, raw = judge_pairs(make_judge(srv, cache, retries=1), tasks()[:1], concurrency=1)
        assert judged[0].combined() is None and raw["q1"]["first"]["status"] == "error"
        assert cache.count("judge") == 0
        # with enough retries the same question succeeds (the fake lets the third attempt through)
        judged, raw = judge_pairs(make_judge(srv, cache, retries=3), tasks()[:1], concurrency=1)
        assert judged[0].combined() == {"safety": 1, "professionalism": 1, "fluency": 1}
        assert cache.count("judge") == 2


def test_identical_answers_and_missing_answers_are_not_sent(tmp_path):
    ctx = [{"role": "user", "content": "头疼"}]
    with FakeOpenAI(scripted_judge) as srv, Cache(tmp_path / "c.sqlite") as cache:
        judged, _ = judge_pairs(make_judge(srv, cache),
                                [PairTask("s", "s", ctx, "同样的回答", "同样的回答 "), PairTask("m", "m", ctx, None, "x")])
        assert len(srv.log) == 0
        assert judged[0].combined() == {d: 0 for d in DIMS}
        assert judged[1].combined() is None


def test_concurrency_limit_is_respected(tmp_path):
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow(body):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return json.dumps({d: "tie" for d in DIMS})

    ctx = [{"role": "user", "content": "头疼"}]
    many = [PairTask(f"q{i}", f"q{i}", ctx, f"甲{i}", f"乙{i}") for i in range(12)]
    with FakeOpenAI(slow) as srv, Cache(tmp_path / "c.sqlite") as cache:
        judge_pairs(make_judge(srv, cache, concurrency=3), many, concurrency=3)
        assert len(srv.log) == 24
        assert 1 < state["max"] <= 3


def test_prompt_carries_rubric_history_and_strict_json_request():
    ctx = [{"role": "user", "content": "孩子发烧两天。"}, {"role": "assistant", "content": "最高体温多少？"},
           {"role": "user", "content": "39度。"}]
    msgs = build_prompt(ctx, "答甲", "答乙")
    text = msgs[1]["content"]
    assert "最高体温多少？" in text and "39度。" in text  # the gold history, then the turn to answer
    assert text.index("安全性") < text.index("专业性") < text.index("流畅性")
    assert "主动问诊" in text and "JSON" in text
    assert build_prompt(ctx, "答甲", "答乙", ("safety",))[1]["content"].count("专业性") == 0


def test_reward_model_judge_is_a_small_adapter():
    calls = []

    def scorer(contexts, answers):
        calls.append(len(answers))
        return [float(len(a)) for a in answers]  # the longer answer "wins"

    judge = RewardJudge(scorer, margin=1.0)
    ctx = [{"role": "user", "content": "头疼"}]
    judged, _ = judge_pairs(judge, [PairTask("a", "a", ctx, "很长的一个回答", "短"),
                                    PairTask("b", "b", ctx, "短", "很长的一个回答"),
                                    PairTask("c", "c", ctx, "一二", "一")])  # |diff| ≤ margin → tie
    assert [j.combined() for j in judged] == [{"reward": 1}, {"reward": -1}, {"reward": 0}]
    assert calls == [2, 2, 2]  # one order only: a reward model has no position bias
    r = summarize(judged, ("reward",), n_boot=100)["reward"]
    assert (r.win, r.tie, r.lose) == (1, 1, 1) and r.consistency is None


def test_rubric_judge_follows_the_priority_and_needs_no_llm():
    from zhongjing.eval.judge import RubricJudge

    judge = RubricJudge()
    ctx = [{"role": "user", "content": "我突然胸痛，喘不上气，怎么办？"}]
    safe = "这可能很危险，请立即拨打120或去急诊。"
    unsafe = "不用去医院，休息一下就好了，不要紧的。"
    v = judge.judge_pair(ctx, safe, unsafe)
    assert v.status == "ok" and v.verdict["safety"] == "A"
    assert judge.judge_pair(ctx, unsafe, safe).verdict["safety"] == "B"
    same = judge.judge_pair(ctx, safe, safe).verdict
    assert same == {"safety": "tie", "professionalism": "tie", "fluency": "tie"}
    tasks = [PairTask("q1", "q1", ctx, safe, unsafe), PairTask("q2", "q2", ctx, unsafe, safe)]
    judged, _ = judge_pairs(judge, tasks)
    assert len(judged) == 2


def test_final_advice_is_judged_on_the_whole_case_and_a_question_earns_nothing():
    """Issue 17: a consultation's last turn is judged as advice. Mid-dialogue the rubric pays a first doctor turn
    for asking (+0.3 professionalism); as final advice the same question earns nothing, and the prompt an LLM judge
    reads shows the patient's whole case instead of a dialogue to continue."""
    from zhongjing.eval.judge import RubricJudge

    judge = RubricJudge()
    ctx = [{"role": "user", "content": "咳嗽三天了，有黄痰，晚上咳得睡不着\n吃过止咳糖浆；没有发烧"}]
    question = "咳嗽多久了？有没有发烧？"
    advice = "咳嗽有黄痰、止咳糖浆效果不好，建议查血常规，晚上垫高枕头，发烧就及时就医。"
    assert judge.judge_pair(ctx, question, advice).verdict["professionalism"] == "A"  # asking, on a first turn
    assert judge.judge_pair(ctx, question, advice, final=True).verdict["professionalism"] == "B"
    assert judge.judge_pair(ctx, question, advice).replies[0].startswith("(1.0, 0.5105,")  # 0.2105 overlap + 0.3
    assert judge.judge_pair(ctx, question, advice, final=True).replies[0].startswith("(1.0, 0.2105,")

    seen = []

    class Recording:
        both_orders, dimensions, describe = False, DIMS, "recording"

        def judge_pair(self, context, a, b, dimensions=None, final=False):
            seen.append(final)
            from zhongjing.eval.judge import Verdict
            return Verdict("ok", {d: "tie" for d in DIMS})

    judge_pairs(Recording(), [PairTask("f", "f", ctx, question, advice, final=True),
                              PairTask("t", "t", ctx, question, advice)])
    assert seen == [True, False]
    text = build_prompt(ctx, question, advice, final=True)[1]["content"]
    assert "患者的全部情况" in text and "止咳糖浆" in text and "最终建议" in text and "此前的对话" not in text


def test_exam_requests_that_fail_are_skipped_not_wrong(tmp_path):
    """An endpoint that is down must not score 0% "unparsed": failures are left out and asked again later."""
    from conftest import REPO
    from zhongjing.eval import exams as ex

    exam = ex.load_exam(ex.ExamConfig(name="e", path=str(REPO / "zhongjing" / "demo" / "exam.jsonl"), format="exam",
                                      limit=4, debias="none"))  # 4 requests, not 4 × the cyclic option shifts
    cfg = dict(model="m", backoff=0.01, retries=0, timeout=5, concurrency=2)
    with Cache(tmp_path / "c.sqlite") as cache:
        with FakeOpenAI(lambda body: "答案：A", failure_rate=1.0, failures=("500",), max_failures=99) as down:
            preds = ex.endpoint_predictions(Endpoint(EndpointConfig(base_url=down.url, **cfg), "m"), exam, 0, 0, cache)
        s = ex.score(exam, preds)
        assert (s["n"], s["unparsed"], s["skipped"]) == (0, 0, 4) and cache.count("exam") == 0
        seen = []
        with FakeOpenAI(lambda body: "答案：A") as up:  # back up: every question is asked and scored
            preds = ex.endpoint_predictions(Endpoint(EndpointConfig(base_url=up.url, **cfg), "m"), exam, 0, 0, cache,
                                            progress=lambda done, total: seen.append((done, total)))
        s = ex.score(exam, preds)
        assert (s["n"], s["unparsed"], s["skipped"]) == (4, 0, 0)
        assert seen == [(i, 4) for i in range(1, 5)]  # progress for a long exam
        assert s["accuracy"] == sum(it.answer == "A" for it in exam.items) / 4
