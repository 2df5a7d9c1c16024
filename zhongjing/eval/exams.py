"""Multiple-choice exams (licensing exam, CMMLU medical): accuracy zero- and few-shot.

Local models are scored by likelihood — the option letter the model finds most probable after
"答案：" (or, with `scoring: option`, the option text with the best mean token log-probability) —
so no answer is lost to formatting. Endpoint models answer in text and the letter is parsed; a
reply with no readable letter counts as wrong and is reported as `unparsed`; a request that still fails
after the client's retries (connection, 5xx) is no reply at all: left out, reported as `skipped`, asked again
on the next run.

Few-shot examples are earlier exchanges of the same chat (question → "答案：X"). Without a dev file
they are drawn from the exam itself and excluded from scoring for every shot count, so the zero-
and few-shot numbers cover the same questions.
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

from zhongjing.errors import ZhongjingError
from zhongjing.eval.cache import Cache, cache_key
from zhongjing.eval.client import Endpoint, parallel
from zhongjing.eval.stats import accuracy_ci

ANSWER_PREFIX = "答案："


@dataclass
class ExamConfig:
    name: str = ""
    path: str = ""  # a file, or a folder of files (CMMLU: one CSV per subject)
    format: str = "auto"
    dev: str = ""  # few-shot examples (file or folder); empty → drawn from `path` and not scored
    shots: list[int] = field(default_factory=lambda: [0])
    limit: int = 0  # questions sampled with the seed; 0 = all
    scoring: Literal["letter", "option"] = "letter"  # local models: letter likelihood or option-text likelihood


def read_items(path: str, fmt: str = "auto") -> list:
    """Questions of a file or a folder of files (the readers walk folders)."""
    from zhongjing.data.readers import read_exam

    if not Path(path).exists():
        raise ZhongjingError(f"exam file or folder not found: {path}")
    items = list(read_exam(path, None if fmt in ("", "auto") else fmt))
    if not items:
        raise ZhongjingError(f"{path}: no exam questions")
    return items


# CMMLU's medical subjects (file names) in Chinese, for the prompt
SUBJECTS_ZH = {"anatomy": "解剖学", "clinical_knowledge": "临床知识", "college_medical_statistics": "大学医学统计",
               "college_medicine": "大学医学", "genetics": "遗传学", "nutrition": "营养学",
               "professional_medicine": "专业医学", "traditional_chinese_medicine": "中医中药", "virology": "病毒学"}


def subject_name(subject: str) -> str:
    return SUBJECTS_ZH.get(subject, subject.replace("_", " ")) if subject else "医学"


def question_text(item) -> str:
    return (f"以下是关于{subject_name(item.subject)}的单项选择题，请直接给出正确答案的选项字母。\n\n"
            if len(item.answer) == 1 else
            f"以下是关于{subject_name(item.subject)}的多项选择题，请给出所有正确答案的选项字母。\n\n") + item.prompt()


def exam_messages(item, shots: Sequence) -> list[dict]:
    msgs = []
    for ex in shots:
        msgs += [{"role": "user", "content": question_text(ex)}, {"role": "assistant", "content": ANSWER_PREFIX + ex.answer}]
    return msgs + [{"role": "user", "content": question_text(item)}]


@dataclass
class Exam:
    name: str
    items: list  # scored questions
    pool: list  # few-shot candidates
    cfg: ExamConfig

    def shots_for(self, item, k: int, seed: int) -> list:
        """k examples, from the same subject when the pool has enough, chosen reproducibly per question."""
        if k == 0:
            return []
        same = [x for x in self.pool if x.subject == item.subject and x.id != item.id and len(x.answer) == 1]
        cands = same if len(same) >= k else [x for x in self.pool if x.id != item.id and len(x.answer) == 1]
        rng = random.Random(f"{seed}:{item.id}")
        return rng.sample(cands, min(k, len(cands)))


def load_exam(cfg: ExamConfig, seed: int = 0) -> Exam:
    if not cfg.name:
        raise ZhongjingError(f"exam {cfg.path!r}: give it a name")
    items = read_items(cfg.path, cfg.format)
    need = max(cfg.shots or [0])
    if cfg.dev:
        pool = read_items(cfg.dev, cfg.format)
    else:
        rng = random.Random(seed)
        order = list(range(len(items)))
        rng.shuffle(order)
        # enough held-out examples for every subject to find `need` of its own where possible
        subjects = sorted({x.subject for x in items})
        picked: list[int] = []
        for s in subjects:
            picked += [i for i in order if items[i].subject == s][:need]
        pool = [items[i] for i in sorted(set(picked))]
        taken = {x.id for x in pool}
        items = [x for x in items if x.id not in taken]
    if cfg.limit and cfg.limit < len(items):
        keep = sorted(random.Random(seed).sample(range(len(items)), cfg.limit))
        items = [items[i] for i in keep]
    return Exam(cfg.name, items, pool, cfg)


# ------------------------------------------------------------------------------------ local models

def _prefix_ids(tok, messages: list[dict]) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX
    return tok(text, add_special_tokens=False)["input_ids"]


def continuation_logprobs(model, groups: Sequence[tuple[list[int], list[list[int]]]],
                          batch_size: int = 8) -> list[list[list[float]]]:
    """Per-token log-probabilities of each continuation of each prefix: groups of (prefix, [conts]).

    When every continuation of a prefix is one token (option letters), one forward pass of the
    prefix scores them all; otherwise each prefix + continuation is run (right-padded batches).
    """
    import torch

    device = next(model.parameters()).device
    # each run: (token ids, [(position, token)] whose log-probs are read) — never keep full-vocab rows
    runs: list[tuple[list[int], list[tuple[int, int]]]] = []
    for prefix, conts in groups:
        n = len(prefix)
        if all(len(c) == 1 for c in conts):
            runs.append((list(prefix), [(n - 1, c[0]) for c in conts]))
        else:
            runs += [(list(prefix) + list(c), [(n - 1 + j, t) for j, t in enumerate(c)]) for c in conts]
    values: list[list[float]] = []
    with torch.inference_mode():
        for s in range(0, len(runs), batch_size):
            batch = runs[s:s + batch_size]
            width = max(len(q) for q, _ in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (q, _) in enumerate(batch):
                ids[i, :len(q)] = torch.tensor(q)
                mask[i, :len(q)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for i, (_, reads) in enumerate(batch):
                pos = torch.tensor([p for p, _ in reads], device=device)
                tok = torch.tensor([t for _, t in reads], device=device)
                lp = torch.log_softmax(logits[i, pos].float(), -1)
                values.append(lp[torch.arange(len(reads), device=device), tok].tolist())
    out: list[list[list[float]]] = []
    k = 0
    for prefix, conts in groups:
        if all(len(c) == 1 for c in conts):
            out.append([[v] for v in values[k]])
            k += 1
        else:
            out.append(values[k:k + len(conts)])
            k += len(conts)
    return out


def local_predictions(lm, exam: Exam, k: int, seed: int, cache: Cache, batch_size: int = 8,
                      chunk: int = 64, progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
    """item id → predicted letter by likelihood, cached per question. Left out: multi-answer questions
    (not a single choice) and questions too long for the model even without examples; a k-shot prompt
    that does not fit loses its oldest examples. `lm` is an answers.LocalModel, loaded only when needed."""
    items = [x for x in exam.items if len(x.answer) == 1]
    shots = {it.id: exam.shots_for(it, k, seed) for it in items}
    keys = {it.id: cache_key(kind="exam-local", model=lm.fingerprint, messages=exam_messages(it, shots[it.id]),
                             scoring=exam.cfg.scoring, options=list(it.options)) for it in items}
    have = cache.get_many("exam", list(keys.values()))
    out = {it.id: have[keys[it.id]]["prediction"] for it in items if keys[it.id] in have}
    todo = [it for it in items if it.id not in out]
    for s in range(0, len(todo), chunk):
        part = todo[s:s + chunk]
        model, tok = lm.load()
        ctx = lm.max_length(1 << 30)
        groups, fits = [], []
        for it in part:
            conts = [tok(letter if exam.cfg.scoring == "letter" else f"{letter}. {text}", add_special_tokens=False)
                     ["input_ids"] for letter, text in it.options.items()]
            use = list(shots[it.id])
            prefix = _prefix_ids(tok, exam_messages(it, use))
            while use and len(prefix) + max(map(len, conts)) > ctx:
                use = use[1:]
                prefix = _prefix_ids(tok, exam_messages(it, use))
            if len(prefix) + max(map(len, conts)) > ctx:
                cache.put("exam", keys[it.id], {"prediction": None, "skipped": f"longer than the context ({ctx})"})
                out[it.id] = None
                continue
            groups.append((prefix, conts))
            fits.append((it, len(use)))
        for (it, used), lps in zip(fits, continuation_logprobs(model, groups, batch_size)):
            # letter: total log-prob; option text: mean per token, so long options are not penalised
            scores = [sum(x) if exam.cfg.scoring == "letter" else sum(x) / max(len(x), 1) for x in lps]
            pred = list(it.options)[max(range(len(scores)), key=scores.__getitem__)]
            cache.put("exam", keys[it.id], {"prediction": pred, "scores": scores, "shots": used})
            out[it.id] = pred
        if progress:  # a 3,000-question exam with 5 shots runs long: say how far it is
            progress(len(out), len(items))
    return {i: p for i, p in out.items() if p is not None}


# ------------------------------------------------------------------------------------ endpoints

_LETTERS = re.compile(r"(?<![A-Za-z])([A-H])(?![A-Za-z])")


def parse_letters(reply: str, options: Sequence[str]) -> str | None:
    """The option letter(s) a free-text reply commits to, or None (never a guess)."""
    if not reply:
        return None
    text = reply.strip().replace("：", ":")
    m = re.search(r"答案\s*(?:是|为|应为|应该是)?\s*:?\s*[\"“（(]?\s*([A-H](?:\s*[、,，和]?\s*[A-H])*)", text)
    found = m.group(1) if m else None
    if found is None:  # a reply that starts with its letter(s) and names no other option
        m = re.match(r"^\s*[\"“（(]?([A-H]+)(?![A-Za-z])", text)
        if m and set(_LETTERS.findall(text[m.end():])) <= set(m.group(1)):
            found = m.group(1)
    if found is None:
        letters = {x for x in _LETTERS.findall(text) if x in options}
        found = letters.pop() if len(letters) == 1 else None
    if found is None:
        return None
    letters = "".join(sorted({c for c in found if c in options}))
    return letters or None


def endpoint_predictions(endpoint: Endpoint, exam: Exam, k: int, seed: int, cache: Cache,
                         progress: Callable[[int, int], None] | None = None) -> dict[str, str | None]:
    """item id → parsed letters (None: unparsed). Replies are cached; failed requests are left out (skipped)."""
    params = {**endpoint.cfg.params(), "max_tokens": min(endpoint.cfg.max_tokens, 64)}
    jobs = []
    out: dict[str, str | None] = {}
    failed = 0
    for it in exam.items:
        msgs = exam_messages(it, exam.shots_for(it, k, seed))
        key = cache_key(kind="exam", base_url=endpoint.cfg.base_url, messages=msgs, params=params)
        hit = cache.get("exam", key)
        if hit is not None:
            out[it.id] = parse_letters(hit["reply"], list(it.options))
        else:
            jobs.append((it, msgs, key))
    for (it, msgs, key), reply in parallel(lambda j: endpoint.chat(j[1], max_tokens=params["max_tokens"]), jobs,
                                           endpoint.cfg.concurrency):
        if progress:
            progress(len(out) + failed + 1, len(exam.items))
        if isinstance(reply, Exception):  # no reply: not a wrong answer, and not cached
            failed += 1
            continue
        cache.put("exam", key, {"reply": reply})
        out[it.id] = parse_letters(reply, list(it.options))
    if failed:
        print(f"[eval] {endpoint.name} on {exam.name} ({k}-shot): {failed} requests failed after retries "
              "(skipped, asked again on the next run)", file=sys.stderr, flush=True)
    return out


def score(exam: Exam, predictions: dict[str, str | None], seed: int = 0, n_boot: int = 2000) -> dict:
    """Accuracy over the questions that were asked, with a bootstrap interval and per-subject accuracy."""
    asked = [it for it in exam.items if it.id in predictions]
    correct = [predictions[it.id] == it.answer for it in asked]
    per_subject: dict[str, list[bool]] = {}
    for it, c in zip(asked, correct):
        per_subject.setdefault(it.subject or "all", []).append(c)
    n = len(asked)
    return {
        "n": n,
        "accuracy": sum(correct) / n if n else float("nan"),
        "ci": accuracy_ci(correct, n_boot=n_boot, seed=seed),
        "unparsed": sum(predictions[it.id] is None for it in asked),
        "skipped": len(exam.items) - n,
        "subjects": {s: {"n": len(v), "accuracy": sum(v) / len(v)} for s, v in sorted(per_subject.items())},
    }
