"""The annotation web app: log-in, the annotator's queue and ranking page, the expert's queue and
adjudication page. Admin pages are in `admin.py`; shared plumbing in `web.py`.

Sync route functions run in the server's thread pool; each request gets its own SQLite connection.
"""

from __future__ import annotations

import json
import sqlite3

from zhongjing.annotate import admin, auth, db, store
from zhongjing.annotate.suggest import suggestion_text
from zhongjing.annotate.web import (HERE, SECURITY_HEADERS, Forbidden, LoginRequired, ServeSettings, check_csrf,
                                    error_response, get_conn, redirect, render, role, wants_json)
from zhongjing.errors import DataError, ZhongjingError
from fastapi import Depends, FastAPI, Form, Request  # noqa: E402  (web.py already required the extra)
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

annotator = role("annotator")
expert = role("expert")


def create_app(settings: ServeSettings) -> FastAPI:
    db.connect(settings.db, synchronous=settings.synchronous).close()  # create / migrate once
    app = FastAPI(title="zhongjing annotate", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.login_throttle = auth.LoginThrottle()
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired):
        if wants_json(request) or request.method != "GET":
            return JSONResponse({"error": "log in first"}, status_code=401)
        return redirect("/login")

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden):
        return error_response(request, exc.status, exc.reason)

    @app.exception_handler(store.Conflict)
    async def _conflict(request: Request, exc: store.Conflict):
        return error_response(request, 409, str(exc))

    @app.exception_handler(ZhongjingError)
    async def _user_error(request: Request, exc: ZhongjingError):
        return error_response(request, 422 if isinstance(exc, DataError) else 400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error_response(request, 422, f"invalid request: {where} {first.get('msg', '')}".strip())

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(request, exc.status_code, str(exc.detail))

    _routes(app)
    app.include_router(admin.router)
    return app


class SecurityHeaders:
    """Pure ASGI middleware (cheaper than @app.middleware): CSP and friends on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.encode() not in have and not (static and k == "cache-control")]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _routes(app: FastAPI) -> None:
    throttle: auth.LoginThrottle = app.state.login_throttle
    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/login")
    def login_page(request: Request):
        token = auth.new_login_token()
        resp = render(request, "login.html", login_token=token, error=None)
        _set_cookie(request, resp, auth.LOGIN_COOKIE, token, max_age=3600)
        return resp

    @app.post("/login")
    def login(request: Request, username: str = Form(""), password: str = Form(""), login_token: str = Form(""),
              conn: sqlite3.Connection = Depends(get_conn)):
        if not auth.csrf_ok(request.cookies.get(auth.LOGIN_COOKIE), login_token):
            raise Forbidden("log-in form expired; reload the page")
        s: ServeSettings = request.app.state.settings
        client = auth.client_address(request.client.host if request.client else None,
                                     request.headers.get("x-forwarded-for"), s.trusted_proxies)
        wait, stamp = throttle.begin(username, client)  # counted before the slow check: no race
        if wait:
            resp = error_response(request, 429, f"too many failed log-ins; try again in {wait} s")
            resp.headers["Retry-After"] = str(wait)
            return resp
        user = auth.authenticate(conn, username, password)
        if user is None:
            token = auth.new_login_token()
            resp = render(request, "login.html", status=401, login_token=token, error="用户名或密码错误")
            _set_cookie(request, resp, auth.LOGIN_COOKIE, token, max_age=3600)
            return resp
        throttle.succeeded(username, client, stamp)
        cookie = auth.start_session(conn, user["id"], s.session_hours)
        resp = redirect("/")
        _set_cookie(request, resp, auth.SESSION_COOKIE, cookie, max_age=int(s.session_hours * 3600))
        resp.delete_cookie(auth.LOGIN_COOKIE)
        return resp

    @app.post("/logout")
    def logout(request: Request, csrf_token: str = Form(""), conn: sqlite3.Connection = Depends(get_conn),
               sess: auth.Session = Depends(role("admin", "annotator", "expert"))):
        check_csrf(request, sess, csrf_token)
        auth.end_session(conn, request.cookies.get(auth.SESSION_COOKIE))
        resp = redirect("/login")
        resp.delete_cookie(auth.SESSION_COOKIE)
        return resp

    @app.get("/")
    def home(sess: auth.Session = Depends(role("admin", "annotator", "expert"))):
        return redirect({"admin": "/admin", "annotator": "/queue", "expert": "/expert"}[sess.role])

    # ---- annotator ----
    @app.get("/queue")
    def queue_page(request: Request, sess=Depends(annotator), conn=Depends(get_conn)):
        items = store.queue(conn, sess.user_id)
        return render(request, "queue.html", items=items, pending=sum(not i["done"] for i in items))

    @app.get("/api/queue")
    def queue_api(sess=Depends(annotator), conn=Depends(get_conn)):
        return {"items": [{"id": i["id"], "batch": i["batch"], "done": bool(i["done"]), "status": i["status"]}
                          for i in store.queue(conn, sess.user_id)]}

    @app.get("/items/{item_id}")
    def item_page(request: Request, item_id: int, sess=Depends(annotator), conn=Depends(get_conn)):
        _check_id(item_id)
        item = _assigned_item(conn, item_id, sess.user_id)
        mine = [a for a in store.latest_annotations(conn, item_id) if a["user_id"] == sess.user_id]
        return render(request, "item.html", item=item, submitted=bool(mine), **_view(item, sess.user_id),
                      submit_url=f"/api/items/{item_id}/annotation")

    @app.post("/api/items/{item_id}/annotation")
    async def submit(request: Request, item_id: int, sess=Depends(annotator), conn=Depends(get_conn)):
        _check_id(item_id)
        check_csrf(request, sess)
        payload = await _json(request)
        return await _in_thread(_submit_annotation, conn, item_id, sess.user_id, payload)

    # ---- expert ----
    @app.get("/expert")
    def expert_page(request: Request, sess=Depends(expert), conn=Depends(get_conn)):
        done = conn.execute("SELECT a.item_id, i.ext_id, a.created_at FROM adjudications a JOIN items i "
                            "ON i.id = a.item_id WHERE a.expert_id = ? ORDER BY a.id DESC LIMIT 50",
                            (sess.user_id,)).fetchall()
        return render(request, "expert.html", items=store.disputed_items(conn), done=done)

    @app.get("/adjudicate/{item_id}")
    def adjudicate_page(request: Request, item_id: int, sess=Depends(expert), conn=Depends(get_conn)):
        _check_id(item_id)
        item = store.get_item(conn, item_id)
        if item is None:
            raise Forbidden("no such item", 404)
        view = _view(item, sess.user_id)
        to_pos = {orig: pos for pos, orig in enumerate(view["order"])}
        anns = store.latest_annotations(conn, item_id)
        for a in anns:  # show the annotators' judgements in the expert's own answer labels
            a["groups"] = [sorted(to_pos[i] for i in g) for g in a["ranking"]]
            a["flag_pos"] = {f: sorted(to_pos[i] for i in v) for f, v in a["flags"].items()}
        return render(request, "adjudicate.html", item=item, annotations=anns, **view,
                      decision=store.adjudication(conn, item_id), submit_url=f"/api/items/{item_id}/adjudication")

    @app.post("/api/items/{item_id}/adjudication")
    async def adjudicate(request: Request, item_id: int, sess=Depends(expert), conn=Depends(get_conn)):
        _check_id(item_id)
        check_csrf(request, sess)
        payload = await _json(request)
        result = await _in_thread(store.submit_adjudication, conn, item_id, sess.user_id, payload)
        nxt = store.disputed_items(conn)
        return {**result, "next": f"/adjudicate/{nxt[0]['id']}" if nxt else "/expert"}


def _submit_annotation(conn, item_id: int, user_id: int, payload) -> dict:
    _assigned_item(conn, item_id, user_id)
    result = store.submit_annotation(conn, item_id, user_id, payload)
    nxt = store.next_pending(conn, user_id)
    return {**result, "next": f"/items/{nxt}" if nxt else "/queue"}


async def _in_thread(fn, *args):
    # SQLite writes block (lock wait + fsync); keep them off the event loop
    return await run_in_threadpool(fn, *args)


async def _json(request: Request):
    return store.parse_json_body(await request.body())


def _check_id(item_id: int) -> None:
    """SQLite integers are 64-bit: a larger id cannot name an item (and would overflow the query)."""
    if not 0 < item_id < 1 << 63:
        raise Forbidden("no such item", 404)


def _assigned_item(conn, item_id: int, user_id: int) -> dict:
    item = store.get_item(conn, item_id)
    # 404 for items of others too: an annotator must not learn which items exist
    if item is None or not store.is_assigned(conn, item_id, user_id):
        raise Forbidden("no such item in your queue", 404)
    return item


def _view(item: dict, user_id: int) -> dict:
    """Template data: history, the patient's turn and the answers in this user's display order."""
    rec = item["record"]
    order = store.display_order(item["id"], user_id, item["k"])
    return {"history": rec["messages"][:-1], "question": rec["messages"][-1]["content"], "order": order,
            "answers": [rec["responses"][i] for i in order], "k": item["k"],
            "suggestion": suggestion_text(rec, order)}  # a model's pre-ranking, only for batches imported with one


def _set_cookie(request: Request, resp, name: str, value: str, max_age: int) -> None:
    s: ServeSettings = request.app.state.settings
    resp.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax", secure=s.secure_cookie, path="/")
