"""OpenAI chat-completions wire format: validate a request body, shape responses and errors.

Errors follow OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status a client expects
(400 bad value, 404 unknown model, 503 overloaded), so `openai` clients raise their usual exception classes.
Parameters that OpenAI accepts but this server cannot honour are refused by name instead of silently ignored.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field

ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# accepted and ignored: they carry no meaning for generation, or only their neutral value is supported
IGNORED = {"user", "store", "metadata", "service_tier", "parallel_tool_calls"}
# key → its neutral values besides null/empty: what clients send by default (plain text, no tools)
NEUTRAL = {"tools": (), "tool_choice": ("none",), "functions": (), "function_call": ("none",),
           "response_format": ({"type": "text"},), "top_logprobs": (0,)}
KNOWN = {"model", "messages", "stream", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
         "seed", "stop", "logprobs", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias",
         "stream_options"}
KNOWN |= IGNORED | set(NEUTRAL)


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        message = message.replace("\r", "\\r").replace("\n", "\\n")  # client text quoted into it stays one line
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]  # [{"role": system|user|assistant, "content": str}], system only first, ends with user
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0  # extension (as in vLLM)
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id → bias in [-100, 100]


def _number(body: dict, key: str, lo: float, hi: float, integer: bool = False, lo_open: bool = False):
    v = body[key]
    ok = isinstance(v, int) if integer else isinstance(v, (int, float)) and math.isfinite(v)
    if not ok or isinstance(v, bool):
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, got {json.dumps(v)}", key,
                       "invalid_type")
    if v < lo or v > hi or (lo_open and v == lo):
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ApiError(400, f"'{key}' must be in {rng}, got {v}", key, "invalid_value")
    return v


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if c is None and m.get("role") == "assistant":
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: text only
        texts = []
        for part in c:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"messages[{i}]: only text content parts are supported, got {kind!r}",
                               f"messages[{i}].content", "unsupported_content")
            texts.append(part["text"])
        return "".join(texts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content",
                   "invalid_type")


def parse_messages(raw) -> list[dict]:
    """OpenAI messages → system (optional, first) then user/assistant turns ending with a user turn.

    Consecutive turns of the same role are joined with a blank line (clients send them; chat templates of
    medical models were trained on strict alternation)."""
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty array", "messages", "invalid_value")
    out: list[dict] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content'", f"messages[{i}]",
                           "invalid_type")
        role = ROLE_ALIASES.get(m["role"]) if isinstance(m.get("role"), str) else None
        if role is None:
            raise ApiError(400, f"messages[{i}].role {m.get('role')!r} is not supported (system, developer, user, "
                           "assistant)", f"messages[{i}].role", "invalid_value")
        content = _content(m, i)
        if role == "system" and any(o["role"] != "system" for o in out):
            raise ApiError(400, f"messages[{i}]: system messages must come before the conversation",
                           f"messages[{i}].role", "invalid_value")
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    convo = [m for m in out if m["role"] != "system"]
    if not convo or convo[0]["role"] != "user":
        raise ApiError(400, "the conversation must start with a user message", "messages", "invalid_value")
    if convo[-1]["role"] != "user":
        raise ApiError(400, "the last message must be a user message", "messages", "invalid_value")
    return out


def parse_chat_request(raw: bytes) -> ChatRequest:
    from zhongjing.io import loads_strict

    try:  # strict: NaN/Infinity and absurd nesting are refused here, not deep inside generation
        body = loads_strict(raw)
    except ValueError as e:
        raise ApiError(400, f"could not parse the JSON body of the request ({e})", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise ApiError(400, f"unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")
    for key, neutral in NEUTRAL.items():
        if body.get(key) not in (None, {}, [], *neutral):
            raise ApiError(400, f"'{key}' is not supported by this server", key, "unsupported_parameter")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise ApiError(400, "you must provide a model parameter", "model", "missing_required_parameter")
    if "messages" not in body:
        raise ApiError(400, "'messages' is a required property", "messages", "missing_required_parameter")
    req = ChatRequest(model=body["model"], messages=parse_messages(body["messages"]))
    if body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise ApiError(400, "'stream' must be a boolean", "stream", "invalid_type")
        req.stream = body["stream"]
    opts = body.get("stream_options")
    if opts is not None:  # as OpenAI: an object, and only beside stream: true
        if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
            raise ApiError(400, "'stream_options' must be an object like {\"include_usage\": true}", "stream_options",
                           "invalid_type")
        if not req.stream:
            raise ApiError(400, "'stream_options' is only allowed when 'stream' is true", "stream_options",
                           "invalid_value")
        req.include_usage = opts.get("include_usage", False)
    if body.get("n") is not None:
        req.n = _number(body, "n", 1, 16, integer=True)
    limits = {key: _number(body, key, 1, 1 << 30, integer=True)
              for key in ("max_completion_tokens", "max_tokens") if body.get(key) is not None}
    if len(set(limits.values())) > 1:  # servers disagree on which wins (vLLM: the first; this one used the second)
        raise ApiError(400, f"'max_tokens' ({limits['max_tokens']}) and 'max_completion_tokens' "
                            f"({limits['max_completion_tokens']}) differ; give one of them", "max_tokens",
                       "invalid_value")
    if limits:
        req.max_tokens = next(iter(limits.values()))
    if body.get("temperature") is not None:
        req.temperature = float(_number(body, "temperature", 0, 2))
    if body.get("top_p") is not None:
        req.top_p = float(_number(body, "top_p", 0, 1, lo_open=True))
    if body.get("top_k") is not None:
        req.top_k = _number(body, "top_k", 0, 1 << 30, integer=True)
    for key in ("frequency_penalty", "presence_penalty"):
        if body.get(key) is not None:
            setattr(req, key, float(_number(body, key, -2, 2)))
    if body.get("repetition_penalty") is not None:
        req.repetition_penalty = float(_number(body, "repetition_penalty", 0, 10, lo_open=True))
    if body.get("seed") is not None:
        req.seed = _number(body, "seed", -(1 << 63), (1 << 63) - 1, integer=True)
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise ApiError(400, "'stop' must be a non-empty string or an array of up to 4 of them", "stop",
                           "invalid_value")
        req.stop = stop
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict) or len(bias) > 300:
            raise ApiError(400, "'logit_bias' must be an object of at most 300 token ids", "logit_bias", "invalid_type")
        for k, v in bias.items():
            if (not (str(k).isascii() and str(k).isdigit()) or len(str(k)) > 12 or isinstance(v, bool) or not isinstance(v, (int, float))
                    or not -100 <= v <= 100):
                raise ApiError(400, f"'logit_bias' maps token ids to numbers in [-100, 100], got {k!r}: {v!r}",
                               "logit_bias", "invalid_value")
            req.logit_bias[int(k)] = float(v)
    if body.get("logprobs") is not None:
        if not isinstance(body["logprobs"], bool):
            raise ApiError(400, "'logprobs' must be a boolean", "logprobs", "invalid_type")
        req.logprobs = body["logprobs"]
    return req


# -- responses ----------------------------------------------------------------------------
def completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def logprobs_block(tokenizer, ids: list[int], logprobs: list[float]) -> dict:
    content = []
    for t, lp in zip(ids, logprobs):
        tok = tokenizer.decode([t])
        content.append({"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8")), "top_logprobs": []})
    return {"content": content}


def completion(cid: str, model: str, choices: list[dict], use: dict) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": None, "choices": choices, "usage": use}


def chunk(cid: str, model: str, created: int, choices: list[dict], use: dict | None = None) -> str:
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": choices}
    if use is not None:
        body["usage"] = use
    return "data: " + json.dumps(body, ensure_ascii=False) + "\n\n"
