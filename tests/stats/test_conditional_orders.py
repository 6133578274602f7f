"""Host (numpy) sort integers of the recommended test against scipy and against the all-XLA path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from routecal.stats import cluster_inference as ci
from routecal.stats import conditional as cd
from routecal.stats import ranks
from routecal.stats.conditional_orders import host_orders, orders


def _data(n, kind, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.beta(5, 2, n)
    if kind == "tied":  # levels of every size: some own strata, some shared
        c = np.round(c, 2)
    y = (rng.random(n) < c).astype(np.float64)
    r = np.round(rng.normal(size=n) + 0.3 * y, 1)  # tied routing, negatives
    r[:4] = [0.0, -0.0, -0.0, 0.0]  # the two zeros must tie
    return c, y, r


@pytest.mark.parametrize("ties", [True, False])
def test_host_tie_levels_match_scipy(ties):
    x = _data(700, "tied")[2] if ties else _data(700, "continuous")[0]  # routing / confidence
    assert (len(np.unique(x)) < len(x)) == ties
    first, last, level, n_levels = ranks.host_tie_levels(x)
    np.testing.assert_array_equal(first, scipy.stats.rankdata(x, method="min") - 1)
    np.testing.assert_array_equal(last, scipy.stats.rankdata(x, method="max") - 1)
    uniq, inv = np.unique(x, return_inverse=True)
    np.testing.assert_array_equal(level, inv)
    assert n_levels == len(uniq) and first.dtype == np.int32


@pytest.mark.parametrize(("kind", "clustered", "alternative"),
                         [("continuous", False, "monotone"), ("tied", True, "omnibus")])
def test_host_orders_equal_xla_orders_and_scores(kind, clustered, alternative):
    n, stratum_size = 1200, 50
    c, y, r = _data(n, kind)
    clusters = np.random.default_rng(1).integers(0, 37, n) * 5 if clustered else None
    units, n_units = ci.cluster_units(clusters, n)
    n_strata = n // stratum_size
    host = host_orders(c, r, units, n_strata=n_strata, n_units=n_units, stratum_size=stratum_size)
    with jax.enable_x64(True):
        dev = orders(jnp.asarray(c), jnp.asarray(r))
        for name in ("c_first", "c_last", "c_level", "c_levels", "r_first", "r_last"):
            np.testing.assert_array_equal(getattr(host, name), np.asarray(getattr(dev, name)))
        strat = ci.strata(jnp.asarray(c), n_strata, stratum_size)
        if clustered:
            np.testing.assert_array_equal(host.groups, ci._groups(strat, jnp.asarray(units), n_units))
        else:
            assert host.groups is None
        kw = dict(n_strata=n_strata, n_units=n_units, stratum_size=stratum_size,
                  alternative=alternative)
        a = cd._scores_one_device(c, y, r, units, None, **kw)  # sorted by XLA inside the jit
        b = cd._scores_one_device(c, y, r, units, host, **kw)
        for u, v in zip(a, b, strict=True):  # same integers, same operations: equal bits
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
