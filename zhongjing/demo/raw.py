"""Raw consultation material for the dataset-builder demo, plus a ground-truth manifest.

Three real-world formats (a COVID-Dialogue-style txt, a CMtMedQA-style JSON, a Toyhom-style GB18030
CSV) with what a hospital export really contains: personal identifiers, exact and near duplicates,
empty / copy-paste / boilerplate doctor answers, non-Chinese records, raw department labels, and a
few doctor answers that contradict the knowledge graph. raw_manifest.json (kept beside raw/, so that
reading raw/ as a folder sees only data) records every planted item so tests can check that the
builder removes, drops or maps each one.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import random

from zhongjing.demo.dialogues import Composer, join_cn
from zhongjing.demo.facts import Condition
from zhongjing.demo.identifiers import TYPES, Faker

FILES = {"txt": "raw/covid_dialogue.txt", "json": "raw/cmtmedqa.json", "csv": "raw/toyhom.csv"}
# Raw department labels seen in hospital exports, beyond each condition's own sub-department.
ALIASES = {
    "小儿内科": ["小儿科"], "小儿消化科": ["小儿科", "儿童消化科"], "小儿传染科": ["小儿科"],
    "消化内科": ["消化科"], "心血管内科": ["心内科", "心血管科"], "耳鼻喉科": ["耳鼻咽喉科"],
    "精神心理科": ["精神科", "心理咨询科"], "肿瘤内科": ["肿瘤科"], "针灸推拿科": ["针灸科"],
    "整形外科": ["整形美容科"], "骨科": ["骨外科"], "普外科": ["普通外科"], "性病科": ["皮肤性病科"],
}
BOILERPLATE = "您好，已收到您的问题，稍后给您详细回复。"
KG_CONFLICTS = {  # condition → (a drug the KG lists only for other conditions, what a careless doctor wrote)
    "急性上呼吸道感染": ("阿莫西林", "开点阿莫西林吃三天就好了。"),
    "小儿急性发热": ("左氧氟沙星", "家里有左氧氟沙星的话给孩子吃半片。"),
    "急性胃肠炎": ("左氧氟沙星", "再吃点左氧氟沙星消消炎。"),
    "流行性感冒": ("阿莫西林", "顺便吃几天阿莫西林预防细菌感染。"),
    "湿疹": ("克霉唑乳膏", "涂点克霉唑乳膏就好了。"),
    "急性荨麻疹": ("阿莫西林", "吃几天阿莫西林消消炎。"),
    "失眠障碍": ("茶苯海明", "睡不着就吃一片茶苯海明。"),
    "急性牙髓炎": ("阿莫西林", "先吃几天阿莫西林消炎再说。"),
}
ENGLISH = [
    ("Hi doctor, I have had a sore throat and a mild fever for two days. Should I take antibiotics?",
     "Most sore throats are caused by viruses, so antibiotics are usually not needed. Rest, drink fluids and see a doctor if the fever lasts more than three days."),
    ("My son is 4 and has had diarrhea since yesterday. How do I know if he is dehydrated?",
     "Watch for fewer wet diapers, no tears when crying, a dry mouth and unusual sleepiness. Give oral rehydration solution in small sips and go to hospital if these signs appear."),
    ("I get heartburn every night after dinner. What can I do?",
     "Eat dinner earlier, avoid lying down for three hours after meals and raise the head of your bed. If you have trouble swallowing or lose weight, please get checked."),
]
PLAN = {  # per file: total records and how many of each planted problem
    "txt": dict(total=55, exact=1, near=2, empty=1, copy=1, boiler=2, english=1, kg=2),
    "json": dict(total=55, exact=3, near=3, empty=2, copy=2, boiler=0, english=1, kg=2),
    "csv": dict(total=40, exact=2, near=2, empty=2, copy=2, boiler=0, english=1, kg=0),
}
PII_RATE = 0.6


class RawBuilder:
    def __init__(self, conds: list[Condition], composer: Composer, rng: random.Random):
        self.conds, self.c, self.rng = conds, composer, rng
        self.faker = Faker(rng)
        self.uid = 0

    # ---- one record, format-independent ------------------------------------------------------
    def _record(self, cond: Condition, *, single: bool) -> dict:
        c, rng = self.c, self.rng
        persona = c.persona(cond)
        advice = self._terse_advice(cond)
        answers = []
        if single:  # Toyhom-style: everything in one question, one answer
            first, answers = c.self_contained_question(cond, persona)
            turns = [("patient", first), ("doctor", advice)]
        else:
            first, gave_age = c.complaint(cond, persona)
            asks = c.usable_asks(cond, persona, first, gave_age)
            asks = rng.sample(asks, min(len(asks), rng.choice((1, 2))))
            answers = [c.answer(a, cond, persona) for a in asks]
            question = "".join(rng.choice(a.questions) for a in asks)
            turns = [("patient", first), ("doctor", question),
                     ("patient", "，".join(a.text.rstrip("。") for a in answers) + "。"), ("doctor", advice)]
            if cond.followups and rng.random() < 0.4:
                f = rng.choice(cond.followups)
                turns += [("patient", rng.choice(f.questions)), ("doctor", f.answer.split("。")[0] + "。")]
        pii = self._plant(turns, persona, late_ok=not single) if rng.random() < PII_RATE else []
        self.uid += 1
        raw_dept = rng.choice([cond.sub] * 2 + ALIASES.get(cond.sub, []))
        allergy = next((a.text for a in answers if "过敏" in a.text), "无")
        return {"uid": self.uid, "cond": cond.name, "dept": cond.dept, "raw_dept": raw_dept, "turns": turns,
                "pii": pii, "short": cond.short, "extra": self._extra(cond.short, allergy)}

    def _plant(self, turns: list, persona: dict, *, late_ok: bool) -> list[tuple[str, str]]:
        """Write 1–3 identifiers into the patient's words (after any greeting; sometimes a later turn)."""
        rng, pii, lead, late = self.rng, [], "", ""
        birth = self.faker.birth(persona["age"] // 12 if persona["who"] == "child" else persona["age"])
        for kind in rng.sample(TYPES, rng.choice((1, 1, 2, 3))):
            value, sentence = self.faker.plant(kind, birth, persona["sex"])
            pii.append((kind, value))
            if late_ok and rng.random() < 0.25:  # remembered later in the conversation
                late += f"对了，我叫{value}。" if kind == "name" else "对了，" + sentence.rstrip("，") + "。"
            else:
                lead += sentence
        first = turns[0][1]
        greet = next((g for g in sorted(self.c.p["greetings"], key=len, reverse=True) if g and first.startswith(g)), "")
        turns[0] = ("patient", greet + lead + first[len(greet):])
        if late:
            turns[2] = ("patient", turns[2][1] + late)
        return pii

    def _extra(self, short: str, allergy: str) -> dict:
        """Format-specific fields, drawn once so that an exact duplicate renders identically."""
        rng = self.rng
        return {
            "help": rng.choice(("怎么治疗", "需要做什么检查", "是否严重", "用药建议", "如何缓解")),
            "duration": rng.choice(("一周内", "一月内", "半年内", "一年以上")),
            "hospital": rng.choice(("市第一人民医院", "区中医院", "社区卫生服务中心", "省人民医院", None)),
            "history": rng.choice(("无", "高血压", "无", "胃炎")), "allergy": allergy,
            "cate1_raw": rng.random() < 0.4,
            "title": rng.choice((f"{short}怎么办？", f"{short}要紧吗？", f"请问{short}如何治疗？")),
        }

    def _terse_advice(self, cond: Condition) -> str:
        rng = self.rng
        said = rng.choice((cond.short, cond.name))  # doctors write the formal name about as often as the plain one
        head = rng.choice((f"考虑{said}，", f"{said}可能性大，", f"像是{said}，", "")) if cond.kind == "disease" else ""
        text = head + "，".join(rng.sample(cond.advice, min(2, len(cond.advice)))) + "。"
        if cond.drugs and rng.random() < 0.7:
            text += f"可以用{join_cn(rng.sample(cond.drugs, min(2, len(cond.drugs))), '或')}。"
        if rng.random() < 0.5:
            text += f"{rng.choice(cond.flags)}的话及时来医院。"
        return text

    # ---- planted problems --------------------------------------------------------------------
    def _copy(self, rec: dict) -> dict:
        self.uid += 1
        return {**copy.deepcopy(rec), "uid": self.uid}

    def _near(self, rec: dict) -> dict:
        new = self._copy(rec)
        turns = new["turns"]
        role, first = turns[0]  # the same patient posting again with a slightly different ending
        turns[0] = (role, first + ("谢谢！" if first.endswith(("。", "？", "！", "）")) else "。谢谢！"))
        role, last = turns[-1]
        turns[-1] = (role, last[:-1] + "！" if last.endswith("。") else last + "。")
        return new

    def _english(self, i: int) -> dict:
        self.uid += 1
        q, a = ENGLISH[i % len(ENGLISH)]
        extra = {**self._extra("consultation", "none"), "title": q[:40], "cate1_raw": True, "hospital": None,
                 "help": "treatment advice", "duration": "within a week", "history": "none"}
        return {"uid": self.uid, "cond": None, "dept": None, "raw_dept": "General Medicine",
                "turns": [("patient", q), ("doctor", a)], "pii": [], "short": "consultation", "extra": extra}

    def build_file(self, fmt: str, manifest: dict) -> list[dict]:
        plan, rng = PLAN[fmt], self.rng
        single = fmt == "csv"
        n_special_new = plan["exact"] + plan["near"] + plan["english"]
        base = [self._record(self.conds[i % len(self.conds)], single=single) for i in range(plan["total"] - n_special_new)]
        rng.shuffle(base)
        planted = {k: [] for k in ("exact", "near", "empty", "copy", "boiler", "kg")}
        clean = [r for r in base if not r["pii"]]
        for kind in ("empty", "copy", "boiler"):
            for r in clean[: plan[kind]]:
                doctor_turns = [i for i, (role, _) in enumerate(r["turns"]) if role == "doctor"]
                for i in doctor_turns:
                    text = {"empty": "" if fmt != "txt" else "。", "boiler": BOILERPLATE,
                            "copy": r["turns"][i - 1][1]}[kind]
                    r["turns"][i] = ("doctor", text)
                planted[kind].append(r["uid"])
            clean = clean[plan[kind]:]
        spoiled = planted["empty"] + planted["copy"] + planted["boiler"]
        kg_candidates = [r for r in base if r["cond"] in KG_CONFLICTS and r["uid"] not in spoiled][: plan["kg"]]
        for r in kg_candidates:
            drug, sentence = KG_CONFLICTS[r["cond"]]
            last = r["turns"][-1][1]
            named = "" if r["cond"] in last else f"诊断考虑{r['cond']}。"  # the disease a KG check links against
            r["turns"][-1] = ("doctor", named + last + sentence)
            planted["kg"].append((r["uid"], drug))
        # duplicates come from ordinary records, so each planted problem is listed exactly once
        kg_uids = [u for u, _ in planted["kg"]]
        sources = rng.sample([r for r in base if r["uid"] not in spoiled + kg_uids], plan["exact"] + plan["near"])
        extra = []
        for j, src in enumerate(sources):
            dup = self._copy(src) if j < plan["exact"] else self._near(src)
            extra.append(dup)
            planted["exact" if j < plan["exact"] else "near"].append((src["uid"], dup["uid"]))
        extra += [self._english(i) for i in range(plan["english"])]
        records = base + extra
        rng.shuffle(records)
        key = {r["uid"]: self._key(fmt, i) for i, r in enumerate(records)}
        self._manifest(fmt, records, planted, key, manifest)
        for r in records:
            r["key"] = key[r["uid"]]
        return records

    @staticmethod
    def _key(fmt: str, i: int):
        return i + 1 if fmt != "json" else f"raw{i + 1:04d}"

    def _manifest(self, fmt: str, records: list[dict], planted: dict, key: dict, m: dict) -> None:
        path = FILES[fmt]
        for r in records:
            for kind, value in r["pii"]:
                m["identifiers"]["items"].append({"file": path, "record": key[r["uid"]], "type": kind, "value": value})
            m["departments"]["records"].append({"file": path, "record": key[r["uid"]], "raw": r["raw_dept"],
                                                "department": r["dept"], "condition": r["cond"]})
            if r["dept"] and r["raw_dept"]:
                m["departments"]["map"][r["raw_dept"]] = r["dept"]
            if r["cond"] is None:
                m["non_chinese"].append({"file": path, "record": key[r["uid"]]})
        for kind in ("exact", "near"):
            m["duplicates"][kind] += [{"file": path, "records": [key[a], key[b]]} for a, b in planted[kind]]
        for kind, name in (("empty", "empty_answers"), ("copy", "copy_paste_answers"), ("boiler", "boilerplate_answers")):
            m[name] += [{"file": path, "record": key[u]} for u in planted[kind]]
        by_uid = {r["uid"]: r for r in records}
        m["kg_conflicts"] += [{"file": path, "record": key[u], "condition": by_uid[u]["cond"], "drug": d} for u, d in planted["kg"]]


# ---- renderers --------------------------------------------------------------------------------
def render_txt(records: list[dict]) -> str:
    blocks = []
    for r in records:
        turns, x = r["turns"], r["extra"]
        desc = [f"疾病： {r['short']}", f"病情描述： {turns[0][1]}", f"希望获得的帮助： {x['help']}", f"患病多久： {x['duration']}"]
        if r["raw_dept"] and x["hospital"]:
            desc.append(f"已就诊医院及科室： {x['hospital']} {r['raw_dept']}")
        desc += [f"过敏史： {x['allergy']}", f"既往病史： {x['history']}"]
        dialog = []
        for role, text in turns[1:]:
            dialog += ["医生：" if role == "doctor" else "病人：", text]
        summary = [f"病情摘要及初步印象： {r['short']}", f"总结建议： {turns[-1][1]}"]
        blocks.append("\n".join([f"id={r['key']}", f"https://consult.example.org/case/{10000 + r['key']}.htm", "",
                                 "Description", *desc, "", "Dialogue", *dialog, "", "Diagnosis and suggestions", *summary]))
    return "\n" + "\n\n".join(blocks) + "\n"


def render_json(records: list[dict]) -> str:
    out = []
    for r in records:
        texts = [t for _, t in r["turns"]]
        pairs = [texts[i:i + 2] for i in range(0, len(texts), 2)]
        cate1 = r["raw_dept"] if r["extra"]["cate1_raw"] or not r["dept"] else r["dept"]
        out.append({"id": r["key"], "cate1": cate1, "cate2": r["raw_dept"], "instruction": pairs[-1][0], "input": "",
                    "output": pairs[-1][1], "history": pairs[:-1]})
    return json.dumps(out, ensure_ascii=False, indent=1) + "\n"


def render_csv(records: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["department", "title", "ask", "answer"])
    for r in records:
        w.writerow([r["raw_dept"], r["extra"]["title"], r["turns"][0][1], r["turns"][-1][1]])
    return buf.getvalue().encode("gb18030")


def build_raw(conds: list[Condition], composer: Composer, rng: random.Random) -> tuple[dict[str, bytes], dict]:
    """{relative path: file bytes} and the manifest."""
    m = {"identifiers": {"counts": {}, "items": []}, "duplicates": {"exact": [], "near": []},
         "empty_answers": [], "copy_paste_answers": [], "boilerplate_answers": [], "non_chinese": [],
         "kg_conflicts": [], "departments": {"map": {}, "records": []}}
    builder = RawBuilder(conds, composer, rng)
    out: dict[str, bytes] = {}
    for fmt, render in (("txt", render_txt), ("json", render_json), ("csv", render_csv)):
        records = builder.build_file(fmt, m)
        data = render(records)
        out[FILES[fmt]] = data if isinstance(data, bytes) else data.encode("utf-8")
    m["identifiers"]["counts"] = {t: sum(i["type"] == t for i in m["identifiers"]["items"]) for t in TYPES}
    m["departments"]["map"] = dict(sorted(m["departments"]["map"].items()))
    header = {
        "about": "Ground truth of what zhongjing.demo.make_demo planted in the raw demo files.",
        "record_key": "txt: the number after 'id='; json: the 'id' field; csv: 1-based data row (header excluded)",
        "files": {FILES[f]: {"format": name, "encoding": enc, "records": PLAN[f]["total"]}
                  for f, name, enc in (("txt", "covid_dialogue_txt", "utf-8"), ("json", "cmtmedqa_json", "utf-8"),
                                       ("csv", "toyhom_csv", "gb18030"))},
        "total_dialogues": sum(p["total"] for p in PLAN.values()),
    }
    return out, {**header, **m}
