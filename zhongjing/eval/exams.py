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
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

from zhongjing.config import at_least
from zhongjing.errors import ZhongjingError
from zhongjing.llm.cache import Cache, cache_key
from zhongjing.llm.client import Endpoint, parallel
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
    debias: Literal["cyclic", "none"] = "cyclic"  # also ask every cyclic shift of the options (n× the questions):
    # the debiased score averages over them, so a model that always picks one letter scores exactly chance

    def __post_init__(self):
        at_least(self, 0, "limit")


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


def shift_item(item, s: int):
    """The question with its option texts moved s places up the letters (cyclically); the answer follows its text.
    Shift 0 is the item itself; a shifted copy is named `id~s` and remembers its original in meta["shift_of"]."""
    if s == 0:
        return item
    letters = list(item.options)
    n = len(letters)
    options = {letters[i]: item.options[letters[(i + s) % n]] for i in range(n)}
    answer = "".join(sorted(letters[(letters.index(a) - s) % n] for a in item.answer))
    return replace(item, id=f"{item.id}~{s}", options=options, answer=answer, meta={**item.meta, "shift_of": item.id})


def origin(item) -> str:
    return item.meta.get("shift_of", item.id)


@dataclass
class Exam:
    name: str
    items: list  # scored questions
    pool: list  # few-shot candidates
    cfg: ExamConfig
    variants: list = field(default_factory=list)  # cyclic option shifts of the items (debias: cyclic), asked too

    def asked(self) -> list:
        return self.items + self.variants

    def shots_for(self, item, k: int, seed: int) -> list:
        """k examples, from the same subject when the pool has enough, chosen reproducibly per question
        (the same ones for every shift of a question)."""
        if k == 0:
            return []
        same = [x for x in self.pool if x.subject == item.subject and x.id != origin(item) and len(x.answer) == 1]
        cands = same if len(same) >= k else [x for x in self.pool if x.id != origin(item) and len(x.answer) == 1]
        rng = random.Random(f"{seed}:{origin(item)}")
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
    variants = ([shift_item(it, s) for it in items if len(it.answer) == 1 for s in range(1, len(it.options))]
                if cfg.debias == "cyclic" else [])
    return Exam(cfg.name, items, pool, cfg, variants)


# ------------------------------------------------------------------------------------ local models

def _prefix_ids(tok, messages: list[dict]) -> list[int]:
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX
    return tok(text, add_special_tokens=False)["input_ids"]


def continuation_logprobs(model, groups: Sequence[tuple[list[int], list[list[int]]]],
                          batch_size: int = 8) -> list[list[list[float]]]:
    """Per-token log-probabilities of each continuation of each prefix: groups of (prefix, [conts]).

    When every continuation of a prefix is one token (option letters), one forward pass of the
    prefix scores them all; otherwise each prefix + continuation is run. Runs are batched by length (little
    padding), right-padded without an attention mask (causal: no real token sees a pad to its right, and sdpa
    keeps its fast path), and the vocabulary projection runs on the read positions only.
    """
    import torch

    from zhongjing.train.lm import only_positions

    device = next(model.parameters()).device
    # each run: (token ids, [(position, token)] whose log-probs are read) — never keep full-vocab rows
    runs: list[tuple[list[int], list[tuple[int, int]]]] = []
    for prefix, conts in groups:
        n = len(prefix)
        if all(len(c) == 1 for c in conts):
            runs.append((list(prefix), [(n - 1, c[0]) for c in conts]))
        else:
            runs += [(list(prefix) + list(c), [(n - 1 + j, t) for j, t in enumerate(c)]) for c in conts]
    values: list[list[float]] = [[] for _ in runs]
    order = sorted(range(len(runs)), key=lambda i: len(runs[i][0]))
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = order[s:s + batch_size]
            width = max(len(runs[i][0]) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            keep = torch.zeros((len(batch), width), dtype=torch.bool)
            for r, i in enumerate(batch):
                q, reads = runs[i]
                ids[r, :len(q)] = torch.tensor(q)
                keep[r, [p for p, _ in reads]] = True
            with only_positions(model, keep.to(device)):
                logits = model(input_ids=ids.to(device), use_cache=False).logits  # (N, V): kept positions, row-major
            logp = torch.log_softmax(logits.float(), -1)
            at = 0
            for r, i in enumerate(batch):
                reads = runs[i][1]
                cols = sorted({p for p, _ in reads})
                row = {p: at + j for j, p in enumerate(cols)}
                at += len(cols)
                values[i] = logp[[row[p] for p, _ in reads], [t for _, t in reads]].tolist()
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
                      chunk: int = 256, progress: Callable[[int, int], None] | None = None) -> dict[str, str]:
    """item id → predicted letter by likelihood, cached per question. Asked: the questions and their cyclic
    option shifts (debias). Left out: multi-answer questions (not a single choice) and questions too long for the
    model even without examples; a k-shot prompt that does not fit loses its oldest examples. `lm` is an
    answers.LocalModel, loaded only when needed; no answer is generated."""
    items = [x for x in exam.asked() if len(x.answer) == 1]
    shots = {it.id: exam.shots_for(it, k, seed) for it in items}
    keys = {it.id: cache_key(kind="exam-local", model=lm.fingerprint, messages=exam_messages(it, shots[it.id]),
                             scoring=exam.cfg.scoring, options=list(it.options)) for it in items}
    have = cache.get_many("exam", list(keys.values()))
    out = {it.id: have[keys[it.id]]["prediction"] for it in items if keys[it.id] in have}
    todo = [it for it in items if it.id not in out]
    tokens: dict[str, list[int]] = {}  # option letters (and texts) repeat across questions: tokenise each once

    def ids(text: str) -> list[int]:
        if text not in tokens:
            tokens[text] = tok(text, add_special_tokens=False)["input_ids"]
        return tokens[text]

    for s in range(0, len(todo), chunk):
        part = todo[s:s + chunk]
        model, tok = lm.load()
        ctx = lm.max_length(1 << 30)
        groups, fits, done = [], [], []
        for it in part:
            conts = [ids(letter if exam.cfg.scoring == "letter" else f"{letter}. {text}")
                     for letter, text in it.options.items()]
            use = list(shots[it.id])
            prefix = _prefix_ids(tok, exam_messages(it, use))
            while use and len(prefix) + max(map(len, conts)) > ctx:
                use = use[1:]
                prefix = _prefix_ids(tok, exam_messages(it, use))
            if len(prefix) + max(map(len, conts)) > ctx:
                done.append((keys[it.id], {"prediction": None, "skipped": f"longer than the context ({ctx})"}))
                out[it.id] = None
                continue
            groups.append((prefix, conts))
            fits.append((it, len(use)))
        for (it, used), lps in zip(fits, continuation_logprobs(model, groups, batch_size)):
            # letter: total log-prob; option text: mean per token, so long options are not penalised
            scores = [sum(x) if exam.cfg.scoring == "letter" else sum(x) / max(len(x), 1) for x in lps]
            pred = list(it.options)[max(range(len(scores)), key=scores.__getitem__)]
            done.append((keys[it.id], {"prediction": pred, "scores": scores, "shots": used}))
            out[it.id] = pred
        cache.put_many("exam", done)  # one commit per chunk
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
    for it in exam.asked():
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
            progress(len(out) + failed + 1, len(exam.asked()))
        if isinstance(reply, Exception):  # no reply: not a wrong answer, and not cached
            failed += 1
            continue
        cache.put("exam", key, {"reply": reply})
        out[it.id] = parse_letters(reply, list(it.options))
    if failed:
        print(f"[eval] {endpoint.name} on {exam.name} ({k}-shot): {failed} requests failed after retries "
              "(skipped, asked again on the next run)", file=sys.stderr, flush=True)
    return out


def debiased(exam: Exam, predictions: dict[str, str | None]) -> dict:
    """Mean over questions of the accuracy over all cyclic shifts of its options (questions with every shift
    answered), and the chance level Σ 1/n_options / questions. A constant letter is right in exactly one shift of
    each question, so it scores exactly chance; so does any choice that ignores the option texts."""
    per_q, chance = [], []
    for it in exam.items:
        if len(it.answer) != 1:
            continue
        shifts = [shift_item(it, s) for s in range(len(it.options))]
        if all(x.id in predictions for x in shifts):
            per_q.append(sum(predictions[x.id] == x.answer for x in shifts) / len(shifts))
            chance.append(1 / len(shifts))
    n = len(per_q)
    return {"n": n, "accuracy": sum(per_q) / n if n else float("nan"),
            "chance": sum(chance) / n if n else float("nan")}


def letter_shares(predictions: dict[str, str | None], items: list) -> dict[str, float]:
    """How often each letter was predicted (None: unparsed), over the unshifted questions asked."""
    got = Counter(predictions[it.id] for it in items if it.id in predictions)
    total = sum(got.values())
    return {str(k): v / total for k, v in sorted(got.items(), key=lambda kv: (-kv[1], str(kv[0])))}


def score(exam: Exam, predictions: dict[str, str | None], seed: int = 0, n_boot: int = 2000) -> dict:
    """Accuracy over the questions that were asked, with a bootstrap interval and per-subject accuracy; the
    predicted-letter distribution, and the debiased (cyclic-shift) accuracy when the shifts were asked."""
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
        "letters": letter_shares(predictions, exam.items),
        "debiased": debiased(exam, predictions) if exam.variants else None,
    }
