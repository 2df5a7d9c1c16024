"""Answers of each evaluated model to every item, cached so a killed evaluation resumes.

Local models (full folders or LoRA adapters) answer through the shared generation helper in fixed
chunks; each chunk is committed to the cache as soon as it is done, and a model whose answers are
all cached is never even loaded. Endpoint models answer through the OpenAI-compatible client.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from zhongjing.config import at_least
from zhongjing.llm.cache import Cache, cache_key
from zhongjing.llm.client import Endpoint, EndpointConfig, parallel
from zhongjing.eval.testsets import EvalItem
from zhongjing.errors import ZhongjingError


@dataclass
class ModelSpec:
    name: str = ""
    path: str = ""  # local model folder or LoRA adapter folder
    endpoint: EndpointConfig | None = None  # ...or any OpenAI-compatible endpoint (a baseline such as ChatGPT)
    system: str = ""  # optional system prompt put before every dialogue
    dtype: str = "float32"

    @property
    def is_local(self) -> bool:
        return bool(self.path)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0 = greedy: reproducible answers
    top_p: float = 1.0
    batch_size: int = 8
    max_length: int = 4096  # prompt + answer; older turns of a long history are dropped first
    chunk: int = 32  # items generated (and cached) together
    seed: int = 0

    def __post_init__(self):  # chunk 0 was a range() traceback; batch_size 0 failed after the models loaded
        at_least(self, 1, "batch_size", "chunk", "max_length")

    def params(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "max_length": self.max_length, "seed": self.seed}


def fingerprint(path: str | Path) -> dict:
    """What identifies a local model's weights cheaply: files' names, sizes and modification times
    (and the base model's, for an adapter). Retraining into the same folder changes it."""
    from zhongjing.model.load import base_of, is_adapter_dir

    p = Path(path).resolve()
    if not p.is_dir():
        raise ZhongjingError(f"{path}: model folder not found")
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir()
                   if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".model", ".txt"))
    out = {"path": str(p), "files": files}
    if is_adapter_dir(p):
        out["base"] = fingerprint(base_of(p))
    return out


class LocalModel:
    """A local model loaded on first use (answers, perplexity and exams share one load)."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.fingerprint = cache_key(**fingerprint(spec.path))
        self._model = self._tok = None

    def load(self):
        if self._model is None:
            from zhongjing.model.load import load_model, load_tokenizer

            t0 = time.time()
            self._tok = load_tokenizer(self.spec.path)
            self._model = load_model(self.spec.path, dtype=self.spec.dtype)
            log(f"loaded {self.spec.name} from {self.spec.path} in {time.time() - t0:.1f}s")
        return self._model, self._tok

    def unload(self) -> None:
        self._model = self._tok = None

    def max_length(self, wanted: int) -> int:
        """`wanted`, capped at what the model's positions allow (a small model would refuse longer prompts)."""
        from zhongjing.model.generation import context_length
        from zhongjing.model.load import cap_to_context

        return cap_to_context(wanted, context_length(self.load()[0]))


def log(msg: str) -> None:
    print(f"[eval] {msg}", file=sys.stderr, flush=True)


def _context(spec: ModelSpec, item: EvalItem) -> list[dict]:
    ctx = list(item.context)
    if spec.system and (not ctx or ctx[0]["role"] != "system"):
        ctx = [{"role": "system", "content": spec.system}] + ctx
    return ctx


def answer_key(spec: ModelSpec, item: EvalItem, params: dict, model_id: str) -> str:
    return cache_key(kind="answer", model=model_id, item=item.id, messages=_context(spec, item), params=params)


def local_answers(lm: LocalModel, items: Sequence[EvalItem], gen: GenerationConfig, cache: Cache,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, str | None]:
    """item id → answer text (None: the prompt cannot fit the model). Chunks are fixed slices of `items`,
    each seeded by its index, so a resumed run produces what an uninterrupted one would have."""
    from zhongjing.data.render import Renderer
    from zhongjing.model.generation import derive_seed, sample
    from zhongjing.model.load import end_of_turn_ids

    spec = lm.spec
    keys = {it.id: answer_key(spec, it, gen.params(), lm.fingerprint) for it in items}
    have = cache.get_many("answer", list(keys.values()))
    out = {it.id: have[keys[it.id]]["text"] for it in items if keys[it.id] in have}
    chunks = [list(items[i:i + gen.chunk]) for i in range(0, len(items), gen.chunk)]
    done = len(out)
    for ci, chunk in enumerate(chunks):
        if all(it.id in out for it in chunk):
            continue
        model, tok = lm.load()
        max_length = lm.max_length(gen.max_length)
        reserve = min(gen.max_new_tokens, max_length // 2)  # a long history still leaves room to answer
        renderer = Renderer(tok, max_length=max_length, end_ids=end_of_turn_ids(tok, model))
        prompts, ok = [], []
        for it in chunk:
            try:
                prompts.append(renderer.prompt_ids(_context(spec, it), reserve=reserve))
                ok.append(it)
            except ZhongjingError as e:  # e.g. one patient turn longer than the context: no answer (counted),
                log(f"{spec.name}: no answer for {it.id} ({e})")  # cached so a rerun does not try again
                cache.put("answer", keys[it.id], {"text": None, "error": str(e)})
                out[it.id] = None
        gens = sample(model, tok, prompts, max_new_tokens=gen.max_new_tokens, temperature=gen.temperature,
                      top_p=gen.top_p, seed=derive_seed(gen.seed, ci), batch_size=gen.batch_size) if prompts else []
        for it, g in zip(ok, gens):
            if it.id not in out:
                cache.put("answer", keys[it.id], {"text": g.text, "finish_reason": g.finish_reason,
                                                  "tokens": len(g.token_ids)})
                out[it.id] = g.text
                done += 1
        if progress:
            progress(done, len(items))
    return out


def endpoint_answers(spec: ModelSpec, endpoint: Endpoint, items: Sequence[EvalItem], cache: Cache,
                     progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(item id → answer, item id → error) from an OpenAI-compatible endpoint; failures are not cached."""
    model_id = f"{endpoint.cfg.base_url}|{endpoint.cfg.model}"
    params = endpoint.cfg.params()
    keys = {it.id: answer_key(spec, it, params, model_id) for it in items}
    have = cache.get_many("answer", list(keys.values()))
    out = {it.id: have[keys[it.id]]["text"] for it in items if keys[it.id] in have}
    todo = [it for it in items if it.id not in out]
    errors: dict[str, str] = {}
    for k, (it, reply) in enumerate(parallel(lambda it: endpoint.chat(_context(spec, it)), todo,
                                             endpoint.cfg.concurrency), 1):
        if isinstance(reply, Exception):
            errors[it.id] = str(reply)
        else:
            cache.put("answer", keys[it.id], {"text": reply})
            out[it.id] = reply
        if progress:
            progress(len(out), len(items))
    return out, errors


@dataclass
class Throttle:
    """Progress lines at most every `every` seconds (and at the end)."""

    label: str
    every: float = 10.0
    _last: float = field(default_factory=time.time)

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        if done >= total or now - self._last >= self.every:
            self._last = now
            log(f"{self.label}: {done}/{total}")
