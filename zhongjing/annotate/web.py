"""Shared web plumbing: settings, templates (autoescaped), per-request DB connections, log-in and
role checks, CSRF checks and error pages. Routes live in `app.py` and `admin.py`."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from zhongjing.annotate import auth, db
from zhongjing.data import rubric
from zhongjing.errors import require

jinja2 = require("jinja2", "web")
fastapi = require("fastapi", "web")
from fastapi import Depends, Request  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse  # noqa: E402

HERE = Path(__file__).parent
LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class ServeSettings:
    db: str = "annotations.sqlite"
    synchronous: str = "FULL"  # see db.py for why FULL
    session_hours: float = 12.0
    secure_cookie: bool = False  # set when served over HTTPS (behind a reverse proxy)
    trusted_proxies: tuple = ()  # ip_network objects whose X-Forwarded-For is believed (auth.parse_proxies)


# autoescape=True for every template: dialogue text is untrusted and must render as text.
templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                               undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
templates.globals.update(RUBRIC=rubric.RUBRIC, FLAGS=rubric.FLAGS, IDK_TEMPLATES=rubric.IDK_TEMPLATES,
                         LABELS=LABELS, ROLE_NAMES={"admin": "管理员", "annotator": "标注者", "expert": "专家"})


class LoginRequired(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, reason: str = "forbidden", status: int = 403):
        super().__init__(reason)
        self.reason, self.status = reason, status


def render(request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    sess = getattr(request.state, "session", None)
    html = templates.get_template(name).render(request=request, session=sess, **ctx)
    return HTMLResponse(html, status_code=status)


def wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or "application/json" in request.headers.get("accept", "")


# The dependencies below are async on purpose: opening a connection (no locking pragmas) and a
# session lookup (a WAL read never waits for writers) take microseconds, and running them on the
# event loop saves three thread-pool round trips per request. Writes always go to the thread pool.
async def get_conn(request: Request) -> AsyncIterator[sqlite3.Connection]:
    s: ServeSettings = request.app.state.settings
    conn = db.connect(s.db, synchronous=s.synchronous, migrate_schema=False)
    try:
        yield conn
    finally:
        conn.close()


async def get_session(request: Request, conn: sqlite3.Connection = Depends(get_conn)) -> auth.Session:
    sess = auth.lookup_session(conn, request.cookies.get(auth.SESSION_COOKIE))
    if sess is None:
        raise LoginRequired()
    request.state.session = sess
    return sess


def role(*roles: str):
    """Dependency: the logged-in user, who must have one of `roles`."""

    async def dep(sess: auth.Session = Depends(get_session)) -> auth.Session:
        if sess.role not in roles:
            raise Forbidden(f"this page is for {' / '.join(roles)} accounts")
        return sess

    return dep


def check_csrf(request: Request, sess: auth.Session, form_token: str | None = None) -> None:
    given = form_token if form_token is not None else request.headers.get("x-csrf-token")
    if not auth.csrf_ok(sess.csrf_token, given):
        raise Forbidden("missing or wrong CSRF token; reload the page and try again")


def error_response(request: Request, status: int, message: str):
    if wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    return render(request, "error.html", status=status, message=message, status_code=status)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


SECURITY_HEADERS = {
    # no inline script or style anywhere, so untrusted text can never execute even if escaping failed
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
