"""Intervals: Wilson values, paired-bootstrap coverage on simulated data, flips, retention, block ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamline import stats
from streamline.errors import StreamlineError


def test_wilson_known_values():
    assert stats.wilson(10, 20) == pytest.approx([0.2993, 0.7007], abs=1e-4)
    lo, hi = stats.wilson(0, 20)
    assert lo == 0 and hi == pytest.approx(0.1611, abs=1e-4)  # not a point, unlike a bootstrap at 0 of 20
    assert stats.wilson(20, 20)[1] == 1.0


def _simulate(rng, n: int, p: list[float]) -> tuple[dict, dict]:
    """n questions whose (original right?, pruned right?) kinds 00, 01, 10, 11 have probabilities p."""
    kinds = rng.choice(4, size=n, p=p)
    return ({str(i): bool(k >= 2) for i, k in enumerate(kinds)}, {str(i): bool(k % 2) for i, k in enumerate(kinds)})


def test_paired_bootstrap_covers_the_true_difference():
    """95% intervals from 100 simulated evaluations (seeds 0..99) hold the true difference >= 93 times,
    for a task and for the average over two tasks."""
    pa, pb = [0.25, 0.10, 0.20, 0.45], [0.30, 0.15, 0.05, 0.50]  # true deltas p01 - p10: -0.10, +0.10
    true_a, true_avg = pa[1] - pa[2], ((pa[1] - pa[2]) + (pb[1] - pb[2])) / 2
    hits_a = hits_avg = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        (oa, qa), (ob, qb) = _simulate(rng, 200, pa), _simulate(rng, 150, pb)
        ci = stats.paired_comparison({"a": oa, "b": ob}, {"a": qa, "b": qb}, resamples=4000)["delta_ci95"]
        hits_a += ci["a"][0] <= true_a <= ci["a"][1]
        hits_avg += ci["average"][0] <= true_avg <= ci["average"][1]
    assert hits_a >= 93 and hits_avg >= 93
    assert hits_a < 100 or hits_avg < 100  # intervals, not the whole range


def test_paired_comparison_hand_counts():
    # 10 questions: original right on 0..5; pruned right on 2..7. Flips: 0, 1 (lost), 6, 7 (gained).
    orig = {str(i): i < 6 for i in range(10)}
    pruned = {str(i): 2 <= i < 8 for i in range(10)}
    r = stats.paired_comparison({"t": orig, "u": orig}, {"t": pruned, "u": orig})
    assert r["delta"] == {"t": 0.0, "u": 0.0} and r["flips_tasks"] == {"t": 0.4, "u": 0.0} and r["flips"] == 0.2
    assert r["retention"] == pytest.approx(1.0) and r["delta_ci95"]["u"] == [0.0, 0.0]
    assert r["delta_ci95"]["t"][0] < 0 < r["delta_ci95"]["t"][1]
    orig, worse = {str(i): i < 24 for i in range(40)}, {str(i): i < 12 for i in range(40)}
    r = stats.paired_comparison({"t": orig}, {"t": worse})
    assert r["delta"]["t"] == pytest.approx(-0.3) and r["retention"] == pytest.approx(0.5)
    assert stats.excludes_zero(r["delta_ci95"]["t"]) and r["retention_ci95"][1] < 1
    assert r == stats.paired_comparison({"t": orig}, {"t": worse})  # fixed seed: the same numbers every time


def test_different_questions_are_refused():
    with pytest.raises(StreamlineError, match="different questions"):
        stats.paired_comparison({"t": {"0": True, "1": True}}, {"t": {"0": True}})


def test_accuracy_intervals_and_block_ratio():
    r = stats.accuracy_intervals({"t": {str(i): i < 5 for i in range(20)}, "u": {str(i): True for i in range(10)}})
    assert r["accuracy_ci95"]["t"] == pytest.approx(stats.wilson(5, 20))
    lo, hi = r["average_ci95"]
    assert lo < (0.25 + 1.0) / 2 < hi
    # Every block at 2 nats per token: the ratio is exactly that, whatever blocks are drawn.
    assert stats.block_ratio_interval([20.0, 40.0, 10.0], [10, 20, 5]) == pytest.approx([2.0, 2.0])
    ci = stats.block_ratio_interval([10.0, 40.0, 5.0, 30.0], [10, 10, 10, 10], transform=np.exp)
    assert math.exp(0.5) < ci[0] < math.exp(85 / 40) < ci[1] < math.exp(4.0)
