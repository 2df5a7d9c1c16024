"""A lean one-token decoding step for LLaMA-shaped models (Llama, Mistral, Qwen2, Qwen3), used by the batch decoder.

A transformers forward pass for one new token per row spends about half its time on a tiny model in Python around
the arithmetic: module calls, mask building, attention dispatch, output dataclasses. This step does the same
arithmetic with the model's own weights and modules' numbers (RMSNorm in float32, the model's rotary module, SDPA
with the decoder's padding mask, the same KV cache update) in a flat loop. Prefill still runs the model's own forward.

`lean_step(net)` returns None for anything it does not know to be exactly a plain LLaMA-shaped decoder (LoRA or
quantised linears, sliding windows, other activations, other families); the caller then uses the model's forward.
`tests/test_fastdecode.py` checks logits and greedy tokens against the model's forward per family.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

_FAMILIES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}


def _plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear


def lean_step(net) -> Callable | None:
    """step(ids [B, S], mask [B, T], pos [B, S], cache, last_only) -> logits (float), or None (see step)."""
    if type(net).__name__ not in _FAMILIES:
        return None
    cfg, inner = net.config, getattr(net, "model", None)
    if inner is None or not _plain_linear(getattr(net, "lm_head", None)):
        return None
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < cfg.max_position_embeddings:
        return None  # windowed attention masks differently once a sequence is longer than the window
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
        return None
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        if not all(_plain_linear(x) for x in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj,
                                              m.down_proj)):
            return None
        if getattr(layer, "attention_type", "full_attention") != "full_attention":
            return None
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rotary, layers, final_norm = inner.rotary_emb, list(inner.layers), inner.norm
    gqa = kv_heads != heads
    head = net.lm_head
    # On the CPU, the output layer's [vocab, hidden] weight read transposed (what F.linear does) is the GEMM's slow
    # path, and it is the largest product of a small model's step: 2.10 ms against 1.41 ms with a [hidden, vocab]
    # copy at 16 rows × 256 × 8,000 (2026-12-06, one thread, a one-off timing); benchmarks/bench_decode.py went from
    # 1.08-1.11× to 1.15-1.19× of generate. One copy of that weight, remade whenever the weight changes (PPO updates
    # it between rollouts); other devices use the weight as it is.
    transposed: dict = {}

    def logits(x: torch.Tensor) -> torch.Tensor:
        w = head.weight
        if w.device.type != "cpu":
            return F.linear(x, w, head.bias).float()
        key = (w.data_ptr(), w._version, w.dtype)
        if transposed.get("key") != key:
            transposed["key"], transposed["wt"] = key, w.detach().t().contiguous()
        out = x @ transposed["wt"]
        return (out if head.bias is None else out + head.bias).float()

    def norm(x, module):  # the models' RMSNorm: float32 statistics, weight applied in the input dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
        return module.weight * h.to(x.dtype)

    def rope(x, cos, sin):  # x [B, H, S, D]; cos/sin [B, 1, S, D]
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def step(ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache, last_only: bool = True) -> torch.Tensor:
        """ids/pos [B, S] new tokens (left-padded) and their positions; mask [B, T] every key so far incl. the new
        ones. Returns the logits [B, V] of each row's last token (last_only) or [B, S, V]."""
        b, s = ids.shape
        x = inner.embed_tokens(ids)  # [B, S, hidden]
        cos, sin = rotary(x, pos)  # [B, S, D]
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, S, D]
        attend = mask.bool()[:, None, None, :]  # [B, 1, 1, T]
        if s > 1:  # causal within the new tokens; a padding query sees itself only (finite, never attended to)
            t = mask.shape[1]
            causal = torch.ones(s, t, dtype=torch.bool, device=ids.device).tril(t - s)  # [S, T]
            attend = (attend & causal) | (causal & causal.new_ones(s, t).triu(t - s))  # own key: [B, 1, S, T]
        for i, layer in enumerate(layers):
            a, m = layer.self_attn, layer.mlp
            h = norm(x, layer.input_layernorm)
            q = F.linear(h, a.q_proj.weight, a.q_proj.bias).view(b, s, heads, head_dim).transpose(1, 2)
            k = F.linear(h, a.k_proj.weight, a.k_proj.bias).view(b, s, kv_heads, head_dim).transpose(1, 2)
            v = F.linear(h, a.v_proj.weight, a.v_proj.bias).view(b, s, kv_heads, head_dim).transpose(1, 2)
            if hasattr(a, "q_norm"):  # Qwen3: per-head RMSNorm before rotary
                q, k = norm(q, a.q_norm), norm(k, a.k_norm)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            keys, values = cache.layers[i].update(k, v)
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=attend, scale=a.scaling, enable_gqa=gqa)
            x = x + F.linear(o.transpose(1, 2).reshape(b, s, heads * head_dim), a.o_proj.weight, a.o_proj.bias)
            h = norm(x, layer.post_attention_layernorm)
            x = x + F.linear(F.silu(F.linear(h, m.gate_proj.weight, m.gate_proj.bias))
                             * F.linear(h, m.up_proj.weight, m.up_proj.bias), m.down_proj.weight, m.down_proj.bias)
        if last_only:
            x = x[:, -1]
        return logits(norm(x, final_norm))

    return step
