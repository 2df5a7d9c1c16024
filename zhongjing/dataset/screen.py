"""Screening: drop dialogues that would teach the wrong thing, and measure proactive inquiry.

Rules, each counted in the report: turn count, length bounds, language (share of CJK among
letters), empty or copy-paste doctor turns (a doctor turn repeating the patient or an earlier
doctor turn), exact duplicates and near duplicates (MinHash + LSH over character shingles,
clusters reported). Every kept dialogue carries `meta["inquiry_ratio"]`: the share of its doctor
turns that ask the patient something — the paper's proactive inquiry, optionally thresholded.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Literal

from zhongjing.config import at_least
from zhongjing.dataset.minhash import MinHasher, near_duplicate_clusters, shingle_hashes
from zhongjing.dataset.normalize import cjk_share
from zhongjing.dataset.report import StepReport
from zhongjing.data.schema import Dialogue
from zhongjing.errors import ConfigError


@dataclass
class ScreenConfig:
    min_turns: int = 1  # doctor turns
    max_turns: int = 40
    min_doctor_chars: int = 2  # every doctor turn at least this long (after stripping punctuation)
    max_turn_chars: int = 4000
    max_dialogue_chars: int = 16000
    min_cjk_share: float = 0.5
    copy_paste_threshold: float = 0.9  # Jaccard of character shingles between a doctor turn and an earlier turn
    copy_paste_min_chars: int = 8  # shorter turns ("好的", "谢谢") may legitimately repeat
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_threshold: float = 0.8
    near_dup_action: Literal["drop", "keep"] = "drop"  # keep: only tag clusters (split keeps each in one split)
    num_perm: int = 128
    shingle: int = 5
    min_inquiry_ratio: float = 0.0  # for multi-turn dialogues; 0 = measure only

    def __post_init__(self):
        # out of range these did not fail: num_perm 0 silently turned dedup off, shingle 0 or a threshold
        # of 0 made every dialogue a near duplicate of every other, a negative num_perm was a traceback
        if self.num_perm < 1 or self.shingle < 1:
            raise ConfigError("screen.num_perm and screen.shingle must be ≥ 1")
        for key in ("near_dup_threshold", "copy_paste_threshold"):
            if not 0 < getattr(self, key) <= 1:
                raise ConfigError(f"screen.{key} must be a Jaccard similarity in (0, 1]")
        for key in ("min_cjk_share", "min_inquiry_ratio"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"screen.{key} must be a fraction in [0, 1]")
        # max_turns 0, or below min_turns, screened every dialogue out and the build "finished" with none
        if not 1 <= self.min_turns <= self.max_turns:
            raise ConfigError(f"screen.min_turns and max_turns must satisfy 1 ≤ min ≤ max, got {self.min_turns} and "
                              f"{self.max_turns}")
        at_least(self, 0, "min_doctor_chars", "max_turn_chars", "max_dialogue_chars", "copy_paste_min_chars")


_PUNCT = re.compile(r"[\s，。？！：；、（）“”‘’…—～,.?!:;()\"'~\-·]+")


def _bare(text: str) -> str:
    return _PUNCT.sub("", text)


def _content_key(d: Dialogue) -> str:
    text = "\x1e".join(f"{m.role}\x1f{_bare(m.content)}" for m in d.messages if m.role != "system")
    return hashlib.sha256(text.encode()).hexdigest()


def _copy_paste(d: Dialogue, cfg: ScreenConfig) -> bool:
    """A doctor turn whose character trigrams (punctuation ignored) nearly equal an earlier turn's."""
    seen: list[set[str]] = []
    for m in d.messages:
        if m.role == "system":
            continue
        t = _bare(m.content)
        h = {t[i:i + 3] for i in range(max(1, len(t) - 2))}
        if m.role == "assistant" and len(m.content) >= cfg.copy_paste_min_chars:
            if any(len(h & prev) >= cfg.copy_paste_threshold * len(h | prev) for prev in seen):
                return True
        if len(m.content) >= cfg.copy_paste_min_chars:
            seen.append(h)
    return False


def _rule_violation(d: Dialogue, cfg: ScreenConfig) -> str | None:
    doctor = [m.content for m in d.messages if m.role == "assistant"]
    if len(doctor) < cfg.min_turns:
        return "too_few_turns"
    if len(doctor) > cfg.max_turns:
        return "too_many_turns"
    if any(len(_bare(t)) < cfg.min_doctor_chars for t in doctor):
        return "empty_doctor_turn"
    if any(len(m.content) > cfg.max_turn_chars for m in d.messages):
        return "turn_too_long"
    text = "".join(m.content for m in d.messages)
    if len(text) > cfg.max_dialogue_chars:
        return "dialogue_too_long"
    if cjk_share(text) < cfg.min_cjk_share:
        return "not_chinese"
    if _copy_paste(d, cfg):
        return "copy_paste_answer"
    return None


def inquiry_ratio(d: Dialogue, asks: Callable[[str], bool]) -> float:
    doctor = [m.content for m in d.messages if m.role == "assistant"]
    return sum(map(asks, doctor)) / len(doctor) if doctor else 0.0


def run_screen(dialogues: list[Dialogue], cfg: ScreenConfig, report: StepReport,
               progress: Callable | None = None) -> list[Dialogue]:
    from zhongjing.data.text import asks_question

    progress = progress or (lambda it, **kw: it)
    report.n_in = len(dialogues)
    kept: list[Dialogue] = []
    seen: set[str] = set()
    for d in progress(dialogues, desc="screen"):
        reason = _rule_violation(d, cfg)
        if reason is None and cfg.exact_dedup:
            key = _content_key(d)
            reason = "exact_duplicate" if key in seen else None
            seen.add(key)
        if reason is None:
            ratio = inquiry_ratio(d, asks_question)
            if d.is_multi_turn() and ratio < cfg.min_inquiry_ratio:
                reason = "low_inquiry_ratio"
            d = Dialogue(d.id, d.messages, {**d.meta, "inquiry_ratio": round(ratio, 4)})
        if reason:
            report.add(f"dropped:{reason}")
        else:
            kept.append(d)
    if cfg.near_dedup and kept:
        kept = _near_dedup(kept, cfg, report, progress)
    ratios = [d.meta["inquiry_ratio"] for d in kept]
    multi = [d.meta["inquiry_ratio"] for d in kept if d.is_multi_turn()]
    report.details["inquiry_ratio"] = {
        "mean": round(sum(ratios) / len(ratios), 4) if ratios else None,
        "mean_multi_turn": round(sum(multi) / len(multi), 4) if multi else None,
        "dialogues_with_question": sum(r > 0 for r in ratios),
    }
    return kept


def _near_dedup(kept: list[Dialogue], cfg: ScreenConfig, report: StepReport, progress) -> list[Dialogue]:
    hasher = MinHasher(cfg.num_perm)
    sigs = [hasher.signature(shingle_hashes("".join(m.content for m in d.messages if m.role != "system"), cfg.shingle))
            for d in progress(kept, desc="minhash")]
    clusters = near_duplicate_clusters(sigs, cfg.near_dup_threshold)
    sizes = Counter(len(c) for c in clusters)
    report.details["near_duplicate_clusters"] = {
        "clusters": len(clusters),
        "dialogues_in_clusters": sum(len(c) for c in clusters),
        "size_histogram": {str(k): v for k, v in sorted(sizes.items())},
        "examples": [[kept[i].id for i in c[:5]] for c in clusters[:10]],  # ids only, never text
    }
    drop: set[int] = set()
    for c in clusters:
        cid = hashlib.sha256(kept[c[0]].id.encode() + _content_key(kept[c[0]]).encode()).hexdigest()[:16]
        for i in c:
            kept[i] = Dialogue(kept[i].id, kept[i].messages, {**kept[i].meta, "dup_cluster": cid})
        if cfg.near_dup_action == "drop":
            drop.update(c[1:])  # keep the first member: input order decides, so reruns agree
    report.add("dropped:near_duplicate", len(drop))
    return [d for i, d in enumerate(kept) if i not in drop]
