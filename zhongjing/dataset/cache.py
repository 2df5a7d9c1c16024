"""On-disk cache of endpoint replies: SQLite, one row per request, committed as each reply arrives.

Keys are hashes (of prompt + input + model + params), so the file name and keys reveal nothing;
the stored replies are doctor turns that were de-identified before they were sent.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from zhongjing.errors import ZhongjingError
from zhongjing.io import make_dir, sha256_json


def request_sha(messages: list[dict]) -> str:
    """Hash of the messages as sent — a server can compute the same from the request body."""
    return sha256_json(messages)


class RewriteCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        make_dir(self.path.parent)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, request_sha TEXT, reply TEXT, created REAL)")
            self.db.commit()
        except sqlite3.DatabaseError as e:
            raise ZhongjingError(f"{self.path}: cannot open the rewrite cache ({e})") from None

    def __enter__(self) -> "RewriteCache":
        return self

    def __exit__(self, *exc) -> None:
        self.db.close()

    def has(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM replies WHERE key=?", (key,)).fetchone() is not None

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT reply FROM replies WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, req_sha: str, reply: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)", (key, req_sha, reply, time.time()))
        self.db.commit()

    def request_shas(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT request_sha FROM replies")}

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

