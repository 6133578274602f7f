"""The permutation engines' random streams, pinned against plain numpy re-implementations.

The paper test (`diagnostics`) draws one word per (example, permutation) with `_lane_bits` and
assigns labels by urn sampling; the recommended test (`conditional`) signs 32 units per word of
`_uniform_bits`. Both are re-derived here in numpy from the documented scheme (lane b's two key
words = `jax.random.bits(fold_in(key, b), (2,), uint32)`), so a change of stream or draw rule
fails, and both nulls must be the same whatever the chunk size or device count.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from routecal import parallel
from routecal.stats import conditional, random_bits, simulation
from routecal.stats import diagnostics as dg


def _np_mix32(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def _np_keys(key, n_lanes):
    """[n_lanes, 2] uint32 lane keys, from jax.random (threefry) as the docstrings state."""
    return np.stack([np.asarray(jax.random.bits(jax.random.fold_in(key, b), (2,), jnp.uint32))
                     for b in range(n_lanes)])


def _np_lane_bits(k, ctr):
    """One keyed round over the lane's Weyl sequence: mix32(ctr * (k1 | 1) + k0)."""
    return _np_mix32(ctr.astype(np.uint32) * (k[1] | np.uint32(1)) + k[0])


def _np_uniform_bits(k, ctr):
    """Two keyed rounds: mix32(mix32(ctr * golden + k0) ^ k1)."""
    return _np_mix32(_np_mix32(ctr.astype(np.uint32) * np.uint32(0x9E3779B9) + k[0]) ^ k[1])


def test_bit_generators_match_numpy():
    seeds = random_bits.chunk_seeds(jax.random.key(3), 2, 5)  # [2 chunks, 2, 5 lanes]
    keys = _np_keys(jax.random.key(3), 10)
    np.testing.assert_array_equal(np.asarray(seeds).transpose(0, 2, 1).reshape(10, 2), keys)
    ctr = jnp.arange(1000, dtype=jnp.uint32)
    lane = np.asarray(random_bits._lane_bits(seeds[1], ctr))  # [1000, 5]
    uni = np.asarray(random_bits._uniform_bits(seeds[1], ctr))
    for i in range(5):
        np.testing.assert_array_equal(lane[:, i], _np_lane_bits(keys[5 + i], np.arange(1000)))
        np.testing.assert_array_equal(uni[:, i], _np_uniform_bits(keys[5 + i], np.arange(1000)))
    # each lane's words look uniform: top-byte histogram over 1000 x 5 draws
    counts = np.bincount((lane >> 24).ravel(), minlength=256)
    assert scipy.stats.chisquare(counts).pvalue > 1e-4


def _np_paper_null(c, y, r, key, n_perm, n_bins=10, n_groups=3):
    """The documented urn scheme, one example at a time: labels top / middle / bottom drawn with
    j = floor(bits * remaining / 2^32), top if j < (top labels left), middle if j < (top + middle
    left); bits = _lane_bits at the example's position in (bin, routing) order."""
    n = len(c)
    b = np.clip(np.ceil(c * n_bins).astype(int) - 1, 0, n_bins - 1)
    order = np.lexsort((r, b))  # by bin, then routing, ties by row
    res = (y - c)[order]
    bs = b[order]
    keys = _np_keys(key, n_perm)
    bins = []
    for k in range(n_bins):
        pos = np.flatnonzero(bs == k)
        if len(pos) == 0:
            continue
        # group sizes as the module docstring defines them (tie blocks by mid-rank)
        sr = r[order][pos]
        first = np.searchsorted(sr, sr, "left")
        last = np.searchsorted(sr, sr, "right") - 1
        part = np.concatenate([np.full(len(p), j) for j, p in
                               enumerate(np.array_split(np.arange(len(pos)), n_groups))])
        grp = part[(first + last) // 2]
        kt, kb = int(np.sum(grp == n_groups - 1)), int(np.sum(grp == 0))
        if kt and kb:
            bins.append((pos, kt, kb, len(pos) / n))
    null = np.zeros(n_perm)
    for t in range(n_perm):
        bits = _np_lane_bits(keys[t], np.arange(n)).astype(np.uint64)
        for pos, kt, kb, w in bins:
            rt, s, acc = kt, len(pos) - kb, 0.0
            for i, p in enumerate(pos):
                j = int((bits[p] * np.uint64(len(pos) - i)) >> np.uint64(32))
                top, topmid = j < rt, j < s
                if top:
                    acc += res[p] / kt
                elif not topmid:
                    acc -= res[p] / kb
                rt, s = rt - top, s - topmid
            null[t] += w * abs(acc)
    return null


def test_paper_null_is_the_documented_urn_scheme():
    d = simulation.simulate(jax.random.key(4), 90, effect=0.1, conf_low=0.0)
    c, y, r = d.confidence[0], d.correct[0], np.round(d.routing[0], 1)  # ties in routing
    key = jax.random.key(5)
    res = dg.within_bin_permutation_test(c, y, r, key=key, n_permutations=12, n_bins=10)
    np.testing.assert_allclose(res.null, _np_paper_null(c, y, r, key, 12), rtol=1e-12, atol=1e-15)


def test_sign_flip_null_is_the_documented_bit_scheme():
    d = simulation.design(jax.random.key(0), "clustered", 600)
    c, y, r, cl = d.confidence[0], d.correct[0], d.routing[0], d.clusters[0]
    key = jax.random.key(6)
    res = dg.conditional_calibration_test(c, y, r, key=key, clusters=cl, n_permutations=10)
    units, n_units = conditional._units(cl, len(c))
    with jax.enable_x64(True):
        _, w, _ = conditional.scores(jnp.asarray(c), jnp.asarray(y), jnp.asarray(r),
                                     jnp.asarray(units), n_strata=res.n_strata, n_units=n_units)
    w = np.asarray(w)
    keys = _np_keys(key, 10)
    ref = np.empty(10)
    for t in range(10):
        words = _np_uniform_bits(keys[t], np.arange(-(-n_units // 32)))
        bit = (words[np.arange(n_units) // 32] >> (np.arange(n_units) % 32).astype(np.uint32)) & 1
        ref[t] = np.sum(np.where(bit == 1, -w, w))
    np.testing.assert_allclose(res.null, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("test", ["paper", "recommended"])
def test_same_key_same_null_whatever_the_chunking_and_devices(test):
    assert len(jax.devices()) == 8
    d = simulation.design(jax.random.key(1), "clustered", 400)
    c, y, r, cl = d.confidence[0], d.correct[0], d.routing[0], d.clusters[0]
    if test == "paper":
        def run(**kw):
            return dg.within_bin_permutation_test(c, y, r, key=jax.random.key(9),
                                                  n_permutations=300, n_bins=10, **kw)
    else:
        def run(**kw):
            return dg.conditional_calibration_test(c, y, r, key=jax.random.key(9), clusters=cl,
                                                   n_permutations=300, **kw)
    base = run(chunk_size=7, mesh=parallel.make_mesh(1))
    for kw in (dict(chunk_size=64, mesh=parallel.make_mesh(1)), dict(chunk_size=300),
               dict(chunk_size=13, mesh=parallel.make_mesh(8))):
        other = run(**kw)
        np.testing.assert_array_equal(other.null, base.null)
        assert other.p_value == base.p_value


def test_paper_p_values_uniform_under_the_null():
    # 300 datasets with routing independent of everything (exchangeable within bins): the
    # p-values of a valid permutation test are (discretely) uniform.
    d = simulation.null_data(jax.random.key(11), 150, n_datasets=300)
    res = dg.permutation_test_batch(*d, key=jax.random.key(12), n_permutations=99, n_bins=5)
    p = np.asarray(res.p_value)
    assert scipy.stats.kstest(p, "uniform").pvalue > 1e-3
    rate = np.mean(p <= 0.05)
    assert scipy.stats.binomtest(int(np.sum(p <= 0.05)), 300, 0.05).pvalue > 1e-3, rate
