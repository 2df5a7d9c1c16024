"""What the pipeline tells the user at the end: per-stage time and effect, where the model and the report are.

Each stage's summary is read from what the stage wrote (meta.json metrics, the eval results), so it shows
whether the stage did something real: pt lowers the validation perplexity, sft the validation loss, the reward
model ranks held-out pairs above chance, PPO raises the reward, and eval compares the aligned model with the SFT
model and the base. Written to WORK/summary.md and WORK/summary.json.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from zhongjing.hints import command
from zhongjing.io import atomic_open, iter_jsonl, write_json

SIMULATED_NOTE = ("The rankings the reward model learned from were made by a SIMULATED annotator (rubric heuristics "
                  "in zhongjing/data/simulate.py), not by doctors: this run demonstrates the mechanics only.")


def _meta(path: Path) -> dict:
    p = Path(path) / "meta.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


def _history(meta: dict) -> list[dict]:
    return (meta.get("metrics") or {}).get("history") or []


def _count(path: Path) -> int:
    return sum(1 for _ in iter_jsonl(path)) if Path(path).exists() else 0


def _fmt(x, nd: int = 3) -> str:
    return "–" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def stage_summary(stage, w, cfg) -> dict:
    """A few numbers for a stage (a pipeline.stages.Stage), and a one-line `text` for the table."""
    return stage.summary(stage.name, w, cfg) if stage.summary else {"text": ""}


def init_summary(stage: str, w, cfg) -> dict:
    m = _meta(w.output(stage))
    return {"params": m.get("params"), "vocab": m.get("vocab_size"),
            "text": f"tiny LLaMA from scratch: {m.get('params', 0):,} parameters, vocab {m.get('vocab_size')}"}


def build_summary(stage: str, w, cfg) -> dict:
    n = {s: _count(w.built(s)) for s in ("train", "validation", "test")}
    return {**n, "text": f"dialogues: {n['train']} train / {n['validation']} validation / {n['test']} test"}


def lm_summary(stage: str, w, cfg) -> dict:
    """pt: validation perplexity; sft: validation loss — before training, at the first evaluation, best."""
    h = _history(_meta(w.output(stage)))
    key = "val_ppl" if stage == "pt" else "val_loss"
    first, best = (h[0].get(key), min(x.get(key) for x in h)) if h else (None, None)
    init = _initial(stage, w)
    s = {"first_eval": first, "best": best, "initial": init, "metric": key}
    start = f"{_fmt(init, 2)} before training → " if init is not None else ""
    return {**s, "text": f"validation {key.replace('val_', '')}: {start}{_fmt(first, 2)} after the first "
                         f"evaluation → {_fmt(best, 2)} best"}


def generate_summary(stage: str, w, cfg) -> dict:
    n = _count(w.output(stage))
    return {"items": n, "text": f"{n} prompts × K answers from the SFT model"}


def rank_summary(stage: str, w, cfg) -> dict:
    rows = [r for _, r in iter_jsonl(w.output(stage))]
    sim = any("simulated" in (r.get("annotators") or []) for r in rows)
    wrong = sum(bool(r.get("all_wrong")) for r in rows)
    who = "SIMULATED annotator (heuristics, not doctors)" if sim else "real annotators"
    sources = Counter(((r.get("meta") or {}).get("source") or "simulated") for r in rows)
    neg = sum(bool((r.get("meta") or {}).get("mismatched")) for r in rows)
    src = ", ".join(f"{k} {v}" for k, v in sources.most_common()) + (f"; {neg} with mismatched negatives" if neg else "")
    safer = sum(bool((r.get("meta") or {}).get("gold_rank")) for r in rows)
    src += f"; {safer} with a safer sample above the real reply" if safer else ""
    return {"rankings": len(rows), "all_wrong": wrong, "simulated": sim, "sources": dict(sources),
            "mismatched": neg, "gold_below_safer": safer,
            "text": f"{len(rows)} rankings by {who}; {wrong} all-wrong; sources: {src}"}


def rm_summary(stage: str, w, cfg) -> dict:
    meta = _meta(w.output(stage))
    m = meta.get("metrics") or {}
    acc = m.get("val_accuracy")
    rel = {k: m.get(k) for k in ("val_relevance", "data_relevance", "val_relevance_overlap", "data_relevance_overlap")}
    on = ", ".join((meta.get("relevance") or {}).get("data_files") or []) or "data"
    longer = m.get("val_longer_wins")

    def with_overlap(k: str) -> str:  # relevance beside its trivial baseline on the same pairs
        o = rel[f"{k}_overlap"]
        return _fmt(rel[k]) + (f" (bigram overlap: {_fmt(o)})" if o is not None else "")

    kinds = meta.get("pair_kinds") or {}
    kinds = {} if set(kinds) == {"other"} else kinds  # no ranking with a reference (the demo): the average says it
    by_kind = "; ".join(f"{k.replace('_', ' ')} {_fmt(v['accuracy'])} (longer wins {_fmt(v['longer_wins'])}, "
                        f"{v['pairs']} pairs)" for k, v in kinds.items())
    return {"val_accuracy": acc, "val_margin": m.get("val_margin"), "val_longer_wins": longer, **rel,
            "pair_kinds": kinds,
            "text": f"held-out pairwise accuracy {_fmt(acc)} (chance 0.5"
                    + (f"; the longer answer wins: {_fmt(longer)}" if longer is not None else "")
                    + f"), margin {_fmt(m.get('val_margin'))}"
                    + (f"; by kind of pair: {by_kind}" if by_kind else "") + "; "
                    f"relevance (own reply vs another dialogue's, chance 0.5): {with_overlap('val_relevance')} "
                    f"held-out rankings, {with_overlap('data_relevance')} on {on}"}


def ppo_summary(stage: str, w, cfg) -> dict:
    return _ppo_summary(_meta(w.output(stage)))


def eval_summary(stage: str, w, cfg) -> dict:
    return _eval_summary(w.output(stage))


def _initial(stage: str, w) -> float | None:
    """The metric before training, when the stage logged one (an evaluation at step 0)."""
    h = _history(_meta(w.output(stage)))
    zero = [x for x in h if x.get("step") == 0]
    key = "val_ppl" if stage == "pt" else "val_loss"
    return zero[0].get(key) if zero else None


def _ppo_summary(meta: dict) -> dict:
    """Reward, KL, answer length, greedy finish rate and the independent (rubric) judge's safety on the held-out
    prompts: before the first update and for the policy kept (select: best, else the last); reward-hacking flags."""
    h = _history(meta)
    kept = next((r for r in h if r.get("step") == meta.get("best_step")), h[-1] if h else {})
    first = h[0] if h else {}
    keys = ("reward", "kl", "answer_len", "greedy_finished", "judge_safety")
    out = {k: (first.get(f"eval_{k}"), kept.get(f"eval_{k}")) for k in keys}
    text = (f"held-out reward {_fmt(out['reward'][0])} → {_fmt(out['reward'][1])} (update {kept.get('step', 0)} of "
            f"{meta.get('step', kept.get('step', 0))} kept), KL to the SFT model {_fmt(out['kl'][1])}, answer length "
            f"{_fmt(out['answer_len'][0], 0)} → {_fmt(out['answer_len'][1], 0)} tokens")
    if out["greedy_finished"][0] is not None:
        text += (f", greedy answers finished {_fmt(out['greedy_finished'][0], 2)} → {_fmt(out['greedy_finished'][1], 2)}"
                 f", rubric safety {_fmt(out['judge_safety'][0], 2)} → {_fmt(out['judge_safety'][1], 2)}")
    if meta.get("hacking"):
        text += f"; REWARD HACKING flagged at {len(meta['hacking'])} evaluation(s) (never kept): {meta['hacking'][0]}"
    if meta.get("stopped"):
        text += f" (stopped early: {meta['stopped']})"
    return {**out, "hacking": meta.get("hacking") or [], "text": text}


def _eval_summary(results_path: Path) -> dict:
    """Win/tie/lose of the target against each baseline per dimension on the first test set, and the perplexity
    of the gold doctor turns under each model (lower: the model expects what real doctors said)."""
    if not Path(results_path).exists():
        return {"text": "no results"}
    r = json.loads(Path(results_path).read_text(encoding="utf-8"))
    rows = [row for row in r.get("pairwise", []) if row.get("kind") == "baseline"]
    first = rows[0]["testset"] if rows else None
    pairwise, parts = [], []
    for row in rows:
        if row["testset"] != first:
            continue
        dims = {d: {k: x.get(k) for k in ("win_rate", "tie_rate", "lose_rate", "n")}
                for d, x in (row.get("dimensions") or {}).items()}
        pairwise.append({"target": row["target"], "baseline": row["baseline"], "testset": first, "dimensions": dims})
        parts.append(f"{row['target']} vs {row['baseline']}: " + ", ".join(
            f"{d} {_pct(x['win_rate'])}/{_pct(x['tie_rate'])}/{_pct(x['lose_rate'])}" for d, x in dims.items()))
    ppl = {m: ((v.get(first) or {}).get("perplexity") or {}).get("perplexity")
           for m, v in (r.get("metrics") or {}).items()} if first else {}
    text = (f"on '{first}', win/tie/lose — " + "; ".join(parts)) if parts else "no pairwise results"
    if any(v is not None for v in ppl.values()):
        text += "; gold-answer perplexity " + ", ".join(f"{m} {_fmt(v, 1)}" for m, v in ppl.items())
    return {"pairwise": pairwise, "perplexity": ppl, "judge": (r.get("meta") or {}).get("judge"), "text": text}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def write_summary(cfg, w, state, plans, times: dict) -> dict:
    """The end-of-run table and pointers; also saved as summary.md / summary.json in the work dir."""
    lines = ["| stage | this run | seconds | CPU s | result |", "|---|---|---:|---:|---|"]
    rows, total = [], 0.0
    for p in plans:
        if p.action == "off":
            continue
        rec = state.get(p.stage)
        secs = times.get(p.stage)
        total += secs or 0.0
        what = {"run": "ran", "resume": "resumed", "skip": "skipped"}[p.action]
        summ = rec.get("summary") or {}
        rows.append({"stage": p.stage, "action": what, "seconds": secs, "last_seconds": rec.get("seconds"),
                     "summary": summ})
        shown = f"{secs:.0f}" if secs is not None else f"({rec.get('seconds', 0):.0f})"
        cpu = summ.get("cpu_seconds")
        cpu = "–" if cpu is None else (f"{cpu:.0f}" if secs is not None else f"({cpu:.0f})")
        lines.append(f"| {p.stage} | {what} | {shown} | {cpu} | {summ.get('text', '')} |")
    lines.append(f"| **total** | | {total:.0f} | | |")
    done = {s for s in w.stages if state.get(s).get("status") == "done"}  # --only init,build has no model yet
    last = next((s for s in ("ppo", "sft", "pt") if s in done), None)
    model = w.output(last) if last else None
    report = w.output("eval").parent / "report.md"
    text = ["## Pipeline summary", "", *lines, "",
            "(in parentheses: the earlier run that produced a skipped stage's output; CPU s: the stage's processes' "
            "CPU time, > seconds when it used several cores)", ""]
    if model:
        text.append(f"- model ({last}): {model}  →  chat with it: {command()} chat --model {model}")
    if "eval" in done:
        text.append(f"- evaluation report: {report} (also report.html, results.json)")
    if cfg.simulated and done & {"rank", "rm", "ppo"}:
        text += ["", f"**NOTE:** {SIMULATED_NOTE}"]
        if "eval" in done and "reward" in json.dumps(_eval_summary(w.output("eval")).get("pairwise") or []):
            text.append("The demo's eval judge is the pipeline's own reward model — the one PPO optimised — so it "
                        "favours the aligned model by construction; use an LLM judge or doctors for real numbers.")
    body = "\n".join(text) + "\n"
    with atomic_open(w.work / "summary.md") as f:
        f.write(body)
    data = {"stages": rows, "total_seconds": round(total, 1), "model": str(model) if model else None,
            "report": str(report) if "eval" in done else None,
            "simulated_rankings": cfg.simulated}
    write_json(w.work / "summary.json", data)
    return {**data, "text": body}
