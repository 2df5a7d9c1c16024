"""Chat and serving: `zhongjing chat` (terminal) and `zhongjing serve` (OpenAI-compatible HTTP + web page).

Both load a model folder (or a LoRA adapter over its base) the same way and put the same safety system prompt in
front of a conversation that has none of its own, unless switched off.
"""

from __future__ import annotations

from pathlib import Path

from zhongjing.config import positive_int

# Written for this project. Shown to the model as the system turn when the user gives none.
SAFETY_PROMPT = (
    "你是一个医疗健康咨询助手，不是医生，你的回答不能代替医生的面诊、诊断和治疗。"
    "如果出现胸痛、呼吸困难、大量出血、意识不清、严重过敏等紧急情况，请立即拨打120或前往最近的急诊。"
)


def model_id(path: str | Path) -> str:
    """The id clients use: the model folder's name."""
    return Path(path).resolve().name


def load_chat_model(path: str | Path, *, dtype: str = "float32", threads: int | None = None):
    """(model, tokenizer, context length) for inference; adapters load on top of their base."""
    from zhongjing.model.generation import context_length
    from zhongjing.model.load import load_model, load_tokenizer, setup_torch
    from zhongjing.model.load import refuse_reward_model

    refuse_reward_model(path)
    setup_torch(threads=threads)
    tokenizer = load_tokenizer(path)
    model = load_model(path, dtype=dtype)
    return model, tokenizer, context_length(model) or 4096


def system_prompt_from(args) -> str | None:
    """--system TEXT wins; otherwise the safety prompt unless --no-safety-prompt."""
    if getattr(args, "system", None):
        return args.system
    return None if args.no_safety_prompt else SAFETY_PROMPT


def add_model_args(p) -> None:
    p.add_argument("--model", required=True, help="model folder, or a LoRA adapter folder (loads its base too)")
    p.add_argument("--system", default=None, help="system prompt (default: a medical safety prompt)")
    p.add_argument("--no-safety-prompt", action="store_true", help="do not add the default safety system prompt")
    p.add_argument("--dtype", default="float32", help="float32 | float16 | bfloat16 | auto")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
