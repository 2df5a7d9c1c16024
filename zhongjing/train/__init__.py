"""Training stages over one loop: `loop.fit` (accelerate), `checkpoint` (output folder layout, resume),
`optim` (AdamW, cosine schedule, explosion guard), `batching` / `mix` (data), `lm` (LM loss), and the
stages `pt`, `sft`, `rm`, `dpo`, `ppo`, `grpo`."""
