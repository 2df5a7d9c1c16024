"""Model families zhongjing is tested on: each family's transformers config class, special tokens and its real chat
template (copied from the family's public tokenizer_config.json into model/templates/*.jinja).

`build_family(name, out, texts)` writes a tiny random-weight model of that family with a byte-level BPE tokenizer
trained on `texts` and given the family's special tokens — a normal Hugging Face folder that every stage loads like
the downloaded model (tests, `benchmarks/gpu_check.py`). Nothing is downloaded.

Stop tokens differ per family (generation_config.eos_token_id lists them all):
  qwen2/qwen3  <|im_end|> closes a turn, <|endoftext|> ends a document (also the pad token)
  llama        <|eot_id|> closes a turn (the Instruct models' eos), <|end_of_text|> ends a document; no pad token
  glm4         no closing token: the next <|user|> (or <|observation|>, <|endoftext|>) ends an assistant turn
  mistral      </s> after each assistant turn; no system role (the template refuses one)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from zhongjing.errors import ZhongjingError

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str  # transformers config class
    template: str  # file in model/templates
    eos: str  # tokenizer eos (what closes an assistant turn where the template has a closing token)
    pad: str | None
    bos: str | None
    specials: tuple[str, ...]  # every special token, in id order
    stops: tuple[str, ...]  # generation_config.eos_token_id
    system: bool = True  # the template accepts a system turn
    extra: dict = field(default_factory=dict)  # config kwargs (e.g. qkv bias)
    source: str = ""  # where the template text comes from

    def chat_template(self) -> str:
        return (TEMPLATES / self.template).read_text(encoding="utf-8")


QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("qwen2", "Qwen2Config", "qwen2_5.jinja", eos="<|im_end|>", pad="<|endoftext|>", bos=None,
           specials=QWEN_SPECIALS, stops=("<|im_end|>", "<|endoftext|>"),
           source="Qwen/Qwen2.5-0.5B-Instruct tokenizer_config.json"),
    Family("qwen3", "Qwen3Config", "qwen3.jinja", eos="<|im_end|>", pad="<|endoftext|>", bos=None,
           specials=QWEN_SPECIALS + ("<think>", "</think>"), stops=("<|im_end|>", "<|endoftext|>"),
           source="Qwen/Qwen3-0.6B tokenizer_config.json"),
    Family("llama", "LlamaConfig", "llama3.jinja", eos="<|eot_id|>", pad=None, bos="<|begin_of_text|>",
           specials=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                     "<|eot_id|>"), stops=("<|eot_id|>", "<|end_of_text|>"),
           source="meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json"),
    Family("glm4", "GlmConfig", "glm4.jinja", eos="<|endoftext|>", pad="<|endoftext|>", bos=None,
           specials=("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                     "<|assistant|>", "<|observation|>"), stops=("<|endoftext|>", "<|user|>", "<|observation|>"),
           source="THUDM/glm-4-9b-chat-hf tokenizer_config.json"),
    Family("mistral", "MistralConfig", "mistral.jinja", eos="</s>", pad=None, bos="<s>",
           specials=("<unk>", "<s>", "</s>"), stops=("</s>",), system=False,
           source="mistralai/Mistral-7B-Instruct-v0.1 tokenizer_config.json"),
]}

# A ~0.5B Qwen2 (Qwen2.5-0.5B's shape) for the GPU check; TINY for tests.
QWEN2_05B = dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                 vocab_size=151936, max_position_embeddings=32768)
TINY = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
            max_position_embeddings=1024)


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ZhongjingError(f"unknown model family {name!r} (one of {', '.join(FAMILIES)})") from None


def train_tokenizer(fam: Family, texts: Iterable[str], vocab_size: int = 600):
    """Byte-level BPE with the family's special tokens (ids 0..k-1), its eos/pad/bos and its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=list(fam.specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    named = {fam.eos, fam.pad, fam.bos}
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=fam.eos, pad_token=fam.pad, bos_token=fam.bos,
        additional_special_tokens=[t for t in fam.specials if t not in named],
        model_max_length=1 << 30, clean_up_tokenization_spaces=False)
    hf.chat_template = fam.chat_template()
    return hf


def build_config(fam: Family, tokenizer, shape: dict, vocab_size: int | None = None):
    import transformers

    cls = getattr(transformers, fam.config_class)
    stops = [tokenizer.convert_tokens_to_ids(t) for t in fam.stops]
    kw = dict(vocab_size=vocab_size or len(tokenizer), hidden_size=shape["hidden_size"],
              intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
              num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
              max_position_embeddings=shape["max_position_embeddings"],
              tie_word_embeddings=fam.name.startswith("qwen"), pad_token_id=tokenizer.pad_token_id,
              eos_token_id=stops if len(stops) > 1 else stops[0], bos_token_id=tokenizer.bos_token_id)
    if fam.name == "qwen3":
        kw["head_dim"] = shape["hidden_size"] // shape["num_heads"]
    return cls(**(kw | fam.extra))


def build_family(name: str, out: str | Path, texts: Iterable[str], *, shape: dict | None = None, seed: int = 0,
                 vocab_size: int = 600, model_vocab: int | None = None, dtype=None) -> Path:
    """A random-weight model of the family + its tokenizer in `out` (model_vocab > tokenizer size pads the
    embedding like the real checkpoints do)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    fam = family(name)
    tok = train_tokenizer(fam, texts, vocab_size)
    config = build_config(fam, tok, shape or TINY, model_vocab)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    stops = [tok.convert_tokens_to_ids(t) for t in fam.stops]
    model.generation_config = GenerationConfig(eos_token_id=stops, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
