"""Rewrite doctor turns into one warm, complete, professional style through an OpenAI-compatible endpoint.

Patient turns are never sent for rewriting (they are context only) and never changed. Each
doctor turn is one request; its reply is cached on disk (SQLite, committed per reply) under
sha256(request messages + model + sampling params), so a rerun or a crash never pays twice.
A rewrite that loses a number or a drug name of the original, adds a drug, or is empty or far
too short/long is rejected and the original kept — counted in the report.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterable

from zhongjing.dataset.cache import RewriteCache, request_sha
from zhongjing.data.matcher import DictMatcher
from zhongjing.dataset.report import StepReport
from zhongjing.data.schema import Dialogue, Message
from zhongjing.errors import ConfigError, ZhongjingError, require
from zhongjing.io import sha256_json


@dataclass
class RewriteConfig:
    enabled: bool = False
    base_url: str = ""  # empty: $OPENAI_BASE_URL
    model: str = "gpt-3.5-turbo"
    api_key: str = ""  # empty: the variable named by api_key_env
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.3
    max_tokens: int = 1024
    concurrency: int = 4
    max_retries: int = 6
    backoff_base: float = 0.5  # seconds; doubled per retry, with ±50% jitter
    backoff_max: float = 30.0
    timeout: float = 60.0  # per request
    context_messages: int = 4  # earlier turns shown to the model
    context_chars: int = 1500
    min_length_ratio: float = 0.6  # a rewrite shorter than this share of the original lost content
    max_length_ratio: float = 5.0
    cache: str = ""  # SQLite file; empty: <work_dir>/rewrite_cache.sqlite
    dry_run: bool = False  # print the prompts of the first `dry_run_limit` turns, send nothing
    dry_run_limit: int = 3

    def __post_init__(self):
        # max_retries -1 sent nothing and reported every turn as a failed request; timeout 0 failed them all
        if self.max_retries < 0 or self.concurrency < 1 or self.max_tokens < 1:
            raise ConfigError("rewrite.max_retries must be ≥ 0, rewrite.concurrency and rewrite.max_tokens ≥ 1")
        if self.timeout <= 0 or self.backoff_base < 0 or self.backoff_max < 0:
            raise ConfigError("rewrite.timeout must be > 0 and rewrite.backoff_base/backoff_max ≥ 0")
        if not 0 <= self.temperature <= 2:  # the OpenAI range; NaN was sent to the endpoint
            raise ConfigError(f"rewrite.temperature must be in [0, 2], got {self.temperature}")
        if not 0 <= self.min_length_ratio <= self.max_length_ratio:
            raise ConfigError("rewrite.min_length_ratio and max_length_ratio must satisfy 0 ≤ min ≤ max")


SYSTEM_PROMPT = (
    "你是一位经验丰富、待人亲切的临床医生，正在整理线上问诊记录。你的任务是润色医生的回复，"
    "让它读起来温和、耐心、专业、完整，同时绝不改变其中的任何医学事实。"
)
USER_TEMPLATE = """下面是一段医患对话的前文，以及医生接下来的一条原始回复。请只改写这条医生回复。

要求：
1. 医学内容必须与原回复完全一致：判断、诊断、药物名称、剂量、用法、疗程、检查项目、数字和时间都原样保留，不得删除，也不得新增任何药物、检查或诊断。
2. 语气亲切自然，称呼患者为“您”，表达清楚、有条理；原回复过于简短时，可以补充过渡语、解释性的话和关怀提醒，但不能编造病情或新的医疗建议。
3. 如果原回复是在向患者追问病情，改写后仍要保留全部问题，以提问为主，不要替患者作答。
4. 形如[姓名]、[电话]的占位符保持原样。
5. 只输出改写后的回复正文，不要加标题、引号、解释或“医生：”之类的前缀。

【对话前文】
{context}

【原始回复】
<<<
{reply}
>>>"""
REPLY_MARKERS = ("<<<\n", "\n>>>")  # the fake endpoint in tests finds the original between these
_ROLE_NAMES = {"user": "患者", "assistant": "医生", "system": "说明"}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_CN_AMOUNT = re.compile(r"[一二两三四五六七八九十半]+(?:次|片|粒|袋|支|滴|天|日|周|个月|年|小时|毫克|克|毫升)")
_DRUG_SUFFIX = re.compile(
    r"[\u4e00-\u9fff]{2}(?:西林|霉素|沙星|头孢|他汀|洛尔|地平|普利|沙坦|替丁|拉唑|硝唑|康唑|韦|单抗|松|胶囊|颗粒|口服液|片|注射液|软膏|乳膏)")
_PREFIX = re.compile(r"^\s*(?:医生[:：]|改写后?的?回复[:：]|回复[:：])\s*")


def build_messages(history: list[Message], reply: str, cfg: RewriteConfig) -> list[dict]:
    ctx_msgs = [m for m in history if m.role != "system"][-cfg.context_messages:]
    context = "\n".join(f"{_ROLE_NAMES[m.role]}：{m.content}" for m in ctx_msgs)
    if len(context) > cfg.context_chars:
        context = "……" + context[-cfg.context_chars:]
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEMPLATE.format(context=context or "（无）", reply=reply)}]


def cache_key(messages: list[dict], cfg: RewriteConfig) -> str:
    return sha256_json({"messages": messages, "model": cfg.model, "temperature": cfg.temperature,
                        "max_tokens": cfg.max_tokens})


def facts(text: str, drugs: DictMatcher | None) -> tuple[set[str], set[str]]:
    """(numbers and amounts, drug names) the rewrite must keep."""
    nums = set(_NUMBER.findall(text)) | set(_CN_AMOUNT.findall(text))
    if drugs is not None:
        names = {m.term for m in drugs.find(text) if any(v[0] == "drug" for v in m.values)}
    else:
        names = set(_DRUG_SUFFIX.findall(text))
    return nums, names


def clean_reply(text: str) -> str:
    text = text.strip().strip("“”\"'")
    for mark in ("<<<", ">>>"):
        text = text.replace(mark, "")
    return _PREFIX.sub("", text).strip()


def check_rewrite(original: str, new: str, cfg: RewriteConfig, drugs: DictMatcher | None) -> str | None:
    """None if acceptable, else the reason it is rejected."""
    if not new:
        return "empty"
    ratio = len(new) / max(len(original), 1)
    if ratio < cfg.min_length_ratio:
        return "too_short"
    if ratio > cfg.max_length_ratio and len(new) > 200:
        return "too_long"
    nums, names = facts(original, drugs)
    new_nums, new_names = facts(new, drugs)
    if any(n not in new for n in nums) or any(d not in new for d in names):
        return "dropped_facts"
    if drugs is not None and new_names - names and not all(any(n in o for o in names) for n in new_names - names):
        return "added_drug"
    return None


class _Fatal(Exception):
    pass


# this many requests in a row failing every retry means the endpoint is down, not flaky: stop rather than
# spend hours retrying each remaining turn and then "finish" a build in which nothing was rewritten
DOWN_AFTER = 16


def _client(cfg: RewriteConfig):
    openai = require("openai", "judge")
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL", "")
    if not base_url:
        raise ConfigError("rewrite.base_url is empty and $OPENAI_BASE_URL is not set (or set rewrite.enabled=false)")
    key = cfg.api_key or os.environ.get(cfg.api_key_env, "") or "EMPTY"
    # our own retry loop (counted, jittered); the client's would hide failures from the report
    return openai, openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=cfg.timeout)


def call_with_retries(openai, client, messages: list[dict], cfg: RewriteConfig, rng: random.Random,
                      stop: threading.Event | None = None) -> tuple[str | None, Counter]:
    """Reply text (None when every try failed or `stop` was set) and a count of what went wrong on the way."""
    errors: Counter = Counter()
    stop = stop or threading.Event()
    for attempt in range(cfg.max_retries + 1):
        if attempt and stop.wait(min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1)) * (0.5 + rng.random())):
            break
        if stop.is_set():
            break
        try:
            resp = client.chat.completions.create(model=cfg.model, messages=messages, temperature=cfg.temperature,
                                                  max_tokens=cfg.max_tokens)
            text = resp.choices[0].message.content if resp.choices else None
            if not isinstance(text, str) or not text.strip():
                errors["garbage"] += 1
                continue
            return text, errors
        except openai.RateLimitError:
            errors["http_429"] += 1
        except openai.APITimeoutError:
            errors["timeout"] += 1
        except openai.APIStatusError as e:
            if e.status_code in (401, 403, 404) or (400 <= e.status_code < 500 and e.status_code not in (408, 409)):
                raise _Fatal(f"rewrite endpoint refused the request with HTTP {e.status_code} "
                             f"(check rewrite.base_url, rewrite.model and the API key)") from None
            errors[f"http_{e.status_code}"] += 1
        except openai.APIConnectionError:
            errors["connection"] += 1
        except (openai.APIError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            errors["garbage"] += 1  # unparsable body or a response without the expected fields
    return None, errors


def run_rewrite(dialogues: list[Dialogue], cfg: RewriteConfig, report: StepReport, cache_path: str,
                drugs: DictMatcher | None = None, progress: Callable | None = None) -> list[Dialogue]:
    progress = progress or (lambda it, **kw: it)
    jobs: list[tuple[int, int, str, list[dict]]] = []
    for di, d in enumerate(dialogues):
        report.n_in += 1
        for mi, m in enumerate(d.messages):
            if m.role == "assistant":
                msgs = build_messages(d.messages[:mi], m.content, cfg)
                jobs.append((di, mi, cache_key(msgs, cfg), msgs))
    report.add("doctor_turns", len(jobs))
    if cfg.dry_run:
        for _, _, key, msgs in jobs[:cfg.dry_run_limit]:
            print(f"----- request {key[:12]} (model {cfg.model}) -----", file=sys.stderr)
            for m in msgs:
                print(f"[{m['role']}]\n{m['content']}\n", file=sys.stderr)
        report.details["dry_run"] = True
        return dialogues
    with RewriteCache(cache_path) as cache:
        todo: dict[str, list[dict]] = {}
        for _, _, key, msgs in jobs:
            if key not in todo and not cache.has(key):
                todo[key] = msgs
        report.add("cache_hits", len(jobs) - sum(1 for _, _, k, _ in jobs if k in todo))
        report.add("requests_needed", len(todo))
        if todo:
            _fetch(todo, cfg, cache, report, progress)
        out = []
        for d in dialogues:
            out.append(Dialogue(d.id, list(d.messages), dict(d.meta)))
        for di, mi, key, _ in jobs:
            original = dialogues[di].messages[mi].content
            reply = cache.get(key)
            if reply is None:
                report.add("kept_original:request_failed")
                continue
            new = clean_reply(reply)
            reason = check_rewrite(original, new, cfg, drugs)
            if reason:
                report.add(f"kept_original:{reason}")
                continue
            out[di].messages[mi] = Message("assistant", new)
            report.add("rewritten")
        for d in out:
            d.meta["rewritten"] = True
    return out


def _fetch(todo: dict[str, list[dict]], cfg: RewriteConfig, cache: RewriteCache, report: StepReport, progress) -> None:
    openai, client = _client(cfg)
    rng = random.Random(0)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, cfg.concurrency))
    futures = {pool.submit(call_with_retries, openai, client, msgs, cfg, random.Random(rng.random()), stop): key
               for key, msgs in todo.items()}
    streak, streak_errors = 0, Counter()  # requests in a row that failed every try
    try:
        for fut in progress(as_completed(futures), total=len(futures), desc="rewrite"):
            text, errors = fut.result()
            for k, v in errors.items():
                report.add(f"retry:{k}", v)
            key = futures[fut]
            if text is None:
                report.add("requests_failed")
                streak, streak_errors = streak + 1, streak_errors + errors
                if streak >= DOWN_AFTER:
                    seen = ", ".join(f"{k} {v}" for k, v in streak_errors.most_common())
                    raise _Fatal(f"rewrite endpoint looks down: {streak} requests in a row failed every try ({seen}); "
                                 f"replies so far are cached — rerun when it is back, or set rewrite.enabled=false")
            else:
                streak, streak_errors = 0, Counter()
                cache.put(key, request_sha(todo[key]), text)  # committed now: a crash after this costs nothing
    except BaseException as e:
        # a refusal, Ctrl-C or any error: the queued requests are dropped and in-flight ones stop retrying —
        # waiting for the whole queue would keep paying for replies nobody stores, long after Ctrl-C
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        if isinstance(e, _Fatal):
            raise ZhongjingError(str(e)) from None
        raise
    pool.shutdown()


def iter_requests(dialogues: Iterable[Dialogue], cfg: RewriteConfig) -> Iterable[str]:
    """The JSON of every request a run would send (for `--dry-run` into a file)."""
    for d in dialogues:
        for mi, m in enumerate(d.messages):
            if m.role == "assistant":
                yield json.dumps(build_messages(d.messages[:mi], m.content, cfg), ensure_ascii=False)
