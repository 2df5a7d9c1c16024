"""Compose doctor–patient dialogues from the knowledge table (seeded, deterministic).

Shape of a multi-turn dialogue (the behaviour the paper's SFT data teaches):
  patient complaint → doctor asks 2–3 targeted questions first → patient answers →
  doctor reasons and advises (or asks one more thing before drugs) → optional follow-ups →
  optional thanks / you're welcome.
How an answer steers the doctor: an "abnormal" answer narrows the reasoning to the first
impression plus the doctor's note; an "urgent" one replaces home care with going to hospital.
"""

from __future__ import annotations

import random
import re

from zhongjing.demo.facts import Answer, Ask, Condition, Followup

SOURCE = "zhongjing-demo"
_TIME_WORDS = re.compile(r"[一二两三四五六七八九十几半\d]+个?(天|周|星期|月|年|小时)|昨|前天|今天|今早|这两天|刚才|最近|一直|老是|半年")
_NUMERALS = "零一二三四五六七八九十"
_DENIALS = ("没", "不", "都没", "好像", "应该", "还", "想不", "说不")


def _cn(n: int) -> str:
    """Chinese numeral for an age in years (两岁, not 二岁)."""
    return "两" if n == 2 else _NUMERALS[n] if n <= 10 else f"十{_NUMERALS[n - 10]}" if n < 20 else str(n)


def join_cn(items: list[str], last: str = "和") -> str:
    return items[0] if len(items) == 1 else "、".join(items[:-1]) + last + items[-1]


class Composer:
    def __init__(self, phrases: dict, rng: random.Random):
        self.p, self.rng = phrases, rng

    # ---- small helpers -------------------------------------------------------------------------
    def pick(self, key_or_list, **fmt) -> str:
        items = self.p[key_or_list] if isinstance(key_or_list, str) else key_or_list
        text = self.rng.choice(items)
        return text.format(**fmt) if fmt else text

    def sample(self, items: list, lo: int, hi: int) -> list:
        k = min(len(items), self.rng.randint(lo, hi))
        return self.rng.sample(items, k)

    # ---- the patient ---------------------------------------------------------------------------
    def persona(self, c: Condition) -> dict:
        lo, hi = c.ages
        age = self.rng.randint(lo, hi)
        sex = c.sex or self.rng.choice("男女")
        p = {"who": c.who, "age": age, "sex": sex}
        if c.who == "child":
            years, months = divmod(age, 12)
            p["child_age"] = f"{age}个月" if age < 24 else (f"{_cn(years)}岁半" if months >= 6 else f"{_cn(years)}岁")
            p["weight"] = round(3.5 + 0.6 * age) if age < 12 else 2 * years + 8
            p["relation"] = self.rng.choice(self.p["relations"])
        elif c.who == "elder":
            p["elder"] = self.rng.choice(self.p["elders"])
        return p

    def complaint(self, c: Condition, persona: dict) -> tuple[str, bool]:
        """First patient message; returns (text, whether age was given)."""
        body = self.rng.choice(c.complaints)
        greet = self.pick("greetings")
        who, mode = persona["who"], self.rng.random()
        gave_age = mode < 0.7
        if who == "child":
            lead = self.pick("child_intro", **persona) if gave_age else ""
            text = greet + lead + body
        elif who == "elder":
            lead = self.pick("elder_intro", **persona) if gave_age else ""
            text = greet + lead + body
        elif mode < 0.45:
            text = greet + self.pick("self_intro", **persona) + body
        elif mode < 0.7:
            text = greet + body + self.pick("self_outro", **persona)
        else:
            text = greet + body
        worry = self.pick("worries")
        if worry and text[-1] in "。！）":  # a complaint that already asks something needs no second question
            text += worry
        return text, gave_age

    def usable_asks(self, c: Condition, persona: dict, complaint: str, gave_age: bool) -> list[Ask]:
        out = []
        for a in c.ask:
            if a.slot == "duration" and _TIME_WORDS.search(complaint):
                continue
            if a.slot == "pregnancy" and not (persona["sex"] == "女" and persona["who"] == "self" and 18 <= persona["age"] <= 45):
                continue
            if a.slot in ("age", "child_age") and gave_age:
                continue
            if a.slot == "history" and persona["who"] == "child":
                continue
            if a.sex and (persona["sex"] != a.sex or persona["who"] != "self"):
                continue
            out.append(a)
        if not gave_age and persona["who"] == "child" and not any(a.slot == "child_age" for a in out):
            out.insert(0, Ask(self.p["slots"]["child_age"]["q"], (), slot="child_age"))
        return out

    def answer(self, ask: Ask, c: Condition, persona: dict) -> Answer:
        if ask.slot == "child_age":
            return Answer(f"{persona['child_age']}，{persona['weight']}公斤左右")
        if ask.slot == "age":
            return Answer(f"{persona['age']}岁")
        if ask.slot == "duration":
            return Answer(self.rng.choice(self.p["slots"]["duration"][c.course]))
        a = self.rng.choice(ask.answers)
        drug = c.drugs[0] if c.drugs else "药店买的药"
        return Answer(a.text.format(drug=drug), a.note.format(drug=drug) if a.note else None, a.level)

    # ---- doctor turns --------------------------------------------------------------------------
    def ask_turn(self, c: Condition, persona: dict, asks: list[Ask]) -> tuple[str, bool]:
        """First doctor turn: opener, optional hint, 1–3 questions. Returns (text, numbered?)."""
        opener = self.pick("child_openers" if persona["who"] == "child" else "openers")
        hint = self.pick("hints", short=c.short) if c.kind == "disease" else ""
        head = opener + self.pick("empathy") + hint + self.pick("ask_transitions")
        qs = [self.rng.choice(a.questions) for a in asks]
        numbered = len(qs) > 1 and self.rng.random() < 0.5
        tail = self.pick("ask_tails")
        if numbered:
            text = head + "\n" + "\n".join(f"{i}. {q}" for i, q in enumerate(qs, 1)) + ("\n" + tail if tail else "")
        else:
            text = head + "".join(qs) + tail
        return text, numbered

    def answer_turn(self, answers: list[Answer], numbered: bool) -> str:
        texts = [a.text.rstrip("。") for a in answers]
        if numbered:
            body = "\n".join(f"{i}. {t}。" for i, t in enumerate(texts, 1))
            extra = self.pick("answer_extras")
            return body + ("\n" + extra if extra else "")
        return "，".join(texts) + "。" + self.pick("answer_extras")

    def flags_sentence(self, c: Condition) -> str:
        flags = self.sample(c.flags, 2, 4)
        return self.pick("flag_templates", flags=join_cn(flags, "或"))

    def drug_sentence(self, c: Condition) -> str:
        if c.drug_note:
            return c.drug_note
        return self.pick("drug_templates", drugs=join_cn(self.sample(c.drugs, 1, 3), "或"))

    def advice_turn(self, c: Condition, answers: list[Answer], *, impression_given: bool = False) -> str:
        """Reasoning + advice + drugs/checks + red flags. `impression_given`: the first impression was
        already said in a clarifying turn, so it is not repeated."""
        levels = {a.level for a in answers if a.note}
        parts = [self.pick("acks")] + [a.note for a in answers if a.note]
        first = [] if impression_given else [c.think[0]]
        if "urgent" in levels:
            parts += first + [self.flags_sentence(c)]
            if not any("120" in n or "立即" in n for n in parts[1:]):
                parts.append("线上无法替代当面检查，请不要再拖，尽快到医院就诊。")
            return "".join(parts)
        parts += first if "abnormal" in levels else first + self.sample(c.think[1:], 0 if first else 1, 2)
        items = c.advice[:1] + self.sample(c.advice[1:], 1, 3)  # the table lists the most important advice first
        style = self.rng.random()
        if style < 0.4:
            numbered = "；\n".join(f"{i}. {t}" for i, t in enumerate(items, 1))
            parts.append(self.pick("advice_intros") + "\n" + numbered + "。\n")
        elif style < 0.75:
            conns = self.p["advice_connectives"]
            lead = conns[:2] + [self.rng.choice(conns[2:]) for _ in items[2:]]
            parts.append("；".join(f"{w}{t}" for w, t in zip(lead, items)) + "。")
        else:
            parts.append(self.pick("advice_intros") + "；".join(items) + "。")
        if c.drugs and self.rng.random() < 0.8:
            parts.append(self.drug_sentence(c))
        if self.rng.random() < 0.5:
            parts.append(self.pick("check_templates", checks=join_cn(self.sample(c.checks, 1, 2))))
        parts.append(self.flags_sentence(c))
        if c.donts and self.rng.random() < 0.5:
            parts.append(self.pick("dont_templates", dont=self.rng.choice(c.donts)))
        parts.append(self.pick("closings"))
        return "".join(parts).strip()

    def generic_followups(self, c: Condition) -> list[Followup]:
        g = self.p["generic_followups"]
        fill = {
            "good": join_cn(self.sample(c.good_food, 2, 4)), "avoid": join_cn(self.sample(c.avoid_food, 2, 3)),
            "checks": join_cn(self.sample(c.checks, 1, 3)), "prevent": "；".join(self.sample(c.prevent, 2, 4)),
            "course": c.course_text, "contagious": c.contagious,
        }
        out = [Followup(tuple(g[k]["q"]), self.rng.choice(g[k]["a"]).format(**fill))
               for k in ("diet", "checks", "prevent", "course") if k != "course" or c.kind == "disease"]
        if c.contagious != "本病没有传染性。":
            out.append(Followup(tuple(g["contagious"]["q"]), self.rng.choice(g["contagious"]["a"]).format(**fill)))
        return out

    # ---- whole dialogues -----------------------------------------------------------------------
    def multi_turn(self, c: Condition, idx: int, system: str | None = None) -> dict:
        persona = self.persona(c)
        first, gave_age = self.complaint(c, persona)
        pool = self.usable_asks(c, persona, first, gave_age)
        n_ask = min(len(pool), self.rng.choice((1, 2, 2, 3, 3)))
        asked = pool[:1] + self.rng.sample(pool[1:], n_ask - 1) if persona["who"] == "child" and pool[0].slot == "child_age" else self.rng.sample(pool, n_ask)
        rest = [a for a in pool if a not in asked and a.slot in ("allergy", "pregnancy", "meds")]
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": first}]
        doc, numbered = self.ask_turn(c, persona, asked)
        answers = [self.answer(a, c, persona) for a in asked]
        msgs += [{"role": "assistant", "content": doc}, {"role": "user", "content": self.answer_turn(answers, numbered)}]
        urgent = any(a.level == "urgent" and a.note for a in answers)
        clarified = False
        if rest and c.drugs and not urgent and self.rng.random() < 0.35:
            # one more question before recommending drugs (allergy, pregnancy, current meds)
            extra = self.rng.choice(rest)
            lead = self.pick("acks") + c.think[0]
            msgs.append({"role": "assistant", "content": lead + self.pick("clarify_transitions") + self.rng.choice(extra.questions)})
            ans = self.answer(extra, c, persona)
            msgs.append({"role": "user", "content": ans.text + "。"})
            answers.append(ans)
            clarified = True
        msgs.append({"role": "assistant", "content": self.advice_turn(c, answers, impression_given=clarified)})
        turns = sum(m["role"] == "assistant" for m in msgs)
        fups = c.followups + self.generic_followups(c)
        n_f = self.rng.choice((0, 1, 1, 2)) if not urgent else 0
        for f in self.rng.sample(fups, min(n_f, len(fups), 5 - turns - 0)):
            q = self.pick("followup_leads") + self.rng.choice(f.questions)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": self.pick("followup_acks") + f.answer}]
            turns += 1
        if turns < 5 and self.rng.random() < 0.25:
            msgs += [{"role": "user", "content": self.pick("thanks")}, {"role": "assistant", "content": self.pick("welcomes")}]
        return {"id": f"demo-mt-{idx:04d}", "messages": msgs,
                "meta": {"department": c.dept, "source": SOURCE, "scenario": c.scenario, "condition": c.name}}

    def self_contained_question(self, c: Condition, persona: dict | None = None) -> tuple[str, list[Answer]]:
        """A patient message that already says what a doctor would ask (so the reply needs no question).

        Only answers that make sense without the question are used: global slots, and condition
        answers that describe something rather than just deny it.
        """
        persona = persona or self.persona(c)
        first, gave_age = self.complaint(c, persona)
        facts: list[Answer] = []
        for a in self.usable_asks(c, persona, first, gave_age):
            ans = self.answer(a, c, persona)
            if a.slot == "duration":
                ans = Answer("症状" + ans.text)
            elif a.slot in ("child_age", "age"):
                ans = Answer(("孩子" if a.slot == "child_age" else "我今年") + ans.text)
            elif a.slot is None and (ans.level == "urgent" or len(ans.text) < 7 or ans.text.startswith(_DENIALS)):
                continue
            facts.append(ans)
        facts = facts[:4]
        if not facts:
            return first, []
        text = "，".join(a.text.rstrip("。") for a in facts)
        first = first.rstrip() + ("" if first.rstrip()[-1] in "。！？）" else "。")
        ask = "" if "？" in first else self.rng.choice(("请问该怎么办？", "需要注意什么？", ""))
        return first + self.rng.choice(("具体情况：", "另外，", "说一下情况：", "")) + text + "。" + ask, facts

    def single_turn(self, c: Condition, idx: int, prefix: str = "demo-st") -> dict:
        question, answers = self.self_contained_question(c)
        reply = self.advice_turn(c, answers)
        return {"id": f"{prefix}-{idx:04d}", "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
                "meta": {"department": c.dept, "source": SOURCE, "scenario": c.scenario, "condition": c.name}}
