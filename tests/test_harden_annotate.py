"""Issue 14 regressions for the annotation app: log-in throttling under concurrency and spoofed addresses,
item ids beyond SQLite's range, non-finite numbers and deeply nested bodies."""

from __future__ import annotations

import threading
import time

import pytest

from annotate_helpers import PASSWORD, add_users, login, ranking_record
from zhongjing.annotate import auth, db, store
from zhongjing.annotate.web import ServeSettings

fastapi_testclient = pytest.importorskip("fastapi.testclient", reason="needs the 'web' extra")
from zhongjing.annotate.app import create_app  # noqa: E402


@pytest.fixture
def app(tmp_path):
    path = tmp_path / "s.sqlite"
    add_users(path, a1="annotator", a2="annotator", ex="expert")
    conn = db.connect(path)
    store.import_batch(conn, "b1", [store.Ranking.from_dict(ranking_record(i)) for i in range(2)],
                       store.BatchSettings(), ["a1", "a2"])
    conn.close()
    return create_app(ServeSettings(db=str(path)))


def _attempt(c, username, password, **headers):
    if not c.cookies.get("zj_login"):
        c.get("/login")
    return c.post("/login", data={"username": username, "password": password, "login_token": c.cookies.get("zj_login")},
                  headers=headers, follow_redirects=False)


def test_concurrent_wrong_passwords_are_all_counted(app, monkeypatch):
    """20 guesses at once for a fresh user: at most the limit (5) reach the password check."""
    checked, real = [], auth.authenticate

    def slow_authenticate(conn, username, password):
        checked.append(username)
        time.sleep(0.05)  # the window in which a check-then-count throttle lets every guess through
        return real(conn, username, password)

    monkeypatch.setattr(auth, "authenticate", slow_authenticate)
    codes, barrier = [], threading.Barrier(20)

    def guess():
        c = fastapi_testclient.TestClient(app)
        c.get("/login")
        barrier.wait()
        codes.append(_attempt(c, "a1", "wrong-password").status_code)

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checked) <= 5 and sorted(set(codes)) == [401, 429] and codes.count(401) == len(checked)


def test_forwarded_for_from_a_direct_client_is_ignored(app):
    c = fastapi_testclient.TestClient(app)
    for i in range(5):
        assert _attempt(c, "a1", "wrong-password", **{"X-Forwarded-For": f"10.0.0.{i}"}).status_code == 401
    assert _attempt(c, "a1", PASSWORD, **{"X-Forwarded-For": "10.9.9.9"}).status_code == 429


def test_one_address_is_limited_across_usernames(app):
    c = fastapi_testclient.TestClient(app)
    throttle: auth.LoginThrottle = app.state.login_throttle
    codes = [_attempt(c, f"user{i}", "wrong-password").status_code for i in range(throttle.per_address + 1)]
    assert codes[:-1] == [401] * throttle.per_address and codes[-1] == 429


def test_throttle_per_user_across_addresses_and_success_takes_the_attempt_back():
    t = auth.LoginThrottle(max_failures=2, per_user=3, per_address=10, clock=lambda: 0.0)
    for ip in ("a", "b", "c"):
        assert t.begin("u", ip)[0] == 0
    assert t.begin("u", "d")[0] > 0  # a fourth address is still the same user
    ok = auth.LoginThrottle(max_failures=2, clock=lambda: 0.0)
    for _ in range(5):
        wait, stamp = ok.begin("u", "ip")
        assert wait == 0
        ok.succeeded("u", "ip", stamp)  # right passwords never lock anyone out


def test_client_address_trusts_forwarded_for_only_from_trusted_proxies():
    proxies = auth.parse_proxies(["127.0.0.1", "10.0.0.0/8"])
    assert auth.client_address("203.0.113.5", "1.2.3.4", proxies) == "203.0.113.5"  # direct: header ignored
    assert auth.client_address("127.0.0.1", "1.2.3.4", ()) == "127.0.0.1"  # nothing trusted by default
    # behind the proxy: the nearest untrusted hop; what the client put on the left does not count
    assert auth.client_address("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.2.3", proxies) == "198.51.100.7"
    with pytest.raises(auth.ZhongjingError, match="--trusted-proxy"):
        auth.parse_proxies(["not-an-ip"])


def test_trusted_proxy_setting_reaches_the_login_route(tmp_path):
    path = tmp_path / "p.sqlite"
    add_users(path, a1="annotator")
    app = create_app(ServeSettings(db=str(path), trusted_proxies=auth.parse_proxies(["0.0.0.0/0"])))
    app.state.login_throttle.max_failures = 2
    # every hop trusted: the left-most is the client; different clients behind one proxy are throttled apart
    c = fastapi_testclient.TestClient(app, client=("127.0.0.1", 5000))
    for _ in range(2):
        assert _attempt(c, "a1", "wrong-password", **{"X-Forwarded-For": "192.0.2.1"}).status_code == 401
    assert _attempt(c, "a1", "wrong-password", **{"X-Forwarded-For": "192.0.2.1"}).status_code == 429
    assert _attempt(c, "a1", PASSWORD, **{"X-Forwarded-For": "192.0.2.2"}).status_code == 303


def _logged_in(app, user):
    c = fastapi_testclient.TestClient(app)
    return c, login(c, user)


@pytest.mark.parametrize("item_id", [2**64, 2**63, 10**30, 0])
def test_huge_item_ids_are_not_found(app, item_id):
    a1, csrf = _logged_in(app, "a1")
    ex, ecsrf = _logged_in(app, "ex")
    assert a1.get(f"/items/{item_id}", follow_redirects=False).status_code == 404
    assert a1.post(f"/api/items/{item_id}/annotation", json={"key": "k" * 12},
                   headers={"x-csrf-token": csrf}).status_code == 404
    assert ex.get(f"/adjudicate/{item_id}", follow_redirects=False).status_code == 404
    assert ex.post(f"/api/items/{item_id}/adjudication", json={"key": "k" * 12},
                   headers={"x-csrf-token": ecsrf}).status_code == 404


def _count(app) -> int:
    conn = db.connect(app.state.settings.db)
    try:
        return conn.execute("SELECT COUNT(*) FROM annotations").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("seconds", ["Infinity", "-Infinity", "NaN", "1e999", "1e300"])
def test_non_finite_seconds_are_refused_and_nothing_is_stored(app, seconds):
    a1, csrf = _logged_in(app, "a1")
    item = a1.get("/api/queue").json()["items"][0]["id"]
    body = '{"key": "sec-key-0001", "ranking": [[0], [1], [2], [3]], "seconds": %s}' % seconds
    r = a1.post(f"/api/items/{item}/annotation", content=body,
                headers={"x-csrf-token": csrf, "content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    assert _count(app) == 0
    ok = body.replace(seconds, "12.5")
    assert a1.post(f"/api/items/{item}/annotation", content=ok, headers={"x-csrf-token": csrf}).status_code == 200


def test_deeply_nested_body_is_a_clean_error(app):
    a1, csrf = _logged_in(app, "a1")
    item = a1.get("/api/queue").json()["items"][0]["id"]
    r = a1.post(f"/api/items/{item}/annotation", content="[" * 100000 + "]" * 100000, headers={"x-csrf-token": csrf})
    assert r.status_code == 422 and "nested" in r.json()["error"]
    assert _count(app) == 0
