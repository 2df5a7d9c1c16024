"""Scalar heads on a transformer body: the reward model's score and PPO's critic.

Reward model = `AutoModelForSequenceClassification(num_labels=1)` over the base: its `score` layer is the linear head
and, with LoRA, it travels inside the adapter (peft `modules_to_save`), so a reward-model folder loads with plain
transformers + peft — no side file to lose — and gives the same number there as here (the reward is read at the
rightmost token that is not padding: the answer's end-of-turn token, inputs right-padded).

Critic = `ValueHead` on the policy's final hidden state at every answer position (the input of the LM head); saved
next to the adapter as `value_head.safetensors` and reloaded from there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from zhongjing.errors import ZhongjingError
from zhongjing.model.load import REWARD_TASK
from zhongjing.model.wrappers import unwrap

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """V(s) = w·h + b on the last hidden state. Starts at zero so early PPO advantages are just the rewards."""

    def __init__(self, hidden_size: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1, dtype=dtype)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., H) → (...)
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(Path(folder) / VALUE_HEAD_FILE))

    @classmethod
    def load(cls, folder: str | Path, hidden_size: int, dtype: torch.dtype = torch.float32) -> "ValueHead":
        from safetensors.torch import load_file

        path = Path(folder) / VALUE_HEAD_FILE
        if not path.exists():
            raise ZhongjingError(f"{folder}: no {VALUE_HEAD_FILE} (the critic was not saved with this checkpoint)")
        head = cls(hidden_size, dtype)
        head.load_state_dict(load_file(str(path)))
        return head


# ----------------------------------------------------------------------------- reward model


def hidden_size(model) -> int:
    cfg = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    return cfg.get_text_config().hidden_size


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar reward of each right-padded sequence. (B, T) → (B,). Goes through the model's own forward (and so
    through any DDP wrapper), which pools the rightmost non-pad token."""
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, 0].float()


def _body(model):
    """The transformers model under any DDP/DeepSpeed wrapper and peft adapter."""
    inner = unwrap(model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def attention_kind(model) -> str:
    """The attention implementation the model runs ('sdpa', 'eager', 'flash_attention_2', ...)."""
    return getattr(_body(model).config, "_attn_implementation", None) or "eager"


def takes_custom_mask(model) -> bool:
    """Whether a custom (rows, 1, q, k) mask reaches this model's attention as given: SDPA and eager do; flash and
    flex attention build their own from positions, so a branching mask (answers off a shared prefix) cannot be used."""
    return attention_kind(model) in ("sdpa", "eager")


def position_scores(model, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The head's output at every position (B, T) — for packed rows, where a row holds several answers and each is
    read at its own last token. Runs the model's own forward (DDP-safe) and catches the head's output.
    `attention_mask`: an optional (B, 1, T, T) boolean "may attend" mask (answers branching off a shared prefix);
    eager attention adds its mask to the scores, so it gets the additive form."""
    inner = _body(model)
    kw = {"position_ids": position_ids} if position_ids is not None else {}
    if attention_mask is not None:
        if attention_kind(model) == "eager":
            dtype = next(inner.parameters()).dtype
            dtype = dtype if dtype.is_floating_point else torch.float32
            attention_mask = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
                ~attention_mask, torch.finfo(dtype).min)
        kw["attention_mask"] = attention_mask
    seen: dict = {}
    handle = inner.score.register_forward_hook(lambda _m, _i, out: seen.__setitem__("scores", out))
    try:
        model(input_ids=input_ids, use_cache=False, **kw)
    finally:
        handle.remove()
    return seen["scores"][..., 0].float()


def _classifier(parent: str | Path, dtype: str, quantize: str = "none"):
    """Sequence classifier with one output over `parent`'s weights (an adapter chain is merged first); the `score`
    head is new (initialised by transformers). peft cannot load a causal-LM adapter onto a classifier, so an
    adapter parent is merged as a causal LM and its transformer body copied over."""
    from transformers import AutoModelForSequenceClassification

    from zhongjing.model.load import _check_dir, is_adapter_dir, quantization_kwargs, remote_code, resolve_dtype

    torch_dtype = resolve_dtype(dtype)
    if quantize != "none" and is_adapter_dir(parent):
        raise ZhongjingError(f"{parent} is a LoRA adapter: a 4-bit base (lora.quantize=4bit) needs a full model "
                             "folder; merge it first (zhongjing export --merge)")
    if not is_adapter_dir(parent):
        from transformers.utils import logging as hf_logging

        # The head is new by design, so transformers' multi-line "score.weight MISSING ... newly initialized" report
        # is noise — and alarming under `score`/PPO, where the trained head is loaded from the adapter right after.
        # Silence it and check ourselves that nothing but the head was missing.
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(_check_dir(parent)), num_labels=1, dtype=torch_dtype, local_files_only=True,
                output_loading_info=True, trust_remote_code=remote_code(parent),
                **quantization_kwargs(quantize, torch_dtype))
        finally:
            hf_logging.set_verbosity(level)
        missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith("score."))
        if missing:
            raise ZhongjingError(f"{parent}: checkpoint lacks weights of the model body ({', '.join(missing[:5])}"
                                 f"{', …' if len(missing) > 5 else ''}); not a complete model folder")
        return model
    from zhongjing.model.lora import load_parent

    lm = load_parent(parent, dtype)
    cfg = copy.deepcopy(lm.config)
    cfg.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(cfg).to(torch_dtype)
    model.base_model.load_state_dict(lm.base_model.state_dict())
    return model


def new_reward_model(parent: str | Path, dtype: str = "float32", pad_token_id: int | None = None,
                     quantize: str = "none"):
    """The reward model to train: `parent` (the pre-trained base, by the paper) + a linear `score` head
    (quantize="4bit": the body in 4-bit for QLoRA, the head in full precision)."""
    model = _classifier(parent, dtype, quantize)
    if quantize != "none":
        from peft import prepare_model_for_kbit_training

        from zhongjing.model.lora import keep_4bit_trainable

        keep_4bit_trainable(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model


def load_reward_model(path: str | Path, dtype: str = "float32"):
    """A folder written by `zhongjing train rm` → (frozen model in eval mode, tokenizer, meta)."""
    from transformers import AutoModelForSequenceClassification

    from zhongjing.model.load import _check_dir, base_of, is_adapter_dir, load_tokenizer, read_meta, resolve_dtype

    meta = read_meta(_check_dir(path))
    if meta.get("task") != REWARD_TASK:
        raise ZhongjingError(f"{path}: not a reward model (meta.json has no task={REWARD_TASK!r}; "
                             "train one with `zhongjing train rm`)")
    tok = load_tokenizer(path)
    if is_adapter_dir(path):
        from peft import PeftModel

        model = PeftModel.from_pretrained(_classifier(base_of(path), dtype), str(path))
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=resolve_dtype(dtype),
                                                                   local_files_only=True)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if inner.config.pad_token_id is None:
        inner.config.pad_token_id = meta.get("pad_token_id", tok.pad_token_id)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok, meta
