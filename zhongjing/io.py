"""File helpers every stage uses: atomic writes, JSONL with line numbers, content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from zhongjing.errors import DataError


def check_output(path: str | os.PathLike, folder: bool) -> Path:
    """Refuse, as one line and before any work, an output path that cannot become a `folder` (or a file): the
    other kind already there, or a file where one of its parent folders should be."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise DataError("is a file; give the path of a folder to write", str(path))
    if not folder and path.is_dir():
        raise DataError("is a folder; give the path of a file to write", str(path))
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DataError(f"is a file, so {str(path)!r} cannot be made inside it", str(parent))
            break
    return path


def make_dir(path: str | os.PathLike) -> Path:
    """mkdir -p, with a file in the way named in one line instead of a FileExistsError traceback."""
    path = check_output(path, folder=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, folder: bool = False):
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds.

    Works for files and directories (`folder=True`: the block makes a folder), so a killed job never leaves a
    half-written output; an output path of the other kind is refused before the block runs.
    """
    path = check_output(path, folder)
    make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        yield Path(tmp)
        if path.is_dir() and Path(tmp).is_dir():
            old = Path(str(tmp) + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            _rm(old)
        else:
            os.replace(tmp, path)
    finally:
        _rm(Path(tmp))


def _rm(p: Path) -> None:
    import shutil

    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    with atomic_path(path) as tmp:
        kw = {} if "b" in mode else {"encoding": encoding}
        with open(tmp, mode, **kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            if hasattr(row, "to_dict"):
                row = row.to_dict()
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; bad JSON names file and line."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", str(path), f"line {i}") from None
            fault = surrogate_fault(obj, line)
            if fault:
                raise DataError(fault, str(path), f"line {i}")
            yield i, obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


MAX_JSON_DEPTH = 64

# JSON may escape half of a UTF-16 surrogate pair ("\ud800") and Python's reader returns it as a lone surrogate: a
# str that is not text (tokenizers raise on it, UTF-8 files cannot hold it). Only such an escape can make one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_REASON = "a lone UTF-16 surrogate escape (\\uD800-\\uDFFF without its pair) is not text"


def surrogate_fault(obj: Any, text: str | None) -> str | None:
    """The one-line reason why `obj`, parsed from the JSON `text`, holds a string that is not text, or None.
    Cheap when `text` has no surrogate escape (the usual case): only then is `obj` walked (text=None: always)."""
    if text is not None and not _SURROGATE_ESCAPE.search(text):
        return None
    where = lone_surrogate(obj)
    return None if where is None else f"{where}: {_SURROGATE_REASON}"


def lone_surrogate(obj: Any, where: str = "") -> str | None:
    """Where in parsed JSON the first string (key or value) holding a lone surrogate is ('messages[0].content',
    '$' for the top level), or None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return where or "$"
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = str(k)[:40].encode("utf-8", "backslashreplace").decode("utf-8")  # the message must be text too
            here = f"{where}.{name}" if where else name
            found = lone_surrogate(k, here) or lone_surrogate(v, here)
            if found:
                return found
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found = lone_surrogate(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows (only finite numbers)")


def _int(text: str) -> int:
    """An integer any field may also read as a float: one beyond float's range raised OverflowError (a 500)
    where `temperature: 1000…0` was checked."""
    if len(text) > 320:
        raise ValueError(f"{text[:20]}… is too large for a number")
    v = int(text)
    try:
        float(v)
    except OverflowError:
        raise ValueError(f"{text[:20]}… is too large for a number") from None
    return v


def _unique_keys(pairs: list) -> dict:
    """An object naming a key twice: which one counts differs between JSON readers (a proxy may check the first,
    this server would use the last), so it is refused rather than silently resolved."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k[:40]!r} appears twice in one object")
        out[k] = v
    return out


def _finite(text: str) -> float:
    x = float(text)
    if x in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is too large for a number")
    return x


def loads_strict(raw: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from an untrusted client: NaN/Infinity refused (Python's reader accepts them), nesting deeper than
    `max_depth` refused before parsing (no RecursionError), numbers beyond a float's range refused, a key given
    twice in one object refused. ValueError
    with a one-line reason on any fault."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    depth = 0
    in_str = esc = False
    for ch in raw if raw.count("[") + raw.count("{") > max_depth else ():  # bracket depth outside strings: cheap, and bounds the recursion json.loads would need
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"nested deeper than {max_depth} levels")
        elif ch in "]}":
            depth -= 1
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite, parse_int=_int,
                           object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError(f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} (line {e.lineno} column {e.colno})") from None
    fault = surrogate_fault(value, raw)
    if fault:
        raise ValueError(fault)
    return value
