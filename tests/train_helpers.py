"""Helpers for the training tests: templated dialogues a tiny model can learn, and a tiny model built from them."""

from __future__ import annotations

import json
import random
from pathlib import Path

SYMPTOMS = ["头疼", "咳嗽", "发烧", "肚子疼", "腰疼", "失眠", "喉咙痛", "皮肤痒"]
QUESTIONS = ["有没有发烧", "吃过什么药", "睡眠怎么样", "以前有过类似情况吗", "有没有过敏史"]
ANSWERS = ["没有", "有一点", "吃过布洛芬", "睡得不好", "以前没有过"]
ADVICE = ["多喝水，注意休息", "清淡饮食，按时复诊", "先做个血常规检查", "如果加重请尽快就医", "避免熬夜，适当运动"]

TINY = dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=176,
            max_position_embeddings=512)


def dialogue(rng: random.Random, turns: int, i: int) -> dict:
    sym = rng.choice(SYMPTOMS)
    msgs = [{"role": "user", "content": f"医生您好，我{sym}{rng.randint(2, 9)}天了，怎么办？"}]
    for _ in range(turns - 1):
        msgs += [{"role": "assistant", "content": f"请问{rng.choice(QUESTIONS)}？"},
                 {"role": "user", "content": f"{rng.choice(ANSWERS)}。"}]
    msgs.append({"role": "assistant", "content": f"{sym}的话，建议{rng.choice(ADVICE)}。"})
    return {"id": f"t{i}", "messages": msgs, "meta": {"source": "test"}}


def dialogues(n: int, seed: int = 0, multi_share: float = 0.5) -> list[dict]:
    rng = random.Random(seed)
    return [dialogue(rng, rng.randint(2, 4) if rng.random() < multi_share else 1, i) for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_docs(path: Path, n: int, seed: int = 1) -> Path:
    """Documents = flattened dialogues (what `pt` reads from any text source)."""
    rows = [{"text": "\n".join(m["content"] for m in d["messages"])} for d in dialogues(n, seed)]
    return write_jsonl(path, rows)


def tiny_model(out: Path, seed: int = 0, **over) -> Path:
    """A 2-layer LLaMA + BPE tokenizer trained on the templated texts (a normal HF folder)."""
    from zhongjing.model.init_model import InitModelConfig, build_model, train_tokenizer

    texts = [m["content"] for d in dialogues(300, 99) for m in d["messages"]]
    tok = train_tokenizer(texts, vocab_size=600, min_frequency=1)
    model = build_model(InitModelConfig(seed=seed, **(TINY | over)), tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
