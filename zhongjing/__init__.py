"""zhongjing: base model + real doctor–patient dialogues → aligned Chinese medical assistant."""

__version__ = "0.1.0"
