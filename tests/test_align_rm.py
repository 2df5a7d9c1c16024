"""Reward model: learns real preferences on the tiny model, K-way rankings with ties and all-wrong items, a folder
that loads with plain transformers + peft, the score command, and resume after a kill."""

from __future__ import annotations

import json
import random

import pytest
import torch

from align_helpers import (MEDICAL_PAIRS, keep_threads, kill_when, medical_base, real_dialogues, run_cli,  # noqa: F401
                           same_threads, write_jsonl)
from zhongjing.data.schema import Ranking
from zhongjing.train.prefs import IDK_ANSWER
from zhongjing.train.rm import RMConfig, train_rm

pytestmark = pytest.mark.usefixtures("keep_threads")

def rm_config(base, data, out, max_length=384, **train):
    from zhongjing.model.lora import LoraSettings
    from zhongjing.train.common import TrainSettings

    t = dict(lr=2e-3, epochs=3, batch_size=4, progress=False, warmup_ratio=0.0, threads=1) | train
    return RMConfig(model=str(base), data=[str(d) for d in data], output=str(out), val_ratio=0.3,
                    lora=LoraSettings(r=8, alpha=16, dropout=0.0), train=TrainSettings(**t), max_length=max_length,
                    length_group=8)


@pytest.fixture(scope="module")
def medical_rm(medical_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "rm"
    with same_threads():
        train_rm(rm_config(medical_base, [MEDICAL_PAIRS], out))
    return out


def test_medicalgpt_pairs_held_out_accuracy(medical_rm):
    meta = json.loads((medical_rm / "meta.json").read_text(encoding="utf-8"))
    assert meta["task"] == "reward" and meta["counts"]["val"] >= 25
    # trained on ~70 of the 100 medical pairs; judged on the ~30 it never saw
    assert meta["metrics"]["val_accuracy"] >= 0.6, meta["metrics"]
    assert meta["metrics"]["val_margin"] > 0
    assert meta["reward_stats"]["std"] > 0
    # the eval log shows the metrics, not the per-batch sums they are computed from
    logged = [json.loads(line) for line in (medical_rm / "logs" / "eval.jsonl").read_text().splitlines()]
    assert logged and all("val_accuracy" in r and "val_reward_sq" not in r and "val_pairs" not in r for r in logged)
    # the trivial baseline on the same held-out pairs, beside the accuracy (meta, every eval line)
    assert 0 <= meta["metrics"]["val_longer_wins"] <= 1 and all("val_longer_wins" in r for r in logged)


def test_longer_answer_baseline_hand_worked():
    """Pairs (better, worse) over answers of 5, 9, 9, 3 tokens: 0>1 shorter wins (0), 1>2 same length (½),
    2>3 longer wins (1), 1>3 longer wins (1) → 2.5 of 4 pairs."""
    import torch

    from zhongjing.train.rm import longer_correct

    batch = {"lengths": torch.tensor([5, 9, 9, 3]), "better": torch.tensor([0, 1, 2, 1]),
             "worse": torch.tensor([1, 2, 3, 3])}
    assert longer_correct(batch) == 2.5
    assert longer_correct({"better": batch["better"], "worse": batch["worse"]}) != longer_correct(batch)  # NaN


def test_folder_loads_with_plain_transformers_and_peft(medical_rm, medical_base):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from zhongjing.data.render import Renderer
    from zhongjing.model.reward import RewardModelScorer, reward_input_ids

    tok = AutoTokenizer.from_pretrained(medical_rm)
    base = AutoModelForSequenceClassification.from_pretrained(medical_base, num_labels=1)
    plain = PeftModel.from_pretrained(base, medical_rm).eval()
    ctx = [{"role": "user", "content": "医生，我最近总是头晕乏力，是怎么回事？"}]
    answers = ["您好，头晕乏力可能与贫血、低血压或睡眠不足有关，建议先查血常规和血压。", "不知道"]
    ids = [reward_input_ids(Renderer(tok, strategy="last"), ctx, a) for a in answers]
    width = max(map(len, ids))
    batch = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    with torch.no_grad():
        want = plain(input_ids=batch).logits[:, 0]
    got = RewardModelScorer(str(medical_rm)).score([ctx, ctx], answers)
    assert torch.allclose(want, got, atol=1e-5), (want, got)
    assert want[0] != want[1]


def test_score_command(medical_rm, medical_base, tmp_path, capsys):
    from zhongjing.cli import main

    assert main(["score", "--rm", str(medical_rm), str(MEDICAL_PAIRS), "-o", str(tmp_path / "s.jsonl"),
                 "--threads", "1"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 100 and all(len(x["rewards"]) == 2 for x in rows)
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["pairwise_accuracy"] > 0.6  # most of these pairs were trained on
    assert main(["score", "--rm", str(medical_base), str(MEDICAL_PAIRS)]) == 2
    assert "not a reward model" in capsys.readouterr().err
    for flag in ("--batch-size", "--max-length"):  # 0 gave a ValueError traceback / every answer unscored
        with pytest.raises(SystemExit) as e:
            main(["score", "--rm", str(medical_rm), str(MEDICAL_PAIRS), flag, "0"])
        assert e.value.code == 2 and f"argument {flag}: expected a whole number ≥ 1" in capsys.readouterr().err


def test_loading_a_trained_rm_does_not_report_its_head_missing(medical_rm):
    # transformers reports the classifier head as "MISSING ... newly initialized" when the body is loaded; under
    # `score`/PPO the trained head comes from the adapter right after, so that report misled users
    import logging

    from zhongjing.model.value_head import load_reward_model

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    hf = logging.getLogger("transformers")  # its own handler and no propagation: watch it directly
    hf.addHandler(handler)
    try:
        load_reward_model(medical_rm)
    finally:
        hf.removeHandler(handler)
    assert not [m for m in seen if "MISSING" in m or "LOAD REPORT" in m], seen


def test_counts_are_what_is_trained_on_when_answers_are_too_long(medical_base, capsys):
    # the start line and meta.json said "N rankings train" before those with an answer too long for max_length were
    # left out: a user saw 449 when 73 were used
    from zhongjing.model.load import load_tokenizer
    from zhongjing.train.pref_batches import pref_batches

    cfg = rm_config(medical_base, [MEDICAL_PAIRS], "unused", max_length=96)
    data, counts = pref_batches(cfg, load_tokenizer(medical_base), per="ranking", with_targets=False)
    assert counts["too_long"] > 0
    assert counts["train"] == len(data.train) and counts["val"] == len(data.val)
    assert counts["train"] + counts["val"] + counts["too_long"] == 100
    assert counts["train_pairs"] == len(data.train)  # chosen/rejected: one pair each
    # max_length past the model's 1024 positions is capped (as sft does; scoring reads no further either)
    cfg = rm_config(medical_base, [MEDICAL_PAIRS], "unused", max_length=4096)
    data, counts = pref_batches(cfg, load_tokenizer(medical_base), per="ranking", with_targets=False)
    assert cfg.max_length == 1024 and max(len(x) for e in data.train + data.val for x in e.ids) <= 1024
    assert "using 1024" in capsys.readouterr().err


def test_normalising_without_reward_statistics_says_so(medical_rm, tmp_path, capsys):
    import shutil

    from zhongjing.model.reward import RewardModelScorer

    RewardModelScorer(str(medical_rm), normalize=True)
    assert "unnormalised" not in capsys.readouterr().err
    bare = tmp_path / "rm"
    shutil.copytree(medical_rm, bare, ignore=shutil.ignore_patterns("checkpoints"))
    meta = json.loads((bare / "meta.json").read_text(encoding="utf-8"))
    del meta["reward_stats"]  # an RM trained with val_ratio=0
    (bare / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    scorer = RewardModelScorer(str(bare), normalize=True)
    assert (scorer.mean, scorer.std) == (0.0, 1.0) and "unnormalised" in capsys.readouterr().err


def test_scoring_stays_within_the_models_context(medical_rm):
    # score/PPO default to max_length=4096; the tiny model has 1024 positions — longer input gave a reward silently
    from zhongjing.model.reward import RewardModelScorer

    scorer = RewardModelScorer(str(medical_rm))
    assert scorer.renderer.max_length == 1024
    history = [m for d in real_dialogues(40) for m in d.messages][:-1]  # ends with a patient turn, ≫ 1024 tokens
    reward = scorer.score([history], ["您好，建议您尽快到医院复查。"])
    assert torch.isfinite(reward).all()


def short(text: str, limit: int = 90) -> str:
    """The answer's leading whole sentences, up to about `limit` characters (keeps the test fast)."""
    out = ""
    for sentence in text.replace("。", "。\n").splitlines():
        if out and len(out) + len(sentence) > limit:
            break
        out += sentence
    return out


def corrupt_rankings(dialogues, seed=0):
    """K=4 from real doctor answers: the answer beats three corruptions of it (tied among themselves)."""
    rng = random.Random(seed)
    out = []
    for d in dialogues:
        gold = short(d.messages[-1].content)
        if len(gold) < 30:
            continue
        chars = list(gold)
        rng.shuffle(chars)
        truncated = gold[: max(4, len(gold) // 4)]
        repeated = (gold[: len(gold) // 6] + "，") * 6
        out.append(Ranking(d.id, d.messages[-2:-1], [truncated, gold, "".join(chars), repeated],
                           ranking=[[1], [0, 2, 3]]))
    return out


def test_real_dialogues_vs_corrupted_answers(medical_base, tmp_path):
    rankings = corrupt_rankings(real_dialogues(200))
    # an item where every answer was wrong: the honest reply must become the best answer
    wrong = Ranking("all-wrong", rankings[0].messages, ["乱说一", "乱说二"], ranking=[], all_wrong=True)
    data = write_jsonl(tmp_path / "rankings.jsonl", rankings + [wrong])
    cfg = rm_config(medical_base, [data], tmp_path / "rm", max_length=160, epochs=2)
    cfg.relevance_data = [str(write_jsonl(tmp_path / "held-out.jsonl", real_dialogues(230)[200:]))]
    out = train_rm(cfg)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["counts"]["all_wrong"] == 1
    # relevance on held-out dialogues, its bigram-overlap baseline on the very pairs scored beside it
    rel = meta["relevance"]["data"]
    assert rel["pairs"] >= 20 and 0 <= rel["overlap_baseline"] <= 1 and 0 <= rel["accuracy"] <= 1
    assert meta["metrics"]["data_relevance_overlap"] == rel["overlap_baseline"]
    # 3 pairs per held-out ranking (answer vs each corruption); chance is 0.5
    assert meta["metrics"]["val_accuracy"] >= 0.8, meta["metrics"]


def test_all_wrong_completion_and_ties():
    r = Ranking.from_dict({"messages": [{"role": "user", "content": "q"}], "responses": ["a", "b", "c"],
                           "ranking": [[2], [0, 1]], "all_wrong": True})
    c = r.completed(IDK_ANSWER)
    assert c.responses == ["a", "b", "c", IDK_ANSWER] and c.ranking == [[3], [2], [0, 1]]
    assert sorted(c.pairs()) == sorted([(3, 2), (3, 0), (3, 1), (2, 0), (2, 1)])
    r2 = Ranking.from_dict({"messages": [{"role": "user", "content": "q"}], "responses": ["a", "b"],
                            "all_wrong": True, "replacement": "我不确定，请就医。"})
    assert r2.completed(IDK_ANSWER).ranking == [[2], [0, 1]] and r2.completed(IDK_ANSWER).responses[2] == "我不确定，请就医。"


def test_batches_keep_rankings_whole_and_normalise_per_ranking():
    from zhongjing.train.pref_batches import RankingBatches
    from zhongjing.train.prefs import Encoded

    enc = [Encoded([[1, 2], [3], [4, 5, 6], [7]], [[0], [1, 2], [3]], 4), Encoded([[8], [9, 9]], [[1], [0]], 2)]
    for kind, norms in (("ckn", [6.0, 1.0]), ("pairs", [5.0, 1.0]), ("one", [1.0, 1.0])):
        b = RankingBatches(enc, [], 2, seed=0, group=1, pad_id=0, pair_norm=kind, pack=False).collate(enc)
        assert b["input_ids"].shape == (6, 3) and b["n"] == 2 and b["ntokens"] == 10
        assert b["better"].tolist() == [0, 0, 0, 1, 2, 5] and b["worse"].tolist() == [1, 2, 3, 3, 3, 4]
        assert b["owner"].tolist() == [0, 0, 0, 0, 0, 1] and b["norm"].tolist() == norms
        assert b["ends"].tolist() == [[0, 1], [1, 0], [2, 2], [3, 0], [4, 0], [5, 1]]
    # packed: six answers in rows no wider than the longest (3 tokens), each read at its own last token
    b = RankingBatches(enc, [], 2, seed=0, group=1, pad_id=0).collate(enc)
    assert b["input_ids"].shape == (4, 3) and b["ntokens"] == 10
    ids, seg = b["input_ids"], b["seg"]
    for i, answer in enumerate([[1, 2], [3], [4, 5, 6], [7], [8], [9, 9]]):
        assert ids[seg == i].tolist() == answer and b["ends"][i].tolist() == [int((seg == i).nonzero()[-1][0]),
                                                                                int((seg == i).nonzero()[-1][1])]
        assert b["position_ids"][seg == i].tolist() == list(range(len(answer)))


def test_shared_prefix_layout_hand_worked():
    """Two rankings: the dialogue once, each answer branching off it, positions continuing from the dialogue."""
    from zhongjing.train.pref_batches import RankingBatches, shared_prefix
    from zhongjing.train.prefs import Encoded

    assert shared_prefix([[1, 2, 3], [1, 2, 4, 5]]) == 2 and shared_prefix([[1, 2], [1, 2]]) == 1  # own last token
    enc = [Encoded([[1, 2, 3], [1, 2, 4, 5]], [[0], [1]], 2), Encoded([[7, 8], [7, 9]], [[1], [0]], 2)]
    b = RankingBatches(enc, [], 2, seed=0, group=1, pad_id=0, share_prefix=True).collate(enc)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 8, 9, 0, 0]] and b["ntokens"] == 8
    assert b["position_ids"].tolist() == [[0, 1, 2, 2, 3], [0, 1, 1, 0, 0]]
    assert b["ends"].tolist() == [[0, 2], [0, 4], [1, 1], [1, 2]] and b["lengths"].tolist() == [3, 4, 2, 2]
    m = b["attention_mask"][0, 0].int().tolist()  # token 4 (answer 2's first own token) does not see token 3
    assert m == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]
    assert b["attention_mask"][1, 0].int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0],
                                                         [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]  # padding: itself only
    assert b["better"].tolist() == [0, 3] and b["worse"].tolist() == [1, 2]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prefix_gives_the_same_rewards_loss_and_gradients_as_each_answer_alone(attn):
    """The dialogue computed once instead of K times changes nothing the reward model computes: every reward equals
    the answer scored alone, and the loss and every gradient equal the packed layout's."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from zhongjing.train.pref_batches import RankingBatches
    from zhongjing.train.prefs import Encoded
    from zhongjing.train.rm import rm_loss

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, num_labels=1, pad_token_id=0, attn_implementation=attn))
    g = random.Random(1)
    items = []
    for k, n in [(4, 20), (2, 35), (3, 5), (5, 12)]:
        dialogue = [g.randrange(1, 50) for _ in range(n)]
        items.append(Encoded([dialogue + [g.randrange(1, 50) for _ in range(g.randrange(1, 9))] for _ in range(k)],
                             [[i] for i in range(k)], k))
    items += [Encoded([[5, 6, 7, 8], [5, 6, 7, 8]], [[0], [1]], 2),  # identical answers
              Encoded([[5, 6, 7], [5, 6, 7, 9, 9]], [[0], [1]], 2)]  # one starts as the other
    tree = RankingBatches([], [], 8, seed=0, group=1, pad_id=0, share_prefix=True).collate(items)
    packed = RankingBatches([], [], 8, seed=0, group=1, pad_id=0).collate(items)
    assert tree["ntokens"] < 0.6 * packed["ntokens"]
    from zhongjing.model.value_head import position_scores

    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([x])).logits[:, 0] for e in items for x in e.ids])
        scores = position_scores(model, tree["input_ids"], tree["position_ids"], tree["attention_mask"])
    assert torch.allclose(scores[tree["ends"][:, 0], tree["ends"][:, 1]], alone, atol=1e-5)
    grads = []
    for batch in (tree, packed):
        model.zero_grad()
        loss, metrics = rm_loss(model, batch)
        loss.backward()
        grads.append((loss.item(), metrics["margin"], [p.grad.clone() for p in model.parameters()]))
    # the summed margins, not the count of correct pairs: the identical answers' margin is 0 up to float noise, so
    # its sign (counted correct or not) may differ between layouts on some CPUs (seen with eager attention)
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-5) and grads[0][1] == pytest.approx(grads[1][1], abs=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads[0][2], grads[1][2]))


def test_packed_rows_give_the_same_rewards_as_one_answer_per_row(medical_base):
    from collections import Counter

    from zhongjing.data.render import Renderer
    from zhongjing.data.readers import read_rankings
    from zhongjing.model.load import load_tokenizer
    from zhongjing.model.lora import LoraSettings, apply_lora
    from zhongjing.model.value_head import new_reward_model
    from zhongjing.train.pref_batches import RankingBatches
    from zhongjing.train.prefs import encode
    from zhongjing.train.rm import rm_loss

    tok = load_tokenizer(medical_base)
    enc = encode(list(read_rankings(MEDICAL_PAIRS))[:8], Renderer(tok, max_length=384, strategy="last"), Counter())
    packed = RankingBatches(enc, [], 8, seed=0, group=1, pad_id=tok.pad_token_id).collate(enc)
    padded = RankingBatches(enc, [], 8, seed=0, group=1, pad_id=tok.pad_token_id, pack=False).collate(enc)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    model = apply_lora(new_reward_model(medical_base), LoraSettings(r=4, dropout=0.0), "SEQ_CLS").eval()
    with torch.no_grad():
        a, b = rm_loss(model, packed), rm_loss(model, padded)
    assert a[0].item() == pytest.approx(b[0].item(), abs=1e-5)
    assert a[1]["reward"] == pytest.approx(b[1]["reward"], abs=1e-4) and a[1]["reward_sq"] > 0


def test_resume_after_kill_matches_uninterrupted_run(medical_base, tmp_path):
    from zhongjing.config import load_config
    from zhongjing.train.checkpoint import checkpoints

    rows = [json.loads(x) for x in MEDICAL_PAIRS.read_text(encoding="utf-8").splitlines()[:24]]
    data = write_jsonl(tmp_path / "pairs.json", rows)
    args = [f"model={medical_base}", f"data={data}", "max_length=128", "val_ratio=0.25", "train.epochs=2",
            "train.batch_size=2", "train.lr=1e-3", "train.save_every=2", "train.progress=false", "lora.r=4",
            "lora.dropout=0.0", "train.threads=1"]
    train_rm(load_config(RMConfig, overrides=args + [f"output={tmp_path / 'full'}"]))
    killed = tmp_path / "killed"
    code = kill_when(["train", "rm", *args, f"output={killed}"], lambda: len(checkpoints(killed)) >= 1)
    assert code != 0 and not (killed / "meta.json").exists()
    again = run_cli("train", "rm", *args, f"output={killed}", "train.resume=true")
    assert again.returncode == 0, again.stderr
    a = json.loads((tmp_path / "full" / "meta.json").read_text(encoding="utf-8"))
    b = json.loads((killed / "meta.json").read_text(encoding="utf-8"))
    assert a["step"] == b["step"]
    assert b["metrics"]["val_accuracy"] == pytest.approx(a["metrics"]["val_accuracy"])
    assert b["metrics"]["best_val_loss"] == pytest.approx(a["metrics"]["best_val_loss"], rel=1e-4)
    steps = [json.loads(x)["step"] for x in (killed / "logs" / "train.jsonl").read_text().splitlines()]
    assert steps == list(range(1, a["step"] + 1))
