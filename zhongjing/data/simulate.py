"""A simulated annotator for the demo pipeline — NOT a substitute for doctors.

The demo cannot wait for human rankings, so this ranks each prompt's K answers with rubric
heuristics, in the paper's priority (Safety > Professionalism > Fluency: the scores are compared
lexicographically, so a safer answer always wins over a more fluent one):

- safety: unsafe advice patterns (stop medication on your own, folk remedies, promises of a cure,
  "no need to see a doctor"); a red-flag complaint answered without sending the patient to care;
  with a knowledge graph, drugs recommended that the graph does not link to the disease discussed;
- professionalism: overlap with the real doctor's answer when the data has one (`meta.reference`),
  otherwise with the patient's turn; on a first doctor turn, asking the patient a question
  (proactive inquiry) when the real doctor asked too — but never in a consultation's final advice
  (`final_advice`: the asking is over, and a question there leaves the patient without advice);
- fluency: length within bounds, finished sentences, no repetition or template debris.

Answers whose scores differ by less than `tie` in every dimension are tied. When every answer is
unsafe the ranking is marked `all_wrong` with an honest I-don't-know reply as best (DESIGN.md §3).
Output rankings carry `annotators: ["simulated"]` and `meta.simulated = true`, and reports say so.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Iterable

from zhongjing.config import non_negative
from zhongjing.data.kg import KGConfig, check_dialogue, load_index
from zhongjing.data.readers import read_rankings
from zhongjing.data.rubric import IDK_TEMPLATES
from zhongjing.data.schema import Dialogue, Message, Ranking
from zhongjing.data.text import asks_question
from zhongjing.io import write_jsonl

_UNSAFE = re.compile(
    r"(不用|不需要|不必|没必要)(去)?(看医生|看病|就医|就诊|医院)|自行(停药|加量|加大剂量|减药)|"
    r"(擅自|直接)停(药|掉)|加倍服用|偏方|秘方|保证(治愈|根治|治好)|百分之百|包治|一定能治好|随便(吃|用)"
)
_RED_FLAG = re.compile(
    r"胸痛|胸闷|呼吸困难|喘不上气|昏迷|意识不清|晕厥|抽搐|大出血|吐血|咯血|便血|黑便|剧烈(头痛|腹痛)|"
    r"高烧不退|自杀|轻生|不想活|孕.{0,6}出血|口角歪斜|说话不清|一侧(肢体)?无力"
)


def red_flag(patient_turn: str) -> bool:
    """The patient reports a red-flag complaint (chest pain, coughing blood, fainting, ...): the turns where the
    rubric's referral rule applies, so where a dropped or added referral moves an answer's safety score."""
    return bool(_RED_FLAG.search(patient_turn))


_REFERRAL = re.compile(r"就医|医院|急诊|就诊|120|面诊|看医生|专科|门诊")
_DEBRIS = re.compile(r"<\||\|>|\ufffd|�")
_FINAL = re.compile(r"[。！？!?…~～）)”\"]$")


@dataclass
class Scores:
    safety: float
    professionalism: float
    fluency: float

    def key(self) -> tuple[float, float, float]:
        return (self.safety, self.professionalism, self.fluency)


def _bigrams(text: str) -> set[str]:
    text = re.sub(r"\s+", "", text)
    return {text[i:i + 2] for i in range(len(text) - 1)}


def overlap_f1(answer: str, reference: str) -> float:
    a, b = _bigrams(answer), _bigrams(reference)
    if not a or not b:
        return 0.0
    common = len(a & b)
    return 0.0 if common == 0 else 2 * common / (len(a) + len(b))


def repetition(text: str, n: int = 4) -> float:
    """Share of repeated character n-grams (0 = none, → 1 = one phrase looped)."""
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return 0.0 if not grams else 1 - len(set(grams)) / len(grams)


class SimulatedAnnotator:
    def __init__(self, kg_index=None, kg_config=None, tie: float = 0.02, min_chars: int = 8, max_chars: int = 400):
        self.kg_index, self.kg_config = kg_index, kg_config
        self.tie, self.min_chars, self.max_chars = tie, min_chars, max_chars

    def score(self, context: list[Message], answer: str, reference: str | None, final_advice: bool = False) -> Scores:
        patient = context[-1].content
        safety = 1.0 - 0.5 * len(_UNSAFE.findall(answer))
        # "不用去医院" mentions a hospital but is no referral: look for one outside the unsafe phrases
        if red_flag(patient) and not _REFERRAL.search(_UNSAFE.sub("", answer)):
            safety -= 0.6
        if self.kg_index is not None:
            d = Dialogue("sim", list(context) + [Message("assistant", answer)])
            last = len(d.messages) - 1
            flags = [f for f in check_dialogue(d, self.kg_index, self.kg_config)["flags"] if f["turn"] == last]
            safety -= 0.3 * min(len(flags), 2)

        prof = overlap_f1(answer, reference or patient)
        first_turn = not any(m.role == "assistant" for m in context) and not final_advice
        if first_turn and (reference is None or asks_question(reference)):
            prof += 0.3 if asks_question(answer) else 0.0

        n = len(answer.strip())
        fluency = 1.0 - repetition(answer)
        fluency -= 0.5 if n < self.min_chars else 0.3 * max(0.0, n / self.max_chars - 1)
        fluency -= 0.2 if not _FINAL.search(answer.strip()) else 0.0
        fluency -= 0.5 if _DEBRIS.search(answer) else 0.0
        return Scores(round(safety, 4), round(prof, 4), round(fluency, 4))

    def safer(self, a: float, b: float) -> bool:
        """Safety score a beats b by more than a tie (and at all when ties are exact, tie = 0)."""
        return a - b >= max(self.tie, 1e-6)

    def rank(self, r: Ranking) -> Ranking:
        scores = [self.score(r.messages, a, r.meta.get("reference")) for a in r.responses]
        order = sorted(range(len(scores)), key=lambda i: scores[i].key(), reverse=True)
        groups: list[list[int]] = []
        for i in order:
            prev = groups[-1][0] if groups else None
            same = prev is not None and all(abs(x - y) < self.tie for x, y in zip(scores[i].key(), scores[prev].key()))
            groups[-1].append(i) if same else groups.append([i])
        all_wrong = max(s.safety for s in scores) < 0.5
        out = Ranking(
            r.id, r.messages, r.responses, groups, ["simulated"],
            r.meta | {"simulated": True, "sim_scores": [s.key() for s in scores]},
            all_wrong=all_wrong,
            replacement=IDK_TEMPLATES[sum(map(ord, r.id)) % len(IDK_TEMPLATES)] if all_wrong else None,
        )
        return out


def simulate(rankings: Iterable[Ranking], annotator: SimulatedAnnotator) -> Iterable[Ranking]:
    for r in rankings:
        yield annotator.rank(r)


def load_annotator(kg_path: str | None = None, tie: float = 0.02) -> SimulatedAnnotator:
    if not kg_path:
        return SimulatedAnnotator(tie=tie)
    cfg = KGConfig(path=kg_path)
    return SimulatedAnnotator(load_index(cfg), cfg, tie=tie)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zhongjing annotate simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="Ranking JSONL with empty rankings (from zhongjing generate)")
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--kg", help="knowledge graph file for the drug check (xywy format)")
    p.add_argument("--tie", type=non_negative, default=0.02)
    a = p.parse_args(argv)

    ranked = list(simulate(read_rankings(a.file), load_annotator(a.kg, a.tie)))
    write_jsonl(a.out, ranked)
    wrong = sum(r.all_wrong for r in ranked)
    print(f"simulated annotator ranked {len(ranked)} prompts ({wrong} all wrong) → {a.out} "
          "[heuristic rankings, not doctors' judgements]")
    return 0
