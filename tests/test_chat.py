"""`zhongjing chat` driven through a pipe, and its history handling in-process."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from serve_tiny import DIALOGUES, chat_model_dir, messages, one_torch_thread  # noqa: F401  (fixtures)
from zhongjing.data.render import Renderer
from zhongjing.data.schema import Dialogue
from zhongjing.io import iter_jsonl
from zhongjing.model.generation import sample
from zhongjing.model.load import load_model, load_tokenizer
from zhongjing.serve import SAFETY_PROMPT, system_prompt_from
from zhongjing.serve.chat import ChatSession


@pytest.fixture(scope="module")
def mt(chat_model_dir):
    return load_model(chat_model_dir), load_tokenizer(chat_model_dir)


def greedy(mt, msgs):
    model, tok = mt
    return sample(model, tok, [Renderer(tok, max_length=256).prompt_ids(msgs)], max_new_tokens=64, temperature=0)[0].text


def test_piped_multi_turn_chat_with_save_reset_exit(chat_model_dir, mt, tmp_path):
    u1, u2, u3 = DIALOGUES[0][0][1], DIALOGUES[2][2][1], DIALOGUES[4][0][1]
    out_file = tmp_path / "chats.jsonl"
    script = f"{u1}\n{u2}\n/save {out_file}\n/reset\n{u3}\n/save {out_file}\n/exit\n{u1}\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "zhongjing", "chat", "--model", str(chat_model_dir), "--temperature",
                           "0", "--no-safety-prompt", "--max-new-tokens", "64", "--threads", "1"],
                          input=script, capture_output=True, text=True, encoding="utf-8", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    a1 = greedy(mt, messages([("user", u1)]))
    a2 = greedy(mt, messages([("user", u1), ("assistant", a1), ("user", u2)]))  # sees the first exchange
    a3 = greedy(mt, messages([("user", u3)]))  # after /reset: a fresh conversation
    assert proc.stdout.splitlines() == [a1, a2, a3]  # nothing after /exit is answered
    saved = [Dialogue.from_dict(d) for _, d in iter_jsonl(out_file)]
    assert [[m.content for m in d.messages] for d in saved] == [[u1, a1, u2, a2], [u3, a3]]
    assert saved[0].id != saved[1].id and saved[0].meta["source"] == "zhongjing chat"


def test_long_history_keeps_the_latest_turns(mt):
    model, tok = mt
    s = ChatSession(model, tok, 120, system="你好", max_new_tokens=30, temperature=0, top_p=1.0, seed=None, name="t")
    for d in DIALOGUES[:4]:
        s.answer(d[0][1], lambda _: None)
    ids, dropped = s.prompt(DIALOGUES[5][0][1])
    assert dropped and len(ids) <= 120 - 30
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n你好")  # the system prompt always stays
    assert DIALOGUES[5][0][1] in text and DIALOGUES[0][0][1] not in text  # newest in, oldest out
    assert len(s.history) == 8  # the saved history keeps everything


def test_safety_prompt_is_the_default_and_can_be_switched_off():
    ns = argparse.Namespace
    assert system_prompt_from(ns(system=None, no_safety_prompt=False)) == SAFETY_PROMPT
    assert system_prompt_from(ns(system=None, no_safety_prompt=True)) is None
    assert system_prompt_from(ns(system="自定义", no_safety_prompt=False)) == "自定义"
    assert "120" in SAFETY_PROMPT and "不是医生" in SAFETY_PROMPT


def test_bad_model_folder_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zhongjing", "chat", "--model", str(tmp_path / "nope")],
                          input="", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "model folder not found" in proc.stderr and "Traceback" not in proc.stderr


def test_save_to_a_bad_path_keeps_the_chat_going(mt, tmp_path, monkeypatch, capsys):
    import io

    from zhongjing.serve.chat import run

    model, tok = mt
    s = ChatSession(model, tok, 256, system=None, max_new_tokens=8, temperature=0, top_p=1.0, seed=None, name="t")
    (tmp_path / "broken.jsonl").write_text("not json\n", encoding="utf-8")
    good = tmp_path / "good.jsonl"
    script = f"{DIALOGUES[0][0][1]}\n/save {tmp_path}\n/save {tmp_path / 'broken.jsonl'}\n/save {good}\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    run(s, interactive=False)
    err = capsys.readouterr().err
    assert err.count("(not saved: ") == 2 and "broken.jsonl" in err
    assert [d["id"] for _, d in iter_jsonl(good)] == [s.id]


def test_save_expands_the_home_folder(tmp_path, monkeypatch):
    from zhongjing.serve.chat import save_dialogue

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    d = Dialogue.from_dict({"id": "c1", "messages": [{"role": "user", "content": "头痛"},
                                                     {"role": "assistant", "content": "多久了？"}]})
    assert save_dialogue("~/chats.jsonl", d) == 1
    assert (tmp_path / "home" / "chats.jsonl").exists() and not (tmp_path / "~").exists()


@pytest.mark.parametrize("flag, value, message", [("--temperature", "-1", "--temperature must be >= 0"),
                                                  ("--top-p", "0", "--top-p must be in (0, 1]"),
                                                  ("--repetition-penalty", "0", "--repetition-penalty must be > 0")])
def test_bad_sampling_flags_are_refused_before_loading(tmp_path, flag, value, message):
    # a folder that does not exist: the flag must be refused first, without loading anything
    proc = subprocess.run([sys.executable, "-m", "zhongjing", "chat", "--model", str(tmp_path / "nope"), flag, value],
                          input="", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("files", [
    {"meta.json": {"stage": "rm", "kind": "adapter", "task": "reward"}},
    {"adapter_config.json": {"task_type": "SEQ_CLS", "peft_type": "LORA"}},
    {"config.json": {"architectures": ["LlamaForSequenceClassification"]}},
])
def test_a_reward_model_folder_is_refused_for_chat_serve_and_eval(tmp_path, chat_model_dir, files):
    """Loaded as a language model a reward model writes nonsense; chat, serve and eval say what it is instead."""
    import json

    from zhongjing.errors import ZhongjingError
    from zhongjing.eval.run import EvalConfig, ModelSpec, check
    from zhongjing.model.load import refuse_reward_model

    rm = tmp_path / "rm"
    rm.mkdir()
    for name, content in files.items():
        (rm / name).write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(ZhongjingError, match="a reward model .* cannot write them"):
        refuse_reward_model(rm)
    with pytest.raises(ZhongjingError, match="a reward model"):
        check(EvalConfig(models=[ModelSpec(name="m", path=str(rm))]))
    refuse_reward_model(chat_model_dir)  # a chat model passes
    proc = subprocess.run([sys.executable, "-m", "zhongjing", "chat", "--model", str(rm)], input="头痛\n",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "a reward model" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
