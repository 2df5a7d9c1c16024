"""Report blocks for judge validation, the Bradley–Terry leaderboard, rubric grading and per-subject exam scores.

Kept out of report.py so that file stays one shared renderer; each function returns report blocks
(("h", level, text), ("p", text), ("table", head, rows), ("img", file, alt)) or [] when there is nothing to show.
"""

from __future__ import annotations

import math


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _num(x, nd: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _ci(ci, fmt=_pct) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "–"


def validation_summary(results: dict) -> str | None:
    """One sentence placed beside every pairwise result the judge produced."""
    rows = [r for r in results.get("judge_validation") or [] if not r.get("missing") and r.get("primary", True)]
    if not rows:
        return None
    parts = [f"{r['file']}: agreement {_pct(r['agreement'])} {_ci(r['ci']['agreement'])}, "
             f"κ {_num(r['kappa'])} {_ci(r['ci']['kappa'], _num)} on {r['n']} pairs" for r in rows]
    return "How far to trust these verdicts — this judge against human preference labels: " + "; ".join(parts) + "."


def validation_blocks(results: dict) -> list[tuple]:
    rows = results.get("judge_validation") or []
    if not rows:
        return []
    body = []
    for r in rows:
        if r.get("missing"):
            body.append(["–", r["file"], "not present", "–", "–", "–", "–", "–", "–"])
            continue
        pc = r.get("position_consistency")
        who = r.get("judge", "") + ("" if r.get("primary", True) else " (validated only)")
        body.append([who, r["file"], str(r["n"]), f"{_pct(r['agreement'])} {_ci(r['ci']['agreement'])}",
                     f"{_pct(r['agreement_decisive'])} ({r['n_decisive']})",
                     f"{_num(r['kappa'])} {_ci(r['ci']['kappa'], _num)}",
                     (f"{_pct(pc)} {_ci(r['ci']['position_consistency'])}" if pc is not None
                      else "n/a (order-free judge)"),
                     _pct(r.get("judge_ties")), str(r.get("failed", 0))])
    return [("h", 2, "Judge validation (agreement with human preference labels)"),
            ("p", "Every two answers a human ranked become one labelled pair, shown in a seeded random order; the "
                  "judge rates it as in the comparisons below (the first non-tied dimension in priority order decides; "
                  "answer orders that disagree count as a tie). Agreement: the judge's label (first better / tie / "
                  "second better) equals the human's. "
                  "Decisive: over pairs where both chose a side. κ: Cohen's kappa of the two three-way labels (0 = "
                  "chance). 95% intervals: bootstrap over rankings."),
            ("table", ["judge", "file", "pairs", "agreement [95% CI]", "decisive agreement (n)", "Cohen's κ [95% CI]",
                       "position consistency", "judge ties", "failed"], body)]


def leaderboard_blocks(results: dict, figs: dict) -> list[tuple]:
    board = results.get("leaderboard")
    if not board:
        return []
    unit = ("each answer order of each judged question is one game" if results["meta"].get("both_orders")
            else "each judged question is one game")
    tie_text = ("ties count as half a win for each side" if board.get("ties", "half") == "half" else
                f"ties fitted by Davidson's model, tie parameter ν = {_num(board.get('nu'))}")
    out = [("h", 2, "Leaderboard (Bradley–Terry, Elo scale)"),
           ("p", f"Strengths fitted to all {board['games']} judged games ({unit}; the first dimension in priority "
                 f"order that is not tied decides a game; {tie_text}; "
                 f"{board['prior']:g} virtual tie per compared pair). Rating = 1000 + 400·log10(strength / geometric "
                 f"mean): 400 points = 10:1 odds. 95% intervals: bootstrap over {board['groups']} dialogues, "
                 f"{board['bootstrap']} resamples.")]
    if not board.get("connected", True):
        out.append(("p", "Warning: the compared models fall into separate groups with no comparison between them; "
                         "ratings are comparable only within a group: "
                         + "; ".join(", ".join(c) for c in board["components"]) + "."))
    if "leaderboard" in figs:
        out.append(("img", figs["leaderboard"], "Bradley–Terry ratings"))
    out.append(("table", ["rank", "model", "rating", "95% CI", "games", "wins", "ties", "losses"],
                [[str(k), r["model"], _num(r["rating"], 0), _ci(r["ci"], lambda x: _num(x, 0)), str(r["games"]),
                  str(r["wins"]), str(r["ties"]), str(r["losses"])] for k, r in enumerate(board["rows"], 1)]))
    return out


def subject_blocks(results: dict) -> list[tuple]:
    """Per-subject accuracy of every exam that has more than one subject."""
    out = []
    for model, exams in (results.get("exams") or {}).items():
        for exam, by_shots in exams.items():
            for shots, s in by_shots.items():
                subj = s.get("subjects") or {}
                if len(subj) < 2:
                    continue
                out.append(("h", 3, f"{exam}: {model}, {shots}-shot, per subject"))
                out.append(("table", ["subject", "n", "accuracy"],
                            [[k, str(v["n"]), _pct(v["accuracy"])] for k, v in subj.items()]))
    return out


def rubric_blocks(results: dict) -> list[tuple]:
    rows = results.get("rubric") or []
    if not rows:
        return []
    out = [("h", 2, "Rubric grading (per-case criteria)"),
           ("p", "Each answer is graded criterion by criterion (met / not met) by the grader; a case's score is the "
                 "points of the met criteria divided by the sum of its positive points, clipped to [0, 1] (negative "
                 "criteria subtract). Mean over cases with a 95% bootstrap interval over cases; per-tag scores use only "
                 "that tag's criteria. Failed: criteria the grader could not decide after its retries (the case is "
                 "left out; rerun to ask again).")]
    body, tags = [], []
    for r in rows:
        body.append([r["testset"], r["model"], str(r["n"]), f"{_pct(r['score'])} {_ci(r['ci'])}",
                     str(r["failed_cases"]), str(r["failed_criteria"])])
        tags += [[r["testset"], r["model"], t, str(v["n"]), _pct(v["score"])] for t, v in r.get("tags", {}).items()]
    out.append(("table", ["test set", "model", "cases", "score [95% CI]", "failed cases", "failed criteria"], body))
    if tags:
        out.append(("table", ["test set", "model", "tag", "cases", "score"], tags))
    return out
