"""`zhongjing train grpo`: group relative policy optimisation — no critic, the group is the baseline.

For every prompt, `group_size` answers are sampled; each answer's advantage is its reward minus the group's mean
(÷ the group's std), the same on all its tokens. The loss is PPO's clipped surrogate plus β·KL(policy‖reference)
per token (the k3 estimator, ≥ 0), the reference being the adapter disabled. Rewards: the reward model and/or
rules (e.g. `reward.ask_question` for the doctor's initiative), as in PPO (rewards.py).

Normaliser: all answer tokens of the optimizer step (token-level, as DAPO / Dr. GRPO argue): averaging per answer
first would make each token of a short answer weigh more, a pull towards length the reward did not ask for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zhongjing.config import parse_stage_args
from zhongjing.errors import ConfigError
from zhongjing.train.common import print_once
from zhongjing.train.rl import Algorithm, RLConfig, run_rl


@dataclass
class GRPOSettings:
    group_size: int = 4  # answers per prompt (the paper's K)
    beta: float = 0.04  # KL-to-reference coefficient in the loss (the KL is logged even at 0)
    clip_eps: float = 0.2
    scale_rewards: bool = True  # divide by the group's std (GRPO); false = mean-only baseline (Dr. GRPO)
    estimator: str = "grpo"  # grpo | rloo (leave-one-out baseline) | reinforce_pp (REINFORCE++-baseline, whitened)

    def __post_init__(self):
        if self.estimator not in ("grpo", "rloo", "reinforce_pp"):
            raise ConfigError(f"grpo.estimator: grpo, rloo or reinforce_pp (critic-free), got {self.estimator!r}")
        if self.group_size < 2:
            raise ConfigError(f"grpo.group_size must be ≥ 2 (a group is the baseline), got {self.group_size}")


@dataclass
class GRPOConfig(RLConfig):
    output: str = "runs/grpo"
    grpo: GRPOSettings = field(default_factory=GRPOSettings)


class GRPO(Algorithm):
    name, critic = "grpo", False

    def __init__(self, s: GRPOSettings, temperature: float = 1.0):
        self.s, self.temperature, self.samples_per_prompt = s, temperature, s.group_size

    def make_rollout(self, sampled, scored: dict, scores: torch.Tensor):
        from zhongjing.train.advantages import estimate
        from zhongjing.train.rollout import Rollout

        act = scored["action_mask"]
        adv, _ = estimate(self.s.estimator, scores.to(act.device), act, group_size=self.s.group_size,
                          scale=self.s.scale_rewards)  # (B, R), 0 on padding
        keys = ("sequences", "prompt_lens", "action_mask", "logprobs", "ref_logprobs", "kl", "response_len",
                "finished")
        return Rollout(**{k: scored[k] for k in keys}, scores=scores, rewards=torch.zeros_like(act),
                       advantages=adv, returns=torch.zeros_like(act), texts=sampled.texts)

    def after_rollout(self, rollout) -> dict:
        groups = rollout.scores.view(-1, self.s.group_size)
        return {"groups_without_signal": (groups.std(1) == 0).float().mean().item()}

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        from zhongjing.train.losses import kl_penalty, masked_sum, policy_loss

        ro, s = batch["rollout"], self.s
        m = ro.action_mask
        logprobs, _, entropy = model(ro.sequences, ro.prompt_lens, m, temperature=self.temperature)
        pg, clipped, _ = policy_loss(logprobs, ro.logprobs, ro.advantages, s.clip_eps)
        kl = kl_penalty(logprobs, ro.ref_logprobs, "k3")
        total = masked_sum(pg + s.beta * kl, m)
        log_ratio = (logprobs - ro.logprobs).detach()
        return total, {"pg_loss": masked_sum(pg, m).item(), "kl_ref": masked_sum(kl.detach(), m).item(),
                       "entropy": masked_sum(entropy, m).item(), "clipfrac": masked_sum(clipped.float(), m).item(),
                       "approx_kl": masked_sum(log_ratio.exp() - 1 - log_ratio, m).item()}


def train_grpo(cfg: GRPOConfig):
    return run_rl(cfg, GRPO(cfg.grpo, cfg.generation.temperature), "grpo")


def main(argv: list[str]) -> int:
    cfg = parse_stage_args("zhongjing train grpo", GRPOConfig, argv, __doc__.split("\n\n")[0])
    out = train_grpo(cfg)
    print_once(f"grpo policy → {out}")
    return 0
