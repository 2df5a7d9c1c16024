"""The trained reward model as a scorer, and the tokens it reads for a (dialogue so far, answer) pair.

The reward model reads exactly what it was trained on: the dialogue so far plus the answer, rendered with its own
chat template and cut after the answer's end-of-turn token (`render_answer` / `reward_input_ids`, shared by
`train rm`, PPO/GRPO rewards, `score` and the eval judge).
"""

from __future__ import annotations

import sys
from typing import Sequence

import torch

from zhongjing.data.render import IGNORE, Renderer
from zhongjing.data.schema import Message
from zhongjing.model.load import prompt_budget
from zhongjing.model.value_head import load_reward_model, sequence_rewards


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
