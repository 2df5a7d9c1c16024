"""pt and sft train the tiny model for real: perplexity and dialogue loss go down, LoRA leaves the base alone,
export --merge reproduces base+adapter logits, and adapter chains (PT LoRA → SFT LoRA) load and merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.train_helpers import dialogues, tiny_model, write_docs, write_jsonl
from zhongjing.io import sha256_file
from zhongjing.model.load import load_model, load_tokenizer
from zhongjing.train.common import TrainSettings
from zhongjing.train.lm import lm_loss
from zhongjing.train.pt import PTConfig, PTSource, load_documents
from zhongjing.train.pt import run as run_pt
from zhongjing.train.sft import SFTConfig, SFTSource, load_dialogues
from zhongjing.train.sft import run as run_sft


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("train-stages") / "base")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("train-data")
    return {"docs": write_docs(d / "docs.jsonl", 300),
            "dialogues": write_jsonl(d / "dialogues.jsonl", dialogues(240, seed=5))}


def settings(**kw) -> TrainSettings:
    return TrainSettings(**({"batch_size": 8, "lr": 3e-3, "warmup_ratio": 0.1, "progress": False} | kw))


@torch.no_grad()
def val_loss(model_dir, data) -> float:
    model = load_model(model_dir)
    loss = n = 0.0
    for b in data.val_batches():
        l, _ = lm_loss(model, b)
        loss, n = loss + l.item(), n + b["n"]
    return loss / n


def meta(out) -> dict:
    return json.loads((Path(out) / "meta.json").read_text())


@pytest.fixture(scope="module")
def pt_run(base, files, tmp_path_factory):
    cfg = PTConfig(model=str(base), output=str(tmp_path_factory.mktemp("pt") / "pt"),
                   data=[PTSource(str(files["docs"]))], block_size=64, finetune="full", train=settings(epochs=2))
    data, _, _ = load_documents(cfg, load_tokenizer(base), log=lambda *_: None)
    before = val_loss(base, data)
    return cfg, data, before, run_pt(cfg)


def test_pt_lowers_validation_perplexity(base, files, pt_run):
    cfg, data, before, res = pt_run
    m = meta(cfg.output)
    assert m["stage"] == "pt" and m["kind"] == "full" and m["base_model"] == str(base.resolve())
    assert m["data"][0]["sha256"] == sha256_file(files["docs"]) and len(m["inputs_hash"]) == 64
    ppl = [h["val_ppl"] for h in m["metrics"]["history"]]
    assert len(ppl) == 2 and ppl[-1] < ppl[0] < 0.5 * torch.tensor(before).exp().item()
    assert val_loss(cfg.output, data) == pytest.approx(res.best_val, rel=1e-5)  # OUT/ is the best checkpoint


def test_sft_lora_learns_dialogues_and_leaves_base_untouched(pt_run, files, tmp_path):
    base = Path(pt_run[0].output)  # SFT starts from the pre-trained model, as in the paper
    base_hash = sha256_file(base / "model.safetensors")
    cfg = SFTConfig(model=str(base), output=str(tmp_path / "sft"), data=[SFTSource(str(files["dialogues"]))],
                    max_length=256, train=settings(epochs=2, lr=1e-2))
    tok = load_tokenizer(base)
    data, _, stats = load_dialogues(cfg, tok, {tok.eos_token_id}, log=lambda *_: None)
    multi, single = stats["pools"]["multi"]["per_epoch"], stats["pools"]["single"]["per_epoch"]
    assert multi == stats["pools"]["multi"]["train"] and abs(multi / 7 - single) <= 0.5  # 7 : 1, multi used whole
    assert stats["render"]["rendered"] > 0 and stats["padding_fraction"] < 0.2
    before = val_loss(base, data)
    res = run_sft(cfg)
    history = [h["val_loss"] for h in res.history]
    assert history[-1] < history[0] < before and res.best_val < before - 0.3, (before, history)
    assert sha256_file(base / "model.safetensors") == base_hash
    m = meta(cfg.output)
    assert m["kind"] == "adapter" and (Path(cfg.output) / "adapter_config.json").exists()
    assert not (Path(cfg.output) / "model.safetensors").exists()

    trained = load_model(cfg.output)
    plain = load_model(base)
    base_params = dict(plain.named_parameters())
    for name, p in trained.named_parameters():
        if "lora_" not in name:  # every base weight inside the adapter model is still the original
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base_params[key]), name

    # export --merge: a standalone model with the adapter's logits
    from zhongjing.cli import main as cli

    assert cli(["export", "--merge", cfg.output, "-o", str(tmp_path / "merged")]) == 0
    merged = load_model(tmp_path / "merged")
    text = tok.apply_chat_template(dialogues(1, 9)[0]["messages"], tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trained(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(plain(ids).logits, trained(ids).logits, atol=1e-3)
    # -o onto the adapter itself or its base would destroy it (or apply the adapter twice); an earlier export is fine
    before = (Path(base) / "model.safetensors").read_bytes()
    assert cli(["export", "--merge", cfg.output, "-o", str(base)]) == 2
    assert cli(["export", "--merge", cfg.output, "-o", cfg.output]) == 2
    assert (Path(base) / "model.safetensors").read_bytes() == before
    assert (Path(cfg.output) / "adapter_config.json").exists()
    assert cli(["export", "--merge", cfg.output, "-o", str(tmp_path / "merged")]) == 0


def test_adapter_chain_pt_lora_then_sft_lora(base, files, tmp_path):
    pt = PTConfig(model=str(base), output=str(tmp_path / "pt"), data=[PTSource(str(files["docs"]))],
                  block_size=64, finetune="lora", train=settings(epochs=1, lr=1e-2, max_steps=6))
    run_pt(pt)
    assert meta(pt.output)["kind"] == "adapter"
    sft = SFTConfig(model=pt.output, output=str(tmp_path / "sft"), data=[SFTSource(str(files["dialogues"]))],
                    max_length=256, train=settings(max_steps=4, lr=1e-2))
    run_sft(sft)
    assert meta(sft.output)["base_model"] == str(Path(pt.output).resolve())
    # the chain: base ← PT adapter (merged) ← SFT adapter
    from peft import PeftModel

    by_hand = PeftModel.from_pretrained(load_model(pt.output).merge_and_unload(), sft.output)
    wrong = PeftModel.from_pretrained(load_model(base), sft.output)  # forgetting the PT adapter
    ids = torch.tensor([[5, 17, 33, 60, 2, 9]])
    with torch.no_grad():
        got = load_model(sft.output)(ids).logits
        torch.testing.assert_close(got, by_hand.eval()(ids).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, wrong.eval()(ids).logits, atol=1e-4)
