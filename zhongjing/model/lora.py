"""LoRA settings, the model a stage trains (full or LoRA over its parent), and saving/restoring what it trained.

A parent that is itself a LoRA adapter (PT adapter → SFT) is merged into its base in memory first, so the new
adapter learns on top of the parent's result; the new adapter's meta.json names the parent adapter folder as
`base_model`, and `zhongjing.model.load.load_model` rebuilds the chain (or `zhongjing export --merge` flattens it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zhongjing.errors import ConfigError, ZhongjingError

Finetune = Literal["full", "lora"]


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.1  # the paper's dropout
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # or q_proj,v_proj,...
    modules_to_save: list[str] = field(default_factory=list)  # e.g. embed_tokens after adding tokens
    quantize: str = "none"  # "4bit": QLoRA, the frozen base in 4-bit NF4 through bitsandbytes (CPU or CUDA)

    def __post_init__(self):
        if self.r <= 0 or self.alpha <= 0:
            raise ConfigError(f"lora.r and lora.alpha must be positive, got r={self.r} alpha={self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty")
        if self.quantize not in ("none", "4bit"):
            raise ConfigError(f"lora.quantize must be 'none' or '4bit', got {self.quantize!r}")


def find_targets(model) -> list[str]:
    """The LoRA targets of this architecture: the names of every linear layer inside the transformer blocks
    (q/k/v/o and MLP projections, fused ones such as GLM's query_key_value or gate_up_proj included), 4-bit
    layers too; the output layer and a reward head are left out."""
    import torch.nn as nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {id(head)} if head is not None else set()
    names = set()
    for name, mod in model.named_modules():
        is_linear = isinstance(mod, nn.Linear) or type(mod).__name__ in ("Linear4bit", "Linear8bitLt")
        leaf = name.rsplit(".", 1)[-1]
        if is_linear and id(mod) not in skip and leaf not in ("lm_head", "score", "v_head", "classifier"):
            names.add(leaf)
    if not names:
        raise ConfigError(f"{type(model).__name__}: no linear layers found for LoRA; set lora.target_modules")
    return sorted(names)


def apply_lora(model, s: LoraSettings, task_type: str = "CAUSAL_LM"):
    """Wrap `model` in a fresh trainable LoRA adapter; base weights are frozen.

    `task_type="SEQ_CLS"` (reward models): peft then trains and saves the `score` head with the adapter.
    `all-linear` means find_targets(model): every linear layer of the blocks, found per architecture.
    """
    from peft import LoraConfig, get_peft_model

    targets = find_targets(model) if s.target_modules == ["all-linear"] else list(s.target_modules)
    cfg = LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=targets,
                     modules_to_save=list(s.modules_to_save) or None, bias="none", task_type=task_type)
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:  # e.g. a target module name that does not exist in this architecture
        raise ConfigError(f"lora.target_modules: {e}") from None


def load_parent(path: str | Path, dtype: str = "float32", quantize: str = "none"):
    """The parent as one plain model: a full folder as is, an adapter (chain) merged into its base.
    quantize="4bit" loads it in 4-bit (QLoRA; a full folder only: merge an adapter parent first)."""
    from zhongjing.model.load import is_adapter_dir, load_model

    if quantize != "none":
        if is_adapter_dir(path):
            raise ConfigError(f"{path} is a LoRA adapter: a 4-bit base (lora.quantize=4bit) needs a full model folder; "
                              "merge it first (zhongjing export --merge)")
        return load_model(path, dtype=dtype, trainable=False, quantize=quantize)
    if is_adapter_dir(path):
        from transformers.integrations import is_deepspeed_zero3_enabled

        if is_deepspeed_zero3_enabled():  # weights sharded while loading (zero3_init_flag): nothing whole to merge into
            raise ConfigError(f"{path} is a LoRA adapter: under ZeRO-3 with zero3_init_flag=true merge it first "
                              "(zhongjing export --merge) or set zero3_init_flag: false in the accelerate config")
    model = load_model(path, dtype=dtype, trainable=False)
    if is_adapter_dir(path):
        model = model.merge_and_unload()
    return model


def keep_4bit_trainable(model) -> None:
    """bitsandbytes repacks a 4-bit layer's weights for its CPU inference kernel at the first forward in eval mode
    (PPO's rollout) and then uses that kernel in training too, which fails on layers with a bias (Qwen2's q/k/v):
    a training process keeps the training layout."""
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False


def prepare_model(path: str | Path, finetune: Finetune, lora: LoraSettings, *, dtype: str = "float32",
                  gradient_checkpointing: bool = False):
    """The model a stage trains: the parent (merged) with a new LoRA adapter, or all of it for full tuning."""
    if finetune not in ("full", "lora"):
        raise ConfigError(f"finetune must be 'full' or 'lora', got {finetune!r}")
    from zhongjing.model.kernels import apply_liger

    if lora.quantize != "none" and finetune != "lora":
        raise ConfigError(f"lora.quantize={lora.quantize} trains a LoRA adapter over a frozen quantized base: "
                          "use finetune=lora")
    model = load_parent(path, dtype, lora.quantize)
    model.config.use_cache = False
    apply_liger(model)
    if lora.quantize != "none":
        from peft import prepare_model_for_kbit_training

        keep_4bit_trainable(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        gradient_checkpointing = False  # done above
    if finetune == "full" and dtype in ("float16", "fp16"):
        raise ConfigError("full fine-tuning needs float32 (or bfloat16) weights; fp16 is for frozen LoRA bases")
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if finetune == "lora":
            model.enable_input_require_grads()
    if finetune == "lora":
        model = apply_lora(model, lora)
    else:
        model.requires_grad_(True)
    model.train()
    return model


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters, tied weights counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


@dataclass
class TrainedIO:
    """How a causal-LM stage writes its model into a folder and reads the trained weights back on resume."""

    tokenizer: object
    parent: str  # the folder this model was trained from (adapter base / full-model parent)

    def save(self, model, out: Path, state_dict: dict | None = None) -> None:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            model.peft_config["default"].base_model_name_or_path = str(Path(self.parent).resolve())
        # no stage resizes the vocabulary, so the base embeddings never need saving; peft's "auto" check would look
        # for config.json in the parent and warn at every checkpoint when the parent is itself an adapter (dpo/ppo/grpo)
        extra = {"save_embedding_layers": False} if isinstance(model, PeftModel) else {}
        model.save_pretrained(str(out), state_dict=state_dict, safe_serialization=True, **extra)
        self.tokenizer.save_pretrained(str(out))  # carries the chat template
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(str(out))

    def restore(self, model, src: Path) -> None:
        from peft import PeftModel, set_peft_model_state_dict

        if isinstance(model, PeftModel):
            from safetensors.torch import load_file

            res = set_peft_model_state_dict(model, load_file(str(src / "adapter_model.safetensors")))
            if getattr(res, "unexpected_keys", None):
                raise ZhongjingError(f"{src}: adapter does not fit the model ({res.unexpected_keys[:3]} ...)")
            return
        state = read_weights(src)
        res = model.load_state_dict(state, strict=False)
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        missing = [k for k in res.missing_keys if not (tied and k.endswith("lm_head.weight"))]
        if res.unexpected_keys or missing:
            raise ZhongjingError(f"{src}: weights do not fit the model (missing {missing[:3]}, "
                                 f"unexpected {res.unexpected_keys[:3]})")


def read_weights(folder: Path) -> dict:
    """All tensors of a saved model folder (single file or sharded with an index)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise ZhongjingError(f"{folder}: no model.safetensors to resume from")
    state: dict = {}
    for f in files:
        state.update(load_file(str(folder / f)))
    return state
