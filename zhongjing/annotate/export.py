"""What leaves the tool: resolved Rankings for `train rm`, a pairwise chosen/rejected view
(MedicalGPT's `conversations` / `chosen` / `rejected`), and progress statistics."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from statistics import mean
from typing import Iterator

from zhongjing.annotate import agreement, store
from zhongjing.data.rubric import FLAGS
from zhongjing.data.schema import Ranking, group_pairs
from zhongjing.errors import ZhongjingError

RESOLVED = ("agreed", "adjudicated")


def _batch_id(conn: sqlite3.Connection, batch: str | None) -> int | None:
    if batch is None:
        return None
    row = conn.execute("SELECT id FROM batches WHERE name = ?", (batch,)).fetchone()
    if row is None:
        raise ZhongjingError(f"no batch {batch!r}")
    return row[0]


def rankings(conn: sqlite3.Connection, batch: str | None = None) -> Iterator[dict]:
    """Resolved items as Ranking dicts: final order, the annotators, and meta.annotation with
    status, agreement, per-answer flag counts, each annotator's own judgement and edits."""
    bid = _batch_id(conn, batch)
    ids = conn.execute(
        "SELECT id FROM items WHERE status IN ('agreed', 'adjudicated') AND (? IS NULL OR batch_id = ?) ORDER BY id",
        (bid, bid)).fetchall()
    written: set[str] = set()
    for (iid,) in ids:
        item = store.get_item(conn, iid)
        anns = store.latest_annotations(conn, iid)
        adj = store.adjudication(conn, iid) if item["status"] == "adjudicated" else None
        rec, final, k = item["record"], item["final"], item["k"]
        ann_meta = {
            "batch": item["batch"],
            "status": item["status"],
            "kendall_tau": item["tau"],
            "top1_agree": None if item["top1"] is None else bool(item["top1"]),
            "flags": {f: [sum(r in a["flags"].get(f, []) for a in anns) for r in range(k)] for f in FLAGS},
            "judgements": [{"annotator": a["username"], "ranking": a["ranking"], "all_wrong": a["all_wrong"],
                            **({"replacement": a["replacement"]} if a["replacement"] else {}),
                            **({"comment": a["comment"]} if a["comment"] else {}),
                            "seconds": a["seconds"]} for a in anns],
            "edited": [{"annotator": a["username"], **a["edited"]} for a in anns if a["edited"]],
        }
        sug = (rec.get("meta") or {}).get("suggestion")
        ann_meta["suggestion_shown"] = bool(sug)  # agreement can be compared with and without suggestions
        if sug:
            for j in ann_meta["judgements"]:
                j["tau_vs_suggestion"] = agreement.kendall_tau_b(j["ranking"], sug["ranking"])
        if item["reason"]:
            ann_meta["dispute"] = item["reason"]
        if adj:
            ann_meta["adjudicated_by"] = adj["username"]
            if adj["note"]:
                ann_meta["note"] = adj["note"]
        out = {**rec, "ranking": final["ranking"], "annotators": [a["username"] for a in anns],
               "meta": {**rec.get("meta", {}), "annotation": ann_meta}}
        out.pop("all_wrong", None)
        out.pop("replacement", None)
        if final["all_wrong"]:
            out["all_wrong"], out["replacement"] = True, final["replacement"]
        # the same prompt ranked in two batches (a second round after regenerating answers): the Ranking
        # reader refuses repeated ids, so a later one is named after its batch
        uid, n = out["id"], 2
        if uid in written:
            uid = f"{out['id']}@{item['batch']}"
        while uid in written:
            uid, n = f"{out['id']}@{item['batch']}~{n}", n + 1
        written.add(uid)
        out["id"] = uid
        yield Ranking.from_dict(out).to_dict()  # validated: `train rm` reads exactly this


def ranked_answers(r: dict) -> tuple[list[str], list[list[int]]]:
    """Responses and tie groups with an "all wrong" replacement put above every original answer."""
    done = Ranking.from_dict(r).completed()
    return done.responses, done.ranking


def pairs(ranking_rows: Iterator[dict]) -> Iterator[dict]:
    """One MedicalGPT-style row per (better, worse) pair; tied answers give no pair."""
    for r in ranking_rows:
        responses, groups = ranked_answers(r)
        system = [m["content"] for m in r["messages"] if m["role"] == "system"]
        conv = [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                for m in r["messages"] if m["role"] != "system"]
        for b, w in group_pairs(groups):
            row = {"id": f"{r['id']}#{b}>{w}", "conversations": conv,
                   "chosen": responses[b], "rejected": responses[w]}
            if system:
                row["system"] = system[0]
            yield row


# ---- progress ----------------------------------------------------------------------------------

PROGRESS_FIELDS = ["scope", "batch", "annotator", "items", "done", "pending", "open", "agreed", "disputed",
                   "adjudicated", "pairs", "mean_tau", "alpha", "top1_rate", "dispute_rate", "mean_seconds", "tau_vs_expert"]


def batch_alpha(conn: sqlite3.Connection, batch_id: int) -> float | None:
    """Krippendorff's ordinal α over the items of a batch that two or more annotators ranked (latest submissions)."""
    judgements = []
    for (iid,) in conn.execute("SELECT id FROM items WHERE batch_id = ?", (batch_id,)).fetchall():
        anns = store.latest_annotations(conn, iid)
        if len(anns) >= 2:
            judgements.append([a["ranking"] for a in anns])
    a = agreement.rankings_alpha(judgements)
    return None if a is None else round(a, 4)


def progress(conn: sqlite3.Connection, batch: str | None = None) -> dict:
    """Counts and agreement per batch and per annotator (optionally one batch only)."""
    bid = _batch_id(conn, batch)
    batches = []
    for b in conn.execute("SELECT id, name FROM batches WHERE ? IS NULL OR id = ? ORDER BY id", (bid, bid)):
        st = dict(conn.execute("SELECT status, COUNT(*) FROM items WHERE batch_id = ? GROUP BY status",
                               (b["id"],)).fetchall())
        rows = conn.execute("SELECT tau, top1, status FROM items WHERE batch_id = ? AND top1 IS NOT NULL",
                            (b["id"],)).fetchall()
        done, total = conn.execute(
            "SELECT (SELECT COUNT(DISTINCT n.item_id || ':' || n.user_id) FROM annotations n JOIN items i "
            "ON i.id = n.item_id WHERE i.batch_id = ?), (SELECT COUNT(*) FROM assignments a JOIN items i "
            "ON i.id = a.item_id WHERE i.batch_id = ?)", (b["id"], b["id"])).fetchone()
        stats = agreement.summarize([r["tau"] for r in rows], [bool(r["top1"]) for r in rows],
                                    [r["status"] in ("disputed", "adjudicated") for r in rows])
        stats["alpha"] = batch_alpha(conn, b["id"])
        batches.append({"scope": "batch", "batch": b["name"], "items": sum(st.values()), "done": done,
                        "pending": total - done, **{s: st.get(s, 0) for s in ("open", "agreed", "disputed",
                                                                               "adjudicated")}, **stats})
    people = []
    users = conn.execute("SELECT id, username FROM users WHERE role = 'annotator' ORDER BY id").fetchall()
    for u in users:
        items = conn.execute(
            "SELECT i.id, i.tau, i.top1, i.status FROM assignments a JOIN items i ON i.id = a.item_id "
            "WHERE a.user_id = ? AND (? IS NULL OR i.batch_id = ?)", (u["id"], bid, bid)).fetchall()
        if not items and bid is not None:
            continue
        mine = {a["item_id"]: a for a in conn.execute(
            "SELECT n.item_id, n.ranking, n.seconds FROM annotations n WHERE n.user_id = ? AND n.id = "
            "(SELECT MAX(m.id) FROM annotations m WHERE m.item_id = n.item_id AND m.user_id = n.user_id)",
            (u["id"],)).fetchall()}
        done = [i for i in items if i["id"] in mine]
        paired = [i for i in done if i["top1"] is not None]
        vs_expert = []
        for i in done:
            if i["status"] == "adjudicated":
                adj = store.adjudication(conn, i["id"])
                tau = agreement.kendall_tau_b(json.loads(mine[i["id"]]["ranking"]), adj["ranking"])
                if tau is not None:
                    vs_expert.append(tau)
        secs = [mine[i["id"]]["seconds"] for i in done if mine[i["id"]]["seconds"] is not None]
        stats = agreement.summarize([i["tau"] for i in paired], [bool(i["top1"]) for i in paired],
                                    [i["status"] in ("disputed", "adjudicated") for i in paired])
        people.append({"scope": "annotator", "batch": batch or "", "annotator": u["username"], "items": len(items),
                       "done": len(done), "pending": len(items) - len(done), **stats,
                       "mean_seconds": round(mean(secs), 1) if secs else None,
                       "tau_vs_expert": round(mean(vs_expert), 4) if vs_expert else None})
    return {"batches": batches, "annotators": people}


def progress_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=PROGRESS_FIELDS, extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for row in report["batches"] + report["annotators"]:
        w.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in PROGRESS_FIELDS})
    return buf.getvalue()
