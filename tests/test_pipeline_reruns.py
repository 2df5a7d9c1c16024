"""The pipeline reruns in a finished work dir (the one test_pipeline.py killed, resumed and checked, or a fresh run
when this file runs alone): a changed stage re-runs with the later ones only, --only runs one stage, --plan
predicts, --from runs a stage and what follows, and `zhongjing chat` answers with the aligned model.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from pipeline_helpers import ORDER, actions, command_env, run


@pytest.mark.slow
def test_reruns_redo_the_changed_stage_and_what_follows_and_the_result_chats(tiny_pipeline):
    cfg_path, work = tiny_pipeline
    env = command_env()
    run(cfg_path)  # finished already after test_pipeline.py; a whole first run otherwise

    # 4. one stage's config changed: that stage and the later ones re-run, nothing before it
    run(cfg_path, "rm.train.lr=5e-4")
    assert actions(work) == {**{s: "skipped" for s in ORDER[:6]}, "rm": "ran", "ppo": "ran", "eval": "ran"}

    # 5. --only: just that stage; its output is identical (deterministic), so nothing after it is stale
    run(cfg_path, "rm.train.lr=5e-4", "--only", "rank")
    assert [s for s, a in actions(work).items() if a != "skipped"] == ["rank"]
    plan = run(cfg_path, "rm.train.lr=5e-4", "--plan").stdout
    planned = dict(line.split()[:2] for line in plan.splitlines() if line.startswith("  "))
    assert planned == {s: "skip" for s in ORDER}

    # 6. --from: that stage and everything after it
    run(cfg_path, "rm.train.lr=5e-4", "--from", "ppo")
    assert [s for s, a in actions(work).items() if a != "skipped"] == ["ppo", "eval"]

    # 6b. the eval stage on the validation split (to choose settings): its own folder, the test report stays
    report = (work / "eval" / "report.md").read_text()
    run(cfg_path, "rm.train.lr=5e-4", "--only", "eval", "splits.eval=validation")
    assert (work / "eval-validation" / "results.json").exists() and "validation" in (
        work / "eval-validation" / "report.md").read_text()
    assert (work / "eval" / "report.md").read_text() == report

    # 7. the aligned model chats
    p = subprocess.run([sys.executable, "-m", "zhongjing", "chat", "--model", str(work / "ppo"),
                        "--max-new-tokens", "8", "--temperature", "0"],
                       input="医生你好，我头疼两天了。\n", cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip(), "chat printed no answer"
