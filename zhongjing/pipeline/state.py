"""What the pipeline remembers between runs: a key per stage, and how outputs and code are fingerprinted.

WORK/pipeline-state.json holds, per stage: status (running | done), key, the fingerprint of its output, seconds
and a summary. A stage is up to date when its status is done, its recorded key equals the key computed now and
its output still has the recorded fingerprint. The key hashes:
  - the stage's resolved config, without run-only keys (resume, progress, ...) and with WORK written as $WORK,
    so a moved work dir stays valid (zhongjing.model.identity, which the training stages' meta.json uses too);
  - the source of the modules that make up the stage (its `code` in stages.py) and the package version;
  - the content of every file or folder the config names outside WORK (data, corpus, a user base model);
  - the fingerprints of the upstream outputs it reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from zhongjing.errors import ZhongjingError
from zhongjing.io import sha256_json, write_json
from zhongjing.model import identity

STATE_FILE = "pipeline-state.json"


class State:
    def __init__(self, work: Path):
        self.work = Path(work)
        self.path = self.work / STATE_FILE
        try:
            self.data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}
        except json.JSONDecodeError as e:
            raise ZhongjingError(f"{self.path}: unreadable pipeline state ({e.msg}); delete it to start over") from None
        except (UnicodeDecodeError, OSError) as e:
            raise ZhongjingError(f"{self.path}: unreadable pipeline state ({e}); delete it to start over") from None
        if not isinstance(self.data, dict) or not isinstance(self.data.setdefault("stages", {}), dict):
            raise ZhongjingError(f"{self.path}: not a pipeline state (expected an object with 'stages'); delete it "
                                 "to start over")

    def get(self, stage: str) -> dict:
        return self.data["stages"].get(stage, {})

    def fingerprint(self, stage: str) -> str | None:
        rec = self.get(stage)
        return rec.get("fingerprint") if rec.get("status") == "done" else None

    def key_for(self, stage: str, config: Any, code: str, inputs: dict, deps: dict, settings: dict) -> tuple[str, dict]:
        """The stage's key, and a hash per part of it so that a plan can say which part changed."""
        config = identity.hashable(config, self.work)
        key = sha256_json({"stage": stage, "config": config, "code": code, "inputs": inputs,
                           "upstream": deps, "pipeline": settings})
        parts = {"config": sha256_json(config), "code": code, "input files": sha256_json(inputs),
                 "pipeline settings": sha256_json(settings), **{f"{d} output": fp for d, fp in deps.items()}}
        return key, parts

    def changed(self, stage: str, parts: dict) -> list[str]:
        """Which parts of the key differ from the recorded run's (empty when that run predates part hashes)."""
        old = self.get(stage).get("parts") or {}
        return [name for name in parts if old and old.get(name) != parts[name]]

    def _save(self) -> None:
        write_json(self.path, self.data)

    def start(self, stage: str, key: str, parts: dict | None = None) -> None:
        self.data["stages"][stage] = {"status": "running", "key": key, "parts": parts or {}, "started": _now()}
        self._save()

    def finish(self, stage: str, key: str, fp: str | None, seconds: float, summary: dict) -> None:
        if fp is None:
            raise ZhongjingError(f"stage {stage} finished but its output is missing or incomplete")
        rec = self.data["stages"][stage]
        rec.update({"status": "done", "key": key, "fingerprint": fp, "seconds": round(seconds, 1),
                    "finished": _now(), "summary": summary})
        self._save()


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def lock(work: Path):
    """One pipeline per work dir at a time (the lock goes away with the process, even on SIGKILL)."""
    path = Path(work) / ".pipeline.lock"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ZhongjingError(f"another pipeline is running in {work} (lock {path})") from None
        yield
    finally:
        os.close(fd)
