"""A tiny chat model that has really learnt a few answers (and to end its turn), for generation/chat/serve tests.

A randomly initialised model answers every prompt with the same repeated token, which would let a wrong
batching or caching implementation pass; this one is trained for a few hundred milliseconds-long steps until
greedy decoding reproduces distinct answers that end with the end-of-turn token.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DIALOGUES = [
    [("user", "我头痛三天了，有点发烧。"), ("assistant", "体温最高多少度？有没有咳嗽或者鼻塞？")],
    [("user", "体检发现血压偏高怎么办？"), ("assistant", "先连续一周早晚测量血压并记录，少盐饮食，复诊时带上记录。")],
    [("user", "孩子咳嗽一周了。"), ("assistant", "咳嗽有痰吗？晚上会不会加重？"), ("user", "晚上更厉害。"),
     ("assistant", "夜间咳嗽加重要排除过敏和哮喘，建议去儿科听诊。")],
    [("user", "What should I do about a sprained ankle?"), ("assistant", "Rest, ice, compression and elevation for two days.")],
    [("user", "胸口剧烈疼痛，出冷汗。"), ("assistant", "这可能是急症，请立即拨打120或去最近的急诊。")],
    [("user", "胃不舒服，吃完饭胀气。"), ("assistant", "胀气多久了？有没有反酸、黑便或体重下降？")],
]


def messages(d) -> list[dict]:
    return [{"role": r, "content": c} for r, c in d]


def build_chat_model(out: Path, steps: int = 150) -> Path:
    import torch

    from zhongjing.data.render import IGNORE, Renderer
    from zhongjing.model.init_model import InitModelConfig, build_model, train_tokenizer

    texts = [c for d in DIALOGUES for _, c in d] * 4
    tok = train_tokenizer(texts, vocab_size=700, min_frequency=1)
    cfg = InitModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=176,
                          max_position_embeddings=256, seed=0)
    model = build_model(cfg, tok)
    rendered = [Renderer(tok, max_length=256).render(messages(d)) for d in DIALOGUES]
    width = max(len(r.input_ids) for r in rendered)
    ids = torch.tensor([r.input_ids + [tok.pad_token_id] * (width - len(r.input_ids)) for r in rendered])
    labels = torch.tensor([r.labels + [IGNORE] * (width - len(r.labels)) for r in rendered])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(r.input_ids) for r in rendered])[:, None]).long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory) -> Path:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a busy 2-core machine ran 20x slower than 1
    try:
        return build_chat_model(tmp_path_factory.mktemp("chat") / "model")
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and lose a lot when the cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`zhongjing serve` in a subprocess on a free loopback port; stopped on exit."""

    def __init__(self, model_dir: Path, *args: str, timeout: float = 60.0):
        import os
        import subprocess
        import sys
        import time
        import urllib.request

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(model_dir).parent / f"serve-{self.port}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zhongjing", "serve", "--model", str(model_dir), "--port", str(self.port),
                 "--log-level", "warning", "--threads", "1", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"server did not start:\n{self.log.read_text()}")
                time.sleep(0.2)

    def health(self) -> dict:
        import json
        import urllib.request

        return json.loads(urllib.request.urlopen(self.url + "/health", timeout=5).read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
