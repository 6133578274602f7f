"""The simulators, and the permutation test's validity (size) and power on simulated data."""

import jax
import numpy as np
import pytest
from scipy import stats

from routecal.stats import diagnostics as dg
from routecal.stats import simulation


def test_null_data_shapes_and_independence():
    d = simulation.null_data(jax.random.key(0), 4000, n_datasets=2, rho=0.8)
    assert d.confidence.shape == d.correct.shape == d.routing.shape == (2, 4000)
    c, y, r = d.confidence.ravel(), d.correct.ravel(), d.routing.ravel()
    assert set(np.unique(y)) <= {0.0, 1.0} and c.min() >= 0.3 and c.max() <= 1.0
    # calibrated: accuracy tracks confidence; routing tracks confidence (rho) ...
    assert abs(y.mean() - c.mean()) < 0.02
    assert np.corrcoef(r, c)[0, 1] > 0.5
    # ... but not correctness once confidence is accounted for (residual correlation ~ 0)
    assert abs(np.corrcoef(r - 0.8 * (c - c.mean()) / c.std(), y - c)[0, 1]) < 0.03


def test_planted_effect_gap_is_four_thirds_effect():
    d = simulation.planted_effect(jax.random.key(1), 20_000, 0.15, conf_low=0.3, conf_high=0.8)
    out = dg.subgroup_gaps(d.confidence[0], d.correct[0], d.routing[0], n_bins=5)
    # no clipping for c in [0.3, 0.8] and effect 0.15: every occupied bin's gap ~ 4/3 * 0.15 = 0.2
    np.testing.assert_array_equal(out.count[[0, 4]], 0)
    np.testing.assert_allclose(out.gap[1:4], 0.2, atol=0.045)
    assert out.weighted_gap == pytest.approx(0.2, abs=0.02)


def test_rejection_rate_under_null_inside_binomial_interval():
    # 400 null datasets (N = 300) tested as one vmapped computation, B = 199: under exact
    # exchangeability P(p <= 0.05) = 10 / 200 = 0.05 exactly.
    n_sets = 400
    d = simulation.null_data(jax.random.key(2), 300, n_datasets=n_sets, conf_low=0.0)
    res = dg.permutation_test_batch(*d, key=jax.random.key(3), n_permutations=199, n_bins=10)
    rejections = int(np.sum(res.p_value <= 0.05))
    lo, hi = stats.binom.interval(0.99, n_sets, 0.05)
    assert lo <= rejections <= hi, (rejections, lo, hi)
    # p-values are (close to) uniform on {1/200, ..., 1}
    assert stats.kstest(res.p_value, "uniform").pvalue > 1e-3


def test_power_against_planted_effect():
    # planted effect 0.25 (expected weighted gap ~ 4/3 * 0.25 = 0.33, less where the clip at
    # confidence 1 binds), N = 300, 10 bins x tertiles, alpha = 0.05; same shapes as the null test
    # above, so one compiled program serves both.
    d = simulation.planted_effect(jax.random.key(4), 300, 0.25, n_datasets=400, conf_low=0.0)
    res = dg.permutation_test_batch(*d, key=jax.random.key(5), n_permutations=199, n_bins=10)
    power = np.mean(res.p_value <= 0.05)
    assert power >= 0.9, power


def test_batched_generation_reproducible_and_bad_input():
    a = simulation.simulate(jax.random.key(9), 50, n_datasets=3, effect=0.1)
    b = simulation.simulate(jax.random.key(9), 50, n_datasets=3, effect=0.1)
    np.testing.assert_array_equal(a.correct, b.correct)
    assert not np.array_equal(a.confidence[0], a.confidence[1])
    with pytest.raises(ValueError, match="n_datasets"):
        simulation.simulate(jax.random.key(0), 10, n_datasets=0)
    with pytest.raises(ValueError, match="conf_low"):
        simulation.simulate(jax.random.key(0), 10, conf_low=0.9, conf_high=0.5)
    with pytest.raises(ValueError, match="effect"):
        simulation.planted_effect(jax.random.key(0), 10, 0.0)
    with pytest.raises(ValueError, match="effect"):
        simulation.simulate(jax.random.key(0), 10, effect=float("nan"))


@pytest.mark.slow
def test_rejection_rate_under_null_large():
    # 2000 null datasets of N = 1000 (15 bins), B = 999; also with routing tracking confidence.
    for rho in (0.0, 0.8):
        d = simulation.null_data(jax.random.key(10), 1000, n_datasets=2000, rho=rho)
        res = dg.permutation_test_batch(*d, key=jax.random.key(11), n_permutations=999)
        for alpha in (0.01, 0.05, 0.1):
            k = int(np.sum(res.p_value <= alpha))
            lo, hi = stats.binom.interval(0.99, 2000, alpha)
            assert lo <= k <= hi, (rho, alpha, k, lo, hi)


def test_designs_have_the_documented_structure():
    d = simulation.design(0, "binary", 1000, n_datasets=2)
    assert np.all(np.diff(d.correct, axis=1) <= 0)  # stored correct-first
    assert set(np.unique(d.routing)) == {0.0, 1.0}
    assert np.all(simulation.design(0, "constant", 500).routing == 0)
    cl = simulation.design(1, "clustered", 3000)
    assert np.array_equal(cl.clusters[0], np.arange(3000) // 30)
    # routing is mostly a per-sequence level: between-sequence variance dominates
    means = cl.routing[0].reshape(100, 30).mean(axis=1)
    assert means.var() > 20 * cl.routing[0].reshape(100, 30).var(axis=1).mean()
    conf = simulation.design(2, "confounded", 20_000, conf_low=0.5)
    c, y, r = conf.confidence[0], conf.correct[0], conf.routing[0]
    assert np.corrcoef(r, c)[0, 1] > 0.99
    slope = np.polyfit(c[(c > 0.5) & (c < 0.9)], y[(c > 0.5) & (c < 0.9)], 1)[0]
    assert slope == pytest.approx(2.0, abs=0.15)  # P(correct | c) = 0.75 + 2 (c - 0.8)
    with pytest.raises(ValueError, match="name"):
        simulation.design(0, "iid", 10)
    with pytest.raises(ValueError, match="effect"):
        simulation.design(0, "constant", 10, effect=0.1)


def test_clustered_vshape_plants_a_v_inside_clusters():
    """"clustered_vshape": the "clustered" draw (same key: same confidence, routing, clusters)
    with + effect (1 - 2 |2 Phi(z) - 1|): tokens in the middle half of their cluster's routing
    ranks are right more often than the outer half (by ~effect, less where the clip binds)."""
    kw = dict(n_datasets=1, cluster_size=600)
    vs = simulation.design(3, "clustered_vshape", 6000, effect=0.3, **kw)
    null = simulation.design(3, "clustered", 6000, **kw)
    for f in ("confidence", "routing", "clusters"):
        np.testing.assert_array_equal(getattr(vs, f), getattr(null, f))
    u = np.concatenate([2 * (stats.rankdata(r) - 1) / 599 - 1
                        for r in vs.routing[0].reshape(10, 600)])  # rows are cluster-major
    mid = np.abs(u) < 0.5
    for d, lo, hi in ((vs, 0.15, 0.35), (null, -0.05, 0.05)):
        gap = d.correct[0][mid].mean() - d.correct[0][~mid].mean()
        assert lo < gap < hi, gap
