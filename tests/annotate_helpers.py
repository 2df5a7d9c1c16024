"""Helpers shared by the annotate tests and the load benchmark: items, users, logged-in clients,
and a real server process."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from zhongjing.annotate import auth, db

PASSWORD = "correct-horse-7"
REPO = Path(__file__).resolve().parents[1]


def ranking_record(i: int, k: int = 4, question: str | None = None) -> dict:
    return {
        "id": f"item-{i}",
        "messages": [
            {"role": "system", "content": "你是一名谨慎的全科医生。"},
            {"role": "user", "content": f"医生您好，我咳嗽第{i}天了，有点发热。"},
            {"role": "assistant", "content": "体温最高多少度？有没有痰？"},
            {"role": "user", "content": question or f"最高三十八度{i}，黄痰，需要吃抗生素吗？"},
        ],
        "responses": [f"回答{i}-{j}：建议先查血常规，再决定是否用药。" for j in range(k)],
        "meta": {"department": "呼吸内科", "source": "test"},
    }


def write_items(path: Path, n: int, k: int = 4, start: int = 0) -> Path:
    path.write_text("".join(json.dumps(ranking_record(i, k), ensure_ascii=False) + "\n"
                            for i in range(start, start + n)), encoding="utf-8")
    return path


# one hash reused for every test user: scrypt is deliberately slow
_HASH: str | None = None


def add_users(db_path: Path, **roles: str) -> dict[str, int]:
    """add_users(p, ann1="annotator", boss="admin") → {username: id}; all share PASSWORD."""
    global _HASH
    _HASH = _HASH or auth.hash_password(PASSWORD)
    conn = db.connect(db_path)
    ids = {name: db.create_user(conn, name, _HASH, role) for name, role in roles.items()}
    conn.close()
    return ids


def login(client, username: str, password: str = PASSWORD) -> str:
    """Log `client` (httpx / TestClient) in through the form; returns the session's CSRF token."""
    page = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"username": username, "password": password, "login_token": token},
                    follow_redirects=False)
    assert r.status_code == 303, (r.status_code, r.text[:300])
    return csrf_token(client)


def csrf_token(client) -> str:
    for path in ("/queue", "/expert", "/admin"):
        r = client.get(path)
        m = re.search(r'name="csrf-token" content="([^"]+)"', r.text)
        if r.status_code == 200 and m:
            return m.group(1)
    raise AssertionError("no page with a CSRF token")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db_path: Path, port: int, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """`zhongjing annotate serve` as a real process on loopback; waits until it answers."""
    import httpx

    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "zhongjing", "annotate", "serve", "--db", str(db_path), "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log", *extra],
        stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start within 30 s")
