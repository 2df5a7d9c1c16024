"""Models: the tiny default built from scratch, loading (with LoRA adapters), export/merge."""
