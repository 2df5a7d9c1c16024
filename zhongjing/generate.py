"""`zhongjing generate`: K sampled answers per doctor turn → Ranking JSONL with empty rankings (annotation input).

Each selected patient turn is answered with the gold history before it (the dialogue's real earlier turns, not the
model's), which is also how the paper's evaluation judges every turn. Item id = `<dialogue id>#<turn>` (turn = 1-based
patient turn), and the real doctor answer, when there is one, goes to `meta.reference` for the annotators.

Resumable: finished items are appended to `OUT.partial` (one flushed line each) and skipped on restart; the final
file is written atomically in input order and the partial file removed. Changing the sampling settings between
the two runs is refused (they would mix in one file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zhongjing.config import describe, load_config
from zhongjing.data.schema import Ranking
from zhongjing.data.turns import select_turns
from zhongjing.errors import ConfigError, ZhongjingError
from zhongjing.io import check_output, iter_jsonl, sha256_json, write_json, write_jsonl


@dataclass
class GenerateConfig:
    model: str = ""  # model or adapter folder (usually the SFT output)
    input: list[str] = field(default_factory=list)  # dialogue files/folders in any supported format
    output: str = ""  # Ranking JSONL
    format: str | None = None  # input format (None = detected)
    k: int = 4  # answers per turn (the paper: 4)
    turn: str = "last"  # "last" patient turn, "all" of them, or a 1-based number ("2")
    temperature: float = 0.9
    top_p: float = 0.9
    top_k: int = 0
    max_new_tokens: int = 512
    max_length: int = 4096  # prompt + answer; older exchanges are dropped from the prompt to fit
    batch_size: int = 16  # rows decoded together
    retries: int = 3  # extra draws for answers that came out empty
    seed: int = 0
    dtype: str = "float32"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    overwrite: bool = False  # start over even if OUT or OUT.partial exists
    progress: bool = True

    def __post_init__(self):
        from zhongjing.model.decoder import check_sampling

        if self.k < 1:
            raise ConfigError(f"config key 'k': must be at least 1, got {self.k}")
        check_sampling(self)
        if self.turn not in ("last", "all") and not (self.turn.isdigit() and int(self.turn) >= 1):
            raise ConfigError(f"config key 'turn': 'last', 'all' or a patient-turn number ≥ 1, got {self.turn!r}")


def _settings(cfg: GenerateConfig) -> dict:
    keys = ("model", "k", "turn", "temperature", "top_p", "top_k", "max_new_tokens", "max_length", "seed")
    return {k: getattr(cfg, k) for k in keys}


def partial_paths(output: Path) -> tuple[Path, Path]:
    """Where a run resumes from: OUT.partial (finished items) and OUT.partial.json (the settings they used)."""
    return output.with_name(output.name + ".partial"), output.with_name(output.name + ".partial.json")


class Partial:
    """OUT.partial: finished items, one JSON line each; a line cut by a kill is dropped on reopen."""

    def __init__(self, output: Path, settings: dict, overwrite: bool):
        self.path, self.meta = partial_paths(output)
        self.done: dict[str, dict] = {}
        if overwrite:
            self.path.unlink(missing_ok=True)
            self.meta.unlink(missing_ok=True)
        if self.path.exists():
            try:
                old = json.loads(self.meta.read_text(encoding="utf-8")) if self.meta.exists() else {}
            except (ValueError, OSError):  # damaged: its items' settings are unknown, so they cannot be kept
                old = None
            if not isinstance(old, dict):
                old = {"settings": f"unknown: {self.meta.name} is unreadable"}
            if old.get("settings_hash") != sha256_json(settings):
                raise ZhongjingError(f"{self.path} was written with other settings ({old.get('settings')}); "
                                     "set overwrite=true to start over")
            self._load()
        else:
            write_json(self.meta, {"settings_hash": sha256_json(settings), "settings": settings})
        self.f = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        good = 0
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    uid = row["id"]
                except (ValueError, TypeError, KeyError):  # (JSON and UTF-8 errors are ValueErrors)
                    break  # the kill cut this line; everything after it is unwritten
                self.done[uid] = row
                good += len(line)
        os.truncate(self.path, good)

    def add(self, row: dict) -> None:
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()
        self.done[row["id"]] = row

    def close(self, remove: bool) -> None:
        self.f.close()
        if remove:
            self.path.unlink(missing_ok=True)
            self.meta.unlink(missing_ok=True)


def generate(cfg: GenerateConfig) -> dict:
    from zhongjing.data.readers import read_dialogues
    from zhongjing.data.render import Renderer
    from zhongjing.model.generation import derive_seed, sample
    from zhongjing.model.load import load_model, load_tokenizer, prompt_budget, setup_torch

    if not cfg.model or not cfg.input or not cfg.output:
        raise ConfigError("generate needs model, input and output (e.g. --model runs/sft dialogues.jsonl -o out.jsonl)")
    output = check_output(cfg.output, folder=False)
    if output.exists() and not cfg.overwrite:
        n = sum(1 for _ in iter_jsonl(output))
        print(f"{output} already complete ({n} items); set overwrite=true to generate again", file=sys.stderr)
        return {"items": n, "generated": 0, "skipped_empty": 0}
    setup_torch(seed=cfg.seed, threads=cfg.threads or None)
    items = [it for d in read_dialogues(cfg.input, cfg.format) for it in select_turns(d, cfg.turn)]
    if not items:
        raise ZhongjingError(f"no patient turns to answer in {cfg.input} (turn={cfg.turn})")
    partial = Partial(output, _settings(cfg), cfg.overwrite)
    todo = [it for it in items if it.id not in partial.done]
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, dtype=cfg.dtype)
    renderer = Renderer(tok, max_length=prompt_budget(cfg.max_length, cfg.model))
    stats = {"items": len(items), "generated": 0, "skipped_empty": 0, "skipped_too_long": 0,
             "resumed": len(items) - len(todo)}
    prompt_of: dict[str, list[int]] = {}
    for it in todo:
        try:
            prompt_of[it.id] = renderer.prompt_ids(it.context, reserve=cfg.max_new_tokens)
        except ZhongjingError:  # the patient turn alone leaves no room for an answer within max_length
            stats["skipped_too_long"] += 1
    todo = [it for it in todo if it.id in prompt_of]
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="generate", unit="turn", file=sys.stderr)
    chunk = max(1, cfg.batch_size // cfg.k) * 4  # items per sample() call: enough rows to keep the batch full
    try:
        for start in range(0, len(todo), chunk):
            group = todo[start:start + chunk]
            prompts = [prompt_of[it.id] for it in group]
            answers: list[list[str]] = [[] for _ in group]
            need = list(range(len(group)))
            for attempt in range(cfg.retries + 1):  # redraw only the answers that came out empty
                seed = derive_seed(cfg.seed, hash_id(group[0].id), attempt)
                k_missing = {i: cfg.k - len(answers[i]) for i in need}
                rows = [i for i in need for _ in range(k_missing[i])]
                gens = sample(model, tok, [prompts[i] for i in rows], max_new_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, num_samples=1,
                              seed=seed, batch_size=cfg.batch_size)
                for g in gens:
                    if g.text.strip():
                        answers[rows[g.prompt_index]].append(g.text.strip())
                need = [i for i in need if len(answers[i]) < cfg.k]
                if not need:
                    break
            for i, it in enumerate(group):
                if len(answers[i]) < cfg.k:
                    stats["skipped_empty"] += 1
                    continue
                r = Ranking(it.id, list(it.context), answers[i], meta=it.meta | {
                    "model": cfg.model, "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p}})
                partial.add(r.to_dict())
                stats["generated"] += 1
            if bar:
                bar.update(len(group))
    finally:
        if bar:
            bar.close()
    done = [partial.done[it.id] for it in items if it.id in partial.done]
    write_jsonl(output, done)
    partial.close(remove=True)
    stats["written"] = len(done)
    return stats


def hash_id(s: str) -> int:
    return int(sha256_json(s)[:12], 16)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="zhongjing generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (key=value):\n" + "\n".join(describe(GenerateConfig)))
    p.add_argument("--config")
    p.add_argument("--model")
    p.add_argument("-o", "--output")
    p.add_argument("--k", type=int)
    p.add_argument("--turn", help="last | all | N (1-based patient turn)")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", dest="top_p", type=float)
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    p.add_argument("args", nargs="*", metavar="INPUT | key=value")
    a = p.parse_intermixed_args(argv)
    overrides = [x for x in a.args if "=" in x and not Path(x).exists()]
    cfg = load_config(GenerateConfig, a.config, overrides)
    for key in ("model", "output", "k", "turn", "temperature", "top_p", "max_new_tokens"):
        if getattr(a, key) is not None:
            setattr(cfg, key, getattr(a, key))
    inputs = [x for x in a.args if x not in overrides]
    if inputs:
        cfg.input = inputs
    cfg.__post_init__()
    stats = generate(cfg)
    print(json.dumps(stats, ensure_ascii=False))
    return 0

