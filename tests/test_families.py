"""Every stage on every model family we claim: tiny random-weight Qwen2 (Qwen2.5 template, default system prompt),
Qwen3 (<think> handling), Llama (Llama-3 header tokens), GLM-4 ([gMASK]<sop>, no closing token) and Mistral
([INST], no system role), each with its real chat template and special tokens (zhongjing/model/families.py).

Masks are checked against an oracle that does not use render.py's method: it renders the whole dialogue once and
finds the doctor turns by the template's own markers (a regular expression per family), then compares text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from train_helpers import dialogues, write_jsonl
from zhongjing.config import load_config
from zhongjing.data.render import IGNORE, Renderer
from zhongjing.model.families import FAMILIES, build_family
from zhongjing.model.load import end_of_turn_ids, load_model, load_tokenizer

NAMES = list(FAMILIES)
# what the template itself marks as a doctor turn: (regex over the whole rendered text, group 1 = trained text)
ORACLE = {
    "qwen2": r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)",
    "qwen3": r"<\|im_start\|>assistant\n(.*?<\|im_end\|>)",
    "llama": r"<\|start_header_id\|>assistant<\|end_header_id\|>\n\n(.*?<\|eot_id\|>)",
    "mistral": r"\[/INST\](.*?</s>)",
    "glm4": r"<\|assistant\|>(.*?(?:<\|user\|>|$))",  # the next <|user|> ends a turn; eos is appended after the last
}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("families-data")
    rows = dialogues(48, seed=11)
    pairs = [{"question": r["messages"][0]["content"], "response_chosen": r["messages"][-1]["content"],
              "response_rejected": "不知道。"} for r in rows]
    return {"dialogues": write_jsonl(d / "dialogues.jsonl", rows), "pairs": write_jsonl(d / "pairs.jsonl", pairs),
            "docs": write_jsonl(d / "docs.jsonl", [{"text": "\n".join(m["content"] for m in r["messages"])}
                                                   for r in rows]),
            "texts": [m["content"] for r in dialogues(200, seed=1) for m in r["messages"]]}


_BASES: dict[str, Path] = {}


@pytest.fixture
def fam(request, files, tmp_path_factory) -> tuple[str, Path]:
    """(family name, its tiny base model folder), built once per session."""
    name = request.param
    if name not in _BASES:
        _BASES[name] = build_family(name, tmp_path_factory.mktemp(f"fam-{name}") / "base", files["texts"])
    return name, _BASES[name]


def runs(tok, ids: list[int], labels: list[int]) -> list[tuple[bool, str]]:
    """Consecutive (trained?, decoded text) runs of a rendered example."""
    out: list[tuple[bool, list[int]]] = []
    for t, l in zip(ids, labels):
        if not out or out[-1][0] != (l != IGNORE):
            out.append((l != IGNORE, []))
        out[-1][1].append(t)
    return [(f, tok.decode(x, skip_special_tokens=False)) for f, x in out]


def oracle_spans(name: str, tok, msgs: list[dict]) -> tuple[str, list[str]]:
    full = tok.apply_chat_template(msgs, tokenize=False)
    spans = re.findall(ORACLE[name], full, flags=re.S)
    if name == "glm4":  # the template ends the last answer with nothing: zhongjing appends eos (learn to stop)
        full, spans[-1] = full + tok.eos_token, spans[-1] + tok.eos_token
    return full, spans


@pytest.mark.parametrize("fam", NAMES, indirect=True)
def test_masks_match_the_template_oracle(fam):
    name, base = fam
    tok = load_tokenizer(base)
    light = load_tokenizer(base, light=True)
    model = load_model(base)
    r = Renderer(tok, max_length=4096, end_ids=end_of_turn_ids(tok, model))
    cases = [d["messages"] for d in dialogues(12, seed=4)]
    if FAMILIES[name].system:
        cases.append([{"role": "system", "content": "你是一名全科医生。"}] + cases[0])
    if name == "qwen3":  # an earlier answer with reasoning: the template drops it once a later turn exists
        cases.append([{"role": "user", "content": "头疼怎么办？"},
                      {"role": "assistant", "content": "<think>\n先问病程。\n</think>\n\n头疼多久了？"},
                      {"role": "user", "content": "三天。"}, {"role": "assistant", "content": "建议先休息观察。"}])
    for msgs in cases:
        out = r.render(msgs)
        got = runs(tok, out.input_ids, out.labels)
        full, spans = oracle_spans(name, tok, msgs)
        assert "".join(t for _, t in got) == full  # the example is the whole dialogue, nothing lost or added
        assert [t for f, t in got if f] == spans, (name, got)
        assert len(spans) == sum(m["role"] == "assistant" for m in msgs)
        plain = Renderer(tok, max_length=4096).render(msgs)  # from the tokenizer folder alone (show-mask): the same
        assert (plain.input_ids, plain.labels) == (out.input_ids, out.labels)
        lite = Renderer(light, max_length=4096).render(msgs)  # show-mask's torch-free tokenizer: the same again
        assert (lite.input_ids, lite.labels) == (out.input_ids, out.labels)
    if name == "qwen2":  # no system turn given: the template's own default system prompt is there, untrained
        assert "You are Qwen, created by Alibaba Cloud." in tok.decode(r.render(cases[0]).input_ids)
    if name == "qwen3":
        text = [t for f, t in runs(tok, *(lambda o: (o.input_ids, o.labels))(r.render(cases[-1]))) if f]
        assert text == ["头疼多久了？<|im_end|>", "<think>\n\n</think>\n\n建议先休息观察。<|im_end|>"]
    if name == "mistral":  # no system role: a system prompt opens the first patient turn instead of failing
        out = r.render([{"role": "system", "content": "你是医生。"}] + cases[0])
        assert tok.decode(out.input_ids).startswith("<s>[INST] 你是医生。\n\n")


def meta(out) -> dict:
    return json.loads((Path(out) / "meta.json").read_text(encoding="utf-8"))


def common(**kw) -> list[str]:
    base = {"train.progress": "false", "train.threads": 1, "train.warmup_ratio": 0, "train.overwrite": "true"}
    return [f"{k}={v}" for k, v in (base | kw).items()]


@pytest.mark.parametrize("fam", NAMES, indirect=True)
def test_reward_model_reads_answers_off_a_shared_dialogue_as_it_reads_them_alone(fam):
    """rm's share_prefix passes each family a branching (rows, 1, q, k) mask with positions continuing from the
    dialogue; every family's attention must take it as given (sliding windows, GLM's partial rotary included)."""
    import random

    from zhongjing.model.value_head import new_reward_model, position_scores, takes_custom_mask
    from zhongjing.train.pref_batches import RankingBatches
    from zhongjing.train.prefs import Encoded

    name, base = fam
    model = new_reward_model(str(base), "float32", pad_token_id=load_tokenizer(base).pad_token_id).eval()
    assert takes_custom_mask(model), name
    g = random.Random(0)
    dialogue = [g.randrange(3, 100) for _ in range(15)]
    items = [Encoded([dialogue + [g.randrange(3, 100) for _ in range(g.randrange(1, 6))] for _ in range(3)],
                     [[0], [1], [2]], 3), Encoded([[7, 8, 9, 10], [7, 8, 11]], [[0], [1]], 2)]
    tree = RankingBatches([], [], 8, seed=0, group=1, pad_id=0, share_prefix=True).collate(items)
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([x])).logits[:, 0] for e in items for x in e.ids])
        scores = position_scores(model, tree["input_ids"], tree["position_ids"], tree["attention_mask"])
    assert torch.allclose(scores[tree["ends"][:, 0], tree["ends"][:, 1]], alone, atol=1e-5), name


@pytest.mark.slow
@pytest.mark.parametrize("fam", NAMES, indirect=True)
def test_every_stage(fam, files, tmp_path):
    from zhongjing.cli import main as cli
    from zhongjing.train.dpo import DPOConfig, train_dpo
    from zhongjing.train.grpo import GRPOConfig, train_grpo
    from zhongjing.train.ppo import PPOConfig, train_ppo
    from zhongjing.train.pt import PTConfig
    from zhongjing.train.pt import run as run_pt
    from zhongjing.train.rm import RMConfig, train_rm
    from zhongjing.train.sft import SFTConfig
    from zhongjing.train.sft import run as run_sft

    name, base = fam
    dlg, pairs = files["dialogues"], files["pairs"]
    # pt (full)
    run_pt(load_config(PTConfig, overrides=[f"model={base}", f"output={tmp_path / 'pt'}", f"data=[{{path: {files['docs']}}}]",
                                            "block_size=64", "finetune=full", "val_fraction=0.0",
                                            *common(**{"train.max_steps": 2, "train.batch_size": 4})]))
    assert meta(tmp_path / "pt")["stage"] == "pt"
    # sft, LoRA on every linear layer of the architecture: the loss falls
    sft = tmp_path / "sft"
    run_sft(load_config(SFTConfig, overrides=[f"model={base}", f"output={sft}", f"data=[{{path: {dlg}}}]",
                                              "max_length=256", "lora.dropout=0.0", "val_fraction=0.0",
                                              *common(**{"train.max_steps": 8, "train.batch_size": 8,
                                                         "train.lr": 1e-2})]))
    losses = [json.loads(x)["loss"] for x in (sft / "logs" / "train.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.3, losses
    targets = set(json.loads((sft / "adapter_config.json").read_text())["target_modules"])
    assert targets and {"lm_head", "score"}.isdisjoint(targets)
    # sft, full
    run_sft(load_config(SFTConfig, overrides=[f"model={base}", f"output={tmp_path / 'sft-full'}", "finetune=full",
                                              f"data=[{{path: {dlg}}}]", "max_length=256", "val_fraction=0.0",
                                              *common(**{"train.max_steps": 2, "train.batch_size": 8})]))
    # rm (value head), dpo, ppo and grpo: two updates each
    rm = train_rm(load_config(RMConfig, overrides=[f"model={base}", f"data=[{pairs}]", f"output={tmp_path / 'rm'}",
                                                   "max_length=128", "val_ratio=0.0",
                                                   *common(**{"train.max_steps": 2, "train.batch_size": 4})]))
    assert meta(rm)["task"] == "reward"
    train_dpo(load_config(DPOConfig, overrides=[f"model={sft}", f"data=[{pairs}]", f"output={tmp_path / 'dpo'}",
                                                "max_length=128", "val_ratio=0.0",
                                                *common(**{"train.max_steps": 2, "train.batch_size": 4})]))
    rl = [f"prompts=[{dlg}]", "eval_prompts=0", "max_length=128", "generation.max_new_tokens=6",
          "reward.ask_question=1.0", *common(**{"train.max_steps": 2, "train.batch_size": 4, "train.grad_accum": 1})]
    ppo = train_ppo(load_config(PPOConfig, overrides=[f"model={sft}", f"output={tmp_path / 'ppo'}", *rl]))
    grpo = train_grpo(load_config(GRPOConfig, overrides=[f"model={sft}", f"output={tmp_path / 'grpo'}",
                                                         "grpo.group_size=2", *rl]))
    assert meta(ppo)["step"] == 2 and meta(grpo)["step"] == 2
    # generate K answers per turn
    assert cli(["generate", f"model={sft}", f"input=[{dlg}]", f"output={tmp_path / 'gen.jsonl'}", "k=2",
                "max_new_tokens=6", "progress=false", "threads=1"]) == 0
    assert sum(1 for _ in open(tmp_path / "gen.jsonl", encoding="utf-8")) > 0
    # export --merge reproduces base + adapter
    merged = tmp_path / "merged"
    assert cli(["export", "--merge", str(sft), "-o", str(merged)]) == 0
    ids = torch.tensor([load_tokenizer(base)("医生您好，我头疼")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(load_model(merged)(ids).logits, load_model(sft)(ids).logits, atol=1e-4, rtol=1e-4)
    # chat (the default safety system prompt; Mistral folds it into the first turn) and serve through `openai`
    from zhongjing.serve import SAFETY_PROMPT
    from zhongjing.serve.chat import ChatSession

    chat = ChatSession(load_model(merged), load_tokenizer(merged), 256, system=SAFETY_PROMPT, max_new_tokens=6,
                       temperature=0.0, top_p=1.0, seed=0, name="t")
    assert chat.prompt("我头疼三天了。")[0]
    openai = pytest.importorskip("openai")
    from serve_tiny import Server

    server = Server(merged, "--model-name", "fam")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = client.chat.completions.create(model="fam", messages=[{"role": "user", "content": "我头疼三天了。"}],
                                           max_tokens=6, temperature=0)
        assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    finally:
        server.stop()
