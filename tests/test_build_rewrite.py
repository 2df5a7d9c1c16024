"""Doctor-turn rewriting against a real loopback OpenAI-compatible server with injected failures."""

from __future__ import annotations

import pytest

from fake_openai import FakeOpenAI, original_reply, warm_rewrite
from zhongjing.dataset.cache import RewriteCache
from zhongjing.data.matcher import DictMatcher
from zhongjing.dataset.report import StepReport
from zhongjing.dataset.rewrite import RewriteConfig, check_rewrite, run_rewrite
from zhongjing.data.schema import Dialogue, Message
from zhongjing.errors import ZhongjingError


def _dialogues(n: int = 12) -> list[Dialogue]:
    out = []
    for i in range(n):
        out.append(Dialogue(f"d{i}", [
            Message("user", f"我头疼{i}天了，吃了布洛芬也没用。"),
            Message("assistant", f"疼的时候有没有恶心？量过血压吗？（病例{i}）"),
            Message("user", "没有恶心，血压150/95。"),
            Message("assistant", f"可能是高血压引起的，建议口服氨氯地平5mg，每天1次，{i + 2}周后复查。"),
        ]))
    return out


def _cfg(url: str, **kw) -> RewriteConfig:
    base = dict(enabled=True, base_url=url, model="fake-model", timeout=1.0, backoff_base=0.01, backoff_max=0.05,
                max_retries=6, concurrency=4)
    return RewriteConfig(**{**base, **kw})


DRUGS = DictMatcher([("布洛芬", ("drug", "布洛芬")), ("氨氯地平", ("drug", "氨氯地平")), ("阿司匹林", ("drug", "阿司匹林"))])


def test_rewrites_doctor_turns_through_failures_and_caches(tmp_path):
    ds = _dialogues()
    with FakeOpenAI(failure_rate=0.4, timeout_sleep=1.5) as srv:
        rep = StepReport("rewrite")
        out = run_rewrite(ds, _cfg(srv.url), rep, str(tmp_path / "c.sqlite"), DRUGS)
        failures = [e for e in srv.log if e["status"] != 200]
        assert failures, "the server should have injected failures"
        assert rep.counts["rewritten"] == 24 and rep.counts["requests_needed"] == 24
        assert sum(v for k, v in rep.counts.items() if k.startswith("retry:")) == len(failures)
        for a, b in zip(ds, out):
            assert [m.content for m in a.messages if m.role == "user"] == [m.content for m in b.messages if m.role == "user"]
            for ma, mb in zip(a.messages, b.messages):
                if ma.role == "assistant":
                    assert mb.content.startswith("您好") and ma.content in mb.content
        n_before = len(srv.log)
        rep2 = StepReport("rewrite")
        out2 = run_rewrite(ds, _cfg(srv.url), rep2, str(tmp_path / "c.sqlite"), DRUGS)
        assert len(srv.log) == n_before, "a rerun must be served from the cache"
        assert rep2.counts["cache_hits"] == 24 and [d.to_dict() for d in out2] == [d.to_dict() for d in out]


def test_rejects_rewrites_that_change_medical_content(tmp_path):
    def lossy(body):  # drops every digit and swaps the drug: must be refused
        orig = original_reply(body) or ""
        return "您好，" + "".join(c for c in orig if not c.isdigit()).replace("氨氯地平", "阿司匹林")

    ds = _dialogues(3)
    with FakeOpenAI(reply=lossy) as srv:
        rep = StepReport("rewrite")
        out = run_rewrite(ds, _cfg(srv.url), rep, str(tmp_path / "c.sqlite"), DRUGS)
    assert rep.counts["kept_original:dropped_facts"] == 6 and rep.counts["rewritten"] == 0
    assert [d.to_dict()["messages"] for d in out] == [d.to_dict()["messages"] for d in ds]


def test_check_rewrite_rules():
    cfg = RewriteConfig()
    orig = "建议口服氨氯地平5mg，每天一次。"
    assert check_rewrite(orig, "您好，建议您口服氨氯地平5mg，每天一次，注意监测血压。", cfg, DRUGS) is None
    assert check_rewrite(orig, "您好，建议您口服氨氯地平，每天一次。", cfg, DRUGS) == "dropped_facts"
    assert check_rewrite(orig, "建议口服氨氯地平5mg，每天一次，也可加阿司匹林。", cfg, DRUGS) == "added_drug"
    assert check_rewrite(orig, "", cfg, DRUGS) == "empty"
    assert check_rewrite(orig * 10, "好的。", cfg, DRUGS) == "too_short"


def test_failed_requests_keep_original_and_are_retried_next_run(tmp_path):
    ds = _dialogues(2)
    with FakeOpenAI(failure_rate=1.0, failures=("500",), max_failures=100) as srv:
        rep = StepReport("rewrite")
        out = run_rewrite(ds, _cfg(srv.url, max_retries=1), rep, str(tmp_path / "c.sqlite"), DRUGS)
        assert rep.counts["requests_failed"] == 4 and rep.counts["kept_original:request_failed"] == 4
        assert rep.counts["retry:http_500"] == 8
        assert [d.to_dict()["messages"] for d in out] == [d.to_dict()["messages"] for d in ds]
        with RewriteCache(tmp_path / "c.sqlite") as cache:
            assert len(cache) == 0  # failures are never cached


def test_refused_request_is_one_line_error(tmp_path):
    with FakeOpenAI(reply=lambda body: (401, {"error": {"message": "bad key", "type": "auth"}})) as srv:
        with pytest.raises(ZhongjingError, match="HTTP 401") as e:
            run_rewrite(_dialogues(6), _cfg(srv.url), StepReport("rewrite"), str(tmp_path / "c.sqlite"), DRUGS)
        assert len(srv.log) < 12, "a refusal stops the run instead of trying every turn"
    assert "\n" not in str(e.value) and "头疼" not in str(e.value)


def test_dry_run_prints_prompts_and_sends_nothing(tmp_path, capsys):
    with FakeOpenAI() as srv:
        rep = StepReport("rewrite")
        out = run_rewrite(_dialogues(2), _cfg(srv.url, dry_run=True, dry_run_limit=2), rep, str(tmp_path / "c.sqlite"))
        assert srv.log == []
    err = capsys.readouterr().err
    assert err.count("----- request") == 2 and "【原始回复】" in err and "疼的时候有没有恶心" in err
    assert out[0].messages[1].content == "疼的时候有没有恶心？量过血压吗？（病例0）"


def test_fake_default_reply_is_reusable():
    body = {"messages": [{"role": "user", "content": "评判：A 还是 B？"}]}
    assert warm_rewrite(body) == "好的。"
    with FakeOpenAI(reply=lambda b: "A") as srv:
        import openai

        r = openai.OpenAI(base_url=srv.url, api_key="k").chat.completions.create(model="judge", messages=body["messages"])
        assert r.choices[0].message.content == "A"


def test_ctrl_c_stops_sending_at_once(tmp_path):
    # Ctrl-C (or any error) mid-rewrite must not wait for the whole queue: that kept paying for
    # hundreds of replies nobody stores, and the command did not return
    import time

    def interrupt_after_first(it, **kw):
        for i, x in enumerate(it):
            if i == 1:
                raise KeyboardInterrupt
            yield x

    ds = _dialogues(150)  # 300 requests at 0.1 s each over 2 connections: 15 s if the queue were drained
    with FakeOpenAI(delay=0.1) as srv:
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_rewrite(ds, _cfg(srv.url, concurrency=2), StepReport("rewrite"), str(tmp_path / "c.sqlite"),
                        progress=interrupt_after_first)
        assert time.monotonic() - t0 < 3
        time.sleep(0.5)  # the in-flight requests finish; nothing queued may follow them
        assert len(srv.log) <= 6
    with RewriteCache(str(tmp_path / "c.sqlite")) as cache:
        assert len(cache) == 1  # the reply that arrived before Ctrl-C is kept for the rerun


def test_endpoint_that_stays_down_stops_the_step(tmp_path):
    # a dead endpoint used to be retried turn after turn (hours on a real build) and the build then
    # "finished" with nothing rewritten; a run of failures now stops it with one line
    from zhongjing.dataset.rewrite import DOWN_AFTER

    ds = _dialogues(40)  # 80 requests
    with FakeOpenAI(failure_rate=1.0, failures=("500",), max_failures=10_000) as srv:
        with pytest.raises(ZhongjingError, match="looks down") as e:
            run_rewrite(ds, _cfg(srv.url, max_retries=1, concurrency=2), StepReport("rewrite"),
                        str(tmp_path / "c.sqlite"), DRUGS)
        assert len(srv.log) < 2 * (DOWN_AFTER + 4), "the remaining turns are not tried"
    assert "\n" not in str(e.value) and "头疼" not in str(e.value) and "http_500" in str(e.value)


@pytest.mark.parametrize("override", ["rewrite.max_retries=-1", "rewrite.concurrency=0", "rewrite.timeout=0",
                                      "rewrite.min_length_ratio=6"])
def test_rewrite_settings_out_of_range_are_one_line_config_errors(override):
    # max_retries -1 sent nothing and reported every turn as a failed request
    from zhongjing.dataset.chain import BuildConfig
    from zhongjing.config import load_config
    from zhongjing.errors import ConfigError

    with pytest.raises(ConfigError, match=override.split("=")[0]) as e:
        load_config(BuildConfig, None, [override])
    assert "\n" not in str(e.value)
