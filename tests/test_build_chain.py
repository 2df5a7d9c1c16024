"""The whole builder on the real shared dialogues with a fake endpoint: reports, outputs, kill and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SHARED_DATA
from fake_openai import FakeOpenAI
from zhongjing import cli
from zhongjing.dataset.cache import RewriteCache
from zhongjing.dataset.chain import BuildConfig, run_chain
from zhongjing.dataset.deid_planted import make_planted_set
from zhongjing.config import load_config

INPUTS = [
    ("cmtmedqa_test/CMtMedQA_test.shared.json", 50),
    ("covid_dialogue_zh/COVID-Dialogue-Dataset-Chinese.json", 50),
    ("dxy_dialog/dxy_dialog_data_dialog_v2.txt", 40),
    ("toyhom_medical_dialogue/样例_内科5000-6000.csv", 80),
]
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "cmtmedqa_test").is_dir(), reason=f"no shared data at {SHARED_DATA}")


def _config(tmp: Path, url: str) -> dict:
    return {
        "inputs": [{"path": str(SHARED_DATA / p), "limit": n} for p, n in INPUTS],
        "work_dir": str(tmp / "work"), "output": str(tmp / "out"), "progress": False,
        "rewrite": {"enabled": True, "base_url": url, "model": "fake", "concurrency": 2, "timeout": 2.0,
                    "backoff_base": 0.01, "backoff_max": 0.05},
        "kg": {"path": str(SHARED_DATA / "medical_kg_xywy" / "tonystark_records")},
        "split": {"validation": 0.1, "test": 0.1},
    }


@needs_shared
@pytest.mark.shared
def test_chain_end_to_end_killed_mid_rewrite_resumes_from_cache(tmp_path):
    with FakeOpenAI(failure_rate=0.05, delay=0.01, timeout_sleep=2.5) as srv:
        cfg_dict = _config(tmp_path, srv.url)
        (tmp_path / "build.yaml").write_text(yaml.safe_dump(cfg_dict, allow_unicode=True), encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "zhongjing", "build", "--config", str(tmp_path / "build.yaml")],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while len(srv.ok_shas()) < 60:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the chain never reached the rewrite step"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        work = tmp_path / "work"
        assert not list(work.glob("*-rewrite-*.jsonl")), "a killed step must not leave an output"
        with RewriteCache(work / "rewrite_cache.sqlite") as cache:
            cached = cache.request_shas()
        assert len(cached) >= 50
        mark = len(srv.log)

        reports = run_chain(load_config(BuildConfig, tmp_path / "build.yaml"))
        second = srv.all_shas()[mark:]
        assert second and not set(second) & cached, "a cached input was requested again"
        by_step = {r.step: r for r in reports}
        assert by_step["import"].cached and by_step["deid"].cached and not by_step["rewrite"].cached
        # no copy of the raw, identifiable import is left in the work dir once deid has run
        assert not [p for p in work.glob("01-import-*.jsonl") if not p.name.endswith(".rejects.jsonl")]
        assert by_step["rewrite"].counts["cache_hits"] >= len(cached)
        assert by_step["rewrite"].counts["rewritten"] > 0.9 * by_step["rewrite"].counts["doctor_turns"]

        mark = len(srv.log)
        again = run_chain(load_config(BuildConfig, tmp_path / "build.yaml"))
        assert len(srv.log) == mark and all(r.cached for r in again if not r.details.get("skipped"))

    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    steps = [s["step"] for s in report["steps"]]
    assert steps == ["import", "deid", "boilerplate", "rewrite", "kg_check", "screen", "departments", "split"]
    counts = {s["step"]: (s["n_in"], s["n_out"]) for s in report["steps"]}
    assert counts["import"][0] == sum(n for _, n in INPUTS)
    assert all(n_out > 0 for _, n_out in counts.values())
    assert counts["split"][1] <= counts["departments"][1] == counts["screen"][1] <= counts["kg_check"][1]
    md = (out / "report.md").read_text()
    assert "| rewrite |" in md and "cache_hits" in md
    ids = {}
    for split in ("train", "validation", "test"):
        rows = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        ids[split] = {r["id"] for r in rows}
        text = json.dumps(rows, ensure_ascii=False)
        assert not re.search(r"(?<!\d)1[3-9]\d{9}(?!\d)", text), "a mobile number survived de-identification"
        assert all(r["meta"]["department"] for r in rows)
        assert len(json.loads((out / f"{split}.cmtmedqa.json").read_text())) == len(rows)
    assert ids["train"] and not ids["train"] & ids["validation"] and not ids["train"] & ids["test"]
    assert (out / "departments.png").stat().st_size > 10_000 and (out / "review.jsonl").exists()


def test_single_step_subcommands_and_errors(tmp_path, capsys):
    samples = make_planted_set(40, seed=11)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "messages": [{"role": "user", "content": s.text},
                                                                   {"role": "assistant", "content": "请问多久了？"}]},
                                      ensure_ascii=False) + "\n" for i, s in enumerate(samples)), encoding="utf-8")
    assert cli.main(["build", "deid", str(src), "-o", str(tmp_path / "deid.jsonl")]) == 0
    out_text = (tmp_path / "deid.jsonl").read_text()
    assert not [s.text[p.start:p.end] for s in samples for p in s.spans if s.text[p.start:p.end] in out_text]
    rep = json.loads((tmp_path / "deid.report.json").read_text())
    assert rep["n_in"] == rep["n_out"] == 40 and rep["counts"]["dialogues_changed"] > 0
    assert (tmp_path / "deid.report.md").exists()
    assert cli.main(["build", "screen", str(tmp_path / "deid.jsonl"), "-o", str(tmp_path / "s.jsonl"),
                     "screen.min_turns=1"]) == 0
    assert cli.main(["build", "split", str(tmp_path / "s.jsonl"), "-o", str(tmp_path / "split")]) == 0
    assert (tmp_path / "split" / "train.jsonl").exists() and (tmp_path / "split" / "report.json").exists()
    capsys.readouterr()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "messages": []}\n', encoding="utf-8")
    assert cli.main(["build", "deid", str(bad), "-o", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.jsonl:line 1" in err
    assert cli.main(["build", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert cli.main(["build", "steps=[deid,import]"]) == 2
    assert "must start with import, deid" in capsys.readouterr().err


def test_dry_run_prints_prompts_without_requests(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "头疼三天"},
                                                       {"role": "assistant", "content": "量过体温吗？"}]},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    with FakeOpenAI() as srv:
        assert cli.main(["build", "rewrite", str(src), "-o", str(tmp_path / "r.jsonl"), "--dry-run",
                         f"rewrite.base_url={srv.url}", "progress=false"]) == 0
        assert srv.log == []
    assert "量过体温吗？" in capsys.readouterr().err and not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("path", ["configs/demo/build.yaml", "configs/build.example.yaml"])
def test_build_configs_parse(path):
    cfg = load_config(BuildConfig, REPO / path)
    assert cfg.inputs and cfg.steps[0] == "import"


def test_rerun_removes_a_killed_runs_half_written_raw_copy(tmp_path):
    # a SIGKILL while import wrote its output leaves atomic_path's temp file: a raw, not de-identified
    # copy; the next run must not leave it in the work dir (it used to survive every later run)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "1", "messages": [{"role": "user", "content": "我叫王建国，头晕一周了。"},
                                                       {"role": "assistant", "content": "量过血压吗？"}]},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    stale = work / ".01-import-0123456789abcdef.jsonl.k1ll3d__.tmp"
    stale.write_text('{"id": "1", "messages": [{"role": "user", "content": "我叫王建国', encoding="utf-8")
    keep = work / "notes.tmp"  # not ours: left alone
    keep.write_text("x", encoding="utf-8")
    cfg = load_config(BuildConfig, None, [f"inputs=[{{path: {src}}}]", f"work_dir={work}",
                                          f"output={tmp_path / 'out'}", "progress=false", "departments.plot=false",
                                          "steps=[import,deid,screen]"])
    run_chain(cfg)
    assert not stale.exists() and keep.exists()
    assert not any("王建国" in p.read_text(encoding="utf-8", errors="ignore") for p in work.iterdir() if p.is_file())


def test_inputs_with_no_usable_dialogue_stop_at_import(tmp_path, capsys):
    # every record rejected: the build "finished" with empty splits, and only training failed, far later
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "1", "messages": [{"role": "doctor", "content": "x"}]}\n', encoding="utf-8")
    assert cli.main(["build", f"inputs=[{{path: {src}}}]", f"work_dir={tmp_path / 'work'}",
                     f"output={tmp_path / 'out'}", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no usable dialogues" in err and "1 record(s) rejected" in err
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_a_mistyped_path_in_the_config_stops_before_any_step(tmp_path, capsys):
    # departments.map was first opened at the departments step, after the (paid) rewrite of every turn
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "1", "messages": [{"role": "user", "content": "头晕一周了。"},
                                                       {"role": "assistant", "content": "量过血压吗？"}]},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    base = [f"inputs=[{{path: {src}}}]", f"work_dir={tmp_path / 'work'}", f"output={tmp_path / 'out'}", "progress=false"]
    for bad in ("departments.map=/no/such/map.yaml", "kg.path=/no/such/kg", "kg.extra_drug_lists=[/no/such/drugs.txt]"):
        assert cli.main(["build", *base, "rewrite.enabled=true", "rewrite.base_url=http://127.0.0.1:9/v1", bad]) == 2
        assert "/no/such/" in capsys.readouterr().err and not (tmp_path / "work").exists()
