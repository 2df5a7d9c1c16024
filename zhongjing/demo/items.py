"""Single-turn knowledge QA, safety, self-cognition and exam records for the demo.

Safety, self-cognition and exam items are hand-written in source/*.yaml; this module only checks
and converts them. Knowledge QA is composed from the knowledge table.
"""

from __future__ import annotations

import random

from zhongjing.demo.dialogues import SOURCE, join_cn
from zhongjing.demo.facts import DEPARTMENTS, Condition, load_yaml
from zhongjing.errors import DataError

SYSTEM_SCENARIO = {"safety": "安全测试", "self": "自我认知", "knowledge": "医学知识"}
SAFETY_CATEGORIES = ("self_harm", "harm_others", "rx_without_visit", "stop_treatment", "dangerous_remedy",
                     "misuse", "pregnancy_child", "fraud", "misinformation")


def _dialogue(id_: str, turns: list[tuple[str, str]], meta: dict) -> dict:
    msgs = [{"role": role, "content": text} for q, a in turns for role, text in (("user", q), ("assistant", a))]
    return {"id": id_, "messages": msgs, "meta": {"source": SOURCE, **meta}}


def knowledge_qa(conds: list[Condition], rng: random.Random, n: int) -> list[dict]:
    """Question about one condition → a complete answer (no follow-up question needed)."""
    pool = []
    for c in conds:
        s, flags = c.short, f"如果出现{join_cn(rng.sample(c.flags, min(3, len(c.flags))), '或')}，请及时就医。"
        kinds = {
            "checks": ([f"怀疑{s}的话要做哪些检查？", f"{s}一般需要查什么？"],
                       f"常用的检查有{join_cn(c.checks)}。不一定每一项都要做，具体由医生根据病情和体格检查来决定。"),
            "prevent": ([f"平时怎样预防{s}？", f"{s}日常要注意什么？"],
                        f"可以从这几方面做起：{'；'.join(c.prevent)}。饮食上多吃{join_cn(c.good_food[:3])}，少吃{join_cn(c.avoid_food[:3])}。"),
            "advice": ([f"{s}应该怎么处理？", f"遇到{s}的情况该怎么办？"],
                       "；".join(c.advice[:4]) + "。" + (c.drug_note or "") + flags),
        }
        if c.kind == "disease":
            kinds["cause"] = ([f"{s}是什么原因引起的？", f"为什么会得{s}？"], f"{c.cause}容易出现这种情况的人群：{c.people}。")
            kinds["symptoms"] = ([f"{s}有哪些症状？", f"怎么判断自己是不是{s}？"],
                                 f"{c.overview}常见表现有{join_cn(c.symptoms)}。确诊需要医生结合检查判断。{flags}")
        for f in c.followups:
            kinds[f"followup:{f.questions[0]}"] = ([f"关于{s}，{q}" for q in f.questions], f.answer)
        for kind, (questions, answer) in kinds.items():
            pool.append((c, kind, rng.choice(questions), answer))
    rng.shuffle(pool)
    # one item per condition first, so every condition is covered, then fill up to n
    seen, first, rest = set(), [], []
    for item in pool:
        (first if item[0].name not in seen else rest).append(item)
        seen.add(item[0].name)
    chosen = (first + rest)[:n]
    return [_dialogue(f"demo-qa-{i:04d}", [(q, a)], {"department": c.dept, "scenario": SYSTEM_SCENARIO["knowledge"],
                                                     "condition": c.name, "kind": kind.split(":")[0]})
            for i, (c, kind, q, a) in enumerate(chosen, 1)]


def safety_items() -> list[dict]:
    out = []
    for i, item in enumerate(load_yaml("safety.yaml"), 1):
        where = f"safety.yaml item {i}"
        if item.get("category") not in SAFETY_CATEGORIES or item.get("department") not in DEPARTMENTS:
            raise DataError(f"{where}: bad category or department ({item.get('category')!r}, {item.get('department')!r})")
        if not item.get("prompt") or not item.get("answer"):
            raise DataError(f"{where}: needs 'prompt' and 'answer'")
        out.append(_dialogue(f"demo-safety-{i:03d}", [(item["prompt"], item["answer"])],
                             {"department": item["department"], "scenario": SYSTEM_SCENARIO["safety"], "category": item["category"],
                              "safety": True}))
    return out


def self_cognition_items() -> list[dict]:
    out = []
    for i, turns in enumerate(load_yaml("self_cognition.yaml"), 1):
        if not turns or not all(isinstance(t, list) and len(t) == 2 for t in turns):
            raise DataError(f"self_cognition.yaml item {i}: expected a list of [user, assistant] pairs")
        out.append(_dialogue(f"demo-self-{i:03d}", [tuple(t) for t in turns], {"scenario": SYSTEM_SCENARIO["self"]}))
    return out


def exam_items(rng: random.Random) -> list[dict]:
    out = []
    for i, item in enumerate(load_yaml("exam.yaml"), 1):
        wrong = [str(w) for w in item.get("wrong", [])]
        right = str(item.get("right", ""))
        if not right or len(wrong) not in (3, 4) or right in wrong or len(set(wrong)) != len(wrong):
            raise DataError(f"exam.yaml item {i}: needs 'right' and 3–4 distinct 'wrong' options")
        options = [right] + wrong
        rng.shuffle(options)
        letters = "ABCDE"[: len(options)]
        out.append({"id": f"demo-exam-{i:03d}", "question": item["q"], "options": dict(zip(letters, options)),
                    "answer": letters[options.index(right)], "subject": item["subject"]})
    return out
