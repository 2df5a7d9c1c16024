"""A real OpenAI-compatible HTTP server on loopback for tests: canned replies and injected failures.

    with FakeOpenAI(reply=my_fn, failure_rate=0.2) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x")

`reply(body) -> str | dict | (status, dict)` gets the parsed request JSON and returns the assistant
text, a whole response object, or an HTTP status with a body (to test refusals such as 401). The default reply finds the original doctor turn between the builder's
`<<<`/`>>>` markers and returns it warmed up, facts intact — reusable as a fake judge by passing
another `reply`. Failures are deterministic per request (hash of its messages and attempt number):
HTTP 429, HTTP 500, a reply slower than the client timeout, or garbage (non-JSON body, no choices,
empty content); a request fails at most `max_failures` times, so a retrying client always wins.
Every request is logged with the sha256 of its messages (same hash as zhongjing.dataset.cache).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

FAILURES = ("429", "500", "timeout", "garbage_body", "no_choices", "empty_content")


def messages_sha(messages: Any) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def original_reply(body: dict) -> str | None:
    """The doctor turn the builder asked to rewrite (between its markers), if any."""
    text = body.get("messages", [{}])[-1].get("content", "")
    if "<<<\n" in text and "\n>>>" in text:
        return text.rsplit("<<<\n", 1)[1].rsplit("\n>>>", 1)[0]
    return None


def warm_rewrite(body: dict) -> str:
    orig = original_reply(body)
    if orig is None:
        return "好的。"
    return f"您好，感谢您的详细描述。{orig}如果还有其他不适，欢迎随时告诉我，祝您早日康复。"


class FakeOpenAI:
    def __init__(self, reply: Callable[[dict], str | dict] | None = None, *, failure_rate: float = 0.0,
                 failures: tuple[str, ...] = FAILURES, max_failures: int = 2, delay: float = 0.0,
                 timeout_sleep: float = 3.0, port: int = 0):
        self.reply = reply or warm_rewrite
        self.failure_rate, self.failures, self.max_failures = failure_rate, failures, max_failures
        self.delay, self.timeout_sleep = delay, timeout_sleep
        self.log: list[dict] = []
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "FakeOpenAI":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def ok_shas(self) -> list[str]:
        with self._lock:
            return [e["sha"] for e in self.log if e["status"] == 200]

    def all_shas(self) -> list[str]:
        with self._lock:
            return [e["sha"] for e in self.log]

    def _failure_for(self, sha: str) -> str | None:
        with self._lock:
            n = self._attempts.get(sha, 0)
            self._attempts[sha] = n + 1
        if n >= self.max_failures or not self.failures:
            return None
        h = int(hashlib.sha256(f"{sha}:{n}".encode()).hexdigest()[:8], 16)
        if (h % 10_000) / 10_000 >= self.failure_rate:
            return None
        return self.failures[(h // 10_000) % len(self.failures)]

    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, ctype: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    return self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode())
                self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    return self._send(400, b'{"error": {"message": "bad json"}}')
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, b'{"error": {"message": "not found"}}')
                sha = messages_sha(body.get("messages"))
                failure = srv._failure_for(sha)
                with srv._lock:
                    srv.log.append({"sha": sha, "status": 200 if failure is None else failure, "t": time.time()})
                if srv.delay:
                    time.sleep(srv.delay)
                if failure == "429":
                    return self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}')
                if failure == "500":
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                if failure == "timeout":
                    time.sleep(srv.timeout_sleep)
                if failure == "garbage_body":
                    return self._send(200, b"<html>upstream exploded {{{")
                if failure == "no_choices":
                    return self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                       "model": "fake", "choices": []}).encode())
                content = "" if failure == "empty_content" else srv.reply(body)
                if isinstance(content, tuple):
                    return self._send(content[0], json.dumps(content[1], ensure_ascii=False).encode())
                if isinstance(content, dict):
                    return self._send(200, json.dumps(content, ensure_ascii=False).encode())
                resp = {"id": f"chatcmpl-{sha[:12]}", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model", "fake"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                try:
                    self._send(200, json.dumps(resp, ensure_ascii=False).encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout); that is the point of this failure

        return Handler


if __name__ == "__main__":  # manual use: python tests/fake_openai.py [failure_rate]
    import sys

    with FakeOpenAI(failure_rate=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0) as s:
        print(s.url, flush=True)
        threading.Event().wait()
