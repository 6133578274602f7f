"""Integer-key ranks against numpy / scipy."""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from routecal.stats import ranks


def _values(n=500, seed=0):
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=n), 1)  # many ties, negatives
    x[:5] = [0.0, -0.0, -0.0, 1e-300, -1e-300]  # the two zeros must tie
    return x


def test_order_key_preserves_order_and_ties():
    x = _values()
    with jax.enable_x64(True):
        k = np.asarray(ranks.order_key(jnp.asarray(x)))
    i, j = np.random.default_rng(1).integers(0, len(x), (2, 5000))
    np.testing.assert_array_equal(k[i] < k[j], x[i] < x[j])
    np.testing.assert_array_equal(k[i] == k[j], x[i] == x[j])


def test_tie_blocks_and_levels_match_scipy():
    x = _values()
    with jax.enable_x64(True):
        first, last, level, n_levels = map(np.asarray, ranks.tie_levels(jnp.asarray(x)))
    np.testing.assert_array_equal(first, scipy.stats.rankdata(x, method="min") - 1)
    np.testing.assert_array_equal(last, scipy.stats.rankdata(x, method="max") - 1)
    uniq, inv = np.unique(x, return_inverse=True)
    np.testing.assert_array_equal(level, inv)
    assert n_levels == len(uniq)


def test_stable_order_matches_lexsort():
    x = _values()
    major = np.random.default_rng(2).integers(0, 7, len(x)).astype(np.int32)
    with jax.enable_x64(True):
        got = np.asarray(ranks.stable_order(jnp.asarray(major), jnp.asarray(x), 7))
    np.testing.assert_array_equal(got, np.lexsort((np.arange(len(x)), x, major)))
