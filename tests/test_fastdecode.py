"""The decoder's lean step (zhongjing/model/fastdecode.py) against each family's own transformers forward:
the same logits at prefill and at every decoding step, through admissions into a running batch and compaction
after rows finish, and the same greedy tokens; and it stands aside for anything it does not know."""

from __future__ import annotations

import pytest
import torch

from zhongjing.model.decoder import Decoder
from zhongjing.model.families import build_family
from zhongjing.model.fastdecode import lean_step
from zhongjing.model.generation import SamplingParams, make_sequences
from zhongjing.model.kvcache import layers as kv_layers
from zhongjing.model.load import load_model, load_tokenizer

LEAN = ["llama", "qwen2", "qwen3", "mistral"]
TEXTS = [f"病人{i}说头痛发烧{i % 7}天，医生问有没有咳嗽和过敏史，建议检查血常规。" for i in range(300)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    torch.set_num_threads(1)
    out = {}
    for name in LEAN + ["glm4"]:
        path = build_family(name, tmp_path_factory.mktemp(f"lean-{name}") / "m", TEXTS, seed=3)
        model, tok = load_model(path), load_tokenizer(path)
        with torch.no_grad():  # larger weights than the init: greedy answers vary instead of repeating one token
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(6.0)
        out[name] = (model.eval(), tok)
    return out


def prompts(tok, n: int) -> list[list[int]]:
    return [tok(f"头痛{'发烧' * i}怎么办？", add_special_tokens=False)["input_ids"] for i in range(n)]


@pytest.mark.parametrize("name", LEAN)
def test_prefill_and_steps_match_the_model_forward(models, name):
    model, tok = models[name]
    step = lean_step(model)
    assert step is not None
    tok.padding_side = "left"
    texts = ["头痛", "发烧三天了，还咳嗽，怎么办？", "孩子过敏"]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    ref_cache, lean_cache = Decoder(model, tok)._new_cache(), Decoder(model, tok)._new_cache()
    ids = enc["input_ids"]
    with torch.inference_mode():
        for t in range(4):  # prefill, then three one-token steps
            ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=ref_cache, use_cache=True)
            got = step(ids, mask, pos, lean_cache, last_only=False)  # [B, S, V]
            valid = mask[:, -ids.shape[1]:].bool()
            torch.testing.assert_close(got[valid], ref.logits.float()[valid], rtol=1e-4, atol=1e-4)
            ids = got[:, -1].argmax(-1, keepdim=True)
            assert torch.equal(ids, ref.logits[:, -1].argmax(-1, keepdim=True))
            pos = pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)


@pytest.mark.parametrize("name", LEAN)
def test_batched_decoding_gives_the_same_tokens_and_logprobs(models, name):
    """Rows join a running batch in two waves and finish at different lengths (merge and compaction paths)."""
    model, tok = models[name]
    ps = prompts(tok, 6)
    results = {}
    for lean in (True, False):
        rows = make_sequences(model, ps[:4], SamplingParams(max_new_tokens=12, temperature=0, logprobs=True))
        late = make_sequences(model, ps[4:], SamplingParams(max_new_tokens=20, temperature=0, logprobs=True))
        for i, r in enumerate(rows):
            r.max_new = 5 + 3 * i
        dec = Decoder(model, tok, stop_ids=set(), lean=lean)
        assert (dec._lean is not None) == lean
        joinable = kv_layers(dec._new_cache(), check=True) is not False  # Mistral's windowed cache: admit at once
        dec.admit(rows if joinable else rows + late)
        for _ in range(3):
            dec.step()
        if joinable:
            dec.admit(late)
        while len(dec):
            dec.step()
        results[lean] = [(r.out_ids, r.logprobs) for r in rows + late]
    assert len({tuple(ids) for ids, _ in results[True]}) > 1 and len(set(results[True][0][0])) > 1  # not degenerate
    for (ids, lp), (ref_ids, ref_lp) in zip(results[True], results[False]):
        assert ids == ref_ids
        torch.testing.assert_close(torch.tensor(lp), torch.tensor(ref_lp), rtol=1e-4, atol=1e-4)


def test_stands_aside_where_it_does_not_apply(models, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    assert lean_step(models["glm4"][0]) is None  # another architecture: the model's own forward
    llama = models["llama"][0]
    peft = get_peft_model(llama, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert Decoder(peft, models["llama"][1])._lean is None  # LoRA linears in the layers
    peft.unload()
    windowed = MistralForCausalLM(MistralConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                max_position_embeddings=512, sliding_window=16))
    assert lean_step(windowed) is None  # a window shorter than the context masks differently


def test_output_layer_follows_weight_updates(models):
    """The step keeps a transposed copy of the output weight on the CPU; an optimizer's in-place update (PPO between
    rollouts) or a newly assigned tensor must be seen by the next step, never the stale copy."""
    model, tok = models["llama"]
    step = lean_step(model)
    ids = torch.tensor(prompts(tok, 1))
    mask, pos = torch.ones_like(ids), torch.arange(ids.shape[1])[None]
    head = model.get_output_embeddings()
    saved = head.weight.detach().clone()
    try:
        for change in (lambda w: w.mul_(-0.5), lambda w: setattr(head.weight, "data", w * 3.0)):
            with torch.no_grad():
                change(head.weight)
            with torch.inference_mode():
                got = step(ids, mask, pos, Decoder(model, tok)._new_cache())
                ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    finally:
        with torch.no_grad():
            head.weight.data = saved
