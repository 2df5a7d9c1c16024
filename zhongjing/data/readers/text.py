"""Plain text and LaTeX books → Documents for continued pre-training.

Plain text: one Document per paragraph block (lines separated by blank lines).
LaTeX: one Document per chapter introduction and per \\section, commands stripped to readable text
(headings kept as lines, tables as tab-separated rows; figures, labels, cross-references and
bibliography sections dropped). A driver
file (\\begin{document} with \\input lines) reads the chapters it includes, in order.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from zhongjing.data.readers.base import Source, clean_meta, decode, register
from zhongjing.data.readers.consult import blocks
from zhongjing.data.schema import Document
from zhongjing.errors import DataError


@register("text", "document", "plain text: one Document per block of lines between blank lines")
def _text(src: Source) -> Iterator[Any]:
    for n, lines in blocks(src.lines()):
        yield Document("\n".join(lines), {"source": "text", "file": src.path.name, "line": n})


# ---------------------------------------------------------------------------- LaTeX

_COMMENT = re.compile(r"(?<!\\)%.*")
_HEADING = re.compile(r"\\(chapter|section)\*?\s*(?:\[[^\]]*\])?\s*\{")
_INPUT = re.compile(r"\\(?:input|include)\s*\{([^}]+)\}")
_SPECIAL = re.compile(r"[\\{}$&~]")

# command → (number of brace arguments, index of the one to keep or None to drop all)
_ARGS = {
    "label": (1, None), "ref": (1, None), "pageref": (1, None), "eqref": (1, None), "cite": (1, None),
    "includegraphics": (1, None), "url": (1, None), "input": (1, None), "include": (1, None),
    "setcounter": (2, None), "setlength": (2, None), "addcontentsline": (3, None), "captionsetup": (1, None),
    "vspace": (1, None), "hspace": (1, None), "usepackage": (1, None), "CJKfontspec": (1, None),
    "hypertarget": (2, 1), "href": (2, 1), "multirow": (2, 1), "multicolumn": (3, 2), "tabincell": (2, 1),
    "footnote": (1, 0), "tablefootnote": (1, 0),
}
_NEWLINE = {"\\", "tabularnewline", "newline", "par", "item", "caption", "chapterabstract"}
_HEADINGS = {"chapter", "section", "subsection", "subsubsection", "paragraph", "subparagraph"}
_SKIP_ENVS = {"figure", "figure*", "tikzpicture", "verbatim", "lstlisting", "equation*"}
_ENV_ARGS = {"tabular": 1, "longtable": 1, "tabularx": 2, "minipage": 1, "array": 1, "multicols": 1}
_SYMBOLS = {"times": "×", "pm": "±", "leq": "≤", "le": "≤", "geq": "≥", "ge": "≥", "sim": "～", "cdot": "·",
            "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "mu": "μ", "kappa": "κ", "lambda": "λ",
            "rightarrow": "→", "to": "→", "leftarrow": "←", "uparrow": "↑", "downarrow": "↓", "circ": "°",
            "degree": "°", "percent": "%", "quad": " ", "qquad": " ", "apostrophe": "'", "textasciitilde": "～"}
REFERENCE_HEADINGS = {"参考文献", "参考书目", "References", "Bibliography"}
_LEFTOVER_REF = re.compile(r"[（(]\s*(?:见|如)?\s*[图表]\s*(?:[、，,和及]\s*)*[）)]")


def _group(s: str, i: int, open_: str = "{", close: str = "}") -> tuple[str, int]:
    """Content of the balanced group starting at s[i] == open_, and the index after it."""
    depth, j = 0, i
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return s[i + 1:j], j + 1
        j += 1
    return s[i + 1:], len(s)  # unbalanced: take the rest rather than fail on one brace


def _args(s: str, i: int, n: int) -> tuple[list[str], int]:
    """Skip [options] (and the '*' of \\multirow{2}*{...}); read up to n {arguments}."""
    args = []
    while i < len(s):
        j = i
        while j < len(s) and s[j] in " \t":
            j += 1
        if j < len(s) and s[j] == "[":
            i = _group(s, j, "[", "]")[1]
        elif j < len(s) and s[j] == "*" and args:
            i = j + 1
        elif j < len(s) and s[j] == "{" and len(args) < n:
            arg, i = _group(s, j)
            args.append(arg)
        else:
            break
    return args, i


def _strip(s: str, math: bool = False) -> str:
    """LaTeX → text; fast on mostly-prose input because it jumps between special characters."""
    out: list[str] = []
    i = 0
    while i < len(s):
        m = _SPECIAL.search(s, i)
        if m is None:
            out.append(s[i:])
            break
        out.append(s[i:m.start()])
        i = m.start()
        c = s[i]
        if c in "{}":
            i += 1
        elif c == "&":
            out.append("\t")
            i += 1
        elif c == "~":
            out.append(" ")
            i += 1
        elif c == "$":
            j = s.find("$", i + 1)
            j = len(s) if j < 0 else j
            out.append(_strip(s[i + 1:j], math=True))
            i = j + 1
        else:
            cm = re.match(r"\\([A-Za-z@]+\*?|.)", s[i:]) or re.match(r"\\", s[i:])
            name = cm.group(1) if cm.groups() else ""
            i += cm.end()
            if not name[:1].isalpha():  # \%, \&, \_, \\ …
                out.append("\n" if name == "\\" else name)
                continue
            text, i = _command(s, i, name.rstrip("*"))
            out.append(text)
    return "".join(out)


def _command(s: str, i: int, name: str) -> tuple[str, int]:
    if name == "begin":
        args, i = _args(s, i, 1)
        env = args[0] if args else ""
        if env in _SKIP_ENVS:
            end = s.find("\\end{" + env + "}", i)
            return "\n", (len(s) if end < 0 else end + len(env) + 6)
        _, i = _args(s, i, _ENV_ARGS.get(env, 0))
        return "\n", i
    if name == "end":
        _, i = _args(s, i, 1)
        return "\n", i
    if name in _SYMBOLS:
        return _SYMBOLS[name], i
    if name in _ARGS:
        n, keep = _ARGS[name]
        args, i = _args(s, i, n)
        return (_strip(args[keep]) if keep is not None and keep < len(args) else ""), i
    args, i = _args(s, i, 1)
    body = _strip(args[0]) if args else ""
    if name in _HEADINGS:
        return f"\n\n{body.strip()}\n\n", i
    if name in _NEWLINE:
        return f"\n{body}\n", i
    return body, i  # \textbf{x}, \textsubscript{x}, \ce{x} … keep the text; bare \small, \centering … vanish


def _cjk(c: str) -> bool:
    return "\u3000" <= c <= "\u9fff" or "\uff00" <= c <= "\uffef"


def tidy(text: str) -> str:
    """Join lines of a paragraph (no space between Chinese characters), one blank line between paragraphs."""
    text = _LEFTOVER_REF.sub("", text)
    paras = []
    for para in re.split(r"\n\s*\n", text):
        lines = [re.sub(r" {2,}", " ", re.sub(r"[ \t]*\t[ \t]*", "\t", ln)).strip() for ln in para.split("\n")]
        lines = [ln for ln in lines if ln]
        if not lines:
            continue
        joined = lines[0]
        for ln in lines[1:]:
            if "\t" in ln or "\t" in joined.rsplit("\n", 1)[-1]:
                joined += "\n" + ln  # table rows stay rows
            else:
                joined += ("" if _cjk(joined[-1]) or _cjk(ln[0]) else " ") + ln
        paras.append(joined)
    return "\n\n".join(paras)


def _sections(body: str) -> Iterator[tuple[str, str, str]]:
    """(chapter title, section title, raw body) for the intro of each chapter and each section."""
    chapter, section, start = "", "", 0
    for m in _HEADING.finditer(body):
        yield chapter, section, body[start:m.start()]
        title, start = _group(body, m.end() - 1)
        title = tidy(_strip(title))
        if m.group(1) == "chapter":
            chapter, section = title, ""
        else:
            section = title
    yield chapter, section, body[start:]


def tex_documents(path: Path, text: str, encoding: str | None, seen: set[Path]) -> Iterator[Document]:
    text = "\n".join(_COMMENT.sub("", line) for line in text.splitlines())
    begin = text.find("\\begin{document}")
    if begin >= 0:  # a driver: its preamble is not text; follow its \input lines in order
        body = text[begin + len("\\begin{document}"):].split("\\end{document}")[0]
        for n, m in enumerate(_INPUT.finditer(body)):
            target = (path.parent / m.group(1)).with_suffix(".tex") if not m.group(1).endswith(".tex") else path.parent / m.group(1)
            if not target.is_file():
                line = text[:begin].count("\n") + body[:m.start()].count("\n") + 1
                raise DataError(f"\\input file not found: {m.group(1)}", str(path), f"line {line}")
            if target.resolve() in seen:
                raise DataError(f"\\input cycle through {m.group(1)}", str(path))
            yield from tex_documents(target, decode(target.read_bytes(), target, encoding), encoding,
                                     seen | {target.resolve()})
        body = _INPUT.sub("", body)
    else:
        body = text
    for chapter, section, raw in _sections(body):
        if section in REFERENCE_HEADINGS:  # bibliographies are citation lists, not prose to learn from
            continue
        content = tidy(_strip(raw))
        if content:
            heading = section or chapter
            doc_text = f"{heading}\n\n{content}" if heading and not content.startswith(heading) else content
            yield Document(doc_text, clean_meta(source="tex", file=path.name, chapter=chapter, section=section))


@register("tex", "document", "LaTeX (.tex) books: commands stripped; one Document per chapter intro and per section")
def _tex(src: Source) -> Iterator[Any]:
    yield from tex_documents(src.path, src.text, src.encoding, {src.path.resolve()})


def included_tex(paths: list[Path]) -> set[Path]:
    """Files that a driver among `paths` \\input-s: a directory read takes them through the driver only."""
    out = set()
    for p in paths:
        if p.suffix == ".tex":
            text = p.read_text(encoding="utf-8", errors="replace")
            if "\\begin{document}" in text:
                for m in _INPUT.finditer(_COMMENT.sub("", text)):
                    name = m.group(1) if m.group(1).endswith(".tex") else m.group(1) + ".tex"
                    out.add((p.parent / name).resolve())
    return out
