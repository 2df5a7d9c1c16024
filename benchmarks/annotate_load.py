"""Load test of the annotation server on loopback: N concurrent annotators submit rankings.

    python benchmarks/annotate_load.py                       # 20 annotators, 1,000 submissions
    python benchmarks/annotate_load.py --kill-after 400      # SIGKILL the server mid-load, restart, finish

Afterwards every submission must be in the database exactly once (each carries an idempotency
key; retries after a lost response are acknowledged as duplicates), and a server killed with
SIGKILL must not lose any submission it acknowledged. Prints submissions/s and p50/p95 latency,
and the ratio against the same server with `synchronous=OFF` (no fsync: the speed of a tool that
does not promise durability), measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from annotate_helpers import add_users, free_port, login, start_server, write_items  # noqa: E402

from zhongjing.annotate import db, store  # noqa: E402
from zhongjing.io import iter_jsonl  # noqa: E402


@dataclass
class Result:
    acked: set = field(default_factory=set)  # keys the server answered 200 for
    duplicates: int = 0
    latencies: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def prepare(db_path: Path, annotators: int, submissions: int, k: int = 4) -> dict[str, list[tuple[int, dict]]]:
    """Users + one batch with submissions/2 items (2 annotators each); returns each annotator's plan."""
    names = [f"ann{i:02d}" for i in range(annotators)]
    add_users(db_path, **{n: "annotator" for n in names})
    items = write_items(Path(tempfile.mkdtemp()) / "items.jsonl", submissions // 2, k)
    conn = db.connect(db_path)
    store.import_batch(conn, "load", store.parse_records(iter_jsonl(items), str(items), k),
                       store.BatchSettings(k=k, assign="round-robin"), names)
    rows = conn.execute("SELECT u.username, a.item_id FROM assignments a JOIN users u ON u.id = a.user_id "
                        "ORDER BY a.item_id").fetchall()
    conn.close()
    plan: dict[str, list[tuple[int, dict]]] = {n: [] for n in names}
    for user, item in rows:
        rng = random.Random(f"{user}:{item}")
        pos = list(range(k))
        rng.shuffle(pos)
        cuts = sorted(rng.sample(range(1, k), rng.randint(1, k - 1)))  # random tie groups
        groups = [pos[a:b] for a, b in zip([0] + cuts, cuts + [k])]
        plan[user].append((item, {"key": f"load-{user}-{item:06d}", "ranking": groups, "seconds": 30.0,
                                  "flags": {"unsafe": [pos[-1]]} if rng.random() < 0.2 else {}}))
    return plan


def annotator(base: str, user: str, subs: list[tuple[int, dict]], res: Result, stop: threading.Event,
              ready: threading.Barrier) -> None:
    import httpx

    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            try:
                csrf = login(c, user)
            finally:
                ready.wait()  # everyone logged in (scrypt is slow on purpose): the clock starts now
            for item, payload in subs:
                if stop.is_set():
                    return
                if payload["key"] in res.acked:
                    continue
                t = time.perf_counter()
                r = c.post(f"/api/items/{item}/annotation", json=payload, headers={"X-CSRF-Token": csrf})
                dt = time.perf_counter() - t
                if r.status_code != 200:
                    with res.lock:
                        res.errors.append(f"{user} item {item}: HTTP {r.status_code} {r.text[:200]}")
                    continue
                with res.lock:
                    res.acked.add(payload["key"])
                    res.duplicates += r.json()["duplicate"]
                    res.latencies.append(dt)
    except Exception as e:  # the server was killed under us: stop this annotator
        with res.lock:
            res.errors.append(f"{user}: {type(e).__name__}")


def run(base: str, plan: dict, res: Result, kill: tuple | None = None) -> float:
    """All annotators at once; `kill=(proc, after_n_acks)` SIGKILLs the server mid-load."""
    stop, ready = threading.Event(), threading.Barrier(len(plan) + 1)
    threads = [threading.Thread(target=annotator, args=(base, u, s, res, stop, ready)) for u, s in plan.items()]
    for th in threads:
        th.start()
    ready.wait()
    t0 = time.perf_counter()
    if kill:
        proc, after = kill
        while len(res.acked) < after and any(th.is_alive() for th in threads):
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
    for th in threads:
        th.join()
    return time.perf_counter() - t0


def verify(db_path: Path, plan: dict, acked: set) -> dict:
    """Every acknowledged key stored exactly once; no key stored twice."""
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = dict(conn.execute("SELECT idem_key, COUNT(*) FROM annotations GROUP BY idem_key").fetchall())
    conn.close()
    planned = {p["key"] for subs in plan.values() for _, p in subs}
    return {"stored": sum(stored.values()), "lost_acked": sorted(acked - set(stored)),
            "twice": sorted(k for k, n in stored.items() if n != 1), "unplanned": sorted(set(stored) - planned)}


def measure(workdir: Path, annotators: int, submissions: int, sync: str, kill_after: int | None) -> dict:
    path = workdir / f"load-{sync}.sqlite"
    plan = prepare(path, annotators, submissions)
    port = free_port()
    proc = start_server(path, port, "--synchronous", sync, log=workdir / "server.log")
    base, res = f"http://127.0.0.1:{port}", Result()
    try:
        wall = run(base, plan, res, kill=(proc, kill_after) if kill_after else None)
        out = {"sync": sync, "acked": len(res.acked), "wall_s": wall, "latencies": list(res.latencies)}
        if kill_after:
            after_kill = verify(path, plan, res.acked)
            out["after_kill"] = {"acked_before_kill": len(res.acked), "stored": after_kill["stored"],
                                 "lost_acked": len(after_kill["lost_acked"]), "twice": len(after_kill["twice"])}
            proc = start_server(path, port, "--synchronous", sync, log=workdir / "server.log")
            res.errors.clear()
            run(base, plan, res)  # the same keys again: the stored-but-unacknowledged become duplicates
        out.update(verify(path, plan, res.acked), errors=res.errors, duplicates=res.duplicates,
                   planned=sum(len(s) for s in plan.values()), acked_total=len(res.acked))
        return out
    finally:
        proc.kill()
        proc.wait()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotators", type=int, default=20)
    p.add_argument("--submissions", type=int, default=1000)
    p.add_argument("--kill-after", type=int, default=None, help="SIGKILL the server after this many acknowledgements")
    p.add_argument("--no-reference", action="store_true", help="skip the synchronous=OFF reference run")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(Path(tmp), args.annotators, args.submissions, "FULL", args.kill_after)]
        if not args.no_reference:
            runs.append(measure(Path(tmp), args.annotators, args.submissions, "OFF", None))
    ok = True
    for r in runs:
        lat = r["latencies"]
        rate = len(lat) / r["wall_s"]
        r["rate"] = rate
        print(f"synchronous={r['sync']:<4} {args.annotators} annotators: "
              f"{len(lat)} submissions in {r['wall_s']:.2f} s = {rate:.0f} submissions/s, "
              f"latency p50 {pct(lat, .5) * 1000:.1f} ms, p95 {pct(lat, .95) * 1000:.1f} ms")
        if "after_kill" in r:
            k = r["after_kill"]
            print(f"  SIGKILL after {k['acked_before_kill']} acknowledgements: {k['stored']} rows on disk, "
                  f"{k['lost_acked']} acknowledged lost, {k['twice']} stored twice; after restart and retry "
                  f"{r['duplicates']} retries were answered as duplicates")
        good = (r["stored"] == r["planned"] == r["acked_total"] and not r["lost_acked"] and not r["twice"]
                and not r["unplanned"] and r.get("after_kill", {}).get("lost_acked", 0) == 0)
        print(f"  exactly once: {'yes' if good else 'NO'} ({r['stored']} stored / {r['planned']} planned)")
        ok &= good
    if len(runs) == 2:
        print(f"durable (FULL) / no-fsync (OFF) throughput ratio: {runs[0]['rate'] / runs[1]['rate']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
