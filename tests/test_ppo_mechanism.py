"""The pieces of the PPO fix as pure functions, with hand-worked numbers: what a cut answer earns, and how the
per-token reward (KL on every token, the score on the last) turns into advantages for a finished and a cut answer."""

from __future__ import annotations

import pytest
import torch

from zhongjing.train.losses import gae
from zhongjing.train.rewards import RewardConfig, cut_answer_reward
from zhongjing.train.rollout import shape_rewards


def test_cut_answer_reward_subtract_and_replace():
    total = torch.tensor([0.8, 1.5, -0.2])
    finished = torch.tensor([True, False, False])
    # subtract: 1.5 − 1 = 0.5 (a long cut answer the RM liked still beats a finished 0.4-scored one)
    assert cut_answer_reward(total, finished, 1.0, "subtract").tolist() == pytest.approx([0.8, 0.5, -1.2])
    # replace: every cut answer gets −1, whatever the RM said of its beginning
    assert cut_answer_reward(total, finished, 1.0, "replace").tolist() == pytest.approx([0.8, -1.0, -1.0])
    with pytest.raises(ValueError):
        cut_answer_reward(total, finished, 1.0, "ignore")


def test_missing_eos_mode_is_checked_in_the_config():
    from zhongjing.errors import ConfigError

    with pytest.raises(ConfigError, match="missing_eos"):
        RewardConfig(ask_question=1.0, missing_eos="ignore").check()


def test_shaped_reward_and_gae_for_a_finished_and_a_cut_answer():
    """Two answers of 3 and 2 tokens, β = 0.1, critic values 0: hand-worked per-token rewards and GAE (γ = 1, λ = 1)."""
    kl = torch.tensor([[0.5, -0.2, 1.0], [0.3, 0.4, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = cut_answer_reward(torch.tensor([2.0, 3.0]), torch.tensor([True, False]), 1.0, "replace")  # 2, −1
    r = shape_rewards(scores, kl, mask, kl_coef=0.1)
    # row 0: −0.05, +0.02, −0.1 + 2 ; row 1: −0.03, −0.04 − 1 (the score sits on its last real token), pad 0
    assert r.tolist() == [pytest.approx([-0.05, 0.02, 1.9]), pytest.approx([-0.03, -1.04, 0.0])]
    adv, ret = gae(r, torch.zeros_like(r), mask, gamma=1.0, lam=1.0)
    # with V = 0 and λ = 1 the advantage is the reward-to-go
    assert adv[0].tolist() == pytest.approx([1.87, 1.92, 1.9])
    assert adv[1].tolist() == pytest.approx([-1.07, -1.04, 0.0])
    assert torch.equal(ret, adv)


def test_returns_sum_is_the_monte_carlo_return_over_answer_tokens():
    """What the critic warm-up sets the value head to: Σ over answer tokens of the return-to-go (λ = 1, V = 0) / tokens.
    Rows of 3 and 2 tokens, scores 2 and −1, β = 0.1: rewards as above; returns 1.87, 1.92, 1.9 and −1.07, −1.04."""
    from zhongjing.train.ppo import PPO, PPOSettings

    algo = PPO(PPOSettings(kl_coef=0.1, lam=0.5, center_rewards=False))  # as with the warm-up; λ ignored
    scored = {"action_mask": torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]),
              "kl": torch.tensor([[0.5, -0.2, 1.0], [0.3, 0.4, 0.0]])}
    total, n = algo.returns_sum(scored, torch.tensor([2.0, -1.0]))
    assert n.item() == 5 and total.item() == pytest.approx(1.87 + 1.92 + 1.9 - 1.07 - 1.04)

