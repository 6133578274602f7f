"""restudentised: the few-clusters null of the recommended test (issue 22; full rows:
benchmarks/validity.py --issue22, benchmarks/RESULTS.md)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from routecal import parallel
from routecal.stats import cluster_inference as ci
from routecal.stats import diagnostics as dg
from routecal.stats import restudentised as rs
from routecal.stats import simulation
from routecal.stats.conditional import score_matrix
from routecal.stats.random_bits import chunk_seeds


def _small(seed=0, n=240, k=4):
    d = simulation.design(seed, "clustered", n, cluster_size=n // k)
    units = np.unique(d.clusters[0], return_inverse=True)[1].astype(np.int32)
    return d.confidence[0], d.correct[0], d.routing[0], units


def test_each_flip_is_the_statistic_recomputed_on_its_wild_sample():
    """Definition check: for every one of the 2^K sign patterns (K = 4), Z*(eps) from the linear
    parts equals the whole statistic (`score_matrix`, fits and CR2 scores redone) on the wild
    sample y* = yhat + eps_k r, yhat and r the pooled within-stratum fit and residual of y; the
    identity pattern gives the observed Z."""
    c, y, r, units = _small()
    kw = dict(n_strata=8, n_units=4, stratum_size=30)
    flips = (np.arange(16)[:, None] >> np.arange(4)[None, :]) & 1 == 1  # [16, K]
    with jax.enable_x64(True):
        c, y, r, u = (jnp.asarray(a) for a in (c, y, r, units))
        res = _pooled_residual(c, y, **kw)
        y_star = (y - res)[None] + np.where(flips, -1.0, 1.0)[:, units] * res[None]  # [16, N]
        # the omnibus basis; its first column is the monotone statistic (u = 2 s - 1)
        f = functools.partial(score_matrix, **kw, alternative="omnibus")
        z, parts, _ = jax.jit(functools.partial(f, reference="restudentised"))(c, y, r, u)
        got = np.asarray(rs.statistic(jnp.asarray(flips), parts))  # [16, J]
        np.testing.assert_allclose(got[0], np.asarray(z), rtol=1e-9, atol=1e-12)
        want = jax.jit(jax.vmap(lambda ys: f(c, ys, r, u)[0]))(jnp.asarray(y_star))
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-9, atol=1e-12)


def _pooled_residual(c, y, *, n_strata, n_units, stratum_size):
    del n_units
    n_seg = n_strata + c.shape[0]
    strat = ci.strata(c, n_strata, stratum_size)
    pooled = ci.crossfit(strat, None, c, n_seg=n_seg, n_units=None)
    return np.asarray(ci.residuals(pooled, y[:, None], n_seg)[:, 0])


def test_signs_are_the_fixed_null_signs_and_key_only():
    """Flip b's signs are `cluster_inference.flip_chunk`'s for unit k (bit k of word 0): the fixed
    null of scores e_k is -+1 exactly where the re-studentised signs say so."""
    seeds = jax.random.bits(jax.random.key(3), (2, 40), jnp.uint32)
    k = 7
    flips = np.asarray(rs.signs(seeds, k))
    with jax.enable_x64(True):
        wb = ci.blocks(jnp.eye(k, dtype=jnp.float64))  # J = K columns: unit k's own sign
        fixed = np.asarray(ci.flip_chunk(seeds, wb, ci.block_total(wb)))  # [Bc, K]
    np.testing.assert_array_equal(fixed, np.where(flips, -1.0, 1.0))


def test_null_depends_on_the_key_only():
    """Same key, chunk sizes 7 on 8 devices / default: the same null, bit for bit; the
    batched test's dataset 0 is the single test with key fold_in(key, 0)."""
    c, y, r, units = _small(1, n=600, k=6)
    kw = dict(key=5, clusters=units, n_permutations=150, reference="restudentised")
    base = dg.conditional_calibration_test(c, y, r, **kw)
    assert base.reference == "restudentised"
    for extra in (dict(mesh=parallel.make_mesh(8), chunk_size=7),):
        other = dg.conditional_calibration_test(c, y, r, **kw, **extra)
        np.testing.assert_array_equal(other.null, base.null)
        assert other.p_value == base.p_value
    kw.pop("clusters")
    batch = dg.conditional_test_batch(
        c[None],
        y[None],
        r[None],
        clusters=units[None],
        **{**kw, "key": jax.random.key(0)},
        chunk_size=11,
    )
    single = dg.conditional_calibration_test(
        c, y, r, clusters=units, **{**kw, "key": jax.random.fold_in(jax.random.key(0), 0)}
    )
    np.testing.assert_allclose(batch.null[0], single.null, rtol=1e-12)


def test_auto_switch_and_bad_choices_raise():
    """reference="auto": the fixed scores with K > SMALL_K (K = 13 gives the fixed null bit for
    bit); with K <= SMALL_K clusters the within-cluster t reference (both alternatives), the
    omnibus test re-studentised only without clusters; "restudentised" on request: same
    statistic, another null; bad names and K > MAX_K raise."""
    assert rs.resolve("auto", rs.SMALL_K, "omnibus") == "within"  # test_within_clusters.py
    assert rs.resolve("auto", rs.SMALL_K, "omnibus", rs.SMALL_K) == "restudentised"
    assert rs.resolve("auto", rs.SMALL_K + 1, "omnibus") == "fixed"
    assert rs.resolve("auto", 6, "monotone") == "within"  # tests/stats/test_within_clusters.py
    d = simulation.design(2, "clustered", 1300, cluster_size=100)  # K = 13
    args = (d.confidence[0], d.correct[0], d.routing[0])
    kw = dict(key=1, clusters=d.clusters[0], n_permutations=99)
    default = dg.conditional_calibration_test(*args, **kw)
    fixed = dg.conditional_calibration_test(*args, **kw, reference="fixed")
    assert default.reference == fixed.reference == "fixed"
    np.testing.assert_array_equal(default.null, fixed.null)
    forced = dg.conditional_calibration_test(*args, **kw, reference="restudentised")
    assert forced.reference == "restudentised"
    assert forced.statistic == pytest.approx(default.statistic, rel=1e-12)
    assert not np.array_equal(forced.null, default.null)
    with pytest.raises(ValueError, match="reference"):
        dg.conditional_calibration_test(*args, **kw, reference="webb")
    with pytest.raises(ValueError, match="reference"):
        rs.resolve("restudentised", rs.MAX_K + 1, "monotone")


def test_statistic_is_its_own_identity_flip_at_six_clusters():
    """Re-studentised null at K = 6: exactly the flips whose 6 signs are all equal (identity or
    its negation) tie |Z| (relative 1e-10), so p counts them; p is never below 2^(1 - K). Level
    over 200 true nulls: not above Binomial(200, 0.05)'s 99% bound for either null (the full
    rows, 1000 datasets, are in benchmarks/RESULTS.md: fixed 1.9%, re-studentised 8.2%); the
    omnibus test re-studentised (on request; "auto" picks "within") inside Binomial(200, 0.05)'s
    99% interval."""
    d = simulation.design(3, "clustered", 600, n_datasets=200, cluster_size=100)
    kw = dict(key=2, clusters=d.clusters, n_permutations=199)
    res = dg.conditional_test_batch(d.confidence, d.correct, d.routing, reference="restudentised",
                                    **kw)
    fixed = dg.conditional_test_batch(d.confidence, d.correct, d.routing, reference="fixed", **kw)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(2), i))(jnp.arange(200))
    for i in range(0, 200, 40):
        flips = np.asarray(rs.signs(chunk_seeds(keys[i], 1, 199)[0], 6))  # [B, K]
        same = np.all(flips == flips[:, :1], axis=1)
        z, null = abs(res.statistic[i]), np.abs(res.null[i])
        np.testing.assert_array_equal(np.abs(null - z) <= 1e-10 * z, same)
    assert res.p_value.min() >= 2.0**-5 and fixed.p_value.min() >= 2.0**-5
    lo, hi = stats.binom.interval(0.99, 200, 0.05)
    assert np.sum(res.p_value <= 0.05) <= hi and np.sum(fixed.p_value <= 0.05) <= hi
    # the omnibus test re-studentised at K = 6 holds its level here (fixed scores: 0.3%)
    omni = dg.conditional_test_batch(d.confidence, d.correct, d.routing, alternative="omnibus",
                                     reference="restudentised", **kw)
    assert omni.reference == "restudentised"
    assert lo <= np.sum(omni.p_value <= 0.05) <= hi, (np.sum(omni.p_value <= 0.05), lo, hi)
