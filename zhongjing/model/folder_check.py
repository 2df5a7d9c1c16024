"""One-line errors for a damaged model folder, whichever command loads it (chat, serve, every stage).

`model/load.py` calls these before and around the Hugging Face loaders, whose own errors are tracebacks
from deep inside safetensors / tokenizers / transformers: a truncated or garbage `*.safetensors`, a
`config.json` that is not JSON, a missing or broken `tokenizer.json`. Each becomes a ZhongjingError that
names the folder, the file and what to do.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path
from typing import Any, Iterator

from zhongjing.errors import ZhongjingError, first_line

FIX = "the folder is damaged or incomplete; copy or export it again"


def read_json_file(path: Path) -> Any:
    """A JSON file of a model folder, or one line naming the file and the position of the fault."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ZhongjingError(f"{path}: not a text file (not UTF-8); {FIX}") from None
    except json.JSONDecodeError as e:
        raise ZhongjingError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); {FIX}") from None
    except OSError as e:
        raise ZhongjingError(f"{path}: cannot read it ({e.strerror or e}); {FIX}") from None


def check_safetensors(path: Path) -> None:
    """Header of one safetensors file: 8-byte length, JSON header, every tensor's bytes inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ZhongjingError(f"{path}: truncated ({size} bytes, shorter than a safetensors header); {FIX}")
        n = struct.unpack("<Q", head)[0]
        if n > min(size - 8, 100 << 20):
            raise ZhongjingError(f"{path}: not a safetensors file or truncated (header of {n} bytes in a file of "
                                 f"{size}); {FIX}")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ZhongjingError(f"{path}: not a safetensors file (its header is not JSON); {FIX}") from None
    if not isinstance(header, dict):
        raise ZhongjingError(f"{path}: not a safetensors file (its header is not a JSON object); {FIX}")
    end = max((t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)),
              default=0)
    if 8 + n + end > size:
        raise ZhongjingError(f"{path}: truncated ({size} bytes; its tensors need {8 + n + end}); {FIX}")


def check_folder(p: Path) -> None:
    """Cheap checks before loading: config files parse, weight files are whole."""
    for name in ("config.json", "adapter_config.json"):
        if (p / name).exists():
            cfg = read_json_file(p / name)
            if not isinstance(cfg, dict):
                raise ZhongjingError(f"{p / name}: must be a JSON object; {FIX}")
    for st in sorted(p.glob("*.safetensors")):
        check_safetensors(st)


@contextlib.contextmanager
def explained(p: Path, what: str) -> Iterator[None]:
    """Turn a loader's exception into one line naming the folder and, where it can tell, the file."""
    try:
        yield
    except ZhongjingError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError) as e:  # safetensors/tokenizers too
        text = first_line(e, 10_000)
        name = type(e).__name__
        if what == "tokenizer" and not (p / "tokenizer.json").exists():
            hint = "tokenizer.json is missing"
        elif what == "tokenizer":
            hint = "tokenizer.json or tokenizer_config.json is damaged"
        elif "no file named" in text:
            hint = "no weights file (model.safetensors or pytorch_model.bin)"
        elif "afetensor" in name or "safetensors" in text or "header" in text:
            hint = "a weights file is damaged"
        elif "model type" in text or "architecture" in text:
            hint = "config.json names a model type this transformers version does not know"
        else:
            hint = "its files could not be loaded"
        raise ZhongjingError(f"{p}: cannot load the {what}: {hint} ({name}: {text[:200]}); {FIX}") from None
