"""Load any local Hugging Face model folder (full model or LoRA adapter over its base), never from a hub."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from zhongjing.errors import ZhongjingError, first_line
from zhongjing.model.folder_check import check_folder, explained, read_json_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def setup_torch(seed: int | None = None, threads: int | None = None) -> None:
    """Process-wide torch settings every stage wants on CPU."""
    import torch

    # Denormals made PPO generation 4–10× slower and erratic on CPU (DESIGN.md §4).
    torch.set_flush_denormal(True)
    if not torch.cuda.is_available():
        keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    if seed is not None:
        import random

        random.seed(seed)
        torch.manual_seed(seed)


# `quantize: 4bit` in a config file, `lora.quantize=4bit` on the command line; the pipeline writes every stage's
# config whole, so `quantize: none` is in each one and must not count
_ASKS_QUANTIZE = re.compile(r"quantize['\"]?\s*[:=]\s*['\"]?(?!none\b)[\w-]")


def skip_bitsandbytes(argv: list[str]) -> None:
    """A command that asks for no 4-bit base (no `quantize` in its arguments or config file) never needs bitsandbytes,
    but peft imports it whenever it is installed: ~2 s of CPU per process. Hide it from such a process."""
    import sys

    words = list(argv)
    for i, w in enumerate(argv):
        path = argv[i + 1] if w == "--config" and i + 1 < len(argv) else w.split("=", 1)[1] if w.startswith("--config=") else None
        if path:
            try:
                words.append(Path(path).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                return  # the stage reports an unreadable config itself; leave imports alone
    if not any(_ASKS_QUANTIZE.search(w) for w in words) and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # find_spec → None: transformers and peft see "not installed"


def keep_freed_memory() -> None:
    """On CPU, glibc hands every large freed block (logits, activations: tens of MB) back to the OS and faults fresh
    zeroed pages in again at the next step; keeping them in the heap made a pre-training step ~15% cheaper in CPU
    time (benchmarks/bench_pt.py). ZHONGJING_MALLOC=default leaves glibc as it is."""
    import ctypes
    import sys

    if sys.platform != "linux" or os.environ.get("ZHONGJING_MALLOC") == "default":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to tune
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)  # no mmap'ed blocks: large tensors come from the heap and stay there when freed
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # return heap memory only above 2 GiB free at the top


def read_meta(path: str | Path) -> dict:
    p = Path(path) / "meta.json"
    return read_json_file(p) if p.exists() else {}


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def _check_dir(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ZhongjingError(f"{p}: model folder not found (zhongjing loads local folders only, never from a hub)")
    if not ((p / "config.json").exists() or (p / "adapter_config.json").exists()):
        raise ZhongjingError(f"{p}: not a model folder (no config.json or adapter_config.json)")
    check_folder(p)  # a damaged file is one line here, not a traceback from the loaders
    return p


def base_of(adapter_dir: str | Path) -> Path:
    """The base model folder an adapter was trained on: meta.json first, then adapter_config.json."""
    adapter_dir = Path(adapter_dir)
    base = read_meta(adapter_dir).get("base_model")
    if not base:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        base = cfg.get("base_model_name_or_path")
    if not base:
        raise ZhongjingError(f"{adapter_dir}: adapter does not name its base model")
    base_path = Path(base)
    if not base_path.is_absolute() and not base_path.exists():
        base_path = (adapter_dir / base).resolve()
    return _check_dir(base_path)


def base_root(path: str | Path) -> Path:
    """The full model folder at the bottom of an adapter chain (the folder itself when it is a full model)."""
    p = Path(path)
    while is_adapter_dir(p):
        p = base_of(p)
    return p


def context_of(path: str | Path) -> int | None:
    """The model's context length (max_position_embeddings …) from config.json, following adapters to their base.
    Prompt budgets are capped by it: a prompt longer than the context cannot be answered at all."""
    p = _check_dir(path)
    while is_adapter_dir(p):
        p = base_of(p)
    cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    return context_from(cfg.get("text_config") or cfg)


def context_from(config) -> int | None:
    """The context length a model config (a config.json dict or a transformers config) names, if any."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = get(key)
        if isinstance(v, int) and v > 0:
            return v
    return None


def cap_to_context(max_length: int, context: int | None) -> int:
    """The one context-length rule: max_length, or the model's context if that is smaller — positions the model
    has no embedding for would train, score or generate silently wrong (older exchanges are dropped to fit)."""
    return min(max_length, context) if context else max_length


def prompt_budget(max_length: int, model_path: str | Path) -> int:
    """cap_to_context for a model folder (read from its config.json, no weights loaded)."""
    return cap_to_context(max_length, context_of(model_path))


def cap_config_length(cfg, context: int | None, say) -> None:
    """A training stage's `max_length` capped by cap_to_context, in its config (meta.json records what was used),
    and said once through `say`."""
    capped = cap_to_context(cfg.max_length, context)
    if capped < cfg.max_length:
        say(f"max_length {cfg.max_length} > the model's {context} positions; using {capped}")
        cfg.max_length = capped


def remote_code(path: str | Path) -> bool:
    """Whether transformers may run the Python files a model folder ships (Baichuan2, InternLM2, older ChatGLM):
    only when the user says so with ZHONGJING_TRUST_REMOTE_CODE=1; such a folder is refused otherwise, by name."""
    p = Path(path)
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8")) if (p / "config.json").exists() else {}
    except ValueError:
        return False
    auto_map = cfg.get("auto_map") or {}
    if not auto_map:
        return False
    from transformers import CONFIG_MAPPING

    if cfg.get("model_type") in CONFIG_MAPPING and os.environ.get("ZHONGJING_TRUST_REMOTE_CODE") != "1":
        return False  # transformers has this architecture built in: its own code is used
    if os.environ.get("ZHONGJING_TRUST_REMOTE_CODE") == "1":
        return True
    files = sorted({str(v).split(".")[0] + ".py" for v in auto_map.values() if isinstance(v, str)})
    raise ZhongjingError(f"{p}: this model's code ships in the folder ({', '.join(files)}) and runs only if you trust "
                         "it: read those files, then set ZHONGJING_TRUST_REMOTE_CODE=1 (docs/training.md)")


def load_tokenizer(path: str | Path, light: bool = False):
    """Tokenizer of a model or adapter folder; the adapter's own copy wins (it carries the chat template).

    `light`: a folder with a `tokenizer.json` (and no remote code) loads as a plain PreTrainedTokenizerFast, which
    does not import torch (AutoTokenizer's config registry does): `data show-mask` starts in about a second.
    tests/test_families.py checks that it renders every family exactly as the full tokenizer does."""
    p = _check_dir(path)
    src = p if (p / "tokenizer_config.json").exists() or (p / "tokenizer.json").exists() else None
    if src is None and is_adapter_dir(p):
        src = base_of(p)
    if src is None:
        raise ZhongjingError(f"{p}: no tokenizer files in this folder")
    remote = remote_code(base_root(src))
    if light and not remote and (src / "tokenizer.json").exists():
        from transformers import PreTrainedTokenizerFast as AutoTokenizer  # noqa: N814 (same call, no torch)
    else:
        from transformers import AutoTokenizer
    with explained(src, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True, trust_remote_code=remote)
    if not getattr(tok, "chat_template", None):
        raise ZhongjingError(f"{src}: tokenizer has no chat template; dialogues cannot be rendered")
    try:  # a template with a syntax error (or one that raises) fails here, named, not at the first conversation
        tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    except Exception as e:
        reason = first_line(e, 160)
        raise ZhongjingError(f"{src}: the chat template cannot render a one-message conversation ({type(e).__name__}: "
                             f"{reason}); fix chat_template.jinja or the chat_template in tokenizer_config.json") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_dtype(dtype: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
    except KeyError:
        raise ZhongjingError(f"unknown dtype {dtype!r} (float32, float16, bfloat16 or auto)") from None


def quantization_kwargs(quantize: str, torch_dtype) -> dict:
    """from_pretrained arguments for a 4-bit NF4 base (QLoRA) through bitsandbytes, on this process's device."""
    if quantize in (None, "none"):
        return {}
    import torch

    try:
        from transformers import BitsAndBytesConfig

        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ZhongjingError("lora.quantize=4bit needs bitsandbytes: pip install -c constraints.txt "
                             "'zhongjing[qlora]'") from None
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    compute = torch_dtype if torch_dtype != torch.float16 or torch.cuda.is_available() else torch.float32
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute),
            "device_map": {"": device}}


REWARD_TASK = "reward"  # meta.json "task" of a reward-model folder


def refuse_reward_model(path: str | Path) -> None:
    """A reward model folder (`zhongjing train rm`) scores answers; loaded as a language model it would talk
    nonsense (its head is not trained to write), so say what it is instead."""
    p = Path(path)

    def read(name: str) -> dict:
        try:
            return json.loads((p / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    meta, adapter, config = read("meta.json"), read("adapter_config.json"), read("config.json")
    if (meta.get("task") == REWARD_TASK or adapter.get("task_type") == "SEQ_CLS"
            or any("SequenceClassification" in a for a in config.get("architectures") or [])):
        raise ZhongjingError(f"{path}: a reward model (zhongjing train rm) scores answers and cannot write them; "
                             "use the sft or ppo folder (a reward model can judge: eval judge.backend: reward_model)")

def load_model(path: str | Path, *, dtype: str = "float32", trainable: bool = False, model_cls=None,
               quantize: str = "none"):
    """A causal LM from a full folder, or base + LoRA adapter (PeftModel) from an adapter folder.
    quantize="4bit": the (base) weights in 4-bit NF4 (QLoRA)."""
    from transformers import AutoModelForCausalLM

    from zhongjing.model.kernels import attn_implementation

    p = _check_dir(path)
    if model_cls is None:  # a reward model loaded as a language model talks nonsense (generate, train, chat, ...)
        refuse_reward_model(p)
    cls = model_cls or AutoModelForCausalLM
    torch_dtype = resolve_dtype(dtype)
    kw = {"dtype": torch_dtype, "local_files_only": True, "attn_implementation": attn_implementation(torch_dtype),
          "trust_remote_code": remote_code(base_root(p)), **quantization_kwargs(quantize, torch_dtype)}
    if is_adapter_dir(p):
        from peft import PeftModel

        parent = base_of(p)
        if is_adapter_dir(parent):  # adapter trained over another adapter (PT LoRA → SFT LoRA): merge the chain
            base = load_model(parent, dtype=dtype, model_cls=cls).merge_and_unload()
        else:
            with explained(parent, "model"):
                base = cls.from_pretrained(str(parent), **kw)
        with explained(p, "adapter"):
            model = PeftModel.from_pretrained(base, str(p), is_trainable=trainable)
    else:
        with explained(p, "model"):
            model = cls.from_pretrained(str(p), **kw)
    if not trainable:
        model.eval()
    return model


def end_of_turn_ids(tokenizer, model=None) -> set[int]:
    """Token ids that close a turn: the tokenizer's eos plus the generation config's eos list."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(eos)
    return ids
