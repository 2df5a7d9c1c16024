"""Every real data format → Dialogue / Document / Ranking / ExamItem (DESIGN.md §2).

    from zhongjing.data.readers import read_dialogues
    for d in read_dialogues("CMtMedQA_test.json"):   # format detected from the content
        ...

`path` is a file, a directory (every supported file inside, sorted; side files such as entity
dictionaries are skipped with a note in `report`) or a list of those. Bad records raise a
one-line DataError (file, line/record, reason); with `skip_bad=True` they go to `rejects` instead.

Ids: the source's own record id, else `<file stem>:<record index>`. A repeated id is an error in
our own JSONL formats (stages key on it) and is made unique (`id~2`) and counted in
`report.renamed` for third-party sources, which do repeat themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from zhongjing.data.readers import aux, benchmarks, chat, consult, exam, instruct, kg, text  # noqa: F401  (register formats)
from zhongjing.data.readers.aux import AUX_WHAT, count_entries
from zhongjing.data.readers.base import FORMATS, Source
from zhongjing.data.readers.detect import detect_format
from zhongjing.data.readers.exam import ExamItem
from zhongjing.data.readers.flatten import to_document
from zhongjing.data.schema import Dialogue, Document, Ranking
from zhongjing.errors import DataError, ZhongjingError

__all__ = ["FORMATS", "ExamItem", "ReadReport", "detect_format", "read_records", "read_dialogues", "read_documents",
           "read_rankings", "read_exam", "load_kg", "load_entity_list", "list_files", "kind_of", "iter_units", "count_aux"]

# extensions a directory read looks at; anything else (README.md, images, archives) is not data
DATA_SUFFIXES = {".json", ".jsonl", ".txt", ".csv", ".tex"}
KIND_OF_UNIT = {"dialogue": "dialogue", "document": "document", "kg": "document", "ranking": "ranking", "exam": "exam"}


@dataclass
class ReadReport:
    """What a read did, for the CLI to print: per-file format and unit counts, skipped files, renames."""

    files: list[tuple[str, str, int]] = field(default_factory=list)  # (path, format, units)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    renamed: int = 0
    rejected: int = 0


def _check_format(format: str | None) -> None:
    if format is not None and format not in FORMATS:
        raise ZhongjingError(f"unknown format {format!r} (one of: {', '.join(sorted(FORMATS))})")


def list_files(path: Any, report: ReadReport | None = None) -> list[Path]:
    """The data files behind a path (or list of paths), in a stable order."""
    if isinstance(path, (list, tuple)):
        return [f for p in path for f in list_files(p, report)]
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError("not a regular file or folder (a device, pipe or socket)" if path.exists()
                        else "no such file or directory", str(path))
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts))
    data = [p for p in files if p.suffix.lower() in DATA_SUFFIXES]
    if report is not None:
        report.skipped += [(str(p), "not a data file extension") for p in files if p not in data]
    included = text.included_tex(data)  # chapters come through their book's main .tex, once
    return [p for p in data if p.resolve() not in included]


def kind_of(format: str) -> str:
    """The unit a format naturally yields: dialogue, document, ranking, exam (kg → document), or aux."""
    return KIND_OF_UNIT.get(FORMATS[format].kind, FORMATS[format].kind)


def _sources(path: Any, format: str | None, encoding: str | None, report: ReadReport) -> Iterator[Source]:
    _check_format(format)
    single = not isinstance(path, (list, tuple)) and Path(path).is_file()
    for f in list_files(path, report):
        fmt = format or detect_format(f, encoding=encoding)
        if FORMATS[fmt].kind == "aux" and not (single or format):
            report.skipped.append((str(f), AUX_WHAT[fmt]))
            continue
        yield Source(f, fmt, encoding)


def read_records(path: Any, format: str | None = None, *, skip_bad: bool = False, rejects: list | None = None,
                 encoding: str | None = None, report: ReadReport | None = None,
                 kind: str | None = None) -> Iterator[Dialogue | Document | Ranking | ExamItem]:
    """Units in each file's native kind (KG files give rendered Documents); `kind` refuses files of another kind."""
    report = report if report is not None else ReadReport()
    seen: dict[str, str] = {}  # ids across all files of this read
    for src in _sources(path, format, encoding, report):
        src.seen = seen
        spec, n = FORMATS[src.format], 0
        if kind is not None and spec.kind != "aux" and kind_of(src.format) != kind:
            raise DataError(f"holds {kind_of(src.format)} data (format {src.format}), not {kind} data", src.name)
        for item in spec.read(src):
            if isinstance(item, DataError):
                if not skip_bad:
                    raise item
                report.rejected += 1
                if rejects is not None:
                    rejects.append(item)
                continue
            uid = getattr(item, "id", None)
            if uid is not None and not spec.own:  # own formats checked their ids while reading
                if uid in seen:
                    k = 2
                    while f"{uid}~{k}" in seen:
                        k += 1
                    item.id, report.renamed = f"{uid}~{k}", report.renamed + 1
                seen[item.id] = src.name
            n += 1
            yield item
        report.files.append((src.name, src.format, n))


def read_dialogues(path: Any, format: str | None = None, **kw) -> Iterator[Dialogue]:
    return read_records(path, format, kind="dialogue", **kw)


def read_rankings(path: Any, format: str | None = None, **kw) -> Iterator[Ranking]:
    """Ranking JSONL, and preference pairs (chosen/rejected) as K=2 rankings."""
    return read_records(path, format, kind="ranking", **kw)


def read_exam(path: Any, format: str | None = None, **kw) -> Iterator[ExamItem]:
    return read_records(path, format, kind="exam", **kw)


def read_documents(path: Any, format: str | None = None, **kw) -> Iterator[Document]:
    """Documents from any format: dialogues flattened ('患者：…\\n医生：…'), KG facts as sentences, LaTeX cleaned."""
    for unit in read_records(path, format, **kw):
        yield to_document(unit)


def load_kg(path: Any, *, skip_bad: bool = False, rejects: list | None = None, encoding: str | None = None) -> list[dict]:
    """Normalised disease records (`kg.KG_FIELDS`: name, department, symptoms, drugs, checks, …) for knowledge checks.
    A directory contributes its KG files only; a single file must be one."""
    single = not isinstance(path, (list, tuple)) and Path(path).is_file()
    out = []
    for f in list_files(path):
        fmt = detect_format(f, encoding=encoding)
        if FORMATS[fmt].kind != "kg":
            if single:
                raise DataError(f"not a knowledge-graph file (format {fmt})", str(f))
            continue
        for rec in kg.kg_records(Source(f, fmt, encoding)):
            if isinstance(rec, DataError):
                if not skip_bad:
                    raise rec
                if rejects is not None:
                    rejects.append(rec)
            else:
                out.append(rec)
    return out


def load_entity_list(path: Any, *, encoding: str | None = None) -> list[str]:
    """Names from entity dictionaries / synonym tables (one file or a directory of them)."""
    names: list[str] = []
    for f in list_files(path):
        fmt = detect_format(f, encoding=encoding)
        if fmt in ("entity_list", "entity_synonyms"):
            names += aux.load_entity_list(Source(f, fmt, encoding))
    return list(dict.fromkeys(names))


def count_aux(path: Path, fmt: str, encoding: str | None = None) -> int:
    """Entries of a side file (names, goals, diseases) — for `data stats`."""
    return count_entries(Source(Path(path), fmt, encoding))


def iter_units(paths: Iterable[Any], kind: str, **kw) -> Iterator[Any]:
    """Units of one kind from several inputs (ids kept unique across all of them)."""
    reader = {"dialogue": read_dialogues, "document": read_documents, "ranking": read_rankings, "exam": read_exam}[kind]
    return reader(list(paths), **kw)
