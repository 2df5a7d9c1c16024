"""How to spell the `zhongjing` command in hints printed to the user, so a copied hint runs as printed.

`scripts/install.sh` puts the command in `.venv/bin/`, which is not on PATH unless the venv is activated;
a bare `zhongjing` in a hint would then fail with "command not found".
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def command() -> str:
    """`zhongjing` when that name on PATH is this installation, else the script's path (relative to the
    current folder when inside it, e.g. `.venv/bin/zhongjing`), else `python -m zhongjing`."""
    script = Path(sys.prefix) / ("Scripts" if os.name == "nt" else "bin") / "zhongjing"
    on_path = shutil.which("zhongjing")
    if on_path and script.exists() and Path(on_path).resolve() == script.resolve():
        return "zhongjing"
    if script.exists():
        try:
            return str(script.relative_to(Path.cwd()))
        except ValueError:
            return str(script)
    return f"{Path(sys.executable).name} -m zhongjing"
