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
    """Failed log-ins in a sliding window, per (username, address), per username and per address.

    `begin` is atomic: it checks every limit and counts the attempt as a failure in the same lock, so N
    guesses sent at once are N attempts, not N checks of an empty history; `succeeded` takes the attempt
    back. Limits: `max_failures` per (username, address); `per_user` for one username from any address
    (distributed guessing; wider, so a stranger cannot lock a user out as easily); `per_address` for one
    address over all usernames (spraying). In memory (one server process): a restart forgives, and scrypt
    still slows guessing.
    """

    def __init__(self, max_failures: int = 5, window_s: float = 900.0, clock=None, *, per_user: int | None = None,
                 per_address: int | None = None):
        import threading
        import time

        self.max_failures, self.window_s = max_failures, window_s
        self.per_user = per_user if per_user is not None else 4 * max_failures
        self.per_address = per_address if per_address is not None else 4 * max_failures
        self.clock = clock or time.monotonic
        self._fails: dict[tuple, list[float]] = {}
        self._lock = threading.Lock()

    def _keys(self, username: str, client: str) -> list[tuple[tuple, int]]:
        return [(("pair", username, client), self.max_failures), (("user", username), self.per_user),
                (("addr", client), self.per_address)]

    def _recent(self, key: tuple, now: float) -> list[float]:
        times = [t for t in self._fails.get(key, []) if now - t < self.window_s]
        if times:
            self._fails[key] = times
        else:
            self._fails.pop(key, None)
        return times

    def _wait(self, username: str, client: str, now: float) -> int:
        wait = 0
        for key, limit in self._keys(username, client):
            times = self._recent(key, now)
            if len(times) >= limit:
                wait = max(wait, max(1, int(times[-limit] + self.window_s - now) + 1))
        return wait

    def retry_after(self, username: str, client: str) -> int:
        """Seconds until this username may try again from this address (0 = now)."""
        with self._lock:
            return self._wait(username, client, self.clock())

    def begin(self, username: str, client: str) -> tuple[int, float]:
        """(seconds to wait, attempt stamp): when the wait is 0 the attempt is already counted as a failure;
        hand the stamp to `succeeded` if the password was right."""
        with self._lock:
            now = self.clock()
            wait = self._wait(username, client, now)
            if not wait:
                for key, _ in self._keys(username, client):
                    self._fails.setdefault(key, []).append(now)
            return wait, now

    def failed(self, username: str, client: str) -> None:
        """Count a failure that did not go through `begin`."""
        with self._lock:
            now = self.clock()
            for key, _ in self._keys(username, client):
                self._fails.setdefault(key, []).append(now)

    def succeeded(self, username: str, client: str, stamp: float | None = None) -> None:
        """A right password: forget this pair's failures and take back the attempt counted by `begin`."""
        with self._lock:
            self._fails.pop(("pair", username, client), None)
            if stamp is None:
                return
            for key in (("user", username), ("addr", client)):
                times = self._fails.get(key)
                if times and stamp in times:
                    times.remove(stamp)


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies=()) -> str:
    """The address to throttle: the TCP peer, unless the peer is a trusted proxy — then the nearest
    untrusted address in X-Forwarded-For (rightmost first; entries left of it are client-supplied)."""
    import ipaddress

    def trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr.strip())
        except ValueError:
            return False
        return any(ip in net for net in trusted_proxies)

    peer = peer or "?"
    if not forwarded_for or not trusted(peer):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop[:100]
    return hops[0][:100] if hops else peer


def parse_proxies(values) -> tuple:
    """--trusted-proxy values (addresses or networks) → ip_network objects; one-line error when invalid."""
    import ipaddress

    out = []
    for v in values or ():
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError:
            raise ZhongjingError(f"--trusted-proxy {v!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8)") \
                from None
    return tuple(out)
