"""The consult training loop (see trainer.py): updates, held-out evaluations, checkpoints and resume — the same
bookkeeping as every training stage (checkpoint.Bookkeeper, loop.train_step, identity.training_meta)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from zhongjing.consult.trainer import ConsultConfig, Environment, episode_stats, load_items, loss_fn, make_rollout
from zhongjing.errors import ConfigError, ZhongjingError


def run_consult(cfg: ConsultConfig) -> Path:
    from zhongjing.consult.episodes import playable
    from zhongjing.data.render import Renderer
    from zhongjing.model.generation import derive_seed
    from zhongjing.model.identity import data_record, training_meta
    from zhongjing.model.load import end_of_turn_ids, load_tokenizer, setup_torch
    from zhongjing.model.lora import TrainedIO, count_params, prepare_model
    from zhongjing.model.value_head import ValueHead, hidden_size
    from zhongjing.train import checkpoint as ckpt
    from zhongjing.train.advantages import CRITIC
    from zhongjing.train.common import make_accelerator
    from zhongjing.train.loop import train_step
    from zhongjing.train.mix import rng
    from zhongjing.train.optim import Guard, build_optimizer, build_scheduler
    from zhongjing.train.rl import ActorCritic, ActorCriticIO, rollout_batches, split_prompts

    if not cfg.model:
        raise ConfigError("train consult needs model=SFT_DIR")
    setup_torch()
    t_start, tc, K, out = time.perf_counter(), cfg.train, cfg.group_size, Path(cfg.output)
    acc = make_accelerator(tc)
    if acc.num_processes > 1:
        raise ConfigError("train consult runs in one process (episodes are played by the one policy)")
    tok = load_tokenizer(cfg.model)
    loaded = load_items(cfg)
    items = playable(loaded, Renderer(tok, max_length=cfg.max_length), cfg.episode.max_new_tokens, cfg.system or None)
    if not items:
        raise ZhongjingError(f"none of the {len(loaded)} cases leaves room for a doctor turn within max_length="
                             f"{cfg.max_length} (episode.max_new_tokens={cfg.episode.max_new_tokens})")
    train_c, eval_c = split_prompts(items, cfg.eval_cases, tc.seed)
    per = cfg.cases_per_update
    per_epoch = len(train_c) // per
    if per_epoch == 0:
        raise ZhongjingError(f"{len(train_c)} training cases, but one update takes cases_per_update={per}")
    total = tc.max_steps or per_epoch * tc.epochs
    steps_per_update = cfg.update_epochs * math.ceil(per * K / (tc.batch_size * tc.grad_accum))

    policy = prepare_model(cfg.model, "lora", cfg.lora, dtype=cfg.dtype, gradient_checkpointing=tc.gradient_checkpointing)
    model = ActorCritic(policy, ValueHead(hidden_size(policy)) if cfg.estimator in CRITIC else None)
    trainable, n_params = count_params(model)
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay, tc.betas, tc.eps)
    scheduler = build_scheduler(optimizer, total * steps_per_update, tc.warmup_steps, tc.warmup_ratio, tc.min_lr_ratio)
    model, optimizer = acc.prepare(model, optimizer)
    scheduler.optimizer = optimizer
    guard = Guard(tc.explode_grad_norm, tc.explode_lr_decay)
    io = ActorCriticIO(TrainedIO(tok, cfg.model))
    unwrapped = acc.unwrap_model(model)
    env = Environment(cfg, unwrapped.policy, tok, end_of_turn_ids(tok, policy))
    meta = training_meta("consult", cfg, cfg.model, [data_record(f) for f in ([cfg.cases] if cfg.cases else cfg.dialogues)], kind="adapter",
                         critic="value_head.safetensors" if unwrapped.value_head is not None else None,
                         counts={"train_cases": len(train_c), "eval_cases": len(eval_c),
                                 "left_out_too_long": len(loaded) - len(items)},
                         params={"trainable": trainable, "total": n_params})
    book = ckpt.Bookkeeper(out, tc, accelerator=acc, model=model, io=io, optimizer=optimizer, scheduler=scheduler,
                           guard=guard, meta=meta, batch={"grad_accum": tc.grad_accum, "batch_size": tc.batch_size})
    step, epoch, in_epoch, history, stopped = 0, 0, 0, [], None
    st = book.resume()
    if st is not None:
        step, epoch, in_epoch, history, stopped = st["step"], st["epoch"], st["in_epoch"], st["history"], st["stopped"]
    log = book.logger(total, step)
    log.info(f"consult ({cfg.env}, {cfg.estimator}): {len(train_c)} training cases ({per}×{K} episodes per update, "
             f"{total} updates), {len(eval_c)} held out"
             + (f"; {len(loaded) - len(items)} left out (opening too long for max_length)" if len(loaded) > len(items)
                else ""))

    def evaluate(at: int) -> None:
        if not eval_c:
            return
        eps, scores, parts, _ = env.play(eval_c, 1, derive_seed(tc.seed, 7))
        kl = _kl_only(unwrapped, env, eps, tok.pad_token_id, cfg)
        rec = {"step": at, "epoch": epoch, **{f"eval_{k}": v for k, v in episode_stats(eps, scores, parts, kl).items()}}
        history.append(rec)
        log.eval(rec)

    def save(at: int) -> None:
        book.save(at, {"step": at, "epoch": epoch, "in_epoch": in_epoch, "history": history, "stopped": stopped,
                       "best_step": at, "best_val": None}, at, protect={at})

    if step == 0 and not history:
        evaluate(0)
    loss = loss_fn(cfg)
    while step < total and not stopped:
        t0 = time.perf_counter()
        order = rng(tc.seed, "cases", epoch).permutation(len(train_c)).tolist()
        batch = [train_c[i] for i in order[in_epoch * per:(in_epoch + 1) * per]]
        eps, scores, parts, timing = env.play(batch, K, derive_seed(tc.seed, step))
        rollout = make_rollout(cfg, unwrapped, env.renderer, eps, scores, tok.pad_token_id)
        rec = episode_stats(eps, scores, parts, rollout.kl)
        rec |= {"episodes_per_s": len(eps) / max(timing["seconds"], 1e-9),
                "doctor_tokens_per_s": timing["doctor_tokens"] / max(timing["seconds"], 1e-9),
                "t_episodes": timing["seconds"]}
        if cfg.stop_kl and rec["kl"] > cfg.stop_kl:
            stopped = f"KL to the reference {rec['kl']:.3f} passed stop_kl={cfg.stop_kl} at update {step + 1}"
            log.info(f"consult: {stopped}")
            break
        gen = torch.Generator().manual_seed(derive_seed(tc.seed, step, 1))
        steps = [train_step(model, w, loss, acc, optimizer, scheduler, guard, tc, log)
                 for _ in range(cfg.update_epochs) for w in rollout_batches(rollout, tc.batch_size, tc.grad_accum, gen)]
        keys = [k for k in steps[-1] if k not in rec and isinstance(steps[-1][k], (int, float))]
        rec |= {k: sum(s[k] for s in steps if s[k] is not None) / len(steps) for k in keys}
        rec |= {"seconds": time.perf_counter() - t0, "elapsed": round(time.perf_counter() - t_start, 4)}
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
    if not ckpt.checkpoints(out) or ckpt.checkpoints(out)[-1][0] != step:
        save(step)
    book.finish(step, {"step": step, "stopped": stopped,
                       "metrics": {"history": history, "train_seconds": round(time.perf_counter() - t_start, 1)}})
    log.info(f"consult: done, {step} updates → {out}")
    log.close()
    return out


def _kl_only(model, env, eps, pad_id: int, cfg) -> torch.Tensor:
    from zhongjing.consult.episodes import pack, score_packed

    return score_packed(model, pack(env.renderer, eps, pad_id), temperature=cfg.episode.temperature)["kl"]


def main(argv: list[str]) -> int:
    from zhongjing.config import parse_stage_args
    from zhongjing.consult import trainer
    from zhongjing.train.common import print_once

    cfg = parse_stage_args("zhongjing train consult", ConsultConfig, argv, trainer.__doc__.split("\n\n")[0])
    print_once(f"consult policy → {run_consult(cfg)}")
    return 0
