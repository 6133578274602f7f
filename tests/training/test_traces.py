"""Tests for routecal.training.traces against explicit numpy loops over DESIGN.md's formulas."""

import numpy as np
import pytest

from routecal.training import traces


def _dirichlet(n, t, s, seed):
    rng = np.random.default_rng(seed)
    a = rng.dirichlet(np.ones(s) * 0.7, size=(n, t)).astype(np.float32)
    if s > 2:
        a[0, 0] = 0.0  # a token with exact zeros: 0 log 0 = 0
        a[0, 0, 1] = 1.0
    return a


def _ref_stats(p):
    """Scalar reference for one distribution p over sources 0..S-1."""
    s = len(p)
    h = -sum(float(x) * np.log(float(x)) for x in p if x > 0)
    d = sum(i * float(x) for i, x in enumerate(p))
    v = sum(float(x) * (i - d) ** 2 for i, x in enumerate(p))
    return h, (h / np.log(s) if s > 1 else 0.0), d, v


def test_pointwise_functions_match_reference():
    a = _dirichlet(4, 3, 5, 0)
    h, hn, d, v = (
        np.asarray(f(a))
        for f in (traces.entropy, traces.normalized_entropy, traces.depth_mean, traces.depth_var)
    )
    for i in range(4):
        for t in range(3):
            ref = _ref_stats(a[i, t])
            np.testing.assert_allclose(
                [h[i, t], hn[i, t], d[i, t], v[i, t]], ref, rtol=1e-5, atol=1e-6
            )


def test_closed_forms():
    # uniform over S: H = log S, D = (S-1)/2, V = (S^2-1)/12; one-hot at j: H = 0, D = j, V = 0
    for s in (2, 3, 7):
        u = np.full((1, s), 1.0 / s, np.float32)
        np.testing.assert_allclose(np.asarray(traces.entropy(u)), np.log(s), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(traces.normalized_entropy(u)), 1.0, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(traces.depth_mean(u)), (s - 1) / 2, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(traces.depth_var(u)), (s * s - 1) / 12, rtol=1e-5)
    e = np.eye(4, dtype=np.float32)[2][None]
    assert float(traces.entropy(e)[0]) == 0.0 and float(traces.depth_var(e)[0]) == 0.0
    assert float(traces.depth_mean(e)[0]) == 2.0
    assert float(traces.normalized_entropy(np.ones((3, 1)))[0]) == 0.0  # one source: 0, not NaN


@pytest.mark.parametrize("token", ["mean", 0, -1])
def test_summarize_matches_numpy_reference(token):
    n, t = 5, 4
    alphas = [_dirichlet(n, t, s, seed) for seed, s in enumerate([1, 2, 3, 4, 3])]
    out = traces.summarize(alphas, token=token)
    assert set(out) == {"H", "H_norm", "depth_mean", "depth_var"}
    for k, col in enumerate(("H", "H_norm", "depth_mean", "depth_var")):
        ref = np.zeros((n, len(alphas)))
        for l, a in enumerate(alphas):
            for i in range(n):
                per_token = [_ref_stats(a[i, j])[k] for j in range(t)]
                ref[i, l] = np.mean(per_token) if token == "mean" else per_token[token]
        assert out[col].shape == (n, len(alphas)) and out[col].dtype == np.float32
        np.testing.assert_allclose(out[col], ref, rtol=1e-5, atol=1e-6)


def test_alpha_mean_pads_with_zeros():
    alphas = [_dirichlet(3, 2, s, s) for s in (1, 3, 2)]
    am, ns = traces.alpha_mean(alphas)
    np.testing.assert_array_equal(ns, [1, 3, 2])
    assert am.shape == (3, 3)
    for l, a in enumerate(alphas):
        np.testing.assert_allclose(am[l, : ns[l]], a.mean(axis=(0, 1)), rtol=1e-6)
        np.testing.assert_array_equal(am[l, ns[l] :], 0.0)
        np.testing.assert_allclose(am[l].sum(), 1.0, rtol=1e-5)


def test_empty_and_bad_input():
    out = traces.summarize([])
    assert out["H"].shape == (0, 0)
    with pytest.raises(ValueError, match="alpha_list"):
        traces.summarize([np.ones((2, 3))])
    with pytest.raises(ValueError, match="alpha_list"):
        traces.summarize([np.ones((2, 3, 1)), np.ones((3, 3, 2)) / 2])
    with pytest.raises(ValueError, match="token"):
        traces.summarize([np.ones((2, 3, 1))], token="first")
    with pytest.raises(ValueError, match="token"):
        traces.summarize([np.ones((2, 3, 1))], token=5)
