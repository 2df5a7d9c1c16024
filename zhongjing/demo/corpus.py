"""Pre-training text and the tiny knowledge graph, rendered from the knowledge table.

Each condition is written up three ways (encyclopaedia entry, question-and-answer article,
home-care leaflet) so the base model sees the same facts in different wording, plus hand-written
free paragraphs and consultation transcripts. Documents are separated by one blank line.
"""

from __future__ import annotations

import random

from zhongjing.demo.dialogues import Composer, join_cn
from zhongjing.demo.facts import SOURCE_DIR, Condition

_CN_ORDINALS = "一二三四五六七八九十"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text[-1] in "。！？" else text + "。"


def encyclopedia(c: Condition, rng: random.Random) -> str:
    alias = f"，俗称{c.short}" if c.short not in c.name and c.name not in c.short else ""
    topic = c.kind == "topic"
    people = f"需要特别关注的人群：{c.people}。" if topic else f"常见人群：{c.people}。"
    lines = [c.name, f"{c.name}{alias}。{c.overview}{people}"]
    sections = [
        ("原因" if topic else "病因", c.cause),
        ("相关表现" if topic else "临床表现", f"常见表现有{join_cn(c.symptoms)}。" + (f"可能出现的并发症包括{join_cn(c.complications)}。" if c.complications else "")),
        ("检查", f"临床上常用的检查有{join_cn(c.checks)}，医生会根据病情选择。"),
        ("治疗", f"治疗方式包括{join_cn(c.treat)}。" + "；".join(rng.sample(c.advice, min(3, len(c.advice)))) + "。" + (c.drug_note or "")),
        ("预防", "；".join(c.prevent) + "。"),
        ("饮食", f"宜吃{join_cn(c.good_food)}；少吃或忌吃{join_cn(c.avoid_food)}。"),
        ("传染性", c.contagious),
        ("何时就医", f"出现{join_cn(c.flags, '或')}时，应及时到医院就诊。"),
        ("病程", f"{c.course_text}治疗周期参考：{c.cycle}。"),
    ]
    head, tail = sections[:2], sections[2:]
    rng.shuffle(tail)  # section order varies a little between entries
    lines += [f"{k}：{v}" for k, v in head + tail]
    return "\n".join(lines)


def qa_article(c: Condition, rng: random.Random) -> str:
    s = c.short
    topic = c.kind == "topic"
    parts = [
        (f"关于{s}的基本知识：" if topic else f"什么是{s}？", c.overview),
        ("哪些人需要特别关注？" if topic else f"哪些人容易出现{s}？", _sentence(c.people)),
        ("背后的原因是什么？" if topic else f"为什么会得{s}？", c.cause),
        ("需要留意哪些表现？" if topic else f"{s}有哪些表现？", f"主要有{join_cn(c.symptoms)}等。" + (f"如果不及时处理，可能引起{join_cn(c.complications)}。" if c.complications else "")),
        ("应该怎么做？" if topic else f"出现{s}该怎么办？", "".join(_sentence(t) for t in rng.sample(c.advice, min(4, len(c.advice)))) + (c.drug_note or "")),
        ("什么情况要尽快去医院？", f"{join_cn(c.flags, '、')}，出现这些情况不要拖延。"),
    ]
    if c.donts:
        myths = "；".join(f"有人会{d}" for d in c.donts)
        parts.append(("有哪些常见误区？", f"{myths}。这些做法都不可取。"))
    for f in c.followups:
        parts.append((f.questions[0], f.answer))
    title = rng.choice([f"关于{s}，你需要知道的几件事", f"{s}科普问答", f"一文读懂{s}", f"{s}常见问题解答"])
    return title + "\n" + "\n".join(f"{q}{a}" for q, a in parts)


def care_leaflet(c: Condition, rng: random.Random) -> str:
    items = list(c.advice) + [f"饮食上多吃{join_cn(c.good_food[:3])}，少吃{join_cn(c.avoid_food[:3])}"] + list(c.prevent[:2])
    items = items[: len(_CN_ORDINALS)]
    title = rng.choice([f"{c.short}护理要点", f"{c.short}患者日常注意事项", f"{c.short}居家调理指南"])
    body = [f"{_CN_ORDINALS[i]}、{_sentence(t)}" for i, t in enumerate(items)]
    body.append(f"特别提醒：如果出现{join_cn(c.flags, '或')}，请及时就医。")
    if c.donts:
        body.append(f"不要{join_cn(c.donts, '，也不要')}。")
    return "\n".join([title, *body])


def transcript(dialogue: dict) -> str:
    names = {"user": "患者", "assistant": "医生"}
    lines = ["问诊记录（科室：{}）".format(dialogue["meta"]["department"])]
    lines += [f"{names[m['role']]}：{m['content']}" for m in dialogue["messages"] if m["role"] in names]
    return "\n".join(lines).replace("\n\n", "\n")


def free_paragraphs() -> list[str]:
    text = (SOURCE_DIR / "free_text.txt").read_text(encoding="utf-8")
    return [block.strip() for block in text.split("\n\n") if block.strip()]


def corpus_files(conds: list[Condition], composer: Composer, rng: random.Random, n_transcripts: int) -> dict[str, str]:
    """{file name under corpus/: text}; documents separated by a blank line."""
    ency = [encyclopedia(c, rng) for c in conds]
    articles = [doc for c in conds for doc in (qa_article(c, rng), care_leaflet(c, rng))]
    talks = [transcript(composer.multi_turn(conds[i % len(conds)], i)) for i in range(n_transcripts)]
    return {
        "encyclopedia.txt": "\n\n".join(ency) + "\n",
        "articles.txt": "\n\n".join(articles) + "\n",
        "consultations.txt": "\n\n".join(talks) + "\n",
        "health_topics.txt": "\n\n".join(free_paragraphs()) + "\n",
    }


def kg_record(c: Condition) -> dict:
    """One disease record in the medical_kg_xywy (QASystemOnMedicalKG re-crawl) layout."""
    return {
        "gaishu_info": {
            "name": c.name,
            "desc": c.overview,
            "medical_insurance": c.insurance,
            "disease_ratio": "暂无可靠数据",
            "susceptible_people": c.people,
            "transmission_way": "无传染性" if c.contagious == "本病没有传染性。" else c.contagious,
            "has_complication": list(c.complications),
            "belongs_to_department": [c.dept] if c.sub == c.dept else [c.dept, c.sub],
            "treat_way": list(c.treat),
            "treat_cycle": c.cycle,
            "cure_prob": "因人而异",
            "common_drug": list(c.drugs),
            "treat_cost": "根据地区和医院不同，费用差异较大",
        },
        "cause_info": c.cause,
        "prevent_info": "\n".join(f"{i}、{p}" for i, p in enumerate(c.prevent, 1)),
        "symptom_data": {"symptoms": list(c.symptoms), "symptom_detail": [f"{c.name}常见表现有{join_cn(c.symptoms)}。"]},
        "inspect_info": list(c.checks),
        "nursing_info": "\n".join(f"{i}、{a}" for i, a in enumerate(c.advice, 1)),
        "food_info": {
            "good_diet_text": f"宜吃{join_cn(c.good_food)}。",
            "avoid_diet_text": f"忌吃{join_cn(c.avoid_food)}。",
            "recommand_recipes": [],
            "good_food": list(c.good_food),
            "avoid_food": list(c.avoid_food),
        },
    }
