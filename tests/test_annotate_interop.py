"""Krippendorff's α (published example), Label Studio and Argilla round trips, and the reward model's pre-ranking
as an opt-in suggestion: shown on the item page only for batches imported with it, recorded in the export."""

from __future__ import annotations

import json

import pytest

from annotate_helpers import add_users, login, ranking_record
from zhongjing.annotate import db, export, interop, store
from zhongjing.annotate.agreement import krippendorff_alpha, rankings_alpha
from zhongjing.annotate.cli import main as annotate_main
from zhongjing.annotate.suggest import add_suggestions, groups_by_score, suggestion_text
from zhongjing.errors import DataError

N = None
# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 coders × 12 units, values 1..5
CODERS = [[1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
          [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]]


def test_krippendorff_alpha_matches_the_published_example():
    units = [[x for x in col if x is not None] for col in zip(*CODERS)]
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha([[1, 1], [2, 2]]) == 1.0 and krippendorff_alpha([[1, 1], [1]]) is None


def test_rankings_alpha_by_hand():
    # two annotators, one item, tiers a = (0,1,2), b = (1,0,2): coincidences (0,1)×2, (1,0)×2, (2,2)×2;
    # n_g = 2 each, n = 6; ordinal δ²(0,1) = (4 − 2)² = 4 → D_o ∝ 4·4 = 16, D_e = Σ n_c n_k δ² = 2·(4·4 + 4·16 + 4·4) = 192
    # α = 1 − (6 − 1)·16 / 192 = 7/12
    assert rankings_alpha([[[[0], [1], [2]], [[1], [0], [2]]]]) == pytest.approx(7 / 12)
    assert rankings_alpha([[[[0], [1, 2]], [[0], [1, 2]]]]) == 1.0


def ranked(i: int, ranking, annotators=("doc1",)) -> dict:
    return {**ranking_record(i), "ranking": ranking, "annotators": list(annotators)}


def test_label_studio_round_trip_keeps_ties_every_annotator_and_the_suggestion():
    r = ranked(0, [[2], [0, 3], [1]])
    r["meta"]["suggestion"] = {"ranking": [[0], [1, 2, 3]], "source": "rm"}
    (task,) = interop.to_label_studio([r])
    assert task["data"]["items"][2] == {"id": "r2", "title": "回答 C", "body": r["responses"][2]}
    assert task["annotations"][0]["result"][0]["value"] == {"ranker": {"rank-1": ["r2"], "rank-2": ["r0", "r3"],
                                                                       "rank-3": ["r1"]}}
    assert task["predictions"][0]["result"][0]["value"]["ranker"]["rank-2"] == ["r1", "r2", "r3"]
    # what a Label Studio export of two doctors' work looks like (ids and times added by Label Studio)
    task["id"] = 7
    task["annotations"].append({"id": 2, "completed_by": 12, "was_cancelled": False, "result": [
        {"id": "x", "type": "ranker", "from_name": "rank", "to_name": "answers",
         "value": {"ranker": {"rank-1": ["r2", "r0"], "rank-2": ["r3"], "rank-3": ["r1"], "rank-4": []}}}]})
    (back,) = interop.from_label_studio([task])
    assert back["ranking"] == [[2], [0, 3], [1]] and back["responses"] == r["responses"]
    assert [m["content"] for m in back["messages"]] == [m["content"] for m in r["messages"]]
    assert [j["ranking"] for j in back["meta"]["annotation"]["judgements"]] == [[[2], [0, 3], [1]], [[0, 2], [3], [1]]]
    assert "rank-4" in interop.label_studio_config(4)


def test_argilla_round_trip_and_argilla_2_values():
    r = ranked(1, [[1], [0, 2], [3]])
    (rec,) = interop.to_argilla([r])
    assert rec["responses"][0]["values"]["ranking"]["value"][:2] == [{"value": "response-2", "rank": 1},
                                                                      {"value": "response-1", "rank": 2}]
    (back,) = interop.from_argilla([rec])
    assert back["ranking"] == [[1], [0, 2], [3]] and back["id"] == "item-1"
    v2 = {"id": "abc", "fields": rec["fields"], "responses": {"ranking": [
        {"value": ["response-4", "response-3", "response-2", "response-1"], "user_id": "u1"}]}}
    (b2,) = interop.from_argilla([v2])
    assert b2["ranking"] == [[3], [2], [1], [0]]


@pytest.mark.parametrize("bad, msg", [
    ({"data": {"prompt": "x"}}, "data.items"),
    (None, "unknown answer id 'r9'"),
    ("partial", "does not rank every answer"),
])
def test_bad_imports_are_one_line_errors(bad, msg):
    (task,) = interop.to_label_studio([ranked(0, [[0], [1], [2], [3]])])
    if bad is None:
        task["annotations"][0]["result"][0]["value"]["ranker"]["rank-1"] = ["r9"]
    elif bad == "partial":
        del task["annotations"][0]["result"][0]["value"]["ranker"]["rank-4"]
    else:
        task = bad
    with pytest.raises(DataError) as e:
        interop.from_label_studio([task], "export.json")
    assert msg in str(e.value) and "export.json:task 1" in str(e.value) and "\n" not in str(e.value)


def test_cli_converts_both_ways(tmp_path, capsys):
    src = tmp_path / "r.jsonl"
    src.write_text(json.dumps(ranked(0, [[0], [1, 2], [3]]), ensure_ascii=False) + "\n", encoding="utf-8")
    for direction, out in (("to-label-studio", "ls.json"), ("to-argilla", "ar.jsonl")):
        assert annotate_main(["interop", direction, str(src), str(tmp_path / out)]) == 0
    assert annotate_main(["interop", "from-label-studio", str(tmp_path / "ls.json"), str(tmp_path / "b1.jsonl")]) == 0
    assert annotate_main(["interop", "from-argilla", str(tmp_path / "ar.jsonl"), str(tmp_path / "b2.jsonl")]) == 0
    for f in ("b1.jsonl", "b2.jsonl"):
        assert json.loads((tmp_path / f).read_text(encoding="utf-8"))["ranking"] == [[0], [1, 2], [3]]
    assert (tmp_path / "ls.json.config.xml").read_text().startswith("<View>")


def test_suggestion_groups_and_labels():
    assert groups_by_score([0.1, 0.9, 0.85, -1.0], tie=0.1) == [[1, 2], [0], [3]]
    rec = {"meta": {"suggestion": {"ranking": [[1, 2], [0], [3]]}}}
    # display order [2, 0, 3, 1]: answer 2 is shown as A, 0 as B, 3 as C, 1 as D
    assert suggestion_text(rec, [2, 0, 3, 1]) == "回答 A = 回答 D > 回答 B > 回答 C"
    assert suggestion_text({"meta": {}}, [0, 1, 2, 3]) is None


def test_suggestion_is_shown_only_when_imported_and_recorded_in_the_export(tmp_path):
    testclient = pytest.importorskip("fastapi.testclient", reason="needs the 'web' extra")
    from zhongjing.annotate.app import create_app
    from zhongjing.annotate.web import ServeSettings

    path = tmp_path / "a.sqlite"
    add_users(path, a1="annotator", a2="annotator")
    conn = db.connect(path)
    plain = [store.Ranking.from_dict(ranking_record(i)) for i in range(2)]
    hinted = add_suggestions([ranking_record(i) for i in range(2, 4)], lambda c, a: [len(x) + k for k, x in
                                                                                  enumerate(a)], "rm-test")
    store.import_batch(conn, "plain", plain, store.BatchSettings(), ["a1", "a2"])
    store.import_batch(conn, "hinted", [store.Ranking.from_dict(r) for r in hinted], store.BatchSettings(), ["a1", "a2"])
    c = testclient.TestClient(create_app(ServeSettings(db=str(path))))
    login(c, "a1")
    assert "模型预排序" not in c.get("/items/1").text
    page = c.get("/items/3").text
    assert "模型预排序" in page and "回答" in page.split("模型预排序")[1][:40]
    for item in (1, 2, 3, 4):  # both annotators rank identically: α = 1 in both batches
        for user in ("a1", "a2"):
            uid = db.get_user(conn, user)["id"]
            order = store.display_order(item, uid, 4)
            pos = {o: p for p, o in enumerate(order)}
            store.submit_annotation(conn, item, uid, {"key": f"k-{item}-{user}-xx", "ranking": [[pos[i]] for i in range(4)]})
    rows = {r["id"]: r for r in export.rankings(conn)}
    assert rows["item-0"]["meta"]["annotation"]["suggestion_shown"] is False
    ann = rows["item-2"]["meta"]["annotation"]
    assert ann["suggestion_shown"] is True and rows["item-2"]["meta"]["suggestion"]["source"] == "rm-test"
    # the fake scorer prefers later answers: the doctors' 0>1>2>3 is the exact reverse
    assert all(j["tau_vs_suggestion"] == pytest.approx(-1.0) for j in ann["judgements"])
    prog = {b["batch"]: b for b in export.progress(conn)["batches"]}
    assert prog["plain"]["alpha"] == 1.0 and prog["hinted"]["alpha"] == 1.0
