"""The loop itself: accumulation invariance with uneven token counts, the explosion guard, schedule, checkpoints."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from zhongjing.data.render import IGNORE
from zhongjing.errors import ConfigError, ZhongjingError
from zhongjing.model.lora import TrainedIO
from zhongjing.train import checkpoint as ckpt
from zhongjing.train.batching import Example, LazyBatches, collate_rows, group_by_length
from zhongjing.train.common import TrainSettings, make_accelerator
from zhongjing.train.lm import lm_loss
from zhongjing.train.loop import fit
from zhongjing.train.optim import build_optimizer, build_scheduler


class Tok:  # what TrainedIO needs from a tokenizer
    def save_pretrained(self, path):
        (__import__("pathlib").Path(path) / "tokenizer_config.json").write_text("{}")


class Data:
    """Samples of very different trained-token counts, so per-micro-batch averaging would give other gradients."""

    def __init__(self, n=64, seed=0, val=8):
        rng = random.Random(seed)
        self.ex = []
        for _ in range(n + val):
            L = rng.randint(4, 48)
            ids = [rng.randrange(3, 200) for _ in range(L)]
            keep = rng.random()
            self.ex.append(Example.from_labels(ids, [t if rng.random() < keep else IGNORE for t in ids]))
        self.n, self.bs = n, None

    def batches(self, items, epoch):
        lengths = {i: len(self.ex[i].input_ids) for i in items}
        plan = group_by_length(items, lengths, self.bs, 1, seed=0, epoch=epoch)
        return LazyBatches(plan, lambda rows: collate_rows(rows, self.ex, 0))

    def train_batches(self, epoch):
        order = list(range(self.n))
        random.Random(epoch).shuffle(order)
        return self.batches(order, epoch)

    def val_batches(self):
        return self.batches(list(range(self.n, len(self.ex))), -1)


def tiny_lm(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))


def run(tmp, batch_size, grad_accum, data=None, loss_fn=lm_loss, meta=None, **kw):
    explode = kw.pop("explode", 0.0)
    s = TrainSettings(**(dict(batch_size=batch_size, grad_accum=grad_accum, lr=3e-3, warmup_steps=2, progress=False,
                              explode_grad_norm=explode) | kw))
    data = data or Data()
    data.bs = batch_size
    acc = make_accelerator(s)
    model = tiny_lm()
    res = fit(model, data, loss_fn, s, tmp, accelerator=acc, io=TrainedIO(Tok(), str(tmp)),
              meta=meta or {"stage": "test"})
    logs = [json.loads(x) for x in (tmp / "logs" / "train.jsonl").read_text().splitlines()]
    return res, logs, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_accumulation_is_invariant_to_how_the_global_batch_is_split(tmp_path):
    _, a, wa = run(tmp_path / "a", 8, 1, epochs=2)
    _, b, wb = run(tmp_path / "b", 1, 8, epochs=2)
    _, c, wc = run(tmp_path / "c", 2, 4, epochs=2)
    assert len(a) == len(b) == len(c) == 16
    for x, y, z in zip(a, b, c):
        assert x["trained"] == y["trained"] == z["trained"]
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5) and z["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-4)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(wc[k], wa[k], atol=2e-5, rtol=1e-4)
    assert a[-1]["loss"] < a[0]["loss"]


def test_guard_skips_non_finite_steps_and_decays_lr(tmp_path):
    calls = {"n": 0}

    def flaky(model, batch):
        loss, m = lm_loss(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), m  # the 3rd step's loss is NaN

    res, logs, _ = run(tmp_path / "nan", 8, 1, loss_fn=flaky, max_steps=6, warmup_steps=0)
    assert [r["skipped"] for r in logs] == [None, None, "explosion", None, None, None]
    assert res.skipped["explosions"] == 1
    sched = build_scheduler(build_optimizer(tiny_lm(), 3e-3), 6, 0)
    factors = []
    for _ in range(6):
        factors.append(sched.get_last_lr()[0])
        sched.step()
    assert [r["lr"] for r in logs[:3]] == pytest.approx(factors[:3])
    assert [r["lr"] for r in logs[3:]] == pytest.approx([f * 0.5 for f in factors[3:]])  # decayed from then on


def test_guard_threshold_freezes_weights(tmp_path):
    before = tiny_lm().state_dict()
    res, logs, after = run(tmp_path / "thr", 8, 1, max_steps=3, explode=1e-6)  # every real norm is "too big"
    assert res.skipped["explosions"] == 3 and all(r["skipped"] == "explosion" for r in logs)
    for k in before:
        assert torch.equal(before[k], after[k])


def test_schedule_warmup_then_cosine_to_floor():
    opt = build_optimizer(tiny_lm(), 1.0)
    s = build_scheduler(opt, total_steps=10, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(11):
        lrs.append(s.get_last_lr()[0])
        s.step()
    assert lrs[0] == pytest.approx(1 / 3) and lrs[1] == pytest.approx(2 / 3) and lrs[2] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_checkpoints_keep_last_and_best_and_output_is_best(tmp_path):
    out = tmp_path / "ck"
    res, logs, _ = run(out, 8, 1, max_steps=8, eval_every=2, save_every=1, keep_checkpoints=2)
    steps = [s for s, _ in ckpt.checkpoints(out)]
    assert steps[-2:] == [7, 8] and res.best_step in steps and len(steps) <= 3
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    meta = json.loads((out / "meta.json").read_text())
    evals = [json.loads(x) for x in (out / "logs" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4, 6, 8]
    assert meta["best_step"] == min(evals, key=lambda e: e["val_loss"])["step"] == res.best_step
    best = ckpt.CKPT + f"/step-{res.best_step:06d}/model.safetensors"
    assert (out / "model.safetensors").read_bytes() == (out / best).read_bytes()
    with pytest.raises(ZhongjingError, match="resume"):
        run(out, 8, 1, max_steps=2)  # a second run may not silently mix into the first one's folder


def test_best_metric_and_mode_pick_the_result(tmp_path):
    """`best_metric`/`best_mode` choose which evaluated checkpoint becomes OUT: here the HIGHEST validation loss
    (the first evaluation, as the loss falls), which the default rule (lowest val_loss) would never pick."""
    out = tmp_path / "max"
    res, _, _ = run(out, 8, 1, max_steps=8, eval_every=2, best_metric="val_loss", best_mode="max")
    evals = [json.loads(x) for x in (out / "logs" / "eval.jsonl").read_text().splitlines()]
    worst = max(evals, key=lambda e: e["val_loss"])
    assert worst["step"] != min(evals, key=lambda e: e["val_loss"])["step"]  # the two rules disagree here
    meta = json.loads((out / "meta.json").read_text())
    assert meta["best_step"] == res.best_step == worst["step"]
    assert meta["metrics"]["best_by"] == {"metric": "val_loss", "mode": "max"}
    assert res.best_val == pytest.approx(worst["val_loss"])  # best_val_loss stays the chosen checkpoint's loss
    best = ckpt.CKPT + f"/step-{res.best_step:06d}/model.safetensors"
    assert (out / "model.safetensors").read_bytes() == (out / best).read_bytes()
    with pytest.raises(ConfigError, match=r"best_metric 'val_acc'.*it logs: val_loss"):
        run(tmp_path / "typo", 8, 1, max_steps=2, eval_every=2, best_metric="val_acc", best_mode="max")
    for bad, msg in (({"best_mode": "highest"}, "best_mode must be min or max"),
                     ({"best_metric": "loss"}, "must name a validation metric")):
        with pytest.raises(ConfigError, match=msg):
            TrainSettings(**bad)


def test_patience_stops_early_with_the_planned_schedule(tmp_path):
    """`patience`: training stops once that many evaluations in a row have not beaten the best one. The schedule is
    still the planned one, so the steps it did run are the full run's steps (same losses, same learning rates),
    the result is the same checkpoint, and a resumed run does not train on past the stop."""
    kw = dict(max_steps=12, eval_every=2, best_metric="val_loss", best_mode="max")  # the loss falls: step 2 stays best
    full, full_logs, _ = run(tmp_path / "full", 8, 1, **kw)
    assert full.best_step == 2 and full.step == 12
    out = tmp_path / "early"
    res, logs, _ = run(out, 8, 1, patience=2, **kw)
    assert res.step == 6 and res.best_step == 2  # evaluations at 4 and 6 did not beat step 2
    assert [(r["loss"], r["lr"]) for r in logs] == [(r["loss"], r["lr"]) for r in full_logs[:6]]
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "full" / "model.safetensors").read_bytes()
    metrics = json.loads((out / "meta.json").read_text())["metrics"]
    assert metrics["stopped_early"] is True and metrics["planned_steps"] == 12
    assert not json.loads((tmp_path / "full" / "meta.json").read_text())["metrics"]["stopped_early"]
    _, _, _ = run(tmp_path / "at-end", 8, 1, patience=2, **kw | {"max_steps": 4})  # patience runs out at the last step
    assert not json.loads((tmp_path / "at-end" / "meta.json").read_text())["metrics"]["stopped_early"]
    again, again_logs, _ = run(out, 8, 1, patience=2, resume=True, **kw)
    assert again.step == 6 and len(again_logs) == 6  # nothing trained after the stop
    with pytest.raises(ConfigError, match="patience must be ≥ 0"):
        TrainSettings(patience=-1)


def test_rl_stages_refuse_the_keys_only_fit_reads():
    from zhongjing.consult.trainer import ConsultConfig
    from zhongjing.train.rl import RLConfig

    for bad in ({"patience": 2}, {"best_metric": "val_accuracy"}, {"best_mode": "max"}):
        with pytest.raises(ConfigError, match=f"train.{next(iter(bad))} is not used by this stage: `select`"):
            RLConfig(train=TrainSettings(**bad))
        with pytest.raises(ConfigError, match="is not used by this stage: the output is the last policy"):
            ConsultConfig(train=TrainSettings(**bad))


def test_resume_refuses_other_data_and_logs_to_tensorboard(tmp_path):
    out = tmp_path / "tb"
    first = {"stage": "test", "data": [{"sha256": "aaa"}], "inputs_hash": "h1"}
    run(out, 8, 1, max_steps=4, save_every=2, eval_every=4, tensorboard=True, meta=first)
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    other = first | {"data": [{"sha256": "bbb"}], "inputs_hash": "h2"}
    with pytest.raises(ZhongjingError, match="data changed"):
        run(out, 8, 1, max_steps=6, resume=True, meta=other)
    res, logs, _ = run(out, 8, 1, max_steps=6, save_every=2, eval_every=4, resume=True, meta=first)
    assert [r["step"] for r in logs] == [1, 2, 3, 4, 5, 6] and res.step == 6  # continued at 5, log not repeated
