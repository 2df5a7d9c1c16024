"""The one generation helper every stage uses: K samples per turn, PPO/GRPO rollouts, evaluation, chat, serving.

`sample()` generates for many prompts at once; `stream()` yields the text of one answer as it grows; the server's
engine drives a `Decoder` directly. All three run the same loop: a batch of rows sharing one left-padded KV cache,
where finished rows leave and waiting prompts join between decoding steps (step-level batching), so a long answer
never holds short ones back. Each (prompt, sample) row draws from its own seeded generator, so a seeded result does
not depend on what else is in the batch.

Semantics every caller can rely on:
- temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off (order: temperature, top-k, top-p).
- `token_ids` are the generated ids; when a stop id ended the answer it is the last id (PPO learns to stop),
  `text` never contains it. A stop string ends the answer; `text` is cut before it (OpenAI semantics).
- `logprobs[i]` is the log-probability of token i under the model at the sampling temperature
  (raw distribution when greedy), before top-k/top-p truncation (penalties, when set, included).
- prompts longer than the model's context, or with no room left for one new token, are refused with a
  ZhongjingError; `max_new_tokens` is capped so prompt + answer fits the context.
"""


from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch

from zhongjing.errors import ZhongjingError
from zhongjing.model.decoder import (Decoder, Generation, Row, SamplingParams, context_length,  # noqa: F401 (API)
                                     default_stop_ids)

__all__ = ["Decoder", "Generation", "Row", "SamplingParams", "Stream", "context_length", "default_stop_ids",
           "derive_seed", "make_sequences", "sample", "stream"]


def derive_seed(seed: int, *keys: int) -> int:
    """A distinct, reproducible 63-bit seed per (request seed, prompt, sample)."""
    x = seed & 0xFFFFFFFFFFFFFFFF
    for k in keys:
        x = (x * 0x9E3779B97F4A7C15 + k + 1) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


# -- the helpers stages call ----------------------------------------------------------
def make_sequences(model, prompts: list[list[int]], params: SamplingParams, *, num_samples: int = 1,
                   on_text: Callable | None = None, tag=None) -> list[Row]:
    """Rows for every (prompt, sample), with per-row seeds and answers capped to the model's context."""
    ctx = context_length(model)
    base = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
    out = []
    for i, p in enumerate(prompts):
        room = params.max_new_tokens if ctx is None else min(params.max_new_tokens, ctx - len(p))
        if room < 1:
            raise ZhongjingError(f"prompt {i} has {len(p)} tokens; the model's context of {ctx} leaves no room to answer")
        for j in range(num_samples):
            out.append(Row(p, params, seed=derive_seed(base, i, j), max_new=room, prompt_index=i,
                                 sample_index=j, on_text=on_text, tag=tag))
    return out


@contextlib.contextmanager
def _eval_mode(model):
    was = model.training
    model.eval()  # LoRA dropout must not act while sampling
    try:
        yield
    finally:
        model.train(was)


def sample(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, num_samples: int = 1, stop_ids: set[int] | None = None,
           stop_strings: Sequence[str] | None = None, seed: int | None = None, return_logprobs: bool = False,
           batch_size: int = 16, on_text: Callable[[int, int, str], None] | None = None,
           repetition_penalty: float = 1.0, frequency_penalty: float = 0.0,
           presence_penalty: float = 0.0, logit_bias: dict[int, float] | None = None) -> list[Generation]:
    """`num_samples` answers per prompt (token-id lists, chat template already applied), ordered by
    (prompt_index, sample_index). At most `batch_size` rows decode together; finished rows are replaced by
    waiting ones at once. `on_text(prompt_index, sample_index, delta)` streams text."""
    if num_samples < 1 or batch_size < 1:
        raise ZhongjingError("num_samples and batch_size must be at least 1")
    params = SamplingParams(max_new_tokens, temperature, top_p, top_k, tuple(stop_strings or ()), seed, return_logprobs,
                            repetition_penalty, frequency_penalty, presence_penalty, logit_bias)
    cb = (lambda s, d: on_text(s.prompt_index, s.sample_index, d)) if on_text else None
    waiting = make_sequences(model, [list(p) for p in prompts], params, num_samples=num_samples, on_text=cb)
    waiting.sort(key=lambda s: -len(s.prompt_ids))  # similar lengths prefill together: less padding
    results: list[Generation] = []
    dec = Decoder(model, tokenizer, stop_ids=stop_ids)
    with _eval_mode(model):
        while waiting or len(dec):
            free = batch_size - len(dec)
            if free > 0 and waiting and dec.can_join:
                # admitting every step would re-prefill constantly; wait until a quarter of the batch is free
                if not len(dec) or free >= max(1, batch_size // 4) or len(waiting) <= free:
                    group, waiting = waiting[:free], waiting[free:]
                    results += [s.result() for s in dec.admit(group)]
            results += [s.result() for s in dec.step()]
    return sorted(results, key=lambda g: (g.prompt_index, g.sample_index))


class Stream:
    """Iterate over the text of one answer as it grows; `.result` holds the Generation afterwards."""

    def __init__(self, model, tokenizer, prompt: list[int], *, stop_ids: set[int] | None = None, **params):
        self._pending: list[str] = []
        self.result: Generation | None = None
        seq = make_sequences(model, [list(prompt)], SamplingParams(**params),
                             on_text=lambda s, d: self._pending.append(d))[0]
        self._it = self._run(Decoder(model, tokenizer, stop_ids=stop_ids), seq)

    def _run(self, dec: Decoder, seq: Row) -> Iterator[str]:
        with _eval_mode(dec.model):
            dec.admit([seq])
            while True:
                yield from self._drain()
                if seq.finished:
                    break
                dec.step()
        self.result = seq.result()

    def _drain(self) -> Iterator[str]:
        while self._pending:
            yield self._pending.pop(0)

    def __iter__(self) -> Iterator[str]:
        return self._it


def stream(model, tokenizer, prompt: list[int], *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
           top_k: int = 0, stop_ids: set[int] | None = None, stop_strings: Sequence[str] | None = None,
           seed: int | None = None, repetition_penalty: float = 1.0, frequency_penalty: float = 0.0,
           presence_penalty: float = 0.0) -> Stream:
    return Stream(model, tokenizer, prompt, stop_ids=stop_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                  top_p=top_p, top_k=top_k, stop_strings=tuple(stop_strings or ()), seed=seed,
                  repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                  presence_penalty=presence_penalty)
