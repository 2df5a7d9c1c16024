"""Evaluation with local models: exams scored by likelihood on a tiny trained model (checked against a plain
one-sequence forward pass), few-shot hygiene, gold perplexity, a real reward-model folder as the cheap judge,
and the real test sets: every CMtMedQA doctor turn, its safety prompts, the exams."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SHARED_DATA
from serve_tiny import chat_model_dir  # noqa: F401  (fixture)
from zhongjing.eval.answers import LocalModel, ModelSpec
from zhongjing.llm.cache import Cache
from zhongjing.eval.exams import (ANSWER_PREFIX, ExamConfig, exam_messages, load_exam, local_predictions, score,
                                  subject_name)
from zhongjing.eval import testsets

QUESTIONS = [
    ("发烧三天首先应做什么？", {"A": "测体温", "B": "吃抗生素", "C": "输液", "D": "手术"}, "A", "内科"),
    ("高血压患者应减少摄入哪种物质？", {"A": "水", "B": "盐", "C": "蔬菜", "D": "水果"}, "B", "内科"),
    ("儿童夜间咳嗽加重需排除什么？", {"A": "骨折", "B": "近视", "C": "哮喘", "D": "龋齿"}, "C", "儿科"),
    ("胸痛伴冷汗应怎么做？", {"A": "睡一觉", "B": "喝热水", "C": "按摩", "D": "立即急诊"}, "D", "内科"),
    ("踝关节扭伤早期应如何处理？", {"A": "热敷", "B": "冰敷", "C": "跑步", "D": "拉伸"}, "B", "外科"),
    ("胀气伴黑便提示什么？", {"A": "消化道出血", "B": "感冒", "C": "失眠", "D": "近视"}, "A", "内科"),
    ("下列哪些是发热的常见原因？", {"A": "感染", "B": "中暑", "C": "近视", "D": "龋齿"}, "AB", "内科"),
]


@pytest.fixture()
def exam_file(tmp_path):
    p = tmp_path / "exam.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "options": o, "answer": a, "subject": s},
                                    ensure_ascii=False) + "\n" for i, (q, o, a, s) in enumerate(QUESTIONS)),
                 encoding="utf-8")
    return p


def manual_logprob(model, tok, messages, cont: str) -> list[float]:
    """log p(cont | prompt) from one unpadded forward pass."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER_PREFIX
    prefix = tok(text, add_special_tokens=False)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([prefix + c])).logits[0].float(), -1)
    return [lp[len(prefix) - 1 + j, t].item() for j, t in enumerate(c)]


@pytest.mark.parametrize("scoring", ["letter", "option"])
def test_likelihood_scoring_matches_a_plain_forward_pass_and_is_cached(chat_model_dir, exam_file, tmp_path, scoring):
    exam = load_exam(ExamConfig(name="mini", path=str(exam_file), shots=[0, 1], scoring=scoring, debias="none"),
                     seed=3)
    # one held-out example per subject for the 1-shot prompts, never scored
    assert {x.id for x in exam.pool}.isdisjoint({x.id for x in exam.items})
    assert len({x.subject for x in exam.pool}) == 3 and len(exam.items) == len(QUESTIONS) - 3
    lm = LocalModel(ModelSpec(name="tiny", path=str(chat_model_dir)))
    model, tok = lm.load()
    with Cache(tmp_path / "c.sqlite") as cache:
        for k in (0, 1):
            preds = local_predictions(lm, exam, k, seed=3, cache=cache, batch_size=3)
            multi = [x.id for x in exam.items if len(x.answer) > 1]
            assert set(preds) == {x.id for x in exam.items} - set(multi)  # a multi-answer item is not one choice
            for it in exam.items:
                if it.id in multi:
                    continue
                shots = exam.shots_for(it, k, 3)
                assert len(shots) == k and all(s.id != it.id and s.id not in preds for s in shots)
                msgs = exam_messages(it, shots)
                conts = {L: (L if scoring == "letter" else f"{L}. {t}") for L, t in it.options.items()}
                manual = {L: manual_logprob(model, tok, msgs, c) for L, c in conts.items()}
                value = {L: sum(v) if scoring == "letter" else sum(v) / len(v) for L, v in manual.items()}
                assert preds[it.id] == max(value, key=value.get)
            s = score(exam, preds, n_boot=200)
            assert s["n"] == len(preds) and s["skipped"] == len(multi)
            correct = sum(preds[i] == x.answer for x in exam.items for i in [x.id] if i in preds)
            assert s["accuracy"] == pytest.approx(correct / len(preds))

        # a second pass needs no model at all: every prediction is in the cache
        lm2 = LocalModel(ModelSpec(name="tiny", path=str(chat_model_dir)))
        lm2.load = lambda: pytest.fail("loaded the model although every prediction was cached")
        assert local_predictions(lm2, exam, 1, seed=3, cache=cache) == preds


def test_gold_perplexity_prefers_learnt_answers_and_ignores_padding(chat_model_dir):
    from serve_tiny import DIALOGUES, messages
    from zhongjing.eval.metrics import gold_perplexity
    from zhongjing.model.load import load_model, load_tokenizer

    model, tok = load_model(chat_model_dir), load_tokenizer(chat_model_dir)
    learnt = gold_perplexity(model, tok, [messages(d) for d in DIALOGUES], max_length=256, batch_size=2)
    unseen = gold_perplexity(model, tok, [[{"role": "user", "content": "我头痛三天了，有点发烧。"},
                                           {"role": "assistant", "content": "请把您的护照号码和家庭住址发给我。"}]],
                             max_length=256)
    assert learnt["dialogues"] == len(DIALOGUES) and learnt["tokens"] > 0
    # the model was trained on these answers: far more probable than an answer it never saw
    assert 1 <= learnt["perplexity"] < unseen["perplexity"]
    assert 0 < learnt["nats_per_char"] < unseen["nats_per_char"]
    one = gold_perplexity(model, tok, [messages(DIALOGUES[0])], max_length=256)
    together = gold_perplexity(model, tok, [messages(DIALOGUES[0]), messages(DIALOGUES[0])], max_length=256, batch_size=2)
    assert together["perplexity"] == pytest.approx(one["perplexity"], rel=1e-4)  # padding changes nothing


def test_reward_model_folder_as_cheap_judge(chat_model_dir, tmp_path):
    from zhongjing.eval.judge import PairTask, judge_pairs
    from zhongjing.eval.run import JudgeConfig, build_judge
    from zhongjing.model.load import load_tokenizer
    from zhongjing.model.load import REWARD_TASK
    from zhongjing.model.value_head import new_reward_model
    from zhongjing.model.reward import RewardModelScorer

    tok = load_tokenizer(chat_model_dir)
    rm = new_reward_model(chat_model_dir, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    torch.nn.init.normal_(rm.score.weight, std=1.0)  # an untrained head that still tells answers apart
    out = tmp_path / "rm"
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "meta.json").write_text(json.dumps({"task": REWARD_TASK}), encoding="utf-8")

    judge = build_judge(JudgeConfig(backend="reward_model", reward_model=str(out)), cache=None)
    ctx = [{"role": "user", "content": "我头痛三天了，有点发烧。"}]
    answers = ["体温最高多少度？有没有咳嗽或者鼻塞？", "多喝热水。", "这可能是急症，请立即拨打120或去最近的急诊。"]
    tasks = [PairTask(f"{i}-{j}", f"{i}-{j}", ctx, answers[i], answers[j]) for i in range(3) for j in range(3) if i != j]
    judged, _ = judge_pairs(judge, tasks)
    r = RewardModelScorer(str(out)).score([ctx] * 3, answers).tolist()
    assert len(set(r)) == 3
    for t, j in zip(tasks, judged):
        i, k = map(int, t.item.split("-"))
        assert j.combined() == {"reward": 1 if r[i] > r[k] else -1}


needs_shared = pytest.mark.skipif(not (SHARED_DATA / "cmtmedqa_test").exists(), reason=f"no shared data at {SHARED_DATA}")


def test_a_set_of_safety_prompts_only_keeps_its_own_name(tmp_path):
    f = tmp_path / "risky.jsonl"
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": "请就医"}],
             "meta": {"safety": True}} for i in range(3)]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (only,) = testsets.load_testset(testsets.TestSetConfig(name="safety", path=str(f), format="dialogue"))
    assert only.name == "safety" and only.safety and len(only.items) == 3  # not "safety-safety"


@pytest.mark.shared
@needs_shared
def test_cmtmedqa_every_doctor_turn_and_safety_prompts_separately():
    path = SHARED_DATA / "cmtmedqa_test" / "CMtMedQA_test.shared.json"
    regular, safety = testsets.load_testset(testsets.TestSetConfig(name="cmt", path=str(path), format="cmtmedqa", limit=25), seed=7)
    assert (regular.name, safety.name) == ("cmt", "cmt-safety")
    assert len(regular.dialogues) == 25 and len(safety.dialogues) == 25
    assert len(regular.items) == sum(d.turns for d in regular.dialogues) > 25  # not only the closing turn
    for it in regular.items:
        gold = next(d for d in regular.dialogues if d.id == it.group).messages
        assert it.context == [m.to_dict() for m in gold[: 2 * it.turn + 1]]  # gold history up to this patient turn
        assert it.reference == gold[2 * it.turn + 1].content
    assert all(it.safety and it.turn == 0 and it.reference for it in safety.items)
    again, _ = testsets.load_testset(testsets.TestSetConfig(name="cmt", path=str(path), limit=25), seed=7)
    other, _ = testsets.load_testset(testsets.TestSetConfig(name="cmt", path=str(path), limit=25), seed=8)
    assert [d.id for d in again.dialogues] == [d.id for d in regular.dialogues] != [d.id for d in other.dialogues]
    last, _ = testsets.load_testset(testsets.TestSetConfig(name="cmt", path=str(path), limit=25, turns="last"), seed=7)
    assert len(last.items) == 25 and all(it.turn == d.turns - 1 for it, d in zip(last.items, last.dialogues))


@pytest.mark.shared
@needs_shared
def test_real_exams_load_with_held_out_or_dev_shots():
    cnmle = load_exam(ExamConfig(name="cnmle", path=str(SHARED_DATA / "cnmleqa_3k"), shots=[0, 5], limit=50), seed=0)
    assert len(cnmle.items) == 50 and len(cnmle.pool) == 5
    assert {x.id for x in cnmle.pool}.isdisjoint({x.id for x in cnmle.items})
    assert all(len(x.options) == 5 for x in cnmle.items)
    cmmlu = load_exam(ExamConfig(name="cmmlu", path=str(SHARED_DATA / "cmmlu_medical" / "test"),
                                 dev=str(SHARED_DATA / "cmmlu_medical" / "dev"), shots=[5], limit=40), seed=0)
    assert len(cmmlu.items) == 40 and len(cmmlu.pool) == 45
    it = cmmlu.items[0]
    shots = cmmlu.shots_for(it, 5, 0)
    assert len(shots) == 5 and all(s.subject == it.subject for s in shots)
    text = exam_messages(it, shots)[-1]["content"]
    assert it.question in text and "单项选择题" in text and subject_name(it.subject) in text
    assert subject_name("anatomy") == "解剖学"


def test_local_answers_resume_and_record_prompts_that_cannot_fit(chat_model_dir, tmp_path):
    from serve_tiny import DIALOGUES, messages
    from zhongjing.eval.answers import GenerationConfig, local_answers
    from zhongjing.eval.testsets import EvalItem

    items = [EvalItem(f"d{i}", f"d{i}", "t", messages(d)[:1], d[1][1], 0) for i, d in enumerate(DIALOGUES)]
    items.append(EvalItem("long", "long", "t", [{"role": "user", "content": "头痛" * 400}], None, 0))
    gen = GenerationConfig(max_new_tokens=24, max_length=4096, chunk=3)  # the model has only 256 positions
    spec = ModelSpec(name="tiny", path=str(chat_model_dir))
    with Cache(tmp_path / "c.sqlite") as cache:
        got = local_answers(LocalModel(spec), items, gen, cache)
        assert got["long"] is None and all(got[it.id] for it in items[:-1])
        # the model learnt these answers: greedy decoding gives them back
        assert got["d1"] == DIALOGUES[1][1][1]
        again = LocalModel(spec)
        again.load = lambda: pytest.fail("loaded the model although every answer (and the failure) was cached")
        assert local_answers(again, items, gen, cache) == got


def test_exam_prompts_that_do_not_fit_lose_examples_or_are_skipped(chat_model_dir, tmp_path):
    from zhongjing.data.readers import ExamItem
    from zhongjing.eval.exams import Exam

    opts = {"A": "是", "B": "否"}
    short = ExamItem.make("short", "发烧要测体温吗？", opts, "A", "内科")
    huge = ExamItem.make("huge", "头痛" * 300 + "要紧吗？", opts, "A", "内科")
    long_shot = ExamItem.make("shot", "胸闷" * 150 + "要紧吗？", opts, "A", "内科")  # alone fits, not with a question
    exam = Exam("fit", [short, huge], [long_shot], ExamConfig(name="fit", path="-", shots=[1]))
    lm = LocalModel(ModelSpec(name="tiny", path=str(chat_model_dir)))
    with Cache(tmp_path / "c.sqlite") as cache:
        preds = local_predictions(lm, exam, 1, seed=0, cache=cache)
        assert set(preds) == {"short"}  # the 600-character question cannot fit 256 positions
        entries = cache._db.execute("SELECT value FROM entries WHERE kind='exam'").fetchall()
        stored = sorted((json.loads(v)["prediction"] is None, json.loads(v).get("shots")) for (v,) in entries)
        assert stored == [(False, 0), (True, None)]  # the example was dropped rather than the question
        assert score(exam, preds)["skipped"] == 1


def test_exam_scoring_reports_progress(chat_model_dir, exam_file, tmp_path):
    """A long exam (3,000 questions × shots) must not run silently: progress reaches its total, chunk by chunk."""
    exam = load_exam(ExamConfig(name="mini", path=str(exam_file), shots=[0], debias="none"), seed=3)
    lm = LocalModel(ModelSpec(name="tiny", path=str(chat_model_dir)))
    seen: list[tuple[int, int]] = []
    with Cache(tmp_path / "c.sqlite") as cache:
        local_predictions(lm, exam, 0, seed=3, cache=cache, batch_size=2, chunk=2,
                          progress=lambda done, total: seen.append((done, total)))
    single = sum(len(x.answer) == 1 for x in exam.items)
    assert seen == [(min(i, single), single) for i in range(2, single + 2, 2)]
