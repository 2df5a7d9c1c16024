"""Issue 14 regressions for settings and flags: every number a config key or a command-line flag takes is checked
when it is read — NaN, inf, negative counts, impossible ranges and empty lists are one line naming the key, never a
traceback stages later, a NaN loss, a safeguard silently switched off, or a stage run that was not asked for."""

from __future__ import annotations

import json

import pytest

from zhongjing.cli import main as cli

RECORD = {"id": "x1", "messages": [{"role": "user", "content": "头痛三天了"}, {"role": "assistant", "content": "发烧吗？"}]}


@pytest.mark.parametrize("args, message", [
    (["work_dir="], "work_dir: must name a folder"),  # was the current folder: every stage's output in the checkout
    (["threads=-3"], "threads: expected 0"),
])
def test_pipeline_refuses_an_empty_work_dir_and_negative_threads(tmp_path, capsys, args, message):
    assert cli(["pipeline", "--config", "configs/demo.yaml", *args, "--plan"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_out_of_range_port_is_a_usage_error_not_a_traceback(capsys):
    for argv in (["serve", "--model", "x", "--port", "99999"], ["annotate", "serve", "--port", "-1"]):
        with pytest.raises(SystemExit) as e:  # argparse: usage + one error line, exit 2 (was OverflowError on bind)
            cli(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "argument --port: expected a port number (0-65535)" in err and "Traceback" not in err, err


def test_a_negative_sample_limit_is_a_config_error_naming_where(capsys):
    """`limit: -1` on a test set ended in random.sample's ValueError traceback after the models had loaded."""
    from zhongjing.config import from_dict
    from zhongjing.errors import ConfigError
    from zhongjing.eval.consultation import ConsultationConfig
    from zhongjing.eval.exams import ExamConfig
    from zhongjing.eval.rubric_grading import RubricSetConfig
    from zhongjing.eval.testsets import TestSetConfig
    from zhongjing.eval.validation import JudgeValidationConfig

    for cls in (TestSetConfig, ExamConfig, RubricSetConfig, ConsultationConfig, JudgeValidationConfig):
        with pytest.raises(ConfigError, match=r"^config x\[0\]: limit must be ≥ 0, got -1$"):
            from_dict(cls, {"limit": -1}, prefix="x[0].")
        assert from_dict(cls, {"limit": 0}).limit == 0
    assert cli(["eval", "models=[{name: a, path: x}]", "target=a", "testsets=[{name: t, path: y, limit: -1}]"]) == 2
    assert capsys.readouterr().err.strip() == "zhongjing: error: config testsets[0]: limit must be ≥ 0, got -1"
    assert cli(["eval", "models=[{name: a, path: x}]", "target=a", "report.bootstrap=-1"]) == 2  # was a numpy
    assert capsys.readouterr().err.strip() == "zhongjing: error: config report: bootstrap must be ≥ 1, got -1"


@pytest.mark.parametrize("override, message", [  # each was accepted and failed (or ran wrong) stages later
    ("splits.ppo_limit=-1", "splits.ppo_limit: expected 0 (all)"),
    ("generate.temperature=-1", "temperature must be >= 0"),
    ("generate.top_p=2", "top_p must be in (0, 1]"),
    ("rank.relevance_pairs=-5", "relevance_pairs must be ≥ 0"),
    ("rank.tie=-1", "tie must be ≥ 0"),
    ("ppo.eval_prompts=-1", "'eval_prompts': must be ≥ 0"),
    ("ppo.ppo.kl_coef=-1", "kl_coef must be ≥ 0"),
    ("ppo.ppo.clip_eps=0", "clip_eps must be > 0"),
    ("ppo.ppo.gamma=2", "gamma must be in [0, 1]"),
    ("ppo.generation.max_new_tokens=0", "max_new_tokens must be at least 1"),
    ("consult.episode.temperature=-0.5", "temperature must be >= 0"),
])
def test_out_of_range_stage_settings_are_refused_when_the_config_loads(tmp_path, capsys, override, message):
    args = ["pipeline", "--config", "configs/demo.yaml", f"work_dir={tmp_path}", override, "--plan"]
    if override.startswith("consult."):
        args.insert(-1, "stages=[init,build,pt,sft,consult]")
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_tie_margins_must_be_finite_and_not_negative(tmp_path, capsys, value):
    for argv in (["annotate", "suggest", "--reward-model", "x", "--tie", value, "a", "b"],
                 ["annotate", "simulate", "--tie", value, "-o", "o", "a"]):  # both took nan, inf and -1 silently
        with pytest.raises(SystemExit) as e:
            cli(argv)
        assert e.value.code == 2 and "argument --tie: expected a finite number ≥ 0" in capsys.readouterr().err


def test_consultation_cases_refuse_a_negative_limit(tmp_path, capsys):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps(RECORD, ensure_ascii=False) + "\n", encoding="utf-8")
    assert cli(["data", "cases", f"inputs=[{src}]", f"output={tmp_path / 'c.jsonl'}", "limit=-3"]) == 2  # was [:-3]
    assert "limit must be ≥ 0, got -3" in capsys.readouterr().err and not (tmp_path / "c.jsonl").exists()


@pytest.mark.parametrize("argv, flag, expected", [
    (["annotate", "serve", "--session-hours", "nan"], "--session-hours", "a finite number > 0"),  # served with NaN
    (["serve", "--model", "x", "--threads", "-2"], "--threads", "a whole number ≥ 1"),  # was torch's RuntimeError
    (["data", "stats", "x", "--top", "-1"], "--top", "a whole number ≥ 1"),  # listed nothing ([: -1])
])
def test_numeric_flags_refuse_nan_and_out_of_range_values(capsys, argv, flag, expected):
    with pytest.raises(SystemExit) as e:
        cli(argv)
    assert e.value.code == 2 and f"argument {flag}: expected {expected}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--temperature", "--repetition-penalty"])
def test_chat_refuses_nan_sampling_flags(capsys, flag):  # NaN passed the '< 0' / '<= 0' checks
    assert cli(["chat", "--model", "x", flag, "nan"]) == 2
    assert f"{flag} must be" in capsys.readouterr().err


def test_a_sampling_flag_set_after_the_config_loads_is_still_one_line(tmp_path, capsys):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps(RECORD, ensure_ascii=False) + "\n", encoding="utf-8")
    assert cli(["generate", "--model", "x", str(src), "-o", str(tmp_path / "g.jsonl"), "--temperature", "nan"]) == 2
    assert capsys.readouterr().err.strip() == "zhongjing: error: temperature must be a finite number, got nan"


@pytest.mark.parametrize("argv, message", [
    (["score", "--rm", "r", "f.jsonl", "--threads", "-1"], "argument --threads: expected a whole number ≥ 0"),  # torch
    (["score", "--rm", "r", "f.jsonl", "--batch-size", "0"], "argument --batch-size: expected a whole number ≥ 1"),
    (["data", "criteria", "--input", "f", "--output", "o", "--limit", "-2"],  # silently sliced [:-2]
     "argument --limit: expected a whole number ≥ 0"),
])
def test_negative_counts_on_the_command_line_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("stage, key, message", [
    ("dpo", "beta=nan", "'beta': must be positive, got nan"),  # trained to a NaN loss and wrote the model
    ("dpo", "val_ratio=-1", "'val_ratio': must be in [0, 1)"),  # held nothing out, silently
    ("dpo", "max_length=0", "max_length must be ≥ 1"),  # was "no usable rankings (too_long: …)"
    ("rm", "max_length=0", "max_length must be ≥ 1"),
    ("rm", "relevance_limit=-1", "relevance_limit must be ≥ 0"),
    ("sft", "group_size=0", "group_size must be ≥ 1"),  # 0 and −5 trained, batched some other way than asked
    ("sft", "pack_length=-5", "pack_length must be ≥ 0"),
])
def test_training_ranges_are_refused_when_the_config_loads(tmp_path, capsys, stage, key, message):
    assert cli(["train", stage, "model=nowhere", f"output={tmp_path / 'o'}", key]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("key, message", [
    ("train.seed=99999999999999999999999", "seed must be in [0, 4294967295]"),  # OverflowError traceback
    ("train.seed=-1", "seed must be in [0, 4294967295]"),  # numpy's ValueError traceback
    ("train.lr=1e400", "train.lr must be positive, got inf"),  # trained to a NaN loss and wrote the model
    ("train.lr=nan", "train.lr must be positive, got nan"),  # torch's traceback
    ("train.betas=[1.5,0.9]", "train.betas must each be in [0, 1)"),  # torch's traceback
    ("train.warmup_ratio=2", "warmup_ratio must be in [0, 1]"),  # accepted
    ("train.max_grad_norm=-1", "max_grad_norm must be ≥ 0"),  # accepted
    ("train.explode_lr_decay=0", "explode_lr_decay must be in (0, 1]"),
    ("train.eps=nan", "eps must be ≥ 0"),
])
def test_train_settings_ranges_are_refused_when_the_config_loads(tmp_path, capsys, key, message):
    assert cli(["train", "sft", "model=nowhere", f"output={tmp_path / 'o'}", key]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


@pytest.mark.parametrize("key, message", [
    ("monitor.tolerance=nan", "tolerance must be ≥ 0, got nan"),  # every comparison false: the monitor never flagged
    ("monitor.safety_tolerance=-1", "safety_tolerance must be ≥ 0"),
    ("reward.rm_weight=nan", "rm_weight must be a finite number"),  # trained on NaN rewards and wrote the policy
    ("reward.missing_eos_penalty=nan", "missing_eos_penalty must be ≥ 0"),
    ("reward.clip=-1", "clip must be > 0"),
    ("reward.rm_batch_size=0", "rm_batch_size must be ≥ 1"),  # range() traceback after the models loaded
])
def test_reward_and_monitor_ranges_are_refused_when_the_config_loads(tmp_path, capsys, key, message):
    assert cli(["train", "ppo", "model=nowhere", "prompts=[p.jsonl]", f"output={tmp_path / 'o'}", key]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


@pytest.mark.parametrize("key, message", [
    ("screen.max_turns=0", "1 ≤ min ≤ max"),  # screened every dialogue out and "finished" with none
    ("screen.min_turns=5 screen.max_turns=2", "1 ≤ min ≤ max"),
    ("split.multi_to_single=nan", "split.multi_to_single must be ≥ 0"),  # ValueError traceback at the mix
    ("departments.nb_min_confidence=nan", "nb_min_confidence must be a probability"),  # never confident, silently
    ("kg.min_term_len=0", "kg.min_term_len must be ≥ 1"),
    ("normalize.strip_boilerplate=-1", "strip_boilerplate must be ≥ 0"),
    ("rewrite.temperature=nan", "rewrite.temperature must be in [0, 2]"),
])
def test_build_ranges_are_refused_when_the_config_loads(tmp_path, capsys, key, message):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(RECORD, ensure_ascii=False) + "\n", encoding="utf-8")
    assert cli(["build", f"inputs=[{{path: {src}}}]", f"output={tmp_path / 'o'}", f"work_dir={tmp_path / 'w'}",
                *key.split()]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("key, message", [
    ("generation.chunk=0", "chunk must be ≥ 1"),  # range() traceback
    ("generation.batch_size=0", "batch_size must be ≥ 1"),  # failed after the models loaded
    ("judge.margin=nan", "margin must be ≥ 0, got nan"),  # every comparison false: no ties, silently
    ("judge.rubric_tie=-1", "rubric_tie must be ≥ 0"),
    ("judge.endpoint.timeout=0", "timeout must be > 0 seconds"),
    ("judge.endpoint.backoff=nan", "backoff must be ≥ 0"),
    ("leaderboard.prior=nan", "prior must be ≥ 0"),  # NaN ratings in the report
    ("consultation.max_turns=0", "max_turns must be ≥ 1"),
    ("judge_validation.max_pairs_per_ranking=0", "max_pairs_per_ranking must be ≥ 1"),
])
def test_eval_ranges_are_refused_when_the_config_loads(tmp_path, capsys, key, message):
    assert cli(["eval", f"output={tmp_path / 'o'}", "judge.backend=rubric", key]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("only", ["", ",", " "])
def test_an_empty_only_list_is_refused_not_the_whole_chain(tmp_path, capsys, only):
    """`--only "$STAGES"` with an empty variable planned every stage (and ran the whole chain)."""
    assert cli(["pipeline", "--config", "configs/demo.yaml", f"work_dir={tmp_path / 'w'}", "--only", only, "--plan"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--only: no stage named" in err and "\n" not in err, err


def test_an_empty_annotator_list_is_refused_not_everyone(tmp_path, capsys):
    """`--annotators "$NAMES"` with an empty variable assigned the batch to every active annotator."""
    src = tmp_path / "r.jsonl"
    src.write_text("{}\n", encoding="utf-8")
    assert cli(["annotate", "import", str(src), "--db", str(tmp_path / "a.sqlite"), "--batch", "b",
                "--annotators", " , "]) == 2
    assert "--annotators: no username in ' , '" in capsys.readouterr().err


@pytest.mark.parametrize("key, message", [
    ("cases_per_update=0", "cases_per_update must be ≥ 1"),  # ZeroDivisionError traceback
    ("update_epochs=0", "update_epochs must be ≥ 1"),  # IndexError traceback
    ("beta=nan", "beta must be ≥ 0, got nan"),  # trained to NaN and wrote the policy
    ("gamma=2", "gamma must be in [0, 1]"),
    ("clip_eps=0", "clip_eps must be > 0"),
    ("patient.max_facts=-1", "max_facts must be ≥ 1"),  # revealed nothing, silently
    ("reward.advice=nan", "advice must be a finite number"),
    ("exam_reward.correct=inf", "correct must be a finite number"),
])
def test_consult_ranges_are_refused_when_the_config_loads(tmp_path, capsys, key, message):
    assert cli(["train", "consult", "model=nowhere", "cases=c.jsonl", f"output={tmp_path / 'o'}", key]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err
