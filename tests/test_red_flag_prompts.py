"""Red-flag turns where PPO and its monitor need them: the rubric judge's safety moves almost only on turns whose
patient reports a red flag (about 1 in 30 real turns), so `splits.ppo_red_flags` adds dialogues with one to PPO's
prompts and `ppo.eval_red_flags` puts some among the monitor's held-out prompts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from zhongjing.data.schema import Message
from zhongjing.data.simulate import SimulatedAnnotator, red_flag
from zhongjing.train.rl import Prompt, split_prompts


def test_red_flag_is_the_rubrics_test():
    assert red_flag("昨晚突然胸痛，出冷汗") and red_flag("咳嗽还咯血") and not red_flag("头痛三天了，有点发烧")
    sim = SimulatedAnnotator(tie=0.0)
    ctx = [Message("user", "昨晚突然胸痛，出冷汗")]
    assert sim.score(ctx, "多休息。", None).safety < sim.score(ctx, "请马上去医院急诊。", None).safety
    ctx = [Message("user", "头痛三天了")]
    assert sim.score(ctx, "多休息。", None).safety == sim.score(ctx, "请马上去医院急诊。", None).safety


def prompts(n: int, flagged: set[int]) -> list[Prompt]:
    return [Prompt(f"p{i}", [Message("user", f"第{i}位：" + ("胸痛" if i in flagged else "咳嗽"))], [i]) for i in range(n)]


def test_split_prompts_holds_out_red_flags_first():
    ps = prompts(40, {3, 17, 25, 31})
    train0, held0 = split_prompts(ps, 8, seed=5)
    assert split_prompts(ps, 8, seed=5, red_flags=0) == (train0, held0)  # off: exactly the old split
    train, held = split_prompts(ps, 8, seed=5, red_flags=3)
    assert len(held) == 8 and len(train) == 32 and not {p.id for p in held} & {p.id for p in train}
    assert sum(red_flag(p.context[-1].content) for p in held) == 3
    assert split_prompts(ps, 8, seed=5, red_flags=3) == (train, held)  # seeded
    _, everything = split_prompts(ps, 8, seed=5, red_flags=10)  # more asked than exist: all four
    assert sum(red_flag(p.context[-1].content) for p in everything) == 4 and len(everything) == 8
    _, few = split_prompts(ps, 2, seed=5, red_flags=10)  # never more than n_eval
    assert len(few) == 2 and all(red_flag(p.context[-1].content) for p in few)


def test_split_prompts_without_red_flags_takes_any_item():
    # the consultation trainer splits its cases (no patient turn yet) with the same function
    cases = [object() for _ in range(10)]
    train, held = split_prompts(cases, 3, seed=1)
    assert len(held) == 3 and len(train) == 7 and set(map(id, train + held)) == set(map(id, cases))


def wiring(tmp_path, **splits):
    from zhongjing.pipeline.run import SplitUse
    from zhongjing.pipeline.stages import Wiring

    cfg = SimpleNamespace(work_dir=str(tmp_path), active=lambda: ["build", "ppo"], splits=SplitUse(**splits))
    w = Wiring(cfg)
    rows = [{"id": f"d{i}", "messages": [{"role": "user", "content": "胸痛两天" if i % 10 == 0 else f"咳嗽{i}天"},
                                         {"role": "assistant", "content": "请问还有别的症状吗？"}]} for i in range(100)]
    w.built("train").parent.mkdir(parents=True, exist_ok=True)
    w.built("train").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return w


@pytest.mark.parametrize("extra", [0, 4, 50])
def test_ppo_prompts_get_more_red_flag_dialogues(tmp_path, extra):
    base = [r["id"] for r in map(json.loads, wiring(tmp_path / "a", ppo_limit=20).write_prompts("ppo").open())]
    w = wiring(tmp_path / "b", ppo_limit=20, ppo_red_flags=extra)
    ids = [r["id"] for r in map(json.loads, w.write_prompts("ppo").open())]
    added = [i for i in ids if i not in base]
    assert set(base) <= set(ids) and len(ids) == len(set(ids))  # the sample as before, plus the additions
    flagged_in_base = sum(int(i[1:]) % 10 == 0 for i in base)
    assert len(added) == min(extra, 10 - flagged_in_base) and all(int(i[1:]) % 10 == 0 for i in added)
    # part of the ppo stage's key, so a changed setting re-runs it; absent when off (old runs stay cached)
    assert ("red_flags" in w.settings("ppo")) == bool(extra) and "red_flags" not in w.settings("generate")
