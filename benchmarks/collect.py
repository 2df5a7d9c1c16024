"""Write the README's "Measured against peers" section from scripts/bench.sh's logs (benchmarks/results/*.txt):
each benchmark's own markdown tables and ratio lines, as printed, under the date and the machine they ran on."""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), cpu)
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, Python {platform.python_version()}; "
            f"load average {os.getloadavg()[0]:.1f} at the end")


def summary(name: str, text: str) -> list[str]:
    """The lines worth keeping: markdown tables, their titles, and ratio / loss-curve lines."""
    keep, lines = [], text.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("|") or re.match(r"^(ratio|loss curves|exit [1-9])", ln):
            if ln.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
                title = next((lines[j] for j in range(i - 1, max(-1, i - 4), -1) if lines[j].strip()
                              and not lines[j].startswith("(")), "")
                keep += ["", f"*{title.strip()}*", ""] if title else [""]
            elif not ln.startswith("|"):
                keep.append("")
            keep.append(ln)
    return keep or [f"(no table: see benchmarks/results/{name}.txt)"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--readme", default=str(HERE.parent / "README.md"))
    p.add_argument("names", nargs="+")
    a = p.parse_args()
    body = [START, f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `scripts/bench.sh` on "
                   f"{machine()}. Each script measures zhongjing and a named peer in the same run on the same data; "
                   "full logs in benchmarks/results/."]
    for name in a.names:
        f = HERE / "results" / f"{name}.txt"
        script = f"bench_{name}.py" if (HERE / f"bench_{name}.py").exists() else f"{name}.py"
        body += ["", f"**[{script}](benchmarks/{script})**"]
        body += summary(name, f.read_text(encoding="utf-8")) if f.exists() else ["(not run)"]
    body.append(END)
    readme = Path(a.readme)
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    block = "\n".join(body)
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    elif "## Measured against peers" in text:
        head, tail = text.split("## Measured against peers", 1)
        nxt = tail.find("\n## ")
        text = head + "## Measured against peers\n" + block + "\n" + (tail[nxt:] if nxt >= 0 else "")
    else:
        text += "\n## Measured against peers\n" + block + "\n"
    readme.write_text(text, encoding="utf-8")
    print(f"wrote the peers section of {readme}")


if __name__ == "__main__":
    main()
