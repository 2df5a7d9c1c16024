"""Rankings to and from Label Studio and Argilla, for teams that already annotate there.

Label Studio (tasks JSON, the "Import"/"Export → JSON" format): one task per Ranking with
`data = {id, history, prompt, items: [{id: "r0", title: "回答 A", body: text}, …]}` for a `List` + `Ranker`
labeling config whose `Bucket`s are the tiers (LABEL_STUDIO_CONFIG below; tied answers share a bucket).
An annotation's result is `{"type": "ranker", "from_name": "rank", "to_name": "answers",
"value": {"ranker": {"rank-1": ["r2"], "rank-2": ["r0", "r3"], …}}}`; a model pre-ranking goes in `predictions`.

Argilla (FeedbackDataset records, JSON lines): `fields = {prompt, history, response-1 …}`, a RankingQuestion
named `ranking` whose value is `[{"value": "response-2", "rank": 1}, …]` (equal ranks = a tie), in
`responses[].values.ranking.value` (annotators) and `suggestions` (a model). Argilla 2's plain list of values
(`responses: {"ranking": [{"value": ["response-2", …], "user_id": …}]}`) is read too.

Imported tasks become Ranking dicts: the first submitted annotation is the ranking, every annotator's own is kept
in `meta.annotation.judgements` (as our exporter writes them), so agreement can be measured (Kendall τ,
Krippendorff α) with the same functions.
"""

from __future__ import annotations

from typing import Any, Iterable

from zhongjing.data.schema import Ranking
from zhongjing.errors import DataError

LABELS = "ABCDEFGHIJKLMNOP"


def label_studio_config(k: int) -> str:
    buckets = "\n".join(f'    <Bucket name="rank-{t + 1}" title="第 {t + 1} 名"/>' for t in range(k))
    return ('<View>\n  <Text name="history" value="$history"/>\n  <Text name="prompt" value="$prompt"/>\n'
            '  <List name="answers" value="$items" title="回答"/>\n  <Ranker name="rank" toName="answers">\n'
            f"{buckets}\n  </Ranker>\n</View>\n")


def _history(r: dict) -> str:
    who = {"user": "患者", "assistant": "医生", "system": "系统"}
    return "\n".join(f"{who[m['role']]}：{m['content']}" for m in r["messages"][:-1])


def _ls_value(groups: list[list[int]]) -> dict:
    return {"ranker": {f"rank-{t + 1}": [f"r{i}" for i in g] for t, g in enumerate(groups)}}


def to_label_studio(rankings: Iterable[dict]) -> list[dict]:
    """Label Studio tasks; a ranked Ranking carries its order as an annotation, a suggestion as a prediction."""
    tasks = []
    for r in rankings:
        r = Ranking.from_dict(r).to_dict()
        task: dict[str, Any] = {"data": {"id": r["id"], "history": _history(r), "prompt": r["messages"][-1]["content"],
                                         "items": [{"id": f"r{i}", "title": f"回答 {LABELS[i]}", "body": t}
                                                   for i, t in enumerate(r["responses"])]}}
        result = lambda groups: [{"type": "ranker", "from_name": "rank", "to_name": "answers",  # noqa: E731
                                  "value": _ls_value(groups)}]
        if r.get("ranking"):
            task["annotations"] = [{"completed_by": (r.get("annotators") or [""])[0], "result": result(r["ranking"])}]
        sug = (r.get("meta") or {}).get("suggestion")
        if sug:
            task["predictions"] = [{"model_version": sug.get("source", "model"), "result": result(sug["ranking"])}]
        tasks.append(task)
    return tasks


def _ls_groups(value: Any, k: int, where: str) -> list[list[int]]:
    ranker = value.get("ranker") if isinstance(value, dict) else None
    if not isinstance(ranker, dict):
        raise DataError(f"{where}: not a ranker result (value.ranker missing)")
    if "rank" in ranker and not any(str(b).startswith("rank-") for b in ranker):  # List + Ranker without buckets
        return [[_item(x, k, where)] for x in ranker["rank"]]
    groups = []
    for name in sorted((b for b in ranker if str(b).startswith("rank-")), key=lambda b: int(str(b)[5:])):
        g = [_item(x, k, where) for x in ranker[name]]
        if g:
            groups.append(sorted(g))
    return groups


def _item(x: Any, k: int, where: str) -> int:
    if not (isinstance(x, str) and x[:1] == "r" and x[1:].isdigit() and int(x[1:]) < k):
        raise DataError(f"{where}: unknown answer id {x!r} (expected r0…r{k - 1})")
    return int(x[1:])


def _ranking(rid: str, messages: list[dict], responses: list[str], judgements: list[dict], fmt: str) -> dict:
    if not judgements:
        raise DataError("no submitted ranking")
    k = len(responses)
    for j in judgements:
        seen = sorted(i for g in j["ranking"] for i in g)
        if seen != list(range(k)):
            missing = sorted(set(range(k)) - set(seen))
            raise DataError(f"annotation by {j['annotator'] or '?'} does not rank every answer once "
                            f"(missing or repeated: {missing or 'repeats'})")
    out = {"id": rid, "messages": messages, "responses": responses, "ranking": judgements[0]["ranking"],
           "annotators": [j["annotator"] for j in judgements if j["annotator"]],
           "meta": {"source": fmt, "annotation": {"judgements": judgements}}}
    return Ranking.from_dict(out).to_dict()


def _messages(history: str, prompt: str) -> list[dict]:
    msgs = []
    for line in (history or "").split("\n"):
        for prefix, role in (("患者：", "user"), ("医生：", "assistant"), ("系统：", "system")):
            if line.startswith(prefix):
                msgs.append({"role": role, "content": line[len(prefix):]})
                break
        else:
            if line.strip() and msgs:
                msgs[-1]["content"] += "\n" + line
    return msgs + [{"role": "user", "content": prompt}]


def from_label_studio(tasks: list[Any], name: str = "label-studio") -> list[dict]:
    """Rankings from a Label Studio JSON export (tasks made by `to_label_studio`)."""
    if not isinstance(tasks, list):
        raise DataError("a Label Studio export is a JSON list of tasks", name)
    out = []
    for n, t in enumerate(tasks, 1):
        where = f"task {n}"
        try:
            data = t.get("data") if isinstance(t, dict) else None
            if not isinstance(data, dict) or not isinstance(data.get("items"), list) or "prompt" not in data:
                raise DataError("task has no data.items / data.prompt (was it made by `annotate interop`?)")
            items = sorted(data["items"], key=lambda x: int(str(x.get("id", "r-1"))[1:] or -1))
            responses = [x.get("body") for x in items]
            judgements = []
            for a in t.get("annotations") or []:
                if a.get("was_cancelled"):
                    continue
                res = [x for x in a.get("result") or [] if x.get("type") == "ranker"]
                if res:
                    judgements.append({"annotator": str(a.get("completed_by") or ""),
                                       "ranking": _ls_groups(res[0].get("value"), len(responses), where),
                                       "all_wrong": False})
            out.append(_ranking(str(data.get("id") or f"ls:{t.get('id', n)}"), _messages(data.get("history", ""),
                                data["prompt"]), responses, judgements, "label_studio"))
        except DataError as e:
            raise DataError(e.reason, name, where) from None
    return out


# ------------------------------------------------------------------------------------------ Argilla

def _ar_value(groups: list[list[int]]) -> list[dict]:
    return [{"value": f"response-{i + 1}", "rank": t + 1} for t, g in enumerate(groups) for i in g]


def to_argilla(rankings: Iterable[dict]) -> list[dict]:
    """Argilla FeedbackDataset records (fields, responses, suggestions) for a `ranking` RankingQuestion."""
    out = []
    for r in rankings:
        r = Ranking.from_dict(r).to_dict()
        rec: dict[str, Any] = {"external_id": r["id"],
                               "fields": {"history": _history(r), "prompt": r["messages"][-1]["content"],
                                          **{f"response-{i + 1}": t for i, t in enumerate(r["responses"])}},
                               "responses": [], "suggestions": []}
        if r.get("ranking"):
            rec["responses"].append({"user_id": (r.get("annotators") or [None])[0], "status": "submitted",
                                     "values": {"ranking": {"value": _ar_value(r["ranking"])}}})
        sug = (r.get("meta") or {}).get("suggestion")
        if sug:
            rec["suggestions"].append({"question_name": "ranking", "value": _ar_value(sug["ranking"]),
                                       "agent": sug.get("source", "model")})
        out.append(rec)
    return out


def _ar_groups(value: Any, k: int) -> list[list[int]]:
    def idx(v: Any) -> int:
        s = str(v)
        if not (s.startswith("response-") and s[9:].isdigit() and 1 <= int(s[9:]) <= k):
            raise DataError(f"unknown option {v!r} (expected response-1…response-{k})")
        return int(s[9:]) - 1

    if isinstance(value, list) and all(isinstance(x, str) for x in value):  # Argilla 2: values in rank order
        return [[idx(x)] for x in value]
    if not isinstance(value, list) or not all(isinstance(x, dict) and "value" in x and "rank" in x for x in value):
        raise DataError("ranking value must be [{value, rank}, …] or a list of option values")
    ranks = sorted({int(x["rank"]) for x in value})
    return [sorted(idx(x["value"]) for x in value if int(x["rank"]) == rk) for rk in ranks]


def from_argilla(records: Iterable[Any], name: str = "argilla") -> list[dict]:
    out = []
    for n, rec in enumerate(records, 1):
        where = f"record {n}"
        try:
            fields = rec.get("fields") if isinstance(rec, dict) else None
            if not isinstance(fields, dict) or "prompt" not in fields:
                raise DataError("record has no fields.prompt")
            k = sum(1 for f in fields if str(f).startswith("response-"))
            responses = [fields[f"response-{i + 1}"] for i in range(k)]
            judgements = []
            resp = rec.get("responses") or []
            if isinstance(resp, dict):  # Argilla 2: {question: [{value, user_id}]}
                resp = [{"user_id": x.get("user_id"), "status": "submitted", "values": {"ranking": {"value": x["value"]}}}
                        for x in resp.get("ranking", [])]
            for x in resp:
                if x.get("status", "submitted") != "submitted":
                    continue
                value = ((x.get("values") or {}).get("ranking") or {}).get("value")
                judgements.append({"annotator": str(x.get("user_id") or ""), "ranking": _ar_groups(value, k),
                                   "all_wrong": False})
            rid = str(rec.get("external_id") or rec.get("id") or f"argilla:{n}")
            out.append(_ranking(rid, _messages(fields.get("history", ""), fields["prompt"]), responses, judgements,
                                "argilla"))
        except DataError as e:
            raise DataError(e.reason, name, where) from None
    return out


def read_rankings_jsonl(path: str) -> list[dict]:
    """Ranking JSONL (as `annotate export` / `generate` write it); a bad record names file and line."""
    from zhongjing.io import iter_jsonl

    out = []
    for n, obj in iter_jsonl(path):
        try:
            out.append(Ranking.from_dict(obj).to_dict())
        except DataError as e:
            raise DataError(e.reason, path, f"line {n}") from None
    return out


def read_json_file(path: str) -> Any:
    import json

    from zhongjing.io import surrogate_fault

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", path, f"line {e.lineno}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    fault = surrogate_fault(value, text)
    if fault:
        raise DataError(fault, path)
    return value
