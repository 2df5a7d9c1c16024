"""Regenerate every demo file from the hand-written sources, deterministically.

    python -m zhongjing.demo.make_demo            # rewrite zhongjing/demo/*
    python -m zhongjing.demo.make_demo --out DIR  # write elsewhere
    python -m zhongjing.demo.make_demo --check    # exit 1 if the committed files differ

Each part draws from its own seeded random stream, so editing one source file only changes the
outputs that depend on it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from zhongjing.demo import DEMO_DIR, FILES
from zhongjing.demo.corpus import corpus_files, kg_record
from zhongjing.demo.dialogues import Composer
from zhongjing.demo.facts import SOURCE_DIR, load_conditions, load_phrases
from zhongjing.demo.items import exam_items, knowledge_qa, safety_items, self_cognition_items
from zhongjing.demo.raw import build_raw
from zhongjing.io import atomic_open, iter_jsonl

SEED = 20240601
N_MULTI, N_SINGLE, N_SYSTEM = 400, 60, 12   # dialogues.jsonl: multi : single ≈ 7 : 1 is reachable
N_KNOWLEDGE, N_TRANSCRIPTS = 80, 110


def _rng(part: str) -> random.Random:
    return random.Random(f"{SEED}:{part}")  # str seeds hash with sha512: stable across runs and platforms


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def generate() -> dict[str, bytes]:
    """{path relative to the demo folder: content}. Pure: reads only zhongjing/demo/source/."""
    phrases = load_phrases()
    conds = load_conditions(phrases)
    out: dict[str, bytes] = {}

    rng = _rng("dialogues")
    composer = Composer(phrases, rng)
    multi = [composer.multi_turn(conds[i % len(conds)], i + 1) for i in range(N_MULTI)]
    order = list(range(len(conds)))
    rng.shuffle(order)
    single = [composer.single_turn(conds[order[i % len(conds)]], i + 1) for i in range(N_SINGLE)]
    for d in rng.sample(multi, N_SYSTEM):
        d["messages"].insert(0, {"role": "system", "content": rng.choice(phrases["system_prompts"])})
    dialogues = multi + single
    rng.shuffle(dialogues)
    out[FILES["dialogues"]] = _jsonl(dialogues)

    out[FILES["single_turn"]] = _jsonl(knowledge_qa(conds, _rng("knowledge"), N_KNOWLEDGE))
    out[FILES["safety"]] = _jsonl(safety_items())
    out[FILES["self_cognition"]] = _jsonl(self_cognition_items())
    out[FILES["exam"]] = _jsonl(exam_items(_rng("exam")))
    out[FILES["kg"]] = _jsonl([kg_record(c) for c in conds])
    out[FILES["preference_pairs"]] = _jsonl([row for _, row in iter_jsonl(SOURCE_DIR / "preference_pairs.jsonl")])

    rng = _rng("corpus")
    texts = corpus_files(conds, Composer(phrases, rng), rng, N_TRANSCRIPTS)
    out.update({f"{FILES['corpus']}/{name}": text.encode("utf-8") for name, text in texts.items()})

    rng = _rng("raw")
    raw_files, manifest = build_raw(conds, Composer(phrases, rng), rng)
    out.update(raw_files)
    out[FILES["manifest"]] = (json.dumps(manifest, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    return out


def write(files: dict[str, bytes], out_dir: Path) -> None:
    for rel, data in sorted(files.items()):
        with atomic_open(out_dir / rel, "wb") as f:
            f.write(data)


def differences(files: dict[str, bytes], out_dir: Path) -> list[str]:
    """Relative paths whose bytes on disk differ from `files` (or are missing)."""
    return [rel for rel, data in sorted(files.items())
            if not (out_dir / rel).is_file() or (out_dir / rel).read_bytes() != data]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zhongjing.demo.make_demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEMO_DIR, help="output folder (default: the package's demo folder)")
    ap.add_argument("--check", action="store_true", help="only compare with the files in --out; exit 1 on a difference")
    args = ap.parse_args(argv)
    files = generate()
    if args.check:
        diff = differences(files, args.out)
        for rel in diff:
            print(f"differs: {rel}", file=sys.stderr)
        return 1 if diff else 0
    write(files, args.out)
    total = sum(len(b) for b in files.values())
    print(f"wrote {len(files)} files ({total / 1024:.0f} KiB) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
