"""`zhongjing train sft` with the demo config on real data (CMtMedQA multi-turn + huatuo single-turn), and the
result chatting through plain transformers with the chat template it saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED_DATA

CMT = SHARED_DATA / "cmtmedqa_test" / "CMtMedQA_test.shared.json"
HUATUO = SHARED_DATA / "huatuo26m_test" / "huatuo26M_test.json"
pytestmark = [pytest.mark.shared,
              pytest.mark.skipif(not CMT.exists() or not HUATUO.exists(), reason=f"shared data not at {SHARED_DATA}")]


def test_demo_sft_config_on_cmtmedqa_and_huatuo_then_chat(tiny_model_dir, tmp_path):
    out = tmp_path / "sft"
    cmd = [sys.executable, "-m", "zhongjing", "train", "sft", "--config", str(REPO / "configs/demo/sft.yaml"),
           f"model={tiny_model_dir}", f"output={out}", f"data=[{{path: {CMT}}}, {{path: {HUATUO}}}]",
           "max_length=512", "train.max_steps=4", "train.batch_size=4", "train.progress=false"]
    r = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "truncated to their latest turns" in r.stdout and "padding" in r.stdout
    meta = json.loads((out / "meta.json").read_text())
    pools = meta["metrics"]["pools"]
    assert pools["multi"]["per_epoch"] == pools["multi"]["train"] > 400  # CMtMedQA's multi-turn dialogues, all
    assert abs(pools["multi"]["per_epoch"] / 7 - pools["single"]["per_epoch"]) <= 0.5  # the paper's 7 : 1
    assert pools["single"]["train"] > 5000  # huatuo is the single-turn pool, subsampled
    assert meta["metrics"]["render"]["truncated"] > 0  # long CMtMedQA dialogues keep their latest turns at 512
    assert [d["sha256"] for d in meta["data"]] and meta["kind"] == "adapter"

    # plain transformers (peft integration) loads the adapter folder over its base and uses the saved template
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert hasattr(model, "peft_config")
    chat = [{"role": "user", "content": "医生您好，我最近总是头疼，该怎么办？"}]
    enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tok.decode(enc["input_ids"][0]).endswith("<|im_start|>assistant\n")
    gen = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > enc["input_ids"].shape[1]
