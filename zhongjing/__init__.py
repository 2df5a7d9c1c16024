"""zhongjing: base model + real doctor–patient dialogues → aligned Chinese medical assistant."""

__version__ = "0.1.0"

# bitsandbytes' CPU backend (QLoRA on CPU) warns at import, in every process, that it cannot fetch an optional
# kernel from the hub; zhongjing never downloads, and the plain-PyTorch path it falls back to is the one tested.
import logging as _logging

_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
