"""Every alignment loss as a small pure function over tensors, with shapes in the comments.

Names: B = sequences in a batch, T = response tokens (padded), R = rankings, P = (better, worse) pairs.
Masks are 0/1 float or bool tensors; masked positions never contribute. Losses return *per-item* values
(or sums) so the caller chooses the normaliser — gradient accumulation then stays exact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from zhongjing.data.schema import group_pairs


# ----------------------------------------------------------------------------- helpers

def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of x over mask==1 (all of it, or along `dim`); 0 where the mask is empty."""
    mask = mask.to(x.dtype)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  reduce_sum=None) -> torch.Tensor:
    """(x - mean) / std over the masked entries (unbiased variance, like OpenAI's baselines); pads stay as they were.

    `reduce_sum(t)` sums a tensor over processes, so every process whitens with the global statistics
    (per-process statistics would scale each process's gradient differently).
    """
    mask = mask.to(x.dtype)
    total = torch.stack([masked_sum(x, mask), mask.sum()])
    total = reduce_sum(total) if reduce_sum else total
    n = total[1]
    mean = total[0] / n.clamp(min=1)
    sq = masked_sum((x - mean) ** 2, mask)
    sq = reduce_sum(sq) if reduce_sum else sq
    var = sq / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, x)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per position. logits (B, T, V), labels (B, T) long → (B, T).

    logsumexp + gather instead of a full log_softmax: no second (B, T, V) tensor is kept.
    """
    logits = logits.float()
    picked = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution. logits (B, T, V) → (B, T)."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ----------------------------------------------------------------------------- reward model

def ranking_pairs(rankings: list[list[list[int]]], offsets: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten tie-group rankings into pair indices over one reward vector.

    rankings[r]: tie groups best → worst of ranking r, indices local to it; offsets[r]: where ranking r's responses
    start in the flat reward vector. Returns better (P,), worse (P,), owner (P,) long tensors (owner = ranking index).
    Tied answers give no pair.
    """
    better, worse, owner = [], [], []
    for r, (groups, off) in enumerate(zip(rankings, offsets)):
        for b, w in group_pairs(groups):
            better.append(off + b), worse.append(off + w), owner.append(r)
    as_t = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return as_t(better), as_t(worse), as_t(owner)


def ranking_loss(
    rewards: torch.Tensor,  # (N,) scalar reward of every response in the batch
    better: torch.Tensor,  # (P,) index into rewards of the better answer of each pair
    worse: torch.Tensor,  # (P,) index of the worse answer
    owner: torch.Tensor,  # (P,) which ranking (0..R-1) each pair comes from
    norm: torch.Tensor,  # (R,) normaliser per ranking: C(K,2) (the paper) or its number of pairs
    margin: torch.Tensor | None = None,  # (P,) optional required margin (Llama-2 style); 0 when None
) -> torch.Tensor:
    """The paper's K-way loss, one value per ranking: −1/norm_r · Σ_{pairs of r} log σ(r_better − r_worse).  → (R,)

    With norm = C(K,2) every *pair* weighs the same whatever the ties: a tie is missing information, so a ranking with
    ties contributes less in total instead of inflating its remaining pairs (our default, `pair_norm: ckn`).
    With norm = number of pairs every ranking weighs the same (`pair_norm: pairs`). Without ties both are C(K,2).
    With norm = 1 every pair weighs 1 across rankings of any K (`pair_norm: one`): a K=5 ranking counts ten times a
    K=2 pair, instead of the same.
    """
    diff = rewards[better] - rewards[worse]
    if margin is not None:
        diff = diff - margin
    per_pair = -F.logsigmoid(diff)  # (P,)
    per_ranking = torch.zeros(norm.shape[0], dtype=per_pair.dtype, device=per_pair.device)
    per_ranking = per_ranking.index_add(0, owner.to(per_pair.device), per_pair)
    return per_ranking / norm.to(per_pair.dtype)


def ranking_norm(k: int, n_pairs: int, kind: str = "ckn") -> float:
    if kind == "ckn":
        return float(math.comb(k, 2))
    if kind == "pairs":
        return float(max(n_pairs, 1))
    if kind == "one":
        return 1.0
    raise ValueError(f"unknown pair normaliser {kind!r} (ckn, pairs or one)")


# ----------------------------------------------------------------------------- DPO

def dpo_loss(
    policy_chosen: torch.Tensor,  # (B,) Σ log π(y_w|x) over the chosen response tokens
    policy_rejected: torch.Tensor,  # (B,) Σ log π(y_l|x)
    ref_chosen: torch.Tensor,  # (B,) same under the reference (adapter disabled)
    ref_rejected: torch.Tensor,  # (B,)
    beta: float = 0.1,
    label_smoothing: float = 0.0,  # conservative DPO: assumed probability that a label is flipped
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO (Rafailov et al.): −log σ(β[(π_w − ref_w) − (π_l − ref_l)]).  → loss (B,), chosen/rejected rewards (B,)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    logits = chosen_reward - rejected_reward
    loss = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return loss, chosen_reward.detach(), rejected_reward.detach()


# ----------------------------------------------------------------------------- PPO / GRPO

def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π. (B, T), (B, T) → (B, T).

    k1 = log r (unbiased, can be negative; the classic RLHF penalty), k2 = ½(log r)², k3 = (r⁻¹ − 1) + log r
    with r = π/π_ref (Schulman's low-variance, always ≥ 0 estimator, used by GRPO).
    """
    log_ratio = logprobs.float() - ref_logprobs.float()
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        # clamp: an extreme ratio from one rare token should not blow the loss up to inf
        neg = (-log_ratio).clamp(-20, 20)
        return neg.exp() - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r} (k1, k2 or k3)")


def gae(
    rewards: torch.Tensor,  # (B, T) per-token reward (KL penalty everywhere, score added at the last token)
    values: torch.Tensor,  # (B, T) critic value V(s_t) at each response position
    mask: torch.Tensor,  # (B, T) 1 for real response tokens (a prefix of each row)
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, right to left. → advantages (B, T), returns = advantages + values (B, T).

    Past the last real token the value and reward are treated as 0 (episode ended), so padding cannot leak in.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    T = values.shape[1]
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        last = last * mask[:, t]
        adv[:, t] = last
    return adv, adv + values


def end_token_advantage(
    advantages: torch.Tensor,  # (B, T) per answer token
    response_len: torch.Tensor,  # (B,) answer tokens per row (the stop token included when the answer ended)
    finished: torch.Tensor,  # (B,) bool: the answer ended with a stop token
) -> torch.Tensor:
    """The advantage given to the stop token of each finished answer → (F,), F = finished rows. Its mean says which
    way a PPO update moves answer length: below 0, ending is discouraged."""
    rows = finished.bool().nonzero()[:, 0]
    return advantages[rows, (response_len[rows] - 1).clamp(min=0)]


def policy_loss(
    logprobs: torch.Tensor,  # (B, T) log π_θ(a_t) now
    old_logprobs: torch.Tensor,  # (B, T) log π at sampling time
    advantages: torch.Tensor,  # (B, T) (GRPO: the sequence advantage broadcast over T)
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per token: max(−A·ρ, −A·clip(ρ, 1±ε)). → loss (B, T), clipped (B, T) bool, ratio (B, T)."""
    ratio = (logprobs - old_logprobs).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    return torch.maximum(unclipped, clipped), clipped > unclipped, ratio


def value_loss(
    values: torch.Tensor,  # (B, T) critic now
    old_values: torch.Tensor,  # (B, T) critic at sampling time
    returns: torch.Tensor,  # (B, T) GAE returns (targets)
    clip: float | None = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss per token: ½·max((V − R)², (V_old + clip(V − V_old, ±c) − R)²). → loss (B, T), clipped (B, T) bool."""
    err = (values - returns) ** 2
    if clip is None:
        return 0.5 * err, torch.zeros_like(err, dtype=torch.bool)
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    err_clipped = (v_clipped - returns) ** 2
    return 0.5 * torch.maximum(err, err_clipped), err_clipped > err


def group_advantages(
    scores: torch.Tensor,  # (G·K,) one score per sample, the K samples of a prompt consecutive
    group_size: int,  # K
    scale: bool = True,  # divide by the group's std (GRPO); False = Dr. GRPO's mean-only baseline
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantages: each sample's score minus its group's mean (÷ group std). → (G·K,)

    A group whose K samples all scored the same gets 0 advantage: it carries no signal about which answer is better.
    """
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    g = scores.float().view(-1, group_size)
    adv = g - g.mean(1, keepdim=True)
    if scale:
        adv = adv / (g.std(1, keepdim=True) + eps)  # unbiased std, as in the GRPO paper's implementation
    return adv.view(-1)
