"""`zhongjing init-model` reads its corpus the way `data convert` does: a folder's README/SOURCE.md is not
corpus, and a LaTeX book's chapters are read once (through the book's main .tex), not twice."""

from __future__ import annotations

from pathlib import Path

import zhongjing.model.init_model as im
import json


def _corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "book" / "content").mkdir(parents=True)
    (root / "SOURCE.md").write_text("# Source\nLicense: see upstream notes.\n", encoding="utf-8")
    (root / "book" / "main.tex").write_text(
        "\\documentclass{book}\n\\begin{document}\n\\input{content/chap01}\n\\end{document}\n", encoding="utf-8")
    (root / "book" / "content" / "chap01.tex").write_text(
        "\\chapter{免疫}\n免疫系统由免疫器官、免疫细胞和免疫分子组成。\n", encoding="utf-8")
    (root / "notes.txt").write_text("血压高的人要少吃盐。\n", encoding="utf-8")
    return root


def test_init_model_reads_each_text_once_and_skips_docs(tmp_path, monkeypatch):
    root = _corpus(tmp_path)
    seen: list[str] = []
    real = im.train_tokenizer

    def spy(texts, *a, **kw):
        texts = list(texts)
        seen.extend(texts)
        return real(texts, *a, **kw)

    monkeypatch.setattr(im, "train_tokenizer", spy)
    out = im.init_model(im.InitModelConfig(corpus=[str(root)], output=str(tmp_path / "m"), vocab_size=300,
                                           hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                           intermediate_size=64, max_position_embeddings=128))
    joined = "\n".join(seen)
    assert joined.count("免疫系统由免疫器官") == 1  # once via main.tex, not again as a stray chapter file
    assert "血压高的人要少吃盐" in joined
    assert "License" not in joined and "Source" not in joined  # SOURCE.md is documentation, not corpus
    hashed = sorted(Path(f["path"]).name for f in json.loads((out / "meta.json").read_text(encoding="utf-8"))["corpus_files"])
    assert hashed == ["chap01.tex", "main.tex", "notes.txt"]  # an edited chapter still changes meta.json
