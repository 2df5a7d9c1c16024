"""De-identification recall and precision per identifier type on the generated planted set.

    python benchmarks/deid_recall.py [--n 5000] [--seed 0]

Compared in the same run with a plain-regex peer baseline (the patterns many data pipelines ship:
18 digits for an ID, 1[3-9] + 9 digits for a mobile, an e-mail pattern, 16–19 digits for a card;
no checksums, no context, no names or addresses). Recall counts a planted value as found when a
detection of the same type covers it; precision is the share of detections that hit a planted value.
"""

from __future__ import annotations

import argparse
import re
import time

from zhongjing.dataset.deid import STRUCTURED, Deidentifier, Span
from zhongjing.dataset.deid_planted import make_planted_set, score, structured_recall


class PlainRegexBaseline:
    """Peer baseline: fixed regexes, first match wins, no validation."""

    PATTERNS = [
        ("email", re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")),
        ("id_card", re.compile(r"\d{17}[\dXx]")),
        ("bank_card", re.compile(r"\d{16,19}")),
        ("phone", re.compile(r"1[3-9]\d{9}")),
    ]

    def find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        for t, rx in self.PATTERNS:
            for m in rx.finditer(text):
                if all(m.end() <= s.start or m.start() >= s.end for s in spans):
                    spans.append(Span(t, m.start(), m.end()))
        return sorted(spans, key=lambda s: s.start)


def _fmt(x) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    samples = make_planted_set(args.n, args.seed)
    results = {}
    for name, engine in (("zhongjing", Deidentifier()), ("plain-regex", PlainRegexBaseline())):
        t0 = time.perf_counter()
        results[name] = (score(engine, samples), time.perf_counter() - t0)
    ours, base = results["zhongjing"][0], results["plain-regex"][0]
    print(f"planted set: {len(samples)} texts, {sum(len(s.spans) for s in samples)} identifiers (seed {args.seed})\n")
    print(f"{'type':<11} {'planted':>7} | {'zhongjing recall':>16} {'precision':>9} | {'plain-regex recall':>18} {'precision':>9}")
    for t in sorted(ours):
        o, b = ours[t], base.get(t, {"recall": 0.0 if ours[t]["planted"] else None, "precision": None})
        print(f"{t:<11} {o['planted']:>7} | {_fmt(o['recall']):>16} {_fmt(o['precision']):>9} | "
              f"{_fmt(b['recall']):>18} {_fmt(b['precision']):>9}")
    r_ours, r_base = structured_recall(ours), structured_recall(base)
    print(f"\nstructured identifiers ({', '.join(STRUCTURED)}): recall {100 * r_ours:.2f}% vs plain-regex "
          f"{100 * r_base:.2f}% (ratio {r_ours / max(r_base, 1e-9):.2f}x)")
    all_removed = sum(s["removed"] for s in ours.values()) / sum(s["planted"] for s in ours.values())
    print(f"any identifier removed (any placeholder type): {100 * all_removed:.2f}%")
    for name, (_, secs) in results.items():
        print(f"{name}: {len(samples) / secs:,.0f} texts/s")


if __name__ == "__main__":
    main()
