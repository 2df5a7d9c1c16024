"""Ranking sources without doctors (gold-anchored, mismatched negatives, preference-pair files), the reward model's
relevance accuracy on a planted case, and configs/real.yaml pointing at the shared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, SHARED_DATA
from zhongjing.data.simulate import SimulatedAnnotator
from zhongjing.dataset.sources import add_mismatched, gold_anchored, make_rankings
from zhongjing.data.schema import Dialogue, Message, Ranking
from zhongjing.train import relevance


def generated(i: int, reference: str | None = "请问发热几天了？最高多少度？建议先测体温，必要时去医院就诊。") -> Ranking:
    meta = {"source_id": f"d{i}", "turn": 1} | ({"reference": reference} if reference else {})
    return Ranking(f"d{i}#1", [Message("user", f"孩子发烧第{i}天，怎么办？")],
                   ["多喝水。", "建议去医院就诊，先测体温。", "偏方可以治好，不用去医院。", "发热要注意观察体温变化。"],
                   meta=meta)


def test_gold_anchored_puts_the_real_reply_first_and_keeps_the_simulated_order():
    ann = SimulatedAnnotator(tie=0.0)
    r = gold_anchored(generated(1), ann)
    assert r.responses[0] == generated(1).meta["reference"] and r.ranking[0] == [0]
    sim = ann.rank(generated(1)).ranking  # the samples' own order, shifted by one
    assert r.ranking[1:] == [[i + 1 for i in g] for g in sim]
    unsafe = r.responses.index("偏方可以治好，不用去医院。")
    assert unsafe in r.ranking[-1] and not r.all_wrong
    assert gold_anchored(generated(2, reference=None), ann) is None  # no real reply: no anchor


def test_gold_anchored_ranks_a_safer_sample_above_the_real_reply():
    """Safety > Professionalism > Fluency holds for the real reply too: after a red-flag complaint, a sample that
    sends the patient to care outranks a doctor's reply that only asks (the rubric: 1.0 vs 1.0 − 0.6)."""
    ann = SimulatedAnnotator(tie=0.1)
    r = Ranking("c#1", [Message("user", "突然胸痛，出冷汗，怎么办？")],
                ["胸痛伴出汗要立即去医院急诊。", "多休息。", "注意饮食。", "胸痛请马上到医院就诊。"],
                meta={"source_id": "c", "reference": "疼了多久？以前有过吗？"})
    out = gold_anchored(r, ann)
    assert out.responses[0] == "疼了多久？以前有过吗？"  # the real reply stays at index 0 wherever it ranks
    referral = {out.responses.index("胸痛伴出汗要立即去医院急诊。"), out.responses.index("胸痛请马上到医院就诊。")}
    gold_at = next(k for k, g in enumerate(out.ranking) if 0 in g)
    assert set().union(*out.ranking[:gold_at]) == referral and gold_at >= 1  # the two referrals, and only they
    assert out.meta["gold_rank"] == gold_at and out.meta["gold_safety"] == pytest.approx(0.4)
    assert out.ranking[gold_at] == [0]  # the real reply is tied with nothing, above the samples without referral
    plain = gold_anchored(r, ann, safety_first=False)  # the doctors' reply first regardless
    assert plain.ranking[0] == [0] and plain.ranking[1:] == out.ranking[:gold_at] + out.ranking[gold_at + 1:]
    ranked, counts = make_rankings("gold-anchored", [r, generated(1)], ann, mismatched=1)
    assert counts["gold_below_safer"] == 1  # the fever turn's reply is as safe as its samples: it stays first
    pair = next(x for x in ranked if x.meta.get("source") == "mismatched" and x.messages == r.messages)
    assert pair.responses[0] == "疼了多久？以前有过吗？" and pair.ranking == [[0], [1]]


def test_referral_pairs_only_where_the_annotator_scores_the_referral_safer():
    """safety-train: after a red-flag complaint the doctor's reply + a referral beats the reply alone; a reply that
    already refers, or a turn without a red flag, gives no pair (the referral would change nothing the rubric sees)."""
    from zhongjing.dataset.sources import REFERRALS, referral_pairs

    ds = [Dialogue("flag", [Message("user", "昨晚开始胸痛，现在还疼。"), Message("assistant", "疼痛是持续的吗？"),
                            Message("user", "又咯血了。"), Message("assistant", "之前去医院查过吗？")]),  # already refers
          Dialogue("calm", [Message("user", "最近有点咳嗽。"), Message("assistant", "多喝水，注意休息。")])]
    ann = SimulatedAnnotator(tie=0.1)
    pairs = referral_pairs(ds, ann)
    assert len(pairs) == 1
    (p,) = pairs
    assert p.messages == ds[0].messages[:1] and p.responses == ["疼痛是持续的吗？" + REFERRALS[0], "疼痛是持续的吗？"]
    assert p.ranking == [[0], [1]] and p.meta == {"source": "safety-train", "source_id": "flag"}
    assert ann.score(p.messages, p.responses[0], None).safety > ann.score(p.messages, p.responses[1], None).safety
    ranked, counts = make_rankings("gold-anchored", [generated(1)], ann, train_dialogues=ds, safety_pairs=-1)
    assert counts["safety-train"] == 1 and ranked[-1] == p
    assert referral_pairs(ds * 3, ann, n=2, seed=0) == referral_pairs(ds * 3, ann, n=2, seed=0)  # seeded draw
    assert len(referral_pairs(ds * 3, ann, n=2)) == 2


def test_mismatched_negative_is_another_dialogues_reply_and_ranks_last():
    ann = SimulatedAnnotator(tie=0.0)
    gens = [generated(i, reference=f"第{i}位患者：请补充病史。") for i in range(5)]
    rs = [gold_anchored(g, ann) for g in gens]
    last = add_mismatched(rs, 1, seed=0, as_pairs=False)  # appended below every sample
    for r, before in zip(last, rs):
        neg = r.responses[r.ranking[-1][0]]
        assert r.ranking[-1] == [len(before.responses)] and neg not in before.responses
        assert neg != before.responses[0] and neg.startswith("第")  # a real reply, but to someone else
        assert r.meta["mismatched"] == 1 and r.ranking[:-1] == before.ranking
    paired = add_mismatched(rs, 1, seed=0)  # default: a ranking of its own, real reply > another patient's
    assert paired[0::2] == rs and len(paired) == 10
    for r, g in zip(paired[1::2], gens):
        assert r.responses[0] == g.meta["reference"] and r.ranking == [[0], [1]] and r.meta["source"] == "mismatched"
        assert r.responses[1] != r.responses[0] and r.responses[1].startswith("第")


def test_relevance_pairs_from_training_dialogues():
    from zhongjing.dataset.sources import train_pairs

    ds = [Dialogue(f"d{i}", [Message("user", f"问题{i}"), Message("assistant", f"回答{i}")]) for i in range(6)]
    pairs = train_pairs(ds, 4, seed=0)
    assert len(pairs) == 4
    for p in pairs:
        own = p.messages[-1].content.replace("问题", "回答")
        assert p.responses[0] == own and p.responses[1] != own and p.ranking == [[0], [1]]


def test_make_rankings_reads_preference_pairs_and_counts_sources(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"question": "头痛怎么办？", "response_chosen": "先休息，持续加重请就医。", "response_rejected": "忍着。"}]
    pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    gens = [generated(i, reference=f"第{i}位患者：请补充病史。") for i in range(3)] + [generated(9, None)]
    ranked, counts = make_rankings("gold-anchored", gens, SimulatedAnnotator(tie=0.0), mismatched=1,
                                   extra=[str(pairs)])
    assert counts["gold-anchored"] == 3 and counts["no_reference"] == 1 and counts["extra:pairs"] == 1
    assert counts["mismatched"] == 3 and len(ranked) == 3 + 3 + 1
    pair = ranked[-1]
    assert pair.responses[pair.ranking[0][0]] == "先休息，持续加重请就医。" and pair.meta["source"] == "pairs"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")
def test_medicalgpt_medical_pairs_read_as_rankings():
    from zhongjing.dataset.sources import read_extra

    rs = read_extra([str(SHARED_DATA / "medicalgpt_samples" / "reward_medical_test.json")])
    assert len(rs) >= 90 and all(r.k == 2 and r.ranking == [[0], [1]] for r in rs)
    assert {r.meta["source"] for r in rs} == {"reward_medical_test"}


# ------------------------------------------------------------------------------------------- relevance

class Planted(torch.nn.Module):
    """Scores an answer by how well its count of 'Q' matches the patient turn's before it: a perfectly
    relevance-aware 'RM' (sign=+1) or a perfectly wrong one (sign=-1). `score` is where train rm reads the head."""

    def __init__(self, q: int, start: int, sign: float):
        super().__init__()
        self.q, self.start, self.sign = q, start, sign
        self.score = torch.nn.Identity()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False, position_ids=None):
        turn = (input_ids == self.start).long().cumsum(-1)
        last = turn.max(-1, keepdim=True).values
        q = input_ids == self.q  # answer: after the last <|im_start|>; the patient's turn: the segment before
        diff = ((q & (turn == last)).sum(-1) - (q & (turn == last - 1)).sum(-1)).abs().float()
        return self.score((-self.sign * diff)[:, None, None].expand(*input_ids.shape, 1))


def test_relevance_accuracy_on_a_planted_case(tiny_tokenizer):
    from types import SimpleNamespace

    from zhongjing.train.rm import RMConfig, rm_loss

    tok = tiny_tokenizer
    q, start = tok.convert_tokens_to_ids("Q"), tok.convert_tokens_to_ids("<|im_start|>")
    dialogues = [Dialogue(f"d{n}", [Message("user", "Q。" * n + "哪里不舒服"), Message("assistant", "Q。" * n + "请说明"),
                                    Message("user", "Q。" * n + "好的"), Message("assistant", "Q。" * n + "多休息")])
                 for n in range(1, 7)]
    pairs = relevance.from_dialogues(dialogues, seed=0)
    assert len(pairs) == 12  # every doctor turn, each against a reply from ANOTHER dialogue
    for p in pairs:
        assert p.ranking == [[0], [1]] and p.responses[0] != p.responses[1]
        assert p.responses[1].count("Q") != p.responses[0].count("Q")
    cfg = RMConfig(max_length=256, pack=False)
    data = SimpleNamespace(pad_id=tok.pad_token_id, share_prefix=False)  # the planted scorer reads whole rows
    b, kept = relevance.batches(cfg, tok, data, pairs)
    assert kept == pairs  # every pair fits max_length: the baseline is taken on exactly the pairs scored
    good = Planted(q, start, +1.0)
    assert relevance.accuracy(good, b, rm_loss) == (1.0, 12)
    assert relevance.accuracy(Planted(q, start, -1.0), b, rm_loss) == (0.0, 12)
    assert good.training  # mode restored


def test_relevance_overlap_baseline_hand_worked():
    """Own reply "头痛多久了" shares 1 of its 4 bigrams with the patient's "头痛三天" (3 bigrams): F1 2·1/(4+3);
    another dialogue's "腹泻怎么办" shares none → own wins (1). No overlap on either side → a tie (½). The other
    dialogue's reply overlapping more → a loss (0). Baseline (1 + ½ + 0) / 3 = ½."""
    from zhongjing.data.schema import Ranking
    from zhongjing.data.simulate import overlap_f1

    assert overlap_f1("头痛多久了", "头痛三天") == 2 * 1 / (4 + 3)

    def pair(patient, own, other):
        return Ranking("r", [Message("user", patient)], [own, other], [[0], [1]], ["relevance"], {})

    rankings = [pair("头痛三天", "头痛多久了", "腹泻怎么办"), pair("头痛三天", "请多喝水", "腹泻怎么办"),
                pair("腹泻两天", "头痛多久了", "腹泻怎么办")]
    assert relevance.overlap_baseline(rankings) == 0.5
    assert relevance.overlap_baseline(rankings[:1]) == 1.0


# ------------------------------------------------------------------------------------------- configs/real.yaml

def _paths(cfg) -> list[str]:
    out = list(cfg.init.get("corpus", [])) + [i["path"] for i in cfg.build["inputs"]]
    out += [cfg.build["kg"]["path"], cfg.rank.kg] + list(cfg.rank.extra)
    out += [d["path"] for d in cfg.pt["data"]] + [d["path"] for d in cfg.sft.get("data", [])]
    out += [t["path"] for t in cfg.eval.get("testsets", [])] + [e["path"] for e in cfg.eval.get("exams", [])]
    out.append(cfg.eval["judge"].get("rubric_kg", ""))
    return [p for p in out if p]


@pytest.mark.parametrize("name", ["real.yaml", "real-gpu.yaml"])
def test_real_configs_parse_and_point_at_the_shared_data(name):
    from zhongjing.pipeline.run import build_configs, load_pipeline_config

    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}: cannot check the paths configs/{name} reads")
    cfg = load_pipeline_config(str(REPO / "configs" / name), [])
    assert cfg.rankings == "gold-anchored" and cfg.rank.mismatched >= 1
    paths = _paths(cfg)
    shared = [p for p in paths if p.startswith("../shared/data/")]
    assert len(shared) >= 10
    for p in paths:
        real = SHARED_DATA / p.removeprefix("../shared/data/") if p.startswith("../shared/data/") else REPO / p
        assert real.exists(), f"configs/{name} reads {p}, which does not exist"
    _, configs = build_configs(cfg)  # every stage section validates against its stage's dataclass
    assert {"build", "pt", "sft", "rm", "ppo", "eval"} <= set(configs)
    assert configs["rm"].relevance_data and configs["rm"].relevance_data[0].endswith("test.jsonl")
