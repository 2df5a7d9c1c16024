"""The build steps as one table: name → function(dialogues, config, context) → dialogues.

Both the chain (`zhongjing build --config`) and the single-step subcommands
(`zhongjing build deid IN -o OUT`) run steps through this table, so a step behaves the same either way.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from zhongjing.data import kg, matcher
from zhongjing.dataset import departments, deid, kg_check, normalize, rewrite, screen, split
from zhongjing.dataset.report import StepReport
from zhongjing.data.schema import Dialogue
from zhongjing.errors import DataError
from zhongjing.io import iter_jsonl, write_jsonl


@dataclass
class StepContext:
    """Where a step may write besides its main output, and how to show progress."""

    output: Path  # the step's main output (JSONL, or a folder for split)
    work_dir: Path
    progress: bool = True
    extra: dict[str, Path] = field(default_factory=dict)  # review file, plot, rewrite cache
    log_every: float = 30.0  # seconds between progress lines when stderr is not a terminal

    def bar(self, it, **kw):
        if not self.progress:
            return it
        if not sys.stderr.isatty():  # a log file (nohup, a scheduler): a plain line now and then, no \r bars
            return _progress_lines(it, kw.get("total"), kw.get("desc", ""), self.log_every)
        from tqdm import tqdm

        return tqdm(it, leave=False, file=sys.stderr, **kw)


def _progress_lines(it, total: int | None, desc: str, every: float):
    """Yield from `it`, printing 'build <desc>: done/total (p%), rate, time left' every `every` seconds —
    counts only, never text, so a log of a long rewrite shows it is alive without holding patient text."""
    total = total if total is not None else (len(it) if hasattr(it, "__len__") else None)
    t0 = last = time.monotonic()
    for n, x in enumerate(it, 1):
        yield x
        now = time.monotonic()
        if now - last >= every:
            last = now
            rate = n / max(now - t0, 1e-9)
            of = f"/{total} ({100 * n / total:.0f}%)" if total else ""
            left = f", ~{(total - n) / rate / 60:.1f} min left" if total and rate > 0 else ""
            print(f"build {desc}: {n}{of}, {rate:.1f}/s{left}", file=sys.stderr, flush=True)


def load_dialogues(path: str | Path) -> list[Dialogue]:
    """A step's input: Dialogue JSONL, errors naming file and line."""
    out = []
    try:
        for line, obj in iter_jsonl(path):
            try:
                out.append(Dialogue.from_dict(obj))
            except DataError as e:
                raise DataError(e.reason, str(path), f"line {line}") from None
    except FileNotFoundError:
        raise DataError("no such file", str(path)) from None
    return out


def _deid(ds, cfg, ctx, rep):
    engine = deid.Deidentifier(cfg.deid)
    rep.n_in = len(ds)
    return [deid.deidentify_dialogue(d, engine, rep) for d in ctx.bar(ds, desc="deid")]


def _normalize(ds, cfg, ctx, rep):
    rep.n_in = len(ds)
    out = [normalize.normalize_dialogue(d, cfg.normalize, rep) for d in ctx.bar(ds, desc="normalize")]
    return [d for d in out if d is not None]


def _boilerplate(ds, cfg, ctx, rep):  # after deid: the report lists the cut sentences, so no identifier may be in them
    rep.n_in = len(ds)
    return normalize.strip_boilerplate(ds, cfg.normalize.strip_boilerplate, rep)


def _drug_matcher(cfg):
    return kg.load_index(cfg.kg).matcher if cfg.kg.path else None


def _rewrite(ds, cfg, ctx, rep):
    cache = cfg.rewrite.cache or str(ctx.work_dir / "rewrite_cache.sqlite")
    return rewrite.run_rewrite(ds, cfg.rewrite, rep, cache, _drug_matcher(cfg), ctx.bar)


def _kg(ds, cfg, ctx, rep):
    review: list[Dialogue] = []
    kept = kg_check.run_kg_check(ds, cfg.kg, rep, review, lambda it: ctx.bar(it, total=len(ds), desc="kg check"))
    path = ctx.extra.get("review") or ctx.output.with_name(ctx.output.name.split(".")[0] + ".review.jsonl")
    write_jsonl(path, review)
    rep.details["review_file"] = str(path)
    rep.details["review"] = len(review)
    return kept


def _screen(ds, cfg, ctx, rep):
    return screen.run_screen(ds, cfg.screen, rep, ctx.bar)


def _departments(ds, cfg, ctx, rep):
    plot = ctx.extra.get("plot") or ctx.output.with_name(ctx.output.name.split(".")[0] + ".png")
    return departments.run_departments(ds, cfg.departments, rep, plot)


def _split(ds, cfg, ctx, rep):
    split.run_split(ds, cfg.split, ctx.output, rep)
    return None


@dataclass
class Step:
    run: Callable  # (dialogues, BuildConfig, StepContext, StepReport) -> dialogues | None
    sections: tuple[str, ...]  # config sections whose values change the output (cache key)
    modules: tuple = ()  # modules whose source changes the output (cache key: code version)
    enabled: Callable = lambda cfg: True


STEPS: dict[str, Step] = {
    "normalize": Step(_normalize, ("normalize",), (normalize,)),
    "deid": Step(_deid, ("deid",), (deid,)),
    "boilerplate": Step(_boilerplate, ("normalize",), (normalize,), lambda cfg: cfg.normalize.strip_boilerplate > 0),
    "rewrite": Step(_rewrite, ("rewrite", "kg"), (rewrite, kg, matcher), lambda cfg: cfg.rewrite.enabled),
    "kg_check": Step(_kg, ("kg",), (kg_check, kg, matcher), lambda cfg: bool(cfg.kg.path)),
    "screen": Step(_screen, ("screen",), (screen,)),
    "departments": Step(_departments, ("departments",), (departments,)),
    "split": Step(_split, ("split",), (split,)),
}
# the chain's default order (import is always first: it reads the raw files and runs `normalize`)
DEFAULT_ORDER = ["import", "deid", "boilerplate", "rewrite", "kg_check", "screen", "departments", "split"]


def run_step(name: str, ds: list[Dialogue], cfg, ctx: StepContext) -> tuple[list[Dialogue] | None, StepReport]:
    rep = StepReport(name)
    out = STEPS[name].run(ds, cfg, ctx, rep)
    rep.finish(len(out) if out is not None else rep.n_out)
    return out, rep
