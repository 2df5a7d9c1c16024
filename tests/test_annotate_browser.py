"""End to end in headless Chromium: two doctors rank (drag and keyboard, with ties), mark all
answers wrong, an expert adjudicates the dispute, the admin exports, the export is checked.

Uses Debian's chromium through Playwright (`executable_path`); one browser for the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from annotate_helpers import PASSWORD, add_users, free_port, ranking_record, start_server
from zhongjing.annotate import db, store
from zhongjing.data.rubric import IDK_TEMPLATES
from zhongjing.data.schema import Ranking

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("needs Debian's chromium (apt-get install chromium)", allow_module_level=True)

XSS = "<img src=x onerror=alert(1)><script>alert(2)</script>"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    path = tmp / "b.sqlite"
    add_users(path, a1="annotator", a2="annotator", ex="expert", boss="admin")
    first = ranking_record(0, question="咳嗽会不会是肺炎？" + XSS)
    conn = db.connect(path)
    store.import_batch(conn, "round1", [Ranking.from_dict(first), Ranking.from_dict(ranking_record(1))],
                       store.BatchSettings(), ["a1", "a2"])
    conn.close()
    port = free_port()
    proc = start_server(path, port, log=tmp / "server.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def page_for(browser, base, user, dialogs):
    ctx = browser.new_context(base_url=base, accept_downloads=True)
    page = ctx.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto("/login")
    page.fill("#username", user)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_load_state()
    return page


def card(page, item: int, answer: int):
    """The card of original answer `answer` (the page shuffles them; we find it by its text)."""
    return page.locator(".card", has_text=f"回答{item}-{answer}：")


def key_to(page, item: int, answer: int, *keys: str):
    c = card(page, item, answer)
    c.focus()
    for k in keys:
        c.press(k)


def tier_of(page, item: int, answer: int) -> str:
    return card(page, item, answer).evaluate("c => c.closest('.tier').dataset.tier")


def submit_and_wait(page, url_part: str):
    with page.expect_navigation(url=f"**{url_part}"):
        page.click("#submit")


def test_rank_disagree_adjudicate_export(server, browser):
    dialogs: list[str] = []

    # ---- annotator 1: drag and keyboard with ties, a flag; then "all answers wrong" with a template
    a1 = page_for(browser, server, "a1", dialogs)
    assert a1.url.endswith("/queue")
    a1.click("text=item-0")
    assert a1.locator("#question").inner_text().endswith(XSS)  # untrusted text shown as text
    assert a1.locator(".rubric").inner_text().index("安全性") < a1.locator(".rubric").inner_text().index("流畅性")
    a1.click("#submit")
    assert "4 个回答没有排序" in a1.locator("#status").inner_text()
    card(a1, 0, 2).drag_to(a1.locator("#tier-1"))
    card(a1, 0, 0).drag_to(a1.locator("#tier-1"))  # a tie with answer 2
    key_to(a1, 0, 1, "3", "ArrowUp")  # to 3rd, then one up → 2nd
    key_to(a1, 0, 3, "4", "ArrowUp")  # → 3rd
    assert [tier_of(a1, 0, i) for i in range(4)] == ["0", "1", "0", "2"]
    card(a1, 0, 3).locator("input[data-flag=unsafe]").check()
    submit_and_wait(a1, "/items/2")
    a1.check("#all-wrong")
    a1.select_option("#idk-template", index=1)
    assert a1.input_value("#replacement") == IDK_TEMPLATES[0]
    submit_and_wait(a1, "/queue")

    # ---- annotator 2: keyboard only, a different best answer → disputed; agrees on item 2
    a2 = page_for(browser, server, "a2", dialogs)
    a2.goto("/items/1")
    for answer, key in [(1, "1"), (0, "2"), (2, "3"), (3, "4")]:
        key_to(a2, 0, answer, key)
    submit_and_wait(a2, "/items/2")
    a2.check("#all-wrong")
    a2.fill("#replacement", "我不能确定，请尽快线下就医。")
    submit_and_wait(a2, "/queue")

    # ---- expert: sees both judgements, decides
    ex = page_for(browser, server, "ex", dialogs)
    assert ex.url.endswith("/expert")
    ex.locator("a", has_text="item-0").click()
    ex.wait_for_url("**/adjudicate/1")
    assert ex.locator(".judgement").count() == 2 and "a1" in ex.locator(".judgements").inner_text()
    card(ex, 0, 1).drag_to(ex.locator("#tier-1"))
    key_to(ex, 0, 2, "2")
    key_to(ex, 0, 0, "3")
    key_to(ex, 0, 3, "4")
    ex.fill("#note", "回答1更安全")
    submit_and_wait(ex, "/expert")
    assert "待裁决（0）" in ex.content()

    # ---- admin: progress page, then both exports as downloads
    boss = page_for(browser, server, "boss", dialogs)
    assert "round1" in boss.locator("#batches").inner_text()
    with boss.expect_download() as dl:
        boss.click("a.export-rankings")
    rows = [json.loads(line) for line in Path(dl.value.path()).read_text(encoding="utf-8").splitlines()]
    with boss.expect_download() as dl:
        boss.click("a.export-pairs")
    pairs = [json.loads(line) for line in Path(dl.value.path()).read_text(encoding="utf-8").splitlines()]

    r0, r1 = (Ranking.from_dict(r) for r in rows)
    assert r0.ranking == [[1], [2], [0], [3]] and r0.annotators == ["a1", "a2"]
    ann = r0.meta["annotation"]
    assert ann["status"] == "adjudicated" and ann["adjudicated_by"] == "ex" and ann["note"] == "回答1更安全"
    assert [j["ranking"] for j in ann["judgements"]] == [[[0, 2], [1], [3]], [[1], [0], [2], [3]]]
    assert ann["flags"]["unsafe"] == [0, 0, 0, 1] and ann["top1_agree"] is False
    assert r0.messages[-1].content.endswith(XSS)
    assert r1.all_wrong and r1.replacement == IDK_TEMPLATES[0] and r1.ranking == [[0, 1, 2, 3]]
    assert r1.meta["annotation"]["status"] == "agreed"
    assert [j["replacement"] for j in r1.meta["annotation"]["judgements"]] == [IDK_TEMPLATES[0], "我不能确定，请尽快线下就医。"]
    assert len(pairs) == 6 + 4
    assert {p["chosen"] for p in pairs if p["id"].startswith("item-1#")} == {IDK_TEMPLATES[0]}
    assert dialogs == []  # no injected script ever ran
