"""The whole pipeline on a shrunken demo config, for real, on CPU: every stage trains or runs (tiny model, a few
steps each). Here: a first run killed (SIGKILL) mid-stage resumes, every output exists and loads with its consumer's
loader, and a rerun skips everything. test_pipeline_reruns.py goes on in the same finished work dir: a config change
re-runs that stage and the later ones only, --only / --plan / --from, and `zhongjing chat` answers with the result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from pipeline_helpers import ORDER, actions, command_env, run, state, write_tiny_config


@pytest.mark.slow
def test_pipeline_end_to_end(tiny_pipeline):
    cfg_path, work = tiny_pipeline
    env = command_env()

    # 1. first run, killed (SIGKILL, the pipeline process only) while sft has written a checkpoint
    proc = subprocess.Popen([sys.executable, "-m", "zhongjing", "pipeline", "--config", str(cfg_path)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = work / "sft" / "checkpoints"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any((p / "trainer" / "state.json").exists() for p in ckpts.iterdir()):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the pipeline ended before sft wrote a checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the stage process dies with the pipeline (PR_SET_PDEATHSIG)
    st = state(work)
    assert [s for s in ORDER if st.get(s, {}).get("status") == "done"] == ["init", "build", "pt"]
    assert st["sft"]["status"] == "running" and not (work / "sft" / "meta.json").exists()

    # 2. rerun: finished stages skipped, sft resumes from its checkpoint, the rest runs
    out = run(cfg_path).stdout
    assert actions(work) == {"init": "skipped", "build": "skipped", "pt": "skipped", "sft": "resumed",
                             **{s: "ran" for s in ORDER[4:]}}
    assert "resumed from" in (work / "logs" / "sft.log").read_text()
    assert "SIMULATED" in out and "SIMULATED" in (work / "summary.md").read_text()
    check_outputs(work)

    # 3. rerun: everything is up to date
    run(cfg_path)
    assert set(actions(work).values()) == {"skipped"}


def check_outputs(work: Path) -> None:
    """Every stage's output exists and loads with the loader its consumers use."""
    from zhongjing.data.readers import read_dialogues, read_rankings
    from zhongjing.model.load import load_model, load_tokenizer, read_meta
    from zhongjing.model.value_head import load_reward_model

    for name in ("base", "pt", "sft", "ppo"):
        load_tokenizer(work / name)
        assert load_model(work / name) is not None
    assert read_meta(work / "sft")["base_model"] == str((work / "pt").resolve())
    assert read_meta(work / "rm")["parent"] == str((work / "sft").resolve())  # the demo's rm_parent: sft
    assert load_reward_model(work / "rm")[0] is not None
    for split in ("train", "validation", "test"):
        assert list(read_dialogues(str(work / "data" / f"{split}.jsonl")))
    answers = list(read_rankings(str(work / "generate" / "answers.jsonl")))
    assert answers and all(len(r.responses) == 4 and not r.ranking for r in answers)
    ranked = list(read_rankings(str(work / "rank" / "rankings.jsonl")))
    assert len(ranked) == len(answers) and all(r.ranking and r.annotators == ["simulated"] for r in ranked)
    results = json.loads((work / "eval" / "results.json").read_text())
    assert any("SIMULATED" in n for n in results["meta"]["notes"])  # the report says where the rankings came from
    assert "SIMULATED" in (work / "eval" / "report.md").read_text()
    pairs = {(r["target"], r["baseline"]) for r in results["pairwise"]}
    assert {("aligned", "sft"), ("aligned", "pt"), ("aligned", "base")} <= pairs
    assert {r["model"] for r in results["leaderboard"]["rows"]} == {"aligned", "sft", "pt", "base"}
    assert results["judge_validation"][0]["file"] == "zhongjing/demo/preference_pairs.jsonl"
    assert any(not r["primary"] and "reward model" in r["judge"] for r in results["judge_validation"])
    summary = json.loads((work / "summary.json").read_text())
    assert summary["model"] == str((work / "ppo").resolve())
    assert all(r["summary"].get("cpu_seconds") is not None for r in summary["stages"])


# ------------------------------------------------------------------------------------------ config checks (fast)

def _load(overrides: list[str], path: Path = REPO / "configs" / "demo.yaml"):
    from zhongjing.pipeline.run import build_configs, load_pipeline_config

    return build_configs(load_pipeline_config(str(path), overrides))


def test_a_partial_run_points_only_at_what_exists(tmp_path):
    """`--only init,build` has trained no model and ranked nothing: no chat pointer, no report, no simulated note;
    a changed config is named as such in the plan."""
    cfg_path, _ = write_tiny_config(tmp_path)
    p = run(cfg_path, "--only", "init,build")
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["model"] is None and summary["report"] is None
    tail = p.stdout[p.stdout.index("## Pipeline summary"):]
    assert "chat with it" not in tail and "evaluation report" not in tail and "SIMULATED" not in tail
    # before a long run, --plan says which part of a stage's key changed
    lines = run(cfg_path, "init.vocab_size=640", "--plan").stdout.splitlines()
    init = next(line for line in lines if line.split()[:1] == ["init"])
    build = next(line for line in lines if line.split()[:1] == ["build"])
    assert "changed: config" in init and "output" not in init and "skip" in build


def test_a_validation_eval_judges_the_validation_split_and_never_overwrites_the_test_report(tmp_path):
    w, configs = _load([f"work_dir={tmp_path}"])
    assert configs["eval"].output == str(tmp_path / "eval")
    t = configs["eval"].testsets[0]  # the built split first, then the config's own sets
    assert (t.name, t.path) == ("test", str(tmp_path / "data" / "test.jsonl"))
    w, configs = _load([f"work_dir={tmp_path}", "splits.eval=validation"])
    assert configs["eval"].output == str(tmp_path / "eval-validation") == str(w.output("eval").parent)
    t = configs["eval"].testsets[0]
    assert (t.name, t.path) == ("validation", str(tmp_path / "data" / "validation.jsonl"))


def test_demo_and_paper_configs_wire_every_stage(tmp_path):
    from zhongjing.pipeline.stages import STAGES

    w, configs = _load([f"work_dir={tmp_path}"])
    assert set(configs) == {"init", "build", "pt", "sft", "generate", "rank", "rm", "ppo", "eval"}
    assert configs["sft"].model == str(tmp_path / "pt") and configs["rm"].model == str(tmp_path / "sft")
    assert configs["eval"].target == "aligned" and configs["eval"].ablation.before == "sft"
    # every model of the chain is compared with the aligned one (one Bradley–Terry table ranks them all)
    assert [(m.name, m.path) for m in configs["eval"].models] == [
        ("aligned", str(tmp_path / "ppo")), ("sft", str(tmp_path / "sft")), ("pt", str(tmp_path / "pt")),
        ("base", str(tmp_path / "base"))]
    assert [j.reward_model for j in configs["eval"].validation_judges] == [str(tmp_path / "rm")]
    assert "sft" in STAGES["rm"].reads(w)  # the demo's reward model starts from the SFT model (rm_parent: sft)
    w, configs = _load([f"work_dir={tmp_path}", "rm_parent=pt"])  # or from the pre-trained one, as the paper
    assert configs["rm"].model == str(tmp_path / "pt") and "sft" not in STAGES["rm"].reads(w)
    base = tmp_path / "base-model"
    base.mkdir()
    w, configs = _load([f"work_dir={tmp_path}/paper", f"base_model={base}"],
                       REPO / "configs" / "paper" / "pipeline.yaml")
    assert "init" not in configs and configs["pt"].model == str(base.resolve())
    for stage, cfg in configs.items():
        if stage in STAGES:
            assert type(cfg).__name__ == STAGES[stage].config_class


@pytest.mark.parametrize("override, message", [
    (["sft.model=/elsewhere"], "sft.model is wired by the pipeline"),
    (["rm.no_such_key=1"], "section 'rm': unknown config key 'no_such_key'"),
    (["sft.train.lr=fast"], "sft"),
    (["stages=[init,build,pt,sft,rm,eval]"], "rm needs rank"),
    (["splits.generate=dev"], "splits.generate"),
    (["splits.eval=train"], "splits.eval: expected test or validation"),
    (["rm_parent=base"], "rm_parent: expected pt or sft"),
    (["stages=[init,build,pt,rank,rm]", "rankings=exported.jsonl", "rm_parent=sft"], "rm needs sft"),
])
def test_bad_pipeline_configs_are_one_line_errors(tmp_path, override, message):
    from zhongjing.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        _load([f"work_dir={tmp_path}", *override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_rejects_unknown_stage_and_conflicting_flags():
    from zhongjing.cli import main

    assert main(["pipeline", "--config", str(REPO / "configs" / "demo.yaml"), "--only", "dpo"]) == 2
    assert main(["pipeline", "--config", str(REPO / "configs" / "demo.yaml"), "--from", "sft", "--only", "rm"]) == 2


def test_a_stage_outside_the_chain_cannot_be_selected(tmp_path):
    from zhongjing.errors import ConfigError
    from zhongjing.pipeline.run import load_pipeline_config, plan
    from zhongjing.pipeline.state import State

    cfg = load_pipeline_config(str(REPO / "configs" / "demo.yaml"), [f"work_dir={tmp_path}", f"base_model={tmp_path}"])
    with pytest.raises(ConfigError, match="'init' is not part of this chain"):
        plan(cfg, State(tmp_path), only=["init"])
    assert [p.action for p in plan(cfg, State(tmp_path))] == ["off"] + ["run"] * 8


def test_plan_names_a_missing_base_model(tmp_path):
    """`--plan` is the check before a multi-day run: a base_model typo must not surface only when pt starts."""
    from zhongjing.errors import ConfigError
    from zhongjing.pipeline.run import load_pipeline_config, plan
    from zhongjing.pipeline.state import State

    cfg = load_pipeline_config(str(REPO / "configs" / "paper" / "pipeline.yaml"),
                               [f"work_dir={tmp_path}", f"base_model={tmp_path}/no-such-model"])
    with pytest.raises(ConfigError, match="base_model: .*no-such-model: no such folder") as e:
        plan(cfg, State(tmp_path))
    assert "\n" not in str(e.value)


def _fake_stage(stopped_at: str | None):
    """Stand-in for the stage processes: writes a minimal finished output (training stages with a checkpoint,
    generate with a partial file), or is "killed" (KeyboardInterrupt) on `stopped_at` before doing anything."""
    def run_stage(p, cfg, w):
        if p.stage == stopped_at:
            raise KeyboardInterrupt
        out = w.output(p.stage)
        if p.stage in ("init", "pt", "sft", "rm", "ppo"):
            (out / "checkpoints" / "step-000003").mkdir(parents=True, exist_ok=True)
            (out / "checkpoints" / "step-000003" / "state.json").write_text(f'{{"key": "{p.key}"}}')
            (out / "config.json").write_text("{}")
            (out / "meta.json").write_text(json.dumps({"key": p.key}))
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"key": p.key}) + "\n")
            if p.stage == "generate":
                out.with_name(out.name + ".partial").write_text(json.dumps({"key": p.key}) + "\n")
    return run_stage


@pytest.mark.parametrize("override, stage", [("rm.train.lr=5e-4", "rm"), ("generate.temperature=0.5", "generate")])
def test_a_changed_stage_killed_before_it_starts_never_resumes_the_old_run(tmp_path, monkeypatch, override, stage):
    """Killed between "running" and the stage process clearing its folder, the rerun must not continue the
    earlier run's checkpoints / partial answers (another config) and record them under the new key."""
    import zhongjing.pipeline.run as pl
    import zhongjing.pipeline.report as report
    from zhongjing.pipeline.state import State

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(report, "stage_summary", lambda *a, **k: {})
    monkeypatch.setattr(report, "write_summary", lambda *a, **k: {"text": ""})
    work = tmp_path / "work"
    base = [f"work_dir={work}"]
    monkeypatch.setattr(pl, "run_stage", _fake_stage(None))
    pl.run_pipeline(pl.load_pipeline_config(str(REPO / "configs" / "demo.yaml"), base), out=lambda *a: None)
    out = work / stage if stage == "rm" else work / "generate" / "answers.jsonl"
    old = out / "checkpoints" if stage == "rm" else out.with_name(out.name + ".partial")
    assert old.exists()

    monkeypatch.setattr(pl, "run_stage", _fake_stage(stage))
    cfg = pl.load_pipeline_config(str(REPO / "configs" / "demo.yaml"), [*base, override])
    with pytest.raises(KeyboardInterrupt):
        pl.run_pipeline(cfg, out=lambda *a: None)
    assert state(work)[stage]["status"] == "running"
    assert {p.stage: p.action for p in pl.plan(cfg, State(work))}[stage] == "resume"
    assert not old.exists(), "the earlier run's resume point survived: the rerun would continue it"
    if stage == "generate":
        assert not out.exists()


def test_launcher_is_found_next_to_python_or_named_before_anything_runs(tmp_path, monkeypatch):
    """`.venv/bin/zhongjing pipeline` from a shell without the venv activated: `accelerate` is not on PATH but in
    the venv's bin/ — it was a FileNotFoundError traceback when pt started, after build had run."""
    import zhongjing.pipeline.run as pl
    from zhongjing.errors import ConfigError
    from zhongjing.pipeline.state import State

    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "accelerate").write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(pl.sys, "executable", str(bindir / "python"))
    argv = pl.launch_argv("accelerate launch --config_file configs/accelerate/zero2.yaml")
    assert argv == [str(bindir / "accelerate"), "launch", "--config_file", "configs/accelerate/zero2.yaml"]
    cfg = pl.load_pipeline_config(str(REPO / "configs" / "demo.yaml"), [f"work_dir={tmp_path / 'w'}",
                                                                        "launch=no-such-launcher --x"])
    with pytest.raises(ConfigError, match="launch: 'no-such-launcher' is neither on PATH nor in") as e:
        pl.plan(cfg, State(tmp_path / "w"))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("stage, table4", [("pt", (5e-5, 32, 4, 16, 4)), ("sft", (7e-5, 16, 3, 16, 4)),
                                           ("rm", (1e-4, 16, 10, 32, 4)), ("ppo", (5e-5, 16, 2, 8, 4))])
def test_paper_pipeline_follows_table_4_and_the_stage_configs(tmp_path, stage, table4):
    """configs/paper/pipeline.yaml carries Table 4, the same values as the standalone configs/paper/<stage>.yaml."""
    from zhongjing.config import load_config

    _, configs = _load([f"work_dir={tmp_path}", f"base_model={tmp_path}"], REPO / "configs" / "paper" / "pipeline.yaml")
    alone = load_config(type(configs[stage]), REPO / "configs" / "paper" / f"{stage}.yaml")
    for cfg in (configs[stage], alone):
        t = cfg.train
        assert (t.lr, cfg.lora.r, t.epochs, t.batch_size, t.grad_accum) == table4


def test_rm_summary_puts_each_trivial_baseline_beside_its_accuracy(tmp_path):
    from types import SimpleNamespace

    from zhongjing.pipeline.report import rm_summary

    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "meta.json").write_text(json.dumps({
        "metrics": {"val_accuracy": 0.64, "val_margin": 0.5, "val_longer_wins": 0.58, "val_relevance": 0.7,
                    "data_relevance": 0.67, "val_relevance_overlap": 0.74, "data_relevance_overlap": 0.76},
        "relevance": {"data_files": ["test.jsonl"]},
        "pair_kinds": {"real_vs_sample": {"pairs": 378, "accuracy": 0.754, "longer_wins": 0.688},
                       "sample_vs_sample": {"pairs": 286, "accuracy": 0.521, "longer_wins": 0.699}}}),
        encoding="utf-8")
    text = rm_summary("rm", SimpleNamespace(output=lambda s: tmp_path / s), None)["text"]
    assert "pairwise accuracy 0.640 (chance 0.5; the longer answer wins: 0.580)" in text
    assert ("by kind of pair: real vs sample 0.754 (longer wins 0.688, 378 pairs); sample vs sample 0.521 (longer "
            "wins 0.699, 286 pairs)") in text
    assert "0.700 (bigram overlap: 0.740) held-out rankings, 0.670 (bigram overlap: 0.760) on test.jsonl" in text
    meta = json.loads((tmp_path / "rm" / "meta.json").read_text(encoding="utf-8"))
    meta["pair_kinds"] = {"other": {"pairs": 40, "accuracy": 0.64, "longer_wins": 0.58}}  # the demo's only kind
    (tmp_path / "rm" / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    assert "by kind" not in rm_summary("rm", SimpleNamespace(output=lambda s: tmp_path / s), None)["text"]
