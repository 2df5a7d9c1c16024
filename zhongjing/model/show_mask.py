"""`zhongjing data show-mask FILE --index N --model DIR`: see exactly which tokens a dialogue trains.

In model/ because it renders with a model folder's tokenizer and chat template (the command stays under `data`)."""

from __future__ import annotations

import argparse
import itertools
import sys

from zhongjing.config import positive_int
from zhongjing.data.render import IGNORE, STRATEGIES, Renderer
from zhongjing.errors import ZhongjingError

OPEN, CLOSE = "⟦", "⟧"


def marked_text(tokenizer, input_ids: list[int], labels: list[int], color: bool = False) -> str:
    """Decode runs of trained / untrained tokens; trained runs are wrapped in ⟦…⟧ (green on a terminal)."""
    out = []
    for trained, run in itertools.groupby(zip(input_ids, labels), key=lambda x: x[1] != IGNORE):
        text = tokenizer.decode([t for t, _ in run], skip_special_tokens=False)
        if trained:
            text = f"\x1b[42;30m{text}\x1b[0m" if color else f"{OPEN}{text}{CLOSE}"
        out.append(text)
    return "".join(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zhongjing data show-mask", description=__doc__)
    p.add_argument("file", help="dialogues in any supported format")
    p.add_argument("--index", type=int, default=0, help="record number (0-based)")
    p.add_argument("--model", required=True, help="model or adapter folder whose tokenizer and chat template to use")
    p.add_argument("--format", default=None)
    p.add_argument("--strategy", choices=STRATEGIES, default="all", help="which turns are trained (default: all doctor turns)")
    p.add_argument("--max-length", type=positive_int, default=4096,
                   help="as train sft's max_length (default 4096); capped by the model's context as sft caps it")
    p.add_argument("--color", action="store_true", help="highlight instead of ⟦…⟧ brackets")
    a = p.parse_args(argv)

    from zhongjing.data.readers import read_dialogues
    from zhongjing.model.load import load_tokenizer, prompt_budget

    if a.index < 0:
        raise ZhongjingError("--index must be ≥ 0")
    dialogue = next(itertools.islice(read_dialogues(a.file, a.format), a.index, None), None)
    if dialogue is None:
        raise ZhongjingError(f"{a.file}: has no record {a.index}")
    tok = load_tokenizer(a.model, light=True)
    # the length sft trains with: beyond the model's positions it keeps fewer turns than the 4096 shown before
    a.max_length = prompt_budget(a.max_length, a.model)
    renderer = Renderer(tok, max_length=a.max_length, strategy=a.strategy)
    r = renderer.render(dialogue.messages)
    if r is None:
        raise ZhongjingError(f"{a.file}: record {a.index} ({dialogue.id}) cannot be trained: {', '.join(renderer.stats)}")
    print(marked_text(tok, r.input_ids, r.labels, color=a.color and sys.stdout.isatty()))
    print(f"\n# {dialogue.id}: {len(r.input_ids)} tokens, {r.n_trained} trained ({a.strategy}), "
          f"{r.dropped_exchanges} oldest exchange(s) dropped to fit {a.max_length}")
    return 0
