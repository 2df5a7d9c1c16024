"""Issue 14: every fault of a model folder is one line naming the file, in chat, serve and the stages (all load
through model/load.py), never a traceback from safetensors / tokenizers / transformers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zhongjing.errors import ZhongjingError
from zhongjing.model.load import context_of, load_model, load_tokenizer


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    from zhongjing.model.init_model import InitModelConfig, build_model, train_tokenizer

    out = tmp_path_factory.mktemp("folders") / "good"
    tok = train_tokenizer(["头痛 发烧 咳嗽 胸闷"] * 50, vocab_size=300, min_frequency=1)
    model = build_model(InitModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2,
                                        intermediate_size=64, max_position_embeddings=64), tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _half(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


CASES = {  # name → (damage, loader that must fail, words the one line must contain)
    "truncated weights": (lambda d: _half(d / "model.safetensors"), load_model, "model.safetensors: truncated"),
    "garbage weights": (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 64), load_model,
                        "model.safetensors: not a safetensors file"),
    "empty weights": (lambda d: (d / "model.safetensors").write_bytes(b""), load_model, "model.safetensors: truncated"),
    "no weights": (lambda d: (d / "model.safetensors").unlink(), load_model, "no weights file"),
    "invalid config": (lambda d: (d / "config.json").write_text('{"hidden_size": 32,'), context_of,
                       "config.json: invalid JSON at line 1"),
    "config not an object": (lambda d: (d / "config.json").write_text("[1]"), load_model, "config.json: must be"),
    "unknown model type": (lambda d: (d / "config.json").write_text('{"model_type": "no_such_arch"}'), load_model,
                           "model type"),
    "missing tokenizer.json": (lambda d: (d / "tokenizer.json").unlink(), load_tokenizer, "tokenizer.json is missing"),
    "broken tokenizer.json": (lambda d: (d / "tokenizer.json").write_text("{oops"), load_tokenizer,
                              "tokenizer.json or tokenizer_config.json is damaged"),
    "broken meta.json": (lambda d: (d / "meta.json").write_text("{"), None, "meta.json: invalid JSON"),
    # a chat template with a syntax error, or one that raises, failed at the first conversation with a jinja traceback
    "broken chat template": (lambda d: _template(d, "{% for m in messages %}{{ m.content "), load_tokenizer,
                             "the chat template cannot render a one-message conversation (TemplateSyntaxError"),
    "raising chat template": (lambda d: _template(d, "{{ raise_exception('roles') }}"), load_tokenizer,
                              "(TemplateError: roles)"),
}


def _template(d: Path, text: str) -> None:
    (d / "chat_template.jinja").write_text(text, encoding="utf-8")
    cfg = d / "tokenizer_config.json"  # the template may live in either file: put it in both
    import json

    data = json.loads(cfg.read_text(encoding="utf-8"))
    if "chat_template" in data:
        data["chat_template"] = text
        cfg.write_text(json.dumps(data), encoding="utf-8")


def _broken(good: Path, tmp_path: Path, case: str) -> Path:
    d = tmp_path / case.replace(" ", "_")
    shutil.copytree(good, d)
    CASES[case][0](d)
    return d


@pytest.mark.parametrize("case", list(CASES))
def test_each_fault_is_one_line_naming_the_file(good, tmp_path, case):
    d = _broken(good, tmp_path, case)
    loader, words = CASES[case][1], CASES[case][2]
    if loader is None:
        from zhongjing.model.load import read_meta as loader
    with pytest.raises(ZhongjingError) as e:
        loader(d)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and str(d) in msg, msg


@pytest.mark.parametrize("command, case", [("chat", "truncated weights"), ("serve", "missing tokenizer.json")])
def test_chat_and_serve_print_one_line(good, tmp_path, command, case):
    d = _broken(good, tmp_path, case)
    extra = ["--port", "0"] if command == "serve" else []
    proc = subprocess.run([sys.executable, "-m", "zhongjing", command, "--model", str(d), *extra], input="hi\n",
                          capture_output=True, text=True, timeout=180)
    err = [line for line in proc.stderr.splitlines() if line.strip() and "WARNING" not in line and "Warning" not in line]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(err) == 1 and CASES[case][2] in err[0], err
