"""Alignment losses against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from zhongjing.train import losses as L


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol)


def test_ranking_loss_k4_with_ties():
    # rewards of 4 answers; ranking: 0 best, 1 and 2 tied, 3 worst → pairs (0,1) (0,2) (0,3) (1,3) (2,3)
    rewards = torch.tensor([2.0, 1.0, 1.0, -1.0])
    better, worse, owner = L.ranking_pairs([[[0], [1, 2], [3]]], [0])
    assert list(zip(better.tolist(), worse.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    # margins 1, 1, 3, 2, 2; −log σ(d) = log(1 + e^−d): 0.313262, 0.313262, 0.048587, 0.126928, 0.126928 → Σ = 0.928967
    total = 2 * 0.3132617 + 0.0485874 + 2 * 0.1269280
    ckn = L.ranking_loss(rewards, better, worse, owner, torch.tensor([L.ranking_norm(4, 5, "ckn")]))
    pairs = L.ranking_loss(rewards, better, worse, owner, torch.tensor([L.ranking_norm(4, 5, "pairs")]))
    assert close(ckn, [total / 6]) and close(ckn, [0.1548278])  # paper: 1/C(4,2)
    assert close(pairs, [total / 5]) and close(pairs, [0.1857934])
    one = L.ranking_loss(rewards, better, worse, owner, torch.tensor([L.ranking_norm(4, 5, "one")]))
    assert close(one, [total]) and close(one, [0.9289667])  # every pair weighs 1: the plain sum


def test_ranking_loss_two_rankings_in_one_vector_and_gradient():
    # ranking A over rewards[0:2] (K=2, 1 beats 0), ranking B over rewards[2:5] (K=3, strict 2>0>1 locally)
    rewards = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.5], requires_grad=True)
    better, worse, owner = L.ranking_pairs([[[1], [0]], [[2], [0], [1]]], [0, 2])
    assert better.tolist() == [1, 4, 4, 2] and worse.tolist() == [0, 2, 3, 3] and owner.tolist() == [0, 1, 1, 1]
    out = L.ranking_loss(rewards, better, worse, owner, torch.tensor([1.0, 3.0]))
    # A: log(1+e^−1) = 0.313262; B: three pairs with margin 0 → 3·log 2 / 3 = 0.693147
    assert close(out, [0.3132617, math.log(2)])
    out.sum().backward()
    # d/dr1 of A = −σ(−1) = −0.268941; reward 4 is the better of two B pairs: 2·(−½)/3 = −1/3
    assert close(rewards.grad[1], -0.2689414) and close(rewards.grad[4], -1 / 3)


def test_ranking_pairs_match_schema_pairs():
    from zhongjing.data.schema import Ranking

    r = Ranking.from_dict({"messages": [{"role": "user", "content": "q"}], "responses": list("abcd"),
                           "ranking": [[2], [0, 3], [1]]})
    better, worse, _ = L.ranking_pairs([r.ranking], [0])
    assert list(zip(better.tolist(), worse.tolist())) == r.pairs()


def test_dpo_sigmoid():
    # chosen: β(−10 − −11) = 0.1, rejected: β(−12 − −11) = −0.1 → loss = log(1 + e^−0.2) = 0.598139
    loss, cr, rr = L.dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), beta=0.1)
    assert close(loss, [0.5981389]) and close(cr, [0.1]) and close(rr, [-0.1])
    # label smoothing 0.1: 0.9·0.598139 + 0.1·log(1 + e^0.2) = 0.538325 + 0.079814 = 0.618139
    loss, _, _ = L.dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]),
                            beta=0.1, label_smoothing=0.1)
    assert close(loss, [0.6181389])


def test_ppo_clipping():
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5, 1.1]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0]])
    old = torch.zeros_like(ratio)
    loss, clipped, r = L.policy_loss(ratio.log(), old, adv, clip_eps=0.2)
    # A>0, ρ=1.5: max(−1.5, −1.2) = −1.2 (clipped);   A>0, ρ=0.5: max(−0.5, −0.8) = −0.5
    # A<0, ρ=0.5: max(0.5, 0.8) = 0.8 (clipped);       A<0, ρ=1.5: max(1.5, 1.2) = 1.5;   ρ=1.1 inside: −2.2
    assert close(loss, [[-1.2, -0.5, 0.8, 1.5, -2.2]])
    assert clipped.tolist() == [[True, False, True, False, False]]
    assert close(r, ratio)


def test_value_loss_clipping():
    v, old, ret = torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.9]), torch.tensor([2.0, 0.0])
    loss, clipped = L.value_loss(v, old, ret, clip=0.2)
    # first: V_clip = 0.7, max((1−2)², (0.7−2)²) = 1.69 → 0.845; second: V moved 0.1 < 0.2 → ½·1 = 0.5
    assert close(loss, [0.845, 0.5]) and clipped.tolist() == [True, False]
    loss, _ = L.value_loss(v, old, ret, clip=None)
    assert close(loss, [0.5, 0.5])


def test_gae_by_hand():
    # γ=1, λ=0.9: δ2 = 1 − 0.7 = 0.3; δ1 = 0.7 − 0.6 = 0.1 → A1 = 0.1 + 0.9·0.3 = 0.37; A0 = 0.1 + 0.9·0.37 = 0.433
    adv, ret = L.gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3), gamma=1.0, lam=0.9)
    assert close(adv, [[0.433, 0.37, 0.3]]) and close(ret, [[0.933, 0.97, 1.0]])
    # padding after the last real token must not leak: γ=0.5, λ=1, mask [1,1,0]
    # δ1 = 1 + 0 − 0.4 = 0.6; δ0 = 0 + 0.5·0.4 − 0.2 = 0 → A0 = 0.5·0.6 = 0.3
    adv, ret = L.gae(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[0.2, 0.4, 9.0]]), torch.tensor([[1, 1, 0]]),
                     gamma=0.5, lam=1.0)
    assert close(adv, [[0.3, 0.6, 0.0]]) and close(ret, [[0.5, 1.0, 0.0]])


def test_kl_estimators():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log r = log 2 = 0.693147;  k2 = ½·0.480453 = 0.240227;  k3 = 1/2 − 1 + 0.693147 = 0.193147
    assert close(L.kl_penalty(lp, ref, "k1"), [0.6931472])
    assert close(L.kl_penalty(lp, ref, "k2"), [0.2402265])
    assert close(L.kl_penalty(lp, ref, "k3"), [0.1931472])
    assert close(L.kl_penalty(ref, ref, "k3"), [0.0])
    with pytest.raises(ValueError):
        L.kl_penalty(lp, ref, "k9")


def test_group_advantages():
    adv = L.group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), 3)
    # group 1: mean 2, unbiased std 1 → −1, 0, 1; group 2 all equal → 0
    assert close(adv, [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], tol=1e-4)
    assert close(L.group_advantages(torch.tensor([1.0, 3.0]), 2, scale=False), [-1.0, 1.0])
    with pytest.raises(ValueError):
        L.group_advantages(torch.ones(5), 2)


def test_token_logprobs_entropy_and_masked_helpers():
    logits = torch.randn(2, 3, 7)
    labels = torch.randint(0, 7, (2, 3))
    ref = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert close(L.token_logprobs(logits, labels), ref)
    assert close(L.entropy_from_logits(torch.zeros(1, 1, 8)), [[math.log(8)]])
    x, m = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]])
    assert close(L.masked_mean(x, m), 2.0)
    w = L.masked_whiten(x, m)
    # masked entries 1, 3: mean 2, unbiased std √2 → ∓0.707107; the pad keeps its value
    assert close(w, [[-0.7071068, 0.7071068, 100.0]], tol=1e-4)


def test_whitening_across_processes_uses_global_statistics():
    """Two 'processes' holding halves of a rollout whiten exactly like one process holding all of it."""
    x = torch.tensor([[1.0, 3.0, 0.0], [4.0, 8.0, 9.0]])
    m = torch.tensor([[1, 1, 0], [1, 1, 1]])
    whole = L.masked_whiten(x, m)
    halves = [(x[:1], m[:1]), (x[1:], m[1:])]

    def fake_reduce(me):  # sums this process's tensor with what the other process contributes at the same call
        calls = iter([
            lambda: torch.stack([L.masked_sum(halves[1 - me][0], halves[1 - me][1].float()), halves[1 - me][1].sum().float()]),
            lambda: L.masked_sum((halves[1 - me][0] - mean[0]) ** 2, halves[1 - me][1].float()),
        ])
        return lambda t: t + next(calls)()

    mean = [L.masked_mean(x, m)]
    parts = [L.masked_whiten(xs, ms, reduce_sum=fake_reduce(i)) for i, (xs, ms) in enumerate(halves)]
    assert close(torch.cat(parts), whole, tol=1e-6)


def test_end_token_advantage_reads_the_stop_token_of_finished_answers_only():
    adv = torch.tensor([[0.1, 0.2, -0.5, 0.0],   # ended at its 3rd token
                        [0.3, 0.4, 0.5, 0.6],    # cut at the limit: no stop token
                        [-0.7, 0.0, 0.0, 0.0]])  # ended at once
    got = L.end_token_advantage(adv, torch.tensor([3, 4, 1]), torch.tensor([True, False, True]))
    assert close(got, torch.tensor([-0.5, -0.7]))
    assert L.end_token_advantage(adv, torch.tensor([3, 4, 1]), torch.tensor([False] * 3)).numel() == 0


def _negative_mean_rollout(B: int = 64, T: int = 40):
    """Answers of 10–40 tokens whose sequence rewards have mean −0.5, like normalised RM scores of the SFT model's
    answers → (lens (B,), mask (B, T), score (B,))."""
    torch.manual_seed(0)
    lens = torch.randint(10, T + 1, (B,))
    mask = (torch.arange(T)[None] < lens[:, None]).float()
    return lens, mask, torch.randn(B) * 0.5 - 0.5


def _stop_advantage(score, lens, mask, values=None) -> torch.Tensor:
    """The stop tokens' mean whitened GAE advantage (γ 1, λ 0.95), every answer finished; V = 0 unless given."""
    B, T = mask.shape
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lens - 1] = score
    adv, _ = L.gae(rewards, torch.zeros(B, T) if values is None else values, mask, 1.0, 0.95)
    return L.end_token_advantage(L.masked_whiten(adv, mask), lens, torch.ones(B, dtype=torch.bool)).mean()


def test_a_cold_critic_under_a_negative_mean_reward_discourages_ending():
    """The mechanism behind answers that grow under PPO: with V = 0 and whitening over tokens, the stop token's
    advantage is centred on the token mean, which the long answers' early tokens (lam^k ≈ 0) pull towards 0 — so a
    reward whose mean is below 0 leaves the stop tokens a negative mean advantage; a critic that predicts the mean
    reward (warm) centres them."""
    lens, mask, score = _negative_mean_rollout()
    cold_end = _stop_advantage(score, lens, mask)
    warm_end = _stop_advantage(score, lens, mask, torch.full(mask.shape, score.mean().item()) * mask)
    assert cold_end < -0.3 and abs(warm_end) < 0.15, (cold_end, warm_end)


def test_centred_rewards_remove_the_cold_critics_pull_on_the_stop_token():
    """ppo.center_rewards (on by default): the rollout's mean sequence reward is subtracted before shaping, so the
    stop tokens' mean advantage no longer follows the sign of the mean reward (the cold-critic case above) — over
    every process."""
    from zhongjing.train.ppo import PPO, PPOSettings

    on, off = PPO(PPOSettings()), PPO(PPOSettings(center_rewards=False))
    assert close(on.centered(torch.tensor([-1.0, -0.5, 0.0])), torch.tensor([-0.5, 0.0, 0.5]))
    assert close(off.centered(torch.tensor([-1.0, -0.5])), torch.tensor([-1.0, -0.5]))
    # two processes, each centring with the whole rollout's mean: (−1 −0.5 + 0 + 2.5) / 4 = 0.25
    other = torch.tensor([0.0, 2.5])
    on.reduce_sum = lambda t: t + torch.stack([other.sum(), torch.tensor(2.0)])
    assert close(on.centered(torch.tensor([-1.0, -0.5])), torch.tensor([-1.25, -0.75]))
    on.reduce_sum = None

    lens, mask, score = _negative_mean_rollout()
    ends = {name: _stop_advantage(algo.centered(score), lens, mask) for name, algo in (("raw", off), ("centred", on))}
    assert ends["raw"] < -0.3 and abs(ends["centred"]) < 0.15, ends


def test_critic_warmup_with_centred_rewards_is_refused():
    from zhongjing.errors import ConfigError
    from zhongjing.train.ppo import PPOSettings

    with pytest.raises(ConfigError, match="center_rewards=false"):
        PPOSettings(critic_warmup=2)
    assert PPOSettings(critic_warmup=2, center_rewards=False).critic_warmup == 2
