"""The recommended conditional test against an independent numpy/scipy reference."""

import jax
import numpy as np
import pytest
import scipy.stats

from routecal import parallel
from routecal.stats import diagnostics as dg
from routecal.stats import simulation


def _smoother(c, strata, units):
    """Explicit [N, N] smoother: row i fits (1, c) on i's stratum without i's unit (None: pooled)."""
    n = len(c)
    lmat = np.zeros((n, n))
    for i in range(n):
        o = np.flatnonzero((strata == strata[i]) & ((units != units[i]) if units is not None
                                                   else True))
        if len(o) == 0:
            continue
        x = np.c_[np.ones(len(o)), c[o]]
        dc = c[o] - c[o].mean()
        if len(o) < 3 or np.sum(dc * dc) <= 1e-12 * len(o):
            x = x[:, :1]
        xi = np.r_[1.0, c[i]][: x.shape[1]]
        lmat[i, o] = xi @ np.linalg.pinv(x)
    return lmat


def _ref_z(c, y, r, units, stratum_size=50):
    """Independent reference: scipy average ranks, explicit leave-unit-out smoother matrices."""
    n = len(c)
    s = (scipy.stats.rankdata(r, method="average") - 1) / (n - 1)
    m = n // stratum_size
    # equal-mass strata with ties kept: the array_split part of each value's first sorted position
    part = np.concatenate([np.full(len(p), j) for j, p in enumerate(np.array_split(np.arange(n), m))])
    strata = part[np.searchsorted(np.sort(c), c, "left")]
    loco = np.eye(n) - _smoother(c, strata, units)
    s_res = loco @ s
    s_res[np.abs(s_res) < 1e-12] = 0.0
    y_loco, y_pool = loco @ y, (np.eye(n) - _smoother(c, strata, None)) @ y
    w = loco.T @ s_res  # T = s~ . (I - L) y = w . y
    t = w @ y
    a, b = np.bincount(units, weights=w * y_loco), np.bincount(units, weights=w * y_pool)
    u = np.sign(a) * np.sqrt(np.maximum(a * b, 0))
    slope = np.sum(y_loco * s_res) / np.sum(s_res**2)
    return t / np.sqrt(np.sum(u**2)), slope, u / np.sqrt(np.sum(u**2)), np.sum(y_loco * s_res)


@pytest.fixture(scope="module")
def clustered():
    d = simulation.design(jax.random.key(0), "clustered", 600)
    return d.confidence[0], d.correct[0], d.routing[0], d.clusters[0]


def test_statistic_matches_reference(clustered):
    c, y, r, cl = clustered
    r = np.round(r, 1)  # ties in routing
    for units in (None, cl):
        res = dg.conditional_calibration_test(c, y, r, key=0, clusters=units, n_permutations=20)
        z, slope, _, t_direct = _ref_z(c, y, r, np.arange(600) if units is None else units)
        assert res.statistic == pytest.approx(z, rel=1e-9)
        assert res.slope == pytest.approx(slope, rel=1e-9)
        assert res.n_units == (600 if units is None else 20) and res.n_strata == 12


def test_sign_flip_null_matches_numpy_sign_flips(clustered):
    c, y, r, cl = clustered
    res = dg.conditional_calibration_test(c, y, r, key=1, clusters=cl, n_permutations=4000)
    z, _, w, _ = _ref_z(c, y, r, cl)
    rng = np.random.default_rng(0)
    ref = rng.choice([-1.0, 1.0], size=(4000, len(w))) @ w
    assert scipy.stats.ks_2samp(res.null, ref).pvalue > 1e-3
    assert abs(res.null.var() - 1.0) < 0.1  # Var sum_k eps_k w_k = sum_k w_k^2 = 1
    p_own = (1 + np.sum(np.abs(res.null) >= abs(z) * (1 - 1e-10))) / 4001
    assert res.p_value == pytest.approx(p_own)


def test_invariant_to_row_order_and_constant_routing_gives_p_one():
    d = simulation.design(jax.random.key(2), "binary", 800)
    c, y, r = d.confidence[0], d.correct[0], d.routing[0]
    base = dg.conditional_calibration_test(c, y, r, key=0, n_permutations=10)
    perm = np.random.default_rng(1).permutation(800)
    moved = dg.conditional_calibration_test(c[perm], y[perm], r[perm], key=0, n_permutations=10)
    assert moved.statistic == pytest.approx(base.statistic, rel=1e-9, abs=1e-12)
    const = dg.conditional_calibration_test(c, y, np.zeros(800), key=0, n_permutations=99)
    assert const.statistic == 0.0 and const.p_value == 1.0 and np.all(const.null == 0)
    assert const.warning == dg.NO_INFORMATION and base.warning == ""


def test_routing_a_function_of_tied_confidence_is_flagged_as_no_information():
    """Issue 22's tied design (levels 20/20/320/320/320, r = 1[c >= 0.6]): each level is its own
    stratum, so Z = 0, p = 1, and the warning says the data cannot tell routing from confidence."""
    rng = np.random.default_rng(0)
    c = np.repeat([0.3, 0.5, 0.6, 0.7, 0.9], [20, 20, 320, 320, 320])
    y = (rng.uniform(size=c.size) < c).astype(float)
    for r in (c, (c >= 0.6).astype(float)):
        res = dg.conditional_calibration_test(c, y, r, key=0, n_permutations=99)
        assert res.p_value == 1.0 and "no information" in res.warning


def test_eight_devices_match_one_and_batch_matches_single(clustered):
    assert len(jax.devices()) == 8
    c, y, r, cl = clustered
    kw = dict(key=jax.random.key(7), n_permutations=400, chunk_size=50, clusters=cl)
    one = dg.conditional_calibration_test(c, y, r, mesh=parallel.make_mesh(1), **kw)
    eight = dg.conditional_calibration_test(c, y, r, mesh=parallel.make_mesh(8), **kw)
    np.testing.assert_array_equal(one.null, eight.null)
    assert one.p_value == eight.p_value
    d = simulation.design(jax.random.key(3), "clustered", 600, n_datasets=3)
    key = jax.random.key(4)
    batch = dg.conditional_test_batch(
        d.confidence, d.correct, d.routing, clusters=d.clusters, key=key, n_permutations=400,
        chunk_size=50,
    )
    for i in range(3):
        single = dg.conditional_calibration_test(
            d.confidence[i], d.correct[i], d.routing[i], clusters=d.clusters[i],
            key=jax.random.fold_in(key, i), n_permutations=400, chunk_size=50,
        )
        np.testing.assert_allclose(batch.null[i], single.null, rtol=1e-12)
        assert batch.p_value[i] == pytest.approx(single.p_value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(clusters=np.zeros(200)), "clusters"),
        (dict(clusters=np.arange(199)), "mismatched lengths"),
        (dict(clusters=np.linspace(0, 1, 200)), "clusters"),
        (dict(stratum_size=150), "stratum_size"),
        (dict(stratum_size=2), "stratum_size"),
        (dict(routing=np.r_[np.nan, np.zeros(199)]), "routing"),
        (dict(key=1.5), "key"),
        (dict(n_permutations=0), "n_permutations"),
    ],
)
def test_bad_input_raises_naming_argument(kwargs, match):
    base = dict(confidence=np.full(200, 0.5), correct=np.zeros(200), routing=np.zeros(200), key=0)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dg.conditional_calibration_test(**base)
