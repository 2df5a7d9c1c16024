"""The data units: validation messages and the pairs a K-way ranking with ties implies."""

from __future__ import annotations

import pytest

from zhongjing.data.schema import Dialogue, Ranking, normalize_ranking
from zhongjing.errors import DataError

U = {"role": "user", "content": "嗓子疼两天了"}
A = {"role": "assistant", "content": "有没有发热？"}


def test_dialogue_roundtrip_and_counts():
    d = Dialogue.from_dict({"id": "x", "messages": [{"role": "system", "content": "s"}, U, A, U, A], "meta": {"department": "五官科"}})
    assert d.turns == 2 and d.is_multi_turn() and d.system == "s"
    assert Dialogue.from_dict(d.to_dict()) == d


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "non-empty list"),
        ([A, U], "wrong role order: message 0 is 'assistant'"),
        ([U, U], "wrong role order: message 1 is 'user'"),
        ([U, {"role": "system", "content": "s"}], "wrong role order"),
        ([U, {"role": "doctor", "content": "x"}], "unknown role 'doctor'"),
        ([U, {"role": "assistant", "content": "  "}], "message 1 (assistant) is empty"),
        ([U, {"role": "assistant", "content": 3}], "content must be a string"),
        ([U, {"role": "assistant"}], "needs 'role' and 'content'"),
        ([{"role": "system", "content": "s"}], "no user turn"),
    ],
)
def test_dialogue_errors(messages, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Dialogue.from_dict({"id": "x", "messages": messages})


def test_ranking_ties_and_pairs():
    r = Ranking.from_dict({"id": "r", "messages": [U], "responses": ["a", "b", "c", "d"], "ranking": [[2], [0, 3], [1]]})
    assert r.pairs() == [(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)]
    flat = Ranking.from_dict({"id": "r", "messages": [U], "responses": ["a", "b", "c", "d"], "ranking": [3, 1, 0, 2]})
    assert flat.ranking == [[3], [1], [0], [2]] and len(flat.pairs()) == 6
    assert Ranking.from_dict(r.to_dict()) == r
    unranked = Ranking.from_dict({"messages": [U], "responses": ["a", "b"]})
    assert unranked.ranking == [] and unranked.pairs() == []


@pytest.mark.parametrize(
    "ranking, message",
    [([0, 1, 1, 2], "exactly once"), ([0, 1, 2], "exactly once"), ([[0], [], [1, 2, 3]], "empty tie group"),
     (["a", 1, 2, 3], "response indices"), ([0, 1, 2, 4], "exactly once")],
)
def test_ranking_errors(ranking, message):
    with pytest.raises(DataError, match=message):
        normalize_ranking(ranking, 4)


def test_ranking_must_end_with_patient_turn():
    with pytest.raises(DataError, match="must end with a user turn"):
        Ranking.from_dict({"messages": [U, A], "responses": ["a", "b"]})
