"""Instruction-shaped formats: CMtMedQA (+ safety prompts), huatuo26M-test, alpaca (+history),
BenTsao multi-turn, ChatMed-Consult, HuatuoGPT eval cases, PromptCBLUE, question/answer pairs,
prompt-only sets (questions without answers) and the QiZhen drug-indication CSV."""

from __future__ import annotations

import re
from typing import Any, Iterator

from zhongjing.data.readers.base import (
    Raw, Source, clean_meta, convert_rows, join_parts, json_format, make_dialogue, need, record_id, register, text_field,
)
from zhongjing.data.readers.chat import history_turns
from zhongjing.data.schema import Dialogue
from zhongjing.errors import DataError


def _cmtmedqa(obj: Any, raw: Raw, src: Source) -> Dialogue:
    if isinstance(obj, dict) and "instruct" in obj:  # safety / red-team prompt with a safe reference answer
        need(obj, "instruct", "output")
        return make_dialogue([("user", obj["instruct"]), ("assistant", obj["output"])],
                             id=record_id(src, raw, obj.get("id")), meta={"source": "cmtmedqa", "safety": True})
    need(obj, "instruction", "output")
    turns = history_turns(obj.get("history"))
    turns += [("user", join_parts(text_field(obj, "instruction"), text_field(obj, "input", optional=True))),
              ("assistant", obj["output"])]
    meta = clean_meta(source="cmtmedqa", department=obj.get("cate1"), subdepartment=obj.get("cate2"))
    return make_dialogue(turns, id=record_id(src, raw, obj.get("id")), meta=meta)


json_format("cmtmedqa", "dialogue", "CMtMedQA: {id, cate1, cate2, instruction, input, output, history: [[q, a], ...]}"
            " (safety records {instruct, output} in the same file)")(_cmtmedqa)
json_format("cmtmedqa_safety", "dialogue", "CMtMedQA safety prompts: {instruct, output}")(_cmtmedqa)


def _one(obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, list) or len(value) != 1:
        n = f"{len(value)} items" if isinstance(value, list) else type(value).__name__
        raise DataError(f"field {key!r} must be a one-element list of text, got {n}")
    return value[0]


@json_format("huatuo", "dialogue", "huatuo26M-test: {id, instruction: [q], input, output: [a]}")
def _huatuo(obj: Any, raw: Raw, src: Source) -> Dialogue:
    need(obj, "instruction", "output")
    question = _one(obj, "instruction")
    if not isinstance(question, str):
        raise DataError(f"field 'instruction' must hold text, got {type(question).__name__}")
    turns = [("user", join_parts(question, text_field(obj, "input", optional=True))), ("assistant", _one(obj, "output"))]
    return make_dialogue(turns, id=record_id(src, raw, obj.get("id")), meta={"source": "huatuo"})


@json_format("alpaca", "dialogue", "alpaca: {instruction, input, output, history?: [[q, a], ...], system?}")
def _alpaca(obj: Any, raw: Raw, src: Source) -> Dialogue:
    need(obj, "instruction", "output")
    turns = [("system", obj["system"])] if str(obj.get("system") or "").strip() else []
    turns += history_turns(obj.get("history"))
    turns += [("user", join_parts(text_field(obj, "instruction"), text_field(obj, "input", optional=True))),
              ("assistant", obj["output"])]
    return make_dialogue(turns, id=record_id(src, raw, obj.get("id")), meta={"source": "alpaca"})


_TAG = re.compile(r"<(user|bot)>\s*[:：]")


def tagged_turns(text: str) -> list[tuple[str, str]]:
    """' <user>: … <bot>: … <user>: …' → turns (BenTsao liver-cancer dialogues)."""
    parts = _TAG.split(text)
    if parts[0].strip():
        raise DataError("text before the first <user>:/<bot>: tag")
    return [("user" if tag == "user" else "assistant", body) for tag, body in zip(parts[1::2], parts[2::2])]


@json_format("bentsao_multiturn", "dialogue", "BenTsao multi-turn: {instruction: ' <user>: … <bot>: … <user>: …', output}")
def _bentsao(obj: Any, raw: Raw, src: Source) -> Dialogue:
    need(obj, "instruction", "output")
    turns = tagged_turns(text_field(obj, "instruction")) + [("assistant", obj["output"])]
    # its `id` numbers the source paper (several records share one), so it is meta, not the record id
    return make_dialogue(turns, id=record_id(src, raw), meta=clean_meta(source="bentsao_multiturn", paper_id=obj.get("id")))


_CHATMED = re.compile(r"^\s*(?:<s>)?\s*问[：:]\s*(.*?)\s*(?:答[：:]\s*)?$", re.S)


@json_format("chatmed_consult", "dialogue", "ChatMed-Consult: {query: '<s>问：…答：', response} (responses are model-written)")
def _chatmed(obj: Any, raw: Raw, src: Source) -> Dialogue:
    need(obj, "query", "response")
    query = text_field(obj, "query")
    m = _CHATMED.match(query)
    turns = [("user", m.group(1) if m else query), ("assistant", obj["response"])]
    return make_dialogue(turns, id=record_id(src, raw, obj.get("id")),
                         meta={"source": "chatmed_consult", "response_origin": "model"})


@json_format("huatuogpt_eval", "dialogue", "HuatuoGPT eval cases: {id, medical_case, doctor_diagnosis, Department}")
def _huatuogpt(obj: Any, raw: Raw, src: Source) -> Dialogue:
    need(obj, "medical_case", "doctor_diagnosis")
    meta = clean_meta(source="huatuogpt_eval", department=obj.get("Department"))
    return make_dialogue([("user", obj["medical_case"]), ("assistant", obj["doctor_diagnosis"])],
                         id=record_id(src, raw, obj.get("id")), meta=meta)


QA_KEYS = (("question", "answer"), ("问", "答"), ("query", "answer"), ("prompt", "response"))


@json_format("qa", "dialogue", "question/answer pairs: {question, answer} or {问, 答} or {prompt, response}")
def _qa(obj: Any, raw: Raw, src: Source) -> Dialogue:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    for q, a in QA_KEYS:
        if q in obj and a in obj:
            return make_dialogue([("user", obj[q]), ("assistant", obj[a])], id=record_id(src, raw, obj.get("id")),
                                 meta={"source": "qa"})
    raise DataError(f"missing question/answer fields (one of {', '.join('/'.join(p) for p in QA_KEYS)}; has: {', '.join(obj)})")


PROMPT_KEYS = ("question", "query", "prompt", "instruction", "input")


@json_format("prompts", "dialogue", "prompts without answers: {question|query|prompt, ...labels} → one user turn each")
def _prompts(obj: Any, raw: Raw, src: Source) -> Dialogue:
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}")
    key = next((k for k in PROMPT_KEYS if k in obj), None)
    if key is None:
        raise DataError(f"missing a prompt field (one of {', '.join(PROMPT_KEYS)}; has: {', '.join(obj)})")
    labels = {k: v for k, v in obj.items() if k not in (key, "id") and isinstance(v, (str, int, float, bool))}
    return make_dialogue([("user", obj[key])], id=record_id(src, raw, obj.get("id")), meta={"source": "prompts", **labels})


@register("prompt_lines", "dialogue", "one prompt per line under a one-word header (input/question/query) → user turns")
def _prompt_lines(src: Source) -> Iterator[Any]:
    lines = src.text.lstrip("\ufeff").splitlines()
    header = lines[0].strip() if lines else ""
    if header not in PROMPT_KEYS:
        raise DataError(f"first line must be a header naming the column ({', '.join(PROMPT_KEYS)}), got {header[:20]!r}",
                        src.name, "line 1")
    index = 0
    for line in lines[1:]:
        if line.strip():
            yield make_dialogue([("user", line)], id=f"{src.stem}:{index}", meta={"source": "prompt_lines"})
            index += 1


@json_format("promptcblue", "dialogue", "PromptCBLUE: {input, target, answer_choices, task_type, task_dataset, sample_id}")
def _promptcblue(obj: Any, raw: Raw, src: Source) -> Dialogue:
    need(obj, "input", "target")
    target = text_field(obj, "target")
    # the test split ships without targets: those become prompt-only dialogues
    turns = [("user", obj["input"])] + ([("assistant", target)] if target.strip() else [])
    meta = clean_meta(source="promptcblue", task=obj.get("task_dataset"), task_type=obj.get("task_type"),
                      answer_choices=obj.get("answer_choices"))
    return make_dialogue(turns, id=record_id(src, raw, obj.get("sample_id")), meta=meta)


QIZHEN = ("药品", "医学专家标注的适应病症", "instruction")


def _qizhen(row: dict, raw: Raw, src: Source) -> Dialogue:
    labels = [x.strip() for x in row["医学专家标注的适应病症"].split("|") if x.strip()]
    if not labels:
        raise DataError("no expert-annotated indications")
    insert = re.sub(r"<[^>]+>", "", row.get("药品适应症", "")).strip()
    meta = clean_meta(source="qizhen_drug", drug=row["药品"].strip(), indications=labels, package_insert=insert)
    return make_dialogue([("user", row["instruction"]), ("assistant", "、".join(labels))],
                         id=f"{src.stem}:{raw.index}", meta=meta)


@register("qizhen_drug", "dialogue", "QiZhenGPT drug-indication CSV: 药品, 药品适应症, 医学专家标注的适应病症, instruction")
def _qizhen_csv(src: Source) -> Iterator[Any]:
    return convert_rows(src, QIZHEN, _qizhen)
