"""benchmarks/gpu_check.py runs end to end on CPU in its dry mode (tiny Qwen2, every section that needs no GPU), so
the script that is carried to a GPU machine once is known to work before it goes there."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def test_dry_run_prints_every_row(tmp_path):
    out = tmp_path / "gpu.txt"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry", "--out", str(out),
                        "--work", str(tmp_path / "work"), "--skip", "zero2"],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2",
                            "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    table = out.read_text(encoding="utf-8")
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
    rows = dict(line.strip("| ").split(" | ", 1) for line in table.splitlines()[2:])
    assert "error" not in table
    sft = next(v for k, v in rows.items() if k.startswith("SFT full bf16, plain PyTorch"))
    assert "tokens/s" in sft and "'attention': 'sdpa'" in sft  # meta.json states the kernels used
    assert "ms/step" in rows["RM update (LoRA, 32 pairs, bf16)"]
    assert any(k.startswith("PPO update") and "s/update over 2 updates" in v for k, v in rows.items())
    assert "tokens/s" in rows["generation batch 16"]
    assert rows["accelerate launch FSDP"].startswith("skipped: FSDP needs a GPU")
    for k in ("package liger-kernel", "package flash-attn"):  # missing packages say so instead of failing
        assert rows[k][0].isdigit() or rows[k].startswith("skipped:")
