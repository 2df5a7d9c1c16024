"""Import normalisation and de-identification: rules, planted-set recall/precision, no values in audits."""

from __future__ import annotations

import json

import pytest

from zhongjing.dataset.deid import CustomPattern, DeidConfig, Deidentifier, deidentify_dialogue, id_checksum_ok, luhn_ok
from zhongjing.dataset.deid_planted import make_planted_set, score, structured_recall
from zhongjing.dataset.normalize import NormalizeConfig, normalize_dialogue, normalize_text
from zhongjing.dataset.report import StepReport
from zhongjing.data.schema import Dialogue, Message
from zhongjing.errors import ConfigError


def test_normalize_text_widths_and_spaces():
    assert normalize_text("３天前发烧(３８．５℃),吃了布洛芬.") == "3天前发烧（38.5℃），吃了布洛芬。"
    assert normalize_text("时间10:30, 费用1,000元. 体温38.5") == "时间10:30，费用1,000元。体温38.5"
    assert normalize_text("头  疼 得\u3000厉害\u200b") == "头疼得厉害"
    assert normalize_text("Take 2 tablets，twice a day。") == "Take 2 tablets,twice a day."


def test_normalize_dialogue_merges_and_trims_roles():
    d = Dialogue("x", [Message("assistant", "您好"), Message("user", "病人：我头疼"), Message("user", "三天了"),
                       Message("assistant", "医生：多久了?"), Message("user", "谢谢")])
    rep = StepReport("import")
    out = normalize_dialogue(d, NormalizeConfig(), rep)
    assert [m.role for m in out.messages] == ["user", "assistant"]
    assert out.messages[0].content == "我头疼\n三天了" and out.messages[1].content == "多久了？"
    assert rep.counts["same_role_turns_merged"] == 1 and rep.counts["speaker_tags_removed"] == 2
    assert rep.counts["leading_doctor_turns_removed"] == 1 and rep.counts["trailing_patient_turns_removed"] == 1
    assert normalize_dialogue(Dialogue("y", [Message("user", "只有问题")]), NormalizeConfig(), rep) is None


def test_checksums():
    assert id_checksum_ok("11010519491231002X") and not id_checksum_ok("110105194912310021")
    assert luhn_ok("4539578763621486") and not luhn_ok("4539578763621487")


@pytest.mark.parametrize("text,expected", [
    ("我的身份证号11010519491231002X，电话13912345678。", "我的身份证号[身份证号]，电话[电话]。"),
    ("住院号：ZY20230012，座机0571-87654321", "住院号：[病历号]，座机[电话]"),
    ("卡号6222 0212 3456 7890 128", "卡号[银行卡号]"),
    ("出生日期：1978年3月12日，邮箱li.ming@163.com", "出生日期：[出生日期]，邮箱[邮箱]"),
    ("谢谢王医生！我家住在浙江省杭州市西湖区文三路88号3单元501室。", "谢谢[姓名]医生！我家住在[地址]。"),
    ("患者李明，男，45岁。", "患者[姓名]，男，45岁。"),
    ("您好，我叫张伟，今年30岁", "您好，我叫[姓名]，今年30岁"),
])
def test_redacts_typed_placeholders(text, expected):
    assert Deidentifier().redact(text)[0] == expected


@pytest.mark.parametrize("text", [
    "血压150/95mmHg，空腹血糖7.8mmol/L，2020年3月12日复查。",
    "阿莫西林0.5g每日3次，连用14天。白细胞12.3×10^9/L。",
    "谢谢医生！主治医生建议检查医生说的那个指标。",
    "110105194912310021",  # 18 digits with a wrong check digit and no 身份证 cue: an unknown number, kept
    "患者黄疸明显，需要复查肝功能。",
])
def test_leaves_medical_content_alone(text):
    assert Deidentifier().find(text) == []


def test_planted_set_recall_and_precision():
    stats = score(Deidentifier(), make_planted_set(1500, seed=7))
    assert structured_recall(stats) >= 0.99
    for t in ("id_card", "phone", "email", "bank_card", "record_no", "birth_date"):
        assert stats[t]["recall"] >= 0.99, (t, stats[t])
    for t, st in stats.items():
        assert st["precision"] >= 0.95, (t, st)
    assert stats["name"]["recall"] >= 0.9 and stats["address"]["recall"] >= 0.9


def test_audit_has_counts_never_values():
    samples = make_planted_set(200, seed=3)
    engine = Deidentifier()
    rep = StepReport("deid")
    for i, s in enumerate(samples):
        d = deidentify_dialogue(Dialogue(str(i), [Message("user", s.text), Message("assistant", s.text)]), engine, rep)
        for span in s.spans:
            assert s.text[span.start:span.end] not in d.messages[0].content
    blob = json.dumps(rep.to_dict(), ensure_ascii=False) + rep.markdown()
    values = [s.text[p.start:p.end] for s in samples for p in s.spans if p.end - p.start >= 4]
    assert values and not any(v in blob for v in values)
    assert rep.counts["phone:user"] > 0 and rep.counts["phone:assistant"] == rep.counts["phone:user"]


def test_custom_patterns_and_bad_config():
    engine = Deidentifier(DeidConfig(patterns=[CustomPattern("工号", r"工号[:：]?(\w{4,})", "[工号]")]))
    assert engine.redact("工号：A12345 已登记")[0] == "工号：[工号] 已登记"
    with pytest.raises(ConfigError, match="not a valid regex"):
        Deidentifier(DeidConfig(patterns=[CustomPattern("x", "(")]))
    with pytest.raises(ConfigError, match="unknown type"):
        Deidentifier(DeidConfig(types=["phone", "shoe_size"]))
    only_phone = Deidentifier(DeidConfig(types=["phone"]))
    assert only_phone.redact("我叫张伟，电话13912345678")[0] == "我叫张伟，电话[电话]"


def test_import_rejects_and_errors_never_echo_record_values(tmp_path):
    # a malformed record can carry identifiers in a field a reader quotes in its reason (here: the role);
    # import runs before deid, so neither the reject file nor the stop message may repeat them
    from zhongjing.dataset.chain import BuildConfig, InputConfig, import_dialogues
    from zhongjing.errors import DataError

    good = {"id": "g1", "messages": [{"role": "user", "content": "头晕一周了。"}, {"role": "assistant", "content": "量过血压吗？"}]}
    bad = [{"id": "b1", "messages": [{"role": "王建国13912345678", "content": "头晕"}]},
           {"id": "b2", "messages": [{"role": "user", "content": "头晕"}, {"role": "doctor", "content": "量过血压吗？"}]}]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [good, *bad]) + "\n", encoding="utf-8")
    cfg = BuildConfig(inputs=[InputConfig(path=str(src))])
    rejects = tmp_path / "rejects.jsonl"
    assert len(import_dialogues(cfg, StepReport("import"), rejects)) == 1
    rows = [json.loads(x) for x in rejects.read_text(encoding="utf-8").splitlines()]
    assert [r["where"] for r in rows] == ["line 2", "line 3"]
    assert "王建国" not in rows[0]["reason"] and "13912345678" not in rows[0]["reason"]
    assert "unknown role" in rows[0]["reason"] and "'doctor'" in rows[1]["reason"]  # plain role names still shown
    from zhongjing.dataset.chain import safe_reason
    assert safe_reason("invalid JSON (Expecting ',' delimiter at column 9)") == "invalid JSON (Expecting ',' delimiter at column 9)"
    assert safe_reason("duplicate id '13912345678' (first at a.jsonl:line 1)") == "duplicate id '…' (first at a.jsonl:line 1)"
    cfg.skip_bad = False
    with pytest.raises(DataError) as e:
        import_dialogues(cfg, StepReport("import"))
    assert "line 2" in str(e.value) and "13912345678" not in str(e.value) and "王建国" not in str(e.value)


def test_meta_free_text_is_redacted_and_source_links_dropped():
    # COVID-Dialogue's TXT keeps the site's diagnosis summary ("感谢戴主任…") and the consultation URL in meta;
    # both went into train.jsonl untouched while the same names were removed from the turns
    d = Dialogue("1", [Message("user", "戴主任您好，我咳嗽一周了。"), Message("assistant", "有没有发热？")],
                 {"source": "covid_txt", "department": "呼吸科", "url": "https://www.haodf.com/flow_team_6477137000_1.htm",
                  "diagnosis": "总结建议：感谢戴主任，半年后复查。", "notes": {"list": ["文先生您好，请按时复查。"]}, "turns": 2})
    rep = StepReport("deid")
    out = deidentify_dialogue(d, Deidentifier(), rep)
    blob = json.dumps(out.to_dict(), ensure_ascii=False)
    assert "戴主任" not in blob and "文先生" not in blob and "haodf" not in blob and "url" not in out.meta
    assert out.meta["diagnosis"] == "总结建议：感谢[姓名]主任，半年后复查。" and out.meta["notes"]["list"][0].startswith("[姓名]")
    assert (out.meta["source"], out.meta["department"], out.meta["turns"]) == ("covid_txt", "呼吸科", 2)
    assert rep.counts["name:meta"] == 2 and rep.counts["meta_link_removed"] == 1 and rep.counts["dialogues_changed"] == 1
