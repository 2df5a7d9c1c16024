"""Mix and split: the paper's 7:1 multi-/single-turn mix and a leak-free train/validation/test split.

Every choice is a function of content hashes, not of input order or a random state, so the same
dialogue lands in the same split on every rebuild. Near-duplicate clusters (`meta.dup_cluster`,
set by the screen step) are split as one unit, so no variant of a test dialogue is trained on.
Exports: Dialogue JSONL and CMtMedQA JSON (`{id, cate1, cate2, instruction, input, output, history}`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from zhongjing.dataset.report import StepReport
from zhongjing.data.schema import Dialogue
from zhongjing.errors import ConfigError
from zhongjing.io import atomic_open, write_jsonl

SPLITS = ("train", "validation", "test")


@dataclass
class SplitConfig:
    multi_to_single: float = 7.0  # the paper's 7:1; 0 = keep everything as it is
    keep_safety: bool = True  # safety / red-team prompts (meta.safety) stay whole, outside the mix (see mix)
    validation: float = 0.1  # the paper holds out 10% for validation
    test: float = 0.05
    salt: str = "zhongjing"  # change to draw a different (still deterministic) split
    export_cmtmedqa: bool = True

    def __post_init__(self):
        if not (0 <= self.validation < 1 and 0 <= self.test < 1 and self.validation + self.test < 1):
            raise ConfigError("split.validation and split.test must be fractions with validation + test < 1")
        if not 0 <= self.multi_to_single < float("inf"):  # (NaN was a ValueError traceback at the mix)
            raise ConfigError("split.multi_to_single must be ≥ 0")


def content_hash(d: Dialogue, salt: str = "") -> str:
    text = "\x1e".join(f"{m.role}\x1f{m.content}" for m in d.messages)
    return hashlib.sha256((salt + "\x1d" + text).encode()).hexdigest()


def mix(dialogues: list[Dialogue], ratio: float, salt: str, report: StepReport,
        keep_safety: bool = True) -> list[Dialogue]:
    """Down-sample whichever side exceeds multi : single = ratio : 1 (hash order picks who stays).

    Safety / red-team prompts (`meta.safety`, e.g. CMtMedQA's) are single-turn but a category of their own, as in the
    paper: with `keep_safety` they are all kept and not counted in the ratio. Drawn with the other ~21k single-turn
    records of the real recipe, 84 of its 86 safety prompts were dropped, leaving the test split no safety set and
    the reward model's rankings almost no prompt where safety is at stake."""
    safety = [d for d in dialogues if keep_safety and d.meta.get("safety")]
    rest = [d for d in dialogues if not (keep_safety and d.meta.get("safety"))]
    multi = [d for d in rest if d.is_multi_turn()]
    single = [d for d in rest if not d.is_multi_turn()]
    report.details["before_mix"] = {"multi_turn": len(multi), "single_turn": len(single)}
    if safety:
        report.details["before_mix"]["safety_kept_outside_the_mix"] = len(safety)
    if ratio <= 0 or not multi or not single:
        return dialogues
    want_single = int(len(multi) / ratio)
    want_multi = len(multi)
    if want_single > len(single):  # too few single-turn dialogues: trim the multi-turn side instead
        want_single, want_multi = len(single), int(len(single) * ratio)
    keep = {id(d) for d in sorted(multi, key=lambda d: content_hash(d, salt))[:want_multi]}
    keep |= {id(d) for d in sorted(single, key=lambda d: content_hash(d, salt))[:want_single]}
    keep |= {id(d) for d in safety}
    report.add("dropped:mix_multi_turn", len(multi) - want_multi)
    report.add("dropped:mix_single_turn", len(single) - want_single)
    return [d for d in dialogues if id(d) in keep]


def assign(d: Dialogue, cfg: SplitConfig) -> str:
    """Split of a dialogue: a hash of its near-duplicate cluster (or its own content) mapped into [0, 1)."""
    group = d.meta.get("dup_cluster") or content_hash(d)
    u = int(hashlib.sha256(f"{cfg.salt}\x1d{group}".encode()).hexdigest()[:15], 16) / 16**15
    return "test" if u < cfg.test else "validation" if u < cfg.test + cfg.validation else "train"


def to_cmtmedqa(d: Dialogue) -> dict:
    """CMtMedQA record: earlier exchanges in `history`, the last one as instruction/output."""
    body = [m for m in d.messages if m.role != "system"]
    pairs = [(body[i].content, body[i + 1].content) for i in range(0, len(body) - 1, 2)]
    (q, a), history = pairs[-1], pairs[:-1]
    return {"id": d.id, "cate1": d.meta.get("department", ""),
            "cate2": d.meta.get("subdepartment") or d.meta.get("source_department") or d.meta.get("department", ""),
            "instruction": q, "input": "", "output": a, "history": [list(p) for p in history]}


def run_split(dialogues: list[Dialogue], cfg: SplitConfig, out_dir: str | Path, report: StepReport) -> dict[str, int]:
    out_dir = Path(out_dir)
    report.n_in = len(dialogues)
    mixed = mix(dialogues, cfg.multi_to_single, cfg.salt, report, cfg.keep_safety)
    parts: dict[str, list[Dialogue]] = {s: [] for s in SPLITS}
    for d in mixed:
        parts[assign(d, cfg)].append(d)
    counts = {}
    for name, ds in parts.items():
        counts[name] = write_jsonl(out_dir / f"{name}.jsonl", ds)
        if cfg.export_cmtmedqa:
            with atomic_open(out_dir / f"{name}.cmtmedqa.json") as f:
                json.dump([to_cmtmedqa(d) for d in ds], f, ensure_ascii=False, indent=1)
        multi = sum(d.is_multi_turn() for d in ds)
        report.details[name] = {"dialogues": len(ds), "multi_turn": multi, "single_turn": len(ds) - multi,
                                "safety": sum(bool(d.meta.get("safety")) for d in ds),
                                "departments": dict(Counter(d.meta.get("department", "") for d in ds).most_common())}
    report.n_out = len(mixed)
    return counts
