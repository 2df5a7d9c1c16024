"""What each build step changed: counts only (never patient text), as JSON plus a short Markdown.

Every step fills one `StepReport`; the chain collects them into one table so a user sees
where records went (read → de-identified → rewritten → flagged → screened → split).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhongjing.io import atomic_open, write_json


@dataclass
class StepReport:
    step: str
    n_in: int = 0
    n_out: int = 0
    counts: Counter = field(default_factory=Counter)  # what was changed/dropped, by kind
    details: dict[str, Any] = field(default_factory=dict)  # small structured extras (ids, stats)
    seconds: float = 0.0
    cached: bool = False
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    def add(self, key: str, n: int = 1) -> None:
        if n:
            self.counts[key] += n

    def finish(self, n_out: int) -> "StepReport":
        self.n_out = n_out
        self.seconds = round(time.perf_counter() - self._t0, 3)
        return self

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "n_in": self.n_in,
            "n_out": self.n_out,
            "counts": dict(sorted(self.counts.items())),
            "details": self.details,
            "seconds": self.seconds,
            "cached": self.cached,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "StepReport":
        r = cls(d["step"], d.get("n_in", 0), d.get("n_out", 0), Counter(d.get("counts", {})), d.get("details", {}))
        r.seconds, r.cached = d.get("seconds", 0.0), d.get("cached", False)
        return r

    def markdown(self) -> str:
        lines = [f"## {self.step}", "", f"- dialogues in: {self.n_in}", f"- dialogues out: {self.n_out}"]
        lines += [f"- {k}: {v}" for k, v in sorted(self.counts.items())]
        for k, v in self.details.items():
            if isinstance(v, (int, float, str)):
                lines.append(f"- {k}: {v}")
            else:
                text = json.dumps(v, ensure_ascii=False)
                lines.append(f"- {k}: {text if len(text) <= 300 else text[:297] + '...'}")
        lines.append(f"- time: {self.seconds:.2f} s{' (cached)' if self.cached else ''}")
        return "\n".join(lines) + "\n"


def write_step_report(report: StepReport, json_path: str | Path) -> None:
    """`x.report.json` and `x.report.md` side by side, both atomic."""
    json_path = Path(json_path)
    write_json(json_path, report.to_dict())
    with atomic_open(json_path.with_suffix(".md")) as f:
        f.write(report.markdown())


def report_path_for(output: str | Path) -> Path:
    """Report file next to a step's output: `out.jsonl` → `out.report.json`."""
    output = Path(output)
    base = output.name.split(".")[0] if output.suffix else output.name
    return output.parent / f"{base}.report.json"


def chain_markdown(reports: list[StepReport], title: str = "Build report") -> str:
    lines = [f"# {title}", "", "| step | in | out | changes | time (s) |", "|---|---:|---:|---|---:|"]
    for r in reports:
        changes = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items())) or "-"
        cached = " (cached)" if r.cached else ""
        lines.append(f"| {r.step} | {r.n_in} | {r.n_out} | {changes} | {r.seconds:.2f}{cached} |")
    lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(r.markdown() for r in reports)


def write_chain_report(reports: list[StepReport], out_dir: str | Path, extra: dict | None = None) -> Path:
    out_dir = Path(out_dir)
    payload = {"steps": [r.to_dict() for r in reports], **(extra or {})}
    write_json(out_dir / "report.json", payload)
    with atomic_open(out_dir / "report.md") as f:
        f.write(chain_markdown(reports))
    return out_dir / "report.json"
