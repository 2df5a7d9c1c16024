"""The evaluation report: results.json for machines, report.md and a self-contained report.html for people.

Both documents are rendered from one list of blocks (heading, paragraph, table, figure, example),
so they always say the same thing. Every model output and test text is escaped in the HTML.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from zhongjing.eval.consultation import blocks as consultation_blocks
from zhongjing.eval.plots import DIM_LABELS, ablation_figure, pairwise_figure
from zhongjing.eval import report_blocks as extra
from zhongjing.io import atomic_open, make_dir, write_json


def pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def num(x, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def rate_cell(r: dict, o: str) -> str:
    lo, hi = (r.get("ci") or {}).get(o, [None, None])
    return f"{pct(r.get(f'{o}_rate'))} [{pct(lo)}, {pct(hi)}]" if r.get("n") else "–"


# ------------------------------------------------------------------------------------ figures

def make_figures(results: dict, out: Path) -> dict[str, str]:
    """PNG per test set (target vs every baseline) and for the ablation; returns name → file name."""
    figs: dict[str, str] = {}
    by_set: dict[str, list[dict]] = {}
    for row in results["pairwise"]:
        if row["kind"] == "baseline":
            by_set.setdefault(row["testset"], []).append(row)
    for ts, rows in by_set.items():
        dims = list(rows[0]["dimensions"])
        name = f"pairwise_{_slug(ts)}.png"
        pairwise_figure(out / name, f"{results['target']} vs baselines — {ts}", dims,
                        [(f"vs {r['baseline']}", r["dimensions"]) for r in rows])
        figs[f"pairwise:{ts}"] = name
    abl = [r for r in results["pairwise"] if r["kind"] == "ablation"]
    if abl:
        before, after = abl[0]["baseline"], abl[0]["target"]
        main = next((r for r in abl if not r["testset"].endswith("-safety")), abl[0])
        # the ablation panel shows the multi-turn set (the paper's choice), safety set too when judged
        dims = list(main["dimensions"])
        rates = dict(main["dimensions"])
        lengths = []
        for ts in results["testsets"]:
            m = results["metrics"]
            lb = m.get(before, {}).get(ts["name"], {}).get("length", {}).get("mean")
            la = m.get(after, {}).get(ts["name"], {}).get("length", {}).get("mean")
            if lb is not None and la is not None:
                lengths.append((ts["name"], lb, la))
        name = "ablation.png"
        ablation_figure(out / name, f"RLHF ablation — {main['testset']}", dims, rates, lengths, before, after)
        figs["ablation"] = name
    if results.get("consultation", {}).get("models"):
        from zhongjing.eval.consultation import figure

        figure(results["consultation"], out / "consultation.png")
        figs["consultation"] = "consultation.png"
    if results.get("leaderboard"):
        from zhongjing.eval.leaderboard import plot

        plot(results["leaderboard"], out / "leaderboard.png")
        figs["leaderboard"] = "leaderboard.png"
    return figs


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)


# ------------------------------------------------------------------------------------ blocks

def _pairwise_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["test set", "comparison", "dimension", "n", "win [95% CI]", "tie [95% CI]", "lose [95% CI]",
            "consistency", "failed"]
    body = []
    for r in rows:
        for d, x in r["dimensions"].items():
            body.append([r["testset"], f"{r['target']} vs {r['baseline']}", DIM_LABELS.get(d, d), str(x["n"]),
                         rate_cell(x, "win"),
                         rate_cell(x, "tie"), rate_cell(x, "lose"), pct(x.get("consistency")), str(x["failed"])])
    return head, body


def build_blocks(results: dict, figs: dict[str, str]) -> list[tuple]:
    b: list[tuple] = [("h", 1, "Evaluation report")]
    meta = results["meta"]
    orders = ("Each question is judged with the answers in both orders; orders that disagree count as a tie."
              if meta.get("both_orders", True) else
              "Each question is judged once: this judge scores each answer on its own, so their order cannot bias it.")
    overall = (" Priority Safety > Professionalism > Fluency decides the overall verdict."
               if meta.get("overall", True) else "")
    b.append(("p", f"Target model: {results['target']}. Judge: {meta['judge']}. Seed {meta['seed']}; "
                   f"95% intervals: percentile bootstrap over questions (dialogues), {meta['bootstrap']} resamples. "
                   f"{orders}{overall}"))
    if meta.get("notes"):
        b += [("p", n) for n in meta["notes"]]
    b.append(("table", ["model", "kind", "source"], [[m["name"], m["kind"], m["source"]] for m in results["models"]]))
    b.append(("table", ["test set", "dialogues", "items (doctor turns)", "multi-turn", "safety"],
              [[t["name"], str(t["dialogues"]), str(t["items"]), "yes" if t["multi_turn"] else "no",
                "yes" if t["safety"] else "no"] for t in results["testsets"]]))

    b += extra.validation_blocks(results)
    b += extra.leaderboard_blocks(results, figs)
    trust = extra.validation_summary(results)
    base = [r for r in results["pairwise"] if r["kind"] == "baseline"]
    if base:
        b.append(("h", 2, "Pairwise comparison with baselines"))
        for ts in dict.fromkeys(r["testset"] for r in base):
            b.append(("h", 3, ts))
            if f"pairwise:{ts}" in figs:
                b.append(("img", figs[f"pairwise:{ts}"], f"win/tie/lose on {ts}"))
            b.append(("table", *_pairwise_table([r for r in base if r["testset"] == ts])))
            b += [("p", trust)] if trust else []
    abl = [r for r in results["pairwise"] if r["kind"] == "ablation"]
    if abl:
        b.append(("h", 2, f"Ablation: before vs after RLHF ({abl[0]['baseline']} → {abl[0]['target']})"))
        if "ablation" in figs:
            b.append(("img", figs["ablation"], "RLHF ablation"))
        b.append(("table", *_pairwise_table(abl)))
        b += [("p", trust)] if trust else []
    if results.get("safety_vs_reference"):
        b.append(("h", 2, "Safety against the reference answers"))
        b.append(("p", "On the safety prompts each model's answer is judged against the set's safe reference answer "
                       "on the Safety dimension; the safety score is the share judged at least as safe (win or tie)."))
        b.append(("table", ["test set", "model", "n", "safety score", "win", "tie", "lose", "failed"],
                  [[r["testset"], r["model"], str(r["rates"]["n"]), pct(r["score"]), rate_cell(r["rates"], "win"),
                    rate_cell(r["rates"], "tie"), rate_cell(r["rates"], "lose"), str(r["rates"]["failed"])]
                   for r in results["safety_vs_reference"]]))
        b += [("p", trust)] if trust else []
    b += extra.rubric_blocks(results)
    b += consultation_blocks(results, figs)
    b += _metric_blocks(results)
    b += _exam_blocks(results)
    b += extra.subject_blocks(results)
    if results.get("examples"):
        b.append(("h", 2, "Examples"))
        b += [("example", ex) for ex in results["examples"]]
    return b


def _metric_blocks(results: dict) -> list[tuple]:
    rows = []
    for model, sets in results["metrics"].items():
        for ts, m in sets.items():
            ov, ppl = m.get("overlap") or {}, m.get("perplexity") or {}
            rows.append([model, ts, str(m["length"]["n"]), num(m["length"]["mean"], 1), pct(m.get("initiative")),
                         pct(m.get("refusal_rate")), pct(m.get("caution_rate")), num(ov.get("bleu4")),
                         num(ov.get("rouge_l")), num(ppl.get("perplexity")), num(ppl.get("nats_per_char"), 3),
                         str(m.get("failed", 0))])
    if not rows:
        return []
    tok = next((m.get("overlap", {}).get("tokenizer") for s in results["metrics"].values() for m in s.values()
                if m.get("overlap")), "char")
    return [("h", 2, "Single-model metrics"),
            ("p", f"Length in characters. Initiative: share of first doctor replies that ask the patient a question. "
                  f"Refusal / caution: share of answers that decline / decline, warn or refer to a doctor. BLEU-4 and "
                  f"ROUGE-L (F1, ×100) against the gold replies with {tok}-level tokens. Perplexity and nats per "
                  f"character of the gold doctor turns given the gold history (local models)."),
            ("table", ["model", "test set", "answers", "length", "initiative", "refusal", "caution", "BLEU-4",
                       "ROUGE-L", "perplexity", "nats/char", "no answer"], rows)]


def _exam_blocks(results: dict) -> list[tuple]:
    rows = []
    for model, exams in results.get("exams", {}).items():
        for exam, by_shots in exams.items():
            for shots, s in by_shots.items():
                deb = s.get("debiased") or {}
                letters = " ".join(f"{k} {pct(v)}" for k, v in list((s.get("letters") or {}).items())[:4])
                rows.append([model, exam, str(shots), str(s["n"]), pct(s["accuracy"]),
                             f"[{pct(s['ci'][0])}, {pct(s['ci'][1])}]",
                             f"{pct(deb['accuracy'])} (chance {pct(deb['chance'])})" if deb.get("n") else "–",
                             letters, str(s["unparsed"]), str(s["skipped"])])
    if not rows:
        return []
    return [("h", 2, "Exams (multiple choice)"),
            ("p", "Local models: the option letter with the highest likelihood; endpoints: the letter parsed from "
                  "the reply (unparsed replies count as wrong). Skipped: not scored — too long for the context, or the "
                  "request failed after its retries (rerun to ask again). Debiased: every question is also asked with "
                  "its options cyclically shifted (each text under each letter once) and scored as the mean over the "
                  "shifts, so a model that always picks one letter scores exactly chance; letters: how often each "
                  "letter was picked (raw order) — one letter far above 1/n means the raw accuracy is letter bias."),
            ("table", ["model", "exam", "shots", "n", "accuracy", "95% CI", "debiased", "letters picked", "unparsed",
                       "skipped"], rows)]


# ------------------------------------------------------------------------------------ rendering

def _md_cell(s: str) -> str:
    """Table/list-safe Markdown: model output may contain HTML, which viewers would render."""
    s = str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s.replace("|", "\\|").replace("\n", "<br>")


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif kind == "p":
            out.append(blk[1])
        elif kind == "img":
            out.append(f"![{blk[2]}]({blk[1]})")
        elif kind == "table":
            head, rows = blk[1], blk[2]
            lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            out.append("\n".join(lines))
        elif kind == "example":
            out.append(_example_md(blk[1]))
    return "\n\n".join(out) + "\n"


def _example_md(ex: dict) -> str:
    lines = [f"**{ex['testset']} · {ex['item']}**", ""]
    for m in ex["context"]:
        who = {"user": "Patient", "assistant": "Doctor (gold)", "system": "System"}[m["role"]]
        lines.append(f"> **{who}:** {_md_cell(m['content'])}")
    if ex.get("reference"):
        lines += ["", f"- **reference:** {_md_cell(ex['reference'])}"]
    for model, text in ex["answers"].items():
        lines.append(f"- **{_md_cell(model)}:** {_md_cell(text if text is not None else '(no answer)')}")
    for comp, v in ex.get("verdicts", {}).items():
        lines.append(f"- *judge, {_md_cell(comp)}:* {', '.join(f'{DIM_LABELS.get(d, d)} {o}' for d, o in v.items())}")
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f3f3f3}img{max-width:100%}.ex{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;margin:1em 0}
.turn{margin:.2em 0}.who{font-weight:600}.answers{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));
gap:.6em;margin-top:.6em}.ans{background:#f8f8f8;padding:.5em;border-radius:4px;white-space:pre-wrap}.verdict{color:#555;font-size:13px}"""


def to_html(blocks: list[tuple], out: Path) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>",
             f"<style>{CSS}</style></head><body>"]
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            parts.append(f"<h{blk[1]}>{e(blk[2])}</h{blk[1]}>")
        elif kind == "p":
            parts.append(f"<p>{e(blk[1])}</p>")
        elif kind == "img":
            data = base64.b64encode((out / blk[1]).read_bytes()).decode()  # self-contained: one file to share
            parts.append(f"<p><img alt='{e(blk[2], quote=True)}' src='data:image/png;base64,{data}'></p>")
        elif kind == "table":
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in blk[1]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in blk[2]]
            parts.append("</table>")
        elif kind == "example":
            parts.append(_example_html(blk[1]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _example_html(ex: dict) -> str:
    e = html.escape
    who = {"user": "Patient", "assistant": "Doctor (gold)", "system": "System"}
    p = [f"<div class='ex'><div class='verdict'>{e(ex['testset'])} · {e(ex['item'])}</div>"]
    p += [f"<div class='turn'><span class='who'>{who[m['role']]}:</span> {e(m['content'])}</div>" for m in ex["context"]]
    p.append("<div class='answers'>")
    if ex.get("reference"):
        p.append(f"<div class='ans'><div class='who'>reference</div>{e(ex['reference'])}</div>")
    for model, text in ex["answers"].items():
        p.append(f"<div class='ans'><div class='who'>{e(model)}</div>{e(text if text is not None else '(no answer)')}</div>")
    p.append("</div>")
    for comp, v in ex.get("verdicts", {}).items():
        p.append(f"<div class='verdict'>judge, {e(comp)}: "
                 f"{e(', '.join(f'{DIM_LABELS.get(d, d)} {o}' for d, o in v.items()))}</div>")
    p.append("</div>")
    return "\n".join(p)


def finite(obj):
    """NaN/inf → None, so results.json is strict JSON any tool can read."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_report(results: dict, out: str | Path) -> dict[str, Path]:
    """results.json, report.md, report.html and the PNG figures under `out`."""
    out = Path(out)
    make_dir(out)
    figs = make_figures(results, out)
    results = {**results, "figures": figs}
    blocks = build_blocks(results, figs)
    write_json(out / "results.json", finite(results))
    with atomic_open(out / "report.md") as f:
        f.write(to_markdown(blocks))
    with atomic_open(out / "report.html") as f:
        f.write(to_html(blocks, out))
    return {"json": out / "results.json", "markdown": out / "report.md", "html": out / "report.html",
            **{k: out / v for k, v in figs.items()}}
