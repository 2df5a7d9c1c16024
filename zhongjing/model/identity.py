"""Is an output current? The one place that says what identifies a model, a data file, a config and the code.

Both the training stages (meta.json `inputs_hash`, checked on resume) and the pipeline (a key per stage, checked
before each run) decide "has this changed" from the pieces here:
  - `hashable(config)`: the config as plain data without the run-only keys (RUN_ONLY: how a run is executed or
    reported, not what it produces), and with a work dir written as $WORK so a moved work dir stays valid;
  - `model_fingerprint(folder)`: a parent model's identity (its own inputs_hash when zhongjing trained it);
  - `output_fingerprint(path)`: a finished output's identity (None while missing or unfinished);
  - `data_record(path)`: how a data file enters meta.json (path + content hash);
  - `code_hash(modules)` / `code_version()`: the source that made an output;
  - `training_meta(...)`: the meta.json every training stage writes (written last: a folder without it is not a
    finished result).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
from pathlib import Path
from typing import Any

import zhongjing
from zhongjing.io import sha256_file, sha256_json

# Config keys that change how a run is executed or reported, not what it produces (at any depth of the config).
RUN_ONLY = {"output", "resume", "overwrite", "progress", "tensorboard", "threads", "keep_checkpoints", "save_every"}


def hashable(config: Any, work: str | Path | None = None) -> Any:
    """The config as plain data without run-only keys; paths under `work` written as $WORK."""
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    prefix = str(Path(work).resolve()) if work is not None else None

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k not in RUN_ONLY}
        if isinstance(x, list):
            return [clean(v) for v in x]
        if prefix and isinstance(x, str) and x.startswith(prefix):
            return "$WORK" + x[len(prefix):]
        return x

    return clean(data)


# ----------------------------------------------------------------------------------------- code

def code_version() -> dict:
    """Package version and, in a source checkout, the git revision (recorded in meta.json)."""
    out = {"zhongjing": zhongjing.__version__}
    try:
        root = Path(zhongjing.__file__).resolve().parents[1]
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0:
            out["git"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def module_files(name: str) -> list[Path]:
    """Source files of a module (all of a package's)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return []
    origin = Path(spec.origin)
    if origin.name == "__init__.py":
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def code_hash(modules: list[str]) -> str:
    """The source of `modules` and the package version: editing one of them changes the hash."""
    root = Path(zhongjing.__file__).resolve().parent
    files = sorted({f for m in modules for f in module_files(m)})
    return sha256_json({"version": zhongjing.__version__, "missing": [m for m in modules if not module_files(m)],
                        "files": [(str(f.resolve().relative_to(root)) if f.resolve().is_relative_to(root) else str(f),
                                   sha256_file(f)) for f in files]})


# ----------------------------------------------------------------------------------------- files and models

def is_model_dir(p: Path) -> bool:
    return (p / "config.json").exists() or (p / "adapter_config.json").exists()


def model_fingerprint(path: str | Path) -> str:
    """Stable identity of a parent model: its own inputs_hash when zhongjing trained it, else its config and the
    names and sizes of its weight files (hashing 26 GB of weights on every run would be too slow)."""
    p = Path(path)
    meta_path = p / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("inputs_hash"):
            return meta["inputs_hash"]
        return sha256_json({k: v for k, v in meta.items() if k not in ("seconds", "metrics")})
    files = sorted((f.name, f.stat().st_size) for f in p.iterdir() if f.is_file())
    cfg = [(p / n).read_text(encoding="utf-8") for n in ("config.json", "adapter_config.json") if (p / n).exists()]
    return sha256_json({"files": files, "config": cfg})


def output_fingerprint(path: str | Path) -> str | None:
    """Identity of a stage output: file content; a model folder's meta.json plus its top-level files' sizes and
    modification times (weights of a 13B model are too big to hash on every run); other folders by content.
    None if missing or unfinished (a model folder without meta.json)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if not p.is_dir():
        return None
    if is_model_dir(p):
        if not (p / "meta.json").exists():
            return None
        files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir() if f.is_file())
        return sha256_json({"meta": sha256_file(p / "meta.json"), "files": files})
    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    if not files:
        return None
    return sha256_json([(str(f.relative_to(p)), sha256_file(f)) for f in files])


def external_fingerprint(p: Path) -> str:
    """A file or folder the user's config names: by content, except model folders (model_fingerprint)."""
    if p.is_dir() and is_model_dir(p):
        return model_fingerprint(p)
    return output_fingerprint(p) or "empty"


def _strings(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def external_inputs(config: Any, work: Path) -> dict[str, str]:
    """Content hash of every existing file/folder named in the config outside the work dir (user data)."""
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    work = work.resolve()
    out = {}
    for s in _strings(data):
        if not s or ("/" not in s and "." not in s) or "\n" in s or len(s) > 4096:
            continue
        p = Path(s)
        try:
            if not p.exists():
                continue
            rp = p.resolve()
        except OSError:
            continue
        if rp == work or rp.is_relative_to(work) or rp == Path.cwd().resolve():
            continue
        out[str(rp)] = external_fingerprint(rp)
    return out


def data_record(path: str | Path, **extra) -> dict:
    """How a data file enters meta.json: path, content hash and whatever the stage adds (format, records)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        digest = sha256_json([(str(f.relative_to(p)), sha256_file(f)) for f in files])
    else:
        digest = sha256_file(p)
    return {"path": str(p.resolve()), "sha256": digest, **extra}


def inputs_hash(stage: str, parent: str | Path, data: list[dict], config: dict) -> str:
    return sha256_json({"stage": stage, "parent": model_fingerprint(parent),
                        "data": [d.get("sha256") for d in data], "config": config})


def training_meta(stage: str, config: Any, parent: str | Path, data: list[dict], *, kind: str, **extra) -> dict:
    """The meta.json of a training stage's output: what it was trained from (parent model, data hashes, resolved
    config), the inputs_hash that resume and the pipeline compare, and the code version; `extra` adds the stage's
    own fields (metrics, counts, params, ...)."""
    config = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    parent = str(Path(parent).resolve())
    return {"stage": stage, "kind": kind, "base_model": parent, "parent": parent,
            "inputs_hash": inputs_hash(stage, parent, data, hashable(config)), "data": data,
            "config": config, "code": code_version(), "kernels": _kernels(), **extra}


def _kernels() -> dict:
    """Which optional kernels (FlashAttention-2, Liger) the run's model used: model/kernels.py."""
    from zhongjing.model.kernels import used

    return used()
