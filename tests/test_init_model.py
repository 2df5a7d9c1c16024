"""`zhongjing init-model` reads its corpus the way `data convert` does: a folder's README/SOURCE.md is not
corpus, and a LaTeX book's chapters are read once (through the book's main .tex), not twice; impossible shapes are
refused before the tokenizer trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import zhongjing.model.init_model as im


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


@pytest.mark.parametrize("key, message", [
    ("vocab_size=100", "vocab_size must be ≥ 259"),  # silently gave 259 words
    ("max_position_embeddings=0", "max_position_embeddings must be ≥ 1"),  # built a model that reads nothing
    ("num_layers=0", "num_layers must be ≥ 1"),
    ("min_frequency=0", "min_frequency must be ≥ 1"),
    ("hidden_size=9 num_heads=3 num_kv_heads=3", "must be even"),  # built, then every forward raised in rotary
    ("hidden_size=30", "hidden_size must divide by num_heads"),  # was checked only after the tokenizer trained
])
def test_impossible_shapes_are_refused_before_the_tokenizer_trains(tmp_path, capsys, monkeypatch, key, message):
    from zhongjing.cli import main as cli

    monkeypatch.setattr(im, "train_tokenizer", lambda *a, **kw: pytest.fail("trained before the check"))
    assert cli(["init-model", "--corpus", str(_corpus(tmp_path)), "-o", str(tmp_path / "m"), *key.split()]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zhongjing: error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "m").exists()
