"""Web security: log-in and roles, CSRF, XSS-safe rendering, SQL-injection strings, sessions."""

from __future__ import annotations

import json
import re

import pytest

from annotate_helpers import PASSWORD, add_users, csrf_token, login, ranking_record
from zhongjing.annotate import db, store
from zhongjing.annotate.app import create_app
from zhongjing.annotate.web import ServeSettings

fastapi_testclient = pytest.importorskip("fastapi.testclient", reason="needs the 'web' extra")

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>"><svg onload=alert(2)>'
SQLI = "x'); DROP TABLE annotations; --"


@pytest.fixture
def app(tmp_path):
    path = tmp_path / "s.sqlite"
    add_users(path, a1="annotator", a2="annotator", a3="annotator", ex="expert", boss="admin")
    rec = ranking_record(0, question="我该怎么办？" + XSS)
    rec["id"] = "evil-" + XSS
    rec["responses"][1] = "回答里也有 " + XSS
    rec["messages"][1]["content"] = SQLI
    conn = db.connect(path)
    rankings = [store.Ranking.from_dict(rec), store.Ranking.from_dict(ranking_record(1))]
    store.import_batch(conn, "b1", rankings, store.BatchSettings(), ["a1", "a2"])
    conn.close()
    return create_app(ServeSettings(db=str(path)))


def client(app, user=None):
    c = fastapi_testclient.TestClient(app)
    csrf = login(c, user) if user else None
    return c, csrf


ANN = {"key": "sec-key-0001", "ranking": [[0], [1], [2], [3]]}


def test_unauthenticated_requests_are_refused(app):
    c, _ = client(app)
    for path in ("/", "/queue", "/items/1", "/expert", "/adjudicate/1", "/admin"):
        r = c.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    for path in ("/api/queue", "/admin/progress.json", "/admin/batches/b1/export.jsonl"):
        r = c.get(path, headers={"accept": "application/json"}, follow_redirects=False)
        assert r.status_code in (303, 401) and "item-" not in r.text, path
    assert c.get("/api/queue").status_code == 401
    assert c.post("/api/items/1/annotation", json=ANN).status_code == 401
    assert c.post("/admin/users", data={"username": "z", "role": "admin", "password": PASSWORD}).status_code == 401
    # the log-in form itself needs its double-submit token, and bad passwords are refused
    assert c.post("/login", data={"username": "a1", "password": PASSWORD}).status_code == 403
    c.get("/login")
    token = c.cookies.get("zj_login")
    r = c.post("/login", data={"username": "a1", "password": "wrong-password", "login_token": token})
    assert r.status_code == 401 and "zj_session" not in r.cookies
    token = c.cookies.get("zj_login")  # a failed attempt rotates the form token
    r = c.post("/login", data={"username": "' OR '1'='1", "password": "' OR '1'='1", "login_token": token})
    assert r.status_code == 401


def test_wrong_roles_are_refused(app):
    ann, ann_csrf = client(app, "a1")
    ex, ex_csrf = client(app, "ex")
    boss, boss_csrf = client(app, "boss")
    h = lambda t: {"X-CSRF-Token": t}  # noqa: E731
    assert ann.get("/admin").status_code == 403
    assert ann.get("/admin/batches/b1/export.jsonl").status_code == 403
    assert ann.post("/admin/users", data={"username": "z", "role": "admin", "password": PASSWORD,
                                          "csrf_token": ann_csrf}).status_code == 403
    assert ann.get("/adjudicate/1").status_code == 403
    assert ann.post("/api/items/1/adjudication", json=ANN, headers=h(ann_csrf)).status_code == 403
    assert ex.get("/items/1").status_code == 403
    assert ex.post("/api/items/1/annotation", json=ANN, headers=h(ex_csrf)).status_code == 403
    assert ex.get("/admin").status_code == 403
    assert boss.post("/api/items/1/annotation", json=ANN, headers=h(boss_csrf)).status_code == 403
    assert boss.post("/api/items/1/adjudication", json=ANN, headers=h(boss_csrf)).status_code == 403
    # an annotator sees only their own items: a3 has none, and gets 404 rather than a hint the item exists
    other, other_csrf = client(app, "a3")
    assert other.get("/api/queue").json() == {"items": []}
    assert other.get("/items/1").status_code == 404
    assert other.post("/api/items/1/annotation", json=ANN, headers=h(other_csrf)).status_code == 404
    conn = db.connect(app.state.settings.db)
    assert conn.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] == 0
    assert db.get_user(conn, "z") is None


def test_csrf_token_is_required(app):
    ann, csrf = client(app, "a1")
    other, other_csrf = client(app, "a2")
    assert other_csrf != csrf
    assert ann.post("/api/items/1/annotation", json=ANN).status_code == 403
    assert ann.post("/api/items/1/annotation", json=ANN, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert ann.post("/api/items/1/annotation", json=ANN, headers={"X-CSRF-Token": other_csrf}).status_code == 403
    assert ann.post("/logout", data={}).status_code == 403
    boss, boss_csrf = client(app, "boss")
    assert boss.post("/admin/users", data={"username": "mallory", "role": "admin", "password": PASSWORD}
                     ).status_code == 403
    conn = db.connect(app.state.settings.db)
    assert db.get_user(conn, "mallory") is None
    assert conn.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] == 0
    r = ann.post("/api/items/1/annotation", json=ANN, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["item_status"] == "open"


def test_dialogue_text_is_rendered_as_text(app):
    ann, csrf = client(app, "a1")
    page = ann.get("/items/1")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = page.text
    assert XSS not in html and "<img src=x" not in html and "<svg" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html  # the patient's turn, escaped
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 3  # question, answer and item id
    assert len(re.findall(r"<script\b", html)) == 1  # only our own /static/rank.js
    # the same text on the expert's and the admin's pages
    ann.post("/api/items/1/annotation", json={**ANN, "ranking": [[0, 1, 2, 3]], "all_wrong": True,
                                              "replacement": XSS}, headers={"X-CSRF-Token": csrf})
    a2, csrf2 = client(app, "a2")
    assert a2.post("/api/items/1/annotation", json={"key": "sec-key-0002", "ranking": [[0], [1], [2], [3]]},
                   headers={"X-CSRF-Token": csrf2}).json()["item_status"] == "disputed"
    ex, _ = client(app, "ex")
    for html in (ex.get("/expert").text, ex.get("/adjudicate/1").text):
        assert XSS not in html and "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    boss, boss_csrf = client(app, "boss")
    r = boss.post("/admin/users", data={"username": "<b>x</b>", "role": "annotator", "password": PASSWORD,
                                        "csrf_token": boss_csrf}, follow_redirects=True)
    assert "<b>x</b>" not in r.text and "&lt;b&gt;x&lt;/b&gt;" in r.text


def test_sql_injection_strings_are_stored_verbatim(app):
    boss, boss_csrf = client(app, "boss")
    evil_user = "robert');DROP-TABLE-users;--"
    r = boss.post("/admin/users", data={"username": evil_user, "role": "annotator", "password": PASSWORD,
                                        "csrf_token": boss_csrf}, follow_redirects=False)
    assert r.status_code == 303 and "err=" not in r.headers["location"]
    upload = json.dumps(ranking_record(5, question=SQLI), ensure_ascii=False) + "\n"
    r = boss.post("/admin/batches", data={"name": SQLI, "csrf_token": boss_csrf, "annotators": ["a1", "a2"]},
                  files={"file": ("x'; --.jsonl", upload.encode(), "application/jsonl")}, follow_redirects=False)
    assert r.status_code == 303 and "msg=" in r.headers["location"], r.headers["location"]
    ann, csrf = client(app, "a1")
    comment = "'; DELETE FROM items WHERE '1'='1"
    r = ann.post("/api/items/1/annotation", json={**ANN, "comment": comment}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    conn = db.connect(app.state.settings.db)
    assert db.get_user(conn, evil_user)["role"] == "annotator"
    batch = conn.execute("SELECT id, source FROM batches WHERE name = ?", (SQLI,)).fetchone()
    assert batch["source"] == "x'; --.jsonl"
    rec = json.loads(conn.execute("SELECT record FROM items WHERE batch_id = ?", (batch["id"],)).fetchone()[0])
    assert rec["messages"][-1]["content"] == SQLI
    assert json.loads(conn.execute("SELECT record FROM items WHERE id = 1").fetchone()[0])["messages"][1][
        "content"] == SQLI
    assert conn.execute("SELECT comment FROM annotations").fetchone()[0] == comment
    assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 3  # nothing dropped or deleted
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sessions_passwords_and_cookies(app, tmp_path):
    c = fastapi_testclient.TestClient(app)
    c.get("/login")
    r = c.post("/login", data={"username": "a1", "password": PASSWORD, "login_token": c.cookies.get("zj_login")},
               follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "zj_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    token = c.cookies.get("zj_session")
    conn = db.connect(app.state.settings.db)
    assert conn.execute("SELECT COUNT(*) FROM sessions WHERE token_hash = ?", (token,)).fetchone()[0] == 0
    stored = db.get_user(conn, "a1")["password_hash"]
    assert stored.startswith("scrypt$") and PASSWORD not in stored
    assert PASSWORD.encode() not in open(app.state.settings.db, "rb").read()
    csrf = csrf_token(c)
    assert c.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    stale = fastapi_testclient.TestClient(app, cookies={"zj_session": token})
    assert stale.get("/api/queue").status_code == 401  # logged out on the server, not just in the browser
    a2, _ = client(app, "a2")
    assert a2.get("/api/queue").status_code == 200
    db.update_user(conn, "a2", active=0)
    assert a2.get("/api/queue").status_code == 401  # disabling a user ends their sessions


def test_failed_logins_are_throttled(app):
    c = fastapi_testclient.TestClient(app)
    c.get("/login")

    def attempt(password):
        return c.post("/login", data={"username": "a1", "password": password, "login_token": c.cookies.get("zj_login")},
                      follow_redirects=False)

    assert [attempt("wrong-password").status_code for _ in range(5)] == [401] * 5
    blocked = attempt(PASSWORD)  # even the right password waits once the limit is reached
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    other, _ = client(app, "a2")  # other accounts are not affected
    assert other.get("/api/queue").status_code == 200


def test_throttle_window_slides():
    from zhongjing.annotate.auth import LoginThrottle

    now = [0.0]
    t = LoginThrottle(max_failures=2, window_s=10, clock=lambda: now[0])
    t.failed("u", "ip")
    now[0] = 5
    t.failed("u", "ip")
    assert t.retry_after("u", "ip") == 6  # the first failure leaves the window at t=10
    now[0] = 10.5
    assert t.retry_after("u", "ip") == 0
    t.failed("u", "ip")
    t.succeeded("u", "ip")
    assert t.retry_after("u", "ip") == 0
