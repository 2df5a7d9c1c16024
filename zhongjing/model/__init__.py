"""Models: the tiny default built from scratch, loading (with LoRA adapters), export/merge."""

import warnings

# peft reads transformers' deprecated `is_gradient_checkpointing` alias whenever it wraps a model; the warning
# would greet every chat user and names nothing they can change.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
