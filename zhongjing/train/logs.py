"""Training logs: a tqdm line (loss, lr, tokens/s), `logs/train.jsonl` per step, `logs/eval.jsonl` per
evaluation, and TensorBoard scalars when asked for. Only the main process logs.

The JSONL files are append-only streams (one flushed line per step, so a killed run keeps every completed
line); on resume they are cut back atomically to the checkpoint's step so no step appears twice.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from zhongjing.io import atomic_open, make_dir


def _trim(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # a kill can cut a character too
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except (json.JSONDecodeError, AttributeError, TypeError):  # a line cut by a kill
            break
    with atomic_open(path) as f:
        f.write("".join(x + "\n" for x in keep))


def _num(x):
    return x if isinstance(x, (int, str, bool)) or x is None or math.isfinite(x) else str(x)


class RunLogger:
    def __init__(self, log_dir: Path, *, enabled: bool, total_steps: int, start_step: int = 0,
                 tensorboard: bool = False, progress: bool = True):
        self.enabled = enabled
        self.bar = self.tb = None
        self._files = {}
        if not enabled:
            return
        make_dir(log_dir)
        for name in ("train", "eval"):
            _trim(log_dir / f"{name}.jsonl", start_step)
            self._files[name] = open(log_dir / f"{name}.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from zhongjing.errors import require

            require("tensorboard", "logging")
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(log_dir / "tensorboard"), purge_step=start_step + 1)
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                            file=sys.stderr, mininterval=1.0)

    def _write(self, name: str, record: dict) -> None:
        f = self._files[name]
        f.write(json.dumps({k: _num(v) for k, v in record.items()}, ensure_ascii=False) + "\n")
        f.flush()

    def step(self, record: dict) -> None:
        if not self.enabled:
            return
        self._write("train", record)
        if self.tb:
            for k in ("loss", "lr", "grad_norm", "tokens_per_s"):
                if isinstance(record.get(k), (int, float)):
                    self.tb.add_scalar(f"train/{k}", record[k], record["step"])
        if self.bar:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                 tok_s=f"{record.get('tokens_per_s', 0):.0f}", refresh=False)

    def eval(self, record: dict) -> None:
        if not self.enabled:
            return
        self._write("eval", record)
        if self.tb:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"eval/{k}", v, record["step"])
        self.info("eval step {}: {}".format(record["step"], ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items() if k != "step")))

    def info(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        if self.tb:
            self.tb.close()
        if self.bar:
            self.bar.close()
