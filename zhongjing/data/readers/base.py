"""Shared machinery of the readers: decoding, JSON record iteration, turn → Dialogue, the format table.

A format reader is a generator over one file that yields units (Dialogue, Document, Ranking,
ExamItem) or, for a record it cannot use, a located `DataError` — yielded, not raised, so the
caller decides between stopping (default) and collecting rejects (`--skip-bad`). Problems with
the file as a whole (undecodable bytes, a broken JSON list, missing CSV columns) are raised.
"""

from __future__ import annotations

import codecs
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from zhongjing.data.schema import Dialogue
from zhongjing.errors import DataError
from zhongjing.io import surrogate_fault

SNIFF_BYTES = 1 << 18  # enough for the first few records of every format we know
PREVIEW_CHARS = 24  # rejects show at most this much of a record: never whole patient texts


def preview(obj: Any) -> str:
    """A short, truncated look at a bad record for the reject file (not the whole patient text)."""
    text = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def located(err: DataError, path: Any, where: str | None, obj: Any = None) -> DataError:
    """The same reason, now naming file and line/record (schema errors come without them)."""
    out = DataError(err.reason, str(path), err.where or where)
    out.preview = preview(obj) if obj is not None else ""
    return out


# ---------------------------------------------------------------------------- decoding

def _decode(data: bytes, path: Any, encoding: str | None, partial: bool) -> tuple[str, str]:
    """(codec, text). UTF-8 (BOM allowed), UTF-16 with BOM, then GB18030 (Toyhom and many Chinese
    crawls are GB18030/GBK). `partial`: `data` is a prefix; a character cut at its end is fine."""
    if not data.strip():
        raise DataError("empty file", str(path))
    if encoding is None:
        if data.startswith(codecs.BOM_UTF8):
            encoding = "utf-8-sig"
        elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            encoding = "utf-16"
        elif b"\x00" in data[:8192]:
            line = data[: data.index(b"\x00")].count(b"\n") + 1
            raise DataError("NUL byte: a binary file, not text (or a damaged line)", str(path), f"line {line}")
    tried = [encoding] if encoding else ["utf-8", "gb18030"]
    errors = []
    for enc in tried:
        try:
            return enc, codecs.getincrementaldecoder(enc)().decode(data, final=not partial)
        except LookupError:
            raise DataError(f"unknown encoding {encoding!r}", str(path)) from None
        except UnicodeDecodeError as e:
            errors.append(e)
    # the codec that read furthest is the file's: a GB18030 file fails UTF-8 at its first Chinese
    # character, so UTF-8's position would name line 2 for a bad byte on line 51
    e = max(errors, key=lambda x: x.start)
    line = data[: e.start].count(b"\n") + 1
    raise DataError(
        f"cannot decode bytes {data[e.start:e.start + 4].hex(' ')} at byte {e.start}: not {' and not '.join(tried)}"
        " (pass --encoding)", str(path), f"line {line}")


def decode(data: bytes, path: Any, encoding: str | None = None, *, partial: bool = False) -> str:
    return _decode(data, path, encoding, partial)[1]


def _prefix(path: Path) -> tuple[bytes, bool]:
    with open(path, "rb") as f:
        data = f.read(SNIFF_BYTES + 1)
    return data[:SNIFF_BYTES], len(data) > SNIFF_BYTES


@dataclass
class Source:
    """One input file: whole text decoded lazily and once, or streamed line by line (large JSONL/CSV)."""

    path: Path
    format: str
    encoding: str | None = None
    seen: dict[str, str] = field(default_factory=dict)  # id → where first read, shared by one read
    _text: str | None = field(default=None, repr=False)
    _codec: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def text(self) -> str:
        if self._text is None:
            self._codec, self._text = _decode(self.path.read_bytes(), self.path, self.encoding, False)
        return self._text

    @property
    def codec(self) -> str:
        """The encoding that decodes the file's first bytes (BOM-aware)."""
        if self._codec is None:
            data, partial = _prefix(self.path)
            self._codec = _decode(data, self.path, self.encoding, partial)[0]
        return self._codec

    def open(self, newline: str | None = None):
        return open(self.path, encoding=self.codec, newline=newline)

    def lines(self) -> Iterator[tuple[int, str]]:
        """(line number, line without its end) streamed from disk; a bad byte names its exact line."""
        codec = self.codec
        if codec.startswith("utf-16"):  # newline bytes occur inside UTF-16 characters: decode as a stream
            with self.open() as f:
                yield from ((n, line.rstrip("\n")) for n, line in enumerate(f, 1))
            return
        with open(self.path, "rb") as f:  # UTF-8 / GB18030: b"\n" is never part of a character
            for n, raw in enumerate(f, 1):
                try:
                    yield n, raw.decode(codec).rstrip("\r\n")
                except UnicodeDecodeError as e:
                    raise DataError(f"cannot decode as {codec} ({e.reason}); pass --encoding", self.name,
                                    f"line {n}") from None

    def error(self, reason: str, where: str | None = None, obj: Any = None) -> DataError:
        return located(DataError(reason), self.path, where, obj)

    def claim_id(self, uid: str, where: str) -> None:
        """Our own formats: a repeated id is an error (stages key on it)."""
        if uid in self.seen:
            raise DataError(f"duplicate id {uid!r} (first at {self.seen[uid]})")
        self.seen[uid] = f"{self.name}:{where}"


def sniff_text(path: Path, encoding: str | None = None) -> str:
    data, partial = _prefix(path)
    return decode(data, path, encoding, partial=partial)


# ---------------------------------------------------------------------------- JSON records

@dataclass
class Raw:
    """One record of a file: its position (`where`, 'line N' / 'record N'), 0-based index, value."""

    where: str
    index: int
    obj: Any
    key: str | None = None  # the key, for files that are one object of records {"0": {...}, ...}


def _json_error(e: json.JSONDecodeError, src: Source) -> DataError:
    return DataError(f"invalid JSON ({e.msg} at column {e.colno})", src.name, f"line {e.lineno}")


def json_records(src: Source) -> Iterator[Raw | DataError]:
    """Records of a JSON list, a JSON object (one record, or records keyed by id) or JSON lines.

    A broken JSON document is fatal (nothing after the break can be trusted); in JSON lines a
    bad line is one bad record.
    """
    if src.path.suffix.lower() == ".jsonl":  # streamed: JSON-lines files can be far larger than memory likes
        first = next((line for _, line in src.lines() if line.strip()), "")
        if _parses(first) or not first.lstrip().startswith("["):  # (not a JSON list misnamed .jsonl)
            yield from _json_lines(src, src.lines())
            return
    text = src.text.lstrip("\ufeff")
    if not text.lstrip().startswith(("[", "{")):
        raise DataError("not JSON: expected a list '[...]', an object '{...}' or JSON lines", src.name, "line 1")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        # JSON lines: one of the first two lines is a JSON value by itself (a pretty-printed
        # document's first lines are not)
        head = [line for line in text.splitlines()[:50] if line.strip()][:2]
        if len(head) == 2 and head[0].strip() not in ("[", "{") and any(_parses(line) for line in head):
            yield from _json_lines(src, enumerate(text.split("\n"), 1))
            return
        raise _json_error(e, src) from None
    check = surrogate_fault(whole, text) is not None  # one cheap look at the whole text; records only if needed
    if isinstance(whole, list):
        items: Iterable[tuple[Any, Any]] = ((None, obj) for obj in whole)
    elif isinstance(whole, dict) and len(whole) > 1 and all(isinstance(v, dict) for v in whole.values()):
        items = whole.items()  # {"0": {...}, "1": {...}}: records keyed by id (the xywy KG files)
    else:
        items = [(None, whole)]
    for i, (k, obj) in enumerate(items):
        fault = check and surrogate_fault(obj if k is None else {k: obj}, None)  # (the text was looked at)
        if fault:  # one bad record, like a bad line of JSON lines
            yield src.error(fault, f"record {i + 1}")
        else:
            yield Raw(f"record {i + 1}", i, obj, key=None if k is None else str(k))


def _parses(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def _json_lines(src: Source, lines: Iterable[tuple[int, str]]) -> Iterator[Raw | DataError]:
    index = 0
    for n, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield src.error(f"invalid JSON ({e.msg} at column {e.colno})", f"line {n}", line)
        else:
            fault = surrogate_fault(obj, line)
            yield src.error(fault, f"line {n}") if fault else Raw(f"line {n}", index, obj)
        index += 1


def convert(raws: Iterable[Raw | DataError], src: Source, fn: Callable[[Any, Raw, Source], Any]) -> Iterator[Any]:
    """Apply a record → unit function to raw records, locating the errors it raises."""
    for raw in raws:
        if isinstance(raw, DataError):
            yield raw
            continue
        try:
            unit = fn(raw.obj, raw, src)
        except DataError as e:
            yield located(e, src.path, raw.where, raw.obj)
            continue
        if unit is not None:
            yield unit


def convert_records(src: Source, fn: Callable[[Any, Raw, Source], Any]) -> Iterator[Any]:
    return convert(json_records(src), src, fn)


def csv_rows(src: Source, required: tuple[str, ...]) -> Iterator[Raw | DataError]:
    """Rows of a CSV file (streamed) as dicts keyed by header; a missing column is fatal, a short or
    long row is one bad record."""
    with src.open(newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lstrip("\ufeff") for h in next(reader)]
        except StopIteration:
            raise DataError("empty file", src.name) from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"invalid CSV header ({e})", src.name, "line 1") from None
        missing = [c for c in required if c not in header]
        if missing:
            found = ", ".join(header)
            found = found if len(found) <= 120 else found[:120] + "…"  # a file that is not a CSV: its first line
            raise DataError(f"CSV is missing column(s) {', '.join(missing)} (found: {found or 'none'})",
                            src.name, "line 1")
        index, start = 0, 2
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as e:
                raise DataError(f"invalid CSV ({e})", src.name, f"line {start}") from None
            where = f"line {start}"
            start = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield src.error(f"row has {len(row)} fields, the header has {len(header)}", where, ",".join(row))
            else:
                yield Raw(where, index, dict(zip(header, row)))
            index += 1


def convert_rows(src: Source, required: tuple[str, ...], fn: Callable[[dict, Raw, Source], Any]) -> Iterator[Any]:
    return convert(csv_rows(src, required), src, fn)


# ---------------------------------------------------------------------------- record helpers

def need(obj: Any, *keys: str) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"missing field {', '.join(repr(k) for k in missing)} (has: {', '.join(map(str, obj)) or 'none'})")


def text_field(obj: dict, key: str, *, optional: bool = False) -> str:
    """A string field; '' when optional and absent/null. Names the field when it is not text."""
    value = obj.get(key)
    if value is None and optional:
        return ""
    if key not in obj:
        raise DataError(f"missing field {key!r}")
    if not isinstance(value, str):
        raise DataError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def record_id(src: Source, raw: Raw, source_id: Any = None) -> str:
    """The source's own id when it has one, else `<file stem>:<record index>` (stable across runs)."""
    if source_id not in (None, ""):
        return str(source_id)
    return f"{src.stem}:{raw.index}"


def join_parts(*parts: str) -> str:
    return "\n".join(p.strip() for p in parts if p and p.strip())


def make_dialogue(turns: list[tuple[str, Any]], *, id: str, meta: dict, merge: bool = False) -> Dialogue:
    """(role, text) turns → validated Dialogue.

    `merge`: the source splits one speaker's message over several lines/utterances (COVID,
    DXY), so consecutive turns of the same role are one turn. Otherwise a repeated role is an error.
    """
    messages: list[dict] = []
    for role, content in turns:
        if merge and messages and messages[-1]["role"] == role and isinstance(content, str) and content.strip():
            messages[-1]["content"] = messages[-1]["content"] + "\n" + content.strip()
            continue
        if isinstance(content, str):
            content = content.strip()
        messages.append({"role": role, "content": content})
    return Dialogue.from_dict({"id": id, "messages": messages, "meta": meta})


def clean_meta(**kw: Any) -> dict:
    return {k: v for k, v in kw.items() if v not in (None, "", [], {})}


# ---------------------------------------------------------------------------- the format table

KINDS = ("dialogue", "document", "ranking", "exam", "kg", "aux")


@dataclass
class FormatSpec:
    name: str
    kind: str  # one of KINDS; "kg" yields rendered Documents, "aux" has no units (see aux.py)
    read: Callable[[Source], Iterator[Any]]
    help: str
    own: bool = False  # our own JSONL formats: duplicate ids are errors, meta is kept as written


FORMATS: dict[str, FormatSpec] = {}


def register(name: str, kind: str, help: str, *, own: bool = False):
    assert kind in KINDS, kind

    def deco(fn):
        FORMATS[name] = FormatSpec(name, kind, fn, help, own)
        return fn

    return deco


def json_format(name: str, kind: str, help: str, *, own: bool = False):
    """Register a record → unit function as a JSON/JSONL format."""

    def deco(fn):
        register(name, kind, help, own=own)(lambda src: convert_records(src, fn))
        return fn

    return deco
