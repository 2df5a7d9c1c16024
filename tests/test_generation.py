"""The shared generation helper: exactness against a plain argmax loop, batching, seeds, stops, streaming, LoRA."""

from __future__ import annotations

import pytest
import torch

from serve_tiny import DIALOGUES, chat_model_dir, messages, one_torch_thread  # noqa: F401  (fixtures)
from zhongjing.data.render import Renderer
from zhongjing.errors import ZhongjingError
from zhongjing.model.generation import sample, stream
from zhongjing.model.load import load_model, load_tokenizer


@pytest.fixture(scope="module")
def mt(chat_model_dir):
    tok = load_tokenizer(chat_model_dir)
    return load_model(chat_model_dir), tok, Renderer(tok, max_length=256)


@pytest.fixture(scope="module")
def prompts(mt):
    _, _, r = mt
    # different lengths, so batching must left-pad; one multi-turn context
    return [r.prompt_ids(messages(d[:1])) for d in DIALOGUES] + [r.prompt_ids(messages(DIALOGUES[2][:3]))]


def argmax_loop(model, prompt, n, stop):
    """Reference: recompute the whole sequence each step, no cache, no padding."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            t = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(t)
            ids.append(t)
            if t in stop:
                break
    return out


def test_greedy_equals_plain_argmax_loop_and_hf_generate(mt, prompts):
    model, tok, _ = mt
    stop = {tok.eos_token_id, tok.pad_token_id}
    gens = sample(model, tok, prompts, max_new_tokens=40, temperature=0)
    assert [g.prompt_index for g in gens] == list(range(len(prompts)))
    texts = {g.text for g in gens}
    assert len(texts) == len(prompts)  # the model really answers each prompt differently
    for p, g in zip(prompts, gens):
        assert g.token_ids == argmax_loop(model, p, 40, stop)
        hf = model.generate(torch.tensor([p]), max_new_tokens=40, do_sample=False)[0, len(p):].tolist()
        assert g.token_ids == hf[: len(g.token_ids)]
    # it learnt to end its turn: the end-of-turn id closes token_ids but never shows in the text
    assert all(g.finish_reason == "stop" and g.token_ids[-1] == tok.eos_token_id for g in gens)
    assert gens[3].text == DIALOGUES[3][1][1]
    assert all("<|im_end|>" not in g.text for g in gens)


def test_left_padding_and_continuous_batching_do_not_change_results(mt, prompts):
    model, tok, _ = mt
    alone = [sample(model, tok, [p], max_new_tokens=24, temperature=0)[0].token_ids for p in prompts]
    for kw in ({"temperature": 0}, {"temperature": 1.8, "seed": 7, "top_k": 40}):
        # batch_size=1: every row decodes alone, unpadded
        ref = [g.token_ids for g in sample(model, tok, prompts, max_new_tokens=24, batch_size=1, **kw)]
        if "seed" not in kw:
            assert ref == alone
        # one padded batch; and 2 or 3 rows at a time, rows joining a running batch as others finish
        for batch in (16, 2, 3):
            assert [g.token_ids for g in sample(model, tok, prompts, max_new_tokens=24, batch_size=batch, **kw)] == ref


def test_seeds_reproduce_and_samples_differ(mt, prompts):
    model, tok, _ = mt
    kw = dict(max_new_tokens=16, temperature=2.0, num_samples=4)
    a = sample(model, tok, prompts[:2], seed=11, **kw)
    b = sample(model, tok, prompts[:2], seed=11, **kw)
    c = sample(model, tok, prompts[:2], seed=12, **kw)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    assert [(g.prompt_index, g.sample_index) for g in a] == [(i, j) for i in range(2) for j in range(4)]
    assert len({tuple(g.token_ids) for g in a[:4]}) > 1  # the K samples of one prompt are not copies
    torch.manual_seed(5)  # without a seed, the global torch seed decides
    d = sample(model, tok, prompts[:1], **kw)
    torch.manual_seed(5)
    assert [g.token_ids for g in d] == [g.token_ids for g in sample(model, tok, prompts[:1], **kw)]


def test_top_k_1_and_tiny_top_p_are_greedy(mt, prompts):
    model, tok, _ = mt
    greedy = sample(model, tok, prompts, max_new_tokens=12, temperature=0)
    for kw in ({"top_k": 1}, {"top_p": 1e-6}):
        hot = sample(model, tok, prompts, max_new_tokens=12, temperature=3.0, seed=1, **kw)
        assert [g.token_ids for g in hot] == [g.token_ids for g in greedy]


def test_stop_ids_stop_strings_and_length(mt, prompts):
    model, tok, _ = mt
    full = sample(model, tok, prompts[1:2], max_new_tokens=40, temperature=0)[0]
    # a custom stop id: generation ends on it and keeps it as the last token
    third = full.token_ids[2]
    g = sample(model, tok, prompts[1:2], max_new_tokens=40, temperature=0, stop_ids={third})[0]
    assert g.token_ids == full.token_ids[: full.token_ids.index(third) + 1] and g.finish_reason == "stop"
    # a stop string: text is cut before it, streaming never shows any of it
    stop = full.text[8:11]
    pieces: list[str] = []
    g = sample(model, tok, prompts[1:2], max_new_tokens=40, temperature=0, stop_strings=[stop, "never-there"],
               on_text=lambda i, j, d: pieces.append(d))[0]
    assert g.finish_reason == "stop" and g.text == full.text[: full.text.index(stop)]
    assert "".join(pieces) == g.text and stop not in "".join(pieces)
    # length
    g = sample(model, tok, prompts[1:2], max_new_tokens=5, temperature=0)[0]
    assert g.finish_reason == "length" and g.token_ids == full.token_ids[:5]


def test_penalties_match_a_reference_loop(mt, prompts):
    model, tok, _ = mt

    def penalized_loop(prompt, n, rep, freq, pres):
        ids, out = list(prompt), []
        with torch.no_grad():
            for _ in range(n):
                logits = model(torch.tensor([ids])).logits[0, -1].clone()
                for t in set(ids):  # CTRL-style over everything seen
                    logits[t] = logits[t] / rep if logits[t] > 0 else logits[t] * rep
                for t in set(out):  # OpenAI-style over the answer
                    logits[t] -= freq * out.count(t) + pres
                out.append(int(logits.argmax()))
                ids.append(out[-1])
        return out

    for rep, freq, pres in ((1.3, 0.0, 0.0), (1.0, 0.7, 0.3), (1.2, 0.5, 0.5)):
        gens = sample(model, tok, prompts[:3], max_new_tokens=15, temperature=0, stop_ids=set(), repetition_penalty=rep,
                      frequency_penalty=freq, presence_penalty=pres)
        assert [g.token_ids for g in gens] == [penalized_loop(p, 15, rep, freq, pres) for p in prompts[:3]]
    # a prohibitive presence penalty: no token is generated twice
    g = sample(model, tok, prompts[:1], max_new_tokens=30, temperature=0, stop_ids=set(), presence_penalty=1e4)[0]
    assert len(set(g.token_ids)) == len(g.token_ids) == 30


def test_logprobs_match_a_forward_pass(mt, prompts):
    model, tok, _ = mt
    for temp in (0.0, 0.7):
        g = sample(model, tok, prompts[:1], max_new_tokens=6, temperature=temp, seed=3, return_logprobs=True)[0]
        ids = torch.tensor([prompts[0] + g.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompts[0]) - 1: -1]
        ref = torch.log_softmax(logits / (temp or 1.0), -1).gather(1, torch.tensor(g.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(g.logprobs), ref, atol=1e-4)
    assert sample(model, tok, prompts[:1], max_new_tokens=3)[0].logprobs is None


def test_stream_yields_whole_characters_that_add_up(mt, prompts):
    model, tok, _ = mt
    ref = sample(model, tok, prompts[:1], max_new_tokens=40, temperature=0)[0]
    s = stream(model, tok, prompts[0], max_new_tokens=40, temperature=0)
    parts = list(s)
    assert len(parts) > 3 and "".join(parts) == ref.text == s.result.text
    assert not any("\ufffd" in p for p in parts)  # byte-level BPE splits Chinese chars; never emit half of one


def test_an_answer_cut_off_inside_a_character_drops_the_half(mt, prompts):
    from zhongjing.model.decoder import Decoder, Row, SamplingParams

    model, tok, _ = mt
    ids = tok.encode("请多喝水龘", add_special_tokens=False)  # a rare character: byte tokens in the tiny vocabulary
    n = max(n for n in range(1, len(ids)) if tok.decode(ids[:n]).endswith("\ufffd"))  # inside the last character
    row = Row(prompts[0], SamplingParams(n, 0.0), seed=0, max_new=n)
    row.out_ids, row.finish_reason = ids[:n], "length"
    assert Decoder(model, tok)._decode(row) == "请多喝水"
    # end to end: max_tokens reached on a forced half-character token
    half = next(t for t in ids if tok.decode([t]).endswith("\ufffd"))
    g = sample(model, tok, prompts[:1], max_new_tokens=1, temperature=0, logit_bias={half: 1e4})[0]
    assert g.token_ids == [half] and g.finish_reason == "length" and "\ufffd" not in g.text


def test_context_limit_and_bad_params(mt, prompts):
    model, tok, _ = mt
    with pytest.raises(ZhongjingError, match="context"):
        sample(model, tok, [[5] * 256], max_new_tokens=4)
    g = sample(model, tok, [[5] * 250], max_new_tokens=50, temperature=0)[0]
    assert len(g.token_ids) <= 6
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}, {"top_k": -2}):
        with pytest.raises(ZhongjingError):
            sample(model, tok, prompts[:1], **{"max_new_tokens": 4, **bad})


def test_lora_adapter_generates_like_its_merged_model(mt, prompts, chat_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok, _ = mt
    base = load_model(chat_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)  # a real, non-zero update
    peft_model.train()  # sampling must switch dropout off, then restore the mode
    out = sample(peft_model, tok, prompts, max_new_tokens=20, temperature=0)
    assert peft_model.training
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = load_model(tmp_path / "adapter")  # base found through adapter_config.json
    assert [g.token_ids for g in sample(loaded, tok, prompts, max_new_tokens=20, temperature=0)] == [g.token_ids for g in out]
    merged = loaded.merge_and_unload()
    assert [g.token_ids for g in sample(merged, tok, prompts, max_new_tokens=20, temperature=0)] == [g.token_ids for g in out]
    wrapped = torch.nn.DataParallel(peft_model)  # what a training loop may hand over
    assert [g.token_ids for g in sample(wrapped, tok, prompts, max_new_tokens=20, temperature=0)] == [g.token_ids for g in out]
    plain = sample(model, tok, prompts, max_new_tokens=20, temperature=0)
    assert [g.token_ids for g in plain] != [g.token_ids for g in out]  # the adapter really changed the answers


@pytest.mark.parametrize("arch", ["mistral-sliding-window", "gpt2"])
def test_other_architectures_batch_the_same(mt, arch):
    """Any local causal LM works; a sliding-window cache cannot take rows mid-batch, so it batches at admission."""
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    _, tok, _ = mt
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=2, n_positions=256,
                                           bos_token_id=None, eos_token_id=None))
    else:
        model = MistralForCausalLM(MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                                 sliding_window=8, max_position_embeddings=256))
    for p in model.parameters():
        p.data.normal_(0, 0.3)  # peaked, prompt-dependent logits
    model.eval()
    prompts = [[int(x) for x in torch.randint(5, 300, (n,))] for n in (5, 12, 20, 7, 30)]
    ref = [argmax_loop(model, p, 20, set()) for p in prompts]
    assert len({tuple(r) for r in ref}) > 1  # answers depend on the prompt
    for batch in (1, 2, 16):
        gens = sample(model, tok, prompts, max_new_tokens=20, temperature=0, stop_ids=set(), batch_size=batch)
        assert [g.token_ids for g in gens] == ref


def test_held_back_suffix_matches_trying_every_length():
    """`_held_back` searches for a stop string's head instead of trying every suffix length (that was ~1 ms a row
    per step with a long stop string, for everyone in the batch): same answers as the plain definition."""
    import random

    from zhongjing.model.decoder import _held_back

    def plain(text, stops):  # the longest suffix of text that is a proper prefix of a stop string
        return max((k for s in stops for k in range(1, min(len(s) - 1, len(text)) + 1) if text.endswith(s[:k])),
                   default=0)

    rng = random.Random(0)
    for _ in range(20000):
        alphabet = rng.choice(["ab", "abc", "a，b", "头痛。", "a"])
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        stops = tuple("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50))) for _ in range(rng.randint(1, 4)))
        assert _held_back(text, stops) == plain(text, stops), (text, stops)
    assert _held_back("头痛" * 1000 + "，a" * 9, ("，a" * 50000,)) == 18  # a long one still holds back what it should
