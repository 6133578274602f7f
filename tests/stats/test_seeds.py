"""Tests for routecal.stats.seeds: seed bands against numpy, the rule's cases and its level."""

import numpy as np
import pytest
import scipy.special
import scipy.stats

from routecal.stats import seeds


def test_seed_band_matches_numpy():
    v = [0.3, 0.1, 0.25, None, float("nan")]
    b = seeds.seed_band(v)
    x = np.array([0.3, 0.1, 0.25])
    assert b == pytest.approx(
        {"mean": x.mean(), "std": x.std(ddof=1), "min": 0.1, "max": 0.3, "n": 3}
    )
    assert seeds.seed_band([2.0])["std"] == 0.0
    assert seeds.seed_band([])["n"] == 0


def test_rule_cases():
    lo, hi = seeds.seed_band([1.0, 1.1, 1.2]), seeds.seed_band([2.0, 2.1, 2.2])
    assert seeds.compare_bands(lo, hi, higher_is_better=False) == "better"
    assert seeds.compare_bands(lo, hi, higher_is_better=True) == "worse"
    assert seeds.compare_bands(hi, lo, higher_is_better=True) == "better"
    touching = seeds.seed_band([1.2, 1.5])  # shares the end point 1.2: overlap
    assert seeds.compare_bands(touching, lo, higher_is_better=True) == "within seed band"
    assert seeds.compare_bands(seeds.seed_band([5.0]), lo, higher_is_better=True) == (
        "one seed: no band"
    )
    with pytest.raises(ValueError, match="baseline"):
        seeds.compare_bands(lo, seeds.seed_band([]), higher_is_better=True)


def test_rule_false_positive_rate_matches_closed_form():
    # Exchangeable runs (both methods identical): "better" or "worse" needs all S runs of one to
    # beat all S of the other, probability 2 / binom(2S, S) (0.1 for S = 3).
    rng = np.random.default_rng(0)
    n_trials, s = 4000, 3
    calls = 0
    for _ in range(n_trials):
        a, b = rng.normal(size=s), rng.normal(size=s)
        verdict = seeds.compare_bands(seeds.seed_band(a), seeds.seed_band(b), higher_is_better=True)
        calls += verdict in ("better", "worse")
    expected = 2 / scipy.special.comb(2 * s, s)
    ci = scipy.stats.binomtest(calls, n_trials).proportion_ci(0.999)
    assert ci.low <= expected <= ci.high


def test_rule_power_under_a_planted_gap():
    # a 4-sd gap between methods: bands separate almost always (P = 1 - P(overlap) > 0.95)
    rng = np.random.default_rng(1)
    wins = sum(
        seeds.compare_bands(
            seeds.seed_band(rng.normal(4.0, 1.0, 3)), seeds.seed_band(rng.normal(0.0, 1.0, 3)),
            higher_is_better=True,
        ) == "better"
        for _ in range(500)
    )
    assert scipy.stats.binomtest(wins, 500).proportion_ci(0.999).low > 0.85
