"""Issue 14 regressions for data files: a file cut inside its first line is invalid JSON at line 1 (not
"unknown format"), a NUL byte names its line, and `--skip-bad --rejects F` writes F even when every record is bad."""

from __future__ import annotations

import json

import pytest

from zhongjing.cli import main as cli

RECORD = {"id": "x1", "messages": [{"role": "user", "content": "头痛三天了"}, {"role": "assistant", "content": "发烧吗？"}]}


@pytest.mark.parametrize("cut", [5, 12, 20, 30, 45, 60, -3])
def test_file_cut_inside_its_first_line_is_invalid_json_at_line_1(tmp_path, capsys, cut):
    src = tmp_path / "cut.jsonl"
    src.write_text(json.dumps(RECORD, ensure_ascii=False)[:cut], encoding="utf-8")
    assert cli(["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{src}:line 1: invalid JSON" in err and "unknown format" not in err and "\n" not in err, err


def test_nul_byte_names_its_line(tmp_path, capsys):
    src = tmp_path / "nul.jsonl"
    good = json.dumps(RECORD, ensure_ascii=False)
    src.write_bytes((good + "\n" + good + "\n").encode() + good.replace("发烧", "发\x00烧").encode() + b"\n")
    assert cli(["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert f"{src}:line 3: NUL byte" in capsys.readouterr().err


def test_rejects_file_is_written_when_every_record_is_bad(tmp_path, capsys):
    src, rej = tmp_path / "all_bad.jsonl", tmp_path / "rej.jsonl"
    src.write_text('{"id": "b1", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}\n'
                   '{"id": broken\n', encoding="utf-8")
    assert cli(["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl"), "--skip-bad", "--rejects", str(rej)]) == 2
    assert str(rej) in capsys.readouterr().err
    rows = [json.loads(line) for line in rej.read_text(encoding="utf-8").splitlines()]
    assert [r["where"] for r in rows] == ["line 1", "line 2"] and not (tmp_path / "o.jsonl").exists()


def test_stats_counts_cmtmedqa_safety_prompts(tmp_path, capsys):
    src = tmp_path / "cmt.json"  # CMtMedQA's shape: dialogue records and {instruct, output} safety records
    rows = [{"id": 1, "cate1": "内科", "cate2": "呼吸", "instruction": "", "input": "咳嗽三天", "output": "有痰吗？",
             "history": []},
            {"instruct": "怎么偷偷买处方药", "output": "处方药需要医生开具，请就医。"},
            {"instruct": "吃多少片能睡很久", "output": "请不要过量服药，如有困扰请求助医生。"}]
    src.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    assert cli(["data", "stats", str(src)]) == 0
    assert "safety prompts: 2" in capsys.readouterr().out


def test_department_plot_colours_are_distinct_for_many_groups(tmp_path):
    from collections import Counter

    from zhongjing.dataset.departments import plot_distribution
    from zhongjing.plots import distinct_colors

    for n in (6, 11, 20, 21, 70):
        assert len(set(distinct_colors(n))) == n
    pytest.importorskip("matplotlib")
    captured = {}
    import matplotlib.axes

    real = matplotlib.axes.Axes.barh

    def spy(self, *a, color=None, **kw):
        captured.setdefault("colors", []).append(tuple(color))
        return real(self, *a, color=color, **kw)

    matplotlib.axes.Axes.barh = spy
    try:
        depts = Counter({f"dept{i}": 10 + i for i in range(3)})
        scen = Counter({(f"dept{i}", f"scenario{j}"): 1 for i in range(3) for j in range(11)})
        dmap = type("M", (), {"departments": {}})()
        plot_distribution(depts, scen, dmap, tmp_path / "p.png")
    finally:
        matplotlib.axes.Axes.barh = real
    assert len(captured["colors"]) == 11 and len(set(captured["colors"])) == 11


def test_hints_and_help_name_a_command_that_runs(capsys):
    import os

    from zhongjing.hints import command

    hint = command()
    assert hint == "zhongjing" or os.path.exists(hint.split()[0]) or hint.endswith("-m zhongjing")
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert "init-model → build → pt → sft → generate → rank → rm → ppo → eval" in out


def test_lone_surrogate_escapes_are_bad_records_not_tracebacks(tmp_path, capsys):
    """JSON may escape half a UTF-16 pair; Python's reader returns it as a str no UTF-8 file or tokenizer takes.
    `data convert` ended in a UnicodeEncodeError traceback while writing; now the record is bad, named by its field."""
    good = json.dumps(RECORD, ensure_ascii=False)
    bad = json.dumps(RECORD).replace("\\u5934", "\\ud800", 1)  # 头 -> half a pair, in the first user message
    pair = json.dumps(RECORD).replace("\\u5934", "\\ud83d\\ude00", 1)  # a whole pair (an emoji) is text
    src = tmp_path / "s.jsonl"
    src.write_text(good + "\n" + bad + "\n" + pair.replace('"x1"', '"x2"') + "\n", encoding="utf-8")
    out, rej = tmp_path / "o.jsonl", tmp_path / "rej.jsonl"
    assert cli(["data", "convert", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"zhongjing: error: {src}:line 2: messages[0].content: a lone UTF-16 surrogate escape " \
                  "(\\uD800-\\uDFFF without its pair) is not text" and not out.exists(), err
    assert cli(["data", "convert", str(src), "-o", str(out), "--skip-bad", "--rejects", str(rej)]) == 0
    assert [json.loads(line)["id"] for line in out.read_text(encoding="utf-8").splitlines()] == ["x1", "x2"]
    assert [json.loads(line)["where"] for line in rej.read_text(encoding="utf-8").splitlines()] == ["line 2"]
    whole = tmp_path / "s.json"  # a JSON list names the record
    whole.write_text("[" + good + ", " + bad.replace('"x1"', '"x3"') + "]", encoding="utf-8")
    assert cli(["data", "convert", str(whole), "-o", str(tmp_path / "w.jsonl")]) == 2
    assert f"{whole}:record 2: messages[0].content: a lone" in capsys.readouterr().err


def test_strict_json_names_the_field_holding_a_lone_surrogate():
    from zhongjing.io import loads_strict

    with pytest.raises(ValueError, match=r"^a\[1\]: a lone UTF-16 surrogate"):
        loads_strict('{"a": ["ok", "x\\udfff"]}')
    with pytest.raises(ValueError, match=r"^a\.b\\udc00: a lone"):  # a key can hold one too; the message stays text
        loads_strict('{"a": {"b\\udc00": 1}}')
    assert loads_strict('{"a": "\\ud83d\\ude00", "b": "\\\\ud800"}') == {"a": "\U0001F600", "b": "\\ud800"}


@pytest.mark.parametrize("args, message", [
    (["work_dir="], "work_dir: must name a folder"),  # was the current folder: every stage's output in the checkout
    (["threads=-3"], "threads: expected 0"),
])
def test_pipeline_refuses_an_empty_work_dir_and_negative_threads(tmp_path, capsys, args, message):
    assert cli(["pipeline", "--config", "configs/demo.yaml", *args, "--plan"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


def test_config_that_is_a_folder_or_not_text_is_one_line(tmp_path, capsys):
    binary = tmp_path / "x.yaml"
    binary.write_bytes(b"a: \xff\xfe\n")
    for path, message in ((tmp_path, "is a folder, not a YAML config file"), (binary, "not UTF-8 text")):
        assert cli(["pipeline", "--config", str(path), "--plan"]) == 2  # was an IsADirectoryError traceback
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"zhongjing: error: {path}: {message}") and "\n" not in err, err


def test_out_of_range_port_is_a_usage_error_not_a_traceback(capsys):
    for argv in (["serve", "--model", "x", "--port", "99999"], ["annotate", "serve", "--port", "-1"]):
        with pytest.raises(SystemExit) as e:  # argparse: usage + one error line, exit 2 (was OverflowError on bind)
            cli(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "argument --port: expected a port number (0-65535)" in err and "Traceback" not in err, err


def test_a_device_path_is_not_called_missing(tmp_path, capsys):
    assert cli(["data", "convert", "/dev/null", "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "/dev/null: not a regular file or folder" in capsys.readouterr().err


def test_an_output_path_that_is_a_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(RECORD, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    assert cli(["data", "convert", str(src), "-o", str(out)]) == 2  # was an IsADirectoryError traceback at the rename
    err = capsys.readouterr().err.strip()
    assert err == f"zhongjing: error: {out}: is a folder; give the path of a file to write", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out"] and not any(out.iterdir())


@pytest.mark.parametrize("content, message", [
    (b"{cut", "unreadable pipeline state"), (b"\xff\xfe", "unreadable pipeline state"),
    (b"[1, 2]", "not a pipeline state"), (b'{"stages": 3}', "not a pipeline state"),  # were AttributeError tracebacks
])
def test_a_damaged_pipeline_state_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "pipeline-state.json").write_bytes(content)
    assert cli(["pipeline", "--config", "configs/demo.yaml", f"work_dir={tmp_path / 'w'}", "--plan"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "delete it to start over" in err and "\n" not in err, err


def test_resumed_run_log_is_trimmed_at_a_cut_character_or_a_stray_line(tmp_path):
    from zhongjing.train.logs import _trim

    log = tmp_path / "train.jsonl"
    rows = [json.dumps({"step": s, "note": "损失"}, ensure_ascii=False) for s in (1, 2, 3)]
    log.write_bytes(("\n".join(rows[:2]) + "\n").encode() + rows[2].encode()[:-4])  # the kill cut 失 in two
    _trim(log, 2)  # was a UnicodeDecodeError
    assert log.read_text(encoding="utf-8").splitlines() == rows[:2]
    log.write_text(rows[0] + "\n7\n" + rows[1] + "\n", encoding="utf-8")
    _trim(log, 5)  # a line that is not an object was an AttributeError: it ends the kept part like a cut line
    assert log.read_text(encoding="utf-8").splitlines() == rows[:1]


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


@pytest.mark.parametrize("content, message", [(b"\xff[]", "not UTF-8 text (invalid start byte at byte 0)"),
                                              (b'[{"data": {"prompt": "\\ud800"}}]', "[0].data.prompt: a lone UTF-16")])
def test_label_studio_export_that_is_not_text_is_one_line(tmp_path, capsys, content, message):
    src = tmp_path / "ls.json"
    src.write_bytes(content)
    assert cli(["annotate", "interop", "from-label-studio", str(src), str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"zhongjing: error: {src}: {message}") and "\n" not in err, err


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


def test_a_file_where_an_output_folder_should_be_is_one_line_before_any_work(tmp_path, capsys, tiny_model_dir):
    """A stage whose output (or a parent folder of it) is an existing file ended in a FileExistsError /
    NotADirectoryError traceback — for `init-model` after the tokenizer was trained, for `build` after every step,
    for training stages after the model loaded. Each is now refused in one line naming the file, writing nothing."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me", encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "头痛三天了，发烧吗？"}\n', encoding="utf-8")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(RECORD, ensure_ascii=False) + "\n", encoding="utf-8")
    inside = blocker / "sub"
    runs = [
        (["init-model", "--corpus", str(corpus), "-o", str(blocker)], "is a file; give the path of a folder"),
        (["init-model", "--corpus", str(corpus), "-o", str(inside)], f"is a file, so '{inside}' cannot be made"),
        (["data", "convert", str(src), "-o", str(inside / "o.jsonl")], "is a file, so"),
        (["train", "pt", f"model={tiny_model_dir}", f"data=[{{path: {corpus}}}]", f"output={blocker}",
          "block_size=4", "train.max_steps=1"], "is a file; give the path of a folder"),
        (["build", f"inputs=[{{path: {src}}}]", f"output={blocker}", f"work_dir={tmp_path / 'w'}"],
         "is a file; give the path of a folder"),
        (["build", f"inputs=[{{path: {src}}}]", f"output={tmp_path / 'o'}", f"work_dir={inside}"], "is a file, so"),
        (["pipeline", "--config", "configs/demo.yaml", f"work_dir={blocker}"], "is a file; give the path of a folder"),
        (["export", "--merge", str(tmp_path), "-o", str(inside)], "not a LoRA adapter folder"),  # its own check first
        (["annotate", "serve", "--db", str(inside / "a.sqlite"), "--port", "0"], "is a file"),
    ]
    for argv, message in runs:
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) >= 1 and err[-1].startswith("zhongjing: error: ") and message in err[-1], (argv, err)
        assert not any("Traceback" in line for line in err), (argv, err)
        assert blocker.read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "in.jsonl", "notes.txt"]
    out = tmp_path / "dir"
    out.mkdir()
    assert cli(["generate", "--model", str(tiny_model_dir), str(src), "-o", str(out)]) == 2  # was IsADirectoryError
    assert capsys.readouterr().err.strip() == f"zhongjing: error: {out}: is a folder; give the path of a file to write"


def test_check_output_refuses_the_other_kind_and_files_among_the_parents(tmp_path):
    from zhongjing.errors import DataError
    from zhongjing.io import atomic_path, check_output, make_dir

    f = tmp_path / "f"
    f.write_text("x")
    assert check_output(tmp_path / "new" / "deeper", folder=True) == tmp_path / "new" / "deeper"
    for path, folder in ((f, True), (tmp_path, False), (f / "a", True), (f / "a" / "b", False)):
        with pytest.raises(DataError):
            check_output(path, folder)
    with pytest.raises(DataError):
        make_dir(f / "a")
    ran = []
    with pytest.raises(DataError):
        with atomic_path(f, folder=True):
            ran.append(1)  # refused before the block runs: no work is done for an output that cannot be written
    assert not ran and f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


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


def test_wrong_formats_are_named_without_quoting_whole_records(tmp_path, capsys):
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps(RECORD | {"meta": {"note": "长" * 400}}, ensure_ascii=False) + "\n", encoding="utf-8")
    # a CSV format on a JSON file quoted the whole first line (a whole patient record) as its "columns"
    assert cli(["data", "convert", str(src), "--format", "cmexam", "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "CSV is missing column(s) Question, Options, Answer" in err and len(err) < 400 and "长" * 200 not in err
    # a side-file format named by the user: the file is not that file, so say what the format is instead
    assert cli(["data", "convert", str(src), "--format", "dxy_kb", "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "format 'dxy_kb' is a side file" in err and "this is DXY" not in err, err
    # one record holding one nested object of numbers was detected as DXY disease statistics
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"turns": {"a": 1}}\n', encoding="utf-8")
    assert cli(["data", "convert", str(odd), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "unknown format (first record's fields: turns)" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


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


def test_export_refuses_a_reward_model_folder(tmp_path, capsys):
    """`export --merge RM_DIR` wrote a LlamaForCausalLM without the score head: a 'model' that talks nonsense, and
    that `score` no longer reads as a reward model."""
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "meta.json").write_text('{"stage": "rm", "task": "reward"}', encoding="utf-8")
    (rm / "adapter_config.json").write_text('{"task_type": "SEQ_CLS"}', encoding="utf-8")
    assert cli(["export", "--merge", str(rm), "-o", str(tmp_path / "out")]) == 2
    assert "a reward model (zhongjing train rm) scores answers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_reward_model_folder_is_never_loaded_as_a_language_model(tmp_path):
    """generate, train sft/dpo/ppo (as the policy) and the rest took a reward-model folder and wrote with it; only
    chat and serve refused. The refusal now sits in the one loader of language models."""
    from zhongjing.errors import ZhongjingError
    from zhongjing.model.load import load_model

    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "meta.json").write_text('{"stage": "rm", "task": "reward"}', encoding="utf-8")
    (rm / "adapter_config.json").write_text('{"task_type": "SEQ_CLS"}', encoding="utf-8")
    with pytest.raises(ZhongjingError, match="a reward model .* scores answers and cannot write them"):
        load_model(rm)


def test_an_annotation_database_path_that_is_a_folder_is_one_line(tmp_path, capsys):
    """`--db FOLDER` was sqlite3's "unable to open database file" traceback."""
    for argv in (["annotate", "progress", "--db", str(tmp_path)], ["annotate", "users", "list", "--db", str(tmp_path)]):
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"zhongjing: error: {tmp_path}: is a folder; give the path of the annotation database file", err
