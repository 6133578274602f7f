"""cluster_inference: level strata for tied confidence, cross-fitting, the few-clusters limit, and
the test's level with few, unbalanced clusters and tied levels (issue 22; full table:
benchmarks/validity.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from routecal import parallel
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
    """K = 5: the sign-flip nulls cannot reach 0.05 (ValueError, or a warning on request); the
    monotone default ("auto": the within-cluster t reference) can (tests/stats/test_within_clusters.py)."""
    assert ci.min_p_value(5) == 2.0**-4 and ci.min_p_value(6) == 2.0**-5
    d = simulation.design(0, "clustered", 1500, cluster_size=300, effect=0.3)  # K = 5
    args = (d.confidence[0], d.correct[0], d.routing[0])
    kw = dict(key=0, clusters=d.clusters[0], reference="fixed")
    with pytest.raises(ValueError, match="clusters: 5 clusters"):
        dg.conditional_calibration_test(*args, **kw, n_permutations=99)
    res = dg.conditional_calibration_test(*args, **kw, n_permutations=999, few_clusters="warn")
    assert "cannot reject" in res.warning and res.p_value > 0.05  # even with a huge effect
    ok = dg.conditional_calibration_test(*args, **kw, n_permutations=99,
                                         alpha=0.1)  # 2^-4 <= 0.1: feasible
    assert ok.warning == ""
    auto = dg.conditional_calibration_test(*args, key=0, clusters=d.clusters[0], n_permutations=99)
    assert auto.reference == "within" and auto.warning == ""
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


@pytest.mark.parametrize("n_levels", [2, 20])
def test_level_with_tied_levels_of_very_different_counts(n_levels):
    """c takes 2 or 20 values with counts growing geometrically (x 30 from the rarest to the most
    common level), P(correct | level) arbitrary, routing tracking c plus noise: still a null."""
    rng = np.random.default_rng(n_levels)
    n, n_sets = 1000, N_SETS
    share = np.geomspace(1, 30, n_levels)
    counts = np.maximum(np.round(share / share.sum() * n).astype(int), 1)
    counts[-1] += n - counts.sum()
    levels = np.linspace(0.3, 0.95, n_levels)
    acc = rng.uniform(0.2, 0.95, n_levels)
    c = np.broadcast_to(np.repeat(levels, counts), (n_sets, n))
    y = (rng.uniform(size=(n_sets, n)) < np.repeat(acc, counts)).astype(float)
    r = c**2 + 0.1 * rng.normal(size=(n_sets, n))
    for alternative in ("monotone", "omnibus"):
        res = dg.conditional_test_batch(c, y, r, key=5, n_permutations=99, alternative=alternative)
        assert np.sum(res.p_value <= 0.05) <= HI, (n_levels, alternative)


# ------------------------------------------------------------------------------------------------
# p_value="randomized": the randomised p of a discrete sign-flip null
# ------------------------------------------------------------------------------------------------


def test_randomized_p_matches_numpy_formula():
    """(#{|T_b| > |T|} + U (1 + #{|T_b| = |T|})) / (B + 1) on values of a coarse grid (exact ties,
    both signs), against numpy; never above the conservative (1 + #{>=}) / (B + 1)."""
    rng = np.random.default_rng(3)
    z = rng.integers(-3, 4, 50).astype(float) / 4
    null = rng.integers(-3, 4, (50, 39)).astype(float) / 4
    u = rng.uniform(size=50)
    above = np.sum(np.abs(null) > np.abs(z)[:, None], axis=1)
    ties = np.sum(np.abs(null) == np.abs(z)[:, None], axis=1)
    want = (above + u * (1 + ties)) / 40
    assert ties.min() > 0 and above.max() > 0  # the grid makes both counts matter
    with jax.enable_x64(True):
        got = np.asarray(ci.randomized_p(jnp.asarray(z), jnp.asarray(null), jnp.asarray(u)))
        cons = np.asarray(ci.two_sided_p(jnp.asarray(z), jnp.asarray(null)))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.all(got <= cons)


def test_randomized_p_is_exactly_uniform_on_an_all_ties_null():
    """r = c on tied levels: Z = 0 and every flip gives 0, so p = U: uniform over keys (KS), and
    the result keeps the no-information warning; U is a function of the key alone."""
    d = simulation.design(0, "tied", 300)
    c, y, r = (np.broadcast_to(a[0], (400, 300)) for a in (d.confidence, d.correct, d.routing))
    res = dg.conditional_test_batch(c, y, r, key=7, n_permutations=19, p_value="randomized")
    assert not np.any(res.statistic) and not np.any(res.null)
    assert stats.kstest(res.p_value, "uniform").pvalue > 0.01
    # U depends on the key only: the single test (8 devices or 1) equals the batch's dataset 0
    kw = dict(key=jax.random.fold_in(jax.random.key(7), 0), n_permutations=19, p_value="randomized")
    one = dg.conditional_calibration_test(c[0], y[0], r[0], **kw)
    assert one.warning == dg.NO_INFORMATION and 0 < one.p_value < 1  # the default: p = 1
    assert one.p_value == res.p_value[0]
    alone = dg.conditional_calibration_test(c[0], y[0], r[0], mesh=parallel.make_mesh(1), **kw)
    assert alone.p_value == one.p_value


def test_randomized_level_on_a_tied_null_and_with_six_clusters():
    """Tied levels with r = 1[c >= 0.6]: the randomised test's level is inside the binomial 99%
    interval around 0.05 (the default never rejects there). Six equal clusters: the randomised p
    never exceeds the default one and keeps the level (see benchmarks/RESULTS.md, issue 22)."""
    lo, _ = stats.binom.interval(0.99, N_SETS, 0.05)
    d = simulation.design(2, "tied_step", 500, n_datasets=N_SETS)
    res = dg.conditional_test_batch(d.confidence, d.correct, d.routing, key=3, n_permutations=99,
                                    p_value="randomized")
    assert lo <= np.sum(res.p_value <= 0.05) <= HI
    d = simulation.design(4, "clustered", 600, n_datasets=N_SETS, cluster_size=100)  # K = 6
    kw = dict(key=5, n_permutations=99, clusters=d.clusters, few_clusters="warn",
              reference="fixed")  # "auto" at K = 6: the t reference, no randomised p
    rand = dg.conditional_test_batch(d.confidence, d.correct, d.routing, p_value="randomized", **kw)
    cons = dg.conditional_test_batch(d.confidence, d.correct, d.routing, **kw)
    np.testing.assert_array_equal(rand.null, cons.null)
    assert np.all(rand.p_value <= cons.p_value)
    assert np.sum(rand.p_value <= 0.05) <= HI


def test_bad_p_value_option_raises_naming_it():
    d = simulation.design(0, "sign", 500)
    args = (d.confidence[0], d.correct[0], d.routing[0])
    with pytest.raises(ValueError, match="p_value"):
        dg.conditional_calibration_test(*args, key=0, p_value="exact")
    with pytest.raises(ValueError, match="p_value"):
        dg.conditional_test_batch(d.confidence, d.correct, d.routing, key=0, p_value="mid")
    with pytest.raises(ValueError, match="p_value"):
        dg.minimum_detectable_gap(args[0], args[1], key=0, p_value="randomised")
