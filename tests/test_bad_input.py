"""Malformed input through the real CLI: one line naming file, line/record and reason, exit code 2,
no traceback, and nothing left behind (no output, no temp file). `--skip-bad` converts the good
records and writes one reject row per bad record without the patient's full text."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zhongjing.cli import main as cli

GOOD = {"id": "g1", "messages": [{"role": "user", "content": "头疼三天了"}, {"role": "assistant", "content": "发烧吗？"}]}


def jl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


def msgs(*pairs, id="x") -> dict:
    return {"id": id, "messages": [{"role": r, "content": c} for r, c in pairs]}


def sharegpt(*pairs) -> dict:
    return {"conversations": [{"from": f, "value": v} for f, v in pairs]}


# (case id, file name, content, extra CLI args, expected location or None for the whole file, reason regex)
CASES = [
    ("bad-json-line", "a.jsonl", jl(GOOD, '{"id": "g2", "messages": [}'), [], "line 2", r"invalid JSON"),
    ("broken-json-list", "a.json", '[\n  {"instruction": "头疼", "output": "发烧吗"},\n  {"instruction": "咳嗽", "outp',
     [], "line 3", r"invalid JSON"),
    ("wrong-role-order", "a.jsonl", jl(GOOD, msgs(("user", "头疼"), ("user", "还咳嗽"))), [], "line 2",
     r"wrong role order: message 1 is 'user', expected 'assistant'"),
    ("assistant-first", "a.jsonl", jl(msgs(("assistant", "你好"), ("user", "头疼"))), [], "line 1", r"wrong role order"),
    ("empty-turn", "a.jsonl", jl(sharegpt(("human", "头疼"), ("gpt", "   "))), [], "line 1", r"message 1 \(assistant\) is empty"),
    ("unknown-sharegpt-role", "a.jsonl", jl(sharegpt(("human", "头疼"), ("observation", "x"))), [], "line 1",
     r"unknown role 'observation'"),
    ("unknown-openai-role", "a.jsonl", jl({"messages": [{"role": "user", "content": "头疼"}, {"role": "tool", "content": "x"}]}),
     [], "line 1", r"unknown role 'tool'"),
    ("non-string-content", "a.jsonl", jl(msgs(("user", "头疼"), ("assistant", 42))), [], "line 1", r"content must be a string, got int"),
    ("missing-field", "a.json", json.dumps([{"instruction": "头疼", "output": "发烧吗"}, {"instruction": "咳嗽"}], ensure_ascii=False),
     [], "record 2", r"missing field 'output'"),
    ("not-an-object", "a.jsonl", jl(GOOD, "[1, 2]"), [], "line 2", r"expected a JSON object, got list"),
    ("undecodable-bytes", "a.txt", b"\xe5\xa4\xb4\xe7\x96\xbc\nabc \xff\xfe\xff\n", [], "line 2",
     r"cannot decode bytes ff fe ff.*not utf-8 and not gb18030"),
    ("unknown-encoding", "a.txt", "头疼\n".encode(), ["--encoding", "klingon-8"], None, r"unknown encoding 'klingon-8'"),
    ("binary-file", "a.json", b"\x00\x01\x02{}", [], None, r"binary file"),
    ("empty-file", "a.jsonl", "  \n\n", [], None, r"empty file"),
    ("unknown-format", "a.jsonl", jl({"foo": 1, "bar": 2}), [], None, r"unknown format \(first record's fields: foo, bar\)"),
    ("ranking-bad-indices", "a.jsonl",
     jl({"id": "r1", "messages": [{"role": "user", "content": "头疼"}], "responses": ["a", "b"], "ranking": [0, 0]}),
     [], "line 1", r"'ranking' \[0, 0\] must name each of the 2 responses exactly once"),
    ("ranking-ends-with-doctor", "a.jsonl",
     jl({"id": "r1", "messages": [{"role": "user", "content": "头疼"}, {"role": "assistant", "content": "嗯"}],
         "responses": ["a", "b"], "ranking": [1, 0]}), [], "line 1", r"must end with a user turn"),
    ("duplicate-id", "a.jsonl", jl(GOOD, GOOD), [], "line 2", r"duplicate id .g1. \(first at .*a.jsonl:line 1\)"),
    ("csv-missing-column", "a.csv", "department,title,answer\n内科,头疼,多休息\n", ["--format", "toyhom_csv"], "line 1",
     r"missing column\(s\) ask"),
    ("csv-short-row", "a.csv", ",Question,A,B,C,D,Answer\n0,哪个是骨,股骨,肝,肺,心,A\n1,哪个是肌肉,心肌,B\n", [], "line 3",
     r"row has 4 fields, the header has 7"),
    ("history-pair-length", "a.json",
     json.dumps([{"id": "c1", "cate1": "内科", "cate2": "内科", "instruction": "还疼", "input": "", "output": "吃药",
                  "history": [["头疼", "多久了？"], ["三天"]]}], ensure_ascii=False), [], "record 1",
     r"history\[1\] must be a \[question, answer\] pair, got 1 item"),
    ("huatuo-two-answers", "a.json", json.dumps([{"id": "", "instruction": ["头疼"], "input": "", "output": ["a", "b"]}]),
     [], "record 1", r"'output' must be a one-element list of text, got 2 items"),
    ("covid-utterance-without-speaker", "a.json", json.dumps([["病人：头疼", "医生：多久了", "三天"]], ensure_ascii=False), [],
     "record 1", r"utterance 2 does not start with 病人：/医生："),
    ("exam-answer-not-an-option", "a.jsonl", jl({"id": "q1", "question": "哪个是骨", "options": {"A": "股骨", "B": "肝"}, "answer": "C"}),
     [], "line 1", r"names option\(s\) C"),
    ("pref-same-answers", "a.jsonl", jl({"conversations": [{"from": "human", "value": "头疼"}], "chosen": "休息", "rejected": "休息"}),
     [], "line 1", r"'chosen' and 'rejected' are the same answer"),
    ("pref-context-ends-with-answer", "a.jsonl",
     jl({"conversations": [{"from": "human", "value": "头疼"}, {"from": "gpt", "value": "嗯"}], "chosen": "a", "rejected": "b"}),
     [], "line 1", r"must end with a human turn"),
    ("dxy-not-a-literal", "a.txt", "train@[{'dialog': ['头疼', \n", [], "line 1", r"not a python literal list"),
    ("toyhom-txt-block", "a.txt", "".join(f"头疼{i}天,疼得厉害\n多休息\n\n\n" for i in range(12)) + "咳嗽,一周\n多喝水\n另起一行\n",
     [], "line 49", r"block has 3 line\(s\), expected 2"),
    ("bentsao-text-before-tag", "a.json",
     json.dumps([{"instruction": " <user>: 头疼 <bot>: 多久了 <user>: 三天", "input": "", "output": "休息"},
                 {"instruction": "前言 <user>: 头疼", "input": "", "output": "休息"}], ensure_ascii=False),
     ["--format", "bentsao_multiturn"], "record 2", r"text before the first <user>:/<bot>: tag"),
    ("document-empty-text", "a.jsonl", jl({"text": "正文"}, {"text": ""}), [], "line 2", r"'text' must be a non-empty string"),
    ("tex-missing-input", "main.tex", "\\documentclass{book}\n\\begin{document}\n\\input{content/chap09.tex}\n\\end{document}\n",
     [], "line 3", r"\\input file not found: content/chap09.tex"),
    ("side-file", "drugs.txt", "阿司匹林\n布洛芬\n对乙酰氨基酚\n", [], None, r"entity dictionary.*nothing to convert"),
]


@pytest.mark.parametrize("case,name,content,args,where,reason", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_located_line(tmp_path, capsys, case, name, content, args, where, reason):
    src = tmp_path / name
    src.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    out = tmp_path / "out.jsonl"
    assert cli(["data", "convert", str(src), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"zhongjing: error: {src}")
    if where:
        assert f"{src}:{where}: " in err
    assert __import__("re").search(reason, err), err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no output, no temp file, no reject file


def test_enough_kinds_of_bad_input():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


def test_unknown_format_name(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text(jl(GOOD), encoding="utf-8")
    assert cli(["data", "convert", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--format", "nope"]) == 2
    assert "unknown format 'nope'" in capsys.readouterr().err
    assert cli(["data", "stats", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file or directory" in capsys.readouterr().err


def test_skip_bad_writes_rejects_and_converts_the_rest(tmp_path, capsys):
    secret = "我叫张三住在某某小区三号楼头疼已经三天了还伴有恶心呕吐症状"
    rows = [GOOD, msgs(("user", secret), ("user", "还在吗"), id="b1"), '{"id": broken', msgs(("user", "咳嗽"), ("assistant", "多久了？"), id="g2"),
            sharegpt(("human", "x")) | {"id": "b2"}, msgs(("user", "发烧"), ("assistant", ""), id="b3"),
            msgs(("user", "腹泻"), ("assistant", "吃了什么？"), id="g3"), GOOD]
    src = tmp_path / "mixed.jsonl"
    src.write_text(jl(*rows), encoding="utf-8")
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    assert cli(["data", "convert", str(src), "-o", str(out), "--skip-bad", "--rejects", str(rej)]) == 0
    printed = capsys.readouterr().out
    assert [json.loads(ln)["id"] for ln in out.read_text(encoding="utf-8").splitlines()] == ["g1", "g2", "g3"]
    rejects = [json.loads(ln) for ln in rej.read_text(encoding="utf-8").splitlines()]
    assert [(r["where"], r["file"]) for r in rejects] == [(f"line {n}", str(src)) for n in (2, 3, 5, 6, 8)]
    assert [r["reason"].split(" ")[0] for r in rejects] == ["wrong", "invalid", "missing", "message", "duplicate"]
    assert secret not in rej.read_text(encoding="utf-8")  # previews are short and truncated
    assert all(len(r["preview"]) <= 25 for r in rejects)
    assert "rejected 5 bad record(s)" in printed and "wrote 3 dialogue(s)" in printed


def test_skip_bad_default_reject_path_and_fatal_errors(tmp_path, capsys):
    src = tmp_path / "d.jsonl"
    src.write_text(jl(GOOD, "{oops"), encoding="utf-8")
    assert cli(["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl"), "--skip-bad"]) == 0
    assert len((tmp_path / "o.rejects.jsonl").read_text(encoding="utf-8").splitlines()) == 1
    # a broken JSON list cannot be partly trusted: fatal even with --skip-bad, and nothing is written
    bad = tmp_path / "b.json"
    bad.write_text('[{"instruction": "头疼", "output": "休息"}, {"instr', encoding="utf-8")
    assert cli(["data", "convert", str(bad), "-o", str(tmp_path / "p.jsonl"), "--skip-bad"]) == 2
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "p.rejects.jsonl").exists()
    # everything rejected: an error, not an empty output
    allbad = tmp_path / "c.jsonl"
    allbad.write_text(jl(msgs(("user", "a"), ("user", "b"))), encoding="utf-8")
    assert cli(["data", "convert", str(allbad), "-o", str(tmp_path / "q.jsonl"), "--skip-bad"]) == 2
    assert "no dialogue records were read (1 rejected, see " in capsys.readouterr().err
    assert not (tmp_path / "q.jsonl").exists()


def test_output_is_never_half_written(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("previous run\n", encoding="utf-8")
    src = tmp_path / "a.jsonl"
    src.write_text(jl(*[msgs(("user", f"问题{i}"), ("assistant", "回答"), id=f"i{i}") for i in range(500)], "{bad"), encoding="utf-8")
    assert cli(["data", "convert", str(src), "-o", str(out)]) == 2
    assert out.read_text(encoding="utf-8") == "previous run\n"  # the old output survives untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "out.jsonl"]


def test_refuses_to_overwrite_its_input(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text(jl(GOOD), encoding="utf-8")
    assert cli(["data", "convert", str(src), "-o", str(src)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and src.read_text(encoding="utf-8") == jl(GOOD)


def test_stats_counts_bad_records_and_strict_stops(tmp_path, capsys):
    src = tmp_path / "a.jsonl"
    src.write_text(jl(GOOD, "{bad", msgs(("user", "a"), ("assistant", "b"), id="g2")), encoding="utf-8")
    assert cli(["data", "stats", str(src), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["bad_records"] == 1 and res["dialogue"]["records"] == 2 and f"{src}:line 2" in res["bad_examples"][0]
    assert cli(["data", "stats", str(src), "--strict"]) == 2
    assert f"{src}:line 2: invalid JSON" in capsys.readouterr().err


def test_subprocess_exit_code_and_single_line(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text(jl(msgs(("user", "a"), ("user", "b"))), encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "zhongjing", "data", "convert", str(src), "-o", str(tmp_path / "o.jsonl")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == f"zhongjing: error: {src}:line 1: wrong role order: message 1 is 'user', expected 'assistant'"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.jsonl"]


def test_bad_bytes_after_the_sniffed_prefix_name_their_line(tmp_path, capsys):
    # JSON lines are streamed: the encoding is chosen from the first bytes, a later bad byte is located
    src = tmp_path / "big.jsonl"
    good = jl(*[msgs(("user", f"问题{i}" * 20), ("assistant", "回答" * 20), id=f"i{i}") for i in range(1500)])
    src.write_bytes(good.encode("utf-8") + b'{"id": "z", "messages": "\xff"}\n')
    assert len(good.encode("utf-8")) > 300_000  # past the 256 KiB sniff
    assert cli(["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"zhongjing: error: {src}:line 1501: cannot decode as utf-8 (invalid start byte); pass --encoding"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]
