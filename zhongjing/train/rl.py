"""The loop PPO and GRPO share: prompts → rollout → several epochs of clipped updates, with checkpoints and resume.

One *update* = sample answers for `rollout_prompts` prompts, score them once (policy, reference, critic, reward),
then `update_epochs` passes over them in optimizer steps of batch_size × grad_accum answers. The algorithm (PPO
or GRPO) supplies the critic (or none), how a rollout gets its advantages, and the loss. Everything else lives
here: prompts and their held-out evaluation set, the reward, logging (`logs/train.jsonl` per update,
`logs/eval.jsonl`), atomic checkpoints after an update (resume regenerates nothing twice: sampling is seeded by
update number), guards against reward hacking (answer length logged and capped, entropy logged, a run stopped
when KL to the reference passes `stop_kl`), and the output folder (the policy adapter over the parent, plus the
critic's `value_head.safetensors` when there is one).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from zhongjing.config import at_least
from zhongjing.errors import ConfigError, ZhongjingError
from zhongjing.model.decoder import check_sampling
from zhongjing.model.lora import LoraSettings, TrainedIO
from zhongjing.train.common import TrainSettings, refuse_fit_only_keys
from zhongjing.train.monitor import MonitorSettings
from zhongjing.train.rewards import RewardConfig


@dataclass
class GenSettings:
    max_new_tokens: int = 256  # hard cap on answer length (a reward-hacking guard as well as a cost one)
    temperature: float = 1.0  # 1.0 = the policy's own distribution, which PPO's ratios assume
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 16  # rows decoded together
    forward_batch: int = 16  # rows per scoring forward pass (policy, reference, critic)

    def __post_init__(self):
        check_sampling(self)
        at_least(self, 1, "batch_size", "forward_batch")


@dataclass
class RLConfig:
    model: str = ""  # policy parent: the SFT model (full folder or adapter, merged in memory)
    prompts: list[str] = field(default_factory=list)  # dialogue or ranking files: the patient turns to answer
    format: str | None = None
    turn: str = "last"  # dialogue files: "last" patient turn, "all", or a 1-based number
    output: str = "runs/rl"
    max_length: int = 4096  # prompt + answer; older exchanges are dropped from the prompt
    eval_prompts: int = 16  # held out from training; reward, question rate, length and KL measured on them
    eval_red_flags: int = 0  # of the held-out prompts, up to this many whose patient reports a red flag
    # (data/simulate.red_flag): the rubric judge's safety moves mostly there, so a random few dozen prompts (about 1
    # in 30 has one) leave the monitor nearly blind to a dropped referral
    stop_kl: float = 0.0  # stop the run when the mean KL(policy‖reference) per answer passes this (0 = never)
    rollout_prompts: int = 0  # prompts per update; 0 = batch_size × grad_accum answers' worth
    update_epochs: int = 2  # passes over each rollout ("several PPO epochs per batch")
    update_kl: float = 0.0  # > 0: end a rollout's update passes early once the policy moved this far from the one
    # that sampled it (mean approximate KL per answer token, old → new): later steps would train off-policy
    dtype: str = "float32"
    reward: RewardConfig = field(default_factory=RewardConfig)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)  # independent judges of the held-out answers
    select: str = "best"  # the output: "best" = the evaluated policy with the highest held-out reward among those
    # not flagged for reward hacking (the starting policy included), "last" = the final one
    generation: GenSettings = field(default_factory=GenSettings)
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(dropout=0.0))  # ratios need a deterministic policy
    train: TrainSettings = field(default_factory=lambda: TrainSettings(lr=5e-5, epochs=2, batch_size=8,
                                                                        grad_accum=4, warmup_ratio=0.0))

    def __post_init__(self):
        if self.turn not in ("last", "all") and not (self.turn.isdigit() and int(self.turn) >= 1):
            raise ConfigError(f"config key 'turn': 'last', 'all' or a patient-turn number, got {self.turn!r}")
        if self.update_epochs < 1:
            raise ConfigError(f"config key 'update_epochs': must be ≥ 1, got {self.update_epochs}")
        if self.select not in ("best", "last"):
            raise ConfigError(f"config key 'select': 'best' or 'last', got {self.select!r}")
        for key in ("eval_prompts", "eval_red_flags", "rollout_prompts", "stop_kl", "update_kl"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"config key '{key}': must be ≥ 0 (0 = off), got {getattr(self, key)}")
        refuse_fit_only_keys(self.train, "`select` picks the output (best held-out reward, or last)")


# ----------------------------------------------------------------------------- the trained modules


class ActorCritic(nn.Module):
    """Policy (peft model) + optional value head: one forward gives log-probs, values and entropy (B, R), and goes
    through any DDP wrapper put around this module."""

    def __init__(self, policy, value_head: nn.Module | None):
        super().__init__()
        self.policy, self.value_head = policy, value_head

    def forward(self, sequences, prompt_lens, action_mask, temperature: float = 1.0, with_entropy: bool = True):
        from zhongjing.train.rollout import response_forward

        return response_forward(self.policy, sequences, prompt_lens, action_mask, value_head=self.value_head,
                                temperature=temperature, with_entropy=with_entropy)


@dataclass
class ActorCriticIO:
    """Saves the policy adapter like every stage (TrainedIO) and the critic next to it."""

    inner: TrainedIO

    def save(self, model: ActorCritic, out: Path, state_dict: dict | None = None) -> None:
        sd = {k[len("policy."):]: v for k, v in state_dict.items() if k.startswith("policy.")} if state_dict else None
        self.inner.save(model.policy, out, sd)
        if model.value_head is not None:
            model.value_head.save(out)

    def restore(self, model: ActorCritic, src: Path) -> None:
        from zhongjing.model.value_head import ValueHead

        self.inner.restore(model.policy, src)
        if model.value_head is not None:
            head = ValueHead.load(src, model.value_head.summary.in_features)
            model.value_head.load_state_dict(head.state_dict())


# ----------------------------------------------------------------------------- prompts


@dataclass
class Prompt:
    id: str
    context: list  # Messages ending with the patient turn
    ids: list[int]  # rendered prompt (generation prompt included)


def load_prompts(cfg: RLConfig, tokenizer, counts) -> list[Prompt]:
    from zhongjing.data.readers import kind_of, list_files, read_dialogues, read_rankings
    from zhongjing.data.readers.detect import detect_format
    from zhongjing.data.render import Renderer
    from zhongjing.data.turns import select_turns

    from zhongjing.model.load import prompt_budget

    renderer = Renderer(tokenizer, max_length=prompt_budget(cfg.max_length, cfg.model))
    out, seen = [], set()
    for f in list_files(cfg.prompts):
        kind = kind_of(cfg.format or detect_format(f))
        if kind == "dialogue":
            items = [(it.id, it.context) for d in read_dialogues(f, cfg.format) for it in select_turns(d, cfg.turn)]
        elif kind == "ranking":
            items = [(r.id, r.messages) for r in read_rankings(f, cfg.format)]
        else:
            raise ZhongjingError(f"{f}: holds {kind} data; prompts come from dialogue or ranking files")
        for id_, ctx in items:
            key = tuple((m.role, m.content) for m in ctx)
            if key in seen:
                counts["duplicate_prompts"] += 1
                continue
            seen.add(key)
            try:
                ids = renderer.prompt_ids(ctx, reserve=cfg.generation.max_new_tokens)
            except ZhongjingError:
                counts["prompt_too_long"] += 1
                continue
            out.append(Prompt(id_, list(ctx), ids))
    if not out:
        raise ZhongjingError(f"no usable prompts in {cfg.prompts}")
    return out


def split_prompts(prompts: list[Prompt], n_eval: int, seed: int,
                  red_flags: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """(training, held-out) prompts: n_eval held out at random (seeded), of which up to `red_flags` are prompts whose
    patient turn is a red flag (the same draw order, so red_flags=0 holds out exactly what it always did)."""
    from zhongjing.data.simulate import red_flag
    from zhongjing.train.mix import rng

    if n_eval <= 0:
        return prompts, []
    if n_eval >= len(prompts):
        raise ConfigError(f"eval_prompts={n_eval} leaves no training prompts (only {len(prompts)})")
    perm = rng(seed, "eval-prompts").permutation(len(prompts)).tolist()
    flagged = [i for i in perm if red_flag(prompts[i].context[-1].content)][:min(red_flags, n_eval)] \
        if red_flags > 0 else []  # (consultation cases share this split: they have no patient turn yet)
    picked = set(flagged)
    held = picked | set([i for i in perm if i not in picked][:n_eval - len(flagged)])
    return [p for i, p in enumerate(prompts) if i not in held], [p for i, p in enumerate(prompts) if i in held]


# ----------------------------------------------------------------------------- algorithm interface


class Algorithm:
    """What PPO and GRPO each define; see ppo.py and grpo.py."""

    name = "rl"
    samples_per_prompt = 1
    critic = False
    critic_warmup = 0  # rollouts that set the critic's starting level before the first update (see returns_sum)
    reduce_sum = None  # set by the loop: sums a tensor over processes (statistics of the whole rollout)

    def summed(self, total: torch.Tensor, count: int) -> tuple[float, float]:
        """(Σ, count) of one process's share → the same over every process (the whole rollout's statistics)."""
        pair = torch.stack([total, total.new_tensor(float(count))])
        return tuple((self.reduce_sum(pair) if self.reduce_sum else pair).tolist())

    def make_rollout(self, sampled, scored: dict, scores: torch.Tensor):  # → Rollout
        raise NotImplementedError

    def loss(self, model: ActorCritic, batch: dict) -> tuple[torch.Tensor, dict]:  # batch["rollout"] → (Σ, sums)
        raise NotImplementedError

    def returns_sum(self, scored: dict, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError  # critic algorithms: (Σ return over answer tokens, answer tokens)

    def after_rollout(self, rollout) -> dict:  # adaptive controllers; returns values to log
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def rollout_batches(rollout, batch_size: int, grad_accum: int, generator) -> list[list[dict]]:
    """The rollout in random order → optimizer steps (windows of grad_accum micro-batches of batch_size rows).
    Each micro-batch carries n = its answer tokens: the loss is a token mean over the whole window."""
    order = torch.randperm(len(rollout), generator=generator)
    micro = [rollout.select(order[i:i + batch_size]) for i in range(0, len(rollout), batch_size)]
    batches = [{"rollout": m, "n": int(m.action_mask.sum()), "ntokens": int(m.action_mask.sum())} for m in micro]
    return [batches[i:i + grad_accum] for i in range(0, len(batches), grad_accum)]


def summarize(scores: torch.Tensor, parts: dict, scored: dict, gather=None) -> dict:
    """Per-rollout numbers that show progress — and reward hacking (length, unfinished answers, KL).
    `gather` (list → list of every process) makes them numbers of the whole rollout, not of this process's share."""
    cols = {"reward": scores, "answer_len": scored["action_mask"].sum(1), "finished": scored["finished"],
            "kl": scored["kl"].sum(1), **{f"reward_{k}": v for k, v in parts.items()}}
    cols = {k: v.detach().float().cpu() for k, v in cols.items()}
    if gather:
        cols = {k: torch.tensor(gather(v.tolist()), dtype=torch.float32) for k, v in cols.items()}
    r = cols["reward"]
    out = {"answers": len(r), "reward": r.mean().item(), "reward_std": r.std().item() if len(r) > 1 else 0.0}
    out |= {k: v.mean().item() for k, v in cols.items() if k != "reward"}
    # does the reward pay for answers cut at the limit? (NaN when every answer ended, or none did)
    done = cols["finished"] > 0.5
    for name, sel in (("finished", done), ("unfinished", ~done)):
        for k in ("reward", "reward_rm"):
            if k in cols:
                out[f"{k}_{name}"] = cols[k][sel].mean().item() if sel.any() else float("nan")
    return out


# ----------------------------------------------------------------------------- the loop


def run_rl(cfg: RLConfig, algo: Algorithm, stage: str) -> Path:
    from collections import Counter

    from zhongjing.model.generation import derive_seed
    from zhongjing.model.load import end_of_turn_ids, load_tokenizer
    from zhongjing.model.lora import count_params, prepare_model
    from zhongjing.model.value_head import ValueHead, hidden_size
    from zhongjing.train import checkpoint as ckpt
    from zhongjing.model.identity import data_record, training_meta
    from zhongjing.train.common import make_accelerator
    from zhongjing.train.loop import train_step
    from zhongjing.train.mix import rng
    from zhongjing.train.optim import Guard, build_optimizer, build_scheduler
    from zhongjing.train.monitor import Monitor, hacking_flags
    from zhongjing.train.rewards import Rewards, placebo_rewards
    from zhongjing.train.rollout import sample_answers, score_sampled

    if not cfg.model or not cfg.prompts:
        raise ConfigError(f"train {stage} needs model=SFT_DIR and prompts=DIALOGUES_OR_RANKINGS")
    cfg.reward.check()
    t_start = time.perf_counter()
    tc, gc, K = cfg.train, cfg.generation, algo.samples_per_prompt
    acc = make_accelerator(tc)
    if ckpt.sharded_params(acc):  # each decoding step would gather weights, and processes stop at different steps
        raise ConfigError(f"train {stage} does not run under ZeRO-3 or FSDP (sampling is not in lockstep across "
                          "processes): use DDP or ZeRO-2 (configs/accelerate/zero2.yaml)")
    world, rank, out = acc.num_processes, acc.process_index, Path(cfg.output)
    gather = None
    if world > 1:
        from accelerate.utils import gather_object as gather
    tok = load_tokenizer(cfg.model)
    counts: Counter = Counter()
    train_p, eval_p = split_prompts(load_prompts(cfg, tok, counts), cfg.eval_prompts, tc.seed, cfg.eval_red_flags)
    per_update = cfg.rollout_prompts or max(1, tc.batch_size * tc.grad_accum // K)
    if per_update % world:
        raise ConfigError(f"rollout_prompts={per_update} must divide by the {world} processes (equal shares keep "
                          "their optimizer steps in lockstep)")
    per_epoch = len(train_p) // per_update
    if per_epoch == 0:
        raise ZhongjingError(f"{len(train_p)} training prompts, but one update takes {per_update}")
    total = tc.max_steps or per_epoch * tc.epochs
    steps_per_update = cfg.update_epochs * math.ceil(per_update * K / world / (tc.batch_size * tc.grad_accum))

    policy = prepare_model(cfg.model, "lora", cfg.lora, dtype=cfg.dtype, gradient_checkpointing=tc.gradient_checkpointing)
    model = ActorCritic(policy, ValueHead(hidden_size(policy)) if algo.critic else None)
    trainable, n_params = count_params(model)
    rewards = Rewards(cfg.reward, max_length=cfg.max_length)
    monitor = Monitor(cfg.monitor, max_length=cfg.max_length)
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay, tc.betas, tc.eps)
    scheduler = build_scheduler(optimizer, total * steps_per_update, tc.warmup_steps, tc.warmup_ratio, tc.min_lr_ratio)
    model, optimizer = acc.prepare(model, optimizer)
    scheduler.optimizer = optimizer
    guard = Guard(tc.explode_grad_norm, tc.explode_lr_decay)
    io = ActorCriticIO(TrainedIO(tok, cfg.model))
    stop_ids = end_of_turn_ids(tok, policy)
    records = [data_record(p) for p in cfg.prompts]
    meta = training_meta(stage, cfg, cfg.model, records, kind="adapter",
                         critic="value_head.safetensors" if algo.critic else None,
                         counts=dict(counts, train_prompts=len(train_p), eval_prompts=len(eval_p)),
                         params={"trainable": trainable, "total": n_params})

    book = ckpt.Bookkeeper(out, tc, accelerator=acc, model=model, io=io, optimizer=optimizer, scheduler=scheduler,
                           guard=guard, meta=meta,
                           batch={"grad_accum": tc.grad_accum, "batch_size": tc.batch_size, "per_update": per_update})
    step, epoch, in_epoch, history, stopped, saved = 0, 0, 0, [], None, set()
    st = book.resume()
    if st is not None:
        algo.load_state_dict(st["algorithm"])
        step, epoch, in_epoch, history, stopped = st["step"], st["epoch"], st["in_epoch"], st["history"], st["stopped"]
        saved = set(st.get("saved", []))
    log = book.logger(total, step)
    log.info(f"{stage}: {len(train_p)} training prompts ({per_update} per update, {total} updates), "
             f"{len(eval_p)} held out; {trainable:,}/{n_params:,} trainable parameters")
    unwrapped = acc.unwrap_model(model)

    def rollout_for(prompts: list[Prompt], seed: int, k: int):
        sampled = sample_answers(unwrapped.policy, tok, [p.ids for p in prompts], num_samples=k,
                                 max_new_tokens=gc.max_new_tokens, temperature=gc.temperature, top_p=gc.top_p,
                                 top_k=gc.top_k, seed=seed, batch_size=gc.batch_size, stop_ids=stop_ids)
        scored = score_sampled(unwrapped.policy, sampled, pad_id=tok.pad_token_id, stop_ids=stop_ids,
                               value_head=unwrapped.value_head, temperature=gc.temperature,
                               forward_batch=gc.forward_batch)
        contexts = [prompts[i].context for i in sampled.prompt_index]
        scores, parts = rewards.score(contexts, sampled.texts, scored["response_len"].cpu(), scored["finished"].cpu())
        return sampled, scored, scores.to(scored["kl"].device), parts

    def judged(prompts: list[Prompt], sampled, prefix: str) -> dict:
        """Independent judges' means over the whole held-out set (every process's share)."""
        per = monitor.judge([prompts[i].context for i in sampled.prompt_index], sampled.texts)
        if gather:
            per = {k: gather(v) for k, v in per.items()}
        return {f"{prefix}{k}": sum(v) / len(v) for k, v in per.items() if v}

    def evaluate(step: int) -> None:
        if not eval_p:
            return
        mine = eval_p[rank::world]
        sampled, scored, scores, parts = rollout_for(mine, derive_seed(tc.seed, 7), 1)
        stats = summarize(scores, parts, scored, gather) | judged(mine, sampled, "")
        if cfg.monitor.greedy:  # as eval answers: a policy whose samples end may still loop when decoding greedily
            g = sample_answers(unwrapped.policy, tok, [p.ids for p in mine], num_samples=1,
                               max_new_tokens=gc.max_new_tokens, temperature=0.0, seed=0, batch_size=gc.batch_size,
                               stop_ids=stop_ids)
            cols = {"greedy_len": [float(len(a)) for a in g.answers],
                    "greedy_finished": [float(bool(a) and a[-1] in stop_ids) for a in g.answers]}
            if gather:
                cols = {k: gather(v) for k, v in cols.items()}
            stats |= {k: sum(v) / max(len(v), 1) for k, v in cols.items()} | judged(mine, g, "greedy_")
        rec = {"step": step, "epoch": epoch, **{f"eval_{k}": v for k, v in stats.items()}}
        flags = hacking_flags(history[0], rec, cfg.monitor.tolerance,
                              safety_tolerance=cfg.monitor.safety_tolerance) if history else []
        if flags:
            rec["hacking"] = "; ".join(flags)
            log.info(f"{stage}: REWARD HACKING? at update {step}: " + "; ".join(flags))
        history.append(rec)
        log.eval(rec)

    def best_step() -> int:
        """The evaluated update the output keeps (select: best): highest held-out reward, hacking flags excluded."""
        ok = [h for h in history if not h.get("hacking") and h["step"] in saved]
        if cfg.select == "last" or not ok:
            return step
        return max(ok, key=lambda h: (h["eval_reward"], h["step"]))["step"]

    def save(step: int) -> None:
        state = {"step": step, "epoch": epoch, "in_epoch": in_epoch, "history": history, "stopped": stopped,
                 "algorithm": algo.state_dict(), "best_step": step, "best_val": None, "saved": sorted(saved | {step})}
        saved.add(step)
        best = best_step()
        book.save(step, state, best, protect={step, best})

    def warm_critic(n: int) -> None:
        """The value head's starting level: the mean return of the starting policy's answers on n rollouts of
        training prompts (its weights stay 0). A zero head under a reward whose mean is below 0 discourages ending
        from the first update on (adv_stop < 0). Nothing else is updated; the prompts' order for training is kept."""
        order = rng(tc.seed, "critic-warmup").permutation(len(train_p)).tolist()
        total = torch.zeros(2, device=acc.device)
        for i in range(n):
            batch = [train_p[order[(i * per_update + j) % len(order)]] for j in range(per_update)][rank::world]
            _, scored, scores, _ = rollout_for(batch, derive_seed(tc.seed, 99991, i), K)
            total += torch.stack([x.float().to(acc.device) for x in algo.returns_sum(scored, scores)])
        if world > 1:
            total = acc.reduce(total, "sum")
        start = (total[0] / total[1].clamp(min=1)).item()
        with torch.no_grad():
            unwrapped.value_head.summary.bias.fill_(start)
        log.info(f"{stage}: critic warm-up: the value head starts at {start:+.3f}, the mean return of the starting "
                 f"policy's answers on {n} rollout(s) of {per_update} prompts")

    algo.reduce_sum = (lambda t: acc.reduce(t, "sum")) if world > 1 else None
    if step == 0 and not history:
        if algo.critic and algo.critic_warmup:
            warm_critic(algo.critic_warmup)
        evaluate(0)  # the starting policy, for comparison
        if cfg.select == "best" and eval_p:
            save(0)  # selectable: if no update beats it on held-out reward, the output is the starting policy
    loss_fn = algo.loss
    while step < total and not stopped:
        t0 = time.perf_counter()
        order = rng(tc.seed, "prompts", epoch).permutation(len(train_p)).tolist()
        batch = [train_p[i] for i in order[in_epoch * per_update:(in_epoch + 1) * per_update]][rank::world]
        sampled, scored, scores, parts = rollout_for(batch, derive_seed(tc.seed, step), K)
        trained = placebo_rewards(scores, derive_seed(tc.seed, step, 2)) if cfg.reward.placebo else scores
        rollout = algo.make_rollout(sampled, scored, trained)  # the log below keeps the real scores
        t_rollout = time.perf_counter() - t0
        rec = summarize(scores, parts, scored, gather) | algo.after_rollout(rollout)
        rec |= {"gen_tokens_per_s": sampled.tokens / max(sampled.seconds, 1e-9), "t_generate": sampled.seconds,
                "t_rollout": t_rollout}
        if world > 1:  # every process must take the same decisions below
            rec["kl"] = acc.reduce(torch.tensor(rec["kl"], device=acc.device), "mean").item()
        if cfg.stop_kl and rec["kl"] > cfg.stop_kl:
            stopped = f"KL to the reference {rec['kl']:.3f} passed stop_kl={cfg.stop_kl} at update {step + 1}"
            log.info(f"{stage}: {stopped}; keeping the policy from update {step}")
            break
        gen = torch.Generator().manual_seed(derive_seed(tc.seed, step, 1))
        windows = [w for _ in range(cfg.update_epochs) for w in rollout_batches(rollout, tc.batch_size, tc.grad_accum, gen)]
        steps = []
        for window in windows:
            steps.append(train_step(model, window, loss_fn, acc, optimizer, scheduler, guard, tc, log))
            if cfg.update_kl and steps[-1].get("approx_kl", 0.0) > cfg.update_kl:
                break  # the same decision on every process: the step's numbers are reduced over them
        rec["update_steps"] = len(steps)
        for _ in range(len(windows) - len(steps)):
            scheduler.step()  # the schedule stays the same length whether or not an update ended early
        last_epoch = steps[-max(1, len(windows) // cfg.update_epochs):]
        train_keys = [k for k in last_epoch[0] if k not in rec and isinstance(last_epoch[0][k], (int, float))]
        rec |= {k: sum(s[k] for s in last_epoch if s[k] is not None) / len(last_epoch) for k in train_keys}
        rec |= {"lr": steps[0]["lr"], "t_train": time.perf_counter() - t0 - t_rollout,
                "seconds": time.perf_counter() - t0, "elapsed": round(time.perf_counter() - t_start, 4)}
        step, in_epoch = step + 1, in_epoch + 1
        end_of_epoch = in_epoch >= per_epoch
        if end_of_epoch:
            epoch, in_epoch = epoch + 1, 0
        log.step({"step": step, "epoch": epoch, **rec})
        do_eval = step == total or (step % tc.eval_every == 0 if tc.eval_every else end_of_epoch)
        if do_eval:
            evaluate(step)
        if do_eval or (tc.save_every and step % tc.save_every == 0):
            save(step)
    if stopped and (not history or history[-1]["step"] != step):
        evaluate(step)
    if not ckpt.checkpoints(out) or ckpt.checkpoints(out)[-1][0] != step or stopped:
        save(step)
    best = best_step()
    hacking = [f"update {h['step']}: {h['hacking']}" for h in history if h.get("hacking")]
    book.finish(best, {"step": step, "stopped": stopped, "select": cfg.select, "hacking": hacking,
                       "metrics": {"history": history, "explosions": guard.explosions,
                                   "train_seconds": round(time.perf_counter() - t_start, 1)}})
    log.info(f"{stage}: done, {step} updates → {out} (the policy of update {best}"
             + (", the best held-out reward" if cfg.select == "best" else "") + ")"
             + (f"; {len(hacking)} evaluation(s) flagged for reward hacking" if hacking else ""))
    log.close()
    return out
