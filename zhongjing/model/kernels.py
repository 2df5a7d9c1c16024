"""Optional fast kernels, used only when installed: FlashAttention-2 (attention) and Liger (RMSNorm, RoPE, SwiGLU).

`ZHONGJING_KERNELS` picks them: `auto` (default: whatever is installed and applies — a CUDA device, half
precision for FlashAttention-2), `none` (plain PyTorch: SDPA attention), or a comma list (`liger`, `fa2`).
What a run used is in `used()`, which stages write into meta.json as `kernels`.
"""

from __future__ import annotations

import importlib.util
import os

_USED: dict = {}


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def wanted() -> set[str]:
    choice = os.environ.get("ZHONGJING_KERNELS", "auto").strip().lower()
    if choice in ("", "auto"):
        return {"liger", "fa2", "auto"}
    if choice == "none":
        return set()
    return set(choice.replace(" ", "").split(","))


def attn_implementation(torch_dtype) -> str:
    """flash_attention_2 when installed, on CUDA and in half precision (and wanted); else PyTorch SDPA."""
    import torch

    impl = "sdpa"
    if ("fa2" in wanted() and installed("flash_attn") and torch.cuda.is_available()
            and torch_dtype in (torch.bfloat16, torch.float16)):
        impl = "flash_attention_2"
    _USED["attention"] = impl
    return impl


def apply_liger(model) -> bool:
    """Patch a loaded model instance with Liger's kernels (CUDA only); True when it did."""
    import torch

    if "liger" not in wanted() or not installed("liger_kernel") or not torch.cuda.is_available():
        _USED.setdefault("liger", False)
        return False
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        # fused linear cross-entropy would need the model to compute its own loss; zhongjing's losses select positions
        _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False, cross_entropy=False)
    except Exception as e:  # an architecture Liger does not know, or an API change: plain PyTorch then
        _USED["liger"] = f"not applied: {type(e).__name__}: {str(e)[:120]}"
        return False
    _USED["liger"] = True
    return True


def used() -> dict:
    return dict(_USED)
