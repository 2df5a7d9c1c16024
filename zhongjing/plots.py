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
