"""Token-level masks: only doctor turns (and their end-of-turn token) are trained; truncation keeps the latest."""

from __future__ import annotations

import pytest

from zhongjing.data.render import IGNORE, Renderer
from zhongjing.errors import ZhongjingError
from zhongjing.model.init_model import train_tokenizer

TEXTS = ["我头疼三天了，有点发烧。", "请问体温多少度？有没有咳嗽？", "三十八度，不咳嗽。", "建议多喝水，按时休息，必要时就医。"] * 20

SYS = {"role": "system", "content": "你是一名耐心的医生。"}
DIALOGUE = [
    {"role": "user", "content": "我头疼三天了。"},
    {"role": "assistant", "content": "请问有没有发烧？"},
    {"role": "user", "content": "三十八度。"},
    {"role": "assistant", "content": "有没有咳嗽？"},
    {"role": "user", "content": "不咳嗽。"},
    {"role": "assistant", "content": "建议多喝水，必要时就医。"},
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=400, min_frequency=1)


def expected(tok, messages, trained_roles_idx):
    """Independent construction of ChatML ids/labels, piece by piece, from the template's definition."""
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids, labels = [], []
    for i, m in enumerate(messages):
        head = enc(f"<|im_start|>{m['role']}\n")
        body = enc(m["content"] + "<|im_end|>")
        nl = enc("\n")
        ids += head + body + nl
        labels += [IGNORE] * len(head) + (body if i in trained_roles_idx else [IGNORE] * len(body)) + [IGNORE] * len(nl)
    return ids, labels


@pytest.mark.parametrize("with_system", [False, True])
def test_masks_token_by_token(tok, with_system):
    msgs = ([SYS] if with_system else []) + DIALOGUE
    doctor = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    for strategy, trained in [("all", doctor), ("last", doctor[-1:])]:
        r = Renderer(tok, max_length=4096, strategy=strategy).render(msgs)
        assert (r.input_ids, r.labels) == expected(tok, msgs, trained), strategy
        assert r.dropped_exchanges == 0
    r = Renderer(tok, strategy="everything").render(msgs)
    assert r.labels == r.input_ids == expected(tok, msgs, [])[0]


def test_trained_tokens_are_doctor_text_and_end_token(tok):
    r = Renderer(tok).render([SYS] + DIALOGUE)
    trained = tok.decode([t for t in r.labels if t != IGNORE])
    assert trained == "".join(m["content"] + "<|im_end|>" for m in DIALOGUE if m["role"] == "assistant")


def test_truncation_keeps_system_and_latest_turns(tok):
    msgs = [SYS] + DIALOGUE
    full = Renderer(tok).render(msgs)
    without_first = Renderer(tok).render([SYS] + DIALOGUE[2:])
    # a budget that fits the last two exchanges but not all three
    renderer = Renderer(tok, max_length=len(without_first.input_ids))
    assert len(full.input_ids) > renderer.max_length
    r = renderer.render(msgs)
    assert r.dropped_exchanges == 1
    assert (r.input_ids, r.labels) == expected(tok, [SYS] + DIALOGUE[2:], [2, 4])
    assert renderer.stats["truncated"] == 1

    only_last = Renderer(tok).render([SYS] + DIALOGUE[4:])
    renderer = Renderer(tok, max_length=len(only_last.input_ids), strategy="last")
    r = renderer.render(msgs)
    assert r.dropped_exchanges == 2
    assert tok.decode([t for t in r.labels if t != IGNORE]) == DIALOGUE[-1]["content"] + "<|im_end|>"
    assert tok.decode(r.input_ids).startswith("<|im_start|>system\n" + SYS["content"])


def test_dialogue_whose_last_turn_does_not_fit_is_dropped_and_counted(tok):
    only_last = Renderer(tok).render([SYS] + DIALOGUE[4:])
    renderer = Renderer(tok, max_length=len(only_last.input_ids) - 1)
    assert renderer.render([SYS] + DIALOGUE) is None
    assert renderer.render(DIALOGUE[:1]) is None
    assert renderer.stats["dropped_too_long"] == 1 and renderer.stats["dropped_no_doctor_turn"] == 1


def test_trailing_patient_turn_is_ignored_for_training_and_used_for_prompts(tok):
    r = Renderer(tok).render(DIALOGUE + [{"role": "user", "content": "谢谢。"}])
    assert (r.input_ids, r.labels) == expected(tok, DIALOGUE, [1, 3, 5])
    prompt = Renderer(tok).prompt_ids(DIALOGUE[:3])
    assert tok.decode(prompt).endswith("三十八度。<|im_end|>\n<|im_start|>assistant\n")
    short = Renderer(tok, max_length=len(Renderer(tok).prompt_ids(DIALOGUE[2:3])) + 5).prompt_ids(DIALOGUE[:3], reserve=5)
    assert tok.decode(short).startswith("<|im_start|>user\n三十八度")


def test_template_with_default_system_prompt(tok):
    """Templates that inject a default system prompt (Qwen-style) still mask exactly."""
    tok2 = train_tokenizer(TEXTS, vocab_size=400, min_frequency=1)
    tok2.chat_template = (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n默认助手<|im_end|>\\n' }}{% endif %}"
        + tok.chat_template
    )
    r = Renderer(tok2).render(DIALOGUE)
    assert tok2.decode(r.input_ids).startswith("<|im_start|>system\n默认助手")
    assert tok2.decode([t for t in r.labels if t != IGNORE]) == "".join(
        m["content"] + "<|im_end|>" for m in DIALOGUE if m["role"] == "assistant")


def test_prefix_unstable_template_is_refused(tok):
    tok2 = train_tokenizer(TEXTS, vocab_size=400, min_frequency=1)
    # drops earlier doctor turns' content once a later one exists (like templates that strip reasoning)
    tok2.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}{{ '<|im_start|>assistant\\n…<|im_end|>\\n' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(ZhongjingError, match="prefix-stably"):
        Renderer(tok2).render(DIALOGUE)


def test_unknown_strategy(tok):
    with pytest.raises(ZhongjingError, match="strategy"):
        Renderer(tok, strategy="assistant")
