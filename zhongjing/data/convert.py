"""`zhongjing data convert IN... -o OUT.jsonl`: any supported format → Dialogue / Document / Ranking /
ExamItem JSONL, written atomically (a failed run leaves no output and no temp file).

Bad records stop the run with one line (file, line/record, reason). With `--skip-bad` they go to a
reject file instead — file, where and why, plus a short truncated preview, never the whole record
(patient text stays out of logs) — and the good records are converted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from zhongjing.data.readers.aux import no_units
from zhongjing.data.readers import FORMATS, ReadReport, detect_format, iter_units, kind_of, list_files
from zhongjing.errors import DataError, ZhongjingError
from zhongjing.io import atomic_open, write_jsonl

KINDS = ("dialogue", "document", "ranking", "exam")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zhongjing data convert", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", metavar="IN", help="files or directories (every data file inside, sorted)")
    p.add_argument("-o", "--output", help="output JSONL")
    p.add_argument("--format", help="input format (default: detected per file; see --list-formats)")
    p.add_argument("--kind", choices=KINDS, help="unit to write (default: what the inputs hold; 'document' accepts any"
                   " input: dialogues are flattened, KG facts rendered as sentences)")
    p.add_argument("--skip-bad", action="store_true", help="put bad records in a reject file instead of stopping")
    p.add_argument("--rejects", help="reject file for --skip-bad (default: OUT with .rejects.jsonl)")
    p.add_argument("--encoding", help="input text encoding (default: UTF-8, else GB18030)")
    p.add_argument("--list-formats", action="store_true", help="list the supported formats and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return p


def list_formats() -> str:
    width = max(map(len, FORMATS))
    return "\n".join(f"{name:<{width}}  {spec.kind:<8}  {spec.help}" for name, spec in sorted(FORMATS.items()))


def native_kind(inputs: list[str], format: str | None, encoding: str | None) -> str:
    """The one kind of unit the inputs hold; several kinds need an explicit --kind."""
    by_kind: dict[str, list[str]] = {}
    side: list[tuple[Path, str]] = []
    for f in list_files(inputs):
        fmt = format or detect_format(f, encoding=encoding)
        if FORMATS[fmt].kind == "aux":
            side.append((f, fmt))
        else:
            by_kind.setdefault(kind_of(fmt), []).append(f.name)
    if not by_kind:
        if side:
            f, fmt = side[0]
            raise no_units(fmt, str(f), forced=bool(format))
        raise ZhongjingError(f"no convertible data files in {' '.join(inputs)}")
    if len(by_kind) > 1:
        seen = "; ".join(f"{k}: {', '.join(v[:3])}{' …' if len(v) > 3 else ''}" for k, v in by_kind.items())
        raise ZhongjingError(f"inputs hold several kinds of data ({seen}); convert the files of one kind "
                             "at a time, or flatten them all to text with --kind document")
    return next(iter(by_kind))


def reject_row(e: DataError) -> dict:
    return {"file": e.path, "where": e.where, "reason": e.reason, "preview": getattr(e, "preview", "")}


def default_rejects(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".jsonl") + ".rejects.jsonl")


@contextlib.contextmanager
def _sigterm_as_exit():
    """SIGTERM (`timeout`, a scheduler, systemd) ends the write like Ctrl-C does, so the atomic write can
    remove its temp file; Python's default is to die on the spot and leave it behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_formats:
        print(list_formats())
        return 0
    if not args.inputs or not args.output:
        parser.error("need input files and -o OUT.jsonl")
    if args.rejects and not args.skip_bad:
        raise ZhongjingError("--rejects needs --skip-bad")
    if args.format and args.format not in FORMATS:
        raise ZhongjingError(f"unknown format {args.format!r} (one of: {', '.join(sorted(FORMATS))})")
    out = Path(args.output)
    rejects_path = Path(args.rejects) if args.rejects else default_rejects(out)
    for f in list_files(args.inputs):
        if f.resolve() in (out.resolve(), rejects_path.resolve()):
            raise ZhongjingError(f"{out}: output would overwrite the input {f}")
    kind = args.kind or native_kind(args.inputs, args.format, args.encoding)

    report, rejects = ReadReport(), []
    units = iter_units(args.inputs, kind, format=args.format, skip_bad=args.skip_bad, rejects=rejects,
                       encoding=args.encoding, report=report)
    n = 0
    with _sigterm_as_exit(), atomic_open(out) as f:  # any error inside leaves neither OUT nor its temp file
        for unit in units:
            f.write(json.dumps(unit.to_dict(), ensure_ascii=False) + "\n")
            n += 1
        if n == 0:
            if args.skip_bad and rejects:  # every record was bad: the rejects file is what says why
                write_jsonl(rejects_path, (reject_row(e) for e in rejects))
            raise ZhongjingError(f"nothing to write: no {kind} records were read"
                                 + (f" ({len(rejects)} rejected, see {rejects_path})" if rejects else ""))
    if args.skip_bad:
        write_jsonl(rejects_path, (reject_row(e) for e in rejects))

    if not args.quiet:
        for path, fmt, count in report.files[:20]:
            print(f"  {path}: {fmt}, {count} {kind}(s)")
        if len(report.files) > 20:
            print(f"  … and {len(report.files) - 20} more files")
        for path, why in report.skipped:
            if path.endswith((".md", ".MD")) or why == "not a data file extension":
                continue
            print(f"  skipped {path}: {why}")
        print(f"wrote {n} {kind}(s) from {len(report.files)} file(s) to {out}")
        if report.renamed:
            print(f"made {report.renamed} repeated source id(s) unique (suffix ~2, ~3, …)")
        if args.skip_bad:
            print(f"rejected {len(rejects)} bad record(s) → {rejects_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
