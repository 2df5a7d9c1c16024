"""Small text helpers shared by data stats, the builder, evaluation and the PPO reward.

`asks_question(doctor_turn)`: does the doctor ask the patient something (proactive inquiry, the
behaviour the paper trains for)? A sentence counts when it has a question mark, ends with a
question particle (吗/么/呢), or ends in a short clause around an interrogative (多久, 有没有, 是不是,
几天 …) that is not advice or explanation ("建议检查是否…", "一般需要治疗几天", "是否感染取决于…").
"""

from __future__ import annotations

import re

_SENTENCES = re.compile(r"[。！!；;\n]+")
_QMARK = re.compile(r"[?？]")
_PARTICLE = re.compile(r"(吗|么|呢)[\s”’\"')）~～…]*$")
_INTERROGATIVE = re.compile(
    r"是否|多久|多长时间|多大|多少(?!会|有|还|也|都)|几天|几周|几个月|几年|几次|几岁|几点|(?<![没不])什么(?![都也])|"
    r"哪里|哪儿|哪个|哪些|哪种|有没有|是不是|能不能|会不会|要不要|有无|怎么样|如何了|还有别的")
# advice and explanations use the same words without asking anything
_STATEMENT = re.compile(r"建议|需要|应该|应当|注意|最好|一般|通常|可以|请(?!问)|务必|必须|会|可能|是指|根据|取决于|由于|因为|"
                        r"观察|判断|明确|确定|排除|(?:检查|了解|看)(?=是否|有无|有没有)")
_CLAUSES = re.compile(r"[，,：:]")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCES.split(text) if s.strip()]


def _is_question(s: str) -> bool:
    if _QMARK.search(s) or _PARTICLE.search(s):
        return True
    # without a mark, only a short final clause built around the interrogative is a question
    # ("孩子发烧几天了"), not an explanation that mentions one ("是否感染取决于…")
    clause = _CLAUSES.split(s)[-1]
    m = _INTERROGATIVE.search(clause)
    if not m or len(clause) - m.end() > 8:
        return False
    return not any(a.start() < m.start() for a in _STATEMENT.finditer(clause))


def asks_question(text: str) -> bool:
    """True when any sentence of `text` asks the other party something."""
    return any(_is_question(s) for s in sentences(text))
