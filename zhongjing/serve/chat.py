"""`zhongjing chat`: multi-turn chat with a model folder in the terminal, answers streamed as they are generated.

The prompt is rendered with the model's chat template exactly as training renders it; when the conversation no
longer fits the context (minus room for the answer), the oldest exchanges are left out of the prompt, as in
training. Commands: /reset (new conversation), /save FILE (append it to a Dialogue JSONL file), /exit.
Works with a pipe on stdin: then only the answers are printed, each ended by a newline.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

from zhongjing.data.render import Renderer
from zhongjing.data.schema import Dialogue
from zhongjing.errors import ZhongjingError
from zhongjing.io import iter_jsonl, write_jsonl
from zhongjing.model.generation import stream
from zhongjing.serve import add_model_args, load_chat_model, model_id, system_prompt_from

HELP = "commands: /reset  new conversation · /save FILE  append it to a Dialogue JSONL · /exit  quit"


def save_dialogue(path: str | Path, dialogue: Dialogue) -> int:
    """Add `dialogue` to a JSONL file (replacing an earlier save of the same conversation); returns records."""
    path = Path(path).expanduser()  # "/save ~/chats.jsonl" is typed at a prompt, where no shell expands "~"
    rows = [d for _, d in iter_jsonl(path) if d.get("id") != dialogue.id] if path.exists() else []
    return write_jsonl(path, rows + [dialogue.to_dict()])


class ChatSession:
    """History + rendering + generation, separate from the terminal so it is easy to drive."""

    def __init__(self, model, tokenizer, context: int, *, system: str | None, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int | None, name: str, repetition_penalty: float = 1.0):
        self.model, self.tokenizer, self.context, self.system = model, tokenizer, context, system
        self.max_new_tokens = max_new_tokens
        # room kept free for the answer when old turns must go; never more than half the context
        self.reserve = min(max_new_tokens, context // 2)
        self.temperature, self.top_p, self.seed, self.name = temperature, top_p, seed, name
        self.repetition_penalty = repetition_penalty
        self.renderer = Renderer(tokenizer, max_length=context)
        self.reset()

    def reset(self) -> None:
        self.history: list[dict] = []
        self.id = time.strftime("chat-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.turn = 0

    def messages(self, user: str | None = None) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history + ([{"role": "user", "content": user}] if user is not None else [])

    def prompt(self, user: str) -> tuple[list[int], bool]:
        """(prompt ids, whether older turns had to be left out)."""
        msgs = self.messages(user)
        ids = self.renderer.prompt_ids(msgs, reserve=self.reserve)
        full = len(Renderer(self.tokenizer, max_length=1 << 40).prompt_ids(msgs)) if self.history else len(ids)
        return ids, full > len(ids)

    def answer(self, user: str, write) -> str:
        """Stream the answer to `write`; keep the exchange in the history unless the answer is empty."""
        ids, dropped = self.prompt(user)
        if dropped:
            print("(the conversation is longer than the model's context: the oldest turns are left out)", file=sys.stderr)
        seed = None if self.seed is None else self.seed + self.turn
        s = stream(self.model, self.tokenizer, ids, max_new_tokens=min(self.max_new_tokens, self.context - len(ids)),
                   temperature=self.temperature, top_p=self.top_p, seed=seed, repetition_penalty=self.repetition_penalty)
        for piece in s:
            write(piece)
        self.turn += 1
        text = s.result.text
        if text.strip():
            self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": text}]
        return text

    def dialogue(self) -> Dialogue:
        meta = {"source": "zhongjing chat", "model": self.name, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return Dialogue.from_dict({"id": self.id, "messages": self.messages(), "meta": meta})


def _lines(interactive: bool):
    if not interactive:
        yield from sys.stdin
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:
            print()
            return


def run(session: ChatSession, interactive: bool) -> None:
    out = sys.stdout
    for line in _lines(interactive):
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            if cmd in ("/exit", "/quit"):
                break
            if cmd == "/reset":
                session.reset()
                print("(new conversation)", file=sys.stderr)
            elif cmd == "/save":
                if not arg.strip():
                    print("usage: /save FILE", file=sys.stderr)
                elif not session.history:
                    print("(nothing to save yet)", file=sys.stderr)
                else:
                    try:  # a bad path must not end the chat and lose the conversation
                        n = save_dialogue(arg.strip(), session.dialogue())
                    except (ZhongjingError, OSError) as e:
                        print(f"(not saved: {e})", file=sys.stderr)
                    else:
                        print(f"(saved to {arg.strip()}, {n} dialogues in the file)", file=sys.stderr)
            else:
                print(HELP, file=sys.stderr)
            continue
        if interactive:
            out.write("assistant> ")
        try:
            text = session.answer(text, lambda piece: (out.write(piece), out.flush()))
        except ZhongjingError as e:
            print(f"\n(error: {e})", file=sys.stderr)
            continue
        except KeyboardInterrupt:
            print("\n(stopped; this turn is not kept)", file=sys.stderr)
            continue
        out.write("\n")
        out.flush()
        if not text.strip():
            print("(empty answer; not kept in the history)", file=sys.stderr)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zhongjing chat", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeating tokens (1 = off)")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    if args.max_new_tokens < 1:
        raise ZhongjingError("--max-new-tokens must be at least 1")
    if not 0 <= args.temperature < float("inf"):  # checked before the model loads, not once per message (NaN too)
        raise ZhongjingError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ZhongjingError(f"--top-p must be in (0, 1], got {args.top_p}")
    if not 0 < args.repetition_penalty < float("inf"):
        raise ZhongjingError(f"--repetition-penalty must be > 0 (1 = off), got {args.repetition_penalty}")
    for stream_ in (sys.stdin, sys.stdout):
        if hasattr(stream_, "reconfigure") and not stream_.isatty():
            stream_.reconfigure(encoding="utf-8", errors="replace")
    model, tokenizer, ctx = load_chat_model(args.model, dtype=args.dtype, threads=args.threads)
    session = ChatSession(model, tokenizer, ctx, system=system_prompt_from(args), max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p, seed=args.seed, name=model_id(args.model),
                          repetition_penalty=args.repetition_penalty)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"zhongjing chat · {session.name} · context {ctx} tokens\n{HELP}", file=sys.stderr)
    run(session, interactive)
    return 0
