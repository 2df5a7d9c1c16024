"""Consultation environment: cases, the retrieval patient (never reveals an unasked fact, never invents one), exact
doctor-token masks across turns, and an episode against a 2-layer model."""

from __future__ import annotations

import json

import pytest

from zhongjing.consult.cases import Case, CasesConfig, Fact, build_cases, case_from_dialogue
from zhongjing.consult.patients import THANKS, UNKNOWN, RetrievalPatient, State, questions_of, relevance
from zhongjing.data.schema import Dialogue
from zhongjing.errors import DataError

DEMO = "zhongjing/demo/dialogues.jsonl"
QUESTIONS = ["你好。", "建议多喝水，注意休息。", "咳嗽多久了？", "吃过什么药吗？", "以前有过敏或者慢性病吗？",
             "做过什么检查吗？结果怎么样？", "还有别的症状吗？", "孩子发烧几天了", "头疼吗？肚子胀不胀？",
             "有没有做过血常规？", "平时抽烟喝酒吗？", "可以先吃点布洛芬，有没有胃病？"]


@pytest.fixture(scope="module")
def demo_cases():
    return build_cases(CasesConfig(inputs=[DEMO], skip_empty=True))[0]


def test_cases_from_demo_dialogues(demo_cases):
    assert len(demo_cases) > 100
    for c in demo_cases[:50]:
        assert c.facts and c.opening and c.reference
        assert all(f.text not in c.opening for f in c.facts)  # hidden = not already said unasked


def test_dialogue_revealing_nothing_is_one_line_error(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"id": "x1", "messages": [
        {"role": "user", "content": "我头疼两天了。"}, {"role": "assistant", "content": "你好。"},
        {"role": "user", "content": "好的谢谢"}, {"role": "assistant", "content": "不客气。"}]}, ensure_ascii=False)
                 + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        build_cases(CasesConfig(inputs=[str(p)]))
    msg = str(e.value)
    assert "x1" in msg and "reveals nothing" in msg and "record 1" in msg and "\n" not in msg
    cases, counts = build_cases(CasesConfig(inputs=[str(p)], skip_empty=True))
    assert cases == [] and counts["skipped_nothing_revealed"] == 1


def test_cases_are_deidentified(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"id": "x2", "messages": [
        {"role": "user", "content": "咳嗽三天了。"}, {"role": "assistant", "content": "吃过什么药吗？"},
        {"role": "user", "content": "吃了阿莫西林，我电话13812345678，化验结果在这"},
        {"role": "assistant", "content": "建议复诊。"}]}, ensure_ascii=False) + "\n", encoding="utf-8")
    (case,), _ = build_cases(CasesConfig(inputs=[str(p)]))
    text = json.dumps(case.to_dict(), ensure_ascii=False)
    assert "13812345678" not in text and any("阿莫西林" in f.text for f in case.facts)


def test_retrieval_patient_never_reveals_unasked_nor_invents(demo_cases):
    patient = RetrievalPatient(max_facts=2)
    revealed_any = 0
    for c in demo_cases:
        revealed: set[int] = set()
        for q in QUESTIONS:
            r = patient.answer(c, q, revealed)
            asked = questions_of(q)
            if r.text in (THANKS, UNKNOWN):
                assert not r.facts
                assert r.text == (THANKS if not asked else UNKNOWN)
                continue
            # never invents: the reply is exactly the revealed facts' own words
            assert r.text == "，".join(c.facts[i].text for i in r.facts) + "。"
            for i in r.facts:  # never unasked: each revealed fact is relevant to a question the doctor asked
                assert asked and relevance(asked, c.facts[i]) > 0 and i not in revealed
            assert len(r.facts) <= 2
            revealed |= set(r.facts)
            revealed_any += 1
    assert revealed_any > 50  # it does answer when asked


def test_advice_that_names_a_topic_asks_nothing():
    c = Case("c", "我发烧了。", [Fact("medication", "吃了退烧药", ["药", "退烧"])])
    p = RetrievalPatient()
    assert p.answer(c, "建议按说明吃退烧药。", set()).facts == []
    assert p.answer(c, "吃过退烧药吗？", set()).facts == [0]
    assert p.answer(c, "吃过退烧药吗？", {0}).text == UNKNOWN  # nothing new: no repeat, no invention


def test_case_from_dialogue_keeps_reference_advice():
    d = Dialogue.from_dict({"id": "y", "messages": [
        {"role": "user", "content": "胃疼。"}, {"role": "assistant", "content": "疼多久了？"},
        {"role": "user", "content": "疼了三天了"}, {"role": "assistant", "content": "建议清淡饮食。"}]})
    c = case_from_dialogue(d)
    assert c.reference == "建议清淡饮食。" and c.facts[0].text == "疼了三天了"


def test_case_account_is_the_opening_then_every_hidden_fact():
    c = Case("a", "胃疼。", [Fact("duration", "疼了三天了", ["天"]), Fact("medication", "吃过胃药", ["药"])])
    assert c.account() == "胃疼。\n疼了三天了；吃过胃药"  # what the judge of the final advice reads
    assert Case("b", "胃疼。", []).account() == "胃疼。"


def test_masks_cover_only_doctor_tokens(tiny_tokenizer):
    from zhongjing.consult.episodes import Episode, pack
    from zhongjing.data.render import Renderer

    case = Case("c", "我咳嗽。", [Fact("duration", "咳了三天", ["天"])])
    msgs = [{"role": "user", "content": "我咳嗽。"}, {"role": "assistant", "content": "咳多久了？"},
            {"role": "user", "content": "咳了三天"}, {"role": "assistant", "content": "多喝水，休息。"}]
    r = Renderer(tiny_tokenizer, max_length=256, strategy="all")
    packed = pack(r, [Episode(case, msgs)], tiny_tokenizer.pad_token_id)
    seq, start, act = packed["sequences"][0], int(packed["prompt_lens"][0]), packed["action_mask"][0]
    ids = seq[start:start + act.shape[0]]
    trained = [int(t) for t, m in zip(ids, act) if m > 0]
    context = [int(t) for t, m in zip(ids, act) if m == 0] + seq[:start].tolist()
    said = tiny_tokenizer.decode(trained)
    assert "咳多久了" in said.replace(" ", "") and "多喝水" in said.replace(" ", "")
    assert "咳了三天" not in said.replace(" ", "") and "我咳嗽" not in said.replace(" ", "")
    assert "咳了三天" in tiny_tokenizer.decode(context).replace(" ", "")
    # exactly the SFT renderer's labels: the same tokens are trained
    rendered = r.render(msgs)
    assert trained == [t for t in rendered.labels if t != -100]
    assert act[0] == 1 and (act == 0).any()  # starts at the first doctor token; a hole where the patient speaks


def test_episode_against_tiny_model(tiny_model_dir, tiny_tokenizer, demo_cases):
    from zhongjing.consult.episodes import EpisodeSettings, run_episodes
    from zhongjing.data.render import Renderer
    from zhongjing.model.load import load_model

    model = load_model(tiny_model_dir)
    eps, timing = run_episodes(model, tiny_tokenizer, demo_cases[:3], RetrievalPatient(),
                               EpisodeSettings(max_turns=3, max_new_tokens=6), seed=1,
                               renderer=Renderer(tiny_tokenizer, max_length=512))
    assert len(eps) == 3 and timing["doctor_tokens"] > 0
    for e in eps:
        roles = [m["role"] for m in e.messages]
        assert roles[0] == "user" and roles[-1] == "assistant" and 1 <= e.turns <= 3
        assert all(a != b for a, b in zip(roles, roles[1:]))


def test_endpoint_patient_persona_read_back_and_cache(tmp_path):
    from fake_openai import FakeOpenAI

    from zhongjing.consult.patients import make_patient
    from zhongjing.llm.client import EndpointConfig

    case = Case("c", "我咳嗽。", [Fact("duration", "咳了三天", ["天"]), Fact("medication", "吃了止咳糖浆", ["药"])])
    seen = []

    def reply(body):
        seen.append(body["messages"])
        return "嗯，咳了三天了"

    with FakeOpenAI(reply=reply) as srv:
        cfg = EndpointConfig(base_url=srv.url, model="fake", concurrency=2)
        p = make_patient("endpoint", endpoint=cfg, cache=str(tmp_path / "c.sqlite"))
        states = [State(case, [{"role": "user", "content": "我咳嗽。"}, {"role": "assistant", "content": "咳多久了？"}])]
        (r,) = p.replies(states)
        assert r.text == "嗯，咳了三天了" and r.facts == [0]  # the fact it stated is read back, the other is not
        system, *turns = seen[0]
        assert system["role"] == "system" and "咳了三天" in system["content"] and "不要编造" in system["content"]
        assert turns == [{"role": "user", "content": "咳多久了？"}]  # the doctor speaks as the persona's user
        p2 = make_patient("endpoint", endpoint=cfg, cache=str(tmp_path / "c.sqlite"))
        assert p2.replies(states)[0].text == r.text and len(seen) == 1  # resumed from the cache, not asked again


def test_patient_side_dialogues_for_a_patient_model(tmp_path):
    from zhongjing.data.schema import Dialogue as D

    swapped: list = []
    cases, _ = build_cases(CasesConfig(inputs=[DEMO], skip_empty=True, limit=5), swapped)
    assert len(swapped) == len(cases) == 5
    for case, rec in zip(cases, swapped):
        d = D.from_dict(rec)  # a valid Dialogue: train sft reads it
        assert d.messages[0].role == "system" and case.opening in d.messages[0].content
        assert all(f.text in d.messages[0].content for f in case.facts)
        assert d.messages[1].role == "user"  # the doctor's first turn, answered by the patient ('assistant')
        assert any(m.role == "assistant" for m in d.messages)


def test_episode_reward_parts_hand_worked():
    """advice·A + info·elicited − safety·violations − turn_cost·(turns−1) − no_advice·[never advised], by hand."""
    from zhongjing.consult.episodes import Episode
    from zhongjing.consult.rewards import ConsultRewards, ConsultRewardSettings

    case = Case("c", "我发烧了。", [Fact("duration", "三天了", ["天"]), Fact("symptom", "有点胸痛", ["胸痛"])],
                "多喝水，注意休息。", None, {})
    asker = Episode(case, [{"role": "user", "content": case.opening}, {"role": "assistant", "content": "烧了几天？"},
                           {"role": "user", "content": "三天了"}, {"role": "assistant", "content": "还有别的症状吗？"}],
                    revealed=[0], asked=[True, True])
    adviser = Episode(case, [{"role": "user", "content": case.opening}, {"role": "assistant", "content": "胸痛吗？"},
                             {"role": "user", "content": "有点胸痛"},
                             {"role": "assistant", "content": "可以吃阿莫西林，多喝水。"}],
                      revealed=[1], asked=[True, False])
    assert not asker.advised and adviser.advised and not adviser.premature
    s = ConsultRewardSettings(advice=0.0, info=2.0, safety=2.0, turn_cost=0.1, no_advice=1.0)
    total, parts = ConsultRewards(s).score([asker, adviser])
    # asker: half the facts, never advised: 2·0.5 − 0.1·1 − 1 = −0.1
    # adviser: half the facts; an antibiotic before any allergy question and chest pain (a red flag it learnt of)
    # without sending the patient to emergency care: 2·0.5 − 2·2 − 0.1·1 = −3.1
    assert parts["no_advice"].tolist() == [1.0, 0.0]
    assert parts["rx_without_allergy_question"].tolist() == [0.0, 1.0]
    assert parts["red_flag_not_referred"].tolist() == [0.0, 1.0]
    assert total.tolist() == pytest.approx([-0.1, -3.1])


def test_case_with_an_opening_too_long_is_left_out_not_a_crash(tiny_model_dir, tiny_tokenizer, demo_cases):
    """A real opening longer than max_length − a doctor turn stopped a 40-update run at update 36: such cases are
    left out (and counted) before playing; played anyway, they are a one-line error naming the case."""
    from zhongjing.consult.episodes import EpisodeSettings, playable, run_episodes
    from zhongjing.data.render import Renderer
    from zhongjing.errors import ZhongjingError
    from zhongjing.model.load import load_model

    long = Case("long", "我头疼。" * 200, demo_cases[0].facts, "休息。", None, {})
    renderer = Renderer(tiny_tokenizer, max_length=256)
    assert playable([demo_cases[0], long, demo_cases[1]], renderer, 16) == [demo_cases[0], demo_cases[1]]
    with pytest.raises(ZhongjingError, match="case long: the opening is too long"):
        run_episodes(load_model(tiny_model_dir), tiny_tokenizer, [long], RetrievalPatient(),
                     EpisodeSettings(max_turns=2, max_new_tokens=16), seed=1, renderer=renderer)
