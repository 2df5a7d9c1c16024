"""Issue 14 regressions for `zhongjing serve`: one bad request never hurts another, every bad input gets a
clear 4xx, the body is bounded, clients that leave stop their generation, the key stays out of `ps`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from serve_tiny import DIALOGUES, Server, chat_model_dir, messages, one_torch_thread  # noqa: F401  (fixtures)
from zhongjing.data.render import Renderer
from zhongjing.errors import ZhongjingError
from zhongjing.model.generation import SamplingParams, sample
from zhongjing.model.load import load_model, load_tokenizer
from zhongjing.serve.protocol import ApiError, parse_chat_request

NAN_KEYS = ("temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty")


def _body(**kw) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


@pytest.mark.parametrize("key", NAN_KEYS)
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_sampling_values_are_refused_by_the_parser(key, value):
    raw = json.dumps(_body())[:-1] + f', "{key}": {value}}}'
    with pytest.raises(ApiError) as e:
        parse_chat_request(raw.encode())
    assert e.value.status == 400


def test_non_finite_values_are_refused_by_the_engine_boundary_too():
    for key in NAN_KEYS:
        with pytest.raises(ZhongjingError, match="finite"):
            SamplingParams(8, **{key: float("nan")})
    with pytest.raises(ZhongjingError, match="finite"):
        SamplingParams(8, logit_bias={3: float("inf")})
    raw = json.dumps(_body(logit_bias={"5": 1}))[:-2] + '}, "x": 1}'  # sanity: a normal body parses
    assert parse_chat_request(json.dumps(_body(logit_bias={"5": 1})).encode()).logit_bias == {5: 1.0} and raw


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 5000 + b"1" + b"}" * 5000,
                                 json.dumps(_body(logit_bias={"\u00b2": 1})).encode(),  # a digit int() refuses
                                 json.dumps(_body(messages=[{"role": ["user"], "content": "x"}])).encode(),
                                 # half a UTF-16 pair: valid JSON, not text (the tokenizer raised: a 500 until now)
                                 json.dumps(_body(messages=[{"role": "user", "content": "头\ud800痛"}])).encode(),
                                 json.dumps(_body(stop=["\udc00"])).encode(),
                                 json.dumps(_body(stream=True, stream_options="yes")).encode(),  # was ignored
                                 json.dumps(_body(stream=True, stream_options={"include_usage": "no"})).encode(),
                                 json.dumps(_body(stream_options={"include_usage": True})).encode()])  # not streaming
def test_hostile_shapes_are_400(raw):
    with pytest.raises(ApiError) as e:
        parse_chat_request(raw)
    assert e.value.status == 400


@pytest.mark.parametrize("raw, words", [
    # an integer beyond a float's range where a float is read: OverflowError, a 500 with a traceback
    (json.dumps(_body())[:-1] + ', "temperature": 1' + "0" * 400 + "}", "is too large for a number"),
    (json.dumps(_body())[:-1] + ', "top_p": 9' + "9" * 308 + "}", "is too large for a number"),
    # a key named twice: readers disagree on which one counts, so a proxy's check and this server could differ
    ('{"model": "m", "model": "other", "messages": [{"role": "user", "content": "hi"}]}', "'model' appears twice"),
    ('{"model": "m", "messages": [{"role": "user", "role": "system", "content": "hi"}]}', "'role' appears twice"),
    # both limits, different: vLLM takes max_completion_tokens, this server took max_tokens — neither is safe
    (json.dumps(_body(max_tokens=4, max_completion_tokens=8)), "'max_tokens' (4) and 'max_completion_tokens' (8) differ"),
])
def test_huge_integers_repeated_keys_and_two_token_limits_are_400(raw, words):
    with pytest.raises(ApiError) as e:
        parse_chat_request(raw.encode())
    assert e.value.status == 400 and words in e.value.message, e.value.message
    assert parse_chat_request(json.dumps(_body(max_tokens=6, max_completion_tokens=6)).encode()).max_tokens == 6
    assert parse_chat_request(json.dumps(_body(max_completion_tokens=7)).encode()).max_tokens == 7


def test_a_broken_row_fails_only_its_own_request(chat_model_dir):
    """The batch mate of a request whose sampling breaks (NaN temperature got past validation) finishes with
    exactly the answer it gets alone; the broken request gets an error; the engine keeps serving."""
    from zhongjing.serve.engine import Engine

    tok = load_tokenizer(chat_model_dir)
    model, r = load_model(chat_model_dir), Renderer(tok, max_length=256)
    good_p, bad_p = r.prompt_ids(messages(DIALOGUES[1][:1])), r.prompt_ids(messages(DIALOGUES[0][:1]))
    ref = sample(model, tok, [good_p], max_new_tokens=40, temperature=1.2, seed=5)[0]
    engine = Engine(model, tok, max_batch=4)
    poisoned = SamplingParams(40, 1.0, seed=1)
    poisoned.temperature = float("nan")  # as a NaN from the wire did before the parser refused it
    good_events, bad_events, done = [], [], threading.Event()
    good = engine.submit(good_p, SamplingParams(40, 1.2, seed=5),
                         lambda k, row, p: (good_events.append(k), k == "done" and done.set()))
    engine.submit(bad_p, poisoned, lambda k, row, p: bad_events.append((k, p)), n=2)
    engine.start()
    assert done.wait(60)
    engine.close()
    assert good_events[-1] == "done" and good.rows[0].result().token_ids == ref.token_ids
    assert [k for k, _ in bad_events] == ["error"] and "non-finite" in bad_events[0][1]
    assert engine.load()["failed"] == 1 and len(engine.decoder) == 0


def test_prompt_longer_than_any_tokenisation_is_refused_before_tokenising(chat_model_dir):
    from zhongjing.serve.server import ServeState, longest_token

    tok = load_tokenizer(chat_model_dir)
    st = ServeState(None, tok, "m", 256, 40, token_chars=longest_token(tok))
    assert st.token_chars > 1
    req = parse_chat_request(json.dumps(_body(messages=[{"role": "user", "content": "痛" * (256 * st.token_chars + 1)}]))
                             .encode())
    with pytest.raises(ApiError) as e:
        st.check_length(req)
    assert e.value.code == "context_length_exceeded"
    st.check_length(parse_chat_request(json.dumps(_body()).encode()))  # a normal prompt passes


@pytest.fixture(scope="module")
def server(chat_model_dir, tmp_path_factory):
    key = tmp_path_factory.mktemp("key") / "key.txt"
    key.write_text("file-sekret\n")
    s = Server(chat_model_dir, "--model-name", "tiny", "--no-safety-prompt", "--max-batch", "4", "--max-body", "65536", "--api-key-file",
               str(key))
    yield s
    s.stop()


AUTH = {"Authorization": "Bearer file-sekret"}


def _chat(server, **kw) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **kw}


def test_key_from_a_file_nan_nesting_and_keep_alive(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer file-sekre"}).status_code == 401
        raw = json.dumps(_chat(server, max_tokens=4))[:-1] + ', "temperature": NaN}'
        r = c.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        deep = b'{"model": "x", "messages": ' + b"[" * 20000 + b"]" * 20000 + b"}"
        r = c.post("/v1/chat/completions", content=deep)
        assert r.status_code == 400 and "nested" in r.json()["error"]["message"]
        assert r.headers.get("connection", "").lower() != "close"
        ok = c.post("/v1/chat/completions", json=_chat(server, max_tokens=4, temperature=0))
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"


def test_large_body_is_refused_before_it_is_read(server):
    big = json.dumps(_chat(server, max_tokens=4)).replace('"hi"', json.dumps("头" * 100_000))
    r = httpx.post(server.url + "/v1/chat/completions", content=big, headers=AUTH, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_chat_page_has_a_content_security_policy(server):
    r = httpx.get(server.url + "/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "<style" not in r.text
    assert httpx.get(server.url + "/chat.css").status_code == 200


def test_non_streaming_client_that_leaves_stops_its_generation(server, chat_model_dir):
    tok = load_tokenizer(chat_model_dir)
    before = server.health()
    ban = {str(i): -100 for i in (tok.eos_token_id, tok.pad_token_id)}  # no row ends by itself
    body = _chat(server, max_tokens=230, n=16, temperature=1.0, seed=2, logit_bias=ban)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=0.3)
    deadline = time.time() + 30
    while time.time() < deadline:
        after = server.health()
        if after["cancelled"] > before["cancelled"] and not after["running_rows"]:
            break
        time.sleep(0.1)
    assert after["cancelled"] == before["cancelled"] + 1 and after["completed"] == before["completed"], (before, after)


def test_api_key_sources_and_constant_time_compare(tmp_path, monkeypatch):
    import inspect

    from zhongjing.serve import server as srv

    args = srv.build_parser().parse_args(["--model", "x"])
    monkeypatch.setenv(srv.API_KEY_ENV, "from-env")
    assert srv.api_key_from(args) == "from-env"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ZhongjingError, match="empty"):
        srv.api_key_from(srv.build_parser().parse_args(["--model", "x", "--api-key-file", str(empty)]))
    assert "compare_digest" in inspect.getsource(srv.create_app)


def test_missing_key_file_is_one_line_before_loading(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "zhongjing", "serve", "--model", str(tmp_path / "nope"), "--port",
                           str(port), "--api-key-file", str(tmp_path / "missing")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "--api-key-file" in proc.stderr


def test_lone_surrogate_is_a_400_naming_the_field_and_the_server_keeps_serving(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        raw = json.dumps(_chat(server, max_tokens=4)).replace('"content": "', '"content": "\\ud800', 1)
        r = c.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "messages[0].content" in r.json()["error"]["message"], r.text
        assert c.post("/v1/chat/completions", json=_chat(server, max_tokens=4)).status_code == 200
