"""Import clean-up: one text convention for every source, one role order for every dialogue.

Chinese text gets full-width punctuation (，。？！：；（）), digits and Latin letters are
half-width everywhere, whitespace is collapsed, speaker tags left in the text by a source
("医生：", "病人：") are removed and consecutive turns of one speaker are merged.

With `strip_boilerplate: N`, a platform's boilerplate is cut from the start of doctor turns: a leading sentence
(up to 。！？：) that opens at least N doctor turns of the whole input word for word, such as a consultation site's
"thank you for your trust, I have read your records" preamble. It is no doctor's content, and a reward model that
sees it on every real reply of one source learns to pay for it (measured: PPO then loops it). The build runs it as
its own step after de-identification (`boilerplate`); each cut sentence and its count are in the step's report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from zhongjing.dataset.report import StepReport
from zhongjing.config import at_least
from zhongjing.data.schema import Dialogue, Message


@dataclass
class NormalizeConfig:
    punctuation: bool = True  # full-width punctuation in Chinese text, half-width in the rest
    strip_speaker_tags: bool = True
    merge_same_role: bool = True
    merge_separator: str = "\n"
    strip_boilerplate: int = 0  # cut leading doctor-turn sentences that open at least this many turns (0 = off)

    def __post_init__(self):
        at_least(self, 0, "strip_boilerplate")


CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"[{CJK}]")
_LETTER_RE = re.compile(f"[{CJK}A-Za-z]")
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)
# full-width digits/letters and the ideographic space → ASCII
_WIDE = {c: c - 0xFEE0 for c in range(0xFF10, 0xFF1A)}
_WIDE.update({c: c - 0xFEE0 for c in range(0xFF21, 0xFF3B)})
_WIDE.update({c: c - 0xFEE0 for c in range(0xFF41, 0xFF5B)})
_WIDE.update({0x3000: 0x20, 0x00A0: 0x20})
_HALF_TO_FULL = {",": "，", ";": "；", ":": "：", "?": "？", "!": "！", "(": "（", ")": "）"}
_FULL_TO_HALF = {v: k for k, v in _HALF_TO_FULL.items()} | {"。": "."}
_SPEAKER = re.compile(r"^\s*(?:医生|大夫|病人|患者|用户|家属|Doctor|Patient|doctor|patient)\s*[:：]\s*")
_ASCII_ALNUM = re.compile(r"[A-Za-z0-9]")


def cjk_share(text: str) -> float:
    """Share of CJK characters among letters (CJK + Latin); 0 for text without letters."""
    letters = len(_LETTER_RE.findall(text))
    return len(_CJK_RE.findall(text)) / letters if letters else 0.0


def _is_ascii_alnum(ch: str) -> bool:
    return bool(ch) and bool(_ASCII_ALNUM.match(ch))


def _punct_chinese(text: str) -> str:
    """Half-width → full-width punctuation, except inside ASCII runs (3.5, 10:30, 1,000, a.b@c)."""
    out: list[str] = []
    opened: list[bool] = []  # per open bracket: was it made full-width? (its partner follows suit)
    n = len(text)
    for i, ch in enumerate(text):
        prev = out[-1] if out else ""  # already converted, so ")." sees "）"
        nxt = text[i + 1] if i + 1 < n else ""
        if ch in "()":
            wide = bool(_CJK_RE.search(prev + nxt))
            if ch == "(":
                opened.append(wide)
            elif opened:
                wide = opened.pop() or wide
            out.append(_HALF_TO_FULL[ch] if wide else ch)
        elif ch in _HALF_TO_FULL:
            if (_is_ascii_alnum(prev) and _is_ascii_alnum(nxt)) or (ch in ",:" and prev.isdigit() and nxt.isdigit()):
                out.append(ch)
            else:
                out.append(_HALF_TO_FULL[ch])
        elif ch == "．" and prev.isdigit() and nxt.isdigit():
            out.append(".")  # a decimal point written full-width
        elif ch == "." and prev and (_CJK_RE.match(prev) or prev in "）”」』") and (not nxt or nxt.isspace() or _CJK_RE.match(nxt)):
            out.append("。")  # sentence end after Chinese text
        else:
            out.append(ch)
    return "".join(out)


def _punct_latin(text: str) -> str:
    return "".join(_FULL_TO_HALF.get(ch, ch) for ch in text)


_SPACES = re.compile(r"[ \t\f\v]+")
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{CJK}，。？！：；（）、])[ ]+(?=[{CJK}，。？！：；（）、])")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def normalize_text(text: str, punctuation: bool = True) -> str:
    text = text.translate(_ZERO_WIDTH).translate(_WIDE).replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text).strip()
    if punctuation:
        text = _punct_chinese(text) if cjk_share(text) >= 0.5 else _punct_latin(text)
    return _SPACE_BETWEEN_CJK.sub("", text)


def normalize_dialogue(d: Dialogue, cfg: NormalizeConfig, report: StepReport) -> Dialogue | None:
    """Clean texts, drop empty turns, merge same-speaker runs; None when no user→doctor exchange is left."""
    msgs: list[Message] = []
    for m in d.messages:
        text = m.content
        if cfg.strip_speaker_tags and m.role != "system":
            stripped = _SPEAKER.sub("", text, count=1)
            if stripped != text:
                report.add("speaker_tags_removed")
                text = stripped
        new = normalize_text(text, cfg.punctuation)
        if new != m.content:
            report.add("turns_normalized")
        if not new:
            report.add("empty_turns_removed")
            continue
        if cfg.merge_same_role and msgs and msgs[-1].role == m.role:
            msgs[-1] = Message(m.role, msgs[-1].content + cfg.merge_separator + new)
            report.add("same_role_turns_merged")
            continue
        msgs.append(Message(m.role, new))
    system = [m for m in msgs[:1] if m.role == "system"]
    body = msgs[len(system):]
    while body and body[0].role != "user":
        body.pop(0)
        report.add("leading_doctor_turns_removed")
    while body and body[-1].role != "assistant":
        body.pop()
        report.add("trailing_patient_turns_removed")
    roles = [m.role for m in body]
    if not body or any(r == roles[i - 1] for i, r in enumerate(roles) if i) or "assistant" not in roles:
        # the only way alternation can fail here is merging switched off
        report.add("dropped_no_exchange" if "assistant" not in roles else "dropped_role_order")
        return None
    return Dialogue(d.id, system + body, dict(d.meta))


_LEAD = re.compile(r"[^。！？：]{4,40}[。！？：]")  # used with .match: anchored at the position given


def _leading(text: str) -> list[tuple[str, int]]:
    """The leading sentences of `text` one after another (each up to 。！？：, whitespace between them skipped), the
    first 3 at most, each with the offset in `text` where it ends."""
    out, pos = [], 0
    while len(out) < 3:
        pos += len(text[pos:]) - len(text[pos:].lstrip())
        m = _LEAD.match(text, pos)
        if not m:
            break
        out.append((m.group(0), m.end()))
        pos = m.end()
    return out


def strip_boilerplate(ds: list[Dialogue], min_count: int, report: StepReport) -> list[Dialogue]:
    """Cut boilerplate sentences (see the module docstring) from the start of doctor turns; a turn that would be left
    empty keeps its last sentence."""
    if min_count <= 0:
        return ds
    from collections import Counter

    spans = {id(m): _leading(m.content) for d in ds for m in d.messages if m.role == "assistant"}
    leads = [[s for s, _ in span] for span in spans.values()]
    counts: Counter = Counter(lead[0] for lead in leads if lead)
    plate = {s for s, n in counts.items() if n >= min_count}
    for depth in (1, 2):  # a next sentence counts where every sentence before it is boilerplate
        more = Counter(lead[depth] for lead in leads if len(lead) > depth and all(x in plate for x in lead[:depth]))
        counts.update(more)
        plate |= {s for s, n in more.items() if n >= min_count}
    if not plate:
        return ds

    def cut(text: str, span: list[tuple[str, int]]) -> str:
        end = 0
        for s, e in span:
            if s not in plate or not text[e:].strip():
                break
            end = e
        return text[end:].lstrip() if end else text

    out = []
    for d in ds:
        msgs = []
        for m in d.messages:
            text = cut(m.content, spans[id(m)]) if m.role == "assistant" else m.content
            if text != m.content:
                report.add("boilerplate_stripped_turns")
            msgs.append(Message(m.role, text) if text != m.content else m)
        out.append(Dialogue(d.id, msgs, d.meta) if any(a is not b for a, b in zip(msgs, d.messages)) else d)
    report.details["boilerplate"] = {s: counts[s] for s in sorted(plate, key=lambda s: -counts[s])}
    return out
