"""Each advantage estimator against numbers worked out by hand (train/advantages.py)."""

import math

import pytest
import torch

from zhongjing.train import advantages as A


def close(a, b):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=1e-4), a


def test_gae_skips_the_patients_tokens():
    # doctor token, patient token (context), doctor token; score 1 at the last doctor token; γ=1, λ=0.5
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 9.0, 0.2]])  # the patient's value is never read
    rewards = A.token_rewards(torch.tensor([1.0]), mask)
    close(rewards, [[0, 0, 1]])
    adv, ret = A.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=2: δ = 1 − 0.2 = 0.8; t=0: δ = 0 + 0.2 − 0.5 = −0.3, A = −0.3 + 0.5·0.8 = 0.1
    close(adv, [[0.1, 0.0, 0.8]])
    close(ret, [[0.6, 0.0, 1.0]])


def test_gae_kl_reward_and_estimate_entry():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    kl = torch.tensor([[0.5, 1.0, 7.0]])
    adv, _ = A.estimate("gae", torch.tensor([2.0]), mask, values=torch.zeros(1, 3), kl=kl, kl_coef=0.1,
                        gamma=1.0, lam=1.0)
    # rewards −0.05, −0.1 + 2 = 1.9; λ=1, V=0 → returns-to-go 1.85, 1.9
    close(adv, [[1.85, 1.9, 0.0]])


def test_grpo_rloo_by_hand():
    s = 1 / math.sqrt(0.5)  # 1 ÷ unbiased std of {1, 0}
    close(A.grpo(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2), [0.5 * s, -0.5 * s, -0.5 * s, 0.5 * s])
    close(A.grpo(torch.tensor([1.0, 0.0]), 2, scale=False), [0.5, -0.5])
    close(A.grpo(torch.tensor([3.0, 3.0]), 2), [0.0, 0.0])  # no signal in a tied group
    close(A.rloo(torch.tensor([3.0, 1.0, 2.0]), 3), [1.5, -1.5, 0.0])  # 3 − mean(1, 2) = 1.5
    adv, ret = A.estimate("rloo", torch.tensor([3.0, 1.0, 2.0]), torch.tensor([[1.0, 0, 1], [1, 1, 0], [0, 1, 1]]),
                          group_size=3)
    close(adv, [[1.5, 0, 1.5], [-1.5, -1.5, 0], [0, 0, 0]])
    close(ret, torch.zeros(3, 3))


def test_reinforce_pp_baseline_by_hand():
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # centred scores 0.5, −0.5 → returns-to-go (0.5, 0.5), (−0.5); mean 1/6, unbiased std √(1/3)
    sd = math.sqrt(1 / 3)
    close(A.reinforce_pp(torch.tensor([1.0, 0.0]), mask, 2), [[(1 / 3) / sd, (1 / 3) / sd], [(-2 / 3) / sd, 0]])
    # KL as a per-token reward: row 0 rewards (−0.1, 0.5 − 0.2) → returns (0.2, 0.3); row 1 −0.5
    kl = torch.tensor([[0.1, 0.2], [0.0, 0.0]])
    ret = A.discounted_returns(A.token_rewards(torch.tensor([0.5, -0.5]), mask, kl, 1.0), mask)
    close(ret, [[0.2, 0.3], [-0.5, 0.0]])


def test_last_action_with_holes_and_errors():
    close(A.last_action(torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]])), [2, 0])
    with pytest.raises(ValueError, match="groups of 2"):
        A.grpo(torch.tensor([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError, match="critic"):
        A.estimate("gae", torch.tensor([1.0]), torch.ones(1, 1))
    with pytest.raises(ValueError, match="unknown"):
        A.estimate("vtrace", torch.tensor([1.0]), torch.ones(1, 1))


def test_single_turn_grpo_selects_the_estimator():
    from types import SimpleNamespace

    from zhongjing.errors import ConfigError
    from zhongjing.train.grpo import GRPO, GRPOSettings

    act = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    z = torch.zeros_like(act)
    scored = {"sequences": torch.zeros(4, 5, dtype=torch.long), "prompt_lens": torch.full((4,), 2), "action_mask": act,
              "logprobs": z, "ref_logprobs": z, "kl": z, "response_len": act.sum(1).long(),
              "finished": torch.ones(4, dtype=torch.bool)}
    sampled = SimpleNamespace(texts=["a", "b", "c", "d"])
    scores = torch.tensor([3.0, 1.0, 0.0, 2.0])
    ro = GRPO(GRPOSettings(group_size=2, estimator="rloo")).make_rollout(sampled, scored, scores)
    close(ro.advantages, [[2, 2, 0], [-2, 0, 0], [-2, -2, -2], [2, 0, 0]])  # r − the other one's score
    ro = GRPO(GRPOSettings(group_size=2, scale_rewards=False)).make_rollout(sampled, scored, scores)
    close(ro.advantages, [[1, 1, 0], [-1, 0, 0], [-1, -1, -1], [1, 0, 0]])
    with pytest.raises(ConfigError, match="estimator"):
        GRPOSettings(estimator="gae")
