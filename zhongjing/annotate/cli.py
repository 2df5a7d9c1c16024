"""`zhongjing annotate serve | import | export | users | progress | reassign | suggest | interop | simulate`.

    zhongjing annotate users add admin --role admin          # prompts for the password
    zhongjing annotate import --batch round1 generated.jsonl  # Ranking JSONL from `zhongjing generate`
    zhongjing annotate serve --port 8080
    zhongjing annotate export --out rankings.jsonl --pairs pairs.jsonl
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from zhongjing.annotate import auth, db, export, store
from zhongjing.config import port_number, positive_number
from zhongjing.errors import ZhongjingError
from zhongjing.io import atomic_open, iter_jsonl, write_jsonl

PASSWORD_ENV = "ZHONGJING_ANNOTATE_PASSWORD"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zhongjing annotate", description="web tool where doctors rank K answers per turn")
    sub = p.add_subparsers(dest="cmd", required=True)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("--db", default="annotations.sqlite", help="SQLite database (default: %(default)s)")
        return c

    s = cmd("serve", "run the web server")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    s.add_argument("--port", type=port_number, default=8080)
    s.add_argument("--session-hours", type=positive_number, default=12.0)
    s.add_argument("--secure-cookie", action="store_true", help="mark cookies Secure (serve over HTTPS)")
    s.add_argument("--synchronous", default="FULL", choices=db.SYNC_MODES,
                   help="SQLite fsync policy; FULL keeps every acknowledged submission through power loss")
    s.add_argument("--no-access-log", action="store_true")
    s.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDR",
                   help="reverse proxy (address or network) whose X-Forwarded-For names the client; repeatable. "
                        "Without it the TCP peer is the client and X-Forwarded-For is ignored")

    i = cmd("import", "import a Ranking JSONL as a batch and assign each item to annotators")
    i.add_argument("file")
    i.add_argument("--batch", required=True, help="batch name")
    i.add_argument("--k", type=int, default=4, help="answers per item (default: %(default)s)")
    i.add_argument("--per-item", type=int, default=2, choices=(1, 2), help="annotators per item")
    i.add_argument("--min-tau", type=float, default=0.5, help="Kendall tau below this goes to an expert")
    i.add_argument("--allow-top1-mismatch", action="store_true",
                   help="do not send items with different best answers to an expert when tau is high enough")
    i.add_argument("--assign", choices=("balanced", "round-robin"), default="balanced")
    i.add_argument("--annotators", help="comma-separated usernames (default: every active annotator)")

    e = cmd("export", "write resolved rankings (Ranking JSONL for train rm) and optional chosen/rejected pairs")
    e.add_argument("--out", required=True, help="Ranking JSONL")
    e.add_argument("--pairs", help="also write MedicalGPT-style conversations/chosen/rejected JSONL here")
    e.add_argument("--batch", help="only this batch")

    pr = cmd("progress", "counts and agreement per batch and per annotator")
    pr.add_argument("--batch")
    pr.add_argument("--format", choices=("table", "json", "csv"), default="table")
    pr.add_argument("--out", help="write to this file instead of stdout")

    r = cmd("reassign", "move an annotator's unfinished items to another annotator")
    r.add_argument("from_user")
    r.add_argument("to_user")
    r.add_argument("--batch", help="only this batch")

    sub.add_parser("suggest", help="add a reward model's pre-ranking as a suggestion (see --help)", add_help=False)
    io = sub.add_parser("interop", help="convert Rankings to/from Label Studio tasks or Argilla records")
    io.add_argument("direction", choices=("to-label-studio", "from-label-studio", "to-argilla", "from-argilla"))
    io.add_argument("input")
    io.add_argument("output")

    sub.add_parser("simulate", help="demo only: rank answers with rubric heuristics (see zhongjing annotate simulate --help)",
                   add_help=False)

    u = cmd("users", "manage accounts (admin task)")
    u.add_argument("action", choices=("add", "list", "passwd", "disable", "enable", "role"))
    u.add_argument("username", nargs="?")
    u.add_argument("--role", choices=db.ROLES)
    u.add_argument("--password-file", help=f"read the password from this file (else ${PASSWORD_ENV}, else a prompt)")
    return p


def _password(args) -> str:
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as e:
            raise ZhongjingError(f"{args.password_file}: cannot read password file ({e.strerror})") from None
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise ZhongjingError(f"no password given: use --password-file or ${PASSWORD_ENV}")
    first = getpass.getpass(f"password for {args.username}: ")
    if getpass.getpass("repeat: ") != first:
        raise ZhongjingError("the two passwords differ")
    return first


def _users(args) -> None:
    conn = db.connect(args.db)
    if args.action == "list":
        for u in db.list_users(conn):
            print(f"{u['username']:<24} {u['role']:<10} {'active' if u['active'] else 'disabled'}")
        return
    if not args.username:
        raise ZhongjingError(f"'users {args.action}' needs a username")
    if args.action == "add":
        if not args.role:
            raise ZhongjingError("'users add' needs --role (admin, annotator or expert)")
        db.create_user(conn, args.username, auth.hash_password(_password(args)), args.role)
        print(f"created {args.role} {args.username}")
    elif args.action == "passwd":
        db.update_user(conn, args.username, password_hash=auth.hash_password(_password(args)))
        print(f"password of {args.username} changed; their sessions were ended")
    elif args.action in ("disable", "enable"):
        db.update_user(conn, args.username, active=int(args.action == "enable"))
        print(f"{args.username} {args.action}d")
    elif args.action == "role":
        if not args.role:
            raise ZhongjingError("'users role' needs --role")
        db.update_user(conn, args.username, role=args.role)
        print(f"{args.username} is now {args.role}")


def _import(args) -> None:
    if not os.path.exists(args.file):
        raise ZhongjingError(f"{args.file}: file not found")
    settings = store.BatchSettings(k=args.k, per_item=args.per_item, min_tau=args.min_tau,
                                   require_top1=not args.allow_top1_mismatch, assign=args.assign)
    names = [n.strip() for n in args.annotators.split(",") if n.strip()] if args.annotators is not None else None
    if names is not None and not names:  # an empty variable would have assigned the batch to every annotator
        raise ZhongjingError(f"--annotators: no username in {args.annotators!r}")
    rankings = store.parse_records(iter_jsonl(args.file), args.file, settings.k)
    summary = store.import_batch(db.connect(args.db), args.batch, rankings, settings, names, source=args.file)
    per = ", ".join(f"{n}: {c}" for n, c in summary["assignments"].items())
    print(f"imported {summary['items']} items into batch {summary['batch']} ({per})")


def _reassign(args) -> None:
    result = store.reassign(db.connect(args.db, create=False), args.from_user, args.to_user, args.batch)
    note = f" ({result['skipped']} skipped: {args.to_user} already has them)" if result["skipped"] else ""
    print(f"moved {result['moved']} unfinished items from {args.from_user} to {args.to_user}{note}")


def _export(args) -> None:
    conn = db.connect(args.db, create=False)
    rows = list(export.rankings(conn, args.batch))
    n = write_jsonl(args.out, rows)
    msg = f"wrote {n} rankings to {args.out}"
    if args.pairs:
        msg += f" and {write_jsonl(args.pairs, export.pairs(iter(rows)))} pairs to {args.pairs}"
    report = export.progress(conn, args.batch)
    unresolved = sum(b["open"] + b["disputed"] for b in report["batches"])
    print(msg + (f"; {unresolved} items not yet resolved were left out" if unresolved else ""))


def _progress(args) -> None:
    report = export.progress(db.connect(args.db, create=False), args.batch)
    if args.format == "json":
        text = json.dumps(report, ensure_ascii=False, indent=2) + "\n"
    elif args.format == "csv":
        text = export.progress_csv(report)
    else:
        text = _table(report)
    if args.out:
        with atomic_open(args.out) as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def _table(report: dict) -> str:
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    lines = [f"{'batch':<20} {'items':>6} {'done':>6} {'pending':>8} {'agreed':>7} {'disputed':>9} "
             f"{'adjud.':>7} {'tau':>7} {'alpha':>7} {'top1':>6}"]
    for b in report["batches"]:
        lines.append(f"{b['batch']:<20} {b['items']:>6} {b['done']:>6} {b['pending']:>8} {b['agreed']:>7} "
                     f"{b['disputed']:>9} {b['adjudicated']:>7} {fmt(b['mean_tau']):>7} {fmt(b.get('alpha')):>7} "
                     f"{fmt(b['top1_rate']):>6}")
    lines += ["", f"{'annotator':<20} {'items':>6} {'done':>6} {'pending':>8} {'tau':>7} {'top1':>6} "
                  f"{'vs expert':>9} {'sec/item':>8}"]
    for a in report["annotators"]:
        lines.append(f"{a['annotator']:<20} {a['items']:>6} {a['done']:>6} {a['pending']:>8} {fmt(a['mean_tau']):>7} "
                     f"{fmt(a['top1_rate']):>6} {fmt(a['tau_vs_expert']):>9} {fmt(a['mean_seconds']):>8}")
    return "\n".join(lines) + "\n"


def _interop(args) -> None:
    from zhongjing.annotate import interop
    from zhongjing.io import write_json

    if not os.path.exists(args.input):
        raise ZhongjingError(f"{args.input}: file not found")
    if args.direction == "to-label-studio":
        tasks = interop.to_label_studio(interop.read_rankings_jsonl(args.input))
        write_json(args.output, tasks)
        k = max((len(t["data"]["items"]) for t in tasks), default=4)
        with atomic_open(args.output + ".config.xml") as f:
            f.write(interop.label_studio_config(k))
        print(f"wrote {len(tasks)} Label Studio tasks to {args.output} (labeling config: {args.output}.config.xml)")
    elif args.direction == "to-argilla":
        print(f"wrote {write_jsonl(args.output, interop.to_argilla(interop.read_rankings_jsonl(args.input)))} Argilla records "
              f"to {args.output}")
    else:
        rows = (interop.from_label_studio(interop.read_json_file(args.input), args.input)
                if args.direction == "from-label-studio"
                else interop.from_argilla((o for _, o in iter_jsonl(args.input)), args.input))
        print(f"wrote {write_jsonl(args.output, rows)} rankings to {args.output}")


def _serve(args) -> None:
    from zhongjing.errors import require

    uvicorn = require("uvicorn", "web")
    from zhongjing.annotate.app import create_app
    from zhongjing.annotate.web import ServeSettings

    app = create_app(ServeSettings(db=args.db, synchronous=args.synchronous, session_hours=args.session_hours,
                                   secure_cookie=args.secure_cookie,
                                   trusted_proxies=auth.parse_proxies(args.trusted_proxy)))
    if not db.list_users(db.connect(args.db)):
        from zhongjing.hints import command

        print(f"note: no users yet; create an admin with: {command()} annotate users add NAME --role admin --db {args.db}",
              file=sys.stderr)
    # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from any loopback peer; the app decides
    uvicorn.run(app, host=args.host, port=args.port, access_log=not args.no_access_log, log_level="info",
                proxy_headers=False)


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "suggest":  # its own parser
        from zhongjing.annotate.suggest import main as suggest_main

        return suggest_main(argv[1:])
    if argv and argv[0] == "simulate":  # the demo's stand-in for doctors; its own parser
        from zhongjing.data.simulate import main as simulate_main

        return simulate_main(argv[1:])
    args = _parser().parse_args(argv)
    commands = {"serve": _serve, "import": _import, "export": _export, "progress": _progress, "users": _users,
                "reassign": _reassign, "interop": _interop}
    commands[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
