"""`zhongjing build`: raw dialogues → de-identified, rewritten, checked, screened, labelled, split data.

    zhongjing build --config configs/demo/build.yaml [key=value ...]   # the whole chain
    zhongjing build deid IN.jsonl -o OUT.jsonl [--config build.yaml]    # one step (import, normalize,
                                                                        #  deid, rewrite, kg_check, screen,
                                                                        #  departments, split)
Resume: each step's output is cached in `work_dir` under a key = hash(its input's key + the step's
config + the step's code), written atomically. A killed chain rerun skips every finished step; a
step killed midway (rewrite) restarts, and its endpoint replies come from the on-disk cache.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zhongjing import __version__
from zhongjing.dataset.departments import DepartmentsConfig
from zhongjing.dataset.deid import DeidConfig
from zhongjing.data.kg import KGConfig
from zhongjing.dataset.normalize import NormalizeConfig, normalize_dialogue
from zhongjing.dataset.report import StepReport, report_path_for, write_chain_report, write_step_report
from zhongjing.dataset.rewrite import RewriteConfig
from zhongjing.dataset.screen import ScreenConfig
from zhongjing.dataset.split import SplitConfig
from zhongjing.dataset.steps import DEFAULT_ORDER, STEPS, StepContext, load_dialogues, run_step
from zhongjing.config import describe, load_config, to_dict
from zhongjing.errors import ConfigError, DataError, ZhongjingError
from zhongjing.io import check_output, make_dir, sha256_file, sha256_json, write_json, write_jsonl


@dataclass
class InputConfig:
    path: str
    format: str = ""  # empty: detected from the content
    source: str = ""  # overrides meta.source
    limit: int = 0  # read only the first N dialogues (0 = all)


@dataclass
class BuildConfig:
    inputs: list[InputConfig] = field(default_factory=list)
    work_dir: str = "runs/build/work"
    output: str = "runs/build/out"
    steps: list[str] = field(default_factory=lambda: list(DEFAULT_ORDER))
    skip_bad: bool = True  # bad input records are counted and listed (file, line, reason), not fatal
    progress: bool = True
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    deid: DeidConfig = field(default_factory=DeidConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    kg: KGConfig = field(default_factory=KGConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    departments: DepartmentsConfig = field(default_factory=DepartmentsConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self):
        unknown = [s for s in self.steps if s != "import" and s not in STEPS]
        if unknown:
            raise ConfigError(f"steps: unknown step {unknown[0]!r} (valid: import, {', '.join(STEPS)})")
        if self.steps[:2] != ["import", "deid"]:
            raise ConfigError("steps must start with import, deid: nothing may see patient text before de-identification")
        if "split" in self.steps and self.steps[-1] != "split":
            raise ConfigError("steps: split must be the last step")
        if self.normalize.strip_boilerplate > 0 and "boilerplate" not in self.steps:
            raise ConfigError("normalize.strip_boilerplate is set but steps has no 'boilerplate' (put it after deid)")


def code_version(modules) -> str:
    return sha256_json([__version__] + [inspect.getsource(m) for m in modules])[:16]


def _step_config(cfg: BuildConfig, sections: tuple[str, ...]) -> dict:
    out = {s: to_dict(getattr(cfg, s)) for s in sections}
    out.get("rewrite", {}).pop("api_key", None)  # a key never goes into a hash that names files
    return out


# ------------------------------------------------------------------------------------------ import

def import_dialogues(cfg: BuildConfig, report: StepReport, rejects_path: Path | None = None) -> list:
    from zhongjing.data.readers import read_dialogues

    out, rejects = [], []
    for inp in cfg.inputs:
        errors: list = []
        n = 0
        try:
            for d in read_dialogues(inp.path, inp.format or None, skip_bad=cfg.skip_bad, rejects=errors):
                if inp.limit and n >= inp.limit:
                    break
                n += 1
                report.n_in += 1
                if inp.source:
                    d.meta["source"] = inp.source
                d = normalize_dialogue(d, cfg.normalize, report)
                if d is not None:
                    out.append(d)
        except DataError as e:  # skip_bad=false stops here: the one-line error goes to logs, so no values in it
            raise DataError(safe_reason(e.reason), e.path, e.where) from None
        report.details.setdefault("per_input", {})[inp.path] = {"read": n, "rejected": len(errors)}
        report.add("rejected_records", len(errors))
        # file, place and reason only: a reject's content may hold identifiers not yet removed
        rejects += [{"file": e.path, "where": e.where, "reason": safe_reason(e.reason)} for e in errors]
    if rejects_path is not None:
        write_jsonl(rejects_path, rejects)
        report.details["rejects_file"] = str(rejects_path)
    if not out:  # stop here, not with an empty train.jsonl that only fails at training time
        where = f"; see {rejects_path}" if rejects and rejects_path is not None else ""
        raise ZhongjingError(f"import: no usable dialogues in the inputs ({len(rejects)} record(s) rejected{where})")
    return out


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_SHOWN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,23}|[^\w\s]{1,3}")  # field/role names ('content', 'doctor'), ','


def safe_reason(reason: str) -> str:
    """A reader's reason with any quoted record value that is not a plain field/role name hidden: a
    malformed record can carry a name or a phone number in its role or id field, and this runs before deid."""
    def hide(m: re.Match) -> str:
        return m.group(0) if _SHOWN.fullmatch(m.group(0)[1:-1]) else "'…'"

    return _QUOTED.sub(hide, str(reason))[:160]


def _import_key(cfg: BuildConfig) -> str:
    from zhongjing.dataset import normalize
    from zhongjing.data.readers import list_files

    files = [(str(f), sha256_file(f)) for inp in cfg.inputs for f in list_files(inp.path)]
    return sha256_json({"inputs": [to_dict(i) for i in cfg.inputs], "files": files, "skip_bad": cfg.skip_bad,
                        "normalize": to_dict(cfg.normalize), "code": code_version([normalize])})


# ------------------------------------------------------------------------------------------ chain

def run_chain(cfg: BuildConfig) -> list[StepReport]:
    if not cfg.inputs:
        raise ConfigError("inputs: no input files configured")
    _check_paths(cfg)
    work, out_dir = Path(cfg.work_dir), Path(cfg.output)
    make_dir(work)
    _sweep_stale_temps(work)
    reports: list[StepReport] = []
    key = _import_key(cfg)
    path = import_copy = work / f"01-import-{key[:16]}.jsonl"
    done = work / f"01-import-{key[:16]}.done.json"

    def do_import(rep: StepReport) -> None:
        rep.finish(write_jsonl(path, import_dialogues(cfg, rep, work / f"01-import-{key[:16]}.rejects.jsonl")))
        write_json(done, {"dialogues": rep.n_out})

    # The imported copy still holds identifiable text, so it is deleted once deid has run; the
    # `done` marker keeps the step cached, and it is re-made only if deid must run again.
    reports.append(_cached_or_run("import", done, do_import, cfg))
    for i, name in enumerate(cfg.steps[1:], 2):
        step = STEPS[name]
        if not step.enabled(cfg):
            reports.append(StepReport(name, details={"skipped": "disabled in config"}))
            reports[-1].n_in = reports[-1].n_out = reports[-2].n_out
            continue
        key = sha256_json({"input": key, "step": name, "config": _step_config(cfg, step.sections),
                           "code": code_version(step.modules)})
        is_split = name == "split"
        out = out_dir if is_split else work / f"{i:02d}-{name}-{key[:16]}.jsonl"
        marker = work / f"{i:02d}-{name}-{key[:16]}.done.json" if is_split else out
        extra = {"plot": out_dir / "departments.png"} if name == "departments" else {}
        if name == "kg_check":
            extra["review"] = out_dir / "review.jsonl"
        ctx = StepContext(out, work, cfg.progress, extra)
        src = path

        def run(rep, src=src, name=name, ctx=ctx, out=out, is_split=is_split, marker=marker):
            if src == import_copy and not src.exists():
                do_import(StepReport("import"))
            ds = load_dialogues(src)
            result, r = run_step(name, ds, cfg, ctx)
            rep.__dict__.update({k: v for k, v in r.__dict__.items() if k not in ("step", "_t0")})
            if rewrite_dry_run(cfg, name):
                return
            if is_split:
                write_json(marker, r.to_dict())
            else:
                write_jsonl(out, result)

        reports.append(_cached_or_run(name, marker, run, cfg))
        if i == 2 and out.exists():  # deid is done: keep no copy of identifiable raw text in the work dir
            import_copy.unlink(missing_ok=True)
        if rewrite_dry_run(cfg, name):
            print("rewrite.dry_run: prompts printed above; nothing was sent and the chain stops here", file=sys.stderr)
            return reports
        path = out
    write_chain_report(reports, out_dir, {"config": _step_config(cfg, ("rewrite", "kg", "screen", "split")),
                                          "version": __version__})
    return reports


def _check_paths(cfg: BuildConfig) -> None:
    """Files the config names exist: a typo is reported now, not after hours of rewrite requests."""
    steps = set(cfg.steps)
    named = []
    if steps & {"rewrite", "kg_check"}:
        named += [("kg.path", cfg.kg.path)] if cfg.kg.path else []
        named += [("kg.extra_drug_lists", p) for p in cfg.kg.extra_drug_lists]
    if "departments" in steps and cfg.departments.map:
        named.append(("departments.map", cfg.departments.map))
    for key, path in named:
        if not Path(path).exists():
            raise ConfigError(f"{key}: {path} not found")
    check_output(cfg.output, folder=True)  # the outputs are written last, after every step


_STALE_TEMP = re.compile(r"\.\d\d-[a-z_]+-[0-9a-f]{16}\..+\.tmp(\.old)?")


def _sweep_stale_temps(work: Path) -> None:
    """Half-written step outputs that a SIGKILL/SIGTERM left behind (atomic writes could not clean up).
    The import step's one is a raw, not yet de-identified copy: it must not outlive the next run.
    (One build per work_dir at a time, as for the caches.)"""
    import shutil

    for p in work.iterdir():
        if _STALE_TEMP.fullmatch(p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif _STALE_TEMP.fullmatch(p.name):
            p.unlink(missing_ok=True)


def rewrite_dry_run(cfg: BuildConfig, name: str) -> bool:
    return name == "rewrite" and cfg.rewrite.dry_run


def _cached_or_run(name: str, marker: Path, run, cfg: BuildConfig) -> StepReport:
    rep_path = report_path_for(marker) if marker.suffix == ".jsonl" else marker.with_suffix("").with_suffix(".report.json")
    cached = read_json_if_exists(rep_path) if marker.exists() else None
    if cached is not None:
        rep = StepReport.from_dict(cached)
        rep.cached = True
        _say(cfg, f"{name}: cached ({rep.n_out} dialogues)")
        return rep
    _say(cfg, f"{name}: running")
    rep = StepReport(name)
    run(rep)
    if not rewrite_dry_run(cfg, name):
        write_step_report(rep, rep_path)
    _say(cfg, f"{name}: {rep.n_in} → {rep.n_out} dialogues in {rep.seconds:.1f} s")
    return rep


def read_json_if_exists(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _say(cfg: BuildConfig, msg: str) -> None:
    if cfg.progress:
        print(f"build {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ CLI

SUBCOMMANDS = ["import", *STEPS]


def _step_main(name: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"zhongjing build {name}",
                                description=f"run the '{name}' build step alone; the report is written next to the output")
    p.add_argument("inputs", nargs="+" if name == "import" else 1, help="input file(s)" if name == "import" else "Dialogue JSONL")
    p.add_argument("-o", "--output", required=True, help="output folder" if name == "split" else "output JSONL")
    p.add_argument("--config", help="build YAML (its section for this step is used)")
    p.add_argument("--format", default="", help="input format for import (default: detected)")
    p.add_argument("--dry-run", action="store_true", help="rewrite: print the prompts, send nothing")
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value")
    # key=value overrides look like positionals: split them off the inputs
    args, extra = p.parse_known_args(argv)
    inputs = [a for a in args.inputs if "=" not in a]
    overrides = [a for a in args.inputs if "=" in a] + args.overrides + extra
    cfg = load_config(BuildConfig, args.config, overrides)
    if args.dry_run:
        cfg.rewrite.dry_run = True
    out = Path(args.output)
    rep_path = out / "report.json" if name == "split" else report_path_for(out)
    if name == "import":
        cfg.inputs = [InputConfig(path=i, format=args.format) for i in inputs]
        rep = StepReport("import")
        rep.finish(write_jsonl(out, import_dialogues(cfg, rep, out.with_name(out.name.split(".")[0] + ".rejects.jsonl"))))
    else:
        ds = load_dialogues(inputs[0])
        result, rep = run_step(name, ds, cfg, StepContext(out, out.parent, cfg.progress))
        if cfg.rewrite.dry_run and name == "rewrite":
            return 0
        if result is not None:
            write_jsonl(out, result)
    write_step_report(rep, rep_path)
    print(rep.markdown(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _step_main(argv[0], argv[1:])
    p = argparse.ArgumentParser(
        prog="zhongjing build", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build a clean CMtMedQA-style training set from raw doctor–patient dialogues.\n"
                    f"Single steps: zhongjing build {{{','.join(SUBCOMMANDS)}}} IN -o OUT",
        epilog="config keys (override with key=value):\n" + "\n".join(describe(BuildConfig)))
    p.add_argument("--config", help="build YAML (see configs/build.example.yaml)")
    p.add_argument("--dry-run", action="store_true", help="stop at the rewrite step after printing its prompts")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = load_config(BuildConfig, args.config, args.overrides)
    if args.dry_run:
        cfg.rewrite.dry_run = True
        cfg.rewrite.enabled = True
    reports = run_chain(cfg)
    if not cfg.rewrite.dry_run:
        print(f"build finished: {reports[-1].n_out} dialogues → {cfg.output} (report: {Path(cfg.output) / 'report.md'})")
    return 0
