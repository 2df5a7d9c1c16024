"""Bradley–Terry leaderboard: hand-worked fits, ties as half-wins, the prior, bootstrap and connectivity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zhongjing.eval.leaderboard import Game, components, elo, fit, games_from_judged, leaderboard, plot
from zhongjing.eval.stats import Judged


def games(a, b, wins, ties=0, losses=0, group="g"):
    return [Game(a, b, 1, group)] * wins + [Game(a, b, 0.5, group)] * ties + [Game(a, b, 0, group)] * losses


def test_two_models_three_wins_in_four_is_a_strength_ratio_of_three():
    # MLE: p_A/(p_A+p_B) = 3/4  →  p_A/p_B = 3; Elo gap 400·log10(3) = 190.85
    th = fit(games("A", "B", 3, losses=1), ["A", "B"], prior=0)
    assert th[0] - th[1] == pytest.approx(math.log(3), abs=1e-6)
    assert th.sum() == pytest.approx(0, abs=1e-9)
    e = elo(th)
    assert e[0] - e[1] == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert (e[0] + e[1]) / 2 == pytest.approx(1000)


def test_ties_count_as_half_a_win_each():
    # 1 win, 2 ties, 1 loss = 2 points of 4 each: equal strengths; 2 wins + 2 ties = 3 of 4 → ratio 3
    assert np.allclose(fit(games("A", "B", 1, 2, 1), ["A", "B"], prior=0), 0, atol=1e-8)
    th = fit(games("A", "B", 2, 2, 0), ["A", "B"], prior=0)
    assert th[0] - th[1] == pytest.approx(math.log(3), abs=1e-6)


def test_three_models_recover_consistent_strengths():
    # strengths 4:2:1 reproduce these counts exactly (A–B 2:1, B–C 2:1, A–C 4:1), so they are the MLE
    g = games("A", "B", 2, losses=1) + games("B", "C", 2, losses=1) + games("A", "C", 4, losses=1)
    th = fit(g, ["A", "B", "C"], prior=0)
    assert np.allclose(np.exp(th) / np.exp(th[2]), [4, 2, 1], atol=1e-6)


def test_prior_keeps_an_unbeaten_model_finite():
    # 2–0 plus one virtual tie (½ point each): 2.5 vs 0.5 points → ratio 5
    th = fit(games("A", "B", 2), ["A", "B"], prior=1.0)
    assert th[0] - th[1] == pytest.approx(math.log(5), abs=1e-6)
    assert np.isfinite(fit(games("A", "B", 2), ["A", "B"], prior=0)).all()  # huge but not a crash


def test_leaderboard_rows_counts_intervals_and_components():
    g = (games("A", "B", 6, 2, 2, "d1") + games("A", "B", 5, 3, 2, "d2") + games("B", "C", 7, 1, 2, "d3")
         + games("B", "C", 6, 2, 2, "d4"))
    board = leaderboard(g + [Game("D", "E", 1, "d5")], ["A", "B", "C", "D", "E"], n_boot=200)
    assert [r["model"] for r in board["rows"] if r["model"] in "ABC"] == ["A", "B", "C"]
    a = next(r for r in board["rows"] if r["model"] == "A")
    assert (a["wins"], a["ties"], a["losses"], a["games"]) == (11, 5, 4, 20)
    assert a["ci"][0] <= a["rating"] <= a["ci"][1]
    assert not board["connected"] and sorted(map(sorted, board["components"])) == [["A", "B", "C"], ["D", "E"]]
    assert components(["A", "B"], games("A", "B", 1)) == [["A", "B"]]


def test_every_answer_order_is_one_game_by_priority():
    dims = ("safety", "professionalism", "fluency")
    j = [Judged("q1", "d1", {"safety": 1, "professionalism": -1, "fluency": 0},
                {"safety": 0, "professionalism": -1, "fluency": 1}),
         Judged("q2", "d2", {"safety": 0, "professionalism": 0, "fluency": 0}, None)]
    got = games_from_judged(j, "ppo", "sft", dims)
    assert [(g.a, g.b, g.score, g.group) for g in got] == [("ppo", "sft", 1.0, "d1"), ("ppo", "sft", 0.0, "d1"),
                                                             ("ppo", "sft", 0.5, "d2")]


def test_plot_writes_a_png(tmp_path):
    board = leaderboard(games("A", "B", 3, 1, 1), n_boot=20)
    plot(board, tmp_path / "lb.png")
    assert (tmp_path / "lb.png").read_bytes()[:4] == b"\x89PNG"


def test_davidson_two_models_closed_form():
    # two models: MLE of Davidson's model matches the frequencies: p_A/p_B = wins/losses, ν = ties/√(wins·losses)
    from zhongjing.eval.leaderboard import fit_davidson

    th, nu = fit_davidson(games("A", "B", 6, 4, 2), ["A", "B"], prior=0)
    assert th[0] - th[1] == pytest.approx(math.log(3), abs=1e-6) and nu == pytest.approx(4 / math.sqrt(12), abs=1e-6)
    th, nu = fit_davidson(games("A", "B", 2), ["A", "B"], prior=1.0)  # prior: half a virtual win each side
    assert th[0] - th[1] == pytest.approx(math.log(5), abs=1e-6) and nu == 0.0
    board = leaderboard(games("A", "B", 6, 4, 2) + games("B", "C", 3, 1, 1), ties="davidson", n_boot=30)
    assert [r["model"] for r in board["rows"]] == ["A", "B", "C"] and board["ties"] == "davidson" and board["nu"] > 0
    with pytest.raises(ValueError):
        leaderboard(games("A", "B", 1), ties="thirds")
