"""The batching engine in its own process, so the HTTP side and generation do not take turns on one lock.

In one process the event loop's Python (parsing requests, JSON chunks, socket writes) and the engine's decoding steps
share one interpreter lock: at 16 streaming clients on 2 cores the whole server used 0.95 of a core and every step
waited for the HTTP work in between. `ProcessEngine` runs the same `Engine` in a spawned child process that loads the
model itself; the parent keeps the tokenizer and the HTTP server. Requests go down one pipe; the child sends the
events of each decoding step back up the other in one message, with the engine's counters (so `/health` never lags
behind what clients were told). Same interface as `Engine`: submit, cancel, load, close.

If the child dies, every open request ends with an error naming its exit code and new requests get 503.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import threading
from dataclasses import dataclass
from typing import NamedTuple

from zhongjing.errors import ZhongjingError
from zhongjing.model.generation import SamplingParams
from zhongjing.serve.engine import EventFn, QueueFull


class EngineDown(QueueFull):
    """The generation process is gone; the HTTP layer answers 503 like a full queue."""


class RowIndex(NamedTuple):  # a text event names only which answer of the request it belongs to
    sample_index: int


@dataclass
class RowView:  # what the HTTP layer reads of a finished answer
    sample_index: int
    text: str
    out_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None


@dataclass
class RemoteRequest:
    id: int
    prompt_tokens: int
    on_event: EventFn
    pending: int
    cancelled: bool = False
    queued: bool = True  # no event yet: counts against the queue limit


class ProcessEngine:
    def __init__(self, model: str, *, dtype: str = "float32", threads: int | None = None, max_batch: int = 8,
                 queue_size: int = 64):
        if max_batch < 1 or queue_size < 1:
            raise ZhongjingError("max_batch and queue size must be at least 1")
        self.queue_size = queue_size
        ctx = mp.get_context("spawn")  # a fresh interpreter: no forked thread pools or locks
        cmd_read, self._cmd = ctx.Pipe(duplex=False)
        self._events, events_write = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, name="zhongjing-engine", daemon=True,
                                 args=(cmd_read, events_write, str(model), dtype, threads, max_batch, queue_size))
        self._proc.start()
        cmd_read.close()
        events_write.close()
        self._lock = threading.Lock()
        self._reqs: dict[int, RemoteRequest] = {}
        self._ids = itertools.count(1)
        self._queued = self._rejected = 0
        self._load: dict = {}
        self._down: str | None = None
        self._reader: threading.Thread | None = None

    def wait_ready(self) -> int:
        """Block until the child has loaded the model; its context length. Raises its one-line error if it failed."""
        try:
            kind, payload, load = self._events.recv()
        except (EOFError, OSError):
            self._proc.join(5)
            raise ZhongjingError(f"the generation process stopped while loading the model (exit code "
                                 f"{self._proc.exitcode})") from None
        if kind == "error":
            self._proc.join(5)
            raise ZhongjingError(payload)
        self._load = load
        self._reader = threading.Thread(target=self._read, name="zhongjing-engine-events", daemon=True)
        self._reader.start()
        return payload

    # -- Engine's interface -------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, on_event: EventFn, n: int = 1) -> RemoteRequest:
        with self._lock:
            if self._down:
                raise EngineDown(self._down)
            if self._queued >= self.queue_size:
                self._rejected += 1
                raise QueueFull(f"the request queue is full ({self.queue_size} waiting); retry shortly")
            req = RemoteRequest(next(self._ids), len(prompt_ids), on_event, n)
            self._reqs[req.id] = req
            self._queued += 1
            self._cmd.send(("submit", req.id, list(prompt_ids), params, n))
        return req

    def cancel(self, req: RemoteRequest) -> None:
        with self._lock:
            if not req.pending or req.cancelled:
                return
            req.cancelled = True
            self._forget(req)
            if not self._down:
                self._cmd.send(("cancel", req.id))

    def load(self) -> dict:
        with self._lock:
            return {**self._load, "rejected": self._load.get("rejected", 0) + self._rejected,
                    "engine_process": "stopped" if self._down else "running"}

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._proc.is_alive():
                try:
                    self._cmd.send(("close",))
                except OSError:
                    pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)

    # -- parent side ----------------------------------------------------------------------------
    def _forget(self, req: RemoteRequest) -> None:  # under the lock
        self._reqs.pop(req.id, None)
        if req.queued:
            req.queued = False
            self._queued -= 1

    def _read(self) -> None:
        while True:
            try:
                _, items, load = self._events.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                self._load = load
            for rid, kind, index, payload in items:
                with self._lock:
                    req = self._reqs.get(rid)
                    if req is None:
                        continue
                    if req.queued:
                        req.queued = False
                        self._queued -= 1
                    if kind != "text":
                        req.pending = 0 if kind == "error" else req.pending - 1
                        if not req.pending:
                            self._forget(req)
                if kind == "text":
                    req.on_event("text", RowIndex(index), payload)
                elif kind == "done":
                    req.on_event("done", payload, None)
                else:
                    req.on_event("error", None, payload)
        self._proc.join(1)
        with self._lock:
            self._down = (f"the generation process stopped (exit code {self._proc.exitcode}); restart the server"
                          if self._proc.exitcode else "the server is shutting down")
            open_reqs, self._reqs, self._queued = list(self._reqs.values()), {}, 0
        for req in open_reqs:
            if req.pending:
                req.pending = 0
                req.on_event("error", None, f"generation failed: {self._down}")


def _child(cmd, events, model: str, dtype: str, threads: int | None, max_batch: int, queue_size: int) -> None:
    """The engine process: load the model, run the Engine, relay commands in and each step's events out."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides when to stop
    from zhongjing.serve import load_chat_model
    from zhongjing.serve.engine import Engine

    try:
        model_obj, tokenizer, context = load_chat_model(model, dtype=dtype, threads=threads)
    except Exception as e:  # noqa: BLE001 - relayed as the parent's one-line error
        events.send(("error", str(e) if isinstance(e, ZhongjingError) else f"cannot load the model from {model}: "
                     f"{type(e).__name__}: {e}", None))
        return
    out: list[tuple] = []
    send_lock = threading.Lock()
    engine: Engine | None = None

    def relay(rid: int) -> EventFn:
        def on_event(kind, row, payload):  # engine thread
            if kind == "text":
                out.append((rid, "text", row.sample_index, payload))
            elif kind == "done":
                out.append((rid, "done", row.sample_index, RowView(
                    row.sample_index, row.text, list(row.out_ids),
                    list(row.logprobs) if row.params.logprobs else None, row.finish_reason)))
            else:
                out.append((rid, "error", None, payload))
        return on_event

    last: list[dict] = [{}]

    def flush(extra: list[tuple] = ()) -> None:  # after every step: one message for its events and the counters
        with send_lock:
            items = out[:] + list(extra)
            del out[:len(items) - len(extra)]
            load = engine.load()
            if items or load != last[0]:  # counters move without events too (a cancelled request leaves)
                events.send(("events", items, load))
                last[0] = load

    engine = Engine(model_obj, tokenizer, max_batch=max_batch, queue_size=queue_size + 1, on_step=flush).start()
    events.send(("ready", context, engine.load()))
    running: dict[int, object] = {}
    while True:
        try:
            msg = cmd.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        if msg[0] == "submit":
            _, rid, prompt, params, n = msg
            try:
                req = engine.submit(prompt, params, relay(rid), n=n)
            except Exception as e:  # noqa: BLE001 - this request fails alone
                flush([(rid, "error", None, f"generation failed: {e}")])
                continue
            running[rid] = req
            for gone in [k for k, r in running.items() if not r.pending]:
                running.pop(gone)
        elif msg[0] == "cancel":
            req = running.pop(msg[1], None)
            if req is not None:
                engine.cancel(req)
        else:
            break
    engine.close()
