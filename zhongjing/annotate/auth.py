"""Passwords (scrypt), server-side sessions and CSRF tokens.

The session cookie is a random token; only its SHA-256 is stored, so a copied database does not
hand out live sessions. Each session has its own CSRF token that every state-changing request
must echo (form field or `X-CSRF-Token` header).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass

from zhongjing.annotate import db
from zhongjing.errors import ZhongjingError

# scrypt cost: 2^14 × 8 × 128 B = 16 MiB and ~50 ms per check — slow for guessing, fine for log-in.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8
SESSION_COOKIE = "zj_session"
LOGIN_COOKIE = "zj_login"  # double-submit token protecting the log-in form itself


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ZhongjingError(f"password must have at least {MIN_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


# A fixed hash to check against when the user does not exist, so timing does not reveal usernames.
_DUMMY_HASH = None


def authenticate(conn: sqlite3.Connection, username: str, password: str) -> sqlite3.Row | None:
    global _DUMMY_HASH
    user = db.get_user(conn, username)
    if user is None or not user["active"]:
        _DUMMY_HASH = _DUMMY_HASH or hash_password("not-a-real-password")
        verify_password(password, _DUMMY_HASH)
        return None
    return user if verify_password(password, user["password_hash"]) else None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    user_id: int
    username: str
    role: str
    csrf_token: str


def start_session(conn: sqlite3.Connection, user_id: int, hours: float) -> str:
    """Create a session; returns the cookie value."""
    token = secrets.token_urlsafe(32)
    t = db.now()
    with db.write(conn):
        conn.execute("DELETE FROM sessions WHERE expires_at < ?", (t,))
        conn.execute(
            "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            (_token_hash(token), user_id, secrets.token_urlsafe(32), t, t + hours * 3600),
        )
    return token


def lookup_session(conn: sqlite3.Connection, token: str | None) -> Session | None:
    if not token or len(token) > 200:
        return None
    row = conn.execute(
        "SELECT s.user_id, u.username, u.role, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.token_hash = ? AND s.expires_at > ? AND u.active = 1",
        (_token_hash(token), db.now()),
    ).fetchone()
    return Session(row["user_id"], row["username"], row["role"], row["csrf_token"]) if row else None


def end_session(conn: sqlite3.Connection, token: str | None) -> None:
    if token:
        with db.write(conn):
            conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_token_hash(token),))


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


class LoginThrottle:
    """Failed log-ins per (username, client) in a sliding window; past the limit, further tries wait.

    In memory (one server process), so a restart forgives — the scrypt cost still slows guessing.
    """

    def __init__(self, max_failures: int = 5, window_s: float = 900.0, clock=None):
        import threading
        import time

        self.max_failures, self.window_s = max_failures, window_s
        self.clock = clock or time.monotonic
        self._fails: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        times = [t for t in self._fails.get(key, []) if now - t < self.window_s]
        if times:
            self._fails[key] = times
        else:
            self._fails.pop(key, None)
        return times

    def retry_after(self, username: str, client: str) -> int:
        """Seconds until this pair may try again (0 = now)."""
        with self._lock:
            now = self.clock()
            times = self._recent((username, client), now)
            if len(times) < self.max_failures:
                return 0
            return max(1, int(times[-self.max_failures] + self.window_s - now) + 1)

    def failed(self, username: str, client: str) -> None:
        with self._lock:
            self._fails.setdefault((username, client), []).append(self.clock())

    def succeeded(self, username: str, client: str) -> None:
        with self._lock:
            self._fails.pop((username, client), None)
