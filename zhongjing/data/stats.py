"""`zhongjing data stats FILE...`: what a dataset holds before you train on it.

Dialogues: records, doctor turns per dialogue (mean/median/max and a histogram), share of
multi-turn dialogues, characters per role and per message, departments, roles, and how often a
doctor turn asks the patient something (proactive inquiry). Documents, rankings and exam files
get their own counts; side files (entity dictionaries …) their number of entries. Bad records are
counted and the first few shown (`--strict` stops at the first instead).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from zhongjing.config import positive_int
from zhongjing.data.readers import FORMATS, ExamItem, ReadReport, count_aux, detect_format, list_files, read_records
from zhongjing.data.schema import Dialogue, Document, Ranking
from zhongjing.data.text import asks_question
from zhongjing.errors import ZhongjingError

TURN_BUCKETS = ("0", "1", "2", "3", "4", "5", "6-9", "10+")


def _bucket(turns: int) -> str:
    return str(turns) if turns <= 5 else "6-9" if turns < 10 else "10+"


def dist(values: list[int]) -> dict:
    if not values:
        return {"mean": 0, "median": 0, "max": 0, "total": 0}
    return {"mean": round(statistics.fmean(values), 2), "median": statistics.median(values), "max": max(values),
            "total": sum(values)}


class Stats:
    def __init__(self) -> None:
        self.files: list[dict] = []
        self.bad: list[str] = []
        self.n_bad = 0
        self.d_turns: list[int] = []
        self.d_chars: dict[str, list[int]] = {"system": [], "user": [], "assistant": []}
        self.d_departments, self.d_sources, self.d_questions = Counter(), Counter(), 0
        self.d_safety = 0  # safety / red-team prompts (meta.safety: CMtMedQA's {instruct, output} records)
        self.docs: list[int] = []
        self.doc_sources = Counter()
        self.r_k, self.r_ranked, self.r_ties, self.r_all_wrong, self.r_context = Counter(), 0, 0, 0, []
        self.r_sources = Counter()
        self.e_options, self.e_answers, self.e_multi, self.e_subjects = Counter(), Counter(), 0, Counter()
        self.aux: list[dict] = []

    def add(self, unit: Any) -> None:
        if isinstance(unit, Dialogue):
            self.d_turns.append(unit.turns)
            for m in unit.messages:
                self.d_chars[m.role].append(len(m.content))
                self.d_questions += m.role == "assistant" and asks_question(m.content)
            self.d_departments[unit.meta.get("department") or "(none)"] += 1
            self.d_sources[unit.meta.get("source", "?")] += 1
            self.d_safety += bool(unit.meta.get("safety"))
        elif isinstance(unit, Document):
            self.docs.append(len(unit.text))
            self.doc_sources[unit.meta.get("source", "?")] += 1
        elif isinstance(unit, Ranking):
            self.r_k[unit.k] += 1
            self.r_ranked += bool(unit.ranking)
            self.r_ties += any(len(g) > 1 for g in unit.ranking)
            self.r_all_wrong += unit.all_wrong
            self.r_context.append(sum(m.role == "user" for m in unit.messages))
            self.r_sources[unit.meta.get("source", "?")] += 1
        elif isinstance(unit, ExamItem):
            self.e_options[len(unit.options)] += 1
            self.e_answers.update(unit.answer)
            self.e_multi += len(unit.answer) > 1
            self.e_subjects[unit.subject or "(none)"] += 1

    def result(self, top: int) -> dict:
        out: dict[str, Any] = {"files": self.files, "bad_records": self.n_bad, "bad_examples": self.bad}
        n = len(self.d_turns)
        if n:
            doctor = len(self.d_chars["assistant"])
            out["dialogue"] = {
                "records": n,
                "turns_per_dialogue": dist(self.d_turns),
                "turns_histogram": {b: sum(_bucket(t) == b for t in self.d_turns) for b in TURN_BUCKETS},
                "multi_turn_share": round(sum(t > 1 for t in self.d_turns) / n, 4),
                "prompt_only": sum(t == 0 for t in self.d_turns),
                "safety_prompts": self.d_safety,
                "messages_per_role": {r: len(v) for r, v in self.d_chars.items() if v},
                "chars_per_message": {r: dist(v) for r, v in self.d_chars.items() if v},
                "chars_per_message_all": dist([c for v in self.d_chars.values() for c in v]),
                "doctor_turns_asking_question": round(self.d_questions / doctor, 4) if doctor else 0.0,
                "departments": dict(self.d_departments.most_common(top)),
                "n_departments": len(self.d_departments),
                "sources": dict(self.d_sources),
            }
        if self.docs:
            out["document"] = {"records": len(self.docs), "chars": dist(self.docs), "sources": dict(self.doc_sources)}
        if self.r_context:
            out["ranking"] = {"records": len(self.r_context), "k": dict(sorted(self.r_k.items())),
                              "ranked": self.r_ranked, "with_ties": self.r_ties, "all_wrong": self.r_all_wrong,
                              "context_user_turns": dist(self.r_context), "sources": dict(self.r_sources)}
        if self.e_options:
            out["exam"] = {"records": sum(self.e_options.values()), "options": dict(sorted(self.e_options.items())),
                           "answer_letters": dict(sorted(self.e_answers.items())), "multi_answer": self.e_multi,
                           "subjects": dict(self.e_subjects.most_common(top)), "n_subjects": len(self.e_subjects)}
        if self.aux:
            out["side_files"] = self.aux
        return out


def collect(inputs: list[str], format: str | None = None, encoding: str | None = None, strict: bool = False,
            top: int = 15) -> dict:
    stats = Stats()
    for f in list_files(inputs):
        fmt = format or detect_format(f, encoding=encoding)
        if FORMATS[fmt].kind == "aux":
            stats.aux.append({"path": str(f), "format": fmt, "entries": count_aux(f, fmt, encoding)})
            continue
        rejects: list = []
        report = ReadReport()
        for unit in read_records(f, fmt, skip_bad=not strict, rejects=rejects, encoding=encoding, report=report):
            stats.add(unit)
        stats.files += [{"path": p, "format": x, "records": n} for p, x, n in report.files]
        stats.n_bad += len(rejects)
        stats.bad += [str(e) for e in rejects[: max(0, 5 - len(stats.bad))]]
    if not stats.files and not stats.aux:
        raise ZhongjingError(f"no data files in {' '.join(inputs)}")
    return stats.result(top)


def _fmt_dist(d: dict) -> str:
    return f"mean {d['mean']}, median {d['median']}, max {d['max']}"


def render(res: dict) -> str:
    lines = []
    for f in res["files"]:
        lines.append(f"{f['path']}: {f['format']}, {f['records']} records")
    for a in res.get("side_files", []):
        lines.append(f"{a['path']}: {a['format']} side file, {a['entries']} entries (no units)")
    if res["bad_records"]:
        lines.append(f"bad records: {res['bad_records']} (skipped), e.g.:")
        lines += [f"  {e}" for e in res["bad_examples"]]
    if d := res.get("dialogue"):
        lines += ["", f"dialogues: {d['records']}",
                  f"  doctor turns per dialogue: {_fmt_dist(d['turns_per_dialogue'])}; total {d['turns_per_dialogue']['total']}",
                  "  histogram: " + "  ".join(f"{k}:{v}" for k, v in d["turns_histogram"].items()),
                  f"  multi-turn: {d['multi_turn_share']:.1%}; prompt-only (no doctor turn): {d['prompt_only']}; "
                  f"safety prompts: {d.get('safety_prompts', 0)}",
                  "  messages per role: " + ", ".join(f"{r} {n}" for r, n in d["messages_per_role"].items())]
        for role, cd in d["chars_per_message"].items():
            lines.append(f"  chars per {role} message: {_fmt_dist(cd)}; total {cd['total']}")
        lines.append(f"  doctor turns that ask a question: {d['doctor_turns_asking_question']:.1%}")
        lines.append(f"  departments ({d['n_departments']}): " + ", ".join(f"{k} {v}" for k, v in d["departments"].items()))
    if d := res.get("document"):
        lines += ["", f"documents: {d['records']}", f"  chars: {_fmt_dist(d['chars'])}; total {d['chars']['total']}"]
    if d := res.get("ranking"):
        lines += ["", f"rankings: {d['records']}", "  K: " + ", ".join(f"{k}: {v}" for k, v in d["k"].items()),
                  f"  ranked {d['ranked']}, with ties {d['with_ties']}, all answers wrong {d['all_wrong']}",
                  f"  user turns in context: {_fmt_dist(d['context_user_turns'])}"]
    if d := res.get("exam"):
        lines += ["", f"exam questions: {d['records']}", "  options: " + ", ".join(f"{k}: {v}" for k, v in d["options"].items()),
                  "  answers: " + ", ".join(f"{k} {v}" for k, v in d["answer_letters"].items())
                  + f"; multiple-answer questions {d['multi_answer']}",
                  f"  subjects ({d['n_subjects']}): " + ", ".join(f"{k} {v}" for k, v in d["subjects"].items())]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zhongjing data stats", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="FILE", help="files or directories")
    p.add_argument("--format", help="input format (default: detected per file)")
    p.add_argument("--encoding", help="input text encoding (default: UTF-8, else GB18030)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--top", type=positive_int, default=15, help="how many departments/subjects to list")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record")
    args = p.parse_args(argv)
    if args.format and args.format not in FORMATS:
        raise ZhongjingError(f"unknown format {args.format!r} (one of: {', '.join(sorted(FORMATS))})")
    res = collect(args.inputs, args.format, args.encoding, args.strict, args.top)
    print(json.dumps(res, ensure_ascii=False, indent=2) if args.json else render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
