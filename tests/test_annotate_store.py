"""Storage, assignment, submissions, agreement resolution and exports (no web server)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from annotate_helpers import PASSWORD, add_users, ranking_record, write_items
from zhongjing.annotate import db, export, store
from zhongjing.annotate.cli import main as annotate_main
from zhongjing.data.schema import Ranking
from zhongjing.errors import DataError, ZhongjingError
from zhongjing.io import iter_jsonl


@pytest.fixture
def conn(tmp_path):
    add_users(tmp_path / "a.sqlite", a1="annotator", a2="annotator", a3="annotator", ex="expert", boss="admin")
    c = db.connect(tmp_path / "a.sqlite")
    yield c
    c.close()


def _import(conn, tmp_path, name="b1", n=4, **kw):
    path = write_items(tmp_path / f"{name}.jsonl", n)
    annotators = kw.pop("annotators", ["a1", "a2"])
    rankings = store.parse_records(iter_jsonl(path), str(path), 4)
    return store.import_batch(conn, name, rankings, store.BatchSettings(**kw), annotators)


def _uid(conn, name):
    return db.get_user(conn, name)["id"]


def _to_display(conn, item_id, user, groups):
    """Original-index tie groups → the display positions this user's browser would send."""
    order = store.display_order(item_id, _uid(conn, user), 4)
    pos = {orig: p for p, orig in enumerate(order)}
    return [[pos[i] for i in g] for g in groups]


def _submit(conn, item_id, user, groups, key, flags=None, **extra):
    """Submit as `user` would, with ranking and flags given in original answer indices."""
    payload = {"key": key, "ranking": _to_display(conn, item_id, user, groups), **extra}
    if flags:
        payload["flags"] = {f: _to_display(conn, item_id, user, [idx])[0] for f, idx in flags.items()}
    return store.submit_annotation(conn, item_id, _uid(conn, user), payload)


def test_schema_wal_full_and_migrations(tmp_path, monkeypatch):
    path = tmp_path / "m.sqlite"
    c = db.connect(path)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert c.execute("PRAGMA user_version").fetchone()[0] == db.LATEST
    c.close()
    # a later release adds version 2: only that step runs on an existing database, data survives
    add_users(path, a1="annotator")
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS + [(2, "ALTER TABLE users ADD COLUMN email TEXT;")])
    monkeypatch.setattr(db, "LATEST", 2)
    c = db.connect(path)
    assert c.execute("PRAGMA user_version").fetchone()[0] == 2
    assert [tuple(r) for r in c.execute("SELECT username, email FROM users")] == [("a1", None)]
    c.close()
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS[:1])
    monkeypatch.setattr(db, "LATEST", 1)
    with pytest.raises(ZhongjingError, match="newer than this zhongjing"):
        db.connect(path)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ZhongjingError, match="not a usable annotation database"):
        db.connect(tmp_path / "junk.sqlite")


def test_import_validation_names_file_and_line(conn, tmp_path):
    bad = tmp_path / "bad.jsonl"
    recs = [ranking_record(0), ranking_record(1, k=3)]
    bad.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:line 2: record has 3 responses, this batch expects k=4"):
        store.parse_records(iter_jsonl(bad), str(bad), 4)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps(ranking_record(0)) + "\n" + json.dumps(ranking_record(0)) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: duplicate id 'item-0' \(first on line 1\)"):
        store.parse_records(iter_jsonl(dup), str(dup), 4)
    ends_with_doctor = ranking_record(0)
    ends_with_doctor["messages"] = ends_with_doctor["messages"][:3]
    bad.write_text(json.dumps(ends_with_doctor) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1: dialogue must end with a user turn"):
        store.parse_records(iter_jsonl(bad), str(bad), 4)
    with pytest.raises(ZhongjingError, match="'ex' is not an active annotator"):
        _import(conn, tmp_path, annotators=["a1", "ex"])
    with pytest.raises(ZhongjingError, match="need at least 2 active annotators"):
        _import(conn, tmp_path, annotators=["a1"])
    _import(conn, tmp_path, name="ok")
    with pytest.raises(ZhongjingError, match="batch 'ok' already exists"):
        _import(conn, tmp_path, name="ok")


def test_assignment_round_robin_and_balanced(conn, tmp_path):
    assert store.assign(4, [1, 2, 3], 2, "round-robin", {}) == [[1, 2], [3, 1], [2, 3], [1, 2]]
    # balanced fills whoever has the fewest open items, counting what they already have
    assert store.assign(3, [1, 2, 3], 2, "balanced", {1: 5}) == [[2, 3], [2, 3], [2, 3]]
    assert store.assign(2, [1, 2, 3], 2, "balanced", {1: 1}) == [[2, 3], [1, 2]]

    _import(conn, tmp_path, name="first", n=4, annotators=["a1", "a2"])  # a1, a2: 4 open each
    summary = _import(conn, tmp_path, name="second", n=4, annotators=None, assign="balanced")
    assert summary["assignments"] == {"a3": 4, "a1": 2, "a2": 2}
    rr = _import(conn, tmp_path, name="third", n=3, annotators=["a1", "a2", "a3"], assign="round-robin")
    assert rr["assignments"] == {"a1": 2, "a2": 2, "a3": 2}


def test_display_order_is_a_stable_per_user_shuffle():
    orders = {u: store.display_order(7, u, 4) for u in range(1, 30)}
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders.values())
    assert store.display_order(7, 3, 4) == orders[3]
    assert len({tuple(o) for o in orders.values()}) > 5  # users see different orders


def test_submission_maps_positions_and_is_idempotent(conn, tmp_path):
    _import(conn, tmp_path)
    item = 1
    order = store.display_order(item, _uid(conn, "a1"), 4)
    payload = {"key": "key-a1-0001", "ranking": [[0], [1, 2], [3]], "flags": {"unsafe": [3]},
               "edited": {"text": "更好的回答", "based_on": 0}, "comment": "ok", "seconds": 12.5}
    r1 = store.submit_annotation(conn, item, _uid(conn, "a1"), payload)
    r2 = store.submit_annotation(conn, item, _uid(conn, "a1"), payload)  # a retry after a lost response
    assert (r1, r2) == ({"item_status": "open", "duplicate": False}, {"item_status": "open", "duplicate": True})
    rows = conn.execute("SELECT ranking, flags, edited FROM annotations").fetchall()
    assert len(rows) == 1
    assert json.loads(rows[0]["ranking"]) == [[order[0]], sorted([order[1], order[2]]), [order[3]]]
    assert json.loads(rows[0]["flags"]) == {"factually_wrong": [], "unsafe": [order[3]]}
    assert json.loads(rows[0]["edited"]) == {"text": "更好的回答", "based_on": order[0]}
    with pytest.raises(store.Conflict, match="another submission"):
        store.submit_annotation(conn, 2, _uid(conn, "a1"), payload)
    # a revision with a new key is kept (append-only) and the latest one counts
    _submit(conn, item, "a1", [[0], [1], [2], [3]], "key-a1-0002")
    assert [a["ranking"] for a in store.latest_annotations(conn, item)] == [[[0], [1], [2], [3]]]
    assert conn.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] == 2


@pytest.mark.parametrize("payload,message", [
    ({"ranking": [[0], [1], [2], [3]]}, "idempotency 'key'"),
    ({"key": "short", "ranking": [[0], [1], [2], [3]]}, "idempotency 'key'"),
    ({"key": "k" * 10, "ranking": [[0], [1], [2]]}, "must name each of the 4 responses"),
    ({"key": "k" * 10, "ranking": []}, "rank all 4 answers"),
    ({"key": "k" * 10, "ranking": [[0, 1, 2, 3]], "all_wrong": True}, "honest replacement answer is required"),
    ({"key": "k" * 10, "ranking": [[0], [1], [2], [3]], "flags": {"boring": [1]}}, "'flags' must map"),
    ({"key": "k" * 10, "ranking": [[0], [1], [2], [3]], "flags": {"unsafe": [4]}}, "positions 0..3"),
    ({"key": "k" * 10, "ranking": [[0], [1], [2], [3]], "replacement": "x" * 30000, "all_wrong": True}, "longer"),
])
def test_bad_submissions_are_rejected(conn, tmp_path, payload, message):
    _import(conn, tmp_path)
    with pytest.raises(DataError, match=message):
        store.submit_annotation(conn, 1, _uid(conn, "a1"), payload)
    assert conn.execute("SELECT COUNT(*) FROM annotations").fetchone()[0] == 0


def test_agreement_dispute_adjudication_and_export(conn, tmp_path):
    _import(conn, tmp_path, n=3)
    # item 1: near agreement (last two swapped) → agreed, consensus ties the swapped pair
    _submit(conn, 1, "a1", [[2], [0], [1], [3]], "i1-a1-xxxx", flags={"factually_wrong": [0]})
    assert _submit(conn, 1, "a2", [[2], [0], [3], [1]], "i1-a2-xxxx")["item_status"] == "agreed"
    # item 2: different best answer → disputed → expert decides
    _submit(conn, 2, "a1", [[0], [1], [2], [3]], "i2-a1-xxxx")
    assert _submit(conn, 2, "a2", [[1], [0], [2], [3]], "i2-a2-xxxx")["item_status"] == "disputed"
    with pytest.raises(store.Conflict, match="already disputed"):
        _submit(conn, 2, "a1", [[1], [0], [2], [3]], "i2-a1-late")
    with pytest.raises(store.Conflict, match="only disputed items"):
        store.submit_adjudication(conn, 1, _uid(conn, "ex"), {"key": "adj-1-xxxx", "ranking": [[0], [1], [2], [3]]})
    expert_order = store.display_order(2, _uid(conn, "ex"), 4)
    pos = {orig: p for p, orig in enumerate(expert_order)}
    adj = {"key": "adj-2-xxxx", "ranking": [[pos[1]], [pos[0], pos[2]], [pos[3]]], "note": "1 更安全"}
    assert store.submit_adjudication(conn, 2, _uid(conn, "ex"), adj) == {"item_status": "adjudicated",
                                                                          "duplicate": False}
    assert store.submit_adjudication(conn, 2, _uid(conn, "ex"), adj)["duplicate"] is True
    # item 3: both say every answer is wrong → the first annotator's honest reply becomes best
    _submit(conn, 3, "a1", [[0, 1, 2, 3]], "i3-a1-xxxx", all_wrong=True, replacement="抱歉，我不确定。")
    _submit(conn, 3, "a2", [[0, 1, 2, 3]], "i3-a2-xxxx", all_wrong=True, replacement="我无法可靠回答。")

    rows = list(export.rankings(conn, "b1"))
    assert [r["id"] for r in rows] == ["item-0", "item-1", "item-2"]
    r1, r2, r3 = (Ranking.from_dict(r) for r in rows)
    assert r1.ranking == [[2], [0], [1, 3]] and r1.annotators == ["a1", "a2"]
    ann = r1.meta["annotation"]
    assert ann["status"] == "agreed" and ann["kendall_tau"] == pytest.approx(4 / 6) and ann["top1_agree"]
    assert ann["flags"] == {"factually_wrong": [1, 0, 0, 0], "unsafe": [0, 0, 0, 0]}
    assert [j["annotator"] for j in ann["judgements"]] == ["a1", "a2"] and r1.meta["department"] == "呼吸内科"
    assert r2.ranking == [[1], [0, 2], [3]] and r2.meta["annotation"]["adjudicated_by"] == "ex"
    assert r2.meta["annotation"]["note"] == "1 更安全" and r2.meta["annotation"]["dispute"] == "different best answers"
    assert r3.all_wrong and r3.replacement == "抱歉，我不确定。" and r3.ranking == [[0, 1, 2, 3]]

    pairs = list(export.pairs(iter(rows)))
    by_item = {}
    for p in pairs:
        by_item.setdefault(p["id"].split("#")[0], []).append(p)
    assert len(by_item["item-0"]) == 5  # 2>0, 2>1, 2>3, 0>1, 0>3 (1 and 3 tied)
    assert len(by_item["item-1"]) == 5  # 1>0, 1>2, 1>3, 0>3, 2>3
    assert len(by_item["item-2"]) == 4  # the replacement beats each of the 4 tied wrong answers
    assert {p["chosen"] for p in by_item["item-2"]} == {"抱歉，我不确定。"}
    p = by_item["item-0"][0]
    assert p["system"] == "你是一名谨慎的全科医生。" and p["chosen"] == rows[0]["responses"][2]
    assert [c["from"] for c in p["conversations"]] == ["human", "gpt", "human"]

    report = export.progress(conn, "b1")
    b = report["batches"][0]
    assert (b["items"], b["agreed"], b["adjudicated"], b["open"], b["done"], b["pending"]) == (3, 2, 1, 0, 6, 0)
    a1 = {a["annotator"]: a for a in report["annotators"]}["a1"]
    # a1 on item 2: 0>1>2>3 vs the expert's 1 > {0,2} > 3 → C=4, D=1, one pair tied by the expert
    assert a1["done"] == 3 and a1["tau_vs_expert"] == pytest.approx(3 / 30 ** 0.5, abs=1e-4)
    csv_text = export.progress_csv(report)
    assert csv_text.splitlines()[0].startswith("scope,batch,annotator,items") and "annotator,b1,a1,3,3,0" in csv_text


def test_single_annotator_batches_resolve_at_once(conn, tmp_path):
    _import(conn, tmp_path, per_item=1, annotators=["a1", "a2"], assign="round-robin")
    assert _submit(conn, 1, "a1", [[3], [2], [1], [0]], "solo-a1-xx")["item_status"] == "agreed"
    assert next(export.rankings(conn))["ranking"] == [[3], [2], [1], [0]]


def test_cli_users_import_export_progress(tmp_path, monkeypatch, capsys):
    from zhongjing.cli import main as zj

    dbp = str(tmp_path / "c.sqlite")
    monkeypatch.setenv("ZHONGJING_ANNOTATE_PASSWORD", PASSWORD)
    for name, role in [("a1", "annotator"), ("a2", "annotator"), ("ex", "expert")]:
        assert annotate_main(["users", "add", name, "--role", role, "--db", dbp]) == 0
    assert zj(["annotate", "users", "add", "a1", "--role", "annotator", "--db", dbp]) == 2
    assert "user 'a1' already exists" in capsys.readouterr().err
    monkeypatch.setenv("ZHONGJING_ANNOTATE_PASSWORD", "short")
    assert zj(["annotate", "users", "add", "x", "--role", "expert", "--db", dbp]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    items = write_items(tmp_path / "in.jsonl", 2)
    assert annotate_main(["import", str(items), "--batch", "b", "--db", dbp, "--assign", "round-robin"]) == 0
    assert "imported 2 items into batch b (a1: 2, a2: 2)" in capsys.readouterr().out
    conn = db.connect(dbp)
    _submit(conn, 1, "a1", [[0], [1], [2], [3]], "cli-a1-xxxx")
    _submit(conn, 1, "a2", [[0], [1], [2], [3]], "cli-a2-xxxx")
    out, pairs = tmp_path / "out" / "r.jsonl", tmp_path / "out" / "p.jsonl"
    assert annotate_main(["export", "--db", dbp, "--out", str(out), "--pairs", str(pairs)]) == 0
    said = capsys.readouterr().out
    assert "wrote 1 rankings" in said and "6 pairs" in said and "1 items not yet resolved were left out" in said
    assert [Ranking.from_dict(r).ranking for _, r in iter_jsonl(out)] == [[[0], [1], [2], [3]]]
    assert sum(1 for _ in iter_jsonl(pairs)) == 6
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.jsonl", "r.jsonl"]  # no temp files left
    prog = tmp_path / "progress.json"
    assert annotate_main(["progress", "--db", dbp, "--format", "json", "--out", str(prog)]) == 0
    assert json.loads(prog.read_text())["batches"][0]["agreed"] == 1
    assert zj(["annotate", "export", "--db", str(tmp_path / "none.sqlite"), "--out", str(out)]) == 2
    assert "annotation database not found" in capsys.readouterr().err
    assert zj(["annotate", "import", str(tmp_path / "missing.jsonl"), "--batch", "x", "--db", dbp]) == 2
    assert zj(["annotate", "users", "disable", "a2", "--db", dbp]) == 0
    assert db.get_user(conn, "a2")["active"] == 0
    with pytest.raises(sqlite3.IntegrityError):  # the role CHECK constraint guards the table itself
        conn.execute("UPDATE users SET role = 'root' WHERE username = 'a1'")


def test_reassign_moves_only_unfinished_items(conn, tmp_path):
    _import(conn, tmp_path, n=3, annotators=["a1", "a2"])
    _submit(conn, 1, "a1", [[0], [1], [2], [3]], "re-a1-xxxx")
    assert store.reassign(conn, "a1", "a3") == {"moved": 2, "skipped": 0}
    mine = lambda u: sorted(i["id"] for i in store.queue(conn, _uid(conn, u)))  # noqa: E731
    assert mine("a1") == [1] and mine("a3") == [2, 3]  # a1 keeps what they already did
    # a2 already holds items 2 and 3: they must not take both slots of one item
    assert store.reassign(conn, "a3", "a2") == {"moved": 0, "skipped": 2}
    with pytest.raises(ZhongjingError, match="'ex' is not an active annotator"):
        store.reassign(conn, "a1", "ex")


def test_missing_web_extra_is_one_clear_error(tmp_path, monkeypatch, capsys):
    import sys

    from zhongjing.cli import main as zj

    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the extra were not installed
    for mod in ("zhongjing.annotate.app", "zhongjing.annotate.web", "zhongjing.annotate.admin"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    assert zj(["annotate", "serve", "--db", str(tmp_path / "x.sqlite")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'zhongjing[web]'" in err


def test_export_of_a_prompt_ranked_in_two_rounds_loads_for_train_rm(conn, tmp_path):
    # regenerated answers keep their ids (source#turn): a second round imported as its own batch made
    # `export` write the id twice, and `train rm`'s Ranking reader refused the whole file
    from zhongjing.annotate.export import pairs, rankings
    from zhongjing.data.readers import read_rankings
    from zhongjing.io import write_jsonl

    _import(conn, tmp_path, name="round1", n=1)
    _import(conn, tmp_path, name="round2", n=1)
    for item_id in (1, 2):
        for user in ("a1", "a2"):
            _submit(conn, item_id, user, [[0], [1], [2], [3]], f"two-rounds-{item_id}-{user}")
    out = tmp_path / "r.jsonl"
    rows = list(rankings(conn))
    write_jsonl(out, rows)
    assert [r.id for r in read_rankings(out)] == ["item-0", "item-0@round2"]
    assert len({p["id"] for p in pairs(iter(rows))}) == 12
