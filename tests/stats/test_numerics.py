"""Issue 11, point 5: each numerical case is a test (NW / LOO extremes, binning, dtypes, keys)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from routecal.stats import binning, kernels
from routecal.stats import calibration as cal
from routecal.stats import diagnostics as dg
from routecal.stats import uncertainty as unc


def _lse_nw(xt, yt, xq, h, loo=False):
    """float64 reference, log-sum-exp with the nearest point (exact in the far-query limit)."""
    d = ((xq[:, None] - xt[None, :]) / h) ** 2 / 2
    if loo:
        np.fill_diagonal(d, np.inf)
    w = np.exp(-(d - d.min(axis=1, keepdims=True)))
    return w @ yt / w.sum(axis=1)


@pytest.fixture(scope="module")
def unit():
    rng = np.random.default_rng(0)
    x = rng.random(200)
    return x, (rng.random(200) < x).astype(float)


@pytest.mark.parametrize("h, q", [(1e-8, [0.5, 0.2, 0.77]), (0.05, [1e4, -3e3]), (1e3, [0.5])])
def test_nw_finite_at_any_bandwidth_and_query(unit, h, q):
    x, y = unit
    q = np.asarray(q, float)
    got = kernels.nadaraya_watson(x, y, q, [h])
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _lse_nw(x, y, q, h), atol=1e-5)


def test_far_query_gets_nearest_label(unit):
    x, y = unit
    got = kernels.nadaraya_watson(x, y, [1e4, -1e4], [0.05])
    np.testing.assert_array_equal(got, [y[np.argmax(x)], y[np.argmin(x)]])


def test_loo_nll_finite_at_tiny_bandwidth(unit):
    x, y = unit
    p = kernels.loo_predictions(x, y, [[1e-8], [1e-3]])
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p[0], _lse_nw(x, y, x, 1e-8, loo=True), atol=1e-6)
    assert np.all(np.isfinite(kernels.loo_nll(x, y, [[1e-8], [1e-3], [1e3]])))


@pytest.mark.parametrize("shift", [1e5, 1e6])
def test_nw_invariant_to_a_shift_of_all_coordinates(unit, shift):
    x, y = unit
    q = np.linspace(0, 1, 9)
    base = kernels.nadaraya_watson(x, y, q, [0.05])
    np.testing.assert_allclose(kernels.nadaraya_watson(x + shift, y, q + shift, [0.05]), base,
                               atol=1e-6)
    base_loo = kernels.loo_predictions(x, y, [[0.05]])
    np.testing.assert_allclose(kernels.loo_predictions(x + shift, y, [[0.05]]), base_loo, atol=1e-6)


def test_select_bandwidth_never_argmins_over_nan(unit, monkeypatch):
    x, y = unit
    monkeypatch.setattr(kernels, "loo_nll", lambda *a, **k: np.array([np.nan, 0.7, 0.5, np.nan]))
    sel = kernels.select_bandwidth("cv_nll", x, y, multiples=[0.5, 1.0, 2.0, 4.0])
    assert sel.multiple == 2.0
    monkeypatch.setattr(kernels, "loo_nll", lambda *a, **k: np.full(2, np.nan))
    with pytest.raises(ValueError, match="rule"):
        kernels.select_bandwidth("cv_nll", x, y, multiples=[0.5, 1.0])


def test_one_binning_float64_edges_issue_case():
    """5 x 7/13 and 5 x 0.5 share bin 6 of 13 (edge (6/13, 7/13]): ECE = |1/2 - mean c| = 0.019."""
    c = np.r_[np.full(5, 7 / 13), np.full(5, 0.5)]
    y = np.r_[np.ones(5), np.zeros(5)]
    assert cal.ece(c, y, n_bins=13) == pytest.approx(abs(0.5 - c.mean()), abs=1e-6)
    assert cal.reliability_curve(c, y, n_bins=13).count[6] == 10
    c3, y3 = np.tile(c, 3), np.tile(y, 3)
    assert dg.subgroup_gaps(c3, y3, np.arange(30.0), n_bins=13, n_groups=2).count[6] == 30


def test_bins_agree_across_dtypes_and_with_exact_rationals():
    """Edges are the float64 numbers b/13; compare exactly with Python fractions."""
    from fractions import Fraction

    edges = [Fraction(b / 13) for b in range(1, 13)]

    def ref(values):
        return [sum(e < Fraction(float(v)) for e in edges) for v in values]

    rng = np.random.default_rng(1)
    c32 = np.r_[rng.random(2000), np.arange(14) / 13].astype(np.float32)
    np.testing.assert_array_equal(binning.width_bins(c32.astype(np.float64), 13), ref(c32))
    np.testing.assert_array_equal(np.asarray(binning.width_bins(jnp.asarray(c32), 13)), ref(c32))
    c64 = np.r_[rng.random(2000), np.arange(14) / 13]
    np.testing.assert_array_equal(binning.width_bins(c64, 13), ref(c64))


def test_equal_mass_bins_keep_ties_and_ignore_row_order():
    rng = np.random.default_rng(2)
    c = np.round(rng.uniform(0.4, 1.0, 300), 1)  # 7 distinct values: heavy ties
    y = (rng.random(300) < c).astype(float)
    b = binning.mass_bins(c, 10)
    for v in np.unique(c):
        assert len(np.unique(b[c == v])) == 1
    eces = []
    for _ in range(20):
        p = rng.permutation(300)
        eces.append(cal.ece(c[p], y[p], n_bins=10, binning="mass"))
    np.testing.assert_allclose(eces, eces[0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(binning.mass_bins(jnp.asarray(c), 10)), b)
    # without ties: numpy.array_split of the stable argsort
    c2 = rng.random(103)
    ref = np.empty(103, int)
    for k, part in enumerate(np.array_split(np.argsort(c2, kind="stable"), 10)):
        ref[part] = k
    np.testing.assert_array_equal(binning.mass_bins(c2, 10), ref)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_low_precision_nan_and_inf_refused(dtype, bad):
    c = jnp.asarray([0.5, bad, 0.7], dtype)
    with pytest.raises(ValueError, match="confidence"):
        cal.ece(c, [1, 0, 1], n_bins=2)
    with pytest.raises(ValueError, match="x_query"):
        kernels.nadaraya_watson([0.1, 0.2], [0, 1], jnp.asarray([bad], dtype), [0.1])
    assert cal.ece(jnp.asarray([0.5, 0.75], dtype), [1, 0], n_bins=2) == pytest.approx(0.625)  # 0.5|1-.5| + 0.5|0-.75|


def test_jaccard_rejects_negative_indices():
    with pytest.raises(ValueError, match="experts_a"):
        unc.jaccard(np.array([[0, -1]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="experts_b"):
        unc.jaccard(np.array([[0, 1]]), np.array([[-1, 1]]))


def test_integer_key_is_accepted_as_a_seed_and_bad_keys_named():
    rng = np.random.default_rng(3)
    c, r = rng.uniform(0.3, 1, 120), rng.normal(size=120)
    y = (rng.random(120) < c).astype(float)
    a = dg.within_bin_permutation_test(c, y, r, key=5, n_permutations=50, n_bins=5)
    b = dg.within_bin_permutation_test(c, y, r, key=jax.random.key(5), n_permutations=50, n_bins=5)
    np.testing.assert_array_equal(a.null, b.null)
    for bad in (1.5, "0", None, jax.random.split(jax.random.key(0), 2)):
        with pytest.raises(ValueError, match="key"):
            dg.within_bin_permutation_test(c, y, r, key=bad, n_permutations=50, n_bins=5)


def test_worst_group_ece_keeps_tied_routing_in_one_group():
    from routecal.stats import binary

    rng = np.random.default_rng(5)
    c = rng.uniform(0.5, 1.0, 300)
    y = (rng.random(300) < c).astype(float)
    r = rng.integers(0, 2, 300).astype(float)  # binary routing: two groups by value
    by_value = max(cal.ece(c[r == v], y[r == v]) for v in (0.0, 1.0))
    assert binary.worst_group_ece(c, y, r) == pytest.approx(by_value)
    order = np.argsort(-y, kind="stable")  # correct-first storage changes nothing
    assert binary.worst_group_ece(c[order], y[order], r[order]) == pytest.approx(by_value)
