"""cluster_inference: level strata for tied confidence, cross-fitting, the few-clusters limit, and
the test's level with few, unbalanced clusters and tied levels (issue 22; full table:
benchmarks/validity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from routecal.stats import cluster_inference as ci
from routecal.stats import diagnostics as dg
from routecal.stats import simulation

# under a valid level-0.05 test, rejections out of N_SETS stay below Binomial(N_SETS, .05)'s 99% bound
N_SETS = 200
_, HI = stats.binom.interval(0.99, N_SETS, 0.05)


def test_tied_levels_get_their_own_strata():
    d = simulation.design(0, "tied", 1000)
    c = d.confidence[0]
    with jax.enable_x64(True):
        st = np.asarray(ci.strata(jnp.asarray(c), 20, 50))
    # 5 levels <= max(20, 32): one stratum per level, never two levels in one
    assert len(np.unique(st)) == 5
    for s in np.unique(st):
        assert len(np.unique(c[st == s])) == 1
    # continuous confidence with a pile of 300 at exactly 1: the pile is one stratum, the rest
    # equal-mass bins (hand count: 700 continuous values in 700 / 50 = 14 full bins)
    c2 = np.r_[np.linspace(0.2, 0.9, 700), np.ones(300)]
    with jax.enable_x64(True):
        st2 = np.asarray(ci.strata(jnp.asarray(c2), 20, 50))
    assert len(np.unique(st2[700:])) == 1 and st2[700] not in st2[:700]
    assert len(np.unique(st2[:700])) == 14


def test_influence_weights_reproduce_the_statistic():
    """T = sum_i s~_i y~_i equals sum_i w_i y_i with w = (I - L)^T s~ (linear algebra identity)."""
    rng = np.random.default_rng(0)
    n = 400
    c = rng.uniform(0.3, 1, n)
    y = (rng.uniform(size=n) < c).astype(float)
    s = rng.normal(size=(n, 2))
    units = rng.integers(0, 13, n)
    with jax.enable_x64(True):
        st = ci.strata(jnp.asarray(c), 8, 50)
        fit = ci.crossfit(st, jnp.asarray(units), jnp.asarray(c), n_seg=8 + n, n_units=13)
        s_res = ci.residuals(fit, jnp.asarray(s), 8 + n)
        y_res = ci.residuals(fit, jnp.asarray(y)[:, None], 8 + n)[:, 0]
        w = ci.influence(fit, s_res, 8 + n)
        np.testing.assert_allclose(np.asarray(w).T @ y, np.asarray(s_res).T @ np.asarray(y_res),
                                   rtol=1e-10)


def test_few_clusters_raise_or_warn():
    assert ci.min_p_value(5) == 2.0**-4 and ci.min_p_value(6) == 2.0**-5
    d = simulation.design(0, "clustered", 1500, cluster_size=300, effect=0.3)  # K = 5
    args = (d.confidence[0], d.correct[0], d.routing[0])
    with pytest.raises(ValueError, match="clusters: 5 clusters"):
        dg.conditional_calibration_test(*args, key=0, clusters=d.clusters[0], n_permutations=99)
    res = dg.conditional_calibration_test(*args, key=0, clusters=d.clusters[0],
                                          n_permutations=999, few_clusters="warn")
    assert "cannot reject" in res.warning and res.p_value > 0.05  # even with a huge effect
    ok = dg.conditional_calibration_test(*args, key=0, clusters=d.clusters[0], n_permutations=99,
                                         alpha=0.1)  # 2^-4 <= 0.1: feasible
    assert ok.warning == ""
    with pytest.raises(ValueError, match="few_clusters"):
        dg.conditional_calibration_test(*args, key=0, few_clusters="ignore")


@pytest.mark.parametrize(
    "design, kwargs",
    [("clustered", {"cluster_size": 150}),  # 10 equal clusters of 150
     ("tied", {}), ("tied_step", {})],
)
def test_level_with_few_clusters_and_tied_levels(design, kwargs):
    n = 1500 if design == "clustered" else 1000
    d = simulation.design(1, design, n, n_datasets=N_SETS, **kwargs)
    for alternative in ("monotone", "omnibus"):
        res = dg.conditional_test_batch(
            d.confidence, d.correct, d.routing, key=2, n_permutations=99, alternative=alternative,
            clusters=d.clusters if design == "clustered" else None,
        )
        assert np.sum(res.p_value <= 0.05) <= HI, (design, alternative)
        if design == "clustered" and alternative == "monotone":  # the null's unit variance
            assert 0.7 < np.var(res.statistic) < 1.35


@pytest.mark.slow
def test_level_with_pareto_clusters():
    d = simulation.design(3, "pareto", 3000, n_datasets=N_SETS, cluster_size=50)
    res = dg.conditional_test_batch(d.confidence, d.correct, d.routing, key=4, n_permutations=99,
                                    clusters=d.clusters)
    assert np.sum(res.p_value <= 0.05) <= HI
