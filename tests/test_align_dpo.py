"""DPO: starts exactly at the reference (loss log 2), learns held-out preferences, expands K-way rankings with ties
into their pairs, resumes after a kill, and its output loads with plain transformers + peft."""

from __future__ import annotations

import json
import math

import pytest
import torch

from align_helpers import MEDICAL_PAIRS, keep_threads, kill_when, medical_base, run_cli, write_jsonl  # noqa: F401
from zhongjing.config import load_config
from zhongjing.train.dpo import DPOConfig, train_dpo

pytestmark = pytest.mark.usefixtures("keep_threads")


def dpo_args(base, data, out, *extra) -> list[str]:
    return [f"model={base}", f"data={data}", f"output={out}", "max_length=256", "val_ratio=0.3", "train.epochs=2",
            "train.batch_size=4", "train.lr=2e-3", "train.progress=false", "train.threads=1", "lora.dropout=0.0",
            "lora.r=8", "train.warmup_ratio=0", *extra]


def test_starts_at_the_reference_and_pairs_come_from_rankings(medical_base, tmp_path):
    from collections import Counter

    from zhongjing.data.render import Renderer
    from zhongjing.data.schema import Ranking
    from zhongjing.model.load import load_tokenizer
    from zhongjing.model.lora import LoraSettings, prepare_model
    from zhongjing.train.dpo import dpo_loss_fn
    from zhongjing.train.pref_batches import RankingBatches
    from zhongjing.train.prefs import encode

    tok = load_tokenizer(medical_base)
    r = Ranking.from_dict({"id": "r", "messages": [{"role": "user", "content": "咳嗽两周了怎么办？"}],
                           "responses": ["请问有没有发热？", "多喝水。", "建议尽快到医院呼吸科就诊，拍胸片、查血常规，排除肺炎和结核；"
                                         "平时多喝温水，注意休息，戒烟，避免受凉，咳嗽加重或出现发热、胸痛时及时复诊。", "不知道"],
                           "ranking": [[0], [2, 1], [3]]})
    enc = encode([r], Renderer(tok, max_length=256, strategy="last"), Counter(), with_targets=True)
    batch = RankingBatches(enc, [], 1, seed=0, group=1, pad_id=tok.pad_token_id, per="pair").collate(enc)
    assert batch["n"] == 5  # (0,2) (0,1) (0,3) (2,3) (1,3): the tie gives no pair
    # targets are the answer tokens only (+ end of turn), shifted to the position that predicts them
    answer = [t for t in batch["targets"][batch["seg"] == 1].tolist() if t != -100]
    assert tok.decode(answer) == "多喝水。" + tok.eos_token
    model = prepare_model(medical_base, "lora", LoraSettings(r=4, dropout=0.0))
    loss, m = dpo_loss_fn(model, batch, beta=0.1, label_smoothing=0.0)
    # a fresh adapter is zero: policy == reference, every pair's loss is log 2
    assert loss.item() == pytest.approx(5 * math.log(2), rel=1e-5) and m["margin"] == pytest.approx(0, abs=1e-5)
    # the four answers packed into shared rows score exactly as one per row, and as each answer alone
    from zhongjing.train.dpo import sequence_logprobs

    padded = RankingBatches(enc, [], 1, seed=0, group=1, pad_id=tok.pad_token_id, per="pair", pack=False).collate(enc)
    assert "position_ids" in batch and batch["input_ids"].shape[0] < 4
    with torch.no_grad():
        packed_lp, padded_lp = sequence_logprobs(model, batch), sequence_logprobs(model, padded)
        alone = [model(input_ids=torch.tensor([ids])).logits.log_softmax(-1)[0] for ids in enc[0].ids]
    by_hand = [sum(lp[j, t] for j, t in enumerate(tg) if t != -100).item() for lp, tg in zip(alone, enc[0].targets)]
    assert torch.allclose(packed_lp, padded_lp, atol=1e-4) and packed_lp.tolist() == pytest.approx(by_hand, abs=1e-3)


def test_learns_held_out_medical_preferences(medical_base, tmp_path):
    out = train_dpo(load_config(DPOConfig, overrides=dpo_args(medical_base, MEDICAL_PAIRS, tmp_path / "dpo")))
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    # counts are what was used: of the 30 held out, those with an answer longer than max_length=256 are left out
    assert meta["stage"] == "dpo" and meta["counts"]["val"] >= 20 and meta["counts"]["too_long"] > 0
    assert meta["metrics"]["val_accuracy"] >= 0.6 and meta["metrics"]["val_margin"] > 0, meta["metrics"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from zhongjing.model.load import load_model

    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(medical_base), out).eval()
    ids = torch.tensor([[5, 17, 300, 42, 9]])
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, load_model(out)(input_ids=ids).logits, atol=1e-5)


def test_resume_after_kill(medical_base, tmp_path):
    from zhongjing.train.checkpoint import checkpoints

    rows = [json.loads(x) for x in MEDICAL_PAIRS.read_text(encoding="utf-8").splitlines()[:24]]
    data = write_jsonl(tmp_path / "pairs.json", rows)
    args = dpo_args(medical_base, data, "X", "train.save_every=2", "max_length=128", "train.batch_size=2")
    args = [a for a in args if not a.startswith("output=")]
    train_dpo(load_config(DPOConfig, overrides=args + [f"output={tmp_path / 'full'}"]))
    killed = tmp_path / "killed"
    code = kill_when(["train", "dpo", *args, f"output={killed}"], lambda: len(checkpoints(killed)) >= 1)
    assert code != 0 and not (killed / "meta.json").exists()
    r = run_cli("train", "dpo", *args, f"output={killed}", "train.resume=true")
    assert r.returncode == 0, r.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "meta.json").read_text(encoding="utf-8"))
    b = json.loads((killed / "meta.json").read_text(encoding="utf-8"))
    assert a["step"] == b["step"] and b["metrics"]["best_val_loss"] == pytest.approx(a["metrics"]["best_val_loss"],
                                                                                     rel=1e-4)


def test_saving_over_an_adapter_parent_is_quiet_and_loads(medical_base, tmp_path):
    # dpo/ppo/grpo adapters sit over the SFT *adapter*, a folder without config.json: peft's "auto" embedding check
    # warned "Could not find a config file ..." at every checkpoint; no stage changes the vocabulary
    import warnings

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from zhongjing.model.load import load_tokenizer
    from zhongjing.model.lora import LoraSettings, TrainedIO, apply_lora

    parent = tmp_path / "sft-adapter"
    parent.mkdir()  # stands for an adapter folder: no config.json
    model = apply_lora(AutoModelForCausalLM.from_pretrained(medical_base), LoraSettings(r=4, alpha=8, dropout=0.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrainedIO(load_tokenizer(medical_base), str(parent)).save(model, tmp_path / "out")
    assert not [w for w in caught if "config file" in str(w.message)], [str(w.message) for w in caught]
    assert (tmp_path / "out" / "adapter_model.safetensors").stat().st_size > 0
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(medical_base), tmp_path / "out")
    assert set(again.state_dict()) == set(model.state_dict())
