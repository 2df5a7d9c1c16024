"""`zhongjing serve`: OpenAI-compatible HTTP API (`/v1/models`, `/v1/chat/completions`, streaming or not) and a web
chat page at `/`, over the batching engine. Needs the `web` extra (FastAPI + uvicorn).

Prompts are rendered with the model's own chat template exactly as training renders them. A conversation longer
than the context is refused (OpenAI behaviour) unless `--truncate-history`, which keeps the latest turns as training
does. Patient text is never logged.
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` type of handlers defined in create_app

import argparse
import asyncio
import hmac
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from zhongjing.config import port_number
from zhongjing.data.render import Renderer
from zhongjing.errors import ZhongjingError, require
from zhongjing.model.generation import SamplingParams
from zhongjing.serve import add_model_args, load_chat_model, model_id, system_prompt_from
from zhongjing.serve.engine import Engine, QueueFull
from zhongjing.serve.worker import ProcessEngine
from zhongjing.serve.protocol import (ApiError, ChatRequest, chunk, completion, completion_id, logprobs_block,
                                      parse_chat_request, usage)

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("zhongjing.serve")


@dataclass
class ServeState:
    engine: Engine | ProcessEngine
    tokenizer: object
    model_id: str
    context: int
    max_tokens: int  # answer budget when a request names none
    system_prompt: str | None = None
    truncate_history: bool = False
    api_key: str | None = None
    created: int = 0
    allow_origins: tuple[str, ...] = ()  # browser pages on other origins allowed to call the API (CORS)
    max_body: int = 1 << 20  # bytes; a larger request body is refused before it is read in full (413)
    token_chars: int = 0  # longest token of the vocabulary in characters (0 = unknown): bounds prompt length cheaply

    def check_length(self, req: ChatRequest) -> None:
        """Refuse a prompt that cannot fit before tokenising it: n tokens cover at most n × the longest token's
        characters, so more characters than that can never fit the context."""
        if not self.token_chars:
            return
        chars = sum(len(m["content"]) for m in req.messages)
        if chars > self.context * self.token_chars and not self.truncate_history:
            raise ApiError(400, f"This model's maximum context length is {self.context} tokens; the messages have "
                           f"{chars} characters, more than that many tokens can hold. Please reduce the length of "
                           "the messages.", "messages", "context_length_exceeded")

    def prompt_for(self, req: ChatRequest) -> tuple[list[int], int]:
        """(prompt ids, max new tokens) or an OpenAI-style context_length_exceeded error."""
        msgs = req.messages
        if self.system_prompt and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": self.system_prompt}] + msgs
        prompt = Renderer(self.tokenizer, max_length=1 << 40).prompt_ids(msgs)
        need = req.max_tokens or 1
        if len(prompt) + need > self.context and self.truncate_history:
            try:  # keep the system prompt and the latest turns that fit, as training does
                prompt = Renderer(self.tokenizer, max_length=self.context).prompt_ids(msgs, reserve=need)
            except ZhongjingError:
                pass  # even the last turn alone is too long: refused below
        if len(prompt) + need > self.context:
            raise ApiError(
                400, f"This model's maximum context length is {self.context} tokens. However, you requested "
                f"{len(prompt) + need} tokens ({len(prompt)} in the messages, {need} in the completion). Please "
                "reduce the length of the messages or completion.", "messages", "context_length_exceeded")
        return prompt, req.max_tokens or min(self.max_tokens, self.context - len(prompt))


def create_app(state: ServeState):
    require("fastapi", "web")
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    app = FastAPI(title="zhongjing", docs_url=None, redoc_url=None, openapi_url=None)
    if state.allow_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(state.allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(_request, e: HTTPException):
        return JSONResponse(ApiError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)
                            .body(), status_code=e.status_code)

    expected = f"Bearer {state.api_key}".encode() if state.api_key else None

    def check_key(request: Request) -> None:
        if expected and not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    def model_card() -> dict:
        return {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "zhongjing",
                "context_length": state.context}

    @app.get("/")
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)

    @app.get("/chat.css")
    async def style():
        return FileResponse(STATIC / "chat.css", media_type="text/css")

    @app.get("/chat.js")
    async def script():
        return FileResponse(STATIC / "chat.js", media_type="text/javascript")

    @app.get("/favicon.ico")
    async def favicon():
        from fastapi.responses import Response

        return Response(status_code=204)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": state.model_id, **state.engine.load()}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str, request: Request):
        check_key(request)
        if name != state.model_id:
            raise ApiError(404, f"The model '{name}' does not exist", "model", "model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        req = parse_chat_request(await _read_body(request, state.max_body))
        state.check_length(req)
        if req.model != state.model_id:
            raise ApiError(404, f"The model '{req.model}' does not exist (this server has '{state.model_id}')",
                           "model", "model_not_found")
        too_big = [i for i in req.logit_bias if i >= len(state.tokenizer)]
        if too_big:
            raise ApiError(400, f"'logit_bias' names token id {too_big[0]}, beyond the vocabulary ({len(state.tokenizer)})",
                           "logit_bias", "invalid_value")
        prompt, max_new = await run_in_threadpool(state.prompt_for, req)
        params = SamplingParams(max_new, req.temperature, req.top_p, req.top_k, tuple(req.stop), req.seed, req.logprobs,
                                req.repetition_penalty, req.frequency_penalty, req.presence_penalty, req.logit_bias)
        events = EventPipe(asyncio.get_running_loop())
        try:
            handle = state.engine.submit(prompt, params, events.put, n=req.n)
        except QueueFull as e:
            raise ApiError(503, str(e), code="server_overloaded", type_="server_error") from None
        cid = completion_id()
        if req.stream:
            return StreamingResponse(_stream(state, req, handle, events, cid), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            rows = await _collect_unless_gone(request, handle, events, req.n)
        finally:
            state.engine.cancel(handle)  # no-op when finished; frees the batch if the client went away
        choices = [{"index": r.sample_index, "message": {"role": "assistant", "content": r.text},
                    "logprobs": logprobs_block(state.tokenizer, r.out_ids, r.logprobs) if req.logprobs else None,
                    "finish_reason": r.finish_reason} for r in rows]
        return completion(cid, state.model_id, choices, usage(len(prompt), sum(len(r.out_ids) for r in rows)))

    return app


class EventPipe:
    """Engine thread → event loop. Events of one decoding step arrive together; waking the loop once for all
    of them (not once per token) keeps the HTTP side cheap when many answers stream at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.items, self.lock = loop, [], threading.Lock()
        self.ready, self.scheduled = asyncio.Event(), False

    def put(self, *event) -> None:  # engine thread
        with self.lock:
            self.items.append(event)
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self.lock:
            self.scheduled = False
        self.ready.set()

    async def get_all(self) -> list[tuple]:
        while True:
            with self.lock:
                if self.items:
                    out, self.items = self.items, []
                    return out
            self.ready.clear()
            await self.ready.wait()


PAGE_HEADERS = {  # the chat page: only its own script and style run, whatever text a model or user puts in it
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                               "form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


async def _read_body(request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (Content-Length or while streaming)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {int(declared)} bytes; this server accepts at most {limit}",
                       None, "request_too_large")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes, the most this server accepts",
                           None, "request_too_large")
        parts.append(part)
    return b"".join(parts)


async def _collect_unless_gone(request, handle, events: EventPipe, n: int, poll_s: float = 0.25) -> list:
    """Wait for the answers; stop waiting (and so stop generating, see the caller) when the client hangs up."""
    task = asyncio.ensure_future(_collect(handle, events, n))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ApiError(499, "the client closed the connection", None, "client_closed")
    finally:
        task.cancel()


async def _collect(handle, events: EventPipe, n: int) -> list:
    rows = []
    while len(rows) < n:
        for kind, row, payload in await events.get_all():
            if kind == "error":
                raise ApiError(500, str(payload), code="generation_failed", type_="server_error")
            if kind == "done":
                rows.append(row)
    return sorted(rows, key=lambda r: r.sample_index)


async def _stream(state: ServeState, req: ChatRequest, handle, events: EventPipe, cid: str):
    created, done, tokens = int(time.time()), 0, 0

    def event(index: int, delta: dict, finish=None, logprobs=None) -> str:
        return chunk(cid, state.model_id, created, [{"index": index, "delta": delta, "logprobs": logprobs,
                                                     "finish_reason": finish}])

    try:
        yield "".join(event(i, {"role": "assistant", "content": ""}) for i in range(req.n))
        while done < req.n:
            out, text = [], {}  # text deltas of one wake-up, joined per choice
            for kind, row, payload in await events.get_all():
                if kind == "error":
                    err = ApiError(500, str(payload), code="generation_failed", type_="server_error")
                    yield "data: " + json.dumps(err.body(), ensure_ascii=False) + "\n\n"
                    return
                if kind == "text":
                    text[row.sample_index] = text.get(row.sample_index, "") + payload
                    continue
                if row.sample_index in text:
                    out.append(event(row.sample_index, {"content": text.pop(row.sample_index)}))
                done += 1
                tokens += len(row.out_ids)
                lp = logprobs_block(state.tokenizer, row.out_ids, row.logprobs) if req.logprobs else None
                out.append(event(row.sample_index, {}, row.finish_reason, lp))
            out = [event(i, {"content": t}) for i, t in text.items()] + out
            yield "".join(out)
        if req.include_usage:
            yield chunk(cid, state.model_id, created, [], usage(handle.prompt_tokens, tokens))
        yield "data: [DONE]\n\n"
    finally:
        state.engine.cancel(handle)  # client disconnected mid-stream: stop generating for it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zhongjing serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--model-name", default=None, help="model id clients send (default: the folder name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--max-batch", type=int, default=8, help="answers decoded together")
    p.add_argument("--queue", type=int, default=64, help="requests allowed to wait; more get 503")
    p.add_argument("--max-tokens", type=int, default=512, help="answer length when a request sets none")
    p.add_argument("--max-context", type=int, default=None, help="lower the model's context length")
    p.add_argument("--truncate-history", action="store_true",
                   help="drop the oldest turns of a too-long conversation instead of refusing it")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1 routes (visible in `ps`: prefer ${API_KEY_ENV} "
                        "or --api-key-file)")
    p.add_argument("--api-key-file", default=None, help="read the API key from this file (first line)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (default 1 MiB)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN call the API (CORS); repeatable, '*' for any")
    p.add_argument("--in-process", action="store_true",
                   help="generate in the server's own process (default: a separate engine process, so HTTP work and "
                        "decoding run in parallel)")
    p.add_argument("--log-level", default="info")
    return p


API_KEY_ENV = "ZHONGJING_API_KEY"


def api_key_from(args) -> str | None:
    """--api-key, else --api-key-file, else $ZHONGJING_API_KEY; an empty or unreadable key is an error."""
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ZhongjingError(f"--api-key-file {args.api_key_file}: cannot read it ({e})") from None
        if not key or not key[0].strip():
            raise ZhongjingError(f"--api-key-file {args.api_key_file}: the file is empty")
        return key[0].strip()
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise ZhongjingError(f"the API key ({'--api-key' if args.api_key is not None else API_KEY_ENV}) is empty")
    return key.strip() if key else None


def longest_token(tokenizer) -> int:
    """Characters in the longest vocabulary entry (what one token can cover at most), 0 if unknown."""
    try:  # a vocabulary entry is never shorter than its text (byte-level BPE: one char per byte; "▁" / "##")
        return max(map(len, tokenizer.get_vocab()), default=0) + 1
    except Exception:  # noqa: BLE001  (an unusual tokenizer: fall back to tokenising everything)
        return 0


def check_port(host: str, port: int) -> None:
    """One line now rather than uvicorn's bind error after the model has loaded."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ZhongjingError(f"--host {host}: cannot resolve it ({e})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            s.bind(addr)
        except OSError as e:
            raise ZhongjingError(f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port") from None


def start_engine(args):
    """(engine, tokenizer, context length): the model loads in the engine process (default) or here."""
    if args.in_process:
        model, tokenizer, ctx = load_chat_model(args.model, dtype=args.dtype, threads=args.threads)
        return Engine(model, tokenizer, max_batch=args.max_batch, queue_size=args.queue).start(), tokenizer, ctx
    from zhongjing.model.load import load_tokenizer
    from zhongjing.model.load import refuse_reward_model

    refuse_reward_model(args.model)
    engine = ProcessEngine(args.model, dtype=args.dtype, threads=args.threads, max_batch=args.max_batch,
                           queue_size=args.queue)  # loads the model while this process loads the tokenizer
    try:
        tokenizer = load_tokenizer(args.model)
        return engine, tokenizer, engine.wait_ready()
    except BaseException:
        engine.close()
        raise


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    uvicorn = require("uvicorn", "web")
    if args.max_tokens < 1 or (args.max_context is not None and args.max_context < 2):
        raise ZhongjingError("--max-tokens must be at least 1 and --max-context at least 2")
    if args.max_batch < 1 or args.queue < 1:
        raise ZhongjingError("--max-batch and --queue must be at least 1")
    if args.max_body < 1024:
        raise ZhongjingError("--max-body must be at least 1024 bytes")
    api_key = api_key_from(args)
    check_port(args.host, args.port)  # before loading: a 13B model takes minutes to load
    engine, tokenizer, ctx = start_engine(args)
    if args.max_context:
        ctx = min(ctx, args.max_context)
    state = ServeState(engine, tokenizer, args.model_name or model_id(args.model), ctx, args.max_tokens,
                       system_prompt_from(args), args.truncate_history, api_key, int(time.time()),
                       tuple(args.allow_origin), args.max_body, longest_token(tokenizer))
    app = create_app(state)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"zhongjing serve: '{state.model_id}' on http://{args.host}:{args.port} (context {ctx} tokens, "
          f"batch {args.max_batch}, queue {args.queue})", flush=True)
    try:
        uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                      timeout_graceful_shutdown=5)).run()
    finally:
        engine.close()
    return 0
