"""The batch decoder behind `zhongjing.model.generation`: rows sharing one left-padded KV cache.

`admit` prefills new prompts together and merges their cache rows into the running batch (left-padding
whichever side is shorter); `step` feeds every row its last token and samples the next; finished rows leave
and the columns that became padding for everyone are trimmed. Sampling is per row (own temperature, top-k,
top-p, penalties, seeded generator), so a row's tokens do not depend on its neighbours. Streaming text is
detokenised incrementally and held back while it may still become a stop string.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from zhongjing.errors import RangeError, ZhongjingError
from zhongjing.model.fastdecode import lean_step
from zhongjing.model.kvcache import assemble as _assemble, grow_update as _grow_update, layers as _layers
from zhongjing.model.kvcache import lpad as _lpad, set_layers as _set_layers
from zhongjing.model.wrappers import unwrap


@dataclass
class Generation:
    prompt_index: int
    sample_index: int
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (stop id or stop string) | "length" | "cancelled" | "error" (see Row.error)
    logprobs: list[float] | None = None


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    repetition_penalty: float = 1.0  # CTRL/HF style, over prompt + answer: >1 discourages any seen token
    frequency_penalty: float = 0.0  # OpenAI style, over the answer: minus this × times the token was generated
    presence_penalty: float = 0.0  # OpenAI style, over the answer: minus this once a token was generated
    logit_bias: dict[int, float] | None = None  # OpenAI style: token id → value added to its logit (-100 bans it)

    @property
    def penalized(self) -> bool:
        return (self.repetition_penalty != 1.0 or bool(self.frequency_penalty) or bool(self.presence_penalty)
                or bool(self.logit_bias))

    def __post_init__(self):
        self.stop_strings = tuple(s for s in (self.stop_strings or ()) if s)
        for name in ("temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every < / > check below
                raise ZhongjingError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.logit_bias and not all(math.isfinite(v) for v in self.logit_bias.values()):
            raise ZhongjingError("logit_bias values must be finite numbers")
        if self.max_new_tokens < 1:
            raise ZhongjingError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ZhongjingError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ZhongjingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ZhongjingError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ZhongjingError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")


def check_sampling(cfg) -> None:
    """For a config holding max_new_tokens / temperature / top_p / top_k (`__post_init__`): the checks SamplingParams
    makes, at load time rather than when the stage starts sampling; a RangeError, so `from_dict` names the section."""
    try:
        SamplingParams(cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    except ZhongjingError as e:
        raise RangeError(str(e)) from None


def context_length(model) -> int | None:
    from zhongjing.model.load import context_from

    return context_from(getattr(unwrap(model), "config", None))


def default_stop_ids(tokenizer, model=None) -> set[int]:
    from zhongjing.model.load import end_of_turn_ids

    return end_of_turn_ids(tokenizer, model)


class Row:
    """One row being generated. `on_text(seq, delta)` receives text as it becomes final (streaming)."""

    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, *, seed: int, max_new: int,
                 prompt_index: int = 0, sample_index: int = 0, on_text: Callable | None = None, tag=None):
        if not prompt_ids:
            raise ZhongjingError("a prompt must have at least one token")
        self.prompt_ids = list(prompt_ids)
        self.params, self.seed, self.max_new = params, seed, max_new
        self.prompt_index, self.sample_index, self.on_text, self.tag = prompt_index, sample_index, on_text, tag
        self.out_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish_reason: str | None = None
        self.text = ""  # final text, set when the row finishes
        self.emitted = ""  # text already handed to on_text
        self.partial = ""  # text decoded so far while generating (complete characters only)
        self.prefix_off = self.read_off = 0  # token offsets for incremental detokenisation
        self.generator: torch.Generator | None = None
        self.error: str | None = None  # why this row could not continue (its own settings broke sampling)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def result(self) -> Generation:
        return Generation(self.prompt_index, self.sample_index, list(self.out_ids), self.text,
                          self.finish_reason or "cancelled", list(self.logprobs) if self.params.logprobs else None)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that may still turn into a stop string: the longest suffix of `text` that is
    a proper prefix of a stop string. It runs every step for every row with stop strings, so suffixes of 16 or more
    characters are found by searching for the stop string's first 16 characters (str.find), not by trying every
    length: that took ~1 ms a row per step with a long stop string, and one request's settings slowed everyone's
    batch. Shorter suffixes are tried directly, longest first."""
    hold = 0
    for s in stops:
        n = min(len(s) - 1, len(text))
        if n <= hold:
            continue
        head, end = s[:16], len(text)
        if n >= 16:  # longest first: the first place the head occurs in the last n characters
            i = text.find(head, end - n, end)
            while i != -1:
                if s.startswith(text[i:]):
                    hold = max(hold, end - i)
                    break
                i = text.find(head, i + 1, end)
            if hold >= 16:
                continue
        for k in range(min(n, 15), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


class Decoder:
    """A batch of rows sharing one left-padded KV cache; `admit` adds rows, `step` decodes one token for all."""

    def __init__(self, model, tokenizer, *, stop_ids: set[int] | None = None, lean: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = set(default_stop_ids(tokenizer, model) if stop_ids is None else stop_ids)
        self.net = _inner(model)
        params = inspect.signature(type(self.net).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
        self._lean = lean_step(self.net) if lean else None  # the same arithmetic without the model's Python around it
        self._layers = getattr(self.net.config, "num_hidden_layers", None)
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.rows: list[Row] = []
        self.cache = None
        self.mask = self.pos = self.next_tokens = None  # [B, T] long, [B] long, [B] long
        self._ones = torch.ones((64, 1), dtype=torch.long, device=self.device)  # the mask column of a new token

    def __len__(self) -> int:
        """Rows still generating (finished rows may wait in the cache until the next compaction)."""
        return sum(not s.finished for s in self.rows)

    @property
    def can_join(self) -> bool:
        """Whether new rows may join now: always into an empty batch; mid-batch only with plain KV layers
        (sliding-window caches cannot be re-padded, so those models batch at admission only)."""
        return not self.rows or _layers(self.cache, check=True) is not False

    # -- model calls ------------------------------------------------------------------
    def _forward(self, ids, mask, pos, cache, last_only: bool):
        """Logits [B, V] of each row's last token."""
        if self._lean is not None and len(getattr(cache, "layers", None) or ()) == self._layers:
            return self._lean(ids, mask, pos, cache)
        kw = {self._cache_kw: cache, "use_cache": True}
        if last_only and self._keep_kw:
            kw[self._keep_kw] = 1
        out = self.net(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)
        return out.logits[:, -1, :].float()

    def _new_cache(self):
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.net.config)
        except TypeError:  # older transformers
            cache = DynamicCache()
        for layer in getattr(cache, "layers", None) or ():
            if type(layer).__name__ == "DynamicLayer":  # grow in place instead of one full copy per token
                layer.update = functools.partial(_grow_update, layer, type(layer).update)
        return cache

    @torch.inference_mode()
    def admit(self, seqs: list[Row]) -> list[Row]:
        """Prefill `seqs` together, sample their first token, join them to the batch. Returns rows already done."""
        if not seqs:
            return []
        if not self.can_join:
            raise ZhongjingError("this model's cache type cannot take new rows mid-batch; admit when the batch is empty")
        uniq: dict[tuple, int] = {}
        for s in seqs:  # the K samples of one prompt share one prefill
            uniq.setdefault(tuple(s.prompt_ids), len(uniq))
        prompts = list(uniq)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._new_cache()
        logits = self._forward(ids, mask, pos, cache, last_only=True)
        index = torch.tensor([uniq[tuple(s.prompt_ids)] for s in seqs], device=self.device)
        if len(prompts) != len(seqs) or index.tolist() != list(range(len(seqs))):
            _set_layers(cache, [(k[index], v[index]) for k, v in _layers(cache)])
            logits, mask = logits[index], mask[index]
        for s in seqs:
            if s.generator is None:
                s.generator = torch.Generator(device=self.device).manual_seed(s.seed)
        tokens = self._pick(logits, seqs)
        self._merge(seqs, cache, mask, torch.tensor([len(s.prompt_ids) for s in seqs], device=self.device), tokens)
        return self._advance(seqs, tokens)

    @torch.inference_mode()
    def step(self) -> list[Row]:
        """Feed every row its last sampled token and sample the next. Returns rows that finished."""
        if not self.rows:
            return []
        self.mask = torch.cat([self.mask, self._ones[: len(self.rows)]], dim=1)
        logits = self._forward(self.next_tokens[:, None], self.mask, self.pos[:, None], self.cache, last_only=False)
        self.pos = self.pos + 1
        self.next_tokens = self._pick(logits, self.rows)
        return self._advance(self.rows, self.next_tokens)

    def drop(self, seqs: list[Row], reason: str = "cancelled") -> None:
        """Remove rows (e.g. a client went away); they finish with `reason`."""
        gone = {id(s) for s in seqs}
        for s in self.rows:
            if id(s) in gone and not s.finished:
                s.finish_reason = reason
                s.text = self._decode(s)
        self._keep([i for i, s in enumerate(self.rows) if id(s) not in gone and not s.finished])

    def reset(self) -> None:
        self.rows, self.cache, self.mask, self.pos, self.next_tokens = [], None, None, None, None

    # -- batch bookkeeping -------------------------------------------------------------
    def _merge(self, seqs, cache, mask, pos, tokens) -> None:
        """Join prefilled rows to the batch; finished rows still in the cache leave in the same copy."""
        live = [i for i, s in enumerate(self.rows) if not s.finished]
        if not live:
            self.rows, self.cache, self.mask, self.pos, self.next_tokens = list(seqs), cache, mask, pos, tokens
            self._ones = torch.ones((max(64, 2 * len(seqs)), 1), dtype=torch.long, device=self.device)
            return
        take, first = self._live_columns(live)
        omask = self.mask[take, first:] if take is not None else self.mask[:, first:]
        width = max(omask.shape[1], mask.shape[1])
        merged = []
        for (k0, v0), (k1, v1) in zip(_layers(self.cache), _layers(cache)):
            k0, v0 = (k0[take, :, first:], v0[take, :, first:]) if take is not None else (k0[:, :, first:], v0[:, :, first:])
            merged.append((_assemble([k0, k1], width), _assemble([v0, v1], width)))
        _set_layers(self.cache, merged)
        self.mask = torch.cat([_lpad(omask, width, dim=1), _lpad(mask, width, dim=1)])
        keep = (lambda x: x[take]) if take is not None else (lambda x: x)
        self.pos = torch.cat([keep(self.pos), pos])
        self.next_tokens = torch.cat([keep(self.next_tokens), tokens])
        self.rows = [self.rows[i] for i in live] + list(seqs)
        if self._ones.shape[0] < len(self.rows):
            self._ones = torch.ones((2 * len(self.rows), 1), dtype=torch.long, device=self.device)

    def _live_columns(self, keep: list[int]):
        """(row index tensor, or None when every row stays; first column that is not padding for all of them)."""
        take = None if len(keep) == len(self.rows) else torch.tensor(keep, device=self.device)
        mask = self.mask if take is None else self.mask[take]
        return take, int(mask.any(0).nonzero()[0])

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.reset()
            return
        take, first = self._live_columns(keep)
        width = self.mask.shape[1] - first
        _set_layers(self.cache, [(_assemble([k[take, :, first:]], width), _assemble([v[take, :, first:]], width))
                                 for k, v in _layers(self.cache)])
        self.mask, self.pos, self.next_tokens = self.mask[take, first:], self.pos[take], self.next_tokens[take]
        self.rows = [self.rows[i] for i in keep]

    def _retire(self) -> None:
        """Finished rows stay in the cache (computed, ignored) until a quarter of the batch is finished or new
        rows join: one compaction copy for several finished rows instead of one per row."""
        live = [i for i, s in enumerate(self.rows) if not s.finished]
        if not live:
            self.reset()
        elif 4 * (len(self.rows) - len(live)) >= len(self.rows):
            self._keep(live)

    def _advance(self, rows: list[Row], tokens: torch.Tensor) -> list[Row]:
        """Append each row's new token, decide who is finished, let finished rows leave the batch."""
        done = []
        for s, t in zip(rows, tokens.tolist()):
            if s.finished:  # finished earlier, waiting for compaction
                continue
            if s.error:
                s.finish_reason = "error"
                done.append(s)
                continue
            s.out_ids.append(t)
            if t in self.stop_ids:
                s.finish_reason = "stop"
            elif s.params.stop_strings or s.on_text:
                self._update_text(s)
            if not s.finished and len(s.out_ids) >= s.max_new:
                s.finish_reason = "length"
            if s.finished:
                s.text = self._decode(s)
                if s.on_text and s.text.startswith(s.emitted) and len(s.text) > len(s.emitted):
                    s.on_text(s, s.text[len(s.emitted):])
                    s.emitted = s.text
                done.append(s)
        if done:
            self._retire()
        return done

    def _decode(self, s: Row) -> str:
        ids = s.out_ids[:-1] if s.out_ids and s.out_ids[-1] in self.stop_ids else s.out_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if s.finish_reason == "length" and text.endswith("\ufffd"):
            text = text[:-1]  # cut off inside a character (byte-level BPE): drop that half, not show "�"
        hits = [text.index(stop) for stop in s.params.stop_strings if stop in text]
        return text[: min(hits)] if hits else text

    def _update_text(self, s: Row) -> None:
        """Incremental detokenisation: decode only the tokens since the last complete character (O(1) per step,
        not O(length)); check stop strings only where a new match can start; emit what can no longer change."""
        ids = s.out_ids
        prefix = self.tokenizer.decode(ids[s.prefix_off:s.read_off], skip_special_tokens=True)
        whole = self.tokenizer.decode(ids[s.prefix_off:], skip_special_tokens=True)
        if len(whole) <= len(prefix) or whole.endswith("\ufffd"):
            return  # no new text yet, or half a character (byte-level BPE splits CJK characters)
        new = whole[len(prefix):]
        s.partial += new
        s.prefix_off, s.read_off = s.read_off, len(ids)
        stops = s.params.stop_strings
        if stops:
            start = max(0, len(s.partial) - len(new) - max(map(len, stops)) + 1)
            if any(stop in s.partial[start:] for stop in stops):
                s.finish_reason = "stop"  # _decode cuts the final text before it
                return
        safe = s.partial[: len(s.partial) - _held_back(s.partial, stops)]
        if s.on_text and len(safe) > len(s.emitted):
            s.on_text(s, safe[len(s.emitted):])
            s.emitted = safe

    # -- sampling ----------------------------------------------------------------------
    def _pick(self, logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
        """Next token per row; records logprobs for rows that asked. logits: [B, V] float."""
        for i, s in enumerate(rows):
            if s.params.penalized:
                try:
                    _penalize(logits[i], s)
                except Exception as e:  # one row's settings must not fail its neighbours
                    s.error = f"{type(e).__name__}: {e}"
        temps = torch.tensor([s.params.temperature for s in rows], device=logits.device)
        greedy = temps <= 0
        scaled = logits / torch.where(greedy, torch.ones_like(temps), temps)[:, None]
        broken = ~scaled.amax(-1).isfinite()  # a NaN or +inf anywhere, or nothing finite, in a row: one pass
        if broken.any():  # isolate rows whose own settings (or numbers) broke: they end with an error
            for i in broken.nonzero()[:, 0].tolist():
                rows[i].error = rows[i].error or "the sampling settings gave non-finite scores"
        if any(s.error for s in rows):
            scaled = scaled.masked_fill(torch.tensor([s.error is not None for s in rows], device=logits.device)[:, None], 0.0)
            greedy = greedy | torch.tensor([s.error is not None for s in rows], device=logits.device)
        tokens = scaled.argmax(-1)
        sampled = [i for i, g in enumerate(greedy.tolist()) if not g]  # one device read, not one per row
        if sampled:
            sub = _filter(scaled[sampled], [rows[i].params for i in sampled])
            probs = torch.softmax(sub, dim=-1)
            for j, i in enumerate(sampled):
                tokens[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
        if any(s.params.logprobs for s in rows):
            lp = torch.log_softmax(scaled, dim=-1).gather(1, tokens[:, None])[:, 0].tolist()
            for s, x in zip(rows, lp):
                if s.params.logprobs:
                    s.logprobs.append(x)
        return tokens


def _penalize(logits: torch.Tensor, s: Row) -> None:
    """Logit bias and repetition / frequency / presence penalties on one row's logits [V], in place."""
    p = s.params
    if p.logit_bias:
        ids = torch.tensor([i for i in p.logit_bias if 0 <= i < logits.shape[-1]], device=logits.device, dtype=torch.long)
        logits[ids] += torch.tensor([p.logit_bias[i] for i in ids.tolist()], device=logits.device, dtype=logits.dtype)
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(s.prompt_ids + s.out_ids, device=logits.device).unique()
        x = logits[seen]
        logits[seen] = torch.where(x > 0, x / p.repetition_penalty, x * p.repetition_penalty)
    if s.out_ids and (p.frequency_penalty or p.presence_penalty):
        ids, counts = torch.tensor(s.out_ids, device=logits.device).unique(return_counts=True)
        logits[ids] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty


def _filter(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Top-k then top-p (nucleus) per row; the most likely token always survives."""
    top_k = [p.top_k for p in params]
    top_p = [p.top_p for p in params]
    if not any(top_k) and all(p >= 1 for p in top_p):
        return logits
    vocab = logits.shape[-1]
    srt, idx = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    k = torch.tensor([min(x, vocab) if x > 0 else vocab for x in top_k], device=logits.device)[:, None]
    remove = ranks >= k
    srt = srt.masked_fill(remove, float("-inf"))
    probs = torch.softmax(srt, dim=-1)
    before = probs.cumsum(-1) - probs  # mass of the tokens ranked above
    remove |= before >= torch.tensor(top_p, device=logits.device)[:, None]
    remove[:, 0] = False
    srt = srt.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, srt)


def _inner(model):
    """The module to call: LoRA adapters live inside the base model's layers, so call that directly."""
    model = unwrap(model)
    peft_config = getattr(model, "peft_config", None)
    if peft_config and hasattr(model, "get_base_model"):
        cfg = peft_config.get(getattr(model, "active_adapter", None)) or next(iter(peft_config.values()))
        if getattr(cfg, "is_prompt_learning", False):
            raise ZhongjingError("prompt-learning adapters are not supported for generation; use LoRA")
        return model.get_base_model()
    return model
