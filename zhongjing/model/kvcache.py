"""The decoder's KV cache plumbing: read and replace the per-layer key/value tensors of a transformers cache,
assemble rows right-aligned (left padding) into buffers with spare columns, and append new tokens into those
buffers in place instead of copying the whole cache per token (DynamicLayer's concatenation).
"""

from __future__ import annotations

import torch

from zhongjing.errors import ZhongjingError


def layers(cache, check: bool = False):
    """[(keys, values)] per layer, each [B, heads, T, head_dim]; with check=True: False if not mergeable."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        if check and any(type(layer).__name__ != "DynamicLayer" for layer in layers):
            return False
        return [(layer.keys, layer.values) for layer in layers]
    if hasattr(cache, "key_cache"):
        return list(zip(cache.key_cache, cache.value_cache))
    if check:
        return False
    raise ZhongjingError(f"unsupported KV cache type {type(cache).__name__}")


def assemble(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """Rows of `parts` ([b, heads, t, dim] each) right-aligned at `width` columns, zeros on the left, in one new
    buffer with room to grow (see grow_update); returns the [B, heads, width, dim] view."""
    b = sum(p.shape[0] for p in parts)
    ref = parts[0]
    buf = ref.new_empty((b, ref.shape[1], width + max(64, width // 2), ref.shape[-1]))
    r = 0
    for p in parts:
        t = p.shape[-2]
        if t < width:
            buf[r:r + p.shape[0], :, : width - t].zero_()  # padding: masked, but must not be NaN (0 × NaN = NaN)
        buf[r:r + p.shape[0], :, width - t:width].copy_(p)
        r += p.shape[0]
    view = buf[:, :, :width]
    view._zj_owner = buf  # (inference-mode views keep no ._base)
    return view


def grow_update(layer, plain_update, key_states, value_states, *args, **kwargs):
    """DynamicLayer.update that appends into a buffer with spare columns (views, no copy of the whole cache per
    token); a new buffer (with room again) only when the old one is full or the rows changed."""
    keys = layer.keys if getattr(layer, "is_initialized", False) else None
    if keys is None or keys.dim() != 4 or keys.numel() == 0:
        return plain_update(layer, key_states, value_states, *args, **kwargs)
    t, n = keys.shape[-2], key_states.shape[-2]
    kb, vb = getattr(layer, "_zj_buf", (None, None))
    if (kb is None or kb.data_ptr() != keys.data_ptr() or kb.shape[:2] != keys.shape[:2] or kb.shape[-2] < t + n
            or kb.stride() != keys.stride()):
        kb = assemble([keys], t)._zj_owner
        vb = assemble([layer.values], t)._zj_owner
        if kb.shape[-2] < t + n:
            kb = torch.cat([kb, kb.new_empty(kb.shape[:2] + (n, kb.shape[-1]))], dim=2)
            vb = torch.cat([vb, vb.new_empty(vb.shape[:2] + (n, vb.shape[-1]))], dim=2)
        layer._zj_buf = (kb, vb)
    kb[:, :, t:t + n].copy_(key_states)
    vb[:, :, t:t + n].copy_(value_states)
    layer.keys, layer.values = kb[:, :, :t + n], vb[:, :, :t + n]
    return layer.keys, layer.values


def set_layers(cache, kv) -> None:
    if getattr(cache, "layers", None) is not None:
        for layer, (k, v) in zip(cache.layers, kv):
            layer.keys, layer.values = k, v
            # views made by assemble: their buffers have room, so the next token is appended without a copy
            layer._zj_buf = (getattr(k, "_zj_owner", None), getattr(v, "_zj_owner", None))
    else:
        cache.key_cache[:], cache.value_cache[:] = [k for k, _ in kv], [v for _, v in kv]


def lpad(x: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    """Left-pad `x` with zeros along `dim` (time) to `width`."""
    missing = width - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
