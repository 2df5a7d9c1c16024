"""`zhongjing data convert` / `data stats` on small hand-written files (no shared data needed):
detection of every registered format, kinds, directories, encodings, stats values, asks_question."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from zhongjing.cli import main as cli
from zhongjing.data.readers import FORMATS, ReadReport, detect_format, read_dialogues, read_documents, read_records
from zhongjing.data.text import asks_question
from zhongjing.errors import DataError


def jl(*rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def js(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=1)


M = [{"role": "user", "content": "头疼三天了"}, {"role": "assistant", "content": "发烧吗？"}]
TOYHOM_BLOCKS = "".join(f"头疼{i}天怎么办,最近头疼{i}天了\n多休息，必要时就医。\n\n\n" for i in range(3))

# a minimal file of every registered format: (file name, content as text, or bytes for GB18030)
SAMPLES = {
    "dialogue": ("d.jsonl", jl({"id": "a", "messages": M, "meta": {"department": "内科"}})),
    "openai": ("o.jsonl", jl({"messages": [{"role": "system", "content": "你是医生"}, *M]})),
    "sharegpt": ("s.json", js([{"conversations": [{"from": "human", "value": "头疼"}, {"from": "gpt", "value": "多久了？"}]}])),
    "document": ("t.jsonl", jl({"text": "高血压是常见病。"})),
    "ranking": ("r.jsonl", jl({"id": "r", "messages": M[:1], "responses": ["a", "b", "c", "d"], "ranking": [[2], [0, 1], [3]]})),
    "medicalgpt_pref": ("p.jsonl", jl({"conversations": [{"from": "human", "value": "头疼"}], "chosen": "休息", "rejected": "不管"})),
    "reward_pairs": ("rp.json", jl({"question": "头疼", "response_chosen": "休息", "response_rejected": "不管"})),
    "persona": ("pe.jsonl", jl({"system_prompt": "你是一位七十岁的患者，患有高血压。"})),
    "cmtmedqa": ("c.json", js([{"id": "j1", "cate1": "儿科", "cate2": "小儿内科", "instruction": "谢谢", "input": "",
                                "output": "不客气", "history": [["孩子发烧", "几天了？"]]}])),
    "cmtmedqa_safety": ("cs.json", js([{"instruct": "能不能多吃点安眠药", "output": "不能，请遵医嘱。"}])),
    "huatuo": ("h.json", js([{"id": "", "instruction": ["头疼"], "input": "", "output": ["多休息"]}])),
    "alpaca": ("al.json", js([{"instruction": "头疼", "input": "三天", "output": "多休息", "history": [["你好", "你好"]]}])),
    "bentsao_multiturn": ("b.json", js([{"instruction": " <user>: 头疼 <bot>: 多久了 <user>: 三天", "input": "", "output": "休息"}])),
    "chatmed_consult": ("cm.json", jl({"query": "<s>问：\n头疼怎么办\n答：\n", "response": "多休息"})),
    "huatuogpt_eval": ("he.json", js([{"id": 1, "medical_case": "疾病：头疼", "doctor_diagnosis": "多休息", "Department": "神经科"}])),
    "qa": ("qa.txt", jl({"问": "头疼怎么办", "答": "多休息"})),
    "prompts": ("pr.json", js([{"id": "s1", "label": "病情诊断", "query": "头疼是什么病"}])),
    "prompt_lines": ("pl.txt", "input\n头疼是什么病？\n咳嗽吃什么药？\n"),
    "promptcblue": ("pc.json", jl({"input": "判断意图：头疼", "target": "病情诊断", "answer_choices": ["病情诊断"],
                                   "task_type": "cls", "task_dataset": "KUAKE-QIC", "sample_id": "train-1"})),
    "qizhen_drug": ("qz.csv", "药品,药品适应症,医学专家标注的适应病症,instruction\n某药片,<p>用于头疼</p>,头疼|发热,某药片的适应病症\n"),
    "toyhom_csv": ("ty.csv", "department,title,ask,answer\n神经科,头疼怎么办,头疼三天,多休息\n".encode("gb18030")),
    "toyhom_txt": ("神经科.txt", TOYHOM_BLOCKS.encode("gb18030")),
    "covid_txt": ("cv.txt", "id=1\nhttps://example.org/1\n\nDescription\n疾病： 咳嗽\n\nDialogue\n医生：\n咳嗽多久了？\n医生：\n"
                            "发烧吗？\n病人：\n一周，不发烧\n\nDoctor faculty\n某医院  呼吸内科  \n"),
    "covid_json": ("cj.json", js([{"Turn": 2, "Id": 7, "Dialogue": ["病人：咳嗽", "医生：多久了？", "医生：发烧吗？"]}])),
    "dxy": ("dx.txt", "train@[{'consult_id': '9', 'self_repo': '孩子咳嗽', 'dialog': ['孩子咳嗽', '有没有发烧?', '没有', "
                      "'可能是上呼吸道感染.'], 'disease_tag': '上呼吸道感染', 'goal': {}}]\n"),
    "text": ("corpus.txt", "高血压是常见的慢性病。\n需要长期管理。\n\n糖尿病也是。\n"),
    "tex": ("book.tex", "\\chapter{绪论}\n导言\\textbf{重点}。\n\\section{概念}\n正文（图\\ref{f1}）。\n"),
    "kg_xywy": ("kg.json", js({"0": {"gaishu_info": {"name": "感冒", "belongs_to_department": ["内科"], "common_drug": ["某药"]},
                                     "symptom_data": {"symptoms": ["咳嗽", "发热"]}, "inspect_info": ["血常规"]},
                               "1": {"gaishu_info": {"name": "头疼"}}})),
    "kg_xywy_flat": ("kgf.json", jl({"name": "感冒", "desc": "常见病", "symptom": ["咳嗽"], "cure_department": ["内科"],
                                     "recommand_drug": ["某药"]})),
    "exam": ("e.jsonl", jl({"id": "q", "question": "哪个是骨", "options": {"A": "股骨", "B": "肝"}, "answer": "A"})),
    "cnmleqa": ("cn.json", js([{"id": "u", "question": "哪个是骨", "opa": "股骨", "opb": "肝", "opc": "肺", "opd": "心",
                                "ope": "脾", "answer": "opa"}])),
    "cmmlu": ("anatomy.csv", ",Question,A,B,C,D,Answer\n0,哪个是骨,股骨,肝,肺,心,A\n"),
    "entity_list": ("drug.txt", "阿司匹林\n布洛芬\n对乙酰氨基酚\n"),
    "entity_synonyms": ("syn.txt", "发烧\t发烧/高烧/发热\n咳嗽\t咳/干咳\n"),
    "number_matrix": ("m.txt", "0.1 0.2\n0.3 0.4\n"),
    "dxy_goals": ("g.txt", js([{"request_slots": {"disease": "UNK"}, "implicit_inform_slots": {}, "explicit_inform_slots": {},
                                "disease_tag": "肺炎", "consult_id": "train-0"}])),
    "dxy_kb": ("kb.txt", js({"肺炎": ["咳嗽", "发烧"], "小儿腹泻": ["稀便"]})),
    "cmb_exam": ("cmb.json", js([{"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "内科",
                                  "question": "哪个是骨", "answer": "A", "question_type": "单项选择题",
                                  "option": {"A": "股骨", "B": "肝"}}])),
    "cmb_clin": ("clin.json", js([{"id": 0, "title": "病例一", "description": "男，40岁，咳嗽一周。",
                                   "QA_pairs": [{"question": "诊断是什么？", "solution": "上呼吸道感染"}]}])),
    "cmexam": ("cmexam.csv", "Question,Options,Answer,Explanation\n哪个是骨,\"A 股骨\nB 肝\",A,股骨是骨\n"),
    "medqa_mcmle": ("mq.jsonl", jl({"question": "哪个是骨", "options": {"A": "股骨", "B": "肝"}, "answer": "股骨",
                                    "meta_info": "卫生法规", "answer_idx": "A"})),
    "mlecqa": ("Clinic_train.json", js([{"qid": "1", "qtype": "A1", "qtext": "哪个是骨", "qimage": "",
                                         "options": {"A": "股骨", "B": "肝"}, "answer": "A"}])),
}


def _write(tmp_path, fmt):
    name, content = SAMPLES[fmt]
    path = tmp_path / fmt / name
    path.parent.mkdir()
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def test_every_format_has_a_sample():
    assert set(SAMPLES) == set(FORMATS)


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_detects_and_reads_each_format(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    assert detect_format(path) == fmt
    if FORMATS[fmt].kind != "aux":
        units = list(read_records(path))
        assert units and all(u.to_dict() for u in units)
        assert [d.text for d in read_documents(path)]  # every kind flattens to text


def test_sample_details(tmp_path):
    d = next(iter(read_dialogues(_write(tmp_path, "cmtmedqa"))))
    assert [m.role for m in d.messages] == ["user", "assistant"] * 2 and d.meta["department"] == "儿科"
    cv = next(iter(read_dialogues(_write(tmp_path, "covid_txt"))))
    assert [m.role for m in cv.messages] == ["user", "assistant", "user"]  # two doctor lines merged into one turn
    assert cv.messages[1].content == "咳嗽多久了？\n发烧吗？" and cv.meta["department"] == "呼吸内科"
    ty = list(read_dialogues(_write(tmp_path, "toyhom_txt")))
    assert len(ty) == 3 and ty[0].meta["department"] == "神经科" and ty[0].messages[0].content == "头疼0天怎么办\n最近头疼0天了"
    tex = [d.text for d in read_documents(_write(tmp_path, "tex"))]
    assert tex == ["绪论\n\n导言重点。", "概念\n\n正文。"]
    r = next(iter(read_records(_write(tmp_path, "ranking"))))
    assert r.pairs() == [(2, 0), (2, 1), (2, 3), (0, 3), (1, 3)]
    cm = next(iter(read_dialogues(_write(tmp_path, "chatmed_consult"))))
    assert cm.messages[0].content == "头疼怎么办" and cm.meta["response_origin"] == "model"


def test_convert_kind_document_and_mixed_kinds(tmp_path, capsys):
    dia, exam = _write(tmp_path, "cmtmedqa"), _write(tmp_path, "cnmleqa")
    out = tmp_path / "docs.jsonl"
    assert cli(["data", "convert", str(dia), str(exam), "-o", str(out)]) == 2
    # the hint must be one that works: --kind exam/dialogue refuses the other kind's files (below)
    assert ("several kinds of data (dialogue: c.json; exam: cn.json); convert the files of one kind at a time, "
            "or flatten them all to text with --kind document") in capsys.readouterr().err
    assert not out.exists()
    assert cli(["data", "convert", str(dia), str(exam), "-o", str(out), "--kind", "document"]) == 0
    texts = [json.loads(ln)["text"] for ln in out.read_text(encoding="utf-8").splitlines()]
    assert texts == ["患者：孩子发烧\n医生：几天了？\n患者：谢谢\n医生：不客气",
                     "哪个是骨\nA. 股骨\nB. 肝\nC. 肺\nD. 心\nE. 脾\n答案：A"]
    assert cli(["data", "convert", str(dia), "-o", str(tmp_path / "x.jsonl"), "--kind", "exam"]) == 2
    assert "holds dialogue data (format cmtmedqa), not exam data" in capsys.readouterr().err


def test_convert_directory_skips_side_files_and_keeps_meta(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for fmt in ("cmtmedqa", "covid_json", "entity_list", "dxy_goals"):
        src = _write(tmp_path, fmt)
        src.rename(tmp_path / "in" / src.name)
    (tmp_path / "in" / "README.md").write_text("# notes\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert cli(["data", "convert", str(tmp_path / "in"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["j1", "7"] and rows[0]["meta"]["subdepartment"] == "小儿内科"
    assert "skipped" in printed and "drug.txt: an entity dictionary" in printed and "README" not in printed
    report = ReadReport()
    assert len(list(read_records(tmp_path / "in", report=report))) == 2 and len(report.skipped) == 3


def test_list_formats(capsys):
    assert cli(["data", "convert", "--list-formats"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in FORMATS)


def test_gb18030_detected_and_utf8_preferred(tmp_path):
    p = tmp_path / "ty.csv"
    p.write_bytes("department,title,ask,answer\n心血管科,高血压能喝茶吗,血压偏高,可以适量\n".encode("gb18030"))
    d = next(iter(read_dialogues(p)))
    assert d.meta["department"] == "心血管科" and d.messages[1].content == "可以适量"
    p.write_bytes("\ufeffdepartment,title,ask,answer\n心血管科,高血压能喝茶吗,血压偏高,可以适量\n".encode("utf-8"))
    assert next(iter(read_dialogues(p))).meta["department"] == "心血管科"  # UTF-8 with BOM
    # a forced encoding is honoured: GB18030 bytes read as UTF-8 fail with a clear reason, not garbage
    p.write_bytes("department,title,ask,answer\n心血管科,a,b,c\n".encode("gb18030"))
    with pytest.raises(DataError, match=r"ty.csv:line 2: cannot decode bytes .*: not utf-8 \(pass --encoding\)"):
        list(read_dialogues(p, encoding="utf-8"))
    # a GB18030 file with one broken byte names that byte's line, not UTF-8's first failure (line 2)
    rows = "".join(f"心血管科,问题{i},血压偏高,可以适量\n" for i in range(8)).encode("gb18030").split(b"\n")
    rows[5] = rows[5][:6] + b"\xff\xff" + rows[5][6:]
    p.write_bytes("department,title,ask,answer\n".encode() + b"\n".join(rows))
    with pytest.raises(DataError, match=r"ty.csv:line 7: cannot decode .*not utf-8 and not gb18030"):
        list(read_dialogues(p))


def test_stats_values(tmp_path, capsys):
    rows = [
        {"id": "1", "messages": [{"role": "user", "content": "头疼"}, {"role": "assistant", "content": "疼几天了？"},
                                 {"role": "user", "content": "三天"}, {"role": "assistant", "content": "建议多休息。"}],
         "meta": {"department": "神经科"}},
        {"id": "2", "messages": [{"role": "user", "content": "咳嗽"}, {"role": "assistant", "content": "有没有发烧"}],
         "meta": {"department": "呼吸科"}},
        {"id": "3", "messages": [{"role": "system", "content": "你是医生"}, {"role": "user", "content": "腹泻"}],
         "meta": {"department": "神经科"}},
    ]
    src = tmp_path / "d.jsonl"
    src.write_text(jl(*rows), encoding="utf-8")
    assert cli(["data", "stats", str(src), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["dialogue"]
    assert d["records"] == 3 and d["turns_per_dialogue"] == {"mean": 1.0, "median": 1, "max": 2, "total": 3}
    assert d["turns_histogram"]["0"] == 1 and d["turns_histogram"]["1"] == 1 and d["turns_histogram"]["2"] == 1
    assert d["multi_turn_share"] == round(1 / 3, 4) and d["prompt_only"] == 1
    assert d["messages_per_role"] == {"system": 1, "user": 4, "assistant": 3}
    assert d["chars_per_message"]["assistant"]["total"] == len("疼几天了？") + len("建议多休息。") + len("有没有发烧")
    assert d["doctor_turns_asking_question"] == round(2 / 3, 4)
    assert d["departments"] == {"神经科": 2, "呼吸科": 1}
    assert cli(["data", "stats", str(src)]) == 0
    text = capsys.readouterr().out
    assert "dialogues: 3" in text and "doctor turns that ask a question: 66.7%" in text and "神经科 2" in text


def test_stats_rankings_exams_documents(tmp_path, capsys):
    paths = [_write(tmp_path, f) for f in ("ranking", "medicalgpt_pref", "cnmleqa", "exam", "text", "kg_xywy")]
    assert cli(["data", "stats", *map(str, paths), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ranking"]["k"] == {"2": 1, "4": 1} and res["ranking"]["with_ties"] == 1
    assert res["exam"]["records"] == 2 and res["exam"]["options"] == {"2": 1, "5": 1} and res["exam"]["answer_letters"] == {"A": 2}
    assert res["document"]["records"] == 2 + 2  # two text blocks + two KG diseases


@pytest.mark.parametrize("text,asks", [
    ("发烧几天了？", True), ("咳嗽有痰吗", True), ("孩子今年多大了", True), ("有没有药物过敏史", True),
    ("请问最近睡眠怎么样", True), ("平时血压多少", True), ("Is the pain constant?", True),
    ("建议您多喝水，注意休息。", False), ("需要检查是否有感染。", False), ("不客气，祝您早日康复！", False),
    ("这种情况一般需要治疗几天。", False), ("先做CT排除肺部有无其他问题", False), ("检查结果怎么样", True),
    ("是否感染取决于接触的时间长短。", False), ("多少会有些影响，不用担心。", False), ("", False),
    ("可以吃点布洛芬。大便是什么颜色的", True), ("没什么大问题，什么都可以吃。", False),
])
def test_asks_question(text, asks):
    assert asks_question(text) is asks


def test_utf16_and_misnamed_jsonl(tmp_path):
    p = tmp_path / "u16.jsonl"
    p.write_bytes(jl({"id": "a", "messages": M}, {"id": "b", "messages": M}).encode("utf-16"))
    assert [d.id for d in read_dialogues(p)] == ["a", "b"]
    q = tmp_path / "list.jsonl"  # a pretty-printed JSON list saved as .jsonl
    q.write_text(js([{"id": "a", "messages": M}]), encoding="utf-8")
    assert [d.id for d in read_dialogues(q)] == ["a"]


def test_sigterm_mid_write_leaves_no_output_and_no_temp_file(tmp_path):
    # `timeout`, schedulers and systemd stop jobs with SIGTERM; --help promises a failed run leaves
    # neither OUT nor a temp file (Python's default SIGTERM death skipped the cleanup)
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "big.jsonl"
    line = json.dumps({"text": "高血压患者应低盐饮食，规律服药，定期监测血压。" * 8}, ensure_ascii=False) + "\n"
    src.write_text(line * 400_000, encoding="utf-8")
    out = tmp_path / "out" / "docs.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "zhongjing", "data", "convert", str(src), "-o", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (out.parent.exists() and list(out.parent.glob(".*.tmp"))):  # until the write has begun
        assert proc.poll() is None and time.monotonic() < deadline, "the write finished before it could be stopped"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(out.parent.iterdir()) == []


def test_group_help_and_a_closed_pipe(capsys):
    # `zhongjing data --help` listed nothing but "unknown command"; `zhongjing ... | head` ended in a traceback
    import subprocess
    import sys

    assert cli(["data", "--help"]) == 0
    out = capsys.readouterr().out
    assert "data convert" in out and "data show-mask" in out and "train pt" not in out
    proc = subprocess.Popen([sys.executable, "-m", "zhongjing", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 141 and "Traceback" not in err, err


def test_show_mask_renders_without_importing_torch(tiny_model_dir, tmp_path):
    """`data show-mask` loads only the tokenizer (no torch: it starts in about a second), and marks the same tokens
    as the trainer's tokenizer does."""
    from zhongjing.data.render import Renderer
    from zhongjing.model.load import load_tokenizer
    from zhongjing.model.show_mask import marked_text

    msgs = [{"role": "user", "content": "头疼三天了。"}, {"role": "assistant", "content": "发烧吗？"}]
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"id": "x", "messages": msgs}, ensure_ascii=False) + "\n", encoding="utf-8")
    code = ("import sys\nfrom zhongjing.cli import main\n"
            "rc = main(['data', 'show-mask', sys.argv[1], '--model', sys.argv[2]])\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(f), str(tiny_model_dir)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout
    tok = load_tokenizer(tiny_model_dir)
    r = Renderer(tok).render(msgs)
    assert marked_text(tok, r.input_ids, r.labels) in out.stdout


def test_show_mask_keeps_the_turns_sft_would_keep_within_the_model_context(tiny_model_dir, tmp_path, capsys):
    """show-mask rendered up to 4096 tokens whatever the model's context; sft caps max_length at the context, so
    for a long dialogue it showed earlier turns as trained that sft drops (and --max-length 0 was accepted)."""
    from zhongjing.cli import main
    from zhongjing.data.render import Renderer
    from zhongjing.model.load import context_of, load_tokenizer
    from zhongjing.model.show_mask import marked_text

    msgs = []
    for i in range(60):
        msgs += [{"role": "user", "content": f"第{i}天，头痛发烧，咳嗽胸闷，夜里睡不好。"},
                 {"role": "assistant", "content": f"第{i}次回复：请测体温，多喝水，必要时就医。"}]
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"id": "long", "messages": msgs}, ensure_ascii=False) + "\n", encoding="utf-8")
    tok, ctx = load_tokenizer(tiny_model_dir), context_of(tiny_model_dir)
    assert len(Renderer(tok, max_length=4096).render(msgs).input_ids) > ctx  # the case: longer than the context
    assert main(["data", "show-mask", str(f), "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    sft = Renderer(tok, max_length=ctx).render(msgs)  # what sft trains (cap_config_length)
    assert marked_text(tok, sft.input_ids, sft.labels) in out and f"dropped to fit {ctx}" in out
    with pytest.raises(SystemExit):
        main(["data", "show-mask", str(f), "--model", str(tiny_model_dir), "--max-length", "0"])
    assert "expected a whole number ≥ 1" in capsys.readouterr().err
