"""Precision and memory on CPU: bf16 autocast over fp32 master weights and gradient checkpointing train (same loss
curve as fp32 within tolerance), a bf16-stored base trains LoRA, QLoRA (4-bit NF4 base through bitsandbytes' CPU
backend) trains sft/rm/dpo and its adapter merges correctly, and a folder with its own modelling code
(trust_remote_code, like Baichuan2 / InternLM2) is refused by name unless trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from train_helpers import dialogues, write_jsonl
from zhongjing.config import load_config
from zhongjing.errors import ZhongjingError
from zhongjing.model.families import build_family
from zhongjing.model.load import load_model, load_tokenizer


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("precision")
    rows = dialogues(40, seed=7)
    texts = [m["content"] for r in dialogues(200, seed=1) for m in r["messages"]]
    pairs = [{"question": r["messages"][0]["content"], "response_chosen": r["messages"][-1]["content"],
              "response_rejected": "不知道。"} for r in rows]
    return {"base": build_family("qwen2", d / "base", texts), "dir": d,
            "dialogues": write_jsonl(d / "dialogues.jsonl", rows), "pairs": write_jsonl(d / "pairs.jsonl", pairs)}


def sft(setup, out: Path, *extra: str) -> list[float]:
    from zhongjing.train.sft import SFTConfig, run

    run(load_config(SFTConfig, overrides=[
        f"model={setup['base']}", f"output={out}", f"data=[{{path: {setup['dialogues']}}}]", "max_length=256",
        "val_fraction=0.0", "lora.dropout=0.0", "train.max_steps=6", "train.batch_size=8", "train.lr=1e-2",
        "train.warmup_ratio=0", "train.progress=false", "train.threads=1", "train.overwrite=true", *extra]))
    return [json.loads(x)["loss"] for x in (out / "logs" / "train.jsonl").read_text().splitlines()]


def test_bf16_autocast_and_gradient_checkpointing_follow_the_fp32_curve(setup, tmp_path):
    fp32 = sft(setup, tmp_path / "fp32")
    bf16 = sft(setup, tmp_path / "bf16", "train.mixed_precision=bf16")
    ckpt = sft(setup, tmp_path / "ckpt", "train.gradient_checkpointing=true")
    assert fp32[-1] < fp32[0] - 0.3
    assert ckpt == pytest.approx(fp32, abs=1e-4)  # recomputation changes nothing but memory
    assert bf16 == pytest.approx(fp32, abs=0.05)  # bf16 matmuls: same curve within rounding
    stored = sft(setup, tmp_path / "bf16-weights", "dtype=bfloat16", "train.mixed_precision=bf16")
    assert stored[-1] < stored[0] - 0.3  # a bf16-stored frozen base under LoRA (adapter weights stay fp32)


def test_qlora_trains_sft_rm_dpo_and_the_adapter_merges(setup, tmp_path):
    pytest.importorskip("bitsandbytes")
    from zhongjing.cli import main as cli
    from zhongjing.train.dpo import DPOConfig, train_dpo
    from zhongjing.train.rm import RMConfig, train_rm

    losses = sft(setup, tmp_path / "qlora", "lora.quantize=4bit")
    assert losses[-1] < losses[0] - 0.3, losses
    out = tmp_path / "qlora"
    assert json.loads((out / "meta.json").read_text())["config"]["lora"]["quantize"] == "4bit"
    # merged into the full-precision base: the adapter's change is there, up to the 4-bit rounding of the base
    assert cli(["export", "--merge", str(out), "-o", str(tmp_path / "merged")]) == 0
    ids = torch.tensor([load_tokenizer(setup["base"])("医生您好，我头疼")["input_ids"]])
    with torch.no_grad():
        merged = load_model(tmp_path / "merged")(ids).logits
        adapter = load_model(out)(ids).logits  # adapter over the full-precision base
        plain = load_model(setup["base"])(ids).logits
        four = load_model(out, quantize="4bit")(ids).logits  # adapter over the 4-bit base it was trained on
    torch.testing.assert_close(merged, adapter, atol=1e-4, rtol=1e-4)
    assert (merged - plain).abs().max() > (merged - four).abs().max()  # the adapter outweighs the 4-bit rounding
    assert (merged.softmax(-1) - four.softmax(-1)).abs().max() < 0.05  # 4-bit base ≈ full base
    common = ["max_length=128", "val_ratio=0.0", "lora.quantize=4bit", "train.max_steps=2", "train.batch_size=4",
              "train.progress=false", "train.threads=1", "train.overwrite=true"]
    rm = train_rm(load_config(RMConfig, overrides=[f"model={setup['base']}", f"data=[{setup['pairs']}]",
                                                   f"output={tmp_path / 'rm'}", *common]))
    assert json.loads((rm / "meta.json").read_text())["task"] == "reward"
    train_dpo(load_config(DPOConfig, overrides=[f"model={setup['base']}", f"data=[{setup['pairs']}]",
                                                f"output={tmp_path / 'dpo'}", *common]))
    with pytest.raises(Exception, match="finetune=lora"):
        sft(setup, tmp_path / "bad", "lora.quantize=4bit", "finetune=full")


REMOTE_CONFIG = '''from transformers import LlamaConfig


class ZjTinyConfig(LlamaConfig):
    model_type = "zjtiny"
'''
REMOTE_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_zjtiny import ZjTinyConfig


class ZjTinyForCausalLM(LlamaForCausalLM):
    config_class = ZjTinyConfig
'''


def test_remote_code_folder_is_refused_by_name_unless_trusted(setup, tmp_path, monkeypatch):
    """A folder shaped like Baichuan2's: config.json names an architecture transformers does not have and maps it
    to Python files in the folder."""
    import shutil

    folder = tmp_path / "remote"
    shutil.copytree(build_family("llama", tmp_path / "llama", ["头疼", "发烧"] * 50), folder)
    (folder / "configuration_zjtiny.py").write_text(REMOTE_CONFIG)
    (folder / "modeling_zjtiny.py").write_text(REMOTE_MODEL)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="zjtiny", architectures=["ZjTinyForCausalLM"],
               auto_map={"AutoConfig": "configuration_zjtiny.ZjTinyConfig",
                         "AutoModelForCausalLM": "modeling_zjtiny.ZjTinyForCausalLM"})
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.delenv("ZHONGJING_TRUST_REMOTE_CODE", raising=False)
    with pytest.raises(ZhongjingError, match=r"modeling_zjtiny\.py.*ZHONGJING_TRUST_REMOTE_CODE=1"):
        load_model(folder)
    monkeypatch.setenv("ZHONGJING_TRUST_REMOTE_CODE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    model = load_model(folder)
    assert type(model).__name__ == "ZjTinyForCausalLM"
    losses = sft({**setup, "base": folder}, tmp_path / "sft")  # LoRA targets found on the custom class too
    assert losses[-1] < losses[0]


def test_qlora_ppo_and_grpo_two_updates(setup, tmp_path):
    """Qwen2 has biased q/k/v layers: bitsandbytes would switch them to its CPU inference kernel during the rollout's
    generation and then fail in the update (`result += bias` on a leaf view) unless the training layout is kept."""
    pytest.importorskip("bitsandbytes")
    from zhongjing.train.grpo import GRPOConfig, train_grpo
    from zhongjing.train.ppo import PPOConfig, train_ppo

    rl = [f"model={setup['base']}", f"prompts=[{setup['dialogues']}]", "eval_prompts=0", "max_length=128",
          "generation.max_new_tokens=6", "reward.ask_question=1.0", "lora.quantize=4bit", "train.max_steps=2",
          "train.batch_size=4", "train.grad_accum=1", "train.progress=false", "train.threads=1"]
    ppo = train_ppo(load_config(PPOConfig, overrides=rl + [f"output={tmp_path / 'ppo'}"]))
    grpo = train_grpo(load_config(GRPOConfig, overrides=rl + [f"output={tmp_path / 'grpo'}", "grpo.group_size=2"]))
    for out in (ppo, grpo):
        meta = json.loads((out / "meta.json").read_text())
        assert meta["step"] == 2 and meta["config"]["lora"]["quantize"] == "4bit"


@pytest.mark.parametrize("words, hidden", [
    (["train", "ppo", "--config", "{cfg_none}"], True),  # a pipeline-written config: `quantize: none` in full
    (["train", "sft", "--config", "{cfg_4bit}"], False),
    (["train", "sft", "--config", "{cfg_none}", "lora.quantize=4bit"], False),
])
def test_bitsandbytes_is_hidden_only_from_processes_that_ask_for_no_4bit_base(tmp_path, words, hidden):
    """peft imports bitsandbytes whenever it is installed (~1 s of start-up per stage process); a command whose
    config says `quantize: none` must not pay for it, and one that asks for 4-bit must still get it."""
    import subprocess
    import sys

    (tmp_path / "none.yaml").write_text("lora:\n  r: 8\n  quantize: none\n", encoding="utf-8")
    (tmp_path / "4bit.yaml").write_text("lora:\n  quantize: '4bit'\n", encoding="utf-8")
    argv = [w.format(cfg_none=tmp_path / "none.yaml", cfg_4bit=tmp_path / "4bit.yaml") for w in words]
    code = ("import sys; from zhongjing.model.load import skip_bitsandbytes; "
            f"skip_bitsandbytes({argv!r}); print(sys.modules.get('bitsandbytes', 'absent') is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(hidden)
