"""within_clusters: the few-clusters reference (fits inside clusters, t with K - 1 df; the omnibus
test: Bonferroni over its 4 columns; issue 22; full rows: benchmarks/validity.py --issue22,
benchmarks/RESULTS.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from routecal.stats import diagnostics as dg
from routecal.stats import restudentised as rs
from routecal.stats import simulation
from routecal.stats import within_clusters as wc

SIZES = (37, 45, 120, 161)  # stratum_size 40: 1, 1, 3 and 4 strata


def _data(seed=0, sizes=SIZES):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    units = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
    perm = rng.permutation(n)  # clusters interleaved in the row order
    c = rng.uniform(0.3, 1.0, n)
    y = (rng.uniform(size=n) < c).astype(float)
    r = np.round(rng.normal(size=n), 1)  # tied routing values
    return c[perm], y[perm], r[perm], units[perm]


def _numpy_scores(c, y, r, units, stratum_size, omnibus=False):
    """Independent reference: per cluster, sort by c, split into max(n_k // ss, 1) parts as
    numpy.array_split, regress y and each column on (1, c) by lstsq in each part; U_k = sum of the
    residuals' products (continuous c: no level strata). Columns: the within-cluster mid-rank
    s = (rank - 1) / (n_k - 1), or with `omnibus` u = 2 s - 1, q = u^2 - 1/3, u v, q v with v the
    confidence's within-cluster rank on the same scale as u. Returns [K] or [K, 4]."""
    out = []
    for k in np.unique(units):
        m = units == k
        ck, yk, rk = c[m], y[m], r[m]
        s = (stats.rankdata(rk) - 1) / (len(rk) - 1)
        cols = s[:, None]
        if omnibus:
            u, v = 2 * s - 1, 2 * (stats.rankdata(ck) - 1) / (len(ck) - 1) - 1
            q = u * u - 1 / 3
            cols = np.c_[u, q, u * v, q * v]
        score = np.zeros(cols.shape[1])
        for part in np.array_split(np.argsort(ck), max(len(ck) // stratum_size, 1)):
            x = np.c_[np.ones(len(part)), ck[part]]
            fit = np.linalg.lstsq(x, np.c_[yk[part], cols[part]], rcond=None)[0]
            res = np.c_[yk[part], cols[part]] - x @ fit
            score += res[:, 0] @ res[:, 1:]
        out.append(score)
    return np.array(out) if omnibus else np.array(out)[:, 0]


@pytest.mark.parametrize("k", [2, 3, 5, 6, 12, 30])
def test_t_p_value_and_normal_score_match_scipy(k):
    t = np.array([0.0, 0.4, -1.3, 2.2, -4.0, 15.0])
    with jax.enable_x64(True):
        p = np.asarray(wc.t_p_value(jnp.asarray(t), float(k - 1)))
        z = np.asarray(wc.normal_score(jnp.asarray(t), float(k - 1)))
    np.testing.assert_allclose(p, 2 * stats.t.sf(np.abs(t), k - 1), rtol=1e-10)
    np.testing.assert_allclose(2 * stats.norm.sf(np.abs(z)), p, rtol=1e-8)
    assert np.all(np.sign(z) == np.sign(t))


def test_scores_match_numpy_and_p_is_the_one_sample_t_test():
    c, y, r, units = _data()
    with jax.enable_x64(True):
        u, _ = wc.cluster_scores(*(jnp.asarray(a) for a in (c, y, r, units)), n_units=4,
                                 stratum_size=40)
    want = _numpy_scores(c, y, r, units, 40)
    np.testing.assert_allclose(np.asarray(u)[:, 0], want, rtol=1e-9, atol=1e-12)
    res = dg.conditional_calibration_test(c, y, r, key=0, clusters=units, stratum_size=40,
                                          n_permutations=99)
    assert res.reference == "within" and res.n_units == 4 and res.warning == ""
    p = stats.ttest_1samp(want, 0.0).pvalue
    assert res.p_value == pytest.approx(p, rel=1e-8)
    assert res.statistic == pytest.approx(np.sign(want.mean()) * stats.norm.isf(p / 2), rel=1e-8)
    # the null: t of random sign flips of the U_k as normal scores (its own sign-flip orbit)
    orbit = [np.sign(e @ want) * stats.norm.isf(stats.ttest_1samp(e * want, 0.0).pvalue / 2)
             for e in 1 - 2 * ((np.arange(16)[:, None] >> np.arange(4)) & 1)]
    assert np.all(np.min(np.abs(res.null[:, None] - np.array(orbit)[None]), axis=1) < 1e-8)


def test_a_clusters_score_depends_on_its_own_data_only():
    """Independence by construction: redraw cluster 2's labels, routing and confidence and
    shuffle the rows; the other clusters' U_kj (the omnibus columns) do not change."""
    c, y, r, units = _data(1)
    rng = np.random.default_rng(5)
    c2, y2, r2 = c.copy(), y.copy(), r.copy()
    m = units == 2
    c2[m], y2[m], r2[m] = rng.uniform(0, 1, m.sum()), rng.integers(0, 2, m.sum()), rng.normal(
        size=m.sum())
    perm = rng.permutation(len(c))
    with jax.enable_x64(True):
        def scores(*a):
            return np.asarray(wc.cluster_scores(*(jnp.asarray(x) for x in a), n_units=4,
                                                stratum_size=40, alternative="omnibus")[0])
        before = scores(c, y, r, units)
        after = scores(c2[perm], y2[perm], r2[perm], units[perm])
    keep = np.array([0, 1, 3])  # [K, 4]: every omnibus column
    np.testing.assert_allclose(after[keep], before[keep], rtol=1e-10, atol=1e-13)
    assert np.all(np.abs(after[2] - before[2]) > 1e-6)


def test_tied_levels_inside_clusters_get_their_own_strata():
    """Two clusters, confidence in 3 tied levels (counts 100 / 5 / 60 and 20 / 20 / 20): every
    stratum holds one level of one cluster; routing a function of confidence carries no
    information (Z = 0, p = 1, the warning)."""
    c = np.r_[np.repeat([0.4, 0.6, 0.8], [100, 5, 60]), np.repeat([0.4, 0.6, 0.8], 20)]
    units = np.repeat([0, 1], [165, 60]).astype(np.int32)
    y = (np.random.default_rng(0).uniform(size=len(c)) < c).astype(float)
    with jax.enable_x64(True):
        strat, s, c_rank = wc.strata_and_ranks(jnp.asarray(c), jnp.asarray(c),
                                               jnp.asarray(units), n_units=2, stratum_size=50)
    np.testing.assert_array_equal(np.asarray(c_rank), np.asarray(s))  # routing = confidence
    strat = np.asarray(strat)
    assert len(np.unique(strat)) == 6
    for st in np.unique(strat):
        assert len(np.unique(c[strat == st])) == 1 and len(np.unique(units[strat == st])) == 1
    for k in (0, 1):  # mid-ranks within each cluster, scaled by n_k - 1
        m = units == k
        np.testing.assert_allclose(np.asarray(s)[m], (stats.rankdata(c[m]) - 1) / (m.sum() - 1))
    res = dg.conditional_calibration_test(c, y, c, key=0, clusters=units, n_permutations=99)
    assert res.reference == "within" and res.statistic == 0 and res.p_value == 1
    assert dg.NO_INFORMATION in res.warning


def test_level_at_six_clusters():
    """6 equal clusters (the clustered design: per-cluster routing levels and accuracy offsets):
    rejections of 200 true nulls inside Binomial(200, 0.05)'s 99% interval (the fixed scores gave
    1.9% on 1,000 datasets of 6 x 500), p-values uniform (KS); the omnibus test (Bonferroni, so
    conservative) not above the interval."""
    d = simulation.design(3, "clustered", 600, n_datasets=200, cluster_size=100)
    res = dg.conditional_test_batch(d.confidence, d.correct, d.routing, key=4,
                                    clusters=d.clusters, n_permutations=19)
    assert res.reference == "within"
    lo, hi = stats.binom.interval(0.99, 200, 0.05)
    assert lo <= np.sum(res.p_value <= 0.05) <= hi
    assert stats.kstest(res.p_value, "uniform").pvalue > 0.01
    omni = dg.conditional_test_batch(d.confidence, d.correct, d.routing, key=4,
                                     clusters=d.clusters, n_permutations=19, alternative="omnibus")
    assert omni.reference == "within"  # Bonferroni: at most alpha (re-studentised: 7% at 10 Pareto)
    assert np.sum(omni.p_value <= 0.05) <= hi


def test_power_to_a_within_cluster_effect_at_five_clusters():
    """K = 5 (no sign-flip null reaches 0.05): an effect inside clusters is found, by the omnibus
    test too (Bonferroni over 4 columns)."""
    d = simulation.design(6, "clustered_within", 1500, n_datasets=20, cluster_size=300,
                          effect=0.15)
    res = dg.conditional_test_batch(d.confidence, d.correct, d.routing, key=1,
                                    clusters=d.clusters, n_permutations=19)
    assert res.reference == "within" and res.warning == ""
    assert np.mean(res.p_value <= 0.05) >= 0.8
    omni = dg.conditional_test_batch(d.confidence, d.correct, d.routing, key=1,
                                     clusters=d.clusters, n_permutations=19, alternative="omnibus")
    assert omni.reference == "within" and np.mean(omni.p_value <= 0.05) >= 0.8


def test_batch_equals_single():
    """Dataset i of the batch is the single test with key fold_in(key, i) (the shapes of
    `test_scores_match_numpy_and_p_is_the_one_sample_t_test`: its compiled single test)."""
    data = [_data(seed) for seed in (2, 3, 4)]
    c, y, r, units = (np.stack(a) for a in zip(*data, strict=True))
    kw = dict(n_permutations=99, stratum_size=40)
    batch = dg.conditional_test_batch(c, y, r, key=jax.random.key(9), clusters=units, **kw)
    for i in range(3):
        one = dg.conditional_calibration_test(
            c[i], y[i], r[i], clusters=units[i], key=jax.random.fold_in(jax.random.key(9), i), **kw)
        assert one.reference == batch.reference == "within"
        assert one.p_value == pytest.approx(batch.p_value[i], rel=1e-10)
        assert one.statistic == pytest.approx(batch.statistic[i], rel=1e-10)
        assert one.slope == pytest.approx(batch.slope[i], rel=1e-10)
        np.testing.assert_allclose(one.null, batch.null[i], rtol=1e-9)


def test_auto_picks_the_reference_by_clusters_and_alternative():
    """"auto": "within" for both alternatives with 2 to SMALL_K clusters (the omnibus test:
    Bonferroni over its columns), "fixed" beyond; without clusters never "within"."""
    for k, alt, want in ((2, "monotone", "within"), (rs.SMALL_K, "monotone", "within"),
                         (rs.SMALL_K + 1, "monotone", "fixed"), (2, "omnibus", "within"),
                         (rs.SMALL_K, "omnibus", "within"), (rs.SMALL_K + 1, "omnibus", "fixed")):
        assert rs.resolve("auto", k, alt, 1000) == want, (k, alt)
    assert rs.resolve("auto", 10, "monotone", 10) == "fixed"  # no clusters: one example per unit
    assert rs.resolve("auto", 10, "omnibus", 10) == "restudentised"
    d = simulation.design(0, "clustered", 1000, cluster_size=250)  # K = 4
    args = (d.confidence[0], d.correct[0], d.routing[0])
    kw = dict(key=0, clusters=d.clusters[0], n_permutations=99)
    assert dg.conditional_calibration_test(*args, **kw).reference == "within"
    omni = dg.conditional_calibration_test(*args, **kw, alternative="omnibus")
    assert omni.reference == "within" and omni.warning == ""  # K = 4 reaches 0.05
    with pytest.raises(ValueError, match="clusters: 4 clusters"):  # sign flips cannot reach 0.05
        dg.conditional_calibration_test(*args, **kw, reference="fixed")
    with pytest.raises(ValueError, match="clusters: 4 clusters"):
        dg.conditional_calibration_test(*args, **kw, alternative="omnibus",
                                        reference="restudentised")
    with pytest.raises(ValueError, match="reference"):
        dg.conditional_calibration_test(*args, key=0, reference="within")  # no clusters
    with pytest.raises(ValueError, match="reference"):
        dg.conditional_calibration_test(*args, key=0, reference="within", alternative="omnibus")
    with pytest.raises(ValueError, match="clusters"):  # K = 1
        dg.conditional_calibration_test(*args, key=0, clusters=np.zeros(1000, int))


def test_omnibus_columns_match_numpy_and_p_is_bonferroni():
    """The omnibus test's 4 within-cluster columns against the numpy reference; p = min(1, 4
    min_j p_j) with p_j scipy's one-sample t-test of column j; statistic max_j |Z_j| (Z_j the
    normal score of p_j); null = max_j of the orbit's |normal scores| (all 16 sign patterns)."""
    c, y, r, units = _data(6)
    y[:200] = (np.abs(r[:200]) < 0.6).astype(float)  # a V-shape in some rows: p_j differ
    with jax.enable_x64(True):
        u, _ = wc.cluster_scores(*(jnp.asarray(a) for a in (c, y, r, units)), n_units=4,
                                 stratum_size=40, alternative="omnibus")
    want = _numpy_scores(c, y, r, units, 40, omnibus=True)
    np.testing.assert_allclose(np.asarray(u), want, rtol=1e-9, atol=1e-12)
    res = dg.conditional_calibration_test(c, y, r, key=0, clusters=units, stratum_size=40,
                                          n_permutations=99, alternative="omnibus")
    assert res.reference == "within" and res.alternative == "omnibus"
    p = stats.ttest_1samp(want, 0.0, axis=0).pvalue  # [4]
    assert res.p_value == pytest.approx(min(1.0, 4 * p.min()), rel=1e-8)
    assert res.statistic == pytest.approx(stats.norm.isf(p.min() / 2), rel=1e-8)
    orbit = [stats.norm.isf(stats.ttest_1samp(e[:, None] * want, 0.0, axis=0).pvalue.min() / 2)
             for e in 1 - 2 * ((np.arange(16)[:, None] >> np.arange(4)) & 1)]
    assert np.all(np.min(np.abs(res.null[:, None] - np.array(orbit)[None]), axis=1) < 1e-8)
    # the monotone test's column is the omnibus test's first (u = 2 s - 1: same t)
    mono = dg.conditional_calibration_test(c, y, r, key=0, clusters=units, stratum_size=40,
                                           n_permutations=99)
    assert mono.p_value == pytest.approx(p[0], rel=1e-8)
    assert mono.slope == pytest.approx(res.slope, rel=1e-10)
