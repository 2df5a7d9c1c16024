"""The plain model inside the wrappers training adds around it (DDP, DataParallel, DeepSpeed, torch.compile)."""

from __future__ import annotations

import torch


def unwrap(model):
    """The module under DDP / DataParallel / DeepSpeed / torch.compile wrappers. PEFT wrappers stay: they own the
    adapter (and forward `get_output_embeddings`, `score`, ... to the model inside)."""
    for _ in range(8):
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) \
                or type(model).__name__ == "DeepSpeedEngine":
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
            model = model.module
        else:
            break
    return model
