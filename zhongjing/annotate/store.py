"""Batches, assignments, submissions and adjudication on top of `db`.

Browsers see answers in a per-annotator shuffled order and submit *display positions*; this module
maps them back to the original response indices, so no response index ever leaves the server
before it is ranked (no position bias from the generator's sampling order).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterable, Literal

from zhongjing.annotate import agreement, db
from zhongjing.data.rubric import FLAGS
from zhongjing.data.schema import Ranking, normalize_ranking
from zhongjing.errors import DataError, ZhongjingError

KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
MAX_TEXT = 20_000


class Conflict(ZhongjingError):
    """The request is well-formed but clashes with the stored state (HTTP 409)."""


@dataclass
class BatchSettings:
    k: int = 4  # answers per item; every imported record must have exactly k
    per_item: int = 2  # annotators per item (the paper cross-annotates with 2); 1 = no cross-check
    min_tau: float = 0.5  # Kendall tau-b below this sends the item to an expert
    require_top1: bool = True  # different best answers also send it to an expert
    assign: Literal["round-robin", "balanced"] = "balanced"

    def __post_init__(self):
        if self.k < 2:
            raise ZhongjingError(f"k must be at least 2, got {self.k}")
        if self.per_item not in (1, 2):
            raise ZhongjingError(f"per_item must be 1 or 2, got {self.per_item}")
        if not -1.0 <= self.min_tau <= 1.0:
            raise ZhongjingError(f"min_tau must lie in [-1, 1], got {self.min_tau}")
        if self.assign not in ("round-robin", "balanced"):
            raise ZhongjingError(f"assign must be 'round-robin' or 'balanced', got {self.assign!r}")


def display_order(item_id: int, user_id: int, k: int) -> list[int]:
    """Original response index shown at each display position; stable per (item, user)."""
    seed = int.from_bytes(hashlib.sha256(f"zhongjing-annotate:{item_id}:{user_id}".encode()).digest()[:8], "big")
    order = list(range(k))
    random.Random(seed).shuffle(order)
    return order


# ---- import & assignment -----------------------------------------------------------------------

def parse_records(rows: Iterable[tuple[int, Any]], source: str, k: int) -> list[Ranking]:
    """(line, obj) pairs → Rankings, all validated before anything is written."""
    out, seen = [], {}
    for line, obj in rows:
        try:
            r = Ranking.from_dict(obj)
        except DataError as e:
            raise DataError(e.reason, source, f"line {line}") from None
        if r.k != k:
            raise DataError(f"record has {r.k} responses, this batch expects k={k}", source, f"line {line}")
        r.id = r.id or f"line{line}"
        if r.id in seen:
            raise DataError(f"duplicate id {r.id!r} (first on line {seen[r.id]})", source, f"line {line}")
        seen[r.id] = line
        out.append(r)
    if not out:
        raise DataError("no records to import", source)
    return out


def _annotator_ids(conn: sqlite3.Connection, names: list[str] | None) -> list[tuple[int, str]]:
    rows = conn.execute("SELECT id, username, role, active FROM users ORDER BY id").fetchall()
    by_name = {r["username"]: r for r in rows}
    if names is None:
        return [(r["id"], r["username"]) for r in rows if r["role"] == "annotator" and r["active"]]
    out = []
    for n in names:
        r = by_name.get(n)
        if r is None or r["role"] != "annotator" or not r["active"]:
            raise ZhongjingError(f"{n!r} is not an active annotator")
        out.append((r["id"], n))
    return out


def _open_load(conn: sqlite3.Connection) -> dict[int, int]:
    """Assigned items each annotator has not yet annotated, across all batches."""
    rows = conn.execute(
        "SELECT a.user_id, COUNT(*) FROM assignments a JOIN items i ON i.id = a.item_id "
        "WHERE i.status = 'open' AND NOT EXISTS (SELECT 1 FROM annotations n "
        "WHERE n.item_id = a.item_id AND n.user_id = a.user_id) GROUP BY a.user_id"
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def assign(n_items: int, annotators: list[int], per_item: int, strategy: str, load: dict[int, int]) -> list[list[int]]:
    """Annotator ids for each item. round-robin cycles through the list; balanced always picks
    the `per_item` annotators with the fewest open items (ties in list order)."""
    if len(annotators) < per_item:
        raise ZhongjingError(f"need at least {per_item} active annotators per item, have {len(annotators)}")
    out = []
    load = {a: load.get(a, 0) for a in annotators}
    for i in range(n_items):
        if strategy == "round-robin":
            pick = [annotators[(i * per_item + j) % len(annotators)] for j in range(per_item)]
        else:
            pick = sorted(annotators, key=lambda a: (load[a], annotators.index(a)))[:per_item]
        for a in pick:
            load[a] += 1
        out.append(pick)
    return out


def import_batch(conn: sqlite3.Connection, name: str, rankings: list[Ranking], settings: BatchSettings,
                 annotators: list[str] | None = None, source: str = "") -> dict:
    if not name.strip() or len(name) > 100 or "/" in name or not name.isprintable():
        raise ZhongjingError(f"batch name {name!r} must be 1-100 printable characters without '/'")
    with db.write(conn):
        if conn.execute("SELECT 1 FROM batches WHERE name = ?", (name,)).fetchone():
            raise ZhongjingError(f"batch {name!r} already exists")
        people = _annotator_ids(conn, annotators)
        plan = assign(len(rankings), [p[0] for p in people], settings.per_item, settings.assign, _open_load(conn))
        t = db.now()
        bid = conn.execute(
            "INSERT INTO batches (name, k, per_item, min_tau, require_top1, source, created_at) VALUES (?,?,?,?,?,?,?)",
            (name, settings.k, settings.per_item, settings.min_tau, int(settings.require_top1), source, t),
        ).lastrowid
        for r, users in zip(rankings, plan):
            record = r.to_dict()
            record["ranking"], record["annotators"] = [], []  # a prior order must not leak into the new one
            iid = conn.execute("INSERT INTO items (batch_id, ext_id, record, updated_at) VALUES (?,?,?,?)",
                               (bid, r.id, json.dumps(record, ensure_ascii=False), t)).lastrowid
            conn.executemany("INSERT INTO assignments (item_id, user_id, assigned_at) VALUES (?,?,?)",
                             [(iid, u, t) for u in users])
    counts: dict[str, int] = {}
    names = dict((p[0], p[1]) for p in people)
    for users in plan:
        for u in users:
            counts[names[u]] = counts.get(names[u], 0) + 1
    return {"batch": name, "items": len(rankings), "assignments": counts}


def reassign(conn: sqlite3.Connection, from_user: str, to_user: str, batch: str | None = None) -> dict:
    """Move `from_user`'s not-yet-annotated open items to `to_user` (e.g. a doctor leaves).

    Items `to_user` already has are skipped: one person must never fill both annotator slots."""
    to_id = _annotator_ids(conn, [to_user])[0][0]
    src = conn.execute("SELECT id FROM users WHERE username = ?", (from_user,)).fetchone()
    if src is None:
        raise ZhongjingError(f"no user {from_user!r}")
    with db.write(conn):
        rows = conn.execute(
            "SELECT a.item_id FROM assignments a JOIN items i ON i.id = a.item_id JOIN batches b ON b.id = i.batch_id "
            "WHERE a.user_id = ? AND i.status = 'open' AND (? IS NULL OR b.name = ?) AND NOT EXISTS "
            "(SELECT 1 FROM annotations n WHERE n.item_id = a.item_id AND n.user_id = a.user_id)",
            (src["id"], batch, batch)).fetchall()
        moved = skipped = 0
        for (item_id,) in rows:
            if is_assigned(conn, item_id, to_id):
                skipped += 1
                continue
            conn.execute("UPDATE assignments SET user_id = ?, assigned_at = ? WHERE item_id = ? AND user_id = ?",
                         (to_id, db.now(), item_id, src["id"]))
            moved += 1
    return {"moved": moved, "skipped": skipped}


# ---- reading -----------------------------------------------------------------------------------

def get_item(conn: sqlite3.Connection, item_id: int) -> dict | None:
    row = conn.execute(
        "SELECT i.*, b.name AS batch, b.k, b.per_item, b.min_tau, b.require_top1 FROM items i "
        "JOIN batches b ON b.id = i.batch_id WHERE i.id = ?", (item_id,)).fetchone()
    if row is None:
        return None
    d = dict(row)
    d["record"] = json.loads(d["record"])
    d["final"] = json.loads(d["final"]) if d["final"] else None
    return d


def is_assigned(conn: sqlite3.Connection, item_id: int, user_id: int) -> bool:
    return conn.execute("SELECT 1 FROM assignments WHERE item_id = ? AND user_id = ?",
                        (item_id, user_id)).fetchone() is not None


def queue(conn: sqlite3.Connection, user_id: int) -> list[dict]:
    """The annotator's items, pending first, each with whether they have submitted."""
    rows = conn.execute(
        "SELECT i.id, i.ext_id, i.status, b.name AS batch, "
        "EXISTS (SELECT 1 FROM annotations n WHERE n.item_id = i.id AND n.user_id = a.user_id) AS done "
        "FROM assignments a JOIN items i ON i.id = a.item_id JOIN batches b ON b.id = i.batch_id "
        "WHERE a.user_id = ? ORDER BY done, i.id", (user_id,)).fetchall()
    return [dict(r) for r in rows]


def next_pending(conn: sqlite3.Connection, user_id: int) -> int | None:
    row = conn.execute(
        "SELECT a.item_id FROM assignments a WHERE a.user_id = ? AND NOT EXISTS "
        "(SELECT 1 FROM annotations n WHERE n.item_id = a.item_id AND n.user_id = a.user_id) "
        "ORDER BY a.item_id LIMIT 1", (user_id,)).fetchone()
    return row[0] if row else None


def latest_annotations(conn: sqlite3.Connection, item_id: int) -> list[dict]:
    """Each annotator's latest annotation of the item, in order of their first submission."""
    rows = conn.execute(
        "SELECT n.*, u.username, (SELECT MIN(m.id) FROM annotations m WHERE m.item_id = n.item_id "
        "AND m.user_id = n.user_id) AS first_id FROM annotations n JOIN users u ON u.id = n.user_id "
        "WHERE n.item_id = ? AND n.id = (SELECT MAX(m.id) FROM annotations m WHERE m.item_id = n.item_id "
        "AND m.user_id = n.user_id) ORDER BY first_id", (item_id,)).fetchall()
    out = []
    for r in rows:
        d = dict(r)
        for f in ("ranking", "flags", "edited", "display_order"):
            d[f] = json.loads(d[f]) if d[f] else None
        d["all_wrong"] = bool(d["all_wrong"])
        out.append(d)
    return out


def adjudication(conn: sqlite3.Connection, item_id: int) -> dict | None:
    r = conn.execute("SELECT a.*, u.username FROM adjudications a JOIN users u ON u.id = a.expert_id "
                     "WHERE a.item_id = ?", (item_id,)).fetchone()
    if r is None:
        return None
    d = dict(r)
    d["ranking"], d["all_wrong"] = json.loads(d["ranking"]), bool(d["all_wrong"])
    return d


def disputed_items(conn: sqlite3.Connection) -> list[dict]:
    rows = conn.execute("SELECT i.id, i.ext_id, i.tau, i.top1, i.reason, b.name AS batch FROM items i "
                        "JOIN batches b ON b.id = i.batch_id WHERE i.status = 'disputed' ORDER BY i.id").fetchall()
    return [dict(r) for r in rows]


# ---- submissions -------------------------------------------------------------------------------

def _text(v: Any, what: str, *, required: bool = False) -> str | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise DataError(f"{what} is required")
        return None
    if not isinstance(v, str):
        raise DataError(f"{what} must be text")
    if len(v) > MAX_TEXT:
        raise DataError(f"{what} is longer than {MAX_TEXT} characters")
    return v


def parse_submission(payload: Any, order: list[int]) -> dict:
    """Validate a browser submission (display positions) → stored form (original indices)."""
    if not isinstance(payload, dict):
        raise DataError("submission must be a JSON object")
    key = payload.get("key")
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise DataError("submission needs an idempotency 'key' of 8-64 letters, digits, '-' or '_'")
    k = len(order)
    to_orig = lambda p: order[p]  # noqa: E731
    all_wrong = payload.get("all_wrong", False)
    if not isinstance(all_wrong, bool):
        raise DataError("'all_wrong' must be true or false")
    groups = normalize_ranking(payload.get("ranking"), k) if payload.get("ranking") is not None else []
    if not groups:
        raise DataError(f"rank all {k} answers (ties allowed)")
    ranking = [sorted(to_orig(p) for p in g) for g in groups]
    replacement = _text(payload.get("replacement"), "the honest replacement answer", required=all_wrong)
    if not all_wrong:
        replacement = None
    flags_in = payload.get("flags") or {}
    if not isinstance(flags_in, dict) or any(f not in FLAGS for f in flags_in):
        raise DataError(f"'flags' must map {' / '.join(FLAGS)} to answer positions")
    flags = {}
    for f in FLAGS:
        pos = flags_in.get(f) or []
        if not isinstance(pos, list) or any(not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < k for p in pos):
            raise DataError(f"flag {f!r} must list answer positions 0..{k - 1}")
        flags[f] = sorted({to_orig(p) for p in pos})
    edited = payload.get("edited")
    if edited is not None:
        if not isinstance(edited, dict):
            raise DataError("'edited' must be an object with 'text' and 'based_on'")
        text = _text(edited.get("text"), "the edited answer")
        based = edited.get("based_on")
        if based is not None and (not isinstance(based, int) or isinstance(based, bool) or not 0 <= based < k):
            raise DataError(f"'edited.based_on' must be an answer position 0..{k - 1}")
        edited = {"text": text, "based_on": None if based is None else to_orig(based)} if text else None
    seconds = payload.get("seconds")
    if seconds is not None and (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
                                or not 0 <= seconds <= MAX_SECONDS or seconds != seconds):
        raise DataError(f"'seconds' must be a finite number from 0 to {MAX_SECONDS}")
    return {"key": key, "ranking": ranking, "all_wrong": all_wrong, "replacement": replacement, "flags": flags,
            "edited": edited, "comment": _text(payload.get("comment"), "comment"),
            "seconds": None if seconds is None else float(seconds), "display_order": order}


MAX_SECONDS = 7 * 24 * 3600  # time spent on one item; anything larger is a broken client clock


def parse_json_body(raw: bytes) -> Any:
    """A request body from the browser: strict JSON (no NaN/Infinity, bounded nesting) or a one-line DataError."""
    from zhongjing.io import loads_strict

    try:
        return loads_strict(raw)
    except ValueError as e:
        raise DataError(f"request body is not valid JSON: {e}") from None


def submit_annotation(conn: sqlite3.Connection, item_id: int, user_id: int, payload: Any) -> dict:
    """Store one submission exactly once; when the last assigned annotator is in, decide agreement.

    Returns {"item_status", "duplicate"}. A retry with the same key is acknowledged again
    without a second row; a revision (new key) is allowed until the item is resolved.
    """
    item = get_item(conn, item_id)
    if item is None:
        raise ZhongjingError(f"no item {item_id}")
    sub = parse_submission(payload, display_order(item_id, user_id, item["k"]))
    with db.write(conn):
        prev = conn.execute("SELECT item_id, user_id FROM annotations WHERE idem_key = ?", (sub["key"],)).fetchone()
        if prev is not None:
            if (prev["item_id"], prev["user_id"]) != (item_id, user_id):
                raise Conflict("idempotency key already used for another submission")
            status = conn.execute("SELECT status FROM items WHERE id = ?", (item_id,)).fetchone()[0]
            return {"item_status": status, "duplicate": True}
        status = conn.execute("SELECT status FROM items WHERE id = ?", (item_id,)).fetchone()[0]
        if status != "open":
            raise Conflict(f"item is already {status}; it can no longer be changed")
        conn.execute(
            "INSERT INTO annotations (item_id, user_id, idem_key, ranking, all_wrong, replacement, flags, edited, "
            "comment, display_order, seconds, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (item_id, user_id, sub["key"], json.dumps(sub["ranking"]), int(sub["all_wrong"]), sub["replacement"],
             json.dumps(sub["flags"]), json.dumps(sub["edited"], ensure_ascii=False) if sub["edited"] else None,
             sub["comment"], json.dumps(sub["display_order"]), sub["seconds"], db.now()))
        status = _resolve(conn, item)
    return {"item_status": status, "duplicate": False}


def _resolve(conn: sqlite3.Connection, item: dict) -> str:
    """Inside the submission's transaction: agreed / disputed once every assigned annotator is in."""
    anns = latest_annotations(conn, item["id"])
    assigned = conn.execute("SELECT COUNT(*) FROM assignments WHERE item_id = ?", (item["id"],)).fetchone()[0]
    if len(anns) < min(item["per_item"], assigned):
        return "open"
    if len(anns) == 1:
        a = anns[0]
        final = {"ranking": a["ranking"], "all_wrong": a["all_wrong"], "replacement": a["replacement"]}
        tau = top1 = reason = None
        status = "agreed"
    else:
        a, b = anns[0], anns[1]
        d = agreement.decide(agreement.Judgement(a["ranking"], a["all_wrong"]),
                             agreement.Judgement(b["ranking"], b["all_wrong"]),
                             min_tau=item["min_tau"], require_top1=bool(item["require_top1"]))
        tau, top1, reason = d.tau, int(d.top1), d.reason or None
        status = "disputed" if d.disputed else "agreed"
        # both said "all wrong": the first annotator's honest reply is used, the other is kept in meta
        final = None if d.disputed else {"ranking": d.ranking, "all_wrong": d.all_wrong,
                                         "replacement": a["replacement"] if d.all_wrong else None}
    conn.execute("UPDATE items SET status = ?, tau = ?, top1 = ?, reason = ?, final = ?, updated_at = ? WHERE id = ?",
                 (status, tau, top1, reason, json.dumps(final, ensure_ascii=False) if final else None, db.now(),
                  item["id"]))
    return status


def submit_adjudication(conn: sqlite3.Connection, item_id: int, expert_id: int, payload: Any) -> dict:
    """The expert's order is final; a retry with the same key is acknowledged again."""
    item = get_item(conn, item_id)
    if item is None:
        raise ZhongjingError(f"no item {item_id}")
    sub = parse_submission(payload, display_order(item_id, expert_id, item["k"]))
    note = _text(payload.get("note"), "note")
    with db.write(conn):
        prev = conn.execute("SELECT item_id, expert_id FROM adjudications WHERE idem_key = ?", (sub["key"],)).fetchone()
        if prev is not None:
            if (prev["item_id"], prev["expert_id"]) != (item_id, expert_id):
                raise Conflict("idempotency key already used for another submission")
            return {"item_status": "adjudicated", "duplicate": True}
        status = conn.execute("SELECT status FROM items WHERE id = ?", (item_id,)).fetchone()[0]
        if status != "disputed":
            raise Conflict(f"item is {status}; only disputed items are adjudicated")
        conn.execute("INSERT INTO adjudications (item_id, expert_id, idem_key, ranking, all_wrong, replacement, note, "
                     "created_at) VALUES (?,?,?,?,?,?,?,?)",
                     (item_id, expert_id, sub["key"], json.dumps(sub["ranking"]), int(sub["all_wrong"]),
                      sub["replacement"], note, db.now()))
        final = {"ranking": sub["ranking"], "all_wrong": sub["all_wrong"], "replacement": sub["replacement"]}
        conn.execute("UPDATE items SET status = 'adjudicated', final = ?, updated_at = ? WHERE id = ?",
                     (json.dumps(final, ensure_ascii=False), db.now(), item_id))
    return {"item_status": "adjudicated", "duplicate": False}
