"""`zhongjing` command: a table from command words to the module that owns them.

Each module exposes `main(argv: list[str]) -> int | None` with its own argparse parser, so
`zhongjing --help` stays fast and a missing optional extra only breaks its own command.
"""

from __future__ import annotations

import importlib
import sys

from zhongjing.pipeline.stages import STAGES

# the pipeline stages' own commands (init-model, build, train pt/sft/rm/ppo, generate, eval): from their Stage rows
STAGE_COMMANDS = {" ".join(s.command): (s.module, s.help) for s in STAGES.values() if s.command}
# command words → (module, one-line help). Groups ("data", "train", ...) list their sub-words.
COMMANDS: dict[str, tuple[str, str]] = {
    "data convert": ("zhongjing.data.convert", "convert files of any supported format to Dialogue/Document/Ranking JSONL"),
    "data stats": ("zhongjing.data.stats", "records, turns, characters, departments and roles of a file"),
    "data criteria": ("zhongjing.data.criteria", "draft per-case rubric criteria (KG check + rubric) for doctors to review"),
    "data cases": ("zhongjing.consult.cases", "consultation cases: opening + hidden facts revealed later (RL environment)"),
    "data show-mask": ("zhongjing.model.show_mask", "print a rendered dialogue with the trained spans marked"),
    **STAGE_COMMANDS,
    "train dpo": ("zhongjing.train.dpo", "direct preference optimisation"),
    "train grpo": ("zhongjing.train.grpo", "group relative policy optimisation"),
    "train consult": ("zhongjing.consult.loop", "multi-turn RL against a simulated patient, or exam RLVR (env=exam)"),
    "export": ("zhongjing.model.export", "merge a LoRA adapter into a standalone model folder"),
    "score": ("zhongjing.score", "reward of each (dialogue, response) under a reward model"),
    "annotate": ("zhongjing.annotate.cli", "web tool where doctors rank answers (serve/import/export)"),
    "chat": ("zhongjing.serve.chat", "multi-turn chat in the terminal"),
    "serve": ("zhongjing.serve.server", "OpenAI-compatible HTTP server with a web chat page"),
    "pipeline": ("zhongjing.pipeline.run", "run init-model → build → pt → sft → generate → rank → rm → ppo → eval"),
}


def _usage() -> str:
    lines = ["usage: zhongjing COMMAND [args...]   (zhongjing COMMAND --help for details)", "", "commands:"]
    for words, (_, help_) in COMMANDS.items():
        lines.append(f"  {words:<16} {help_}")
    return "\n".join(lines)


def _lookup(argv: list[str]) -> tuple[str, list[str]] | None:
    for n in (2, 1):
        words = " ".join(argv[:n])
        if len(argv) >= n and words in COMMANDS:
            return COMMANDS[words][0], argv[n:]
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `zhongjing ... | head`: the reader has gone; exit quietly, as cat/grep do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 141


def _main(argv: list[str] | None = None) -> int:
    from zhongjing.errors import ZhongjingError

    if argv is None:  # a command process (tests calling main(argv) in-process keep their imports as they are)
        from zhongjing.model.load import skip_bitsandbytes

        skip_bitsandbytes(sys.argv[1:])
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from zhongjing import __version__

        print(__version__)
        return 0
    found = _lookup(argv)
    if found is None:
        group = [w for w in COMMANDS if w.split()[0] == argv[0]]
        if group and argv[1:2] in (["-h"], ["--help"]):  # `zhongjing data --help`: the group's commands
            print("\n".join(f"  {w:<16} {COMMANDS[w][1]}" for w in group))
            return 0
        hint = f" (one of: {', '.join(group)})" if group else ""
        print(f"zhongjing: unknown command {' '.join(argv[:2])!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, rest = found
    try:
        return importlib.import_module(module).main(rest) or 0
    except ZhongjingError as e:
        print(f"zhongjing: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zhongjing: interrupted", file=sys.stderr)
        return 130
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """A stage launched on several processes leaves its gloo/NCCL group open; torch asks for it to be destroyed
    before exit (a process exiting with it open was seen aborting in its teardown: "terminate called without an
    active exception", exit code -6, after its work was done). torch is only looked up if already imported."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # the result is written already; never turn a finished run into a failure
            pass


if __name__ == "__main__":
    raise SystemExit(main())
