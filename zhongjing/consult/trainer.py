"""`zhongjing train consult`: RL on whole consultations (env=consultation) or on exam questions (env=exam, RLVR).

One *update* = run `group_size` episodes for each of `cases_per_update` cases against the patient simulator, reward
each episode (consult/rewards.py, every part logged), render it once (doctor tokens = actions, the rest context),
score it under policy, reference (adapter off) and critic, take advantages from train/advantages.py's estimator
(`gae` with a critic, or the critic-free `grpo`, `rloo`, `reinforce_pp`), then `update_epochs` passes of PPO's clipped
surrogate + β·KL(policy‖reference). Checkpoints after updates (train/checkpoint.py); sampling is seeded by update
number, so a killed run resumes and repeats the same losses. Held-out cases are played at every evaluation: facts
elicited, the share of episodes that ask before advising, premature advice, turns, KL (logs/eval.jsonl).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from zhongjing.consult.episodes import EpisodeSettings
from zhongjing.consult.patients import PatientSettings
from zhongjing.consult.rewards import ConsultRewardSettings, ExamRewardSettings
from zhongjing.config import at_least, positive, within
from zhongjing.errors import ConfigError
from zhongjing.model.lora import LoraSettings
from zhongjing.train.advantages import CRITIC, ESTIMATORS
from zhongjing.train.common import TrainSettings, refuse_fit_only_keys


@dataclass
class ConsultConfig:
    model: str = ""  # the SFT doctor (policy parent)
    cases: str = ""  # `zhongjing data cases` output (env=consultation) or an exam file (env=exam)
    dialogues: list[str] = field(default_factory=list)  # ...or dialogue files, made into cases at start (pipeline)
    env: str = "consultation"
    format: str | None = None  # exam file format (auto-detected)
    output: str = "runs/consult"
    system: str = ""  # doctor system prompt when a case has none
    estimator: str = "grpo"  # gae | grpo | rloo | reinforce_pp
    group_size: int = 4  # episodes per case (the baseline of grpo/rloo/reinforce_pp)
    scale_rewards: bool = True  # grpo: ÷ group std
    beta: float = 0.04  # KL(policy‖reference) in the loss (k3)
    kl_coef: float = 0.0  # KL as a per-token reward (gae, reinforce_pp)
    clip_eps: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.5
    cases_per_update: int = 4
    update_epochs: int = 1
    eval_cases: int = 8
    stop_kl: float = 0.0  # stop when the mean KL per episode passes this (0 = never)
    max_length: int = 1024
    dtype: str = "float32"
    episode: EpisodeSettings = field(default_factory=EpisodeSettings)
    patient: PatientSettings = field(default_factory=PatientSettings)
    reward: ConsultRewardSettings = field(default_factory=ConsultRewardSettings)
    exam_reward: ExamRewardSettings = field(default_factory=ExamRewardSettings)
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(dropout=0.0))
    train: TrainSettings = field(default_factory=lambda: TrainSettings(lr=5e-5, epochs=1, batch_size=8, grad_accum=1,
                                                                        warmup_ratio=0.0))

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"config key 'estimator': one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.env not in ("consultation", "exam"):
            raise ConfigError(f"config key 'env': 'consultation' or 'exam', got {self.env!r}")
        if self.estimator not in CRITIC and self.group_size < 2:
            raise ConfigError(f"estimator {self.estimator} needs group_size ≥ 2 (the group is the baseline)")
        # the same ranges as PPO's; cases_per_update 0 was a ZeroDivisionError, update_epochs 0 an IndexError,
        # and NaN coefficients trained to NaN and wrote the policy
        at_least(self, 1, "group_size", "cases_per_update", "update_epochs", "max_length")
        at_least(self, 0, "eval_cases")
        within(self, 0.0, 1.0, "gamma", "lam")
        within(self, 0.0, float("inf"), "beta", "kl_coef", "vf_coef", "stop_kl")
        positive(self, "clip_eps")
        refuse_fit_only_keys(self.train, "the output is the last policy")


def load_items(cfg: ConsultConfig) -> list:
    """Cases; for env=exam each question is a one-turn case whose reference is the answer key."""
    from zhongjing.consult.cases import Case, CasesConfig, build_cases, read_cases

    if cfg.env == "consultation" and cfg.dialogues and not cfg.cases:
        return build_cases(CasesConfig(inputs=list(cfg.dialogues), skip_empty=True))[0]
    if not cfg.cases:
        raise ConfigError("train consult needs cases=FILE (zhongjing data cases output, or an exam file with env=exam)")
    if cfg.env == "consultation":
        return read_cases(cfg.cases)
    from zhongjing.consult.rewards import exam_prompt
    from zhongjing.data.readers import read_exam

    return [Case(q.id, exam_prompt(q.question, q.options), [], q.answer, None, {"env": "exam"})
            for q in read_exam(cfg.cases, cfg.format)]


class Environment:
    """Plays and scores episodes: the patient and reward of env=consultation, or one verifiable turn (env=exam)."""

    def __init__(self, cfg: ConsultConfig, policy, tok, stop_ids):
        from zhongjing.consult.patients import make_patient
        from zhongjing.consult.rewards import ConsultRewards
        from zhongjing.data.render import Renderer

        self.cfg, self.policy, self.tok, self.stop_ids = cfg, policy, tok, stop_ids
        self.renderer = Renderer(tok, max_length=cfg.max_length, strategy="all")
        exam = cfg.env == "exam"
        self.episode = EpisodeSettings(**{**vars(cfg.episode), "max_turns": 1}) if exam else cfg.episode
        p = cfg.patient
        self.patient = None if exam else make_patient(p.kind, path=p.path, max_facts=p.max_facts, endpoint=p.endpoint,
                                                      cache=p.cache or str(Path(cfg.output) / "patient_cache.sqlite"))
        self.rewards = None if exam else ConsultRewards(cfg.reward, cfg.max_length)

    def play(self, cases, k: int, seed: int, temperature: float | None = None):
        from zhongjing.consult.episodes import run_episodes
        from zhongjing.consult.rewards import exam_scores

        s = self.episode if temperature is None else EpisodeSettings(**{**vars(self.episode), "temperature": temperature})
        eps, timing = run_episodes(self.policy, self.tok, [c for c in cases for _ in range(k)], self.patient, s,
                                   renderer=self.renderer, seed=seed, stop_ids=self.stop_ids,
                                   system=self.cfg.system or None)
        scores, parts = exam_scores(eps, self.cfg.exam_reward) if self.rewards is None else self.rewards.score(eps)
        return eps, scores, parts, timing


def make_rollout(cfg: ConsultConfig, model, renderer, eps, scores, pad_id: int):
    from zhongjing.consult.episodes import EpisodeRollout, pack, score_packed
    from zhongjing.train.advantages import estimate

    sc = score_packed(model, pack(renderer, eps, pad_id), temperature=cfg.episode.temperature)
    act = sc["action_mask"]
    scores = scores.to(act.device)
    adv, ret = estimate(cfg.estimator, scores, act, group_size=cfg.group_size, values=sc["values"], kl=sc["kl"],
                        kl_coef=cfg.kl_coef, gamma=cfg.gamma, lam=cfg.lam, scale=cfg.scale_rewards)
    return EpisodeRollout(sc["sequences"], sc["prompt_lens"], act, sc["logprobs"], sc["ref_logprobs"], sc["kl"],
                          scores, torch.zeros_like(act), adv, ret, sc["values"], act.sum(1).long(),
                          torch.tensor([e.finished for e in eps]), [e.advice for e in eps])


def loss_fn(cfg: ConsultConfig):
    from zhongjing.train.losses import kl_penalty, masked_sum, policy_loss, value_loss

    def loss(model, batch: dict):
        ro = batch["rollout"]
        m = ro.action_mask
        logprobs, values, entropy = model(ro.sequences, ro.prompt_lens, m, temperature=cfg.episode.temperature)
        pg, clipped, _ = policy_loss(logprobs, ro.logprobs, ro.advantages, cfg.clip_eps)
        kl = kl_penalty(logprobs, ro.ref_logprobs, "k3")
        total = masked_sum(pg + cfg.beta * kl, m)
        out = {"pg_loss": masked_sum(pg, m).item(), "kl_ref": masked_sum(kl.detach(), m).item(),
               "entropy": masked_sum(entropy, m).item(), "clipfrac": masked_sum(clipped.float(), m).item()}
        if values is not None:
            vl, _ = value_loss(values, ro.values, ro.returns)
            total = total + cfg.vf_coef * masked_sum(vl, m)
            out["vf_loss"] = masked_sum(vl, m).item()
        return total, out

    return loss


def episode_stats(eps, scores, parts, kl=None) -> dict:
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    per = [e.stats() for e in eps]
    out = {"episodes": len(eps), "reward": scores.mean().item(),
           **{k: mean([st[k] for st in per]) for k in ("facts_elicited", "turns", "asked_before_advice",
                                                        "premature_advice", "advised")},
           "doctor_tokens": mean([e.doctor_tokens for e in eps]),
           **{f"reward_{k}": v.float().mean().item() for k, v in parts.items()}}
    if kl is not None:
        out["kl"] = kl.sum(1).mean().item()
    return out
