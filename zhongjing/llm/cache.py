"""On-disk cache of everything slow or paid for: model answers, judge verdicts, exam replies.

One SQLite file; each entry is committed as soon as it is known, so a killed evaluation resumes
where it stopped and never asks the judge (or an endpoint) the same question twice. Keys are
hashes of exactly what determines the result (prompt, model, sampling parameters), so changing
any of them asks again instead of reusing a stale answer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from zhongjing.io import make_dir, sha256_json


def cache_key(**parts: Any) -> str:
    return sha256_json(parts)


class Cache:
    """Thread-safe key → JSON value store, grouped by `kind` ("answer", "judge", "exam", ...)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        make_dir(self.path.parent)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS entries (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                " created REAL NOT NULL, PRIMARY KEY (kind, key))"
            )
            self._db.commit()
        self.hits = 0
        self.misses = 0

    def get(self, kind: str, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM entries WHERE kind=? AND key=?", (kind, key)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def get_many(self, kind: str, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self._lock:
            for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
                part = keys[start:start + 500]
                marks = ",".join("?" * len(part))
                for k, v in self._db.execute(
                    f"SELECT key, value FROM entries WHERE kind=? AND key IN ({marks})", (kind, *part)
                ):
                    out[k] = json.loads(v)
        self.hits += len(out)
        self.misses += len(set(keys)) - len(out)
        return out

    def put(self, kind: str, key: str, value: Any) -> None:
        data = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO entries (kind, key, value, created) VALUES (?, ?, ?, ?)",
                (kind, key, data, time.time()),
            )
            self._db.commit()

    def put_many(self, kind: str, items: list[tuple[str, Any]]) -> None:
        """Several entries in one commit (a batch of exam questions scored together)."""
        now = time.time()
        rows = [(kind, k, json.dumps(v, ensure_ascii=False), now) for k, v in items]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO entries (kind, key, value, created) VALUES (?, ?, ?, ?)", rows)
            self._db.commit()

    def delete(self, kind: str, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM entries WHERE kind=? AND key=?", (kind, key))
            self._db.commit()

    def count(self, kind: str) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM entries WHERE kind=?", (kind,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
