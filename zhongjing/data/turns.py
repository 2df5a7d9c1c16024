"""Which patient turns of a dialogue get answered, each with the gold history before it (generate, RL prompts).

Item id = `<dialogue id>#<turn>` (turn = 1-based patient turn); the real doctor answer, when there is one, goes to
`meta.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass

from zhongjing.data.schema import Dialogue


@dataclass
class Item:
    id: str
    context: list  # Messages, ending with the patient turn to answer
    meta: dict


def select_turns(d: Dialogue, turn: str) -> list[Item]:
    """The patient turns of `d` to answer, each with the gold history before it."""
    users = [i for i, m in enumerate(d.messages) if m.role == "user"]
    if turn == "last":
        chosen = users[-1:]
    elif turn == "all":
        chosen = users
    else:
        n = int(turn)
        chosen = users[n - 1:n]
    out = []
    for i in chosen:
        n = users.index(i) + 1
        nxt = d.messages[i + 1] if i + 1 < len(d.messages) else None
        meta = {"source_id": d.id, "turn": n, **{k: v for k, v in d.meta.items() if k in ("department", "source")}}
        if nxt is not None and nxt.role == "assistant":
            meta["reference"] = nxt.content
        out.append(Item(f"{d.id}#{n}", d.messages[: i + 1], meta))
    return out
