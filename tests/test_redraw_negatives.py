"""`rm.redraw_negatives`: own-vs-other pairs get another patient's reply as their negative every epoch after the first
(data/mismatch.redraw_other, train/pref_batches.redrawn), so the reward model cannot learn its negatives by heart."""

from __future__ import annotations

import json

import pytest

from zhongjing.data.mismatch import OTHER_PATIENT, own_vs_other, redraw_other, turn_items
from zhongjing.data.schema import Dialogue, Message, Ranking
from zhongjing.dataset.sources import add_mismatched, gold_anchored
from zhongjing.data.simulate import SimulatedAnnotator


def dialogues(n: int = 8) -> list[Dialogue]:
    return [Dialogue(f"d{i}", [Message("user", f"第{i}位患者：头痛{i}天了。"), Message("assistant", f"第{i}位：请问体温多少？"),
                               Message("user", f"第{i}位患者：三十八度。"), Message("assistant", f"第{i}位：先退热，观察。")])
            for i in range(n)]


def other_ranking() -> Ranking:
    return Ranking("sim", [Message("user", "咳嗽怎么办？")], ["多喝水。", "建议就医。", "忍着。"], [[1], [0], [2]], ["sim"], {})


def test_own_vs_other_sources_carry_the_marker():
    pairs = own_vs_other(turn_items(dialogues()), seed=0, tag="relevance-train")
    assert pairs and all(p.meta["negative"] == OTHER_PATIENT for p in pairs)
    gens = [Ranking(f"g{i}#1", [Message("user", f"问题{i}")], ["甲。", "乙。"], meta={"source_id": f"g{i}",
                                                                                  "reference": f"第{i}位的回答。"})
            for i in range(3)]
    rs = add_mismatched([gold_anchored(g, SimulatedAnnotator(tie=0.0)) for g in gens], 1, seed=0)
    assert [r.meta.get("negative") for r in rs] == [None, OTHER_PATIENT] * 3  # gold-anchored rankings: not redrawn


def test_redraw_keeps_the_own_reply_and_draws_another_dialogues():
    ds = dialogues()
    pairs = own_vs_other(turn_items(ds), seed=0, tag="relevance-train")
    rankings = pairs + [other_ranking()]
    first, again, later = redraw_other(rankings, "0:1"), redraw_other(rankings, "0:1"), redraw_other(rankings, "0:2")
    assert first == again  # seeded
    assert first[-1] is rankings[-1]  # other kinds come back as they were
    owner = {m.content: d.id for d in ds for m in d.messages if m.role == "assistant"}
    for old, new in zip(pairs, first):
        assert new.responses[0] == old.responses[0] and new.ranking == [[0], [1]] and new.messages == old.messages
        assert new.responses[1] != new.responses[0]
        assert owner[new.responses[1]] != new.meta["source_id"]  # a reply from ANOTHER dialogue
    moved = sum(a.responses[1] != b.responses[1] for a, b in zip(first, later))
    assert moved >= len(pairs) // 2  # each epoch's draw is a new one (16 pairs, 14 candidate replies each)


def test_redraw_leaves_a_pair_whose_only_candidates_repeat_its_own_text():
    # two dialogues whose doctors wrote the same reply: no other text exists, so the pair keeps its negative
    ds = [Dialogue(f"d{i}", [Message("user", f"问题{i}"), Message("assistant", "请补充病史。")]) for i in range(2)]
    r = Ranking("p", ds[0].messages[:1], ["请补充病史。", "别的回答。"], [[0], [1]], ["t"],
                {"source_id": "d0", "negative": OTHER_PATIENT})
    q = Ranking("q", ds[1].messages[:1], ["请补充病史。", "又一个回答。"], [[0], [1]], ["t"],
                {"source_id": "d1", "negative": OTHER_PATIENT})
    assert redraw_other([r, q], "0:1") == [r, q]


def write(path, rankings):
    path.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rankings), encoding="utf-8")
    return path


@pytest.fixture()
def rm_cfg(tiny_model_dir, tmp_path):
    from zhongjing.train.common import TrainSettings
    from zhongjing.train.rm import RMConfig

    rankings = own_vs_other(turn_items(dialogues(12)), seed=0, tag="relevance-train") + [other_ranking()]
    data = write(tmp_path / "rankings.jsonl", rankings)
    return RMConfig(model=str(tiny_model_dir), data=[str(data)], output=str(tmp_path / "rm"), val_ratio=0.2,
                    finetune="full", max_length=128, length_group=1, redraw_negatives=True,
                    train=TrainSettings(lr=1e-3, epochs=3, batch_size=4, progress=False, warmup_ratio=0.0, threads=1,
                                        seed=3))


def test_batches_redraw_every_epoch_after_the_first(rm_cfg, tiny_tokenizer):
    from zhongjing.train.pref_batches import pref_batches

    data, counts = pref_batches(rm_cfg, tiny_tokenizer, per="ranking", with_targets=False)
    marked = [i for i, e in enumerate(data.train) if e.k == 2]
    assert counts["redrawn_per_epoch"] == len(marked) and len(marked) >= 10
    assert data.train_items(0) is data.train  # epoch 0: the file's pairs
    one, two = data.train_items(1), data.train_items(2)
    assert data.train_items(2) is two  # asked again (the loop plans every epoch first): the same draw
    for epoch in (one, two):
        assert len(epoch) == len(data.train)
        for i, (old, new) in enumerate(zip(data.train, epoch)):
            if i not in marked:
                assert new is old
            else:
                assert new.ids[0] == old.ids[0] and new.groups == old.groups  # the own reply, still ranked first
    changed = [sum(new.ids[1] != old.ids[1] for new, old in zip(epoch, data.train)) for epoch in (one, two)]
    assert min(changed) >= len(marked) // 2
    assert len(data.train_batches(1)) == len(data.train_batches(0))  # the schedule does not move
    assert [b["input_ids"].tolist() for b in data.train_batches(1)] == \
        [b["input_ids"].tolist() for b in data.train_batches(1)]
    assert [e.ids for e in data.val] == [e.ids for e in
                                         pref_batches(rm_cfg, tiny_tokenizer, per="ranking", with_targets=False)[0].val]


def test_rm_trains_with_redrawn_negatives(rm_cfg):
    from zhongjing.train.rm import train_rm

    out = train_rm(rm_cfg)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["counts"]["redrawn_per_epoch"] >= 10 and meta["config"]["redraw_negatives"] is True
    losses = [h["val_loss"] for h in meta["metrics"]["history"]]
    assert len(losses) == 3 and all(x == x for x in losses)
