"""Rewards for PPO/GRPO: the trained reward model, rule rewards, and their weighted sum.

The reward model reads exactly what it was trained on: the dialogue so far plus the answer, rendered with its own
chat template and cut after the answer's end-of-turn token (zhongjing.model.reward: the scorer and `reward_input_ids`,
shared with `train rm`, `score` and eval).
Rule rewards are cheap, transparent signals for the paper's abilities — e.g. *initiative* (the doctor asks about the
condition) — and guards against reward hacking (answers cut at the length limit, answers padded out to please a
length-biased reward model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from zhongjing.config import at_least, finite, positive, within
from zhongjing.errors import ConfigError
from zhongjing.model.reward import RewardModelScorer


@dataclass
class RewardConfig:
    rm: str | None = None  # reward-model folder (zhongjing train rm); None → rule rewards only
    rm_weight: float = 1.0
    normalize_rm: bool = True  # (r − mean)/std with the statistics the RM stored on its validation split
    ask_question: float = 0.0  # + this when the answer asks the patient a follow-up question (initiative)
    length_target: int = 0  # answers longer than this many tokens are penalised (0 = no length penalty)
    length_penalty: float = 0.0  # − this per token beyond length_target
    missing_eos_penalty: float = 0.0  # − this when the answer was cut at max_new_tokens instead of ending
    missing_eos: str = "subtract"  # "subtract": a cut answer gets its score − the penalty; "replace": it gets
    # −penalty alone — the RM scores a cut answer as if it had ended, so its score is no evidence about it
    length_bonus: float = 0.0  # + this per answer token: a PLANTED length hack (tests of the hacking monitor only)
    clip: float | None = 10.0  # final reward clipped to ±clip (None = no clipping)
    rm_batch_size: int = 16
    placebo: bool = False  # a CONTROL run, not a recipe: each training rollout's rewards are shuffled among its
    # answers before the update (held-out evaluation still scores the real reward), so the policy moves about as far
    # as under the real reward but learns nothing from it; its win/tie/lose against SFT is what chance gives

    def __post_init__(self):  # NaN or inf trained on NaN rewards and wrote the policy; rm_batch_size 0 was a traceback
        finite(self, "rm_weight", "ask_question", "length_bonus")
        within(self, 0.0, float("inf"), "length_penalty", "missing_eos_penalty")
        at_least(self, 0, "length_target")
        at_least(self, 1, "rm_batch_size")
        if self.clip is not None:  # (null: no clipping)
            positive(self, "clip")

    def check(self) -> None:
        if self.missing_eos not in ("subtract", "replace"):
            raise ConfigError(f"reward.missing_eos: 'subtract' or 'replace', got {self.missing_eos!r}")
        if not self.rm and not (self.ask_question or self.length_penalty or self.missing_eos_penalty
                                or self.length_bonus):
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
        if cfg.length_bonus:
            total += cfg.length_bonus * lengths.float()
        if cfg.missing_eos_penalty:
            total = cut_answer_reward(total, finished, cfg.missing_eos_penalty, cfg.missing_eos)
        if cfg.clip is not None:
            total = total.clamp(-cfg.clip, cfg.clip)
        return total, parts


def placebo_rewards(scores: torch.Tensor, seed: int) -> torch.Tensor:
    """The rewards of a placebo update: `scores` in a seeded random order. (B,) → (B,)

    The same values (mean, spread, the share of penalties for cut answers), each given to a random answer of the
    rollout: PPO's update keeps its size, its KL and its noise, while which answer was better no longer reaches it."""
    perm = torch.randperm(len(scores), generator=torch.Generator().manual_seed(seed))
    return scores[perm.to(scores.device)]


def cut_answer_reward(total: torch.Tensor, finished: torch.Tensor, penalty: float, mode: str = "subtract") -> torch.Tensor:
    """The reward of answers cut at the length limit. (B,), (B,) bool → (B,)

    subtract: total − penalty; replace: −penalty whatever the answer scored (the score of a text whose end was
    never written rewards its beginning, and a policy can earn that by never ending)."""
    cut = ~finished.bool()
    if mode == "replace":
        return torch.where(cut, torch.full_like(total, -penalty), total)
    if mode == "subtract":
        return total - penalty * cut.to(total.dtype)
    raise ValueError(f"reward.missing_eos: 'subtract' or 'replace', got {mode!r}")


def asks_question_reward(texts: Sequence[str]) -> torch.Tensor:
    """1.0 for an answer that asks the patient something, else 0.0. (B,)"""
    from zhongjing.data.text import asks_question

    return torch.tensor([float(asks_question(t)) for t in texts])
