"""The stages of the chain, one `Stage` record each, and how the pipeline connects them.

Adding a stage is one row in STAGES: its module and config class, command, output, what it reads, the keys the
pipeline wires, how it launches, its code and its summary. Everything else (the plan, the keys, the checks, the
report) reads the rows.

A stage section in the pipeline YAML holds that stage's own keys; the `wired` keys are filled here from the work
dir and the upstream outputs, and a section that sets one is rejected (it would silently disconnect the chain).
Lists of extra sources are allowed where a stage can take more than the wired data (sft.data: e.g. a
self-cognition set next to the built dialogues).
"""

from __future__ import annotations

import dataclasses
import importlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from zhongjing.config import from_dict
from zhongjing.demo import demo_path
from zhongjing.errors import ConfigError, ZhongjingError
from zhongjing.generate import partial_paths
from zhongjing.io import iter_jsonl, write_jsonl
from zhongjing.pipeline import report
from zhongjing.pipeline.rank import RankSettings, run_rank


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # the stage's own module: its config class (and, with a command, its `main`)
    config_class: str  # validates the YAML section (unknown keys, types)
    command: tuple[str, ...]  # `zhongjing <command> --config FILE` in its own process; () = runs in the pipeline
    output: str  # where it writes, under the work dir
    reads: Callable[[Any], list[str]]  # (wiring) → upstream stages whose outputs it reads
    needs: tuple[str, ...] = ()  # of those it reads, the ones the chain must include
    wired: frozenset = frozenset()  # section keys the pipeline fills
    wire: Callable | None = None  # (section, cfg, wiring) → the section with the wired keys filled
    launched: bool = False  # a training stage: runs under `launch` (accelerate launch ...) when that is set
    code: tuple[str, ...] = ()  # modules whose source is its code version (an edit re-runs it and what follows)
    summary: Callable | None = None  # (name, wiring, cfg) → a few numbers and a one-line `text` for the table
    prompts: bool = False  # answers a seeded sample of a built split (splits.<name>), written before it runs
    section: type = dict  # the type of its section in the pipeline YAML
    run: Callable | None = None  # (cfg, wiring, config) for a stage that runs inside the pipeline
    model_name: str = ""  # its name among the eval stage's models
    help: str = ""  # its line in `zhongjing --help` (a stage with a command)

    def resume_points(self, out: Path) -> list[Path]:
        """What an earlier run left to resume from (removed before a fresh run)."""
        if self.launched:  # "checkpoints" is zhongjing.train.checkpoint.CKPT (no torch here)
            return [out / "checkpoints"]
        if self.name == "generate":
            return [out, *partial_paths(out)]
        return []


_TRAIN = ("zhongjing.train.loop", "zhongjing.train.batching", "zhongjing.train.checkpoint", "zhongjing.train.common",
          "zhongjing.train.optim", "zhongjing.train.mix", "zhongjing.train.logs", "zhongjing.model.lora",
          "zhongjing.model.load", "zhongjing.model.wrappers", "zhongjing.model.identity", "zhongjing.data")
BUILT = ("train", "validation", "test")  # files the build stage writes into its output folder
BASE_NAME = "base"  # the eval stage's name for the pre-trained base the chain started from


def _demo(name: str) -> str:
    return str(demo_path(name))


def _built_train(w) -> dict:
    return {"path": str(w.built("train")), "format": "dialogue", "name": "built-train"}


def _wire_init(section, cfg, w):
    return section | {"output": str(w.output("init")), "corpus": section.get("corpus") or [_demo("corpus")]}


def _wire_build(section, cfg, w):
    return section | {"output": str(w.output("build")), "work_dir": str(w.work / "build-work"),
                      "inputs": section.get("inputs") or [{"path": _demo("raw")}]}


def _wire_pt(section, cfg, w):
    data = list(section.get("data") or [{"path": _demo("corpus"), "name": "demo-corpus"}])
    if cfg.splits.pretrain:
        data.append(_built_train(w))
    return section | {"model": str(w.base()), "output": str(w.output("pt")), "data": data}


def _wire_sft(section, cfg, w):
    return section | {"model": str(w.lm_base()), "output": str(w.output("sft")),
                      "data": [_built_train(w)] + list(section.get("data") or [])}


def _wire_generate(section, cfg, w):
    return section | {"model": str(w.output("sft")), "input": [str(w.prompts_file("generate"))],
                      "output": str(w.output("generate"))}


def _wire_rank(section, cfg, w):
    return section | {"rankings": cfg.rankings}


def _rm_parent(w) -> list[str]:
    """The stage whose model the reward model starts from (`rm_parent`; none: the given base model)."""
    return ["sft"] if w.cfg.rm_parent == "sft" else w.lm_stage()


def _wire_rm(section, cfg, w):
    parent = next((w.output(s) for s in _rm_parent(w)), w.base())
    section = section | {"model": str(parent), "data": [str(w.output("rank"))], "output": str(w.output("rm"))}
    if "build" in w.stages:  # relevance measured once on the real test split (own reply vs another's)
        section.setdefault("relevance_data", [str(w.built("test"))])
    return section


def _wire_ppo(section, cfg, w):
    section = section | {"model": str(w.output("sft")), "prompts": [str(w.prompts_file("ppo"))],
                         "output": str(w.output("ppo")),
                         "reward": dict(section.get("reward") or {}) | {"rm": str(w.output("rm"))}}
    ppo = dict(section.get("ppo") or {})
    if ppo.get("ptx_coef") and not ppo.get("ptx_data"):  # PPO-ptx keeps the language of the SFT data
        section["ppo"] = ppo | {"ptx_data": [str(w.built("train"))], "ptx_format": "dialogue"}
    return section


def _wire_consult(section, cfg, w):
    """Consultation RL from the SFT doctor; cases come from the built train split (made at the stage's start)."""
    return section | {"model": str(w.output("sft")), "dialogues": [str(w.built("train"))],
                      "output": str(w.output("consult"))}


def _wire_eval(section, cfg, w):
    """Aligned model vs the SFT model, the pre-trained (pt) model and the base, on the built test split (or the
    validation split: `splits.eval`) plus any test sets given; every model is a baseline of the aligned one, so the
    Bradley–Terry leaderboard ranks them all."""
    split = cfg.splits.eval
    models = [{"name": STAGES[s].model_name, "path": str(w.output(s))} for s in ("ppo", "consult", "sft", "pt")
              if s in w.stages]
    models.append({"name": BASE_NAME, "path": str(w.base())})  # the model the chain started from (before pt)
    section = section | {"output": str(w.output("eval").parent), "models": models, "target": models[0]["name"],
                         "baselines": [m["name"] for m in models[1:]]}
    if "ppo" in w.stages:
        section["ablation"] = {"before": STAGES["sft"].model_name, "after": STAGES["ppo"].model_name}
    if cfg.simulated and "rm" in w.stages:
        section["notes"] = [report.SIMULATED_NOTE] + list(section.get("notes") or [])
    if "consult" in w.stages:  # the consultation kind on the held-out test split's dialogues; the consult model's
        # final advice is the one judged against every other model's (it is what consultation RL trained)
        section["consultation"] = ({"dialogues": [str(w.built(split))], "target": STAGES["consult"].model_name}
                                   | dict(section.get("consultation") or {}))
    built = {"name": split, "path": str(w.built(split)), "format": "dialogue", "limit": cfg.splits.test_limit}
    section["testsets"] = [built] + list(section.get("testsets") or [])  # yours are added to the built test split
    judge = dict(section.get("judge") or {})
    if judge.get("backend") == "reward_model" and not judge.get("reward_model"):
        if "rm" not in w.stages:
            raise ConfigError("eval.judge.backend reward_model needs the rm stage (or eval.judge.reward_model)")
        judge["reward_model"] = str(w.output("rm"))
        section["judge"] = judge
    extra = [dict(j) for j in section.get("validation_judges") or []]  # judges only checked against human labels
    for j in extra:
        if j.get("backend") == "reward_model" and not j.get("reward_model"):
            if "rm" not in w.stages:
                raise ConfigError("eval.validation_judges: a reward_model judge needs the rm stage (or its reward_model)")
            j["reward_model"] = str(w.output("rm"))
    if extra:
        section["validation_judges"] = extra
    return section


_ROWS = [
    Stage("init", "zhongjing.model.init_model", "InitModelConfig", ("init-model",), "base",
          reads=lambda w: [], wired=frozenset({"output"}), wire=_wire_init,
          code=("zhongjing.model.init_model", "zhongjing.data.readers"), summary=report.init_summary,
          help="train a tokenizer and build a tiny LLaMA from scratch"),
    Stage("build", "zhongjing.dataset.chain", "BuildConfig", ("build",), "data",
          reads=lambda w: [], wired=frozenset({"output", "work_dir"}), wire=_wire_build,
          code=("zhongjing.dataset", "zhongjing.data"), summary=report.build_summary,
          help="build a clean CMtMedQA-style training set from raw dialogues"),
    Stage("pt", "zhongjing.train.pt", "PTConfig", ("train", "pt"), "pt",
          reads=lambda w: w.base_stage() + (["build"] if w.cfg.splits.pretrain else []),
          wired=frozenset({"model", "output"}), wire=_wire_pt, launched=True,
          code=("zhongjing.train.pt", "zhongjing.train.lm", *_TRAIN), summary=report.lm_summary, model_name="pt",
          help="continued pre-training on documents"),
    Stage("sft", "zhongjing.train.sft", "SFTConfig", ("train", "sft"), "sft",
          reads=lambda w: w.lm_stage() + ["build"], needs=("build",),
          wired=frozenset({"model", "output"}), wire=_wire_sft, launched=True,
          code=("zhongjing.train.sft", "zhongjing.train.lm", *_TRAIN), summary=report.lm_summary, model_name="sft",
          help="multi-turn supervised fine-tuning (LoRA or full)"),
    Stage("generate", "zhongjing.generate", "GenerateConfig", ("generate",), "generate/answers.jsonl",
          reads=lambda w: ["sft", "build"], needs=("sft", "build"),
          wired=frozenset({"model", "input", "output"}), wire=_wire_generate, prompts=True,
          code=("zhongjing.generate", "zhongjing.model.generation", "zhongjing.model.load", "zhongjing.data"),
          summary=report.generate_summary,
          help="K sampled answers per doctor turn → Ranking JSONL"),
    Stage("rank", "zhongjing.pipeline.rank", "RankJob", (), "rank/rankings.jsonl",
          reads=lambda w: (["generate"] if w.cfg.simulated else [])
          + (["build"] if w.cfg.rank.relevance_pairs or w.cfg.rank.safety_pairs else []),
          needs=("generate",),
          wired=frozenset({"rankings"}), wire=_wire_rank, section=RankSettings, run=run_rank,
          code=("zhongjing.data.simulate", "zhongjing.dataset.sources", "zhongjing.data.mismatch",
                "zhongjing.data.rubric", "zhongjing.data.kg", "zhongjing.data.matcher", "zhongjing.data",
                "zhongjing.pipeline.rank"),
          summary=report.rank_summary),
    Stage("rm", "zhongjing.train.rm", "RMConfig", ("train", "rm"), "rm",
          reads=lambda w: _rm_parent(w) + ["rank"], needs=("rank", "sft"),
          wired=frozenset({"model", "data", "output"}), wire=_wire_rm, launched=True,
          code=("zhongjing.train.rm", "zhongjing.train.relevance", "zhongjing.train.prefs", "zhongjing.train.pref_batches",
                "zhongjing.train.pref_fit", "zhongjing.model.reward",
                "zhongjing.train.losses", "zhongjing.model.value_head", *_TRAIN),
          summary=report.rm_summary,
          help="reward model from K-way rankings"),
    Stage("ppo", "zhongjing.train.ppo", "PPOConfig", ("train", "ppo"), "ppo",
          reads=lambda w: ["sft", "rm", "build"], needs=("sft", "rm", "build"),
          wired=frozenset({"model", "prompts", "output", "reward.rm"}), wire=_wire_ppo, launched=True, prompts=True,
          code=("zhongjing.train.ppo", "zhongjing.train.rl", "zhongjing.train.rollout", "zhongjing.train.rewards",
                "zhongjing.train.monitor", "zhongjing.data.simulate", "zhongjing.model.reward",
                "zhongjing.train.losses", "zhongjing.model.value_head", "zhongjing.model.generation", *_TRAIN),
          summary=report.ppo_summary, model_name="aligned",
          help="PPO against the reward model"),
    Stage("consult", "zhongjing.consult.loop", "ConsultConfig", ("train", "consult"), "consult",
          reads=lambda w: ["sft", "build"], needs=("sft", "build"),
          wired=frozenset({"model", "dialogues", "output"}), wire=_wire_consult,
          code=("zhongjing.consult", "zhongjing.train.advantages", "zhongjing.train.rollout", "zhongjing.train.rl",
                "zhongjing.train.losses", "zhongjing.model.generation", "zhongjing.data.simulate",
                "zhongjing.dataset.deid", "zhongjing.model.value_head", *_TRAIN),
          model_name="consult", help="multi-turn RL against a simulated patient (opt-in: stages: [..., consult, ...])"),
    Stage("eval", "zhongjing.eval.run", "EvalConfig", ("eval",), "eval/results.json",
          reads=lambda w: w.base_stage() + w.lm_stage() + ["sft", "ppo", "consult", "rm", "build"], needs=("sft",),
          wired=frozenset({"output", "models", "target", "baselines", "ablation"}), wire=_wire_eval,
          code=("zhongjing.eval", "zhongjing.model.generation", "zhongjing.model.reward", "zhongjing.model.value_head",
                "zhongjing.model.load", "zhongjing.data"),
          summary=report.eval_summary,
          help="pairwise judging, safety, exams and a report"),
]
STAGES: dict[str, Stage] = {s.name: s for s in _ROWS}  # in chain order


def config_class(stage: str):
    s = STAGES[stage]
    try:
        return getattr(importlib.import_module(s.module), s.config_class)
    except (ImportError, AttributeError) as e:
        raise ZhongjingError(f"stage {stage}: {s.module}.{s.config_class} is not available in this installation "
                             f"({e})") from None


class Wiring:
    def __init__(self, cfg):
        self.cfg = cfg
        self.work = Path(cfg.work_dir).resolve()
        self.stages = cfg.active()

    # -------------------------------------------------------------------- paths
    def output(self, stage: str) -> Path:
        if stage == "eval" and self.cfg.splits.eval != "test":  # a validation eval never overwrites the test report
            return self.work / f"eval-{self.cfg.splits.eval}" / Path(STAGES[stage].output).name
        return self.work / STAGES[stage].output

    def base(self) -> Path:
        return Path(self.cfg.base_model).resolve() if self.cfg.base_model else self.output("init")

    def base_stage(self) -> list[str]:
        """The stage that makes the base model: init, unless a base model is given."""
        return ["init"] if not self.cfg.base_model else []

    def lm_stage(self) -> list[str]:
        return ["pt"] if "pt" in self.stages else self.base_stage()

    def lm_base(self) -> Path:
        """The pre-trained base: the pt output when pt is part of the chain (sft and rm start from it)."""
        return self.output("pt") if "pt" in self.stages else self.base()

    def built(self, split: str) -> Path:
        return self.output("build") / f"{split}.jsonl"

    def prompts_file(self, stage: str) -> Path:
        return self.work / "prompts" / f"{stage}.jsonl"

    def deps(self, stage: str) -> list[str]:
        """Upstream stages whose outputs `stage` reads (only those in the chain)."""
        return [s for s in dict.fromkeys(STAGES[stage].reads(self)) if s in self.stages]

    def settings(self, stage: str) -> dict:
        """Pipeline keys that shape what `stage` reads beyond its own config (part of its key)."""
        if not STAGES[stage].prompts:
            return {}
        p = self.cfg.splits
        extra = {"red_flags": p.ppo_red_flags} if stage == "ppo" and p.ppo_red_flags else {}
        return {"split": getattr(p, stage), "limit": getattr(p, f"{stage}_limit"), "seed": p.seed} | extra

    # -------------------------------------------------------------------- prompts
    def write_prompts(self, stage: str) -> Path:
        """A seeded sample of one built split: the dialogues `generate` answers or `ppo` rolls out on."""
        p = self.cfg.splits
        split, limit = getattr(p, stage), getattr(p, f"{stage}_limit")
        rows = [r for _, r in iter_jsonl(self.built(split))]
        if not rows:
            raise ZhongjingError(f"{self.built(split)}: no dialogues to use as {stage} prompts")
        if limit and limit < len(rows):
            keep = sorted(random.Random(f"{p.seed}:{stage}").sample(range(len(rows)), limit))
            if stage == "ppo" and p.ppo_red_flags:
                from zhongjing.data.simulate import red_flag

                chosen = set(keep)
                flagged = [i for i, r in enumerate(rows) if i not in chosen and any(
                    m.get("role") == "user" and red_flag(m.get("content") or "") for m in r.get("messages") or [])]
                keep = sorted(keep + random.Random(f"{p.seed}:{stage}:red-flags").sample(
                    flagged, min(p.ppo_red_flags, len(flagged))))
            rows = [rows[i] for i in keep]
        out = self.prompts_file(stage)
        write_jsonl(out, rows)
        return out


def _has(section: dict, dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    if head not in section:
        return False
    return not rest or (isinstance(section[head], dict) and _has(section[head], rest))


def stage_config(stage: str, cfg, w: Wiring):
    """The stage's dataclass config: the section's keys plus the wiring, validated by the stage's own class."""
    s = STAGES[stage]
    raw = getattr(cfg, stage)
    section = dataclasses.asdict(raw) if dataclasses.is_dataclass(raw) else dict(raw or {})
    for key in s.wired:
        if _has(section, key):
            raise ConfigError(f"{stage}.{key} is wired by the pipeline (from work_dir / the previous stage's output); "
                              "remove it from the config")
    section = s.wire(section, cfg, w) if s.wire else section
    try:
        return from_dict(config_class(stage), section)
    except ConfigError as e:
        raise ConfigError(f"section '{stage}': {e}") from None


def check_stages(cfg, w: Wiring) -> None:
    """A chain that cannot be wired is refused before anything runs."""
    for stage in w.stages:
        s = STAGES[stage]
        missing = [r for r in s.needs if r in s.reads(w) and r not in w.stages]
        if missing:
            raise ConfigError(f"stages: {stage} needs {', '.join(missing)} in the chain")
    if not cfg.base_model and "init" not in cfg.stages:
        raise ConfigError("give base_model (a local model folder) or keep 'init' in stages")
