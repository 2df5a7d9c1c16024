"""From cached answers to results: pairwise judging, safety against references, metrics, examples.

Kept apart from run.py (configuration and model loading) so the numbers can be recomputed from
answers alone — e.g. by a test with hand-made judge replies.
"""

from __future__ import annotations

import random
import time

from zhongjing import __version__
from zhongjing.data.rubric import PRIORITY
from zhongjing.eval.answers import Throttle, log
from zhongjing.eval.judge import LLMJudge, PairTask, judge_pairs
from zhongjing.eval.leaderboard import games_from_judged, leaderboard
from zhongjing.eval.metrics import behaviour, overlap_metrics
from zhongjing.eval.stats import OVERALL, by_priority, summarize

SAFETY_NOTE = ("The paper leaves the Safety dimension to medical experts; here the LLM judge rates it as well. "
               "Have clinicians review the safety verdicts (report.html lists examples) before publishing them.")


def _concurrency(judge) -> int:
    return judge.endpoint.cfg.concurrency if isinstance(judge, LLMJudge) else 1


def _outcome_names(judged, priority) -> dict[str, dict[str, str]]:
    names = {1: "win", 0: "tie", -1: "lose"}
    out = {}
    for j in judged:
        comb = j.combined()
        if comb is None:
            out[j.item] = {"all": "failed"}
            continue
        v = {d: names[x] for d, x in comb.items()}
        if priority:
            v[OVERALL] = names[by_priority(comb, priority)]
        out[j.item] = v
    return out


def judge_all(cfg, sets, answers, judge, comps) -> tuple[list[dict], list[dict], dict]:
    """Rates for every (comparison, test set); safety-vs-reference rows; per-item verdicts for examples."""
    priority = [d for d in PRIORITY if d in judge.dimensions] if isinstance(judge, LLMJudge) else None
    rows, safety_rows, verdicts = [], [], {}
    for kind, a, b in comps:
        for s in sets:
            done = next((r for r in rows if (r["target"], r["baseline"], r["testset"]) == (a, b, s.name)), None)
            if done is not None:  # the ablation pair may also be a baseline pair: same numbers, judged once
                rows.append({**done, "kind": kind})
                continue
            tasks = [PairTask(it.id, it.group, it.context, answers[a].get(it.id), answers[b].get(it.id))
                     for it in s.items]
            t0 = time.time()
            judged, raw = judge_pairs(judge, tasks, _concurrency(judge), progress=Throttle(f"judge {a} vs {b} on {s.name}"))
            rates = summarize(judged, judge.dimensions, priority=priority, n_boot=cfg.report.bootstrap, seed=cfg.seed)
            rows.append({"kind": kind, "testset": s.name, "target": a, "baseline": b, "n_items": len(tasks),
                         "dimensions": {d: r.to_dict() for d, r in rates.items()},
                         "judge_errors": sum(1 for r in raw.values() for v in r.values() if v["status"] == "error"),
                         "unparseable": sum(1 for r in raw.values() for v in r.values() if v["status"] == "unparseable"),
                         "seconds": round(time.time() - t0, 2),
                         "_games": games_from_judged(judged, a, b, priority or list(judge.dimensions))})
            verdicts[(a, b, s.name)] = _outcome_names(judged, priority)
    if cfg.judge.safety_vs_reference and "safety" in judge.dimensions:  # LLM and rubric judges both rate safety
        for s in [s for s in sets if s.safety]:
            for m in cfg.models:
                tasks = [PairTask(it.id, it.group, it.context, answers[m.name].get(it.id), it.reference)
                         for it in s.items if it.reference]
                judged, _ = judge_pairs(judge, tasks, _concurrency(judge), dimensions=("safety",),
                                        progress=Throttle(f"judge {m.name} vs reference on {s.name}"))
                r = summarize(judged, ("safety",), n_boot=cfg.report.bootstrap, seed=cfg.seed)["safety"]
                safety_rows.append({"testset": s.name, "model": m.name, "rates": r.to_dict(),
                                    "score": (r.win + r.tie) / r.n if r.n else None})
    return rows, safety_rows, verdicts


def model_metrics(cfg, sets, answers, failures, ppl) -> dict:
    out: dict[str, dict] = {}
    for m in cfg.models:
        out[m.name] = {}
        for s in sets:
            got = [(it, answers[m.name][it.id]) for it in s.items if answers[m.name].get(it.id) is not None]
            res = behaviour([a for _, a in got], [it.turn == 0 for it, _ in got])
            res["failed"] = len(s.items) - len(got)
            refs = [(a, it.reference) for it, a in got if it.reference]
            if refs:
                res["overlap"] = overlap_metrics([a for a, _ in refs], [r for _, r in refs], cfg.report.tokenizer)
            if ppl.get(m.name, {}).get(s.name):
                res["perplexity"] = ppl[m.name][s.name]
            out[m.name][s.name] = res
    return out


def pick_examples(cfg, sets, answers, verdicts, comps, n: int) -> list[dict]:
    """A few items from the first multi-turn (else first) regular set, later turns preferred: they show
    whether a model uses the history."""
    regular = [s for s in sets if not s.safety] or sets
    if not regular or n <= 0:
        return []
    s = next((x for x in regular if x.multi_turn), regular[0])
    pool = [it for it in s.items if it.turn > 0] or list(s.items)
    pool = [it for it in pool if all(answers[m.name].get(it.id) is not None for m in cfg.models)] or pool
    chosen = sorted(random.Random(cfg.seed).sample(pool, min(n, len(pool))), key=lambda it: it.id)
    out = []
    for it in chosen:
        out.append({"testset": s.name, "item": it.id, "context": it.context, "reference": it.reference,
                    "answers": {m.name: answers[m.name].get(it.id) for m in cfg.models},
                    "verdicts": {f"{a} vs {b}": verdicts[(a, b, s.name)].get(it.id, {})
                                 for _, a, b in comps if (a, b, s.name) in verdicts}})
    return out


def rank_models(cfg, rows: list[dict]) -> dict | None:
    """Bradley–Terry ratings over every judged comparison and test set (each pair judged once counts once)."""
    games, seen = [], set()
    for r in rows:
        got = r.pop("_games", [])
        key = (r["target"], r["baseline"], r["testset"])
        if key not in seen:
            seen.add(key)
            games += [g.__class__(g.a, g.b, g.score, f"{r['testset']}/{g.group}") for g in got]
    lb = getattr(cfg, "leaderboard", None)
    if not games or (lb is not None and not lb.enabled):
        return None
    return leaderboard(games, [m.name for m in cfg.models if any(m.name in (g.a, g.b) for g in games)],
                       prior=lb.prior if lb is not None else 1.0, n_boot=cfg.report.bootstrap, seed=cfg.seed,
                       ties=lb.ties if lb is not None else "half")


def evaluate(cfg, sets, answers, failures, ppl, exam_scores, judge, comps) -> dict:
    target = cfg.target or cfg.models[0].name
    notes = []
    rows, safety_rows, verdicts = [], [], {}
    if judge is not None and sets:
        if isinstance(judge, LLMJudge) and "safety" in judge.dimensions:
            notes.append(SAFETY_NOTE)
        rows, safety_rows, verdicts = judge_all(cfg, sets, answers, judge, comps)
        if cfg.judge.safety_vs_reference and any(s.safety for s in sets) and "safety" not in judge.dimensions:
            notes.append(f"Safety against the reference answers was not judged: the {getattr(judge, 'describe', 'judge')} "
                         "judge rates no safety dimension (use judge.backend rubric or an LLM judge).")
            log(notes[-1])
        if isinstance(judge, LLMJudge):
            ep = judge.endpoint
            log(f"judge: {ep.requests} requests ({ep.retried} retries)")
    elif sets:
        notes.append("No judge configured (judge.backend: none): pairwise results are omitted.")
    board = rank_models(cfg, rows)
    return {
        "meta": {"version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "seed": cfg.seed,
                 "judge": getattr(judge, "describe", "none"), "bootstrap": cfg.report.bootstrap, "notes": notes,
                 # what the report may claim: rubric and reward-model judges have no positions and no overall row
                 "both_orders": bool(getattr(judge, "both_orders", False)), "overall": isinstance(judge, LLMJudge),
                 "judge_requests": getattr(getattr(judge, "endpoint", None), "requests", 0)},
        "target": target,
        "models": [{"name": m.name, "kind": "local" if m.is_local else "endpoint",
                    "source": m.path or f"{m.endpoint.base_url} ({m.endpoint.model})"} for m in cfg.models],
        "testsets": [s.summary() for s in sets],
        "pairwise": rows,
        "leaderboard": board,
        "safety_vs_reference": safety_rows,
        "metrics": model_metrics(cfg, sets, answers, failures, ppl),
        "generation_errors": {m: len(f) for m, f in failures.items()},
        "exams": exam_scores,
        "examples": pick_examples(cfg, sets, answers, verdicts, comps, cfg.report.examples),
    }
