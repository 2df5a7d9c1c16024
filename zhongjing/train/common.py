"""Config pieces every training stage shares, and the start-up they all do (accelerator, threads, seed)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from zhongjing.config import at_least, within
from zhongjing.errors import ConfigError, RangeError


@dataclass
class TrainSettings:
    """The `train:` section of every stage config: what the loop does. Paper Table 4 values live in configs/paper/."""

    epochs: int = 1
    max_steps: int = 0  # > 0: stop after this many optimizer steps (epochs continue as needed)
    batch_size: int = 8  # micro-batch per process (SFT: dialogues, or packed rows; PT: blocks)
    grad_accum: int = 1  # global batch = batch_size × grad_accum × processes
    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.03
    warmup_steps: int = 0  # > 0 wins over warmup_ratio
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    max_grad_norm: float = 1.0  # clipping; 0 = off
    explode_grad_norm: float = 1000.0  # guard: a larger (pre-clip) norm counts as an explosion; 0 = only inf/nan
    explode_lr_decay: float = 0.5  # guard: lr multiplier applied at each explosion
    eval_every: int = 0  # steps; 0 = at the end of every epoch
    save_every: int = 0  # steps; 0 = at every evaluation
    max_eval_batches: int = 0  # 0 = the whole validation split
    keep_checkpoints: int = 2  # most recent kept (the best one is always kept too)
    best_metric: str = "val_loss"  # the validation metric that picks the result: val_loss or any metric the stage
    #                                logs at evaluation (e.g. the RM's val_accuracy/sample_vs_sample)
    best_mode: str = "min"  # min or max: whether the lowest or the highest best_metric wins (ties: the earlier)
    patience: int = 0  # > 0: stop once this many evaluations in a row have not beaten the best one (early stopping);
    #                    the learning-rate schedule stays the planned one: every step that ran is the full run's step
    seed: int = 42
    mixed_precision: str = "auto"  # auto (the accelerate launch config, else none), no, fp16, bf16
    gradient_checkpointing: bool = False
    fp32_matmul: str = "exact"  # fast: fp32 weights, matmul inner products in bf16 (AMX CPUs) / TF32 (GPUs); exact: IEEE
    threads: int = 0  # torch CPU threads per process; 0 = torch's default (÷ processes when launched)
    resume: bool = False  # continue from the last checkpoint in the output folder
    overwrite: bool = False  # start over in an output folder that holds an earlier run
    tensorboard: bool = False
    progress: bool = True

    def __post_init__(self):
        for k in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, k) < 1:
                raise ConfigError(f"train.{k} must be ≥ 1, got {getattr(self, k)}")
        if not 0 < self.lr < float("inf"):  # (NaN fails too: it was torch's traceback, inf trained to NaN)
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must be two numbers, got {self.betas}")
        if not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):  # torch's traceback at start
            raise ConfigError(f"train.betas must each be in [0, 1), got {self.betas}")
        # ranges refused here, not minutes later in torch, numpy or accelerate (or accepted and silently meaningless)
        within(self, 0, 1, "warmup_ratio", "min_lr_ratio")
        within(self, 0, float("inf"), "weight_decay", "eps", "max_grad_norm", "explode_grad_norm")
        if not 0 < self.explode_lr_decay <= 1:
            raise RangeError(f"explode_lr_decay must be in (0, 1], got {self.explode_lr_decay}")
        at_least(self, 0, "max_steps", "patience", "warmup_steps", "eval_every", "save_every", "max_eval_batches",
                 "keep_checkpoints", "threads")
        within(self, 0, 2**32 - 1, "seed")  # numpy's limit; 2**70 was an OverflowError traceback
        if self.fp32_matmul not in ("fast", "exact"):
            raise ConfigError(f"train.fp32_matmul must be fast or exact, got {self.fp32_matmul!r}")
        if self.best_mode not in ("min", "max"):
            raise ConfigError(f"train.best_mode must be min or max, got {self.best_mode!r}")
        if not self.best_metric.startswith("val_"):
            raise ConfigError(f"train.best_metric must name a validation metric (val_…), got {self.best_metric!r}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ConfigError(f"train.mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")


def refuse_fit_only_keys(train: TrainSettings, output_rule: str) -> None:
    """RL stages run their own loop, which never reads the keys that pick fit()'s result checkpoint: refuse them
    rather than ignore them silently (`output_rule` names what picks the stage's output instead)."""
    defaults = {f.name: f.default for f in fields(TrainSettings)}
    for key in ("best_metric", "best_mode", "patience"):
        if getattr(train, key) != defaults[key]:
            raise ConfigError(f"train.{key} is not used by this stage: {output_rule}")


def make_accelerator(settings: TrainSettings):
    """One Accelerator per stage run. On a machine without GPUs a launched multi-process run uses CPU + gloo."""
    import torch
    from accelerate import Accelerator

    from zhongjing.model.load import setup_torch

    cpu = not torch.cuda.is_available()
    mp = None if settings.mixed_precision == "auto" else settings.mixed_precision
    if cpu and (mp or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")) == "fp16":
        raise ConfigError("train.mixed_precision=fp16 needs a GPU; use 'no' (or bf16) on CPU")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-checkpoint "Writing model shards" bars drown the training bar
    if cpu and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        # accelerate turns FSDP on only for accelerator devices: on CPU the processes would silently run as DDP
        raise ConfigError("FSDP needs GPUs (accelerate enables it only on accelerators); on CPU shard the weights "
                          "with DeepSpeed ZeRO-3: configs/accelerate/zero3_cpu.yaml")
    if "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        # `accelerate launch --num_processes N` with no config and no GPU takes its simple launcher: ONE process
        # (it only sets MASTER_ADDR), so the run would quietly train with 1/N of the intended global batch
        raise ConfigError("accelerate launch started a single process although several were asked for (no GPU and "
                          "no distributed config): on CPU use --config_file configs/accelerate/cpu_ddp2.yaml")
    kwargs = {}
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        kwargs["deepspeed_plugin"] = deepspeed_plugin(settings)
        if cpu:  # Accelerator(cpu=True) would silently drop DeepSpeed: start it on gloo instead (DeepSpeed's CPU backend)
            from accelerate.utils import InitProcessGroupKwargs

            cpu, kwargs["kwargs_handlers"] = False, [InitProcessGroupKwargs(backend="gloo")]
    if "WORLD_SIZE" not in os.environ:  # stages run one after another in one process (tests, gpu_check, notebooks):
        from accelerate.state import AcceleratorState  # each gets its own precision, not the first one's

        AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(cpu=cpu, mixed_precision=mp, gradient_accumulation_steps=settings.grad_accum, **kwargs)
    plugin = kwargs.get("deepspeed_plugin")
    if plugin is not None and plugin.zero_stage == 3 and not plugin.zero3_init_flag:
        # accelerate hands transformers the ZeRO-3 config whatever zero3_init_flag says, so from_pretrained would
        # shard the weights while loading; honour the flag: load whole (a parent adapter can be merged), shard at prepare
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    threads = settings.threads
    if not threads and cpu and acc.num_processes > 1:  # processes must not fight over the same cores
        threads = max(1, (os.cpu_count() or 1) // acc.num_processes)
    setup_torch(seed=settings.seed, threads=threads or None)
    torch.set_float32_matmul_precision("medium" if settings.fp32_matmul == "fast" else "highest")
    import numpy as np

    np.random.seed(settings.seed)
    return acc


def deepspeed_plugin(settings: TrainSettings):
    """The launch config's DeepSpeed settings, with the stage config owning what it also defines: the accumulation
    window (else accelerate silently takes the launch config's value and the global batch changes) and clipping.
    ZeRO-3 always gathers the full weights at a checkpoint, since every checkpoint is a loadable model folder."""
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()
    ds = plugin.deepspeed_config
    ds["gradient_accumulation_steps"] = plugin.gradient_accumulation_steps = settings.grad_accum
    ds["train_micro_batch_size_per_gpu"] = settings.batch_size  # for DeepSpeed's bookkeeping; zhongjing batches
    ds["gradient_clipping"] = plugin.gradient_clipping = settings.max_grad_norm
    if plugin.zero_stage == 3:
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = plugin.zero3_save_16bit_model = True
    return plugin




def print_once(line: str) -> None:
    """A stage's result line, printed by the main process only (not once per launched process)."""
    if os.environ.get("RANK", "0") == "0":
        print(line)
