"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, `zhongjing serve`, ...) through the official client.

Used for endpoint baselines' answers, the LLM judge and endpoint exams. Retries transient
failures (connection, timeout, 429, 5xx) with exponential back-off; fails fast with one line on
configuration errors (wrong key, unknown model); runs requests on a bounded thread pool.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

from zhongjing.config import at_least, within
from zhongjing.errors import RangeError, ZhongjingError, require

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class EndpointConfig:
    base_url: str = ""  # e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable, never from YAML
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int = 1024
    seed: int | None = None
    concurrency: int = 8
    retries: int = 4  # extra attempts after a transient failure
    backoff: float = 1.0  # seconds before the first retry; doubles each time (plus jitter)
    timeout: float = 120.0

    def __post_init__(self):  # checked when the config loads, not at the first request (or never: NaN backoff)
        at_least(self, 1, "concurrency", "max_tokens")
        at_least(self, 0, "retries")
        within(self, 0.0, float("inf"), "backoff")
        within(self, 0.0, 2.0, "temperature")
        if not 0 < self.timeout < float("inf"):
            raise RangeError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise RangeError(f"top_p must be in (0, 1] (or null), got {self.top_p}")

    def params(self) -> dict:
        """What determines a reply besides the messages (part of every cache key)."""
        return {"model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed}


class EndpointError(ZhongjingError):
    """A request that still failed after its retries (transient) or cannot succeed (bad request)."""


class Endpoint:
    def __init__(self, cfg: EndpointConfig, name: str = "endpoint"):
        if not cfg.base_url or not cfg.model:
            raise ZhongjingError(f"{name}: an endpoint needs base_url and model")
        if cfg.concurrency < 1:
            raise ZhongjingError(f"{name}: concurrency must be at least 1")
        openai = require("openai", "judge")
        self.cfg, self.name, self._openai = cfg, name, openai
        key = os.environ.get(cfg.api_key_env) or "EMPTY"  # local servers accept any key
        # Own retry loop (below) so that back-off and counting are ours and visible in the report.
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=key, max_retries=0, timeout=cfg.timeout)
        self.requests = 0
        self.retried = 0
        self._lock = threading.Lock()

    def chat(self, messages: list[dict], **override) -> str:
        """The reply text to `messages`; raises EndpointError after the retries are spent."""
        o = self._openai
        p = {**self.cfg.params(), **override}
        kwargs = {k: v for k, v in p.items() if v is not None}
        last: Exception | None = None
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
                delay = self.cfg.backoff * (2 ** (attempt - 1))
                time.sleep(delay * (1 + 0.25 * random.random()))
            with self._lock:
                self.requests += 1
            try:
                resp = self.client.chat.completions.create(messages=messages, **kwargs)
            except (o.AuthenticationError, o.PermissionDeniedError, o.NotFoundError) as e:
                raise ZhongjingError(f"{self.name}: {self.cfg.base_url} refused the request ({_short(e)}); "
                                     f"check base_url, model and ${self.cfg.api_key_env}") from None
            except o.BadRequestError as e:  # this prompt can never succeed (e.g. too long): not retried
                raise EndpointError(f"{self.name}: bad request ({_short(e)})") from None
            except (o.APIConnectionError, o.APITimeoutError, o.RateLimitError, o.InternalServerError,
                    o.APIStatusError, o.APIResponseValidationError, ValueError) as e:
                last = e  # ValueError: a body that is not JSON (a proxy's error page) — transient
                continue
            choices = getattr(resp, "choices", None) or []
            if not choices:
                last = ValueError("reply without choices")
                continue
            content = choices[0].message.content
            if not content or not content.strip():  # an overloaded server's empty reply: never an answer
                last = ValueError("empty reply")
                continue
            return content
        raise EndpointError(f"{self.name}: failed after {self.cfg.retries + 1} attempts ({_short(last)})")


def _short(e: Exception | None) -> str:
    text = " ".join(str(e).split()) if e is not None else "unknown error"
    return f"{type(e).__name__}: {text[:160]}"


def parallel(fn: Callable[[T], R], items: Iterable[T], concurrency: int) -> Iterator[tuple[T, R | Exception]]:
    """(item, result or its EndpointError), in completion order, at most `concurrency` at once.

    Any other exception (a configuration problem, a bug) stops everything.
    """
    items = list(items)
    if concurrency <= 1:
        for it in items:
            yield it, _call(fn, it)
        return
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(_call, fn, it): it for it in items}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def _call(fn, it):
    try:
        return fn(it)
    except EndpointError as e:  # a per-item failure is recorded, not fatal; anything else is a bug or a config error
        return e
