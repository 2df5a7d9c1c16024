"""Rollouts for PPO and GRPO: sample answers, then score them under policy, reference, critic and reward — once,
before the update epochs (OpenRLHF's `Experience`).

Layout: each row is its prompt followed by its answer, right-padded — no attention mask is needed (no real token
can see a pad to its right) and sdpa keeps its fast causal path. Per-token tensors are (B, R): column t is answer
token t of the row. The policy is a peft model: the reference is the same weights with the adapter disabled, so no
second copy of the model is held.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, fields, replace

import torch

from zhongjing.model.wrappers import unwrap
from zhongjing.train.lm import only_positions
from zhongjing.train.losses import entropy_from_logits, kl_penalty, token_logprobs


@dataclass
class Rollout:
    sequences: torch.Tensor  # (B, L) long: prompt then answer, right-padded with the pad id
    prompt_lens: torch.Tensor  # (B,) long: prompt tokens of each row (its answer starts at that column)
    action_mask: torch.Tensor  # (B, R) float: 1 on generated tokens (the stop token included), 0 after
    logprobs: torch.Tensor  # (B, R) float: log π_old(token), recomputed by a forward pass after sampling
    ref_logprobs: torch.Tensor  # (B, R) float: log π_ref(token), the adapter disabled
    kl: torch.Tensor  # (B, R) float: per-token KL estimate log π_old − log π_ref (k1), 0 on padding
    scores: torch.Tensor  # (B,) float: sequence reward (reward model and/or rules), before the KL penalty
    rewards: torch.Tensor  # (B, R) float: per-token reward the advantages are computed from
    advantages: torch.Tensor  # (B, R) float: GAE (PPO) or the group-normalised score on every token (GRPO)
    returns: torch.Tensor  # (B, R) float: critic targets (advantages + values); zeros without a critic
    values: torch.Tensor | None = None  # (B, R) float: critic V(s_t) before each answer token; None for GRPO
    response_len: torch.Tensor | None = None  # (B,) long: generated tokens per row
    finished: torch.Tensor | None = None  # (B,) bool: answer ended with a stop token (not cut at max_new_tokens)
    texts: list[str] = field(default_factory=list)  # B decoded answers (for rule rewards and logs)

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def select(self, idx: torch.Tensor) -> "Rollout":
        """Rows `idx` (a minibatch), trimmed to the longest answer among them."""
        width = int(self.action_mask[idx].sum(1).max().item()) if len(idx) else 0
        width = max(width, 1)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v[idx]
                if f.name == "sequences":
                    v = v[:, : int((self.prompt_lens[idx] + width).max().item())]
                elif v.dim() == 2:  # (B, R) per-token
                    v = v[:, :width]
            elif f.name == "texts":
                v = [v[i] for i in idx.tolist()]
            out[f.name] = v
        return replace(self, **out)


# ----------------------------------------------------------------------------- forward passes


@contextlib.contextmanager
def capture_head_input(model, into: dict):
    """Keep what the output layer receives (the final hidden states of the selected positions) in into["hidden"]."""
    head = unwrap(model).get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _m, args: into.__setitem__("hidden", args[0]))
    try:
        yield into
    finally:
        handle.remove()


def answer_positions(sequences: torch.Tensor, prompt_lens: torch.Tensor, action_mask: torch.Tensor):
    """keep (B, L) bool: the positions whose next-token prediction is an answer token; labels (N,) those tokens.

    Row-major order of `keep` equals row-major order of `action_mask`, so (N,) results scatter back to (B, R).
    """
    B, L = sequences.shape
    act = action_mask.bool()
    cols = prompt_lens[:, None] - 1 + torch.arange(act.shape[1], device=sequences.device)[None]  # (B, R)
    rows = torch.arange(B, device=sequences.device)[:, None].expand_as(cols)
    keep = torch.zeros(B, L, dtype=torch.bool, device=sequences.device)
    keep[rows[act], cols[act]] = True
    labels = sequences[rows[act], cols[act] + 1]
    return keep, labels


def response_forward(model, sequences, prompt_lens, action_mask, *, value_head=None, temperature: float = 1.0,
                     with_entropy: bool = False):
    """log π of each answer token (B, R), and optionally critic values (B, R) and entropy (B, R); 0 on padding.

    The vocabulary projection runs on answer positions only; the critic reads the same hidden states as the LM head.
    """
    act = action_mask.bool()
    keep, labels = answer_positions(sequences, prompt_lens, action_mask)
    seen: dict = {}
    with only_positions(model, keep), capture_head_input(model, seen):
        logits = model(input_ids=sequences, use_cache=False).logits  # (N, V)
    if temperature not in (0.0, 1.0):  # the distribution generation sampled from
        logits = logits / temperature
    out = lambda flat: torch.zeros(act.shape, dtype=flat.dtype, device=flat.device).masked_scatter(act, flat)  # noqa: E731
    logprobs = out(token_logprobs(logits[None], labels[None])[0])
    values = out(value_head(seen["hidden"]).float()) if value_head is not None else None
    entropy = out(entropy_from_logits(logits.detach()[None])[0]) if with_entropy else None
    return logprobs, values, entropy


@contextlib.contextmanager
def reference_mode(model):
    """The reference policy: the same weights with the trainable adapter switched off."""
    inner = unwrap(model)
    if not hasattr(inner, "disable_adapter"):
        raise RuntimeError("the policy must be a peft (LoRA) model so the reference is its adapter disabled")
    with inner.disable_adapter():
        yield


# ----------------------------------------------------------------------------- sampling


def pad_batch(prompts: list[list[int]], answers: list[list[int]], pad_id: int, stop_ids: set[int]):
    """Token lists → sequences (B, L), prompt_lens (B,), action_mask (B, R), finished (B,); see the module layout."""
    B = len(prompts)
    L = max(len(p) + len(a) for p, a in zip(prompts, answers))
    R = max(max((len(a) for a in answers), default=1), 1)
    seq = torch.full((B, L), pad_id, dtype=torch.long)
    act = torch.zeros((B, R))
    finished = torch.zeros(B, dtype=torch.bool)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        seq[i, :len(p) + len(a)] = torch.tensor(list(p) + list(a))
        act[i, :len(a)] = 1
        finished[i] = bool(a) and a[-1] in stop_ids
    return seq, torch.tensor([len(p) for p in prompts]), act, finished


@dataclass
class Sampled:
    prompts: list[list[int]]  # B prompt token lists (a prompt repeated K times for K samples)
    answers: list[list[int]]  # B answer token lists (stop token included when the answer stopped)
    texts: list[str]  # B answer texts
    prompt_index: list[int]  # B: which input prompt each row answers
    seconds: float
    tokens: int  # generated tokens in total


def sample_answers(model, tokenizer, prompts: list[list[int]], *, num_samples: int, max_new_tokens: int,
                   temperature: float, top_p: float = 1.0, top_k: int = 0, seed: int | None, batch_size: int,
                   stop_ids=None) -> Sampled:
    from zhongjing.model.generation import sample

    t0 = time.perf_counter()
    gens = sample(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                  top_k=top_k, num_samples=num_samples, seed=seed, batch_size=batch_size, stop_ids=stop_ids)
    seconds = time.perf_counter() - t0
    return Sampled([list(prompts[g.prompt_index]) for g in gens], [list(g.token_ids) for g in gens],
                   [g.text for g in gens], [g.prompt_index for g in gens], seconds, sum(len(g.token_ids) for g in gens))


@torch.no_grad()
def score_sampled(model, sampled: "Sampled", *, pad_id: int, stop_ids: set[int], value_head=None,
                  temperature: float = 1.0, forward_batch: int = 16) -> dict:
    """Forward passes over the sampled answers (policy + critic, then reference), `forward_batch` rows at a time."""
    device = next(unwrap(model).parameters()).device
    seq, plens, act, finished = (t.to(device) for t in pad_batch(sampled.prompts, sampled.answers, pad_id, stop_ids))
    was = unwrap(model).training
    model.eval()  # dropout off: the old log-probs must be those of the policy that is then updated
    lps, refs, vals = [], [], []
    try:
        for i in range(0, len(seq), forward_batch):
            s, p, a = seq[i:i + forward_batch], plens[i:i + forward_batch], act[i:i + forward_batch]
            s = s[:, : int((p + a.sum(1)).max())]
            lp, v, _ = response_forward(model, s, p, a, value_head=value_head, temperature=temperature)
            with reference_mode(model):
                ref, _, _ = response_forward(model, s, p, a, temperature=temperature)
            lps.append(lp), refs.append(ref)
            if v is not None:
                vals.append(v)
    finally:
        model.train(was)
    logprobs, ref_logprobs = torch.cat(lps), torch.cat(refs)
    return dict(sequences=seq, prompt_lens=plens, action_mask=act, finished=finished, logprobs=logprobs,
                ref_logprobs=ref_logprobs, values=torch.cat(vals) if vals else None,
                kl=kl_penalty(logprobs, ref_logprobs, "k1") * act, response_len=act.sum(1).long())


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, action_mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token reward: −β·KL on every answer token, plus the sequence score on its last token. (B,), (B, R) → (B, R)"""
    rewards = -kl_coef * kl * action_mask
    last = (action_mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards

