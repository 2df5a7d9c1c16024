"""A real server process under concurrent load, killed with SIGKILL mid-load and restarted: no
acknowledged submission is lost and every submission ends up stored exactly once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="needs the 'web' extra")
pytest.importorskip("httpx", reason="needs httpx")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import annotate_load  # noqa: E402


def test_sigkill_mid_load_loses_no_acknowledged_submission(tmp_path):
    r = annotate_load.measure(tmp_path, annotators=6, submissions=120, sync="FULL", kill_after=30)
    killed = r["after_kill"]
    assert 30 <= killed["acked_before_kill"] < 120, "the kill must land mid-load"
    assert killed["lost_acked"] == 0 and killed["twice"] == 0
    assert killed["stored"] >= killed["acked_before_kill"]
    # after a restart the clients resend everything not acknowledged, with the same keys
    assert r["errors"] == []
    assert r["stored"] == r["planned"] == r["acked_total"] == 120
    assert r["lost_acked"] == [] and r["twice"] == [] and r["unplanned"] == []
    # rows that reached the disk but whose answer was lost come back as duplicates, not new rows
    assert r["duplicates"] == killed["stored"] - killed["acked_before_kill"]
