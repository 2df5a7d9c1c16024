"""`zhongjing generate`: K answers for every (or the last) patient turn with the gold history, as Ranking JSONL
with empty rankings; resumes after a kill without redoing or losing finished items."""

from __future__ import annotations

import json

import pytest

from align_helpers import keep_threads, kill_when, medical_base, real_dialogues, run_cli, write_jsonl  # noqa: F401
from zhongjing.data.schema import Ranking
from zhongjing.data.turns import select_turns
from zhongjing.generate import GenerateConfig, generate

pytestmark = pytest.mark.usefixtures("keep_threads")


@pytest.fixture(scope="module")
def dialogues(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "dialogues.jsonl"
    return write_jsonl(path, real_dialogues(12))


def test_every_turn_k_answers_with_gold_history(medical_base, dialogues, tmp_path):
    out = tmp_path / "gen.jsonl"
    stats = generate(GenerateConfig(model=str(medical_base), input=[str(dialogues)], output=str(out), k=3,
                                    turn="all", max_new_tokens=8, max_length=512, progress=False, threads=1))
    ds = real_dialogues(12)
    turns = sum(sum(m.role == "user" for m in d.messages) for d in ds)
    rows = [Ranking.from_dict(json.loads(x)) for x in out.read_text(encoding="utf-8").splitlines()]
    assert stats["written"] == len(rows) == turns
    assert not (tmp_path / "gen.jsonl.partial").exists()
    for r in rows:
        assert r.k == 3 and r.ranking == [] and r.messages[-1].role == "user"
    d = ds[0]
    first = [r for r in rows if r.meta["source_id"] == d.id]
    # turn n answers the n-th patient turn with the real history before it; the real answer is the reference
    assert [r.id for r in first] == [f"{d.id}#{n}" for n in range(1, d.turns + 1)]
    assert [m.content for m in first[1].messages] == [m.content for m in d.messages[:3]]
    assert first[1].meta["reference"] == d.messages[3].content


def test_turn_selection():
    from zhongjing.data.schema import Dialogue

    d = Dialogue.from_dict({"id": "x", "messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}]})
    assert [i.id for i in select_turns(d, "last")] == ["x#3"] and "reference" not in select_turns(d, "last")[0].meta
    assert [i.id for i in select_turns(d, "all")] == ["x#1", "x#2", "x#3"]
    assert [i.id for i in select_turns(d, "2")] == ["x#2"] and select_turns(d, "9") == []


def test_resume_after_kill(medical_base, dialogues, tmp_path):
    out = tmp_path / "gen.jsonl"
    partial = tmp_path / "gen.jsonl.partial"
    args = ["generate", "--model", str(medical_base), str(dialogues), "-o", str(out), "--k", "2", "--turn", "all",
            "--max-new-tokens", "24", "batch_size=2", "max_length=512", "progress=false", "threads=1"]

    def some_done():
        return partial.exists() and len(partial.read_text(encoding="utf-8").splitlines()) >= 8

    assert kill_when(args, some_done) != 0 and not out.exists()
    before = [json.loads(x) for x in partial.read_text(encoding="utf-8").splitlines() if x.strip().endswith("}")]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    ids = [x["id"] for x in rows]
    assert len(ids) == len(set(ids)) == json.loads(r.stdout.strip().splitlines()[-1])["items"]
    assert json.loads(r.stdout.strip().splitlines()[-1])["resumed"] >= len(before) - 1
    kept = {x["id"]: x for x in rows}
    assert all(kept[b["id"]] == b for b in before[:-1])  # what was finished before the kill is kept as it was
    # a different setting for the same output is refused instead of mixing two runs in one file
    partial.write_text(json.dumps(rows[0], ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "gen.jsonl.partial.json").write_text('{"settings_hash": "other"}', encoding="utf-8")
    out.unlink()
    bad = run_cli(*args)
    assert bad.returncode == 2 and "other settings" in bad.stderr


def long_history(n_dialogues: int = 40) -> list[dict]:
    """Real doctor–patient exchanges strung into one conversation far longer than the tiny model's 1024 tokens."""
    msgs = [m.to_dict() for d in real_dialogues(n_dialogues) for m in d.messages]
    return msgs + [{"role": "user", "content": "医生，那我接下来应该注意什么？"}]


def test_history_longer_than_the_models_context_keeps_the_latest_turns(medical_base, tmp_path):
    # max_length defaults to 4096 (the paper's); the model's context is 1024, so the prompt budget must be the smaller
    # one — generate stopped with "the model's context of 1024 leaves no room to answer" on real CMtMedQA dialogues
    from zhongjing.model.load import context_of, load_tokenizer
    from zhongjing.train.ppo import PPOConfig
    from zhongjing.train.rl import load_prompts

    assert context_of(medical_base) == 1024
    data = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "messages": long_history()}])
    out = tmp_path / "gen.jsonl"
    stats = generate(GenerateConfig(model=str(medical_base), input=[str(data)], output=str(out), k=2,
                                    max_new_tokens=8, progress=False, threads=1))
    assert stats["written"] == 1 and stats["skipped_too_long"] == 0

    from collections import Counter

    prompts = load_prompts(PPOConfig(model=str(medical_base), prompts=[str(data)]), load_tokenizer(medical_base),
                           Counter())
    assert len(prompts) == 1 and 512 < len(prompts[0].ids) <= 1024 - PPOConfig().generation.max_new_tokens


def test_partial_file_damage_is_dropped_or_named_never_a_traceback(tmp_path):
    from zhongjing.errors import ZhongjingError
    from zhongjing.generate import Partial, partial_paths

    out = tmp_path / "gen.jsonl"
    path, meta = partial_paths(out)
    Partial(out, {"k": 4}, overwrite=False).close(remove=False)  # writes the settings file
    path.write_text('{"id": "a#1", "x": 1}\n{"no_id": true}\n{"id": "b#1"}\n', encoding="utf-8")
    p = Partial(out, {"k": 4}, overwrite=False)  # a line without an id was a KeyError; now the file ends before it
    p.close(remove=False)
    assert list(p.done) == ["a#1"] and path.read_text(encoding="utf-8") == '{"id": "a#1", "x": 1}\n'
    meta.write_text("{cut", encoding="utf-8")  # was a JSONDecodeError traceback
    with pytest.raises(ZhongjingError, match=r"other settings \(unknown: gen.jsonl.partial.json is unreadable\)"):
        Partial(out, {"k": 4}, overwrite=False)
    assert list(Partial(out, {"k": 4}, overwrite=True).done) == []  # overwrite=true, as the message says, starts over
