"""Patient simulators, one interface: `replies(states) -> [Reply]` for a batch of episodes in progress.

    retrieval  offline, deterministic: the hidden facts the doctor's *questions* ask about (lexicon terms in common,
               or a cue of the fact's kind: "多久" asks for a duration), verbatim, at most `max_facts` per turn;
               otherwise "I don't know". It never invents (it only ever says fact texts or two fixed lines) and never
               reveals a fact no question asked about.
    endpoint   any OpenAI-compatible LLM with a persona prompt written from the case (llm/client.py), its replies
               cached (llm/cache.py) so a stopped run resumes without asking twice.
    model      a local model folder (e.g. trained with `train sft side=patient`), prompted with the same persona.

Which facts a free-text patient (endpoint/model) revealed is read back from its reply (`mentioned`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from zhongjing.config import at_least
from zhongjing.consult.cases import KINDS, Case, Fact, persona
from zhongjing.data.text import asks_question, sentences
from zhongjing.llm.client import EndpointConfig

UNKNOWN = "这个我不太清楚。"
THANKS = "好的，谢谢医生。"
# a question with one of these cues asks for facts of that kind, even without naming a lexicon term
CUES: dict[str, re.Pattern] = {
    "symptom": re.compile(r"症状|哪里不舒服|还有(什么|没有|其他|别的)|其他|别的|什么感觉|怎么样|表现"),
    "duration": re.compile(r"多久|多长时间|几天|多少天|什么时候|持续|多长"),
    "history": re.compile(r"以前|既往|病史|过敏|手术|慢性|家族|怀孕|年龄|多大"),
    "medication": re.compile(r"药|用过|吃过|治疗过|处理过|打过针"),
    "test": re.compile(r"检查|化验|查过|结果|体温|量过|血压|血糖|报告"),
}


@dataclass
class PatientSettings:
    kind: str = "retrieval"  # retrieval | endpoint | model
    path: str = ""  # model folder for kind=model
    max_facts: int = 2  # facts the retrieval patient reveals per question at most
    endpoint: EndpointConfig = field(default_factory=lambda: EndpointConfig(temperature=0.0, max_tokens=128))
    cache: str = ""  # kind=endpoint: sqlite cache of its replies (default OUTPUT/patient_cache.sqlite)

    def __post_init__(self):
        at_least(self, 1, "max_facts")  # −1 revealed nothing, silently


@dataclass
class Reply:
    text: str
    facts: list[int]  # indices into case.facts revealed by this reply


@dataclass
class State:
    """One episode in progress: the case, the dialogue so far (dict messages, no system) and what was revealed."""

    case: Case
    messages: list[dict]
    revealed: set[int] = field(default_factory=set)


def questions_of(doctor_turn: str) -> str:
    """Only the doctor's questions ask for facts (advice that names a drug asks nothing)."""
    return " ".join(s for s in sentences(doctor_turn) if asks_question(s))


def relevance(question: str, fact: Fact) -> int:
    """2 per fact term the question names, +1 when the question carries a cue of the fact's kind; 0 = not asked."""
    if not question:
        return 0
    return 2 * sum(t in question for t in fact.terms) + int(bool(CUES[fact.kind].search(question)))


class RetrievalPatient:
    name = "retrieval"

    def __init__(self, max_facts: int = 2):
        self.max_facts = max_facts

    def answer(self, case: Case, doctor_turn: str, revealed: set[int]) -> Reply:
        q = questions_of(doctor_turn)
        if not q:
            return Reply(THANKS, [])
        ranked = sorted(((relevance(q, f), -i) for i, f in enumerate(case.facts) if i not in revealed), reverse=True)
        picked = sorted(-i for score, i in ranked[: self.max_facts] if score > 0)
        if not picked:
            return Reply(UNKNOWN, [])
        return Reply("，".join(case.facts[i].text for i in picked) + "。", picked)

    def replies(self, states: list[State]) -> list[Reply]:
        return [self.answer(s.case, s.messages[-1]["content"], s.revealed) for s in states]


def _bigrams(s: str) -> set[str]:
    s = re.sub(r"\W", "", s)
    return {s[i:i + 2] for i in range(len(s) - 1)}


def mentioned(reply: str, fact: Fact, threshold: float = 0.5) -> bool:
    """Whether a free-text reply states the fact: most of the fact's character bigrams appear in it."""
    b = _bigrams(fact.text)
    return bool(b) and len(b & _bigrams(reply)) / len(b) >= threshold


def read_back(case: Case, text: str, revealed: set[int]) -> Reply:
    return Reply(text, [i for i, f in enumerate(case.facts) if i not in revealed and mentioned(text, f)])


def patient_messages(s: State) -> list[dict]:
    """The episode from the patient's side: the doctor's turns become the 'user' turns it answers."""
    flip = {"user": "assistant", "assistant": "user"}
    return [{"role": "system", "content": persona(s.case)}] + [{"role": flip[m["role"]], "content": m["content"]}
                                                               for m in s.messages[1:]]


class EndpointPatient:
    """An OpenAI-compatible LLM as the patient (llm/client.py), every reply cached (llm/cache.py) by the persona,
    the dialogue and the sampling parameters: a stopped run replays its finished replies without asking again."""

    name = "endpoint"

    def __init__(self, endpoint, cache=None):
        self.endpoint, self.cache = endpoint, cache

    def _one(self, s: State) -> str:
        from zhongjing.llm.cache import cache_key

        msgs = patient_messages(s)
        key = cache_key(role="patient", params=self.endpoint.cfg.params(), messages=msgs)
        text = self.cache.get("patient", key) if self.cache is not None else None
        if text is None:
            text = self.endpoint.chat(msgs)
            if self.cache is not None:
                self.cache.put("patient", key, text)
        return text

    def replies(self, states: list[State]) -> list[Reply]:
        from zhongjing.llm.client import parallel

        got = dict((id(s), r) for s, r in parallel(self._one, states, self.endpoint.cfg.concurrency))
        for r in got.values():
            if isinstance(r, Exception):
                raise r
        return [read_back(s.case, got[id(s)], s.revealed) for s in states]


class ModelPatient:
    """A local model folder answering as the patient (greedy, so episodes repeat)."""

    name = "model"

    def __init__(self, path: str, max_new_tokens: int = 64, max_length: int = 1024):
        from zhongjing.data.render import Renderer
        from zhongjing.model.load import end_of_turn_ids, load_model, load_tokenizer

        self.tok = load_tokenizer(path)
        self.model = load_model(path)
        self.renderer = Renderer(self.tok, max_length=max_length)
        self.stop = end_of_turn_ids(self.tok, self.model)
        self.max_new_tokens = max_new_tokens

    def replies(self, states: list[State]) -> list[Reply]:
        from zhongjing.model.generation import sample

        prompts = [self.renderer.prompt_ids(patient_messages(s), reserve=self.max_new_tokens) for s in states]
        gens = sample(self.model, self.tok, prompts, max_new_tokens=self.max_new_tokens, temperature=0.0, seed=0,
                      stop_ids=self.stop, batch_size=16)
        return [read_back(s.case, g.text.strip() or UNKNOWN, s.revealed) for s, g in zip(states, gens)]


def make_patient(kind: str, *, path: str = "", max_facts: int = 2, endpoint=None, cache: str = ""):
    """`endpoint`: an llm.client.EndpointConfig (kind=endpoint); `cache`: its sqlite file (resume without re-asking)."""
    from zhongjing.errors import ConfigError

    if kind == "retrieval":
        return RetrievalPatient(max_facts)
    if kind == "model":
        if not path:
            raise ConfigError("patient.kind=model needs patient.path=MODEL_DIR")
        return ModelPatient(path)
    if kind == "endpoint":
        from zhongjing.llm.cache import Cache
        from zhongjing.llm.client import Endpoint

        if endpoint is None or not endpoint.base_url:
            raise ConfigError("patient.kind=endpoint needs patient.endpoint.base_url and patient.endpoint.model")
        return EndpointPatient(Endpoint(endpoint, "patient"), Cache(cache) if cache else None)
    raise ConfigError(f"unknown patient kind {kind!r} (retrieval, endpoint, model)")


__all__ = ["KINDS", "PatientSettings", "Reply", "State", "RetrievalPatient", "EndpointPatient", "ModelPatient", "make_patient"]
