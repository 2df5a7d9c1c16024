"""The package's own demo data: a small, hand-made Chinese medical set that lets the whole
pipeline (pt → sft → generate → rm → ppo → eval, and the builder) run without any outside data.

Regenerate with `python -m zhongjing.demo.make_demo` (deterministic; `--check` verifies the
committed files). See zhongjing/demo/README.md for what each file holds.
"""

from __future__ import annotations

from pathlib import Path

from zhongjing.errors import ZhongjingError

DEMO_DIR = Path(__file__).resolve().parent

# name → path relative to DEMO_DIR
FILES: dict[str, str] = {
    "corpus": "corpus",                       # pre-training / tokenizer text (*.txt, documents split by a blank line)
    "dialogues": "dialogues.jsonl",           # Dialogue JSONL: 400 multi-turn (doctor asks first) + 60 single-turn
    "single_turn": "single_turn.jsonl",       # Dialogue JSONL: single-turn knowledge QA (huatuo-style eval / SFT mix)
    "safety": "safety.jsonl",                 # Dialogue JSONL: unsafe requests with safe reference answers
    "self_cognition": "self_cognition.jsonl", # Dialogue JSONL: who the assistant is
    "exam": "exam.jsonl",                     # multiple choice: id, question, options {A..}, answer, subject
    "kg": "kg.jsonl",                         # knowledge graph records in the medical_kg_xywy layout
    "preference_pairs": "preference_pairs.jsonl",  # 16 hand-written safe-vs-unsafe pairs (judge validation)
    "raw": "raw",                             # raw material for the builder demo
    "raw_covid": "raw/covid_dialogue.txt",    # COVID-Dialogue-style txt (UTF-8)
    "raw_cmtmedqa": "raw/cmtmedqa.json",      # CMtMedQA-style JSON list
    "raw_toyhom": "raw/toyhom.csv",           # Toyhom-style CSV (GB18030)
    "manifest": "raw_manifest.json",          # ground truth of what was planted in raw/ (kept outside raw/ so
                                              # reading raw/ as a folder sees only data files)
}


def demo_path(name: str) -> Path:
    """Path of a demo file by its FILES name (or a path relative to the demo folder)."""
    rel = FILES.get(name, name)
    path = DEMO_DIR / rel
    if name not in FILES and (not path.exists() or DEMO_DIR not in path.resolve().parents):
        raise ZhongjingError(f"unknown demo file {name!r} (known: {', '.join(FILES)})")
    if not path.exists():
        raise ZhongjingError(f"demo file {rel} is missing; regenerate with: python -m zhongjing.demo.make_demo")
    return path
