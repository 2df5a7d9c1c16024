"""The rank stage, run inside the pipeline: simulated or gold-anchored rankings of the generated answers (the
demo's stand-in for doctors), or the doctors' exported rankings checked and copied in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from zhongjing.config import at_least, within
from zhongjing.data.readers import read_dialogues, read_rankings
from zhongjing.data.simulate import load_annotator
from zhongjing.dataset.sources import make_rankings
from zhongjing.errors import ConfigError, ZhongjingError
from zhongjing.hints import command
from zhongjing.io import write_jsonl


@dataclass
class RankSettings:
    """The rank stage with simulated or gold-anchored rankings: the stand-ins for doctors (dataset/sources.py)."""

    kg: str = ""  # knowledge graph (xywy layout) for the drug check; empty = no graph
    tie: float = 0.02  # score differences below this in every dimension are ties
    mismatched: int = 0  # real replies to other patients per ranking, ranked below the real reply (relevance)
    mismatched_as: str = "pair"  # pair: own real reply > other's, a ranking of its own; last: below every sample
    relevance_pairs: int = 0  # own-vs-other pairs drawn from the built training dialogues (no generation)
    extra: list[str] = field(default_factory=list)  # more ranking files: preference pairs, annotator exports
    safety_first: bool = True  # gold-anchored: a sample the rubric rates safer than the real reply ranks above it
    safety_pairs: int = 0  # (reply + referral) > reply on red-flag turns of the built training dialogues; -1 = all

    def __post_init__(self):
        if self.mismatched_as not in ("pair", "last"):
            raise ConfigError(f"rank.mismatched_as: 'pair' or 'last', got {self.mismatched_as!r}")
        at_least(self, 0, "mismatched", "relevance_pairs")
        at_least(self, -1, "safety_pairs")
        within(self, 0.0, float("inf"), "tie")


@dataclass
class RankJob:
    """What the rank stage does (and what its key hashes): the rankings source plus the simulator's settings."""

    rankings: str
    kg: str
    tie: float
    mismatched: int = 0
    mismatched_as: str = "pair"
    relevance_pairs: int = 0
    extra: list[str] = field(default_factory=list)
    safety_first: bool = True
    safety_pairs: int = 0


def run_rank(cfg, w, job: RankJob) -> dict:
    """Simulated rankings of the generated answers, or the real rankings file checked and copied in."""
    out = w.output("rank")
    if cfg.simulated:
        annotator = load_annotator(job.kg or None, job.tie)
        train = list(read_dialogues(str(w.built("train")))) if job.relevance_pairs or job.safety_pairs else []
        ranked, counts = make_rankings(cfg.rankings, read_rankings(str(w.output("generate"))), annotator,
                                       mismatched=job.mismatched, mismatched_as=job.mismatched_as, extra=job.extra,
                                       train_dialogues=train, relevance_pairs=job.relevance_pairs,
                                       safety_first=job.safety_first, safety_pairs=job.safety_pairs,
                                       seed=cfg.splits.seed)
        write_jsonl(out, ranked)
        wrong = sum(r.all_wrong for r in ranked)
        print(f"rank: {cfg.rankings} rankings of {len(ranked)} prompts ({wrong} with every answer unsafe) → {out}; "
              f"sources {dict(counts)}\nrank: the samples' order comes from heuristics (rubric rules), NOT from "
              "doctors", flush=True)
        return {"rankings": len(ranked), "all_wrong": wrong, "simulated": True, "sources": dict(counts)}
    if not Path(cfg.rankings).exists():  # the human step: the chain stops here until doctors have ranked
        raise ZhongjingError(
            f"rankings: {cfg.rankings} not found. The stages before 'rank' are finished: import "
            f"{w.output('generate')} into `{command()} annotate`, have doctors rank it, export the rankings to "
            f"{cfg.rankings} and run the pipeline again")
    rows = list(read_rankings(cfg.rankings))
    ranked = [r for r in rows if r.ranking or r.all_wrong]
    if not ranked:
        raise ZhongjingError(f"{cfg.rankings}: no ranked items (export finished rankings with `{command()} annotate export`)")
    write_jsonl(out, ranked)
    print(f"rank: {len(ranked)} ranked items from {cfg.rankings} ({len(rows) - len(ranked)} unranked left out)")
    return {"rankings": len(ranked), "unranked": len(rows) - len(ranked), "simulated": False}
