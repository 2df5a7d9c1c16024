"""The serving engine: a bounded request queue and one worker thread that batches concurrent requests.

Requests wait in a FIFO queue (bounded: a full queue is refused at once rather than letting latency grow without
limit). The worker keeps one `Decoder` running: between two decoding steps it lets finished rows leave and admits
waiting rows into the same KV cache (step-level batching), so a short request does not wait for a long one to end.
A request with n > 1 answers contributes n rows. Callbacks run on the worker thread; the HTTP layer hands them to
its event loop.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from zhongjing.errors import ZhongjingError
from zhongjing.model.generation import Decoder, Row, SamplingParams, make_sequences

log = logging.getLogger("zhongjing.serve")


class QueueFull(ZhongjingError):
    pass


# on_event(kind, row, payload): ("text", row, delta) | ("done", row, None) | ("error", None, message)
EventFn = Callable[[str, Row | None, object], None]


@dataclass
class Request:
    id: int
    rows: list[Row]
    on_event: EventFn
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    pending: int = 0  # rows not yet finished

    @property
    def prompt_tokens(self) -> int:
        return len(self.rows[0].prompt_ids)


class Engine:
    def __init__(self, model, tokenizer, *, max_batch: int = 8, queue_size: int = 64, stop_ids: set[int] | None = None,
                 admit_wait_s: float = 0.05, settle_s: float = 0.003, on_step: Callable[[], None] | None = None):
        if max_batch < 1 or queue_size < 1:
            raise ZhongjingError("max_batch and queue size must be at least 1")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.queue_size = max_batch, queue_size
        self.admit_wait_s, self.settle_s = admit_wait_s, settle_s
        self.on_step = on_step  # called on the worker thread after each step's events (e.g. to send them on)
        self._last_arrival = 0.0
        self.decoder = Decoder(model, tokenizer, stop_ids=stop_ids)
        self._waiting: deque[Request] = deque()
        self._waiting_rows: deque[Row] = deque()
        self._cancel: list[Request] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._closed = False
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "completed": 0, "rejected": 0, "cancelled": 0, "failed": 0, "tokens": 0,
                      "steps": 0, "max_rows": 0}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="zhongjing-engine", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout)

    # -- API used by the HTTP layer ---------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, on_event: EventFn, n: int = 1) -> Request:
        """Queue one request (n answers); raises QueueFull when `queue_size` requests already wait."""
        rows = make_sequences(self.model, [prompt_ids], params, num_samples=n)
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.queue_size:
                self.stats["rejected"] += 1
                raise QueueFull(f"the request queue is full ({self.queue_size} waiting); retry shortly")
            req = Request(next(self._ids), rows, on_event, pending=n)
            for r in rows:
                r.tag = req
                r.on_text = self._on_text
            self._waiting.append(req)
            self._waiting_rows.extend(rows)
            self._last_arrival = time.monotonic()
            self.stats["requests"] += 1
            self._cond.notify()
        return req

    def cancel(self, req: Request) -> None:
        """The client went away: drop its rows, queued or running."""
        with self._cond:
            if req.pending and not req.cancelled:
                req.cancelled = True
                self._cancel.append(req)
                self._cond.notify()

    def load(self) -> dict:
        with self._cond:
            return {"running_rows": len(self.decoder), "waiting_requests": len(self._waiting), **self.stats}

    # -- worker ---------------------------------------------------------------------------
    @staticmethod
    def _on_text(row: Row, delta: str) -> None:
        if not row.tag.cancelled:
            row.tag.on_event("text", row, delta)

    def _take(self) -> tuple[list[Row], list[Row]] | None:
        """Under the lock: wait for work, then (rows to admit, running rows to drop); None when closing."""
        with self._cond:
            while not self._closed and not self._waiting_rows and not len(self.decoder) and not self._cancel:
                self._cond.wait()
            if self._closed:
                return None
            drop: list[Row] = []
            for req in self._cancel:
                drop += [r for r in req.rows if r in self.decoder.rows]
                self.stats["cancelled"] += 1
            if self._cancel:
                gone = {id(q) for q in self._cancel}
                self._waiting_rows = deque(r for r in self._waiting_rows if id(r.tag) not in gone)
                self._waiting = deque(q for q in self._waiting if id(q) not in gone)
                self._cancel = []
            free = self.max_batch - (len(self.decoder) - len(drop)) if self.decoder.can_join else 0
            if self._defer(free):
                free = 0
            admit = [self._waiting_rows.popleft() for _ in range(min(free, len(self._waiting_rows)))]
            started = {id(r.tag) for r in admit}
            # a request leaves the queue once its first row runs
            self._waiting = deque(q for q in self._waiting if id(q) not in started)
            return admit, drop

    def _defer(self, free: int) -> bool:
        """Whether to let waiting rows wait a little longer while the batch runs. Each admission is a prefill
        plus a copy of the whole KV cache, so rows arriving a few milliseconds apart are better admitted together:
        wait while requests are still arriving (the last came less than `settle_s` ago) until a quarter of the
        batch (or every free slot) is waiting, at most `admit_wait_s` after the first. An empty batch never waits
        (no extra latency for a lone client), and neither does a row once arrivals have stopped."""
        n = len(self._waiting_rows)
        if not n or not free or not len(self.decoder) or n >= min(free, max(1, self.max_batch // 4)):
            return False
        now = time.monotonic()
        return (now - self._last_arrival < self.settle_s
                and now - self._waiting_rows[0].tag.submitted < self.admit_wait_s)

    def _loop(self) -> None:
        while True:
            work = self._take()
            if work is None:
                break
            admit, drop = work
            done: list[Row] = []
            if drop:
                self.decoder.drop(drop)
            if admit:
                try:  # a prefill that fails touches only the rows it was admitting
                    done = self.decoder.admit(admit)
                except Exception as e:
                    log.exception("prefill failed")
                    self._fail({id(r.tag): r.tag for r in admit}.values(), e)
            try:
                if len(self.decoder):
                    done += self.decoder.step()
                    self.stats["steps"] += 1
                    self.stats["max_rows"] = max(self.stats["max_rows"], len(self.decoder))
            except Exception as e:  # keep serving: fail the requests of this batch, not the process
                log.exception("generation failed")
                failed = {id(r.tag): r.tag for r in self.decoder.rows}
                self.decoder.reset()
                self._fail(failed.values(), e)
                if self.on_step:
                    self.on_step()
                continue
            for row in done:
                req = row.tag
                if row.error:  # this request's own settings broke its rows: it fails alone
                    if req.pending:
                        self.decoder.drop([r for r in req.rows if r in self.decoder.rows])
                        self._fail([req], row.error)
                    continue
                if not req.pending:
                    continue
                self.stats["tokens"] += len(row.out_ids)
                req.pending -= 1
                if req.pending == 0:  # count before the client hears of it, so /health never lags behind
                    self.stats["completed"] += 1
                if not req.cancelled:
                    req.on_event("done", row, None)
            if self.on_step:
                self.on_step()

    def _fail(self, reqs, error) -> None:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        reqs = list(reqs)
        with self._cond:  # rows of these requests still waiting (n > 1) must not start later
            gone = {id(q) for q in reqs}
            self._waiting_rows = deque(r for r in self._waiting_rows if id(r.tag) not in gone)
            self._waiting = deque(q for q in self._waiting if id(q) not in gone)
        for req in reqs:
            if req.pending:
                req.pending = 0
                self.stats["failed"] += 1
                req.on_event("error", None, f"generation failed: {message}")
