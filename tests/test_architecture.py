"""The package's import graph: no circles, and imports only go down the layers (CONTRIBUTING.md, "Layers").

Every `import` of the package is read with `ast`, function-local ones included (a hidden import is still an
arrow). Modules on the same layer stay independent of each other, except at the bottom (errors/io/config).
"""

from __future__ import annotations

import ast
from pathlib import Path

import zhongjing

ROOT = Path(zhongjing.__file__).resolve().parent

# Top-level module or package of zhongjing → layer. Imports may only go to a lower layer, or within one unit.
LAYERS = {
    "__init__": 0, "errors": 0, "io": 0, "config": 0, "hints": 0, "plots": 0,
    "data": 1, "demo": 1, "llm": 1,
    "model": 2,
    "train": 3, "generate": 3, "dataset": 3, "score": 3,
    "consult": 3.5,  # consultation episodes: use train/generate/dataset, used by eval's consultation kind
    "eval": 4, "serve": 4, "annotate": 4,
    "pipeline": 5,
    "cli": 6,
}
BOTTOM = 0  # units on the bottom layer may import each other (config reads io and errors)


def module_name(path: Path) -> str:
    parts = ["zhongjing", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported zhongjing module, line) for every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "zhongjing"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "zhongjing":
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            out += [(s, node.lineno) for s in subs] or [(target, node.lineno)]
    return out


def unit(module: str) -> str:
    """The top-level module or package a module belongs to; entry points (`__main__`) belong to the CLI."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "cli"
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, list[tuple[str, int]]]:
    mods = modules()
    known = set(mods)
    return {m: [(t, line) for t, line in imports(p, m, known) if t != m] for m, p in mods.items()}


def test_every_module_has_a_layer():
    missing = sorted({unit(m) for m in modules()} - set(LAYERS))
    assert not missing, f"give these a layer in tests/test_architecture.py and CONTRIBUTING.md: {missing}"


def test_imports_only_go_down_the_layers():
    bad = []
    for src, targets in graph().items():
        for dst, line in targets:
            us, ud = unit(src), unit(dst)
            ls, ld = LAYERS.get(us), LAYERS.get(ud)
            if us == ud or ls is None or ld is None:
                continue
            if ld > ls or (ld == ls and ls != BOTTOM):
                bad.append(f"{src}:{line} imports {dst} ({us}: layer {ls} → {ud}: layer {ld})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_circles():
    g = {m: sorted({t for t, _ in ts if t in ts_known}) for ts_known in [set(modules())]
         for m, ts in graph().items()}
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components, iteratively (no recursion limit)
        work = [(v, iter(g[v]))]
        index[v] = low[v] = len(index)
        stack.append(v), on.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w), on.add(w)
                    work.append((w, iter(g[w])))
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        circles.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    assert not circles, "import circles:\n" + "\n".join(" ↔ ".join(c) for c in circles)


def test_the_checker_sees_hidden_and_relative_imports(tmp_path):
    """The parser itself: a function-local import and a relative import are arrows too."""
    src = "def f():\n    from zhongjing.pipeline import run\n\nfrom .schema import Dialogue\nfrom . import render\n"
    f = tmp_path / "x.py"
    f.write_text(src)
    known = set(modules())
    found = {t for t, _ in imports(f, "zhongjing.data.x", known)}
    assert {"zhongjing.pipeline.run", "zhongjing.data.schema", "zhongjing.data.render"} <= found


def test_every_module_a_stage_row_names_exists():
    """A misspelt or moved module in a Stage row would silently drop out of that stage's code version."""
    from zhongjing.model.identity import module_files
    from zhongjing.pipeline.stages import STAGES

    missing = [(s.name, m) for s in STAGES.values() for m in (s.module, *s.code) if not module_files(m)]
    assert not missing, f"Stage rows name modules that do not exist: {missing}"
