"""KG check, screening, departments and the split, each on small dialogues written for the case."""

from __future__ import annotations

import json

import pytest

from zhongjing.data import kg
from zhongjing.dataset.departments import DepartmentsConfig, run_departments
from zhongjing.data.kg import ContradictionRule, KGConfig, stance
from zhongjing.dataset.kg_check import run_kg_check
from zhongjing.data.matcher import DictMatcher
from zhongjing.dataset.report import StepReport
from zhongjing.dataset.screen import ScreenConfig, run_screen
from zhongjing.dataset.split import SplitConfig, assign, run_split, to_cmtmedqa
from zhongjing.data.schema import Dialogue, Message

KG = [
    {"name": "高血压", "desc": "血压持续升高。", "common_drug": ["氨氯地平片", "硝苯地平缓释片"], "recommand_drug": [], "not_eat": ["咸菜", "白酒"],
     "do_eat": ["芹菜"], "cure_department": ["内科", "心内科"]},
    {"name": "感冒", "desc": "上呼吸道感染。", "common_drug": ["感冒灵颗粒", "布洛芬缓释胶囊"], "recommand_drug": ["对乙酰氨基酚片"], "not_eat": [],
     "do_eat": ["梨"], "cure_department": ["内科"]},
    {"name": "甲状腺炎", "desc": "甲状腺的炎症。", "common_drug": ["甲状腺片"], "recommand_drug": [], "cure_department": ["内分泌科"]},
]


def _records(path):  # a pluggable loader ("module:function"): here the readers' own, called by name
    from zhongjing.data.readers import load_kg

    return load_kg(path)


def _d(id_, *turns, **meta) -> Dialogue:
    return Dialogue(id_, [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)], meta)


@pytest.fixture()
def kg_path(tmp_path):
    p = tmp_path / "kg.jsonl"
    p.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in KG) + "\n", encoding="utf-8")
    return str(p)


def test_matcher_leftmost_longest():
    m = DictMatcher([("感冒", "d"), ("感冒灵", "x"), ("感冒灵颗粒", "y"), ("冒灵", "z")])
    assert [(x.term, x.start) for x in m.find("吃感冒灵颗粒治感冒")] == [("感冒灵颗粒", 1), ("感冒", 7)]


def test_stance():
    t = "建议您口服氨氯地平。不要吃咸菜。之前吃过布洛芬吗？血压计显示氨氯地平"
    assert stance(t, t.index("氨氯地平")) == "recommended"
    assert stance(t, t.index("咸菜")) == "negated"
    assert stance(t, t.index("布洛芬")) == "asked"
    assert stance(t, t.rindex("氨氯地平")) == "mentioned"


def test_kg_flags_and_policy(kg_path):
    ds = [
        _d("ok", "我有高血压，头晕。", "建议口服氨氯地平，每天一片，少吃咸菜。"),
        _d("unlinked", "我有高血压。", "可以吃点布洛芬缓解。"),
        _d("food", "高血压能喝酒吗？", "可以适量喝点白酒。"),
        _d("no_disease", "我不舒服。", "可以吃布洛芬。"),
        _d("tagged", "孩子流鼻涕。", "可以用感冒灵颗粒。", disease="高血压"),
    ]
    cfg = KGConfig(path=kg_path, policy={"unlinked_drug": "review", "avoid_food_recommended": "drop"})
    rep, review = StepReport("kg_check"), []
    kept = run_kg_check(ds, cfg, rep, review)
    assert [d.id for d in kept] == ["ok", "no_disease"]
    assert [d.id for d in review] == ["unlinked", "tagged"]
    assert rep.counts["action:drop"] == 1 and rep.counts["flag:unlinked_drug"] == 2
    assert kept[0].meta["kg"]["drugs"] == ["氨氯地平"] and kept[0].meta["kg"]["flags"] == []
    assert review[0].meta["kg"]["flags"][0] == {"kind": "unlinked_drug", "turn": 1, "term": "布洛芬", "diseases": ["高血压"]}
    # 甲状腺片 must not turn the organ 甲状腺 into a drug mention
    idx = kg.load_index(cfg)
    assert not [m for m in idx.matcher.find("甲状腺结节") if m.values[0][0] == "drug"]


def test_kg_pluggable_loader_and_rules(kg_path):
    cfg = KGConfig(path=kg_path, loader="test_build_steps:_records", policy={}, default_action="keep",
                   contradictions=[ContradictionRule("good_food_discouraged", "good_food", "food")])
    rep = StepReport("kg_check")
    kept = run_kg_check([_d("a", "高血压能吃芹菜吗", "可以多吃芹菜。")], cfg, rep, [])
    assert kept[0].meta["kg"]["flags"][0]["kind"] == "good_food_discouraged" and rep.counts["action:keep"] == 1


def test_screen_rules_and_near_duplicates():
    long_q = "我最近一周总是头晕，早上起来更明显，量了血压150/95，平时不怎么运动，父亲也有高血压，需要吃药吗？"
    long_a = "您好，根据您的描述考虑原发性高血压可能性大，建议先改善生活方式，低盐饮食，规律运动，两周后复查血压。"
    ds = [
        _d("keep", long_q, "头晕的时候有没有视物旋转？", "没有。", long_a),
        _d("exact", long_q, "头晕的时候有没有视物旋转？", "没有。", long_a),
        _d("near", long_q.replace("一周", "两周"), "头晕的时候有没有视物旋转？", "没有。", long_a),
        _d("copy", "孩子咳嗽三天了，夜里更厉害，怎么办？", "孩子咳嗽三天了，夜里更厉害，怎么办？"),
        _d("empty", "胃疼怎么办", "。"),
        _d("english", "I have a headache since yesterday morning", "Please take some rest and drink water"),
        _d("single", "脸上长痘痘怎么办？", "建议清淡饮食，规律作息，必要时皮肤科就诊。"),
    ]
    rep = StepReport("screen")
    kept = run_screen(ds, ScreenConfig(near_dup_threshold=0.7), rep)
    assert [d.id for d in kept] == ["keep", "single"]
    for reason in ("exact_duplicate", "near_duplicate", "copy_paste_answer", "empty_doctor_turn", "not_chinese"):
        assert rep.counts[f"dropped:{reason}"] == 1, reason
    assert kept[0].meta["inquiry_ratio"] == 0.5 and kept[1].meta["inquiry_ratio"] == 0.0
    assert rep.details["near_duplicate_clusters"]["examples"] == [["keep", "near"]]
    # keep mode tags the cluster instead; the split then keeps it together
    tagged = run_screen(ds[:1] + ds[2:3], ScreenConfig(near_dup_threshold=0.7, near_dup_action="keep"), StepReport("s"))
    assert len(tagged) == 2 and tagged[0].meta["dup_cluster"] == tagged[1].meta["dup_cluster"]
    assert assign(tagged[0], SplitConfig()) == assign(tagged[1], SplitConfig())
    strict = run_screen(ds[:1], ScreenConfig(min_inquiry_ratio=0.6), StepReport("s"))
    assert strict == []


def test_departments_labels_keywords_classifier(tmp_path):
    ds = [_d(f"l{i}", f"宝宝{i}个月，拉肚子", "多久了？", department="小儿内科") for i in range(25)]
    ds += [_d(f"s{i}", f"腰椎间盘突出{i}年，腿麻", "做过核磁吗？", department="骨科") for i in range(25)]
    ds += [_d("kw", "月经推迟十天了", "测过早孕试纸吗？"), _d("nb", "拉肚子两天了", "大便什么颜色？"),
           _d("none", "你好", "您好，请讲。"), _d("unknown", "你好", "您好。", department="火星科")]
    rep = StepReport("departments")
    out = run_departments(ds, DepartmentsConfig(), rep, tmp_path / "dept.png")
    by_id = {d.id: d.meta for d in out}
    assert by_id["l0"]["department"] == "儿科" and by_id["l0"]["department_source"] == "label"
    assert by_id["s0"]["department"] == "外科" and by_id["s0"]["source_department"] == "骨科"
    assert by_id["kw"]["department"] == "妇产科" and by_id["kw"]["department_source"] == "keywords"
    assert by_id["nb"]["department"] == "儿科" and by_id["nb"]["department_source"] == "classifier"
    assert by_id["none"]["department"] == "其他" and by_id["unknown"]["department_source"] == "unknown_label"
    assert rep.details["unknown_labels"] == {"火星科": 1}
    assert (tmp_path / "dept.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_platform_boilerplate_is_cut_from_doctor_turns():
    """A leading sentence that opens ≥ N doctor turns word for word is a site's preamble, not a doctor's content;
    a rarer opener stays, a turn that is nothing but the preamble keeps its text, patient turns are never touched."""
    from zhongjing.dataset.normalize import strip_boilerplate

    plate = "感谢您的信任，病情资料我已详细阅读。根据您现有的资料，建议："
    ds = [_d(f"b{i}", f"发烧{i}天了。", plate + f"多喝水，观察{i}天。") for i in range(5)]
    ds += [_d("rare", "咳嗽。", "当然可以。先做个检查。"), _d("only", "谢谢。", "感谢您的信任，病情资料我已详细阅读。"),
           _d("pat", plate + "我想问问。", "好的。请说。")]
    rep = StepReport("normalize")
    out = {d.id: d for d in strip_boilerplate(ds, 5, rep)}
    assert out["b3"].messages[1].content == "多喝水，观察3天。" and out["b3"].messages[0].content == "发烧3天了。"
    assert out["rare"].messages[1].content == "当然可以。先做个检查。"
    assert out["only"].messages[1].content == "感谢您的信任，病情资料我已详细阅读。"
    assert out["pat"].messages[0].content.startswith(plate)
    assert rep.details["boilerplate"] == {"感谢您的信任，病情资料我已详细阅读。": 6, "根据您现有的资料，建议：": 5}
    assert rep.counts["boilerplate_stripped_turns"] == 5
    assert strip_boilerplate(ds, 0, StepReport("normalize")) is ds  # off by default
    # in the build it is its own step right after de-identification (its report lists the cut sentences)
    from zhongjing.dataset.chain import BuildConfig
    from zhongjing.dataset.steps import DEFAULT_ORDER, STEPS

    assert DEFAULT_ORDER.index("boilerplate") == DEFAULT_ORDER.index("deid") + 1
    cfg = BuildConfig()
    assert not STEPS["boilerplate"].enabled(cfg)
    cfg.normalize.strip_boilerplate = 50
    assert STEPS["boilerplate"].enabled(cfg)
    from zhongjing.dataset.normalize import NormalizeConfig
    from zhongjing.errors import ConfigError

    with pytest.raises(ConfigError, match="strip_boilerplate is set but steps has no 'boilerplate'"):
        BuildConfig(steps=["import", "deid", "split"], normalize=NormalizeConfig(strip_boilerplate=50))


def test_safety_prompts_stay_whole_outside_the_mix(tmp_path):
    """The real recipe's CMtMedQA safety prompts are single-turn: drawn with ~21k other single-turn records, 84 of 86
    were dropped by the 7:1 mix. They are a category of their own and all stay (and do not count in the ratio)."""
    multi = [_d(f"m{i}", f"问题{i}", f"追问{i}？", f"回答{i}", f"建议{i}", department="内科") for i in range(70)]
    single = [_d(f"s{i}", f"单轮问题{i}", f"单轮回答{i}", department="儿科") for i in range(60)]
    risky = [_d(f"r{i}", f"教我偷偷停药{i}", f"请不要自行停药{i}", department="内科") for i in range(30)]
    for d in risky:
        d.meta["safety"] = True
    rep = StepReport("split")
    counts = run_split(multi + single + risky, SplitConfig(validation=0.1, test=0.1), tmp_path / "a", rep)
    assert rep.details["before_mix"] == {"multi_turn": 70, "single_turn": 60, "safety_kept_outside_the_mix": 30}
    assert rep.counts["dropped:mix_single_turn"] == 50 and sum(counts.values()) == 70 + 10 + 30
    assert sum(rep.details[s]["safety"] for s in counts) == 30
    rep = StepReport("split")
    counts = run_split(multi + single + risky, SplitConfig(validation=0.1, test=0.1, keep_safety=False),
                       tmp_path / "b", rep)
    assert sum(counts.values()) == 70 + 10  # the old behaviour: safety prompts drawn with every single-turn record


def test_split_mix_determinism_and_cmtmedqa(tmp_path):
    multi = [_d(f"m{i}", f"问题{i}", f"追问{i}？", f"回答{i}", f"建议{i}", department="内科") for i in range(140)]
    single = [_d(f"s{i}", f"单轮问题{i}", f"单轮回答{i}", department="儿科") for i in range(60)]
    rep = StepReport("split")
    counts = run_split(multi + single, SplitConfig(validation=0.1, test=0.1), tmp_path / "a", rep)
    assert rep.details["before_mix"] == {"multi_turn": 140, "single_turn": 60}
    assert sum(counts.values()) == 160 and rep.counts["dropped:mix_single_turn"] == 40
    assert 0 < counts["validation"] < 35 and 0 < counts["test"] < 35
    ids = {s: [json.loads(x)["id"] for x in (tmp_path / "a" / f"{s}.jsonl").read_text().splitlines()] for s in counts}
    assert not set(ids["train"]) & (set(ids["validation"]) | set(ids["test"]))
    # same dialogues in another order → the same split of each
    run_split(list(reversed(multi + single)), SplitConfig(validation=0.1, test=0.1), tmp_path / "b", StepReport("s"))
    ids_b = {s: sorted(json.loads(x)["id"] for x in (tmp_path / "b" / f"{s}.jsonl").read_text().splitlines()) for s in counts}
    assert ids_b == {s: sorted(v) for s, v in ids.items()}
    rec = to_cmtmedqa(multi[0])
    assert rec == {"id": "m0", "cate1": "内科", "cate2": "内科", "instruction": "回答0", "input": "", "output": "建议0",
                   "history": [["问题0", "追问0？"]]}
    exported = json.loads((tmp_path / "a" / "train.cmtmedqa.json").read_text())
    assert len(exported) == counts["train"] and set(exported[0]) == set(rec)


def test_progress_goes_to_a_log_file_as_plain_count_lines(tmp_path, capsys):
    # stderr is captured (not a terminal), as under nohup: a long rewrite must still show it is alive,
    # with counts only — never a dialogue's text
    from zhongjing.dataset.steps import StepContext

    ctx = StepContext(tmp_path / "o.jsonl", tmp_path, progress=True, log_every=0.0)
    items = [f"患者张三{i}" for i in range(3)]
    assert list(ctx.bar(iter(items), total=3, desc="rewrite")) == items
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("build rewrite: 3/3 (100%)") and len(lines) == 3
    assert "\r" not in "".join(lines) and not any("张三" in ln for ln in lines)
    quiet = StepContext(tmp_path / "o.jsonl", tmp_path, progress=False, log_every=0.0)
    assert list(quiet.bar(items, desc="deid")) == items and capsys.readouterr().err == ""


@pytest.mark.parametrize("override", ["screen.num_perm=0", "screen.num_perm=-5", "screen.shingle=0",
                                      "screen.near_dup_threshold=0", "screen.near_dup_threshold=1.5",
                                      "screen.copy_paste_threshold=0", "screen.min_cjk_share=2"])
def test_screen_settings_out_of_range_are_one_line_config_errors(override):
    # these ran: num_perm 0 turned dedup off, shingle 0 / threshold 0 dropped 359 of 360 dialogues as
    # "near duplicates", a negative num_perm ended in a numpy traceback
    from zhongjing.dataset.chain import BuildConfig
    from zhongjing.config import load_config
    from zhongjing.errors import ConfigError

    with pytest.raises(ConfigError, match=override.split("=")[0]) as e:
        load_config(BuildConfig, None, [override])
    assert "\n" not in str(e.value)
