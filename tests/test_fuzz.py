"""Property-based fuzzing (hypothesis): the OpenAI request parser, every data reader and the annotation submit
route. Whatever the input, the answer is a clean 4xx / one-line error — never a 500, a traceback or a changed
store. Bounded for CI: the whole file runs in well under 60 s (max_examples and deadline set per test)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="needs the 'dev' extra (hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zhongjing.errors import ZhongjingError  # noqa: E402

def bounded(n: int):
    """n examples, no per-example deadline (the box is shared), fixed seed: the same inputs every CI run."""
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                    database=None)

# field names the readers and the parser look at: random objects built from them reach deep into each format
KEYS = ["messages", "role", "content", "conversations", "from", "value", "instruction", "input", "output", "history",
        "instruct", "question", "answer", "options", "id", "chosen", "rejected", "response", "text", "system", "meta",
        "ranking", "responses", "all_wrong", "k", "name", "desc", "symptom", "query", "target", "cate1", "Dialogue",
        "QA_pairs", "title", "user", "assistant", "model", "temperature", "top_p", "n", "max_tokens", "stream", "stop",
        "logit_bias", "seed", "top_k", "logprobs", "type", "tools", "stream_options", "frequency_penalty",
        "presence_penalty", "repetition_penalty", "seconds", "flags", "edited", "replacement", "comment", "key"]
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["user", "assistant", "system", "human", "gpt", "头痛三天", "A", "B", "", " ", "\x00", "\n", "1", "-1",
     "头\ud800", "\udfff"])  # half a UTF-16 pair: JSON can escape one, and Python's reader returns it
SCALAR = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
          | st.sampled_from([10**309, -(10**400)])  # beyond a float's range: a 500 where a float was read
          | st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False) | TEXT)
JSON = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(KEYS) | TEXT, inner, max_size=5), max_leaves=25)


def _dump(v) -> str:
    # NaN / Infinity come out as Python writes them: clients do too; a lone surrogate as its JSON escape (\ud800)
    return json.dumps(v, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(e: Exception) -> None:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg


# ---------------------------------------------------------------------------------------------- OpenAI parser
BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@bounded(400)
@given(st.one_of(
    JSON.map(_dump),
    st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6).map(lambda d: _dump({**BASE, **d})),
    st.builds(lambda k, v: _dump({**BASE, k: v}), st.sampled_from(KEYS), JSON),
    st.builds(lambda ms: _dump({**BASE, "messages": ms}), st.lists(st.dictionaries(st.sampled_from(KEYS), JSON), max_size=4)),
    st.builds(lambda t, stop: _dump({**BASE, "messages": [{"role": "user", "content": t}], "stop": stop}),  # any text
              TEXT, st.none() | TEXT | st.lists(TEXT, max_size=4)),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
))
def test_request_parser_answers_every_body_with_a_clean_4xx(raw):
    from zhongjing.serve.protocol import ApiError, ChatRequest, parse_chat_request

    try:
        req = parse_chat_request(raw.encode("utf-8", "surrogatepass"))
    except ApiError as e:
        assert 400 <= e.status < 500 and e.body()["error"]["message"]
        one_line(e)
        return
    assert isinstance(req, ChatRequest) and req.messages[-1]["role"] == "user"
    for v in (req.temperature, req.top_p, req.repetition_penalty, req.frequency_penalty, req.presence_penalty,
              *req.logit_bias.values()):
        assert v == v and abs(v) != float("inf")  # only finite numbers get through
    json.dumps(req.messages, ensure_ascii=False).encode("utf-8")  # only text gets through (tokenizers need it)
    json.dumps(req.stop, ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------- data readers
def _formats():
    from zhongjing.data.readers import FORMATS

    return sorted(FORMATS)


def _as_file(content, shape: str) -> tuple[str, str]:
    if shape == "jsonl":
        return "".join(_dump(v) + "\n" for v in (content if isinstance(content, list) else [content])), ".jsonl"
    if shape == "json":
        return _dump(content), ".json"
    if shape == "csv":
        rows = content if isinstance(content, list) else [content]
        return "\n".join(",".join(str(x).replace("\n", " ") for x in (r if isinstance(r, list) else [r])) for r in rows), ".csv"
    text = content if isinstance(content, str) else "\n".join(map(str, content if isinstance(content, list) else [content]))
    return text, ".txt"


def _writable(unit) -> None:
    """What a reader yields, `data convert` writes as UTF-8: it must be text."""
    json.dumps(unit.to_dict() if hasattr(unit, "to_dict") else unit, ensure_ascii=False, default=str).encode("utf-8")


@pytest.mark.parametrize("fmt", _formats())
@bounded(25)
@given(content=st.lists(JSON, max_size=4) | TEXT | JSON, shape=st.sampled_from(["jsonl", "json", "csv", "txt"]),
       cut=st.integers(min_value=0, max_value=400))
def test_every_reader_fails_cleanly(fmt, content, shape, cut):
    from zhongjing.data.readers import FORMATS, count_aux, read_records

    text, ext = _as_file(content, shape)
    text = text[: len(text) - cut % (len(text) + 1)] if cut > 200 else text  # sometimes cut short, like a torn copy
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"data{ext}"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            if FORMATS[fmt].kind == "aux":
                count_aux(path, fmt)
            else:
                for unit in read_records(path, fmt):
                    _writable(unit)
            for unit in read_records(path, None, skip_bad=True, rejects=[]):  # auto-detected, bad records set aside
                _writable(unit)
        except ZhongjingError as e:
            one_line(e)


# ---------------------------------------------------------------------------------------------- annotation submit
@pytest.fixture(scope="module")
def annotate_app(tmp_path_factory):
    pytest.importorskip("fastapi.testclient", reason="needs the 'web' extra")
    from fastapi.testclient import TestClient

    from annotate_helpers import add_users, login, ranking_record
    from zhongjing.annotate import db, store
    from zhongjing.annotate.app import create_app
    from zhongjing.annotate.web import ServeSettings

    path = tmp_path_factory.mktemp("fuzz") / "s.sqlite"
    add_users(path, a1="annotator", a2="annotator")
    conn = db.connect(path)
    store.import_batch(conn, "b1", [store.Ranking.from_dict(ranking_record(i)) for i in range(2)], store.BatchSettings(),
                       ["a1", "a2"])
    conn.close()
    client = TestClient(create_app(ServeSettings(db=str(path), synchronous="OFF")))
    csrf = login(client, "a1")
    item = client.get("/api/queue").json()["items"][0]["id"]
    return client, csrf, item, path


def _store_rows(path) -> tuple:
    from zhongjing.annotate import db

    conn = db.connect(path)
    try:
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("annotations", "adjudications"))
    finally:
        conn.close()


VALID = {"key": "fuzz-key-0001", "ranking": [[0], [1], [2], [3]]}


@bounded(150)
@given(st.one_of(
    JSON.map(_dump),
    st.dictionaries(st.sampled_from(KEYS), JSON, max_size=6).map(lambda d: _dump({**d, "key": "fuzz-key-0002"})),
    st.builds(lambda k, v: _dump({**VALID, "key": "fuzz-key-0003", k: v}), st.sampled_from(KEYS), JSON),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
), st.sampled_from(["item", 0, 2**64, -1, "x"]))
def test_annotation_submit_never_500_and_rejections_change_nothing(annotate_app, body, which):
    client, csrf, item, path = annotate_app
    target = item if which == "item" else which
    before = _store_rows(path)
    r = client.post(f"/api/items/{target}/annotation", content=body.encode("utf-8", "surrogatepass"),
                    headers={"x-csrf-token": csrf, "content-type": "application/json"})
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert 400 <= r.status_code < 500 and r.json()["error"] and "\n" not in r.json()["error"]
        assert _store_rows(path) == before
