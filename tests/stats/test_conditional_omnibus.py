"""The omnibus alternative: its statistic against a numpy reference, its sign-flip null shared
across columns, its level, and its power on the non-monotone effects of issue 22."""

import jax
import numpy as np
import pytest
import scipy.stats
from scipy import stats

from routecal.stats import diagnostics as dg
from routecal.stats import simulation


def _smoother(c, strata, units):
    """Explicit [N, N] smoother: row i fits (1, c) on i's stratum without i's unit (None: pooled)."""
    n = len(c)
    lmat = np.zeros((n, n))
    for i in range(n):
        same = strata == strata[i]
        o = np.flatnonzero(same & (units != units[i]) if units is not None else same)
        if len(o) == 0:
            continue
        dc = c[o] - c[o].mean()
        x = np.c_[np.ones(len(o)), c[o]]
        if len(o) < 3 or np.sum(dc * dc) <= 1e-12 * len(o):
            x = x[:, :1]
        lmat[i, o] = np.r_[1.0, c[i]][: x.shape[1]] @ np.linalg.pinv(x)
    return lmat


def _ref_omnibus(c, y, r, units, stratum_size=50):
    """numpy: rank basis [u, u^2 - 1/3, u v, (u^2 - 1/3) v], leave-unit-out fits, max |Z_j|."""
    n = len(c)
    u = 2 * (stats.rankdata(r) - 1) / (n - 1) - 1
    v = 2 * (stats.rankdata(c) - 1) / (n - 1) - 1
    q = u * u - 1 / 3
    feats = np.c_[u, q, u * v, q * v]
    m = n // stratum_size
    part = np.concatenate([np.full(len(p), j) for j, p in enumerate(np.array_split(np.arange(n), m))])
    strata = part[np.searchsorted(np.sort(c), c, "left")]
    loco = np.eye(n) - _smoother(c, strata, units)
    s_res = loco @ feats
    s_res[np.abs(s_res) < 1e-12] = 0
    y_loco, y_pool = loco @ y, (np.eye(n) - _smoother(c, strata, None)) @ y
    w = loco.T @ s_res
    a = np.stack([np.bincount(units, weights=w[:, j] * y_loco) for j in range(4)], 1)
    b = np.stack([np.bincount(units, weights=w[:, j] * y_pool) for j in range(4)], 1)
    uk = np.sign(a) * np.sqrt(np.maximum(a * b, 0))
    z = (w.T @ y) / np.sqrt(np.sum(uk**2, 0))
    return np.max(np.abs(z)), uk / np.sqrt(np.sum(uk**2, 0))


def test_omnibus_matches_reference_and_shares_signs():
    d = simulation.design(0, "clustered", 450, cluster_size=15)
    c, y, r, cl = d.confidence[0], d.correct[0], d.routing[0], d.clusters[0]
    res = dg.conditional_calibration_test(c, y, r, key=1, clusters=cl, n_permutations=4000,
                                          alternative="omnibus")
    t, w = _ref_omnibus(c, y, r, cl)
    assert res.statistic == pytest.approx(t, rel=1e-9) and res.alternative == "omnibus"
    rng = np.random.default_rng(0)
    ref = np.max(np.abs(rng.choice([-1.0, 1.0], size=(4000, w.shape[0])) @ w), axis=1)
    assert scipy.stats.ks_2samp(res.null, ref).pvalue > 1e-3  # same signs for every column
    mono = dg.conditional_calibration_test(c, y, r, key=1, clusters=cl, n_permutations=10)
    assert res.statistic >= abs(mono.statistic) - 1e-12  # column 0 is the monotone score
    with pytest.raises(ValueError, match="alternative"):
        dg.conditional_calibration_test(c, y, r, key=1, alternative="two-sided")


def test_omnibus_level_on_the_exchangeable_null():
    n_sets = 200
    d = simulation.design(2, "sign", 1000, n_datasets=n_sets)
    res = dg.conditional_test_batch(d.confidence, d.correct, d.routing, key=3, n_permutations=99,
                                    alternative="omnibus")
    _, hi = stats.binom.interval(0.99, n_sets, 0.05)
    assert np.sum(res.p_value <= 0.05) <= hi


@pytest.mark.parametrize("design, effect", [("vshape", 0.1), ("signflip", 0.08)])
def test_omnibus_power_on_non_monotone_effects(design, effect):
    """N = 2000 (issue 22): the monotone test's power is near alpha, the omnibus test's >= 0.8."""
    n_sets = 40
    d = simulation.design(jax.random.key(4), design, 2000, n_datasets=n_sets, effect=effect)
    kw = dict(key=5, n_permutations=99)
    omni = dg.conditional_test_batch(d.confidence, d.correct, d.routing, alternative="omnibus", **kw)
    mono = dg.conditional_test_batch(d.confidence, d.correct, d.routing, **kw)
    assert np.mean(omni.p_value <= 0.05) >= 0.8
    assert np.mean(mono.p_value <= 0.05) < 0.5
