"""The diagnostic grid against the stats engine's own grid and statsmodels' adjustments."""

import jax
import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from routecal.stats import diagnostics
from routecal.study import grid, registry


def _cells(rng, n=300):
    cells = []
    for seed in range(3):
        conf = rng.uniform(0.3, 1.0, n)
        correct = (rng.uniform(size=n) < conf).astype(float)
        for f, effect in (("planted", 0.3), ("noise", 0.0)):
            routing = rng.normal(size=n)
            if effect:
                correct = (rng.uniform(size=n) < np.clip(conf + effect * np.sign(routing), 0, 1))
                correct = correct.astype(float)
            cells.append(grid.Cell("m", seed, f, conf, correct, routing))
    return cells


def test_grid_equals_permutation_grid_and_keeps_nulls():
    cells = _cells(np.random.default_rng(0))
    s = registry.TestSettings(n_permutations=200, n_bins=10, n_groups=3, alpha=0.05, seed=3,
                          n_null_figures=2)
    out = grid.diagnostic_grid(cells, s, tests=grid.specs()[:1])
    ref = diagnostics.permutation_grid(
        {i: (c.confidence, c.correct, c.routing) for i, c in enumerate(cells)},
        key=jax.random.key(3), n_permutations=200, n_bins=10, n_groups=3,
    )
    ps = [t["p_value"] for t in out["tests"]]
    for t, r in zip(out["tests"], ref, strict=True):
        assert (t["statistic"], t["p_value"]) == (float(r.statistic), float(r.p_value))
    np.testing.assert_allclose([t["p_holm"] for t in out["tests"]],
                               multipletests(ps, method="holm")[1])
    np.testing.assert_allclose([t["p_bh"] for t in out["tests"]],
                               multipletests(ps, method="fdr_bh")[1])
    shown = [t for t in out["tests"] if "null" in t]
    assert len(shown) == 2 and all(len(t["null"]) == 200 for t in shown)
    assert max(t["p_value"] for t in shown) <= min(t["p_value"] for t in out["tests"]
                                                   if "null" not in t)
    by = {r["feature"]: r for r in out["rejections"]}
    assert by["planted"]["n_reject_raw"] == 3 and by["planted"]["vs_null"] == "better"
    assert by["noise"]["statistic_band"]["n"] == 3


def test_adding_a_test_is_one_spec():
    cells = _cells(np.random.default_rng(1))[:2]
    s = registry.TestSettings(n_permutations=50, n_bins=10, n_groups=3, alpha=0.05, seed=0)

    def fixed(conf, correct, routing, key, settings):
        return {"statistic": float(np.mean(routing)), "p_value": 0.5}

    out = grid.diagnostic_grid(cells, s, tests=(grid.specs()[0], grid.TestSpec("fixed", fixed)))
    assert [t["test"] for t in out["tests"]] == ["within_bin"] * 2 + ["fixed"] * 2
    assert {r["test"] for r in out["rejections"]} == {"within_bin", "fixed"}
    # adjusted within its own test only: Holm of (0.5, 0.5) is (1, 1), BH is (0.5, 0.5)
    fixed_rows = [t for t in out["tests"] if t["test"] == "fixed"]
    assert [(t["p_holm"], t["p_bh"]) for t in fixed_rows] == [(1.0, 0.5), (1.0, 0.5)]


def test_a_measurement_spec_is_recorded_without_adjustment():
    cells = _cells(np.random.default_rng(2))[:2]

    def gap(conf, correct, routing, key, settings):
        return {"minimum_detectable_gap": float(np.std(conf))}

    s = registry.TestSettings(n_permutations=50, n_bins=10, n_groups=3, alpha=0.05, seed=0)
    out = grid.diagnostic_grid(cells, s, tests=(grid.TestSpec("mdg", gap),))
    assert [t["minimum_detectable_gap"] for t in out["tests"]] == [
        pytest.approx(np.std(c.confidence)) for c in cells
    ]
    assert out["rejections"] == [] and "p_holm" not in out["tests"][0]


def test_default_grid_runs_the_recommended_test_and_the_detectable_gap():
    cells = _cells(np.random.default_rng(3))[:2]  # seed 0: planted, noise (N = 300)
    s = registry.TestSettings(n_permutations=100, n_bins=10, n_groups=3, alpha=0.05, seed=4)
    out = grid.diagnostic_grid(cells, s)
    names = [t["test"] for t in out["tests"]]
    assert names == ["within_bin"] * 2 + ["conditional"] * 2 + [
        "minimum_detectable_gap_conditional"] * 2 + ["omnibus"] * 2 + [
        "minimum_detectable_gap_omnibus"] * 2
    cond = [t for t in out["tests"] if t["test"] == "conditional"]
    for i, (c, t) in enumerate(zip(cells, cond, strict=True)):
        ref = diagnostics.conditional_calibration_test(
            c.confidence, c.correct, c.routing, key=jax.random.fold_in(jax.random.key(4), i),
            n_permutations=100, stratum_size=50,
        )
        assert t["z"] == ref.statistic and t["p_value"] == ref.p_value
        assert t["statistic"] == abs(ref.statistic)
    assert cond[0]["p_value"] < 0.05  # the planted cell
    gaps = [t for t in out["tests"] if t["test"] == "minimum_detectable_gap_conditional"]
    assert all(0 < t["minimum_detectable_gap"] < 1 and "p_holm" not in t for t in gaps)
    assert len(gaps[0]["power_curve"]["gap"]) == len(gaps[0]["power_curve"]["power"])
    assert {r["test"] for r in out["rejections"]} == {"within_bin", "conditional",
                                                      "omnibus"}
