"""`zhongjing data cases`: consultation cases from real dialogues.

A case = the patient's opening turn (what they say unasked) + the *hidden facts* they reveal only later in the gold
dialogue, each tagged with a kind (symptom, duration, history, medication, test) + the gold doctor's final advice as
a reference. Facts are clauses of the later patient turns that name something in the lexicon below (our own small
word lists; no data is read from elsewhere). Dialogues are de-identified with the builder's de-identifier first.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from zhongjing.config import at_least, parse_stage_args
from zhongjing.data.text import asks_question, sentences
from zhongjing.errors import DataError

KINDS = ("symptom", "duration", "history", "medication", "test")
# term lists per kind: a clause naming one of these is a fact of that kind; a question naming one asks about it
LEXICON: dict[str, tuple[str, ...]] = {
    "symptom": ("疼", "痛", "咳", "痰", "发烧", "发热", "烧", "吐", "呕", "恶心", "腹泻", "拉肚子", "便秘", "痒", "肿",
                "晕", "乏力", "没劲", "胸闷", "气短", "喘", "出血", "血", "失眠", "胀", "鼻塞", "流涕", "鼻涕",
                "疹", "红", "发麻", "麻木", "酸", "心慌", "头昏", "食欲", "大便", "小便", "尿", "睡", "哭闹", "出汗"),
    "duration": ("天", "周", "星期", "个月", "月", "年", "小时", "最近", "以来", "开始", "之前", "多久", "多长时间",
                 "几天", "反复"),
    "history": ("以前", "既往", "病史", "得过", "有过", "高血压", "糖尿病", "手术", "过敏", "家族", "怀孕", "孕",
                "哺乳", "吸烟", "抽烟", "喝酒", "饮酒", "慢性", "遗传", "体重", "岁"),
    "medication": ("药", "服用", "吃过", "用过", "打针", "输液", "片", "胶囊", "颗粒", "喷", "膏", "布洛芬",
                   "阿莫西林", "抗生素", "头孢", "退烧", "激素", "疫苗"),
    "test": ("检查", "化验", "验血", "血常规", "CT", "彩超", "B超", "超声", "心电图", "拍片", "X光", "指标", "结果",
             "体温", "度", "血压", "血糖", "核酸", "胃镜", "报告"),
}
_CLAUSE = re.compile(r"[。，,；;！!？?\n]+")
_BULLET = re.compile(r"^(\d+[.、)]|[-*•])\s*")


@dataclass
class Fact:
    kind: str
    text: str  # the patient's own clause (de-identified), revealed verbatim or not at all
    terms: list[str]  # lexicon terms it names


@dataclass
class Case:
    id: str
    opening: str  # the first patient turn: the episode's prompt
    facts: list[Fact]
    reference: str = ""  # the gold doctor's final advice
    system: str | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def account(self) -> str:
        """The patient's whole case in their own words: the opening, then every hidden fact (what a judge of the
        final advice reads; the doctor sees only what the consultation brought out)."""
        return self.opening + ("\n" + "；".join(f.text for f in self.facts) if self.facts else "")

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        return cls(d["id"], d["opening"], [Fact(**f) for f in d["facts"]], d.get("reference", ""), d.get("system"),
                   d.get("meta", {}))


def terms_in(text: str, kinds: tuple[str, ...] = KINDS) -> dict[str, list[str]]:
    """Lexicon terms the text names, by kind (kinds naming none left out)."""
    out = {k: [t for t in LEXICON[k] if t in text] for k in kinds}
    return {k: v for k, v in out.items() if v}


def clauses(text: str) -> list[str]:
    return [c for c in (_BULLET.sub("", c.strip()) for c in _CLAUSE.split(text)) if c]


def extract_facts(later_patient_turns: list[str], opening: str) -> list[Fact]:
    """Facts of the later patient turns: clauses naming a lexicon term, not already said in the opening, once each."""
    out, seen = [], set(clauses(opening))
    for turn in later_patient_turns:
        for c in (c for s in sentences(turn) if not asks_question(s) for c in clauses(s)):
            found = terms_in(c)
            if not found or c in seen:
                continue
            seen.add(c)
            kind = max(found, key=lambda k: (len(found[k]), -KINDS.index(k)))  # most terms; ties → earlier kind
            out.append(Fact(kind, c, sorted({t for v in found.values() for t in v})))
    return out


def case_from_dialogue(d) -> Case | None:
    """A Case, or None when the dialogue reveals nothing after its opening (no later patient fact)."""
    msgs = [m for m in d.messages if m.role != "system"]
    users = [m.content for m in msgs if m.role == "user"]
    doctors = [m.content for m in msgs if m.role == "assistant"]
    if not users or not doctors:
        return None
    facts = extract_facts(users[1:], users[0])
    if not facts:
        return None
    return Case(d.id, users[0], facts, doctors[-1], d.system, {k: v for k, v in d.meta.items() if k != "url"})


def read_cases(path) -> list[Case]:
    from zhongjing.io import iter_jsonl

    out = []
    for n, rec in iter_jsonl(path):
        try:
            out.append(Case.from_dict(rec))
        except (KeyError, TypeError) as e:
            raise DataError(f"not a case record ({e})", path, f"line {n}") from None
    if not out:
        raise DataError("no cases", path)
    return out


@dataclass
class CasesConfig:
    inputs: list[str] = field(default_factory=list)  # Dialogue files in any readable format
    format: str | None = None
    output: str = "cases.jsonl"
    skip_empty: bool = False  # count and skip dialogues revealing nothing after the opening (default: error)
    deidentify: bool = True  # the builder's de-identifier on every turn (off only for already-built data)
    limit: int = 0  # at most this many cases (0 = all)
    patient_dialogues: str = ""  # also write role-swapped dialogues (persona system prompt, the doctor as 'user'):
    # `train sft` on them learns the patient's side → a `model` patient simulator

    def __post_init__(self):
        at_least(self, 0, "limit")


def build_cases(cfg: CasesConfig, swapped: list | None = None) -> tuple[list[Case], Counter]:
    from zhongjing.data.readers import list_files, read_dialogues
    from zhongjing.dataset.deid import Deidentifier, deidentify_dialogue
    from zhongjing.dataset.report import StepReport

    if not cfg.inputs:
        raise DataError("no input files: give inputs=[FILE, ...]", "<config>")
    deid, report, counts, out = Deidentifier(), StepReport("deidentify"), Counter(), []
    for f in list_files(cfg.inputs):
        for n, d in enumerate(read_dialogues(f, cfg.format), 1):
            counts["dialogues"] += 1
            case = case_from_dialogue(deidentify_dialogue(d, deid, report) if cfg.deidentify else d)
            if case is None:
                if not cfg.skip_empty:
                    raise DataError(f"dialogue {d.id!r} reveals nothing after the opening patient turn (no later "
                                    "patient turn names a symptom, duration, history, medication or test); "
                                    "skip_empty=true counts and skips such dialogues", f, f"record {n}")
                counts["skipped_nothing_revealed"] += 1
                continue
            out.append(case)
            if swapped is not None:
                swapped.append(patient_side(case, d.messages))
            counts["cases"] += 1
            counts.update(f"facts_{x.kind}" for x in case.facts)
            if cfg.limit and len(out) >= cfg.limit:
                return out, counts + report.counts
    return out, counts + report.counts


def persona(case: Case) -> str:
    """System prompt for a free-text patient: the case's facts, and the rules the retrieval patient keeps."""
    facts = "\n".join(f"- ({f.kind}) {f.text}" for f in case.facts)
    return ("你在扮演一位来问诊的患者。你一开始已经对医生说了：\n" + case.opening + "\n\n你还知道下面这些情况，"
            "但只有医生问到时才说，一次只说被问到的那一条或两条，用患者的口吻简短回答：\n" + facts +
            "\n\n医生问到以上没有的情况时，回答“不清楚”；不要编造任何情况，不要给自己下诊断，不要提问。")


def patient_side(case: Case, messages) -> dict:
    """The dialogue from the patient's side, as a Dialogue record for `train sft` (the persona holds the facts)."""
    flip = {"user": "assistant", "assistant": "user"}
    turns = [m for m in messages if m.role != "system"][1:]  # the opening is in the persona
    return {"id": f"{case.id}-patient", "messages": [{"role": "system", "content": persona(case)}]
            + [{"role": flip[m.role], "content": m.content} for m in turns]}


def main(argv: list[str]) -> int:
    from zhongjing.io import write_jsonl

    cfg = parse_stage_args("zhongjing data cases", CasesConfig, argv, __doc__.split("\n\n")[0])
    swapped: list | None = [] if cfg.patient_dialogues else None
    cases, counts = build_cases(cfg, swapped)
    write_jsonl(cfg.output, (c.to_dict() for c in cases))
    if swapped is not None:
        write_jsonl(cfg.patient_dialogues, swapped)
    print(f"{len(cases)} cases → {cfg.output}  ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    return 0
