"""Rewards for PPO/GRPO: the trained reward model, rule rewards, and their weighted sum.

The reward model reads exactly what it was trained on: the dialogue so far plus the answer, rendered with its own
chat template and cut after the answer's end-of-turn token (`reward_input_ids`, shared with `train rm` and `score`).
Rule rewards are cheap, transparent signals for the paper's abilities — e.g. *initiative* (the doctor asks about the
condition) — and guards against reward hacking (answers cut at the length limit, answers padded out to please a
length-biased reward model).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import torch

from zhongjing.data.render import IGNORE, Renderer
from zhongjing.data.schema import Message
from zhongjing.errors import ConfigError


def render_answer(renderer: Renderer, context: Sequence, response: str) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) of the dialogue so far plus `response` as the doctor's turn, ending with the answer's
    end-of-turn token; labels mark the answer only (renderer strategy "last"). Oldest exchanges are dropped to fit;
    None if the answer alone is too long for renderer.max_length."""
    msgs = [m.to_dict() if isinstance(m, Message) else dict(m) for m in context]
    r = renderer.render(msgs + [{"role": "assistant", "content": response}])
    if r is None:
        return None
    last = max(i for i, t in enumerate(r.labels) if t != IGNORE)
    return r.input_ids[: last + 1], r.labels[: last + 1]


def reward_input_ids(renderer: Renderer, context: Sequence, response: str) -> list[int] | None:
    """Token ids the reward model scores for (context ending with a patient turn, answer); see render_answer."""
    out = render_answer(renderer, context, response)
    return out[0] if out else None


def pad_right(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


class RewardModelScorer:
    """A trained reward model, loaded once and frozen; `score(contexts, responses)` → (B,) rewards (NaN for an
    empty answer or one too long to score)."""

    def __init__(self, path: str, *, max_length: int = 4096, batch_size: int = 16, normalize: bool = False,
                 dtype: str = "float32"):
        from zhongjing.model.value_head import load_reward_model

        from zhongjing.model.load import prompt_budget

        self.model, self.tokenizer, self.meta = load_reward_model(path, dtype=dtype)
        # never past the model's context: positions it has no embedding for would give a reward, silently wrong
        self.renderer = Renderer(self.tokenizer, max_length=prompt_budget(max_length, path), strategy="last")
        self.batch_size = batch_size
        stats = self.meta.get("reward_stats") or {}
        if normalize and not stats:
            print(f"reward model {path}: no reward statistics (trained without a validation split), so its rewards "
                  "are used unnormalised", file=sys.stderr)
        self.mean, self.std = (stats.get("mean", 0.0), stats.get("std", 1.0) or 1.0) if normalize else (0.0, 1.0)
        self.pad_id = self.tokenizer.pad_token_id

    @torch.no_grad()
    def score(self, contexts: Sequence[Sequence], responses: Sequence[str]) -> torch.Tensor:
        from zhongjing.model.value_head import sequence_rewards

        rows = []
        for c, r in zip(contexts, responses):
            ids = reward_input_ids(self.renderer, c, r) if r.strip() else None
            rows.append(ids)
        out = torch.full((len(rows),), float("nan"))
        ok = [i for i, ids in enumerate(rows) if ids]
        ok.sort(key=lambda i: len(rows[i]))  # similar lengths together: less padding
        for s in range(0, len(ok), self.batch_size):
            idx = ok[s:s + self.batch_size]
            out[idx] = sequence_rewards(self.model, pad_right([rows[i] for i in idx], self.pad_id)).cpu()
        return (out - self.mean) / self.std  # NaN where the answer is empty or does not fit max_length


@dataclass
class RewardConfig:
    rm: str | None = None  # reward-model folder (zhongjing train rm); None → rule rewards only
    rm_weight: float = 1.0
    normalize_rm: bool = True  # (r − mean)/std with the statistics the RM stored on its validation split
    ask_question: float = 0.0  # + this when the answer asks the patient a follow-up question (initiative)
    length_target: int = 0  # answers longer than this many tokens are penalised (0 = no length penalty)
    length_penalty: float = 0.0  # − this per token beyond length_target
    missing_eos_penalty: float = 0.0  # − this when the answer was cut at max_new_tokens instead of ending
    clip: float | None = 10.0  # final reward clipped to ±clip (None = no clipping)
    rm_batch_size: int = 16

    def check(self) -> None:
        if not self.rm and not (self.ask_question or self.length_penalty or self.missing_eos_penalty):
            raise ConfigError("reward: set 'reward.rm' (a reward-model folder) or at least one rule weight "
                              "(reward.ask_question, reward.length_penalty, reward.missing_eos_penalty)")


class Rewards:
    """score(contexts, texts, lengths, finished) → total (B,) and each part (B,) for logging."""

    def __init__(self, cfg: RewardConfig, max_length: int = 4096):
        cfg.check()
        self.cfg = cfg
        self.rm = (RewardModelScorer(cfg.rm, max_length=max_length, batch_size=cfg.rm_batch_size,
                                     normalize=cfg.normalize_rm) if cfg.rm else None)

    def score(self, contexts: Sequence[Sequence], texts: Sequence[str], lengths: torch.Tensor,
              finished: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.cfg
        parts: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(texts))
        if self.rm is not None:
            rm = self.rm.score(contexts, texts)
            bad = torch.isnan(rm)  # empty / unscorable: the batch's lowest reward minus 1, never a free pass
            if bad.any():
                rm[bad] = rm[~bad].min() - 1.0 if (~bad).any() else -1.0
            parts["rm"] = rm
            total += cfg.rm_weight * parts["rm"]
        parts["asks_question"] = asks_question_reward(texts)
        if cfg.ask_question:
            total += cfg.ask_question * parts["asks_question"]
        if cfg.length_penalty and cfg.length_target:
            over = (lengths.float() - cfg.length_target).clamp(min=0)
            total -= cfg.length_penalty * over
        if cfg.missing_eos_penalty:
            total -= cfg.missing_eos_penalty * (~finished.bool()).float()
        if cfg.clip is not None:
            total = total.clamp(-cfg.clip, cfg.clip)
        return total, parts


def asks_question_reward(texts: Sequence[str]) -> torch.Tensor:
    """1.0 for an answer that asks the patient something, else 0.0. (B,)"""
    from zhongjing.data.text import asks_question

    return torch.tensor([float(asks_question(t)) for t in texts])
