"""`zhongjing train pt`: continued pre-training on documents (full fine-tuning, or LoRA rank 32 as in Table 4).

Sources in any reader format (txt/JSONL text, dialogues flattened to text, knowledge-graph records rendered to
sentences, LaTeX books) are tokenized once; every epoch the training documents of all sources are drawn with
their weights (mix.py), shuffled across sources, joined with eos and cut into fixed blocks. 10% of the documents
of each source (by content, deterministic) are held out and give the validation perplexity.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zhongjing.config import parse_stage_args
from zhongjing.errors import ConfigError, DataError
from zhongjing.model.lora import Finetune, LoraSettings
from zhongjing.train.batching import LazyBatches, collate_blocks, pack_stream
from zhongjing.model.identity import data_record
from zhongjing.train.common import TrainSettings
from zhongjing.train.mix import Pool, epoch_items, plan_counts, split_keys


@dataclass
class PTSource:
    path: str
    format: str | None = None  # reader format; None = detect from the content
    weight: float | None = None  # share of each epoch; None = every document once per epoch
    name: str = ""  # for logs; default the file name


@dataclass
class PTConfig:
    model: str = "runs/demo/base"  # parent model folder (full model or LoRA adapter)
    output: str = "runs/demo/pt"
    data: list[PTSource] = field(default_factory=list)  # empty = the package's demo corpus
    block_size: int = 512
    val_fraction: float = 0.1
    mix_size: int | str = "min"  # weighted sources: min | max | N documents per epoch (see mix.py)
    finetune: Finetune = "full"
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=32, alpha=64))
    dtype: str = "float32"  # weights as loaded; mixed precision is train.mixed_precision
    # fp32_matmul=fast: 1.45× the CPU throughput on AMX machines with the same loss curve (benchmarks/bench_pt.py)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(lr=5e-5, epochs=4, fp32_matmul="fast"))

    def __post_init__(self):
        if self.block_size < 2:
            raise ConfigError(f"block_size must be ≥ 2, got {self.block_size}")


def default_sources() -> list[PTSource]:
    from zhongjing.demo import demo_path

    return [PTSource(path=str(demo_path("corpus")), name="corpus"), PTSource(path=str(demo_path("kg")), name="kg")]


@dataclass
class DocData:
    """Tokenized documents of every source, split into train/val, packed into blocks per epoch."""

    pools: list[Pool]
    train_docs: list[list[np.ndarray]]  # per source
    val_blocks: np.ndarray
    counts: list[int]
    block_size: int
    batch_size: int
    eos: int
    seed: int

    def __post_init__(self):
        self._epoch_blocks = functools.lru_cache(maxsize=2)(self._blocks)

    def _blocks(self, epoch: int) -> np.ndarray:
        flat, offsets = [], [0]
        for docs in self.train_docs:
            flat += docs
            offsets.append(len(flat))
        order = [offsets[p] + i for p, i in epoch_items(self.pools, self.counts, self.seed, epoch)]
        return pack_stream(flat, order, self.block_size, self.eos)

    def _batches(self, blocks: np.ndarray) -> LazyBatches:
        plan = [range(s, min(s + self.batch_size, len(blocks))) for s in range(0, len(blocks), self.batch_size)]
        return LazyBatches(plan, lambda r: collate_blocks(blocks[r.start:r.stop]))

    def train_batches(self, epoch: int) -> LazyBatches:
        return self._batches(self._epoch_blocks(epoch))

    def val_batches(self) -> LazyBatches:
        return self._batches(self.val_blocks)


def load_documents(cfg: PTConfig, tokenizer, log=print) -> tuple[DocData, list[dict], dict]:
    from zhongjing.data.readers import read_documents

    sources = cfg.data or default_sources()
    eos = tokenizer.eos_token_id
    pools, train_docs, val_docs, records = [], [], [], []
    for s in sources:
        texts = [d.text for d in read_documents(s.path, s.format)]
        if not texts:
            raise DataError("no documents in this source", s.path)
        ids = [np.asarray(x, dtype=np.int32) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        tr, va = split_keys(texts, cfg.val_fraction, cfg.train.seed)
        name = s.name or Path(s.path).name
        pools.append(Pool(name, len(tr), s.weight))
        train_docs.append([ids[i] for i in tr])
        val_docs += [ids[i] for i in va]
        tokens = int(sum(len(x) + 1 for x in ids))
        records.append(data_record(s.path, name=name, format=s.format, weight=s.weight, documents=len(texts),
                                   val_documents=len(va), tokens=tokens))
        log(f"pt data: {name}: {len(texts)} documents ({len(va)} held out), {tokens:,} tokens")
    counts = plan_counts(pools, cfg.mix_size)
    val_blocks = pack_stream(val_docs, range(len(val_docs)), cfg.block_size, eos)
    data = DocData(pools, train_docs, val_blocks, counts, cfg.block_size, cfg.train.batch_size, eos, cfg.train.seed)
    n_blocks = len(data._epoch_blocks(0))
    if n_blocks == 0:
        raise DataError(f"the training documents make no block of {cfg.block_size} tokens; lower block_size")
    if val_docs and len(val_blocks) == 0:
        log(f"pt data: held-out documents are shorter than one block of {cfg.block_size}: no validation")
    stats = {"train_blocks_per_epoch": n_blocks, "val_blocks": int(len(val_blocks)),
             "documents_per_epoch": dict(zip([p.name for p in pools], counts))}
    log(f"pt data: {n_blocks} blocks × {cfg.block_size} tokens per epoch, {len(val_blocks)} validation blocks")
    return data, records, stats


def run(cfg: PTConfig):
    from zhongjing.train.lm import start_lm, train_lm

    acc, log, tokenizer, model = start_lm("pt", cfg)
    data, records, stats = load_documents(cfg, tokenizer, log)
    return train_lm("pt", cfg, accelerator=acc, model=model, tokenizer=tokenizer, data=data,
                    data_records=records, metrics=stats)


def main(argv: list[str]) -> int:
    cfg = parse_stage_args("zhongjing train pt", PTConfig, argv, __doc__)
    run(cfg)
    return 0
