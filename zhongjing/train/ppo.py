"""`zhongjing train ppo`: actor-critic PPO against the reward model (and/or rule rewards), our own loop.

Policy = the SFT model + a trainable LoRA adapter. Reference = the same weights with the adapter disabled (no
second copy). Reward = the trained reward model, loaded once and frozen (rewards.py), plus optional rules.
Per-token reward = −β·KL(policy‖reference) on every answer token, plus the sequence reward on the last one
(β fixed, or adaptive towards `kl_target`); GAE advantages (whitened); clipped policy and value losses over
`update_epochs` passes per rollout; optional PPO-ptx (an LM loss on SFT dialogues keeps the model's language).

Critic: a linear value head on the *policy's* final hidden states (shared trunk). With LoRA the trunk itself is
frozen — policy and critic share only the low-rank adapter — so the usual interference of a shared trunk is small
(and held down by vf_coef), while one forward pass yields log-probs and values alike: the rollout and every update
cost one model pass instead of two, and no second model sits in memory (TRL's PPO keeps four: policy, reference,
critic, reward). The head starts at zero, so the first advantages are the rewards themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from zhongjing.config import parse_stage_args, within
from zhongjing.errors import ConfigError, RangeError
from zhongjing.model.wrappers import unwrap
from zhongjing.train.common import print_once
from zhongjing.train.rl import Algorithm, RLConfig, run_rl


@dataclass
class PPOSettings:
    clip_eps: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # critic update clip (0 = none)
    vf_coef: float = 0.1
    entropy_coef: float = 0.0  # > 0 rewards exploration; entropy is logged either way
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.05  # β of the per-token KL penalty in the reward
    kl_target: float = 0.0  # > 0: adapt β so the KL per answer approaches this (Ziegler et al. 2019)
    kl_horizon: int = 10000
    whiten_advantages: bool = True
    critic_warmup: int = 0  # > 0: the value head starts at the mean return of this many rollouts of the starting
    # policy instead of 0 (its weights stay 0; the policy is not updated): the first advantages are centred
    center_rewards: bool = True  # subtract each rollout's mean sequence reward (over every process) before the KL
    # shaping: a baseline that follows the rollout, where a slow critic lags (see PPO.centered)
    ptx_coef: float = 0.0  # PPO-ptx: + this × LM loss on ptx_data (0 = off)
    ptx_data: list[str] = field(default_factory=list)  # SFT dialogues for PPO-ptx
    ptx_format: str | None = None

    def __post_init__(self):
        within(self, 0.0, 1.0, "gamma", "lam")
        within(self, 0, float("inf"), "critic_warmup")
        within(self, 0.0, float("inf"), "value_clip", "vf_coef", "entropy_coef", "kl_coef", "kl_target", "ptx_coef")
        if not self.clip_eps > 0:
            raise RangeError(f"clip_eps must be > 0, got {self.clip_eps}")
        if self.critic_warmup and self.center_rewards:  # the warm-up sets the level that centring removes
            raise ConfigError("ppo.critic_warmup needs ppo.center_rewards=false (centred rewards have mean 0: there "
                              "is no level for the value head to start at)")
        if self.ptx_coef and not self.ptx_data:
            raise ConfigError("ppo.ptx_coef > 0 needs ppo.ptx_data (dialogue files for the LM loss)")


@dataclass
class PPOConfig(RLConfig):
    output: str = "runs/ppo"
    ppo: PPOSettings = field(default_factory=PPOSettings)


class PtxData:
    """An endless, seeded stream of SFT micro-batches for PPO-ptx (its position is part of the resume state)."""

    def __init__(self, cfg: PPOConfig, tokenizer, batch_size: int, seed: int):
        from zhongjing.data.readers import read_dialogues
        from zhongjing.data.render import Renderer
        from zhongjing.train.batching import Example

        renderer = Renderer(tokenizer, max_length=cfg.max_length)
        rendered = (renderer.render(d.messages) for d in read_dialogues(cfg.ppo.ptx_data, cfg.ppo.ptx_format))
        self.examples = [Example.from_labels(r.input_ids, r.labels) for r in rendered if r is not None]
        if not self.examples:
            raise ConfigError(f"ppo.ptx_data {cfg.ppo.ptx_data}: no dialogue with a doctor turn fits max_length")
        self.bs, self.seed, self.pad_id, self.drawn = batch_size, seed, tokenizer.pad_token_id, 0

    def next(self) -> dict:
        from zhongjing.train.batching import collate_rows
        from zhongjing.train.mix import rng

        idx = rng(self.seed, "ptx", self.drawn).choice(len(self.examples), min(self.bs, len(self.examples)), False)
        self.drawn += 1
        return collate_rows([[int(i)] for i in idx], self.examples, self.pad_id)


class PPO(Algorithm):
    name, critic, samples_per_prompt = "ppo", True, 1

    def __init__(self, s: PPOSettings, ptx: PtxData | None = None, temperature: float = 1.0):
        self.s, self.ptx, self.temperature, self.kl_coef = s, ptx, temperature, s.kl_coef
        self.critic_warmup = s.critic_warmup

    def centered(self, scores: torch.Tensor) -> torch.Tensor:
        """The sequence rewards PPO learns from: as scored, or minus the rollout's mean (`center_rewards`). (B,) → (B,)

        With whitening over tokens, a stop token's advantage is centred on the token mean, which the early tokens
        of long answers pull towards 0: under a rollout whose mean reward is below 0 the stop tokens get a negative
        mean advantage and the update lengthens answers, whatever the answers' quality (tests/test_losses.py). A
        critic that knew the rollout's mean would remove this; a LoRA critic on a shared trunk learns it slowly
        while each small rollout's mean swings. Centring on the rollout mean removes it at once, like the
        baselines of RLOO and ReMax; what stays is which answers scored above their rollout's mean."""
        if not self.s.center_rewards:
            return scores
        total, n = self.summed(scores.sum(), len(scores))
        return scores - total / max(n, 1.0)

    def returns_sum(self, scored: dict, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ over answer tokens of the Monte Carlo return, answer tokens): what a constant critic would learn
        (λ = 1, so a cold critic's own estimates play no part)."""
        from zhongjing.train.losses import gae
        from zhongjing.train.rollout import shape_rewards

        act = scored["action_mask"]
        _, ret = gae(shape_rewards(self.centered(scores), scored["kl"], act, self.kl_coef), torch.zeros_like(act), act,
                     self.s.gamma, 1.0)
        return (ret * act).sum(), act.sum()

    def make_rollout(self, sampled, scored: dict, scores: torch.Tensor):
        from zhongjing.train.losses import gae, masked_whiten
        from zhongjing.train.rollout import Rollout, shape_rewards

        act = scored["action_mask"]
        rewards = shape_rewards(self.centered(scores), scored["kl"], act, self.kl_coef)  # (B, R)
        adv, ret = gae(rewards, scored["values"], act, self.s.gamma, self.s.lam)
        if self.s.whiten_advantages:
            adv = masked_whiten(adv, act, reduce_sum=self.reduce_sum)
        keys = ("sequences", "prompt_lens", "action_mask", "logprobs", "ref_logprobs", "kl", "values", "response_len",
                "finished")
        return Rollout(**{k: scored[k] for k in keys}, scores=scores, rewards=rewards, advantages=adv * act,
                       returns=ret, texts=sampled.texts)

    def after_rollout(self, rollout) -> dict:
        from zhongjing.train.losses import end_token_advantage

        ends = end_token_advantage(rollout.advantages, rollout.response_len, rollout.finished)
        end_sum, n_end = self.summed(ends.sum(), len(ends))
        # < 0 on average: the stop token of a finished answer is made less likely, so answers grow (the cold critic
        # of a reward whose mean on the policy's answers is below 0); NaN when no answer ended
        logged = {"adv_stop": end_sum / n_end if n_end else float("nan")}
        if self.s.kl_target > 0:  # proportional controller on the KL per answer
            # of the whole rollout: with a per-process KL each process would steer its own kl_coef apart
            kl_sum, n = self.summed(rollout.kl.sum(), len(rollout))
            err = max(-0.2, min(0.2, kl_sum / n / self.s.kl_target - 1))
            self.kl_coef *= 1 + err * n / self.s.kl_horizon
        return logged | {"kl_coef": self.kl_coef}

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]:
        """Σ over answer tokens of clipped policy loss + vf_coef · clipped value loss − entropy bonus (+ ptx)."""
        from zhongjing.train.losses import masked_sum, policy_loss, value_loss

        ro, s = batch["rollout"], self.s
        m = ro.action_mask
        logprobs, values, entropy = model(ro.sequences, ro.prompt_lens, m, temperature=self.temperature)
        pg, clipped, ratio = policy_loss(logprobs, ro.logprobs, ro.advantages, s.clip_eps)
        vf, v_clipped = value_loss(values, ro.values, ro.returns, s.value_clip or None)
        total = masked_sum(pg + s.vf_coef * vf - s.entropy_coef * entropy, m)
        log_ratio = (logprobs - ro.logprobs).detach()
        metrics = {"pg_loss": masked_sum(pg, m).item(), "vf_loss": masked_sum(vf, m).item(),
                   "entropy": masked_sum(entropy, m).item(), "clipfrac": masked_sum(clipped.float(), m).item(),
                   "vf_clipfrac": masked_sum(v_clipped.float(), m).item(),
                   "approx_kl": masked_sum(log_ratio.exp() - 1 - log_ratio, m).item(),  # k3 of old → new
                   "value": masked_sum(values.detach(), m).item()}
        if self.ptx is not None and s.ptx_coef:
            from zhongjing.train.lm import lm_loss

            pb = {k: v.to(m.device) if torch.is_tensor(v) else v for k, v in self.ptx.next().items()}
            ptx_sum, _ = lm_loss(unwrap(model).policy, pb)
            ptx_mean = ptx_sum / max(pb["n"], 1)
            total = total + s.ptx_coef * ptx_mean * batch["n"]  # the loop divides by Σn: a mean over the window
            metrics["ptx_loss"] = ptx_mean.item() * batch["n"]
        return total, metrics

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_coef, "ptx_drawn": self.ptx.drawn if self.ptx else 0}

    def load_state_dict(self, state: dict) -> None:
        self.kl_coef = state["kl_coef"]
        if self.ptx:
            self.ptx.drawn = state.get("ptx_drawn", 0)


def train_ppo(cfg: PPOConfig):
    ptx = None
    if cfg.ppo.ptx_coef:
        from zhongjing.model.load import load_tokenizer

        ptx = PtxData(cfg, load_tokenizer(cfg.model), cfg.train.batch_size, cfg.train.seed)
    return run_rl(cfg, PPO(cfg.ppo, ptx, cfg.generation.temperature), "ppo")


def main(argv: list[str]) -> int:
    cfg = parse_stage_args("zhongjing train ppo", PPOConfig, argv, __doc__.split("\n\n")[0])
    out = train_ppo(cfg)
    print_once(f"ppo policy → {out}")
    return 0
