"""matplotlib set-up shared by every figure: headless backend, and a CJK font when one is installed."""

from __future__ import annotations

from zhongjing.errors import require

CJK_FONTS = ("WenQuanYi Micro Hei", "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "SimHei", "PingFang SC")


def pyplot():
    """(pyplot, has_cjk): callers label in Chinese when has_cjk, else in English (no tofu boxes)."""
    mpl = require("matplotlib", "plots")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    cjk = _cjk_fonts(font_manager)
    if not cjk:  # matplotlib's font cache predates a font installed later: register the files directly
        for path in font_manager.findSystemFonts():
            if any(k in path.lower() for k in ("wqy", "notosanscjk", "noto-cjk", "sourcehan")):
                font_manager.fontManager.addfont(path)
        cjk = _cjk_fonts(font_manager)
    if cjk:
        mpl.rcParams["font.sans-serif"] = cjk + list(mpl.rcParams["font.sans-serif"])
        mpl.rcParams["font.family"] = "sans-serif"
        mpl.rcParams["axes.unicode_minus"] = False
    return plt, bool(cjk)


def _cjk_fonts(font_manager) -> list[str]:
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [f for f in CJK_FONTS if f in installed]


def distinct_colors(n: int) -> list[tuple]:
    """n colours, all different: tab10 up to 10, tab20 up to 20, then tab20+tab20b+tab20c (60), then evenly
    spaced hues — a legend never shows two groups in one colour."""
    from matplotlib import colormaps

    if n <= 10:
        return list(colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(colormaps["tab20"].colors[:n])
    pool = [c for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors]
    if n <= len(pool):
        return pool[:n]
    hsv = colormaps["hsv"]
    return [tuple(hsv(i / n)[:3]) for i in range(n)]
