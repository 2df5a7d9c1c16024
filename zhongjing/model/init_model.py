"""`zhongjing init-model`: byte-level BPE tokenizer trained on a corpus + a small LLaMA from scratch.

The result is a normal Hugging Face folder (AutoTokenizer / AutoModelForCausalLM load it) with a
ChatML chat template, so every stage treats it exactly like a downloaded 7B model.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from zhongjing.config import at_least, describe, load_config
from zhongjing.errors import RangeError, ZhongjingError
from zhongjing.io import atomic_path, check_output, sha256_file, write_json

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
MIN_VOCAB = 256 + 3  # the byte alphabet + PAD, IM_START, IM_END
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class InitModelConfig:
    corpus: list[str] = field(default_factory=list)  # files or folders; empty → the package's demo corpus
    output: str = "runs/tiny-base"
    vocab_size: int = 8000
    min_frequency: int = 2
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 704
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = True
    seed: int = 0

    def __post_init__(self):  # checked when the config loads, before the tokenizer is trained
        at_least(self, MIN_VOCAB, "vocab_size")  # byte-level BPE: 256 bytes + the special tokens, whatever is asked
        at_least(self, 1, "min_frequency", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                 "intermediate_size", "max_position_embeddings")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise RangeError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        if (self.hidden_size // self.num_heads) % 2:
            raise RangeError(f"hidden_size / num_heads (the head size, {self.hidden_size // self.num_heads}) must be "
                             "even: rotary position embeddings turn pairs of numbers")


def corpus_texts(paths: list[str]) -> Iterable[str]:
    """Texts the way `data convert` reads these paths: a folder's README/SOURCE.md and side files are not
    corpus, and a LaTeX book's chapters come once, through the book's main .tex."""
    from zhongjing.data.readers import read_documents

    for doc in read_documents(list(paths)):
        yield doc.text


def corpus_files(paths: list[str]) -> list[Path]:
    """Every file the corpus is read from (chapters included by a main .tex too), for meta.json's hashes."""
    from zhongjing.data.readers import list_files
    from zhongjing.data.readers.text import included_tex

    data = list_files(list(paths))
    return sorted(set(data) | {p for p in included_tex(data) if p.is_file()})


def default_corpus() -> list[str]:
    from zhongjing.demo import demo_path

    return [str(demo_path("corpus"))]


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Byte-level BPE (no unknown tokens, any UTF-8) with the chat special tokens, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, additional_special_tokens=[IM_START],
        model_max_length=1 << 30, clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_model(cfg: InitModelConfig, tokenizer):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    end = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model.generation_config = GenerationConfig(eos_token_id=end, pad_token_id=tokenizer.pad_token_id)
    return model


def init_model(cfg: InitModelConfig) -> Path:
    from zhongjing.model.load import setup_torch

    setup_torch(seed=cfg.seed)
    check_output(cfg.output, folder=True)  # before the tokenizer is trained
    corpus = cfg.corpus or default_corpus()
    files = corpus_files(corpus)
    if not files:
        raise ZhongjingError(f"no corpus files found in {corpus}")
    t0 = time.time()
    tokenizer = train_tokenizer(corpus_texts([str(c) for c in corpus]), cfg.vocab_size, cfg.min_frequency)
    model = build_model(cfg, tokenizer)
    out = Path(cfg.output)
    with atomic_path(out, folder=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "meta.json", {
            "stage": "init-model",
            "kind": "base",
            "parent": None,
            "config": asdict(cfg) | {"corpus": [str(c) for c in corpus]},
            "corpus_files": [{"path": str(f), "sha256": sha256_file(f)} for f in files],
            "params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer),
            "chat_template": "chatml",
            "seconds": round(time.time() - t0, 1),
        })
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="zhongjing init-model",
        description=__doc__,
        epilog="keys (key=value):\n" + "\n".join(describe(InitModelConfig)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--corpus", nargs="+", default=None, help="text files/folders in any supported format (default: demo corpus)")
    p.add_argument("-o", "--output", default=None, help="output model folder")
    p.add_argument("--config", default=None)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    a = p.parse_args(argv)
    cfg = load_config(InitModelConfig, a.config, a.overrides)
    if a.corpus:
        cfg.corpus = a.corpus
    if a.output:
        cfg.output = a.output
    out = init_model(cfg)
    from zhongjing.model.load import read_meta

    meta = read_meta(out)
    print(f"tiny model: {meta['params']:,} parameters, vocab {meta['vocab_size']} → {out}")
    return 0
