"""Batches and mixing: packed/padded logits equal per-sample logits, exact normalisers, deterministic 7:1 mixes."""

from __future__ import annotations

import random

import pytest
import torch

from zhongjing.data.render import IGNORE
from zhongjing.errors import ConfigError
from zhongjing.train.batching import (Example, collate_blocks, collate_rows, group_by_length, pack_rows, pack_stream,
                                      plan_padding)
from zhongjing.train.lm import lm_loss
from zhongjing.train.mix import Pool, epoch_items, plan_counts, split_keys


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def examples(n=6, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        L = rng.randint(5, 40)
        ids = [rng.randrange(3, 300) for _ in range(L)]
        labels = [t if rng.random() < 0.6 else IGNORE for t in ids]
        out.append(Example.from_labels(ids, labels))
    return out


def test_targets_are_shifted_within_each_sample():
    ex = Example.from_labels([5, 6, 7, 8], [IGNORE, 6, 7, IGNORE])
    assert ex.targets.tolist() == [6, 7, IGNORE, IGNORE] and ex.n == 2
    b = collate_rows([[0, 1]], [ex, Example.from_labels([9, 10], [9, 10])], pad_id=0)
    # the last token of the first sample must not learn the first token (9) of the next one
    assert b["targets"].tolist() == [[6, 7, IGNORE, IGNORE, 10, IGNORE]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1]]
    assert b["n"] == 3 and b["ntokens"] == 6


@torch.no_grad()
def test_packed_and_padded_logits_equal_per_sample_logits(model):
    exs = examples(6)
    alone = [model(torch.tensor(e.input_ids[None], dtype=torch.long), use_cache=False).logits[0] for e in exs]
    packed = collate_rows([[0, 1, 2], [3, 4, 5]], exs, pad_id=0)
    assert "position_ids" in packed
    padded = collate_rows([[i] for i in range(6)], exs, pad_id=0)
    assert "position_ids" not in padded  # one sample per row: plain causal attention, right padding
    for batch, rows in ((packed, [[0, 1, 2], [3, 4, 5]]), (padded, [[i] for i in range(6)])):
        kw = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
        logits = model(batch["input_ids"], use_cache=False, **kw).logits
        for b, row in enumerate(rows):
            start = 0
            for i in row:
                L = len(exs[i].input_ids)
                torch.testing.assert_close(logits[b, start:start + L], alone[i], atol=2e-5, rtol=1e-4)
                start += L


@torch.no_grad()
def test_lm_loss_matches_transformers_loss_and_counts(model):
    exs = examples(4, seed=3)
    batch = collate_rows([[0, 1], [2, 3]], exs, pad_id=0)
    loss_sum, _ = lm_loss(model, batch)
    ref = 0.0
    for e in exs:  # transformers' own loss on each sample alone, labels un-shifted
        labels = torch.tensor([[IGNORE] + e.targets[:-1].tolist()])
        ids = torch.tensor(e.input_ids[None], dtype=torch.long)
        ref += model(ids, labels=labels, use_cache=False).loss.item() * e.n
    assert batch["n"] == sum(e.n for e in exs)
    assert loss_sum.item() == pytest.approx(ref, rel=1e-5)


def test_blocks_and_stream():
    import numpy as np

    docs = [np.arange(1, 6, dtype=np.int32), np.arange(10, 13, dtype=np.int32)]
    blocks = pack_stream(docs, [1, 0], block_size=4, eos=0)
    assert blocks.tolist() == [[10, 11, 12, 0], [1, 2, 3, 4]]  # 5, eos dropped: ragged tail
    b = collate_blocks(blocks)
    assert b["n"] == 6 and b["targets"][0].tolist() == [11, 12, 0, IGNORE]


def test_length_grouping_cuts_padding_and_is_deterministic():
    rng = random.Random(0)
    lengths = [rng.randint(10, 1000) for _ in range(400)]
    order = list(range(400))
    rng.shuffle(order)
    plain = group_by_length(order, lengths, 8, 1, seed=1, epoch=0)
    grouped = group_by_length(order, lengths, 8, 16, seed=1, epoch=0)
    assert sorted(i for b in grouped for r in b for i in r) == list(range(400))
    assert plan_padding(grouped, lengths) < 0.1 < plan_padding(plain, lengths)
    assert grouped == group_by_length(order, lengths, 8, 16, seed=1, epoch=0)
    assert grouped != group_by_length(order, lengths, 8, 16, seed=1, epoch=1)


def test_pack_rows_fill_rows_without_overflow():
    rng = random.Random(1)
    lengths = [rng.randint(10, 300) for _ in range(300)]
    plan = pack_rows(list(range(300)), lengths, row_length=512, batch_size=4, group=8, seed=0, epoch=0)
    rows = [r for b in plan for r in b]
    assert sorted(i for r in rows for i in r) == list(range(300))
    assert all(sum(lengths[i] for i in r) <= 512 for r in rows)
    assert plan_padding(plan, lengths) < 0.15


def test_mix_counts_follow_weights():
    pools = [Pool("multi", 700, 7.0), Pool("single", 5000, 1.0), Pool("general", 30, None)]
    assert plan_counts(pools, "min") == [700, 100, 30]  # multi is scarce: used whole, single subsampled
    assert plan_counts(pools, "max") == [35000, 5000, 30]  # nothing of single left out: multi repeats
    assert plan_counts(pools, 80) == [70, 10, 30]
    with pytest.raises(ConfigError):
        plan_counts(pools, "most")


def test_epoch_items_deterministic_and_fresh_each_epoch():
    pools = [Pool("multi", 70, 7.0), Pool("single", 500, 1.0)]
    counts = plan_counts(pools)
    e0 = epoch_items(pools, counts, seed=3, epoch=0)
    assert e0 == epoch_items(pools, counts, seed=3, epoch=0)
    assert sum(p == 0 for p, _ in e0) == 70 and sum(p == 1 for p, _ in e0) == 10
    assert len(set(e0)) == len(e0)
    singles = {i for e in range(5) for p, i in epoch_items(pools, counts, 3, e) if p == 1}
    assert len(singles) > 30  # every epoch draws a different single-turn subset


def test_split_is_by_key_and_order_free():
    keys = [f"k{i}" for i in range(100)]
    tr, va = split_keys(keys, 0.1, seed=0)
    assert len(va) == 10 and not set(tr) & set(va)
    rev = keys[::-1]
    tr2, va2 = split_keys(rev, 0.1, seed=0)
    assert {rev[i] for i in va2} == {keys[i] for i in va}
    assert split_keys(["a", "b"], 0.1, 0)[1] == [split_keys(["a", "b"], 0.1, 0)[1][0]]  # at least one held out


@torch.no_grad()
def test_dense_path_for_blocks_matches_transformers_loss(model):
    import numpy as np

    from zhongjing.train import lm

    blocks = np.random.default_rng(0).integers(3, 300, size=(3, 32)).astype(np.int32)
    b = collate_blocks(blocks)
    assert b["n"] >= lm.DENSE * b["targets"].numel()  # pre-training blocks take the dense path
    ids = b["input_ids"]
    ref = model(ids, labels=ids, use_cache=False).loss.item() * b["n"]
    assert lm_loss(model, b)[0].item() == pytest.approx(ref, rel=1e-5)
