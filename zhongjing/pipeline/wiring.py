"""How the pipeline connects the stages: output paths, which upstream each stage reads, and each stage's config.

A stage section in the pipeline YAML holds that stage's own keys; the keys listed in WIRED are filled here from
the work dir and the upstream outputs, and a section that sets one is rejected (it would silently disconnect the
chain). Lists of extra sources are allowed where a stage can take more than the wired data (sft.data: e.g. a
self-cognition set next to the built dialogues).
"""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from zhongjing.config import from_dict
from zhongjing.errors import ConfigError, ZhongjingError

# stage → (module, config class); the class validates the section (unknown keys, types)
CLASSES = {
    "init": ("zhongjing.model.init_model", "InitModelConfig"),
    "build": ("zhongjing.dataset.chain", "BuildConfig"),
    "pt": ("zhongjing.train.pt", "PTConfig"),
    "sft": ("zhongjing.train.sft", "SFTConfig"),
    "generate": ("zhongjing.generate", "GenerateConfig"),
    "rm": ("zhongjing.train.rm", "RMConfig"),
    "ppo": ("zhongjing.train.ppo", "PPOConfig"),
    "eval": ("zhongjing.eval.run", "EvalConfig"),
}
COMMANDS = {"init": ["init-model"], "build": ["build"], "pt": ["train", "pt"], "sft": ["train", "sft"],
            "generate": ["generate"], "rm": ["train", "rm"], "ppo": ["train", "ppo"], "eval": ["eval"]}
LAUNCHED = {"pt", "sft", "rm", "ppo"}  # run under `launch` (accelerate launch ...) when it is set
WIRED = {
    "init": {"output"},
    "build": {"output", "work_dir"},
    "pt": {"model", "output"},
    "sft": {"model", "output"},
    "generate": {"model", "input", "output"},
    "rm": {"model", "data", "output"},
    "ppo": {"model", "prompts", "output", "reward.rm"},
    "eval": {"output", "models", "target", "baselines", "ablation"},
}
BUILT = ("train", "validation", "test")  # files the build stage writes into its output folder
MODEL_NAMES = {"ppo": "aligned", "sft": "sft", "base": "base"}
SIMULATED_NOTE = ("The rankings the reward model learned from were made by a SIMULATED annotator (rubric heuristics "
                  "in zhongjing/data/simulate.py), not by doctors: this run demonstrates the mechanics only.")


@dataclass
class RankSettings:
    """The rank stage with simulated or gold-anchored rankings: the stand-ins for doctors (dataset/sources.py)."""

    kg: str = ""  # knowledge graph (xywy layout) for the drug check; empty = no graph
    tie: float = 0.02  # score differences below this in every dimension are ties
    mismatched: int = 0  # real replies to other patients ranked last in each ranking (teaches relevance)
    extra: list[str] = field(default_factory=list)  # more ranking files: preference pairs, annotator exports


@dataclass
class RankJob:
    """What the rank stage does (and what its key hashes): the rankings source plus the simulator's settings."""

    rankings: str
    kg: str
    tie: float
    mismatched: int = 0
    extra: list[str] = field(default_factory=list)


def config_class(stage: str):
    module, name = CLASSES[stage]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ZhongjingError(f"stage {stage}: {module}.{name} is not available in this installation ({e})") from None


class Wiring:
    def __init__(self, cfg):
        self.cfg = cfg
        self.work = Path(cfg.work_dir).resolve()
        self.stages = cfg.active()

    # -------------------------------------------------------------------- paths
    def output(self, stage: str) -> Path:
        w = self.work
        return {"init": w / "base", "build": w / "data", "pt": w / "pt", "sft": w / "sft",
                "generate": w / "generate" / "answers.jsonl", "rank": w / "rank" / "rankings.jsonl",
                "rm": w / "rm", "ppo": w / "ppo", "eval": w / "eval" / "results.json"}[stage]

    def base(self) -> Path:
        return Path(self.cfg.base_model).resolve() if self.cfg.base_model else self.output("init")

    def lm_base(self) -> Path:
        """The pre-trained base: the pt output when pt is part of the chain (sft and rm start from it)."""
        return self.output("pt") if "pt" in self.stages else self.base()

    def built(self, split: str) -> Path:
        return self.output("build") / f"{split}.jsonl"

    def prompts_file(self, stage: str) -> Path:
        return self.work / "prompts" / f"{stage}.jsonl"

    def deps(self, stage: str) -> list[str]:
        """Upstream stages whose outputs `stage` reads (only those in the chain)."""
        base = ["init"] if not self.cfg.base_model else []
        lm = ["pt"] if "pt" in self.stages else base
        rank_in = ["generate"] if self.cfg.simulated else []
        built = ["build"] if self.cfg.splits.pretrain else []
        d = {"init": [], "build": [], "pt": base + built, "sft": lm + ["build"], "generate": ["sft", "build"],
             "rank": rank_in, "rm": lm + ["rank"], "ppo": ["sft", "rm", "build"],
             "eval": base + lm + ["sft", "ppo", "rm", "build"]}[stage]
        return [s for s in dict.fromkeys(d) if s in self.stages]

    def settings(self, stage: str) -> dict:
        """Pipeline keys that shape what `stage` reads beyond its own config (part of its key)."""
        p = self.cfg.splits
        if stage == "generate":
            return {"split": p.generate, "limit": p.generate_limit, "seed": p.seed}
        if stage == "ppo":
            return {"split": p.ppo, "limit": p.ppo_limit, "seed": p.seed}
        return {}

    # -------------------------------------------------------------------- prompts
    def write_prompts(self, stage: str) -> Path:
        """A seeded sample of one built split: the dialogues `generate` answers or `ppo` rolls out on."""
        from zhongjing.io import iter_jsonl, write_jsonl

        p = self.cfg.splits
        split, limit = (p.generate, p.generate_limit) if stage == "generate" else (p.ppo, p.ppo_limit)
        rows = [r for _, r in iter_jsonl(self.built(split))]
        if not rows:
            raise ZhongjingError(f"{self.built(split)}: no dialogues to use as {stage} prompts")
        if limit and limit < len(rows):
            keep = sorted(random.Random(f"{p.seed}:{stage}").sample(range(len(rows)), limit))
            rows = [rows[i] for i in keep]
        out = self.prompts_file(stage)
        write_jsonl(out, rows)
        return out


def _demo(name: str) -> str:
    from zhongjing.demo import demo_path

    return str(demo_path(name))


def _has(section: dict, dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    if head not in section:
        return False
    return not rest or (isinstance(section[head], dict) and _has(section[head], rest))


def _reject_wired(stage: str, section: dict) -> None:
    for key in WIRED.get(stage, ()):
        if _has(section, key) and not (stage == "sft" and key == "data"):
            raise ConfigError(f"{stage}.{key} is wired by the pipeline (from work_dir / the previous stage's output); "
                              "remove it from the config")


def stage_config(stage: str, cfg, w: Wiring):
    """The stage's dataclass config: the section's keys plus the wiring, validated by the stage's own class."""
    if stage == "rank":
        return RankJob(cfg.rankings, cfg.rank.kg, cfg.rank.tie, cfg.rank.mismatched, list(cfg.rank.extra))
    section = dict(getattr(cfg, stage) or {})
    _reject_wired(stage, section)
    out = str(w.output(stage))
    if stage == "init":
        section |= {"output": out, "corpus": section.get("corpus") or [_demo("corpus")]}
    elif stage == "build":
        section |= {"output": out, "work_dir": str(w.work / "build-work"),
                    "inputs": section.get("inputs") or [{"path": _demo("raw")}]}
    elif stage == "pt":
        data = list(section.get("data") or [{"path": _demo("corpus"), "name": "demo-corpus"}])
        if cfg.splits.pretrain:
            data.append({"path": str(w.built("train")), "format": "dialogue", "name": "built-train"})
        section |= {"model": str(w.base()), "output": out, "data": data}
    elif stage == "sft":
        built = {"path": str(w.built("train")), "format": "dialogue", "name": "built-train"}
        section |= {"model": str(w.lm_base()), "output": out, "data": [built] + list(section.get("data") or [])}
    elif stage == "generate":
        section |= {"model": str(w.output("sft")), "input": [str(w.prompts_file("generate"))], "output": out}
    elif stage == "rm":
        section |= {"model": str(w.lm_base()), "data": [str(w.output("rank"))], "output": out}
        if "build" in w.stages:  # relevance measured once on the real test split (own reply vs another's)
            section.setdefault("relevance_data", [str(w.built("test"))])
    elif stage == "ppo":
        section |= {"model": str(w.output("sft")), "prompts": [str(w.prompts_file("ppo"))], "output": out,
                    "reward": dict(section.get("reward") or {}) | {"rm": str(w.output("rm"))}}
        ppo = dict(section.get("ppo") or {})
        if ppo.get("ptx_coef") and not ppo.get("ptx_data"):  # PPO-ptx keeps the language of the SFT data
            section["ppo"] = ppo | {"ptx_data": [str(w.built("train"))], "ptx_format": "dialogue"}
    elif stage == "eval":
        section = _eval_section(section, cfg, w)
    try:
        return from_dict(config_class(stage), section)
    except ConfigError as e:
        raise ConfigError(f"section '{stage}': {e}") from None


def _eval_section(section: dict, cfg, w: Wiring) -> dict:
    """Aligned model vs the SFT model and the base, on the built test split unless test sets are given."""
    models = []
    if "ppo" in w.stages:
        models.append({"name": MODEL_NAMES["ppo"], "path": str(w.output("ppo"))})
    models.append({"name": MODEL_NAMES["sft"], "path": str(w.output("sft"))})
    models.append({"name": MODEL_NAMES["base"], "path": str(w.lm_base())})
    target = models[0]["name"]
    section = dict(section)
    section |= {"output": str(w.output("eval").parent), "models": models, "target": target,
                "baselines": [m["name"] for m in models[1:]]}
    if "ppo" in w.stages:
        section["ablation"] = {"before": MODEL_NAMES["sft"], "after": MODEL_NAMES["ppo"]}
    if cfg.simulated and "rm" in w.stages:
        section["notes"] = [SIMULATED_NOTE] + list(section.get("notes") or [])
    built = {"name": "test", "path": str(w.built("test")), "format": "dialogue", "limit": cfg.splits.test_limit}
    section["testsets"] = [built] + list(section.get("testsets") or [])  # yours are added to the built test split
    judge = dict(section.get("judge") or {})
    if judge.get("backend") == "reward_model" and not judge.get("reward_model"):
        if "rm" not in w.stages:
            raise ConfigError("eval.judge.backend reward_model needs the rm stage (or eval.judge.reward_model)")
        judge["reward_model"] = str(w.output("rm"))
        section["judge"] = judge
    return section


def check_stages(cfg, w: Wiring) -> None:
    """A chain that cannot be wired is refused before anything runs."""
    s = set(w.stages)
    need = {"sft": ["build"], "generate": ["sft", "build"], "rm": ["rank"], "ppo": ["sft", "rm", "build"],
            "eval": ["sft"]}
    if cfg.simulated:
        need["rank"] = ["generate"]
    for stage, req in need.items():
        missing = [r for r in req if stage in s and r not in s]
        if missing:
            raise ConfigError(f"stages: {stage} needs {', '.join(missing)} in the chain")
    if not cfg.base_model and "init" not in cfg.stages:
        raise ConfigError("give base_model (a local model folder) or keep 'init' in stages")


# ------------------------------------------------------------------------------------------ rank stage

def run_rank(cfg, w: Wiring, job: RankJob) -> dict:
    """Simulated rankings of the generated answers, or the real rankings file checked and copied in."""
    from zhongjing.data.readers import read_rankings
    from zhongjing.io import write_jsonl

    out = w.output("rank")
    if cfg.simulated:
        from zhongjing.data.simulate import load_annotator
        from zhongjing.dataset.sources import make_rankings

        annotator = load_annotator(job.kg or None, job.tie)
        ranked, counts = make_rankings(cfg.rankings, read_rankings(str(w.output("generate"))), annotator,
                                       mismatched=job.mismatched, extra=job.extra, seed=cfg.splits.seed)
        write_jsonl(out, ranked)
        wrong = sum(r.all_wrong for r in ranked)
        print(f"rank: {cfg.rankings} rankings of {len(ranked)} prompts ({wrong} with every answer unsafe) → {out}; "
              f"sources {dict(counts)}\nrank: the samples' order comes from heuristics (rubric rules), NOT from "
              "doctors", flush=True)
        return {"rankings": len(ranked), "all_wrong": wrong, "simulated": True, "sources": dict(counts)}
    if not Path(cfg.rankings).exists():  # the human step: the chain stops here until doctors have ranked
        raise ZhongjingError(
            f"rankings: {cfg.rankings} not found. The stages before 'rank' are finished: import "
            f"{w.output('generate')} into `zhongjing annotate`, have doctors rank it, export the rankings to "
            f"{cfg.rankings} and run the pipeline again")
    rows = list(read_rankings(cfg.rankings))
    ranked = [r for r in rows if r.ranking or r.all_wrong]
    if not ranked:
        raise ZhongjingError(f"{cfg.rankings}: no ranked items (export finished rankings with `zhongjing annotate export`)")
    write_jsonl(out, ranked)
    print(f"rank: {len(ranked)} ranked items from {cfg.rankings} ({len(rows) - len(ranked)} unranked left out)")
    return {"rankings": len(ranked), "unranked": len(rows) - len(ranked), "simulated": False}
