"""Advantage estimators as pure functions: scores (and a critic's values) in, per-token advantages out.

Every function takes per-token tensors (B, T) whose `mask` marks the tokens the policy chose. The mask may have
holes: in a consultation episode the patient's replies sit between the doctor's turns and are context, so "the next
action" of a doctor token is the next *masked* token, wherever it is. Rows of a group (GRPO, RLOO, REINFORCE++-
baseline) are consecutive: rows [g·K, (g+1)·K) are the K episodes of case g.

    gae            PPO: per-token reward (−β·KL, the score on the last action), critic values, λ-returns across turns
    grpo           score − group mean, ÷ group std (Shao et al. 2024); scale=False is Dr. GRPO's mean-only baseline
    rloo           score − mean of the *other* K−1 scores (Ahmadian et al. 2024), unbiased leave-one-out baseline
    reinforce_pp   REINFORCE++-baseline (Hu et al. 2025): score − group mean, KL as a per-token reward, returns-to-go,
                   whitened over all action tokens of the batch (a global, not per-group, scale)
"""

from __future__ import annotations

import torch

ESTIMATORS = ("gae", "grpo", "rloo", "reinforce_pp")
CRITIC = {"gae"}  # estimators that need a value head


def last_action(mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's last action token (B,); 0 for a row without one. Works with holes in the mask."""
    T = mask.shape[1]
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, torch.zeros_like(idx)).max(1).values


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None,
                  kl_coef: float = 0.0) -> torch.Tensor:
    """−β·KL on every action token plus the episode score on its last action token. (B,), (B, T) → (B, T)"""
    mask = mask.float()
    rewards = torch.zeros_like(mask) if kl is None else -kl_coef * kl.float() * mask
    rewards[torch.arange(len(scores)), last_action(mask)] += scores.float() * (mask.sum(1) > 0)
    return rewards


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Σ_{k≥t} γ^(n) r_k over the *action* tokens from t on (n counts action tokens, so context is skipped). (B, T)"""
    mask = mask.float()
    out = torch.zeros_like(rewards, dtype=torch.float32)
    run = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        run = torch.where(m > 0, rewards[:, t] + gamma * run, run)
        out[:, t] = run * m
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over the action tokens only (context tokens are skipped, not zero-reward steps). → advantages, returns (B, T)

    δ_t = r_t + γ·V(next action) − V(t); A_t = δ_t + γλ·A(next action); after the last action V = 0."""
    mask = mask.float()
    adv = torch.zeros_like(values, dtype=torch.float32)
    next_v = torch.zeros(values.shape[0], device=values.device)
    next_a = torch.zeros_like(next_v)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        a = delta + gamma * lam * next_a
        next_a = torch.where(m, a, next_a)
        next_v = torch.where(m, values[:, t].float(), next_v)
        adv[:, t] = torch.where(m, a, torch.zeros_like(a))
    return adv, (adv + values) * mask


def _groups(scores: torch.Tensor, k: int) -> torch.Tensor:
    if k < 2 or scores.numel() % k:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {k} (group size must be ≥ 2)")
    return scores.float().view(-1, k)


def grpo(scores: torch.Tensor, k: int, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """(N,) → (N,): score − group mean (÷ unbiased group std + eps) — losses.group_advantages, the one GRPO baseline."""
    from zhongjing.train.losses import group_advantages

    _groups(scores, k)
    return group_advantages(scores, k, scale=scale, eps=eps)


def rloo(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) → (N,): r_i − mean_{j≠i} r_j = K/(K−1)·(r_i − group mean)."""
    g = _groups(scores, k)
    return ((g - g.mean(1, keepdim=True)) * k / (k - 1)).view(-1)


def reinforce_pp(scores: torch.Tensor, mask: torch.Tensor, k: int, kl: torch.Tensor | None = None,
                 kl_coef: float = 0.0, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++-baseline → (B, T): returns-to-go of (score − group mean, −β·KL per token), whitened over the
    batch's action tokens (mean 0, std 1)."""
    g = _groups(scores, k)
    centred = (g - g.mean(1, keepdim=True)).view(-1)
    ret = discounted_returns(token_rewards(centred, mask, kl, kl_coef), mask)
    m = mask.float()
    n = m.sum().clamp(min=1)
    mean = (ret * m).sum() / n
    var = (((ret - mean) * m) ** 2).sum() / (n - 1).clamp(min=1)
    return (ret - mean) / (var.sqrt() + eps) * m


def estimate(name: str, scores: torch.Tensor, mask: torch.Tensor, *, group_size: int = 1,
             values: torch.Tensor | None = None, kl: torch.Tensor | None = None, kl_coef: float = 0.0,
             gamma: float = 1.0, lam: float = 0.95, scale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One entry for every estimator: → advantages (B, T) on action tokens, returns (B, T) (critic targets for
    gae; zeros otherwise). The group estimators put the KL in the loss, not the reward (GRPO/RLOO), except
    REINFORCE++ which puts it in the reward, as its paper does."""
    mask = mask.float()
    if name == "gae":
        if values is None:
            raise ValueError("the gae estimator needs a critic's values")
        return gae(token_rewards(scores, mask, kl, kl_coef), values, mask, gamma, lam)
    zeros = torch.zeros_like(mask)
    if name == "grpo":
        return grpo(scores, group_size, scale)[:, None].to(mask.device) * mask, zeros
    if name == "rloo":
        return rloo(scores, group_size)[:, None].to(mask.device) * mask, zeros
    if name == "reinforce_pp":
        return reinforce_pp(scores, mask, group_size, kl, kl_coef), zeros
    raise ValueError(f"unknown advantage estimator {name!r} (one of {', '.join(ESTIMATORS)})")
