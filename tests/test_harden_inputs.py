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
