"""Tests for routecal.kernels: NW vs numpy and statsmodels, Scott vs scipy, LOO vs brute force."""

import warnings

import numpy as np
import pytest
import scipy.stats

from routecal.parallel import make_mesh
from routecal.stats import kernels


def _numpy_nw(xt, yt, xq, h):
    """Independent float64 reference: Gaussian product kernel, no stabilisation tricks."""
    u = (xq[:, None, :] - xt[None, :, :]) / h[None, None, :]
    w = np.exp(-0.5 * np.sum(u**2, axis=-1))
    return w @ yt / w.sum(axis=1)


def _numpy_loo(x, y, h):
    u = (x[:, None, :] - x[None, :, :]) / h[None, None, :]
    w = np.exp(-0.5 * np.sum(u**2, axis=-1))
    np.fill_diagonal(w, 0.0)
    return w @ y / w.sum(axis=1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 2))
    y = (rng.random(120) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(float)
    return x, y


def test_nw_matches_numpy_and_statsmodels(data):
    x, y = data
    rng = np.random.default_rng(1)
    xq = rng.normal(size=(37, 2))
    h = np.array([0.4, 0.7])
    y_real = rng.normal(size=len(y))
    for target in (y, y_real):  # binary (grouped fast path) and real-valued targets
        got = kernels.nadaraya_watson(x, target, xq, h)
        np.testing.assert_allclose(got, _numpy_nw(x, target, xq, h), atol=2e-6)
    from statsmodels.nonparametric.kernel_regression import KernelReg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kr = KernelReg(y_real, x, var_type="cc", reg_type="lc", bw=list(h))
        sm = kr.fit(xq)[0]
    np.testing.assert_allclose(kernels.nadaraya_watson(x, y_real, xq, h), sm, atol=2e-6)


def test_nw_one_feature_and_tiny_tiles_and_mesh(data):
    x, y = data
    xq = np.linspace(-3, 3, 21)
    h = np.array([0.3])
    ref = _numpy_nw(x[:, :1], y, xq[:, None], h)
    np.testing.assert_allclose(kernels.nadaraya_watson(x[:, 0], y, xq, h), ref, atol=2e-6)
    got = kernels.nadaraya_watson(x[:, 0], y, xq, h, mesh=make_mesh(8), row_tile=8, col_tile=16)
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_nw_many_features_uses_matmul_distances():
    rng = np.random.default_rng(2)
    x, xq = rng.normal(size=(60, 6)), rng.normal(size=(9, 6))
    y = rng.normal(size=60)
    h = np.full(6, 1.5)
    np.testing.assert_allclose(
        kernels.nadaraya_watson(x, y, xq, h), _numpy_nw(x, y, xq, h), atol=1e-5
    )


def test_scott_matches_gaussian_kde(data):
    x, _ = data
    kde = scipy.stats.gaussian_kde(x.T)
    expected = kde.factor * x.std(axis=0, ddof=1)
    np.testing.assert_allclose(kernels.scott_bandwidth(x), expected, rtol=1e-12)
    # gaussian_kde's kernel covariance is factor^2 * data covariance: its diagonal is Scott^2.
    np.testing.assert_allclose(np.sqrt(np.diag(kde.covariance)), expected, rtol=1e-10)
    grid = kernels.scott_multiples(x, [0.5, 2.0])
    np.testing.assert_allclose(grid, np.array([0.5, 2.0])[:, None] * expected[None, :])


def test_loo_matches_brute_force(data):
    x, y = data
    grid = kernels.scott_multiples(x, [0.2, 1.0, 4.0])
    p = kernels.loo_predictions(x, y, grid)
    ref = np.stack([_numpy_loo(x, y, h) for h in grid])
    np.testing.assert_allclose(p, ref, atol=3e-6)
    ref_nll = [
        -np.mean(
            y * np.log(np.clip(r, 1e-6, 1 - 1e-6))
            + (1 - y) * np.log(1 - np.clip(r, 1e-6, 1 - 1e-6))
        )
        for r in ref
    ]
    np.testing.assert_allclose(kernels.loo_nll(x, y, grid), ref_nll, rtol=1e-4)


def test_loo_sharded_equals_single_device(data):
    x, y = data
    grid = kernels.scott_multiples(x, [0.5, 1.0])
    one = kernels.loo_nll(x, y, grid, row_tile=8, col_tile=16)
    eight = kernels.loo_nll(x, y, grid, mesh=make_mesh(8), row_tile=8, col_tile=16)
    default = kernels.loo_nll(x, y, grid)
    np.testing.assert_allclose(eight, one, rtol=1e-5)
    np.testing.assert_allclose(default, one, rtol=1e-5)
    # more bandwidths than one mesh call takes (chunked), proportional and not
    for grid in (
        kernels.scott_multiples(x, [0.3, 0.5, 0.8, 1.0, 1.5, 2.0]),
        np.c_[np.linspace(0.2, 1.0, 6), np.linspace(1.0, 0.3, 6)],
    ):
        ref = np.stack([_numpy_loo(x, y, h) for h in grid])
        got = kernels.loo_predictions(x, y, grid, mesh=make_mesh(8), row_tile=8, col_tile=16)
        np.testing.assert_allclose(got, ref, atol=3e-6)


def test_far_outlier_does_not_underflow(data):
    x, y = data
    x = x.copy()
    x[0] = [1e4, -1e4]  # ~1e9 squared bandwidths away: exp underflows without the row shift
    h = kernels.scott_bandwidth(x[1:])[None, :] * np.array([[0.1], [1.0]])
    p = kernels.loo_predictions(x, y, h)
    assert np.all(np.isfinite(p))
    nn = np.argmin(np.sum((x[1:] - x[0]) ** 2, axis=1)) + 1
    np.testing.assert_allclose(
        p[:, 0], y[nn]
    )  # the outlier's estimate = its nearest neighbour's label
    q = kernels.nadaraya_watson(x[1:], y[1:], np.array([[-5e3, 5e3]]), h[0])
    assert np.isfinite(q).all()
    assert np.isfinite(kernels.loo_nll(x, y, h)).all()


def test_selection_rules(data):
    x, y = data
    scott = kernels.scott_bandwidth(x)
    s = kernels.select_bandwidth("scott", x, y)
    np.testing.assert_allclose(s.bandwidth, scott)
    assert not s.optimistic
    s2 = kernels.select_bandwidth("scott_x2.5", x, y)
    np.testing.assert_allclose(s2.bandwidth, 2.5 * scott)
    mult = np.array([0.25, 1.0, 4.0])
    cv = kernels.select_bandwidth("cv_nll", x, y, multiples=mult)
    scores = kernels.loo_nll(x, y, mult[:, None] * scott[None, :])
    assert cv.multiple == mult[np.argmin(scores)]
    np.testing.assert_allclose(cv.scores, scores)
    rng = np.random.default_rng(5)
    xt = rng.normal(size=(50, 2))
    yt = (rng.random(50) < 0.5).astype(float)
    orc = kernels.select_bandwidth("oracle_ece", x, y, multiples=mult, test=(xt, yt))
    assert orc.optimistic
    from routecal.stats.calibration import ece

    eces = [ece(np.clip(_numpy_nw(x, y, xt, m * scott), 0, 1), yt) for m in mult]
    np.testing.assert_allclose(orc.scores, eces, atol=1e-5)
    assert orc.multiple == mult[np.argmin(eces)]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda x, y: kernels.scott_bandwidth(np.c_[x[:, 0], np.ones(len(x))]), "constant"),
        (lambda x, y: kernels.scott_bandwidth(x[:1]), "at least 2"),
        (lambda x, y: kernels.loo_nll(x[:1], y[:1], [[1.0, 1.0]]), "at least 2"),
        (lambda x, y: kernels.nadaraya_watson(x, y, x, [0.0, 1.0]), "bandwidth"),
        (lambda x, y: kernels.nadaraya_watson(x, y, x, [-1.0, 1.0]), "bandwidth"),
        (lambda x, y: kernels.loo_nll(x, y, [[1.0, np.inf]]), "bandwidths"),
        (lambda x, y: kernels.nadaraya_watson(x, y[:-1], x, [1.0, 1.0]), "mismatched"),
        (lambda x, y: kernels.loo_nll(x, y[:-1], [[1.0, 1.0]]), "mismatched"),
        (
            lambda x, y: kernels.nadaraya_watson(np.where(x > 2, np.nan, x), y, x, [1.0, 1.0]),
            "x_train",
        ),
        (lambda x, y: kernels.nadaraya_watson(x, y, x[:, :1], [1.0, 1.0]), "x_query"),
        (lambda x, y: kernels.loo_nll(x, y + 0.5, [[1.0, 1.0]]), "y"),
        (lambda x, y: kernels.select_bandwidth("silverman", x, y), "rule"),
        (lambda x, y: kernels.select_bandwidth("oracle_ece", x, y), "test"),
    ],
)
def test_bad_input(data, call, match):
    x, y = data
    with pytest.raises(ValueError, match=match):
        call(x, y)
