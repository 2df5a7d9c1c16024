"""Self-describing, atomic, resumable checkpoints and the output folder every training stage writes.

Output folder layout (pt, sft, rm, dpo, ppo, grpo — all of them):

  OUT/                          the result, loadable as is (zhongjing.model.load.load_model / load_tokenizer):
    config.json + model*.safetensors        full fine-tuning, or
    adapter_config.json + adapter_model.safetensors   LoRA (applies to meta.json "base_model")
    tokenizer files + chat template, generation_config.json
    meta.json                   stage, kind (full|adapter), base_model (parent folder), inputs_hash, data hashes,
                                resolved config, code version, metrics, best_step. Written LAST: a folder without
                                it is not a finished result.
  OUT/checkpoints/step-000120/  one resumable state per save: the same loadable files as OUT/ (with its own
                                meta.json), plus trainer/ = optimizer (per rank under FSDP; DeepSpeed's own
                                checkpoint in trainer/deepspeed/), scheduler + guard + data position in
                                state.json, RNG states per rank, GradScaler.
                                The last `keep_checkpoints` are kept, and always the best one.
  OUT/logs/                     train.jsonl (a line per optimizer step), eval.jsonl, tensorboard/.

OUT/ holds the checkpoint with the lowest validation loss (or the best `train.best_metric`; the last one without
validation) — the paper keeps the best. `inputs_hash` = hash(parent model fingerprint, data file hashes, config
without run-only keys), see zhongjing.model.identity: a resume with other inputs is refused.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from zhongjing.errors import ZhongjingError, first_line
from zhongjing.io import atomic_path, check_output, make_dir, sha256_json, write_json

CKPT = "checkpoints"
TRAINER = "trainer"
_STEP = re.compile(r"^step-(\d+)$")


# ----------------------------------------------------------------------------- listing

def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (trainer/state.json present), oldest first."""
    d = Path(out) / CKPT
    found = []
    if d.is_dir():
        for p in d.iterdir():
            m = _STEP.match(p.name)
            if m and (p / TRAINER / "state.json").exists():
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    found = checkpoints(out)
    return found[-1][1] if found else None


def prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder; drop the stale result marker so a crash never looks finished."""
    out = check_output(out, folder=True)
    has_ckpt = bool(checkpoints(out))
    if has_ckpt and not resume and not overwrite:
        raise ZhongjingError(f"{out} holds checkpoints of an earlier run: set train.resume=true to continue it "
                             "or train.overwrite=true to start over")
    if overwrite and not resume and out.exists():
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    make_dir(out)
    (out / "meta.json").unlink(missing_ok=True)
    if (out / CKPT).is_dir():  # temp folders of a save that was killed half-way
        for p in (out / CKPT).iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- RNG

def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- save / load

DS_TAG = "deepspeed"  # trainer/deepspeed/: the DeepSpeed engine's own checkpoint (optimizer shards, fp32 masters)


def _deepspeed(accelerator) -> bool:
    return accelerator.distributed_type.name == "DEEPSPEED"


def _sharded_optimizer(accelerator) -> bool:
    return accelerator.distributed_type.name in ("DEEPSPEED", "FSDP")


def sharded_params(accelerator) -> bool:
    """ZeRO-3 and FSDP keep a shard of every weight per process: each forward gathers them collectively."""
    kind = accelerator.distributed_type.name
    return kind == "FSDP" or (kind == "DEEPSPEED" and accelerator.state.deepspeed_plugin.zero_stage == 3)


def save_checkpoint(out: Path, step: int, *, accelerator, model, io, optimizer, state: dict, meta: dict,
                    keep: int, protect: set[int]) -> Path:
    """Write OUT/checkpoints/step-N atomically (every process takes part), then prune old ones."""
    from accelerate.utils import broadcast_object_list

    path = Path(out) / CKPT / f"step-{step:06d}"
    rank, main = accelerator.process_index, accelerator.is_main_process
    state_dict = accelerator.get_state_dict(model)  # collective under ZeRO-3 / FSDP
    with _main_atomic(path, main) as tmp:
        tmp = Path(broadcast_object_list([str(tmp) if main else None])[0]) if accelerator.num_processes > 1 else tmp
        trainer = tmp / TRAINER
        if main:
            trainer.mkdir(parents=True, exist_ok=True)
            io.save(accelerator.unwrap_model(model), tmp, state_dict)
            write_json(tmp / "meta.json", meta | {"step": step})
        accelerator.wait_for_everyone()
        if _deepspeed(accelerator):  # the engine restores its fp32 master weights only from its own format
            model.save_checkpoint(str(trainer), tag=DS_TAG, exclude_frozen_parameters=True)
        elif main or _sharded_optimizer(accelerator):
            torch.save(optimizer.state_dict(), trainer / f"optimizer-{rank if _sharded_optimizer(accelerator) else 0}.pt")
        torch.save(rng_state(), trainer / f"rng-{rank}.pt")
        if main:
            if accelerator.scaler is not None:
                torch.save(accelerator.scaler.state_dict(), trainer / "scaler.pt")
            write_json(trainer / "state.json", state)  # last: marks the checkpoint complete
        accelerator.wait_for_everyone()
    if main:
        _prune(Path(out), keep, protect | {step})
    accelerator.wait_for_everyone()
    return path


class _main_atomic:
    """atomic_path on the main process; a no-op context elsewhere (the path comes by broadcast)."""

    def __init__(self, path: Path, main: bool):
        self.ctx = atomic_path(path, folder=True) if main else None

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx else False


def _prune(out: Path, keep: int, protect: set[int]) -> None:
    found = checkpoints(out)
    recent = {s for s, _ in found[-max(keep, 1):]}
    for s, p in found:
        if s not in recent and s not in protect:
            doomed = p.with_name(f".{p.name}.old")
            os.replace(p, doomed)  # invisible to checkpoints() first, then removed
            shutil.rmtree(doomed, ignore_errors=True)


def check_resumable(path: Path, meta: dict) -> None:
    """Resuming on other data would make the saved data position meaningless: refuse. Other changes (more
    epochs, a new learning rate) are allowed but named, since the result then matches neither run."""
    old = _read(Path(path) / "meta.json")
    was = [d.get("sha256") for d in old.get("data", [])]
    now = [d.get("sha256") for d in meta.get("data", [])]
    if was != now:
        raise ZhongjingError(f"{path}: the training data changed since this checkpoint; resume needs the same "
                             "files (or train.overwrite=true to start over)")
    if old.get("inputs_hash") != meta.get("inputs_hash"):
        a, b = old.get("config", {}), meta.get("config", {})
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "output")
        print(f"warning: resuming with a changed config ({', '.join(changed) or 'parent model'})", flush=True)


def _read(file: Path):
    """A checkpoint's JSON or torch file; a damaged one raises OSError naming it (Bookkeeper.resume words it)."""
    try:
        if file.suffix == ".json":
            return json.loads(file.read_text(encoding="utf-8"))
        return torch.load(file, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise OSError(f"{file.name} is missing") from None
    except Exception as e:
        raise OSError(f"{file.name}: {first_line(e, 160)}") from None


def load_checkpoint(path: Path, *, accelerator, model, io, optimizer) -> dict:
    """Restore weights, optimizer, scaler and this process's RNG; return trainer state (step, epoch, ...)."""
    trainer = Path(path) / TRAINER
    state = _read(trainer / "state.json")
    if state.get("world_size") != accelerator.num_processes:
        raise ZhongjingError(f"{path} was written by {state.get('world_size')} processes, this run has "
                             f"{accelerator.num_processes}: resume with the same number of processes")
    if _deepspeed(accelerator):  # trained weights (ZeRO-3: this process's shards), optimizer and fp32 masters
        loaded, _ = model.load_checkpoint(str(trainer), tag=DS_TAG, load_module_strict=False,
                                          load_lr_scheduler_states=False)
        if loaded is None:
            raise ZhongjingError(f"{path}: no DeepSpeed state in {trainer / DS_TAG} (written without DeepSpeed?): "
                                 "resume with the launch config that wrote it")
    else:
        io.restore(accelerator.unwrap_model(model), Path(path))
        opt_file = trainer / f"optimizer-{accelerator.process_index if _sharded_optimizer(accelerator) else 0}.pt"
        if not opt_file.exists():
            raise ZhongjingError(f"{path}: no {opt_file.name} (written under DeepSpeed?): resume with the launch "
                                 "config that wrote it")
        optimizer.load_state_dict(_read(opt_file))
    if accelerator.scaler is not None and (trainer / "scaler.pt").exists():
        accelerator.scaler.load_state_dict(_read(trainer / "scaler.pt"))
    set_rng_state(_read(trainer / f"rng-{accelerator.process_index}.pt"))
    return state


def finalize(out: Path, step: int, meta: dict) -> None:
    """Copy checkpoint `step`'s loadable files to OUT/ (each atomically), then write OUT/meta.json last."""
    src = Path(out) / CKPT / f"step-{step:06d}"
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name != "meta.json":
            with atomic_path(Path(out) / f.name) as tmp:
                shutil.copyfile(f, tmp)
    write_json(Path(out) / "meta.json", meta)


class Bookkeeper:
    """One training run's life in OUT, shared by `fit` (pt, sft, rm, dpo) and the RL loop (ppo, grpo, rloo, consult):
    prepare the folder, resume from the latest checkpoint (refusing other inputs or batch settings), open the logs,
    save a checkpoint with the scheduler, guard and data position, and finally put the kept step's model into OUT.

    `batch`: the settings the saved data position depends on (batch_size, grad_accum, …): a resume with other values
    is refused. The caller's own state (step, epoch, history, …) travels as a dict it builds and gets back."""

    def __init__(self, out: Path, settings, *, accelerator, model, io, optimizer, scheduler, guard, meta: dict,
                 batch: dict):
        self.out, self.settings, self.acc, self.meta, self.batch = Path(out), settings, accelerator, meta, batch
        self.model, self.io, self.optimizer, self.scheduler, self.guard = model, io, optimizer, scheduler, guard
        self.resumed_from: Path | None = None
        if accelerator.is_main_process:
            prepare_out(self.out, resume=settings.resume, overwrite=settings.overwrite)
        accelerator.wait_for_everyone()

    def resume(self) -> dict | None:
        """The latest checkpoint's state (model, optimizer, scheduler, guard and RNG restored), or None."""
        last = latest_checkpoint(self.out) if self.settings.resume else None
        if last is None:
            return None
        try:
            check_resumable(last, self.meta)  # other inputs refused, other settings named
            st = load_checkpoint(last, accelerator=self.acc, model=self.model, io=self.io, optimizer=self.optimizer)
        except ZhongjingError:
            raise
        except Exception as e:  # a damaged or missing file (checkpoints are written atomically: a disk or a hand)
            reason = first_line(e)
            reason = reason if isinstance(e, OSError) and not e.errno else f"{type(e).__name__}: {reason}"
            raise ZhongjingError(f"{last}: cannot resume from this checkpoint ({reason}); delete this folder to "
                                 "resume from the one before it, or set train.overwrite=true to start over") from None
        if any(st.get(k) != v for k, v in self.batch.items()):
            was = " ".join(f"{k}={st.get(k)}" for k in self.batch)
            raise ZhongjingError(f"{last}: written with {was}; resume with the same values (the data position "
                                 "depends on them)")
        self.scheduler.load_state_dict(st["scheduler"])
        self.guard.load_state_dict(st["guard"])
        self.resumed_from = last
        return st

    def logger(self, total_steps: int, start_step: int):
        from zhongjing.train.logs import RunLogger

        s = self.settings
        log = RunLogger(self.out / "logs", enabled=self.acc.is_main_process, total_steps=total_steps,
                        start_step=start_step, tensorboard=s.tensorboard, progress=s.progress)
        if self.resumed_from is not None:
            log.info(f"resumed from {self.resumed_from} (step {start_step})")
        elif s.resume:
            log.info(f"no checkpoint in {self.out / CKPT}: starting from the beginning")
        return log

    def save(self, step: int, state: dict, best_step: int, protect: set[int]) -> None:
        state = state | {"scheduler": self.scheduler.state_dict(), "guard": self.guard.state_dict(),
                         "world_size": self.acc.num_processes, **self.batch}
        save_checkpoint(self.out, step, accelerator=self.acc, model=self.model, io=self.io, optimizer=self.optimizer,
                        state=state, meta=self.meta | {"best_step": best_step}, keep=self.settings.keep_checkpoints,
                        protect=protect)

    def finish(self, best_step: int, final: dict) -> None:
        """OUT gets the model of `best_step` and meta.json = meta | final (written last)."""
        if self.acc.is_main_process:
            finalize(self.out, best_step, self.meta | {"best_step": best_step} | final)
        self.acc.wait_for_everyone()
