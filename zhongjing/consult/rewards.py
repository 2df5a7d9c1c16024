"""Episode rewards, each part logged: the final advice (reward model, or overlap with the gold advice without one),
information gain (share of hidden facts elicited), safety rules, a turn cost — and, for exam questions (RLVR),
answer-letter correctness + format.

A consultation that never advises (its last allowed doctor turn still asks) costs `no_advice`: without it, information
gain pays a doctor who only asks (measured on the real recipe: 40 updates took the share of advised episodes down).

Safety first (Safety > Professionalism > Fluency): a violation costs more than a perfect interview earns.
  - a prescription-only drug named before any doctor turn asked about allergies;
  - a red-flag symptom the doctor knows of (opening or revealed facts) while the advice does not send the patient to
    emergency care (the red-flag list is the simulated annotator's, data/simulate.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from zhongjing.config import finite
from zhongjing.consult.cases import Case
from zhongjing.data.simulate import _RED_FLAG, overlap_f1

RX_DRUG = re.compile(r"阿莫西林|头孢|青霉素|沙星|阿奇霉素|克拉霉素|红霉素|甲硝唑|抗生素|泼尼松|地塞米松|激素|"
                     r"奥司他韦|华法林|胰岛素|二甲双胍|地平|普利|沙坦|他汀|安眠药|抗抑郁")
ALLERGY = re.compile(r"过敏")
EMERGENCY = re.compile(r"急诊|120|立即就医|马上就医|尽快就医|立即就诊|马上去医院|立刻去医院|立即去医院|尽快去医院")
ANSWER = re.compile(r"答案[：:]\s*([A-E])")
FORMAT = re.compile(r"^\s*(答案[：:]\s*)?[A-E]\s*[。.]?\s*$")  # the letter alone, or "答案：X", nothing else
LETTER = re.compile(r"[A-E]")


@dataclass
class ConsultRewardSettings:
    rm: str = ""  # reward model folder scoring the final advice; empty = overlap with the gold advice
    advice: float = 1.0  # weight of the final-advice score
    info: float = 1.0  # × share of hidden facts elicited
    safety: float = 2.0  # − this per safety violation
    turn_cost: float = 0.05  # − this per doctor turn after the first
    no_advice: float = 1.0  # − this when the episode ends without advice (the last allowed turn still asks)
    normalize_rm: bool = True  # RM scores standardised over the rollout (their scale is arbitrary)

    def __post_init__(self):  # NaN weights trained on NaN rewards and wrote the policy
        finite(self, "advice", "info", "safety", "turn_cost", "no_advice")


def safety_violations(messages: list[dict], case: Case, revealed: list[int]) -> dict[str, bool]:
    asked_allergy, rx_unasked = False, False
    for m in messages:
        if m["role"] != "assistant":
            continue
        asked_allergy |= bool(ALLERGY.search(m["content"]))
        rx_unasked |= bool(RX_DRUG.search(m["content"])) and not asked_allergy
    known = case.opening + "".join(case.facts[i].text for i in revealed)
    red_flag_missed = bool(_RED_FLAG.search(known)) and not EMERGENCY.search(messages[-1]["content"])
    return {"rx_without_allergy_question": rx_unasked, "red_flag_not_referred": red_flag_missed}


class ConsultRewards:
    def __init__(self, s: ConsultRewardSettings, max_length: int = 1024):
        self.s, self.scorer = s, None
        if s.rm:
            from zhongjing.model.reward import RewardModelScorer

            self.scorer = RewardModelScorer(s.rm, max_length=max_length, normalize=False)

    def advice_scores(self, episodes) -> torch.Tensor:
        if self.scorer is None:
            return torch.tensor([overlap_f1(e.advice, e.case.reference) for e in episodes])
        contexts = [[m for m in e.messages[:-1]] for e in episodes]
        r = self.scorer.score(contexts, [e.advice for e in episodes]).float()
        if self.s.normalize_rm and len(r) > 1:
            r = (r - r.mean()) / (r.std() + 1e-6)
        return r

    def score(self, episodes) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.s
        f = lambda xs: torch.tensor([float(x) for x in xs])  # noqa: E731
        viol = [safety_violations(e.messages, e.case, e.revealed) for e in episodes]
        parts = {"advice": self.advice_scores(episodes), "info": f(e.elicited for e in episodes),
                 "rx_without_allergy_question": f(v["rx_without_allergy_question"] for v in viol),
                 "red_flag_not_referred": f(v["red_flag_not_referred"] for v in viol),
                 "turns": f(e.turns for e in episodes),
                 "asked_before_advice": f(e.questions_before_advice > 0 for e in episodes),
                 "premature": f(e.premature for e in episodes), "no_advice": f(not e.advised for e in episodes)}
        safety = parts["rx_without_allergy_question"] + parts["red_flag_not_referred"]
        total = (s.advice * parts["advice"] + s.info * parts["info"] - s.safety * safety
                 - s.turn_cost * (parts["turns"] - 1).clamp(min=0) - s.no_advice * parts["no_advice"])
        return total, parts


# ----------------------------------------------------------------------------- exam questions (RLVR)


def exam_prompt(question: str, options: dict[str, str]) -> str:
    return question + "\n" + "\n".join(f"{k}. {v}" for k, v in sorted(options.items())) + "\n请只回答正确选项的字母。"


def answer_letter(text: str) -> str | None:
    m = ANSWER.search(text) or LETTER.search(text)
    return m.group(1) if m and m.groups() else (m.group(0) if m else None)


@dataclass
class ExamRewardSettings:
    correct: float = 1.0  # the letter equals the key (verifiable: no model judges it)
    format: float = 0.2  # the reply is the letter alone (or "答案：X"), no rambling

    def __post_init__(self):
        finite(self, "correct", "format")


def exam_scores(episodes, s: ExamRewardSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    correct = torch.tensor([float(answer_letter(e.advice) == e.case.reference) for e in episodes])
    fmt = torch.tensor([float(bool(FORMAT.match(e.advice))) for e in episodes])
    return s.correct * correct + s.format * fmt, {"correct": correct, "format": fmt}
