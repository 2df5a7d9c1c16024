"""The web chat page in headless Chromium: streams answers, keeps the conversation, shows all text escaped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve_tiny import DIALOGUES, Server, chat_model_dir, messages, one_torch_thread  # noqa: F401  (fixtures)
from zhongjing.data.render import Renderer
from zhongjing.model.generation import sample
from zhongjing.model.load import load_model, load_tokenizer

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("ZHONGJING_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page(chat_model_dir):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install -y chromium)")
    server = Server(chat_model_dir, "--no-safety-prompt")
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    pg = browser.new_page()
    pg.goto(server.url + "/")
    yield pg
    browser.close()
    pw.stop()
    server.stop()


def greedy(model_dir, msgs, max_new_tokens=256):
    tok = load_tokenizer(model_dir)
    ids = Renderer(tok, max_length=256).prompt_ids(msgs)
    return sample(load_model(model_dir), tok, [ids], max_new_tokens=max_new_tokens, temperature=0)[0].text


def ask(page, text: str) -> str:
    n = page.locator(".msg.assistant").count()
    page.fill("#input", text)
    page.press("#input", "Enter")
    done = page.locator(".msg.assistant").nth(n)
    done.and_(page.locator("[data-done=true]")).wait_for(timeout=30000)
    return done.text_content()


def test_page_streams_a_multi_turn_conversation(page, chat_model_dir):
    assert page.locator("#model").text_content() == chat_model_dir.name
    assert "120" in page.locator("#notice").text_content()  # the not-a-doctor notice is visible
    page.click("summary")
    page.fill("#temperature", "0")
    u1, u2 = DIALOGUES[2][0][1], DIALOGUES[2][2][1]
    a1 = ask(page, u1)
    assert a1 == greedy(chat_model_dir, messages([("user", u1)]))
    a2 = ask(page, u2)  # the page sends the whole conversation
    assert a2 == greedy(chat_model_dir, messages([("user", u1), ("assistant", a1), ("user", u2)]))
    assert page.locator(".msg.user").all_text_contents() == [u1, u2]


def test_text_is_escaped_and_errors_are_shown(page, chat_model_dir):
    page.click("#reset")
    evil = '<img src=x onerror="window.pwned=1"><b>粗体</b>'
    ask(page, evil)
    assert page.locator(".msg.user").last.text_content() == evil
    assert page.locator("#log img, #log b").count() == 0
    assert page.evaluate("window.pwned === undefined")
    page.fill("#max_tokens", "100000")
    page.fill("#input", "hi")
    page.press("#input", "Enter")
    err = page.locator(".msg.error").last
    err.wait_for(timeout=30000)
    assert "maximum context length" in err.text_content()
