"""Dialogue → `input_ids` + `labels` through the tokenizer's own chat template.

The template is rendered at message boundaries (prefix before a doctor turn, prefix after
it) and each piece is tokenized on its own, so which tokens are trained is known while
rendering — no searching the text for role markers afterwards. A doctor turn is trained up
to and including its end-of-turn token; whatever the template adds after it (a newline) is not.

Truncation keeps the system prompt and the *latest* complete exchanges (peers drop the
latest turns — the wrong end for a model that must answer the current question).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Sequence

from zhongjing.data.schema import Message
from zhongjing.errors import ZhongjingError

IGNORE = -100
Strategy = Literal["all", "last", "everything"]
STRATEGIES = ("all", "last", "everything")


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]  # IGNORE where not trained
    dropped_exchanges: int = 0  # oldest user+doctor exchanges removed to fit max_length

    @property
    def n_trained(self) -> int:
        return sum(x != IGNORE for x in self.labels)


@dataclass
class Piece:
    text: str
    ids: list[int]
    trained: list[bool]


def _as_dicts(messages: Sequence) -> list[dict]:
    return [m.to_dict() if isinstance(m, Message) else {"role": m["role"], "content": m["content"]} for m in messages]


def folder_stop_ids(tokenizer) -> set[int]:
    """The stop tokens generation_config.json lists next to the tokenizer (GLM-4: <|user|> and <|observation|> end
    an answer), so a Renderer made from the tokenizer alone (show-mask) marks what training marks."""
    import json
    from pathlib import Path

    f = Path(getattr(tokenizer, "name_or_path", "") or "") / "generation_config.json"
    try:
        eos = json.loads(f.read_text(encoding="utf-8")).get("eos_token_id") if f.is_file() else None
    except (OSError, ValueError):
        return set()
    return {eos} if isinstance(eos, int) else {int(x) for x in eos or [] if isinstance(x, int)}


def fold_system(msgs: list[dict]) -> list[dict]:
    """A system turn moved into the first patient turn, for templates without a system role."""
    system, rest = msgs[0]["content"], msgs[1:]
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}] + rest[1:]
    return rest


@dataclass
class Renderer:
    tokenizer: object
    max_length: int = 4096
    strategy: Strategy = "all"
    end_ids: set[int] | None = None  # end-of-turn ids; default: tokenizer eos
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ZhongjingError(f"unknown mask strategy {self.strategy!r} (one of {', '.join(STRATEGIES)})")
        if self.end_ids is None:
            eos = self.tokenizer.eos_token_id
            self.end_ids = ({eos} if eos is not None else set()) | folder_stop_ids(self.tokenizer)

    # -- template pieces -------------------------------------------------------------
    def _template(self, msgs: list[dict], gen: bool) -> str:
        if msgs and msgs[0]["role"] == "system" and not self.takes_system():
            msgs = fold_system(msgs)
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    def takes_system(self) -> bool:
        """Whether the template renders a system turn (Mistral's [INST] template refuses one: the system prompt
        then opens the first patient turn, as Mistral's own tooling does)."""
        if "_system_ok" not in self.__dict__:
            try:
                self.tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                                   tokenize=False, add_generation_prompt=True)
                self._system_ok = True
            except Exception:  # jinja2's TemplateError from the template's raise_exception
                self._system_ok = False
        return self._system_ok

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "") or "this tokenizer"

    def pieces(self, messages: Sequence) -> list[Piece]:
        """The rendered dialogue as consecutive pieces, each wholly prompt or wholly a doctor turn.

        Templates that rewrite earlier turns once a later one is added (Qwen3 renders an empty <think> block only
        for the latest answer) are cut where each doctor turn starts in the full rendering and trained up to its
        end-of-turn token, i.e. each turn is trained exactly as it appears in the whole dialogue. A template with
        no closing token after an answer (GLM-4: the next <|user|> ends it) trains that next stop token, and the
        eos is appended after the final answer, so the model learns to stop."""
        msgs = _as_dicts(messages)
        cuts: list[tuple[int, bool]] = []  # (end offset of a piece, piece is a doctor turn)
        full = self._template(msgs, gen=msgs[-1]["role"] != "assistant")
        assistant_idx = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        rewrites = False
        for k, i in enumerate(assistant_idx):
            before = self._template(msgs[:i], gen=True)
            after = self._template(msgs[: i + 1], gen=False)
            if not full.startswith(before):
                raise ZhongjingError(
                    f"chat template of {self._name()} does not render dialogues prefix-stably: the prompt before "
                    f"doctor turn {k + 1} is not the start of the whole dialogue (earlier turns are rewritten), so "
                    "doctor turns cannot be masked exactly; use a template without that behaviour")
            if after.startswith(before) and full.startswith(after):
                cuts += [(len(before), False), (len(after), True)]
            else:  # e.g. Qwen3: the turn ends at the next doctor turn's prompt; trained up to its end token
                rewrites = True
                nxt = (len(self._template(msgs[: assistant_idx[k + 1]], gen=True)) if k + 1 < len(assistant_idx)
                       else len(full))
                said = msgs[i]["content"].split("</think>")[-1].strip()
                if said not in full[len(before):nxt]:  # the rewrite changed what the doctor said: nothing to train
                    raise ZhongjingError(
                        f"chat template of {self._name()} does not render dialogues prefix-stably: doctor turn "
                        f"{k + 1} is rewritten once a later turn is added, so it cannot be masked exactly; use a "
                        "template without that behaviour")
                cuts += [(len(before), False), (nxt, True)]
        cuts.append((len(full), False))
        out, start = [], 0
        for end, is_doctor in cuts:
            if end < start:
                raise ZhongjingError(f"chat template of {self._name()} produced overlapping turns")
            text = full[start:end]
            ids = self._encode(text)
            trained = [is_doctor] * len(ids)
            if is_doctor:  # train through the end-of-turn token, not what the template adds after it
                stop = next((k for k, t in enumerate(ids) if t in self.end_ids), None)
                if stop is not None:
                    trained = [k <= stop for k in range(len(ids))]
                elif rewrites and text:
                    raise ZhongjingError(f"chat template of {self._name()} rewrites earlier turns and closes a doctor "
                                         "turn with no end-of-turn token, so its extent is unknown")
            out.append(Piece(text, ids, trained))
            start = end
        out = [p for p in out if p.ids]
        self._close_open_turns(out)
        return out

    def _close_open_turns(self, pieces: list[Piece]) -> None:
        """A doctor turn with no end-of-turn token in it trains the stop token that opens the next piece (GLM-4's
        <|user|>), or, at the very end, an appended eos."""
        eos = self.tokenizer.eos_token_id
        for k, p in enumerate(pieces):
            if not p.trained or not all(p.trained) or any(t in self.end_ids for t in p.ids):
                continue
            nxt = pieces[k + 1] if k + 1 < len(pieces) else None
            if nxt is not None and nxt.ids[0] in self.end_ids:
                p.ids.append(nxt.ids.pop(0))
                p.trained.append(True)
                nxt.trained.pop(0)
            elif nxt is None and eos is not None:
                p.ids.append(eos)
                p.trained.append(True)
        pieces[:] = [p for p in pieces if p.ids]

    # -- masks -------------------------------------------------------------------------
    def _labels(self, pieces: list[Piece]) -> tuple[list[int], list[int]]:
        ids = [t for p in pieces for t in p.ids]
        if self.strategy == "everything":
            return ids, list(ids)
        trained = [b for p in pieces for b in p.trained]
        if self.strategy == "last":
            last = max((k for k, p in enumerate(pieces) if any(p.trained)), default=None)
            trained = [b and k == last for k, p in enumerate(pieces) for b in p.trained]
        return ids, [t if b else IGNORE for t, b in zip(ids, trained)]

    def render(self, messages: Sequence) -> Rendered | None:
        """Training example for a dialogue ending with a doctor turn, or None (counted) if it cannot fit."""
        msgs = _as_dicts(messages)
        while msgs and msgs[-1]["role"] != "assistant":  # a trailing patient turn has nothing to learn
            msgs = msgs[:-1]
        if not any(m["role"] == "assistant" for m in msgs):
            self.stats["dropped_no_doctor_turn"] += 1
            return None
        head = msgs[:1] if msgs[0]["role"] == "system" else []
        body = msgs[len(head):]
        found = self._fit(head, body, self.max_length, lambda ms: self._labels(self.pieces(ms)))
        if found is None:
            self.stats["dropped_too_long"] += 1
            return None
        drop, (ids, labels) = found
        self.stats["rendered"] += 1
        if drop:
            self.stats["truncated"] += 1
            self.stats["dropped_exchanges"] += drop
        return Rendered(ids, labels, drop)

    @staticmethod
    def _fit(head: list[dict], body: list[dict], budget: int, build):
        """Fewest oldest exchanges to drop so that build(head + rest)[0] fits in budget.

        Length only shrinks as more exchanges go, so after the common no-drop case a binary
        search over the drop count needs O(log turns) renders. Returns (drop, built) or None.
        """
        n = (len(body) + 1) // 2  # exchanges; the last may be a lone patient turn
        built = build(head + body)
        if len(built[0]) <= budget:
            return 0, built
        lo, hi, best = 1, n - 1, None
        while lo <= hi:
            mid = (lo + hi) // 2
            cand = build(head + body[2 * mid:])
            if len(cand[0]) <= budget:
                best, hi = (mid, cand), mid - 1
            else:
                lo = mid + 1
        return best

    def prompt_ids(self, messages: Sequence, reserve: int = 0) -> list[int]:
        """Prompt for answering the final patient turn (generation prompt included), keeping the latest
        exchanges that fit in max_length - reserve (reserve = room for the answer)."""
        msgs = _as_dicts(messages)
        if msgs[-1]["role"] != "user":
            raise ZhongjingError("a prompt must end with a patient (user) turn")
        head = msgs[:1] if msgs[0]["role"] == "system" else []
        budget = self.max_length - reserve
        found = self._fit(head, msgs[len(head):], budget, lambda ms: ([t for p in self.pieces(ms) for t in p.ids],))
        if found is None:
            raise ZhongjingError(f"the last patient turn alone is longer than {budget} tokens")
        return found[1][0]
