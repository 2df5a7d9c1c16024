"""`zhongjing serve` against the official `openai` client on a real uvicorn server on loopback."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from serve_tiny import DIALOGUES, Server, chat_model_dir, messages, one_torch_thread  # noqa: F401  (fixtures)
from zhongjing.data.render import Renderer
from zhongjing.model.generation import sample
from zhongjing.model.load import load_model, load_tokenizer

openai = pytest.importorskip("openai")
NAME = "zhongjing-tiny"


@pytest.fixture(scope="module")
def server(chat_model_dir):
    s = Server(chat_model_dir, "--model-name", NAME, "--no-safety-prompt", "--max-batch", "4", "--queue", "16")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(chat_model_dir):
    """The same model in-process: what the server must reproduce."""
    tok = load_tokenizer(chat_model_dir)
    model, r = load_model(chat_model_dir), Renderer(tok, max_length=256)

    def gen(msgs, **kw):
        return sample(model, tok, [r.prompt_ids(msgs)], **{"max_new_tokens": 64, **kw})

    gen.prompt_len = lambda msgs: len(r.prompt_ids(msgs))
    return gen


def test_models_and_greedy_completion(client, local):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    for d in DIALOGUES[:3]:
        msgs = messages(d[:1])
        r = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=64)
        ref = local(msgs, temperature=0)[0]
        assert r.choices[0].message.content == ref.text and ref.text
        assert r.choices[0].finish_reason == "stop" and r.choices[0].message.role == "assistant"
        assert r.usage.prompt_tokens == local.prompt_len(msgs)
        assert r.usage.completion_tokens == len(ref.token_ids)
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_multi_turn_and_streaming(client, local):
    msgs = messages(DIALOGUES[2][:3])
    ref = local(msgs, temperature=0)[0]
    chunks = list(client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=64, stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas and "".join(deltas) == ref.text  # how many pieces depends on timing: the server joins what is ready
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.token_ids)
    assert len({c.id for c in chunks}) == 1


def test_n_seed_and_sampling_params(client, local):
    msgs = messages(DIALOGUES[1][:1])
    kw = dict(temperature=1.8, top_p=0.95, seed=123)
    r = client.chat.completions.create(model=NAME, messages=msgs, n=3, max_tokens=20, **kw)
    again = client.chat.completions.create(model=NAME, messages=msgs, n=3, max_tokens=20, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert texts == [c.message.content for c in again.choices]  # the seed reproduces
    ref = local(msgs, num_samples=3, max_new_tokens=20, **kw)  # same per-sample seeds as in-process sampling
    assert texts == [g.text for g in ref] and len(set(texts)) > 1
    assert r.usage.completion_tokens == sum(len(g.token_ids) for g in ref)
    pen = dict(temperature=0, frequency_penalty=0.8, presence_penalty=0.4, extra_body={"repetition_penalty": 1.3})
    r = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=20, **pen)
    ref = local(msgs, max_new_tokens=20, temperature=0, frequency_penalty=0.8, presence_penalty=0.4,
                repetition_penalty=1.3)
    assert r.choices[0].message.content == ref[0].text
    streamed = ["", "", ""]
    for c in client.chat.completions.create(model=NAME, messages=msgs, n=3, max_tokens=20, stream=True, **kw):
        for ch in c.choices:
            streamed[ch.index] += ch.delta.content or ""
    assert streamed == texts


def test_stop_sequences_and_length(client, local):
    msgs = messages(DIALOGUES[1][:1])
    full = local(msgs, temperature=0)[0].text
    stop = full[6:8]
    r = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, stop=[stop, "zzz"], max_tokens=64)
    assert r.choices[0].message.content == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=NAME, messages=msgs, temperature=0, stop=stop, max_tokens=64, stream=True) if c.choices)
    assert text == full[: full.index(stop)]
    r = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def _post(server, body, raw=False):
    data = body if raw else json.dumps(body)
    return httpx.post(server.url + "/v1/chat/completions", content=data, headers={"Content-Type": "application/json"},
                      timeout=30)


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, "invalid_json"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model_not_found"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}, 400, "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "头痛" * 300}]}, 400, "context_length_exceeded"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 250}, 400, "context_length_exceeded"),
    ({"model": NAME, "messages": []}, 400, "invalid_value"),
    ({"model": NAME}, 400, "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "missing_required_parameter"),
    ({"model": NAME, "messages": [{"role": "doctor", "content": "hi"}]}, 400, "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 400,
     "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]}, 400,
     "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400,
     "unsupported_content"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 400, "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 2.5}, 400, "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "repetition_penalty": 0}, 400, "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "stop": [""]}, 400, "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "temprature": 0}, 400, "unknown_parameter"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, 400,
     "unsupported_parameter"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
     400, "unsupported_parameter"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "tool_choice": "auto"}, 400,
     "unsupported_parameter"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 101}}, 400, "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"x": 1}}, 400, "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"9999999": 1}}, 400,
     "invalid_value"),
    ({"model": NAME, "messages": [{"role": "user", "content": "hi"}], "logit_bias": [1]}, 400, "invalid_type"),
    ([1, 2], 400, "invalid_json"),
])
def test_bad_requests_get_openai_style_errors(server, body, status, code):
    r = _post(server, body, raw=isinstance(body, bytes))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]


def test_neutral_values_that_clients_send_by_default_are_accepted(client):
    """SDK wrappers send response_format={"type": "text"} / tool_choice="none" explicitly: plain chat, no tools."""
    r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       response_format={"type": "text"}, tool_choice="none", top_logprobs=0)
    assert r.choices[0].message.role == "assistant"


def test_logit_bias_bans_and_forces_tokens(client, local, chat_model_dir):
    from zhongjing.model.load import load_tokenizer

    tok = load_tokenizer(chat_model_dir)
    msgs = messages(DIALOGUES[0][:1])
    greedy = local(msgs, max_new_tokens=12, temperature=0)[0]
    banned = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=12,
                                            logit_bias={str(greedy.token_ids[0]): -100}).choices[0].message.content
    assert banned != greedy.text and not banned.startswith(tok.decode(greedy.token_ids[:1]))
    one_char = next(i for i in range(len(tok)) if len(tok.decode([i])) == 1 and "\u4e00" <= tok.decode([i]) <= "\u9fff")
    forced = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=4,
                                            logit_bias={str(one_char): 100}).choices[0].message.content
    assert forced == tok.decode([one_char]) * 4


def test_client_library_raises_its_usual_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "咳" * 600}])
    assert httpx.get(client.base_url.__str__().rstrip("/") + "/nothing").status_code == 404


def test_concurrent_clients_get_independent_answers(server, client, local):
    cases = [(messages(d[:1]), {"temperature": 0}) for d in DIALOGUES]
    cases += [(messages(DIALOGUES[i][:1]), {"temperature": 1.5, "seed": 7 + i}) for i in range(4)]
    out: dict[int, str] = {}
    barrier = threading.Barrier(len(cases))

    def ask(i, msgs, kw):
        barrier.wait()
        out[i] = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=48, **kw).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i, m, kw)) for i, (m, kw) in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, (msgs, kw) in enumerate(cases):
        assert out[i] == local(msgs, max_new_tokens=48, **kw)[0].text, i
    assert server.health()["max_rows"] >= 2  # requests really shared decoding steps


def test_stream_disconnect_frees_the_batch(server, chat_model_dir):
    from zhongjing.model.load import load_tokenizer

    tok = load_tokenizer(chat_model_dir)
    before = server.health()
    ban = {str(i): -100 for i in (tok.eos_token_id, tok.pad_token_id)}  # no row can end by itself
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "stream": True, "temperature": 1.0,
            "max_tokens": 230, "n": 16, "seed": 1, "logit_bias": ban}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.time() + 30
    while time.time() < deadline:  # the engine may not have picked the request up yet: wait for it to end
        after = server.health()
        ended = after["cancelled"] > before["cancelled"] or after["completed"] > before["completed"]
        if ended and not after["running_rows"]:
            break
        time.sleep(0.05)
    assert after["running_rows"] == 0
    # it stopped because the client left, not because it ran to the end
    assert after["cancelled"] == before["cancelled"] + 1 and after["completed"] == before["completed"], (before, after)


def test_full_queue_is_refused_and_api_key_checked(chat_model_dir):
    s = Server(chat_model_dir, "--no-safety-prompt", "--max-batch", "1", "--queue", "2", "--api-key", "sekret",
               "--allow-origin", "https://ward.example")
    try:
        name = chat_model_dir.name
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "temperature": 2.0, "max_tokens": 150}
        assert httpx.post(s.url + "/v1/chat/completions", json=body).status_code == 401
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer sekret"}
        pre = httpx.options(s.url + "/v1/chat/completions", headers={
            "Origin": "https://ward.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://ward.example"
        other = httpx.options(s.url + "/v1/chat/completions", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
        results = []

        def ask():
            results.append(httpx.post(s.url + "/v1/chat/completions", json=body, headers=auth, timeout=120))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) >= 2 and 503 in codes and set(codes) <= {200, 503}, codes
        busy = next(r for r in results if r.status_code == 503)
        assert busy.json()["error"]["code"] == "server_overloaded" and busy.headers["retry-after"]
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="sekret", max_retries=0)
        assert ok.chat.completions.create(model=name, messages=body["messages"], max_tokens=4).choices[0].message
    finally:
        s.stop()


def test_prompt_rendering_safety_prompt_and_history_truncation(chat_model_dir):
    from zhongjing.serve import SAFETY_PROMPT
    from zhongjing.serve.protocol import ApiError, ChatRequest
    from zhongjing.serve.server import ServeState

    tok = load_tokenizer(chat_model_dir)
    long_chat = [m for d in DIALOGUES for m in messages(d)] + [{"role": "user", "content": "还有别的建议吗？"}]
    st = ServeState(None, tok, NAME, context=120, max_tokens=40, system_prompt="安全提示")
    ids, max_new = st.prompt_for(ChatRequest(NAME, messages(DIALOGUES[0][:1])))
    assert tok.decode(ids).startswith("<|im_start|>system\n安全提示") and max_new == 40
    own = [{"role": "system", "content": "自己的"}] + messages(DIALOGUES[0][:1])
    assert "安全提示" not in tok.decode(st.prompt_for(ChatRequest(NAME, own))[0])  # the client's own wins
    with pytest.raises(ApiError) as e:
        st.prompt_for(ChatRequest(NAME, long_chat, max_tokens=30))
    assert e.value.code == "context_length_exceeded"
    st.truncate_history = True
    ids, max_new = st.prompt_for(ChatRequest(NAME, long_chat, max_tokens=30))
    text = tok.decode(ids)
    assert len(ids) + 30 <= 120 and text.startswith("<|im_start|>system\n安全提示") and "还有别的建议吗" in text
    assert DIALOGUES[0][0][1] not in text and max_new == 30
    assert SAFETY_PROMPT and ServeState(None, tok, NAME, 256, 40, SAFETY_PROMPT).prompt_for(
        ChatRequest(NAME, messages(DIALOGUES[0][:1])))[1] == 40


def test_engine_cancel_drops_rows_and_leaves_others_intact(chat_model_dir):
    """In-process: cancel one request mid-batch; the other's answer must equal a run on its own."""
    from zhongjing.model.generation import SamplingParams
    from zhongjing.serve.engine import Engine

    tok = load_tokenizer(chat_model_dir)
    model, r = load_model(chat_model_dir), Renderer(tok, max_length=256)
    keep_p, cancel_p = r.prompt_ids(messages(DIALOGUES[1][:1])), r.prompt_ids(messages(DIALOGUES[0][:1]))
    ref = sample(model, tok, [keep_p], max_new_tokens=60, temperature=1.5, seed=3)[0]
    engine = Engine(model, tok, max_batch=4)
    got, texts = threading.Event(), []
    kept = engine.submit(keep_p, SamplingParams(60, 1.5, seed=3), lambda k, row, p: k == "done" and got.set())
    doomed = engine.submit(cancel_p, SamplingParams(240, 2.0, seed=1), lambda k, row, p: texts.append(k), n=3)
    engine.decoder.admit(engine._take()[0])  # drive the worker by hand: admit both, run a few steps
    for _ in range(3):
        engine.decoder.step()
    engine.cancel(doomed)
    engine.start()
    assert got.wait(60)
    engine.close()
    assert kept.rows[0].result().token_ids == ref.token_ids
    assert all(row.finish_reason == "cancelled" for row in doomed.rows) and "done" not in texts
    assert len(engine.decoder) == 0 and engine.load()["cancelled"] == 1


def test_engine_survives_a_failing_step(chat_model_dir):
    """A generation error fails the requests in the batch with a message, and the engine keeps serving."""
    from zhongjing.model.generation import SamplingParams
    from zhongjing.serve.engine import Engine

    tok = load_tokenizer(chat_model_dir)
    engine = Engine(load_model(chat_model_dir), tok, max_batch=2)
    prompt = Renderer(tok, max_length=256).prompt_ids(messages(DIALOGUES[0][:1]))
    real_step, calls = engine.decoder.step, []

    def broken_step():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated out of memory")
        return real_step()

    engine.decoder.step = broken_step
    first, second = [], []
    done = threading.Event()
    engine.submit(prompt, SamplingParams(40, 0.0), lambda k, row, p: first.append((k, p)))
    engine.start()
    deadline = time.time() + 30  # the second request comes after the failure: joining the failing batch would fail it too
    while not (first and first[-1][0] == "error") and time.time() < deadline:
        time.sleep(0.01)
    engine.submit(prompt, SamplingParams(40, 0.0), lambda k, row, p: (second.append(k), k == "done" and done.set()))
    assert done.wait(30)
    engine.close()
    assert first and first[-1][0] == "error" and "simulated out of memory" in first[-1][1]
    assert second[-1] == "done" and len(engine.decoder) == 0


def test_busy_port_and_bad_sizes_are_one_line_errors_before_loading(tmp_path):
    """Found before the model loads (minutes for a 13B model), not as uvicorn's bind error afterwards."""
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for extra, message in ([["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"],
                               [["--max-batch", "0"], "--max-batch and --queue must be at least 1"]):
            # the model folder does not exist: the error must come before any loading
            proc = subprocess.run([sys.executable, "-m", "zhongjing", "serve", "--model", str(tmp_path / "nope"), *extra],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_engine_process_death_fails_open_requests_and_refuses_new_ones(chat_model_dir):
    """Generation runs in a child process (serve/worker.py). If it dies, the open stream ends with an error that
    says so, new requests get 503, /health tells, and stopping the server leaves no process behind."""
    import signal

    import psutil

    from zhongjing.model.load import load_tokenizer

    s = Server(chat_model_dir, "--model-name", NAME, "--no-safety-prompt")
    try:
        engine = [p for p in psutil.Process(s.proc.pid).children() if "resource_tracker" not in " ".join(p.cmdline())]
        assert len(engine) == 1 and s.health()["engine_process"] == "running"
        tok = load_tokenizer(chat_model_dir)
        ban = {str(i): -100 for i in (tok.eos_token_id, tok.pad_token_id)}
        body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 230,
                "temperature": 1.0, "seed": 1, "logit_bias": ban}
        with httpx.stream("POST", s.url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            engine[0].send_signal(signal.SIGKILL)
            rest = [line for line in lines if line]
        assert "generation process stopped (exit code -9)" in rest[-1], rest[-3:]
        r = httpx.post(s.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=30)
        assert r.status_code == 503 and "generation process stopped" in r.json()["error"]["message"]
        assert s.health()["engine_process"] == "stopped"
    finally:
        s.stop()
    assert not [p for p in engine if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_in_process_engine_serves_the_same_answers(chat_model_dir, local):
    import psutil

    s = Server(chat_model_dir, "--model-name", NAME, "--no-safety-prompt", "--in-process")
    try:
        assert "engine_process" not in s.health()
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        for d in DIALOGUES[:3]:
            msgs = messages(d[:1])
            got = client.chat.completions.create(model=NAME, messages=msgs, max_tokens=32, temperature=0)
            assert got.choices[0].message.content == local(msgs, max_new_tokens=32, temperature=0)[0].text
    finally:
        s.stop()
