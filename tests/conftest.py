"""Shared test fixtures: where the real data is, and a tiny model built from scratch once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
# The project's real data: ../shared/data next to the checkout (also where this workplace keeps it for a clone
# made elsewhere), or wherever ZHONGJING_SHARED_DATA points.
_CANDIDATES = ([Path(os.environ["ZHONGJING_SHARED_DATA"])] if os.environ.get("ZHONGJING_SHARED_DATA")
               else [REPO.parent / "shared" / "data", Path("/work/shared/data")])
SHARED_DATA = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])


def pytest_terminal_summary(terminalreporter):
    """Say it loudly when tests on real data could not run, instead of a row of quiet 's'."""
    if not SHARED_DATA.is_dir():
        skipped = len(terminalreporter.stats.get("skipped", []))
        terminalreporter.write_line(
            f"WARNING: shared data not found at {SHARED_DATA}: {skipped} tests on real data were skipped "
            "(set ZHONGJING_SHARED_DATA)", red=True, bold=True)

# Small enough that a training step takes milliseconds on 2 CPU cores, big enough to learn the demo data.
TINY = dict(vocab_size=2000, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=176,
            max_position_embeddings=1024)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer LLaMA + BPE tokenizer trained on the demo corpus (a normal HF folder)."""
    from zhongjing.model.init_model import InitModelConfig, init_model

    out = tmp_path_factory.mktemp("tiny") / "base"
    return init_model(InitModelConfig(output=str(out), **TINY))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from zhongjing.model.load import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> tuple[Path, Path]:
    """(config file, work dir) of one tiny demo pipeline shared by test_pipeline.py and test_pipeline_reruns.py."""
    from pipeline_helpers import write_tiny_config

    return write_tiny_config(tmp_path_factory.mktemp("pipeline"))
