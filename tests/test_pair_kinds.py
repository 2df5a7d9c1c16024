"""The reward model's validation accuracy per kind of pair (train/prefs.PAIR_KINDS): what each pair compares is read
from its ranking's record, and each kind's accuracy is reported beside "the longer answer wins" on the same pairs."""

from __future__ import annotations

import json

import pytest
import torch

from zhongjing.data.mismatch import own_vs_other, turn_items
from zhongjing.data.schema import Dialogue, Message, Ranking, group_pairs
from zhongjing.data.simulate import SimulatedAnnotator
from zhongjing.dataset.sources import add_mismatched, gold_anchored
from zhongjing.train.prefs import PAIR_KINDS, answer_roles, pair_kinds
from zhongjing.train.rm import by_kind, kind_metrics

OTHER, REAL, SAMPLES, UNKNOWN = range(4)  # PAIR_KINDS' order
assert PAIR_KINDS == ("vs_other_patient", "real_vs_sample", "sample_vs_sample", "other")


def generated(i: int) -> Ranking:
    return Ranking(f"g{i}#1", [Message("user", f"第{i}位患者：头痛三天了。")],
                   ["请问体温多少？有没有呕吐？", "多喝水。", "头痛可以吃点药，注意休息，观察一下。"],
                   meta={"source_id": f"g{i}", "reference": f"第{i}位：请问头痛在哪个部位？"})


def test_roles_of_each_ranking_source():
    gold = gold_anchored(generated(0), SimulatedAnnotator(tie=0.0))
    assert answer_roles(gold) == ("real", "sample", "sample", "sample")
    pair = add_mismatched([gold_anchored(generated(i), SimulatedAnnotator(tie=0.0)) for i in range(3)], 1, seed=0)[1]
    assert answer_roles(pair) == ("real", "other")
    appended = add_mismatched([gold_anchored(generated(i), SimulatedAnnotator(tie=0.0)) for i in range(3)], 1,
                              seed=0, as_pairs=False)[0]
    assert answer_roles(appended) == ("real", "sample", "sample", "sample", "other")
    ds = [Dialogue(f"d{i}", [Message("user", f"问题{i}"), Message("assistant", f"回答{i}。")]) for i in range(4)]
    assert {answer_roles(r) for r in own_vs_other(turn_items(ds), seed=0, tag="relevance-train")} == {("real", "other")}
    plain = Ranking("p", [Message("user", "咳嗽？")], ["甲。", "乙。"], [[0], [1]], ["sim"], {})
    assert answer_roles(plain) == ("", "")  # simulated rankings, annotator exports, MedicalGPT pairs: no reference


def test_pair_kinds_follow_group_pairs_order():
    roles = ("real", "sample", "sample", "other")
    groups = [[1], [0], [2, 3]]  # a safer sample above the real reply; a sample tied with another patient's reply
    assert group_pairs(groups) == [(1, 0), (1, 2), (1, 3), (0, 2), (0, 3)]
    assert pair_kinds(roles, groups) == [REAL, SAMPLES, OTHER, REAL, OTHER]
    assert pair_kinds((), [[0], [1]]) == [UNKNOWN]
    assert pair_kinds(("", ""), [[1], [0]]) == [UNKNOWN]


def test_by_kind_hand_worked():
    # 4 answers; pairs (better, worse): (0,1) real>sample, (0,2) real>sample, (1,2) sample>sample, (0,3) vs other
    batch = {"better": torch.tensor([0, 0, 1, 0]), "worse": torch.tensor([1, 2, 2, 3]),
             "lengths": torch.tensor([10, 12, 10, 5]), "pair_kind": torch.tensor([REAL, REAL, SAMPLES, OTHER])}
    diff = torch.tensor([0.5, -0.1, 0.2, 1.0])  # (P,) r_better − r_worse
    m = by_kind(batch, diff)
    assert (m["pairs/real_vs_sample"], m["correct/real_vs_sample"], m["longer/real_vs_sample"]) == (2, 1, 0.5)
    assert (m["pairs/sample_vs_sample"], m["correct/sample_vs_sample"], m["longer/sample_vs_sample"]) == (1, 1, 1)
    assert (m["pairs/vs_other_patient"], m["correct/vs_other_patient"], m["longer/vs_other_patient"]) == (1, 1, 1)
    assert m["pairs/other"] == 0
    # the validation loop divides every sum by its rankings (val_n = 2 here): ratios and counts come back exact
    rec = {"val_n": 2} | {f"val_{k}": v / 2 for k, v in m.items()}
    assert kind_metrics(rec) == {"vs_other_patient": {"pairs": 1, "accuracy": 1.0, "longer_wins": 1.0},
                                 "real_vs_sample": {"pairs": 2, "accuracy": 0.5, "longer_wins": 0.25},
                                 "sample_vs_sample": {"pairs": 1, "accuracy": 1.0, "longer_wins": 1.0}}
    assert by_kind({"better": batch["better"]}, diff) == {}  # DPO / foreign batches: nothing per kind


@pytest.fixture()
def mixed_rankings(tmp_path):
    gens = [generated(i) for i in range(24)]
    rankings = add_mismatched([gold_anchored(g, SimulatedAnnotator(tie=0.0)) for g in gens], 1, seed=0)
    rankings.append(Ranking("sim", [Message("user", "咳嗽怎么办？")], ["多喝水。", "建议就医。"], [[1], [0]], ["sim"], {}))
    path = tmp_path / "rankings.jsonl"
    path.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rankings), encoding="utf-8")
    return path


def test_rm_reports_accuracy_per_kind(tiny_model_dir, mixed_rankings, tmp_path):
    from zhongjing.train.common import TrainSettings
    from zhongjing.train.rm import RMConfig, train_rm

    cfg = RMConfig(model=str(tiny_model_dir), data=[str(mixed_rankings)], output=str(tmp_path / "rm"), val_ratio=0.3,
                   finetune="full", max_length=128, length_group=1,
                   train=TrainSettings(lr=1e-3, epochs=1, batch_size=4, progress=False, warmup_ratio=0.0, threads=1,
                                       seed=3))
    meta = json.loads((train_rm(cfg) / "meta.json").read_text(encoding="utf-8"))
    kinds, m = meta["pair_kinds"], meta["metrics"]
    assert {"real_vs_sample", "sample_vs_sample", "vs_other_patient"} <= set(kinds)
    best = next(h for h in m["history"] if h["step"] == meta["best_step"])
    total = round(best["val_pairs"] * best["val_n"])
    assert sum(v["pairs"] for v in kinds.values()) == total  # every held-out pair has exactly one kind
    assert sum(v["accuracy"] * v["pairs"] for v in kinds.values()) / total == pytest.approx(m["val_accuracy"])
    assert sum(v["longer_wins"] * v["pairs"] for v in kinds.values()) / total == pytest.approx(m["val_longer_wins"])
