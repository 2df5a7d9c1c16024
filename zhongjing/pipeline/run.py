"""`zhongjing pipeline --config configs/demo.yaml`: the whole chain from one YAML.

    init-model → build → pt → sft → generate → rank → rm → ppo → eval

The YAML has one section per stage holding exactly that stage's config keys (checked by the stage's own
dataclass), plus pipeline keys (work_dir, base_model, rankings, stages, ...). What flows between stages —
model folders, data files — is wired here; a section that sets a wired key is rejected.

Each stage runs in its own process (`python -m zhongjing <stage> --config WORK/configs/<stage>.yaml`, or under
`launch` for training stages on several GPUs) and is skipped when its key is unchanged: the hash of its resolved
config, the code of its modules, the content of the files it reads and the fingerprints of the upstream outputs
it uses (state.py). `--from STAGE` re-runs a stage and everything after it, `--only STAGE` just that one;
a killed pipeline resumes (training stages from their last checkpoint, generate from its partial file, build and
eval from their caches).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

import yaml

from zhongjing.config import describe, load_config, to_dict
from zhongjing.errors import ConfigError, ZhongjingError
from zhongjing.io import atomic_open, make_dir
from zhongjing.model.identity import code_hash, external_inputs
from zhongjing.model.identity import output_fingerprint as fingerprint
from zhongjing.pipeline import report
from zhongjing.pipeline.stages import STAGES, Wiring, check_stages, stage_config
from zhongjing.pipeline.state import State, lock

NAMES = tuple(STAGES)  # the chain, in order
OPT_IN = ("consult",)  # stages only a config that names them runs


@dataclass
class SplitUse:
    """Which built dialogues the later stages use (seeded samples of the build's train/validation/test splits)."""

    pretrain: bool = True  # the built training dialogues join the pre-training corpus (the paper's Table 1 does)
    generate: str = "validation"  # split whose dialogues get K answers to rank: not seen in SFT by default
    generate_limit: int = 0  # dialogues drawn; 0 = all
    ppo: str = "train"  # split whose patient turns are the PPO prompts
    ppo_limit: int = 0
    ppo_red_flags: int = 0  # + up to this many more dialogues of the ppo split with a red-flag patient turn
    # (data/simulate.red_flag), so that PPO and its monitor see turns where the rubric's safety can move
    test_limit: int = 0  # dialogues of the evaluated split; 0 = all
    # the split the eval stage judges: "test" (the report) or "validation" — to choose settings without looking at
    # test numbers (`--only eval splits.eval=validation`); its results go to eval-validation/, beside eval/
    eval: str = "test"
    seed: int = 0

    def __post_init__(self):
        for key in ("generate", "ppo"):
            if getattr(self, key) not in ("train", "validation", "test"):
                raise ConfigError(f"splits.{key}: expected train, validation or test, got {getattr(self, key)!r}")
        if self.eval not in ("test", "validation"):
            raise ConfigError(f"splits.eval: expected test or validation, got {self.eval!r}")
        for key in ("generate_limit", "ppo_limit", "ppo_red_flags", "test_limit"):
            if getattr(self, key) < 0:
                raise ConfigError(f"splits.{key}: expected 0 (all) or a number of dialogues, got {getattr(self, key)}")


@dataclass
class PipelineKeys:
    work_dir: str = "runs/demo"  # every stage's output lives under it
    base_model: str = ""  # a local Hugging Face folder (7B–13B for the paper); empty = init-model builds a tiny one
    # "simulated" (demo), "gold-anchored" (real reply first, samples below: dataset/sources.py) or a Ranking JSONL
    # from `zhongjing annotate export`
    rankings: str = "simulated"
    stages: list[str] = field(default_factory=lambda: [s for s in NAMES if s not in OPT_IN])  # the stages included
    launch: str = ""  # command prefix for training stages, e.g. "accelerate launch --config_file X.yaml"
    python: str = ""  # interpreter for stage processes; empty = this one
    threads: int = 0  # CPU threads per stage process (OMP_NUM_THREADS); 0 = torch's default (all cores)
    splits: SplitUse = field(default_factory=SplitUse)
    # the reward model's parent: "pt" = the pre-trained model (the paper), "sft" = the SFT model (InstructGPT's
    # choice; on the small real-data chain it learns relevance better: docs/real-data.md)
    rm_parent: str = "pt"

    def __post_init__(self):
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ConfigError(f"stages: unknown stage {bad[0]!r} (valid: {', '.join(NAMES)})")
        if self.rm_parent not in ("pt", "sft"):
            raise ConfigError(f"rm_parent: expected pt or sft, got {self.rm_parent!r}")
        if not str(self.work_dir).strip():  # "" would be the current folder: every stage's output in the checkout
            raise ConfigError("work_dir: must name a folder for the stages' outputs, got an empty value")
        if self.threads < 0:
            raise ConfigError(f"threads: expected 0 (torch's default) or a positive count, got {self.threads}")

    @property
    def simulated(self) -> bool:
        return self.rankings in ("simulated", "gold-anchored")  # both order model samples by the heuristics

    def active(self) -> list[str]:
        """Stages in order, without init when a base model is given."""
        return [s for s in NAMES if s in self.stages and not (s == "init" and self.base_model)]


# The pipeline keys plus one section per stage (a stage's own keys, checked by its config class in build_configs).
PipelineConfig = make_dataclass("PipelineConfig", [(s.name, s.section, field(default_factory=s.section))
                                                   for s in STAGES.values()], bases=(PipelineKeys,))
PipelineConfig.__module__ = __name__


# ----------------------------------------------------------------------------------------------- planning

@dataclass
class Plan:
    stage: str
    action: str  # run | resume | skip | off
    why: str
    key: str = ""
    config: Any = None
    parts: dict = field(default_factory=dict)  # a hash per part of the key (State.key_for)


def build_configs(cfg: PipelineConfig) -> tuple[Wiring, dict[str, Any]]:
    """Every active stage's dataclass config, validated, with the wiring filled in."""
    w = Wiring(cfg)
    check_stages(cfg, w)
    return w, {s: stage_config(s, cfg, w) for s in cfg.active()}


def stage_key(state: State, w: Wiring, stage: str, config, fps: dict) -> tuple[str, dict]:
    """The stage's identity now: config, code, user files, pipeline settings it uses, upstream fingerprints
    (`fps` holds those of stages (re)run in this invocation)."""
    deps = {d: fps.get(d) or state.fingerprint(d) for d in w.deps(stage)}
    return state.key_for(stage, config, code_hash(list(STAGES[stage].code)), external_inputs(config, w.work), deps,
                         w.settings(stage))


def plan(cfg: PipelineConfig, state: State, *, start: str | None = None, only: list[str] | None = None) -> list[Plan]:
    """What each stage will do and why; keys chain through the upstream outputs' fingerprints."""
    w, configs = build_configs(cfg)
    active = cfg.active()
    if cfg.base_model and not Path(cfg.base_model).exists():  # else the first stage that loads it fails, hours in
        raise ConfigError(f"base_model: {cfg.base_model}: no such folder (a local Hugging Face model folder; "
                          "nothing is downloaded)")
    for s in [start] if start else only or []:
        if s not in active:
            raise ConfigError(f"stage {s!r} is not part of this chain (stages: {', '.join(active)})")
    forced = set(only or []) | ({s for s in active if NAMES.index(s) >= NAMES.index(start)} if start else set())
    plans, fps = [], {}  # fps: the fingerprint each upstream output will have when the stage runs
    for s in NAMES:
        if s in OPT_IN and s not in cfg.stages:  # an opt-in stage the config does not name is not shown at all
            continue
        if s not in active:
            plans.append(Plan(s, "off", "base_model is given" if s == "init" and s in cfg.stages else "not in stages"))
            continue
        key, parts = stage_key(state, w, s, configs[s], fps)
        rec = state.get(s)
        out = w.output(s)
        done = rec.get("status") == "done" and rec.get("key") == key and fingerprint(out) == rec.get("fingerprint")
        if only is not None and s not in only:
            finished = rec.get("status") == "done" and fingerprint(out) is not None
            if not finished and any(s in w.deps(o) for o in only):
                raise ZhongjingError(f"--only: stage {s!r} (an input of {', '.join(only)}) has no finished output "
                                     f"in {w.work}; run it first")
            plans.append(Plan(s, "skip", "not selected (--only)", key, configs[s]))
            if finished:
                fps[s] = rec.get("fingerprint")
            continue
        if s in forced:
            plans.append(Plan(s, "run", "forced (--from/--only)", key, configs[s]))
            fps[s] = f"pending:{key}"
        elif done:
            plans.append(Plan(s, "skip", "inputs, code and config unchanged", key, configs[s]))
            fps[s] = rec["fingerprint"]
        elif rec.get("status") == "running" and rec.get("key") == key:
            plans.append(Plan(s, "resume", "interrupted earlier run with the same inputs", key, configs[s]))
            fps[s] = f"pending:{key}"
        else:
            changed = state.changed(s, parts)
            why = ("never run" if not rec else "output changed on disk" if rec.get("key") == key
                   else f"changed: {', '.join(changed)}" if changed else "inputs, code or config changed")
            plans.append(Plan(s, "run", why, key, configs[s], parts))
            fps[s] = f"pending:{key}"
    if cfg.launch and any(STAGES[p.stage].launched and p.action in ("run", "resume") for p in plans):
        launch_argv(cfg.launch)  # a missing launcher is named now, not after build and hours of other stages
    return plans


def launch_argv(launch: str) -> list[str]:
    """`launch` as argv, its program found on PATH or next to this Python: `.venv/bin/zhongjing` run from a shell
    where the venv is not activated must still find the venv's `accelerate`."""
    argv = shlex.split(launch)
    if argv and not shutil.which(argv[0]):
        local = Path(sys.executable).parent / argv[0]
        if not local.is_file():
            raise ConfigError(f"launch: {argv[0]!r} is neither on PATH nor in {local.parent}; install it there "
                              "(accelerate comes with zhongjing) or give its full path")
        argv[0] = str(local)
    return argv


# ----------------------------------------------------------------------------------------------- running

def _child_env(threads: int = 0) -> dict:
    env = dict(os.environ)
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").exists():  # a source checkout: the stages import this same code
        env["PYTHONPATH"] = str(root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _die_with_parent() -> None:
    """Child processes die with the pipeline (Linux), so a killed pipeline never leaves a stage writing."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_child(cmd: list[str], log_path: Path, threads: int = 0) -> None:
    """Run a stage process, copying its output to the terminal and to the stage's log file."""
    make_dir(log_path.parent)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {shlex.join(cmd)}\n".encode())
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_child_env(threads),
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        try:
            while chunk := os.read(proc.stdout.fileno(), 8192):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                log.write(chunk)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if rc != 0:
        raise ZhongjingError(f"stage command failed (exit {rc}): {shlex.join(cmd)} — see {log_path}")


def drop_resume_points(stage: str, w: Wiring) -> None:
    """Before a fresh run is recorded as running, remove what an earlier run left to resume from.

    The stage process would clear it too, but only after loading its model: a pipeline killed before that
    would, on rerun, "resume" the earlier run's checkpoints (or partial answers) made with another config
    and record that result under the new key.
    """
    for p in STAGES[stage].resume_points(w.output(stage)):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def run_stage(p: Plan, cfg: PipelineConfig, w: Wiring) -> None:
    s, scfg = p.stage, p.config
    resume = p.action == "resume"
    if hasattr(scfg, "train"):  # training stages: continue the interrupted run, or start clean
        scfg.train.resume, scfg.train.overwrite = resume, not resume
    elif hasattr(scfg, "overwrite"):  # generate: its partial file is the resume point
        scfg.overwrite = not resume
    stage = STAGES[s]
    if stage.prompts:
        w.write_prompts(s)
    if stage.run:  # runs in this process (rank)
        stage.run(cfg, w, scfg)
        return
    cfg_file = w.work / "configs" / f"{s}.yaml"  # what the stage ran with, for the user too
    with atomic_open(cfg_file) as f:
        yaml.safe_dump(to_dict(scfg), f, allow_unicode=True, sort_keys=False)
    python = cfg.python or sys.executable
    prefix = launch_argv(cfg.launch) if cfg.launch and stage.launched else [python]
    run_child([*prefix, "-m", "zhongjing", *stage.command, "--config", str(cfg_file)], w.work / "logs" / f"{s}.log",
              cfg.threads)


def run_pipeline(cfg: PipelineConfig, *, start: str | None = None, only: list[str] | None = None,
                 dry_run: bool = False, out=print) -> dict:
    work = Path(cfg.work_dir)
    make_dir(work)
    with lock(work):
        state = State(work)
        plans = plan(cfg, state, start=start, only=only)
        out(f"pipeline: work dir {work.resolve()}")
        for p in plans:
            if p.action != "off":
                out(f"  {p.stage:<9} {p.action:<7} {p.why}")
        if cfg.simulated and any(p.stage in ("rank", "rm") and p.action != "off" for p in plans):
            out(f"pipeline: NOTE: {report.SIMULATED_NOTE}")
        if dry_run:
            return {"plans": plans}
        w, _ = build_configs(cfg)
        times: dict[str, float] = {}
        fps: dict[str, str] = {}
        for p in plans:
            if p.action in ("off", "skip"):
                continue
            # the key of a later stage depends on what this one writes: recompute with real fingerprints
            p.key, p.parts = stage_key(state, w, p.stage, p.config, fps)
            out(f"\n=== {p.stage} ({p.action}) ===")
            if p.action == "run":
                drop_resume_points(p.stage, w)
            state.start(p.stage, p.key, p.parts)
            t0, c0 = time.time(), child_cpu_seconds()
            run_stage(p, cfg, w)
            times[p.stage] = time.time() - t0
            fps[p.stage] = fingerprint(w.output(p.stage))
            summary = report.stage_summary(STAGES[p.stage], w, cfg) | {"cpu_seconds": round(child_cpu_seconds() - c0, 1)}
            state.finish(p.stage, p.key, fps[p.stage], times[p.stage], summary)
        summary = report.write_summary(cfg, w, state, plans, times)
    out("")
    out(summary["text"])
    return summary


# ----------------------------------------------------------------------------------------------- CLI

def load_pipeline_config(path: str | None, overrides: list[str]) -> PipelineConfig:
    """The pipeline YAML + `section.key=value` overrides; stage sections are checked in build_configs."""
    return load_config(PipelineConfig, path, overrides)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="zhongjing pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="pipeline keys (stage sections take that stage's keys, see `zhongjing <stage> --help`):\n"
               + "\n".join(describe(PipelineConfig)))
    p.add_argument("--config", help="pipeline YAML (configs/demo.yaml, configs/paper/pipeline.yaml)")
    p.add_argument("--from", dest="start", choices=NAMES, help="re-run this stage and every stage after it")
    p.add_argument("--only", help="run just these stages (comma-separated); the others must be finished")
    p.add_argument("--plan", action="store_true", help="print what would run or be skipped, and why; run nothing")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. work_dir=runs/x sft.train.lr=1e-4")
    a = p.parse_intermixed_args(argv)  # key=value overrides may come before and after the flags
    if a.start and a.only:
        raise ConfigError("use --from or --only, not both")
    only = [s.strip() for s in a.only.split(",") if s.strip()] if a.only is not None else None
    if only is not None and not only:  # `--only "$STAGES"` with an empty variable ran the whole chain
        raise ConfigError(f"--only: no stage named in {a.only!r} (valid: {', '.join(NAMES)})")
    for s in only or []:
        if s not in STAGES:
            raise ConfigError(f"--only: unknown stage {s!r} (valid: {', '.join(NAMES)})")
    cfg = load_pipeline_config(a.config, a.overrides)
    run_pipeline(cfg, start=a.start, only=only, dry_run=a.plan)
    return 0
