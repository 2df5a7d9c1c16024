"""SQLite storage of the annotation tool: connection settings, schema and versioned migrations.

Durability: WAL journal + `synchronous=FULL`. In WAL mode FULL fsyncs the log on every commit, so
a submission acknowledged to the browser survives a killed server *and* a power cut. (NORMAL
would survive a SIGKILL too, because committed pages sit in the OS cache, but may lose the last
commits on power loss; doctors' time is worth more than the ~1 ms fsync.) OFF exists only so the
load benchmark can measure what durability costs.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Iterator

from zhongjing.errors import ZhongjingError
from zhongjing.io import make_dir

ROLES = ("admin", "annotator", "expert")
SYNC_MODES = ("FULL", "NORMAL", "OFF")

# (version, SQL). Append new versions; never edit an applied one — existing databases only run
# the steps above their `PRAGMA user_version`.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE users (
  id INTEGER PRIMARY KEY,
  username TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL,
  role TEXT NOT NULL CHECK (role IN ('admin', 'annotator', 'expert')),
  active INTEGER NOT NULL DEFAULT 1,
  created_at REAL NOT NULL
);
CREATE TABLE sessions (
  token_hash TEXT PRIMARY KEY,           -- sha256 of the cookie value; the cookie itself is never stored
  user_id INTEGER NOT NULL REFERENCES users(id),
  csrf_token TEXT NOT NULL,
  created_at REAL NOT NULL,
  expires_at REAL NOT NULL
);
CREATE TABLE batches (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  k INTEGER NOT NULL,
  per_item INTEGER NOT NULL,
  min_tau REAL NOT NULL,
  require_top1 INTEGER NOT NULL,
  source TEXT,
  created_at REAL NOT NULL
);
CREATE TABLE items (
  id INTEGER PRIMARY KEY,
  batch_id INTEGER NOT NULL REFERENCES batches(id),
  ext_id TEXT NOT NULL,
  record TEXT NOT NULL,                  -- the imported Ranking as JSON
  status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'agreed', 'disputed', 'adjudicated')),
  tau REAL,
  top1 INTEGER,
  reason TEXT,
  final TEXT,                            -- JSON {ranking, all_wrong, replacement} once resolved
  updated_at REAL,
  UNIQUE (batch_id, ext_id)
);
CREATE INDEX items_batch_status ON items(batch_id, status);
CREATE TABLE assignments (
  item_id INTEGER NOT NULL REFERENCES items(id),
  user_id INTEGER NOT NULL REFERENCES users(id),
  assigned_at REAL NOT NULL,
  PRIMARY KEY (item_id, user_id)
);
CREATE INDEX assignments_user ON assignments(user_id);
-- append-only: a revision is a new row; the latest row per (item, user) counts
CREATE TABLE annotations (
  id INTEGER PRIMARY KEY,
  item_id INTEGER NOT NULL REFERENCES items(id),
  user_id INTEGER NOT NULL REFERENCES users(id),
  idem_key TEXT NOT NULL UNIQUE,
  ranking TEXT NOT NULL,                 -- tie groups over original response indices
  all_wrong INTEGER NOT NULL,
  replacement TEXT,
  flags TEXT NOT NULL,                   -- {"factually_wrong": [idx...], "unsafe": [idx...]}
  edited TEXT,                           -- {"text", "based_on"} or NULL
  comment TEXT,
  display_order TEXT NOT NULL,           -- what the annotator saw, for audits of position bias
  seconds REAL,
  created_at REAL NOT NULL
);
CREATE INDEX annotations_item_user ON annotations(item_id, user_id);
CREATE TABLE adjudications (
  id INTEGER PRIMARY KEY,
  item_id INTEGER NOT NULL UNIQUE REFERENCES items(id),
  expert_id INTEGER NOT NULL REFERENCES users(id),
  idem_key TEXT NOT NULL UNIQUE,
  ranking TEXT NOT NULL,
  all_wrong INTEGER NOT NULL,
  replacement TEXT,
  note TEXT,
  created_at REAL NOT NULL
);
"""),
]

LATEST = MIGRATIONS[-1][0]


def connect(path: str | Path, *, synchronous: str = "FULL", create: bool = True,
            migrate_schema: bool = True) -> sqlite3.Connection:
    """Open the database (migrating it to the latest schema). Autocommit mode: writers use `write()`.

    The web server migrates once at start-up and opens per-request connections with
    `migrate_schema=False`."""
    if synchronous not in SYNC_MODES:
        raise ZhongjingError(f"synchronous must be one of {', '.join(SYNC_MODES)}, got {synchronous!r}")
    path = Path(path)
    if not create and not path.exists():
        raise ZhongjingError(f"{path}: annotation database not found (create it with 'annotate users add')")
    make_dir(path.parent)
    if path.is_dir():  # sqlite3's "unable to open database file" traceback
        raise ZhongjingError(f"{path}: is a folder; give the path of the annotation database file")
    # check_same_thread=False: the web server opens a connection per request and may hand it
    # between worker threads, but never uses it from two threads at once.
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:  # a folder we may not write, a read-only file system
        raise ZhongjingError(f"{path}: cannot open the annotation database ({e})") from None
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        # WAL is stored in the file, so per-request connections (migrate_schema=False) skip this
        # statement, which may wait for locks; their set-up then never blocks.
        if migrate_schema and conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
            raise ZhongjingError(f"{path}: could not switch the database to WAL mode")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        if migrate_schema:
            migrate(conn, path)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise ZhongjingError(f"{path}: not a usable annotation database ({e})") from None
    return conn


def migrate(conn: sqlite3.Connection, path: str | Path = "database") -> int:
    """Apply the migrations above the stored `user_version`, each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > LATEST:
        raise ZhongjingError(f"{path}: schema version {version} is newer than this zhongjing ({LATEST}); upgrade zhongjing")
    for v, sql in MIGRATIONS:
        if v <= version:
            continue
        with write(conn):
            # re-check inside the write lock: another process may have migrated meanwhile
            if conn.execute("PRAGMA user_version").fetchone()[0] >= v:
                continue
            for stmt in _statements(sql):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {v}")
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _statements(sql: str) -> list[str]:
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction. IMMEDIATE takes the write lock up front, so two writers never
    deadlock upgrading read locks; the commit returns only after the WAL is synced."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def now() -> float:
    return time.time()


# ---- users -------------------------------------------------------------------------------------

def create_user(conn: sqlite3.Connection, username: str, password_hash: str, role: str) -> int:
    if role not in ROLES:
        raise ZhongjingError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not username or len(username) > 64 or any(c.isspace() for c in username):
        raise ZhongjingError(f"username {username!r} must be 1-64 characters without spaces")
    try:
        with write(conn):
            cur = conn.execute(
                "INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                (username, password_hash, role, now()),
            )
    except sqlite3.IntegrityError:
        raise ZhongjingError(f"user {username!r} already exists") from None
    return int(cur.lastrowid)


def get_user(conn: sqlite3.Connection, username: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()


def list_users(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT id, username, role, active, created_at FROM users ORDER BY id").fetchall()


def update_user(conn: sqlite3.Connection, username: str, **fields) -> None:
    allowed = {"password_hash", "active", "role"}
    bad = set(fields) - allowed
    if bad:
        raise ValueError(f"cannot update {bad}")
    if fields.get("role") is not None and fields["role"] not in ROLES:
        raise ZhongjingError(f"role must be one of {', '.join(ROLES)}, got {fields['role']!r}")
    with write(conn):
        user = get_user(conn, username)
        if user is None:
            raise ZhongjingError(f"no user {username!r}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        conn.execute(f"UPDATE users SET {sets} WHERE id = ?", (*fields.values(), user["id"]))
        if "password_hash" in fields or fields.get("active") == 0:
            conn.execute("DELETE FROM sessions WHERE user_id = ?", (user["id"],))  # log out everywhere
