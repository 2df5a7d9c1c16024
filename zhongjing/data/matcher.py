"""Leftmost-longest dictionary matching with a character trie.

Entity dictionaries here are large (≈9k diseases, ≈17k drug products) and texts are short, so a
trie walked from each position whose character starts some term costs O(text × depth) and beats
testing every term with `in` by orders of magnitude (benchmarks/build_throughput.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

_END = ""  # key of the payload in a trie node; never a real character


@dataclass(frozen=True)
class Match:
    start: int
    end: int
    term: str
    values: tuple  # every payload registered for this term (one term can be a disease and a food)


class DictMatcher:
    def __init__(self, items: Iterable[tuple[str, Any]] = (), min_len: int = 2):
        self.root: dict = {}
        self.min_len = min_len
        self.size = 0
        for term, value in items:
            self.add(term, value)

    def add(self, term: str, value: Any) -> None:
        term = term.strip()
        if len(term) < self.min_len:
            return
        node = self.root
        for ch in term:
            node = node.setdefault(ch, {})
        vals = node.get(_END)
        if vals is None:
            node[_END] = (value,)
            self.size += 1
        elif value not in vals:
            node[_END] = vals + (value,)

    def find(self, text: str) -> list[Match]:
        """Non-overlapping matches, scanning left to right and taking the longest term at each start."""
        out: list[Match] = []
        root, n, i = self.root, len(text), 0
        while i < n:
            node = root.get(text[i])
            if node is None:
                i += 1
                continue
            best_end, best_vals, j = -1, None, i + 1
            while True:
                vals = node.get(_END)
                if vals is not None:
                    best_end, best_vals = j, vals
                if j >= n:
                    break
                node = node.get(text[j])
                if node is None:
                    break
                j += 1
            if best_vals is not None:
                out.append(Match(i, best_end, text[i:best_end], best_vals))
                i = best_end
            else:
                i += 1
        return out
