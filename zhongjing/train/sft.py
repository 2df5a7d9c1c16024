"""`zhongjing train sft`: multi-turn supervised fine-tuning on doctor–patient dialogues (LoRA by default).

Data: dialogues from any reader format. Each dialogue joins a pool: its source's `kind`, or for kind=auto
"multi" (2+ doctor turns) or "single". Pools are mixed by `mix` weights — the paper's multi-turn : single-turn
= 7 : 1 by default; add e.g. `kind: nlp` / `kind: general` sources and give them weights. 10% of every pool
(by dialogue content, deterministic) is held out for validation; the best checkpoint by validation loss is the
result. Dialogues are rendered through the tokenizer's chat template with exact doctor-turn masks, keeping the
latest turns when one is longer than max_length (render.py). Batches are length-grouped (default) or packed
with attention kept inside each dialogue; the padding fraction and every dropped dialogue are reported.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zhongjing.config import at_least, parse_stage_args
from zhongjing.data.render import Renderer, Strategy
from zhongjing.errors import ConfigError, DataError
from zhongjing.model.lora import Finetune, LoraSettings
from zhongjing.train.batching import Example, LazyBatches, collate_rows, group_by_length, pack_rows, plan_padding
from zhongjing.model.identity import data_record
from zhongjing.train.common import TrainSettings
from zhongjing.train.mix import Pool, epoch_items, plan_counts, split_keys


@dataclass
class SFTSource:
    path: str
    format: str | None = None  # reader format; None = detect from the content
    kind: str = "auto"  # auto = multi/single per dialogue; or a pool name (nlp, general, ...) weighted in `mix`
    name: str = ""


@dataclass
class SFTConfig:
    model: str = "runs/demo/pt"  # parent model folder (full model or LoRA adapter, merged in memory)
    output: str = "runs/demo/sft"
    data: list[SFTSource] = field(default_factory=list)  # empty = the package's demo dialogues
    mix: dict[str, float] = field(default_factory=lambda: {"multi": 7.0, "single": 1.0})  # pools not named: all
    mix_size: int | str = "min"  # weighted pools: min | max | N dialogues per epoch (see mix.py)
    system: str = ""  # system prompt given to dialogues that have none (e.g. the assistant's identity)
    max_length: int = 4096  # tokens including history; longer dialogues keep their latest turns
    strategy: Strategy = "all"  # all doctor turns | last | everything
    val_fraction: float = 0.1
    batching: Literal["group", "pack", "pad"] = "group"  # length-grouped | packed rows | plain padded batches
    group_size: int = 16  # group: sort within windows of batch_size × group_size dialogues
    pack_length: int = 0  # pack: row length in tokens; 0 = max_length
    finetune: Finetune = "lora"
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32, dropout=0.1))
    dtype: str = "float32"
    train: TrainSettings = field(default_factory=lambda: TrainSettings(lr=7e-5, epochs=3))

    def __post_init__(self):
        if self.max_length < 8:
            raise ConfigError(f"max_length must be ≥ 8, got {self.max_length}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        at_least(self, 1, "group_size")  # 0 and -5 were accepted and batched some other way than asked
        at_least(self, 0, "pack_length")


def default_sources() -> list[SFTSource]:
    from zhongjing.demo import demo_path

    return [SFTSource(path=str(demo_path("dialogues")), name="dialogues"),
            SFTSource(path=str(demo_path("single_turn")), name="single_turn"),
            SFTSource(path=str(demo_path("self_cognition")), name="self", kind="general")]


def dialogue_key(d) -> str:
    """Identity for the split: the content, so a dialogue repeated across files lands on one side."""
    return hashlib.sha256(json.dumps([[m.role, m.content] for m in d.messages], ensure_ascii=False).encode()).hexdigest()


@dataclass
class DialogueData:
    """Dialogues in pools, rendered lazily: with a 7:1 mix most of a big single-turn pool is not drawn in a given
    epoch, so only what an epoch (or validation) uses is rendered, once, and cached."""

    dialogues: list  # Dialogue, with the system prompt already added
    renderer: Renderer
    pools: list[Pool]
    pool_items: list[list[int]]  # dialogue indices per pool (training part)
    counts: list[int]
    val_items: list[int]
    batching: str
    batch_size: int
    group_size: int
    pack_length: int
    pad_id: int
    seed: int

    def __post_init__(self):
        self.examples: dict[int, Example | None] = {}

    def example(self, i: int) -> Example | None:
        if i not in self.examples:
            r = self.renderer.render(self.dialogues[i].messages)
            ex = Example.from_labels(r.input_ids, r.labels) if r is not None else None
            if ex is not None and ex.n == 0:
                self.renderer.stats["dropped_no_trained_token"] += 1
                ex = None
            self.examples[i] = ex
        return self.examples[i]

    def usable(self, items: list[int]) -> list[int]:
        return [i for i in items if self.example(i) is not None]

    def plan(self, items: list[int], epoch: int) -> list:
        items = self.usable(items)
        lengths = {i: len(self.examples[i].input_ids) for i in items}
        if self.batching == "pack":
            return pack_rows(items, lengths, self.pack_length, self.batch_size, self.group_size, self.seed, epoch)
        group = self.group_size if self.batching == "group" else 1
        return group_by_length(items, lengths, self.batch_size, group, self.seed, epoch)

    def epoch_order(self, epoch: int) -> list[int]:
        return [self.pool_items[p][i] for p, i in epoch_items(self.pools, self.counts, self.seed, epoch)]

    def _lazy(self, plan: list) -> LazyBatches:
        return LazyBatches(plan, lambda rows: collate_rows(rows, self.examples, self.pad_id))

    def train_batches(self, epoch: int) -> LazyBatches:
        return self._lazy(self.plan(self.epoch_order(epoch), epoch))

    def val_batches(self) -> LazyBatches:
        return self._lazy(self.plan(self.val_items, -1))

    def stats(self) -> dict:
        """Padding and trained-token fractions of epoch 0, and what rendering dropped or truncated so far."""
        items = self.usable(self.epoch_order(0))
        lengths = {i: len(self.examples[i].input_ids) for i in items}
        tokens = sum(lengths.values())
        return {"padding_fraction": round(plan_padding(self.plan(items, 0), lengths), 4),
                "trained_token_fraction": round(sum(self.examples[i].n for i in items) / max(tokens, 1), 4),
                "tokens_per_epoch": tokens, "render": dict(self.renderer.stats)}


def load_dialogues(cfg: SFTConfig, tokenizer, end_ids: set[int], log=print) -> tuple[DialogueData, list[dict], dict]:
    from zhongjing.data.readers import read_dialogues
    from zhongjing.data.schema import Message

    dialogues = []
    by_pool: dict[str, list[tuple[str, int]]] = {}  # pool → (split key, dialogue index)
    records = []
    for s in cfg.data or default_sources():
        n = 0
        for d in read_dialogues(s.path, s.format):
            n += 1
            if cfg.system and d.system is None:
                d.messages = [Message("system", cfg.system)] + d.messages
            pool = s.kind if s.kind != "auto" else ("multi" if d.is_multi_turn() else "single")
            by_pool.setdefault(pool, []).append((dialogue_key(d), len(dialogues)))
            dialogues.append(d)
        if not n:
            raise DataError("no dialogues in this source", s.path)
        name = s.name or Path(s.path).name
        records.append(data_record(s.path, name=name, format=s.format, kind=s.kind, dialogues=n))
        log(f"sft data: {name}: {n} dialogues")
    unknown = sorted(set(cfg.mix) - set(by_pool))
    if unknown:
        log(f"sft data: mix names pools with no dialogues: {', '.join(unknown)}")
    pools, pool_items, val_pools = [], [], []
    for name in sorted(by_pool):
        keys, idx = zip(*by_pool[name])
        tr, va = split_keys(list(keys), cfg.val_fraction, cfg.train.seed)
        pools.append(Pool(name, len(tr), cfg.mix.get(name)))
        pool_items.append([idx[i] for i in tr])
        val_pools.append((Pool(name, len(va), cfg.mix.get(name)), [idx[i] for i in va]))
    counts = plan_counts(pools, cfg.mix_size)
    # validation follows the training mix (one fixed draw), so its loss measures what training optimises
    vp = [p for p, _ in val_pools]
    val_items = sorted(val_pools[p][1][i] for p, i in epoch_items(vp, plan_counts(vp, "min"), cfg.train.seed, -1))
    renderer = Renderer(tokenizer, max_length=cfg.max_length, strategy=cfg.strategy, end_ids=end_ids)
    data = DialogueData(dialogues, renderer, pools, pool_items, counts, val_items, cfg.batching,
                        cfg.train.batch_size, cfg.group_size, cfg.pack_length or cfg.max_length,
                        tokenizer.pad_token_id, cfg.train.seed)
    for e in range(1 if cfg.train.max_steps else cfg.train.epochs):  # render what training will draw, once
        data.usable(data.epoch_order(e))
    stats = {"pools": {p.name: {"train": p.size, "val": len(v), "weight": p.weight, "per_epoch": c}
                       for p, c, (_, v) in zip(pools, counts, val_pools)},
             "val_dialogues": len(data.usable(val_items)), **data.stats()}
    mix_desc = ", ".join(f"{p.name} {c}/{p.size}" + (f" (weight {p.weight:g})" if p.weight else "")
                         for p, c in zip(pools, counts))
    st = renderer.stats
    log(f"sft data: per epoch {mix_desc}; {stats['val_dialogues']} validation dialogues")
    log(f"sft data: of {len(data.examples)} dialogues rendered, "
        f"{st['truncated']} truncated to their latest turns ({st['dropped_exchanges']} exchanges cut), "
        f"{st['dropped_too_long'] + st['dropped_no_doctor_turn'] + st['dropped_no_trained_token']} dropped "
        f"(too long: {st['dropped_too_long']}, no doctor turn: {st['dropped_no_doctor_turn']}); "
        f"{cfg.batching} batches, padding {stats['padding_fraction']:.1%}, "
        f"trained tokens {stats['trained_token_fraction']:.1%}")
    return data, records, stats


def run(cfg: SFTConfig):
    from zhongjing.model.decoder import context_length
    from zhongjing.model.load import cap_config_length, end_of_turn_ids
    from zhongjing.train.lm import start_lm, train_lm

    acc, log, tokenizer, model = start_lm("sft", cfg)
    cap_config_length(cfg, context_length(model), lambda msg: log(f"sft: {msg}"))
    data, records, stats = load_dialogues(cfg, tokenizer, end_of_turn_ids(tokenizer, model), log)
    return train_lm("sft", cfg, accelerator=acc, model=model, tokenizer=tokenizer, data=data,
                    data_records=records, metrics=stats)


def main(argv: list[str]) -> int:
    cfg = parse_stage_args("zhongjing train sft", SFTConfig, argv, __doc__)
    run(cfg)
    return 0
