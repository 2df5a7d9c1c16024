"""Admin pages: users, batch import with assignment, progress, exports."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from urllib.parse import quote

from zhongjing.annotate import auth, db, export, store
from zhongjing.annotate.web import check_csrf, get_conn, redirect, render, role
from zhongjing.errors import DataError, ZhongjingError
from zhongjing.io import iter_jsonl
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile  # noqa: E402
from fastapi.responses import Response  # noqa: E402

router = APIRouter()
admin = role("admin")
MAX_UPLOAD = 512 * 1024 * 1024


@router.get("/admin")
def admin_page(request: Request, msg: str = "", err: str = "", sess=Depends(admin), conn=Depends(get_conn)):
    return render(request, "admin.html", users=db.list_users(conn), report=export.progress(conn), msg=msg, err=err,
                  annotators=[u for u in db.list_users(conn) if u["role"] == "annotator" and u["active"]])


def _back(msg: str = "", err: str = ""):
    return redirect("/admin?" + ("msg=" + quote(msg) if msg else "err=" + quote(err)))


@router.post("/admin/users")
def create_user(request: Request, username: str = Form(""), role_: str = Form("", alias="role"),
                password: str = Form(""), csrf_token: str = Form(""), sess=Depends(admin), conn=Depends(get_conn)):
    check_csrf(request, sess, csrf_token)
    try:
        db.create_user(conn, username.strip(), auth.hash_password(password), role_)
    except ZhongjingError as e:
        return _back(err=str(e))
    return _back(msg=f"created {role_} {username.strip()}")


@router.post("/admin/users/{username}/active")
def set_active(request: Request, username: str, active: int = Form(...), csrf_token: str = Form(""),
               sess=Depends(admin), conn=Depends(get_conn)):
    check_csrf(request, sess, csrf_token)
    if username == sess.username and not active:
        return _back(err="you cannot disable your own account")
    db.update_user(conn, username, active=1 if active else 0)
    return _back(msg=f"{username} {'enabled' if active else 'disabled'}")


@router.post("/admin/batches")
def import_batch(request: Request, name: str = Form(""), file: UploadFile = File(...), k: int = Form(4),
                 per_item: int = Form(2), min_tau: float = Form(0.5), require_top1: str = Form(""),
                 assign: str = Form("balanced"), annotators: list[str] = Form(default=[]), csrf_token: str = Form(""),
                 sess=Depends(admin), conn=Depends(get_conn)):
    check_csrf(request, sess, csrf_token)
    source = os.path.basename(file.filename or "upload.jsonl")
    fd, tmp = tempfile.mkstemp(suffix=".jsonl")
    try:
        size = 0
        with os.fdopen(fd, "wb") as f:
            while chunk := file.file.read(1 << 20):
                size += len(chunk)
                if size > MAX_UPLOAD:
                    return _back(err=f"{source}: larger than {MAX_UPLOAD >> 20} MiB")
                f.write(chunk)
        settings = store.BatchSettings(k=k, per_item=per_item, min_tau=min_tau, require_top1=bool(require_top1),
                                       assign=assign)  # type: ignore[arg-type]
        try:
            rankings = store.parse_records(iter_jsonl(tmp), source, settings.k)
        except DataError as e:  # name the uploaded file, not our temp copy
            raise DataError(e.reason, source, e.where) from None
        summary = store.import_batch(conn, name.strip(), rankings, settings, annotators or None, source=source)
    except ZhongjingError as e:
        return _back(err=str(e))
    finally:
        os.unlink(tmp)
    return _back(msg=f"imported {summary['items']} items into batch {summary['batch']}")


@router.get("/admin/batches/{name}/export.jsonl")
def export_batch(name: str, view: str = "rankings", sess=Depends(admin), conn=Depends(get_conn)):
    if view not in ("rankings", "pairs"):
        raise ZhongjingError("view must be 'rankings' or 'pairs'")
    rows = list(export.rankings(conn, name))
    if view == "pairs":
        rows = list(export.pairs(iter(rows)))
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return Response(body, media_type="application/x-ndjson; charset=utf-8",
                    headers={"content-disposition": f"attachment; filename*=UTF-8''{quote(name)}.{view}.jsonl"})


@router.get("/admin/progress.{fmt}")
def progress(fmt: str, batch: str | None = None, sess=Depends(admin), conn: sqlite3.Connection = Depends(get_conn)):
    report = export.progress(conn, batch or None)
    if fmt == "json":
        return Response(json.dumps(report, ensure_ascii=False, indent=2), media_type="application/json")
    if fmt == "csv":
        return Response(export.progress_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": "attachment; filename=progress.csv"})
    raise ZhongjingError("progress is available as .json or .csv")
