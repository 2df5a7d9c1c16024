"""Issue 14 regressions for files and folders: bad data files (cut, NUL bytes, lone surrogates, wrong formats) are
one bad record or one line naming where; outputs that cannot be written (a folder where a file goes, a file where a
folder goes) are refused before any work; damaged state, logs and checkpoints are named; a reward-model folder is
never loaded as a language model. Settings and flags: test_harden_ranges.py."""

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


def test_config_that_is_a_folder_or_not_text_is_one_line(tmp_path, capsys):
    binary = tmp_path / "x.yaml"
    binary.write_bytes(b"a: \xff\xfe\n")
    for path, message in ((tmp_path, "is a folder, not a YAML config file"), (binary, "not UTF-8 text")):
        assert cli(["pipeline", "--config", str(path), "--plan"]) == 2  # was an IsADirectoryError traceback
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"zhongjing: error: {path}: {message}") and "\n" not in err, err


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
    # score checked its -o only after loading the reward model and scoring every answer
    assert cli(["score", "--rm", str(tmp_path / "no-such-rm"), str(src), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"zhongjing: error: {out}: is a folder; give the path of a file to write"


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


@pytest.mark.parametrize("content, message", [(b"\xff[]", "not UTF-8 text (invalid start byte at byte 0)"),
                                              (b'[{"data": {"prompt": "\\ud800"}}]', "[0].data.prompt: a lone UTF-16")])
def test_label_studio_export_that_is_not_text_is_one_line(tmp_path, capsys, content, message):
    src = tmp_path / "ls.json"
    src.write_bytes(content)
    assert cli(["annotate", "interop", "from-label-studio", str(src), str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"zhongjing: error: {src}: {message}") and "\n" not in err, err


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
