"""Power: the smallest routing-calibration gap the conditional test detects on *this* data.

Shapes: `N` examples, `E` planted gaps, `R` simulated datasets per gap.

`minimum_detectable_gap` keeps the observed confidence and correctness and plants an effect of
known size (a simulation power analysis; e.g. Arnold et al. 2011, "Simulation methods to estimate
design power", Methods Ecol. Evol.). For each planted gap Delta and replicate:

1. routing z ~ N(0, 1) per example (with `clusters`: z = a_k + e_i, a per-cluster level plus token
   noise, both N(0, 1)), independent of the data; h = sign(z) splits the examples in halves.
2. Correctness is moved by Delta / 2 in each half, starting from the observed labels, so their
   dependence (e.g. within sequences) is kept: with g = P(correct | c) fitted as in the test (local-
   linear in confidence strata), an incorrect example of the high half becomes correct with
   probability (Delta / 2) / (1 - g), a correct example of the low half becomes incorrect with
   probability (Delta / 2) / g (both capped at 1). Then P(correct | c, high) - P(correct | c, low)
   = Delta wherever g +- Delta / 2 stays inside [0, 1]: "the gap" is that accuracy difference
   between high- and low-routing examples of equal confidence (the issue's P(correct) = c +
   0.08 sign(routing) is a gap of 0.16).
3. The conditional test's statistic Z is computed (all E x R datasets in one vmapped computation)
   and compared with its sign-flip null's normal limit (the null has mean 0 and variance exactly 1;
   `tests/stats/test_power.py` checks the result against the full sign-flip test at one point).

Power(Delta) is the rejection rate at `alpha`; the detectable gap is where the (running-maximum)
power curve first reaches `power`, interpolated linearly in log Delta; inf if it never does on the
grid. Common random numbers across gaps keep the curve smooth. The default grid is 16 gaps
geometrically spaced over [1/4, 4] x a normal-theory guess 2 (z_{1-alpha/2} + z_power)
sqrt(acc (1 - acc) / N) / sqrt(0.75) (0.75: efficiency of a rank-linear score for a step effect).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from routecal import _checks
from routecal.stats.binning import mass_bins
from routecal.stats.conditional import _residualise, _units, check_inputs, scores


class MinimumDetectableGap(NamedTuple):
    """gap: smallest planted gap detected with probability `power` (inf if beyond the grid);
    gaps: [E] planted gaps; power: [E] rejection rates; power_low / power_high: [E] 95%
    Clopper-Pearson intervals; n_datasets: R per gap; alpha; target: the requested power."""

    gap: float
    gaps: np.ndarray
    power: np.ndarray
    power_low: np.ndarray
    power_high: np.ndarray
    n_datasets: int
    alpha: float
    target: float


def _fitted(confidence, correct, n_strata):
    """P(correct | c) fitted by the test's within-stratum local-linear fit, clipped to (0, 1)."""
    y_res, _ = _residualise(mass_bins(confidence, n_strata), confidence, correct, n_strata)
    return jnp.clip(correct - y_res, 1e-6, 1.0 - 1e-6)


def _draw(key, n, units, n_units, clustered):
    """Routing [N] (N(0,1), plus a per-cluster level when clustered) and uniforms [N]."""
    kz, ka, ku = jax.random.split(key, 3)
    z = jax.random.normal(kz, (n,))
    if clustered:
        z = z + jax.random.normal(ka, (n_units,))[units]
    return z, jax.random.uniform(ku, (n,), jnp.float64)


def _plant(correct, g, z, u, gap):
    """Moves correctness by gap / 2 in each routing half (module docstring, step 2)."""
    up = u < jnp.minimum(1.0, 0.5 * gap / (1.0 - g))
    down = u < jnp.minimum(1.0, 0.5 * gap / g)
    return jnp.where(z > 0, jnp.maximum(correct, up), correct * (1.0 - down))


@functools.partial(
    jax.jit, static_argnames=("n_datasets", "n_strata", "n_units", "clustered")
)
def _power_curve(confidence, correct, units, gaps, key, z_crit, *, n_datasets, n_strata, n_units,
                 clustered):
    n = confidence.shape[0]
    g = _fitted(confidence, correct, n_strata)
    keys = jax.random.split(key, n_datasets)
    z, u = jax.vmap(lambda k: _draw(k, n, units, n_units, clustered))(keys)  # [R, N]

    def one_gap(gap):
        def one(zr, ur):
            y = _plant(correct, g, zr, ur, gap)
            stat, _, _ = scores(confidence, y, zr, units, n_strata=n_strata, n_units=n_units)
            return jnp.abs(stat) >= z_crit  # two-sided normal-limit p <= alpha

        return jnp.mean(jax.vmap(one)(z, u))

    return jax.lax.map(one_gap, gaps)


def plant_gap(
    confidence: Any, correct: Any, gap: float, *, key: Any, n_datasets: int = 1,
    clusters: Any = None, stratum_size: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """The planted datasets `minimum_detectable_gap` simulates (module docstring, steps 1-2).

    Returns:
      (routing [R, N], correct [R, N]) numpy float64.
    """
    c, y, _, n_strata = check_inputs(confidence, correct, np.zeros(len(confidence)), stratum_size)
    units, n_units = _units(clusters, len(c))
    key = _checks.check_key(key)
    with jax.enable_x64(True):
        g = _fitted(jnp.asarray(c), jnp.asarray(y), n_strata)
        keys = jax.random.split(key, _checks.check_positive_int(n_datasets, "n_datasets"))
        z, u = jax.vmap(
            lambda k: _draw(k, len(c), jnp.asarray(units), n_units, clusters is not None)
        )(keys)
        ys = jax.vmap(lambda zr, ur: _plant(jnp.asarray(y), g, zr, ur, float(gap)))(z, u)
        return np.asarray(z, np.float64), np.asarray(ys, np.float64)


def minimum_detectable_gap(
    confidence: Any,
    correct: Any,
    *,
    key: Any,
    alpha: float = 0.05,
    power: float = 0.8,
    clusters: Any = None,
    n_datasets: int = 200,
    gaps: Any = None,
    stratum_size: int = 50,
) -> MinimumDetectableGap:
    """The accuracy gap between high- and low-routing examples of equal confidence that
    `conditional_calibration_test` detects with probability `power` at level `alpha` on data with
    this confidence and correctness (module docstring).

    Args:
      confidence: [N] in [0, 1]. correct: [N] 0/1. key: PRNG key or integer seed.
      alpha: test level in (0, 1). power: target power in (0, 1).
      clusters: optional [N] integer cluster ids (planted routing then has a per-cluster level).
      n_datasets: R simulated datasets per gap. gaps: optional [E] increasing grid of gaps in (0, 1].
      stratum_size: as in the test.
    Returns:
      MinimumDetectableGap (the detectable gap, and the power curve with binomial intervals).
    """
    c, y, _, n_strata = check_inputs(confidence, correct, np.zeros(len(confidence)), stratum_size)
    units, n_units = _units(clusters, len(c))
    key = _checks.check_key(key)
    for name, v in (("alpha", alpha), ("power", power)):
        if not 0.0 < float(v) < 1.0:
            raise ValueError(f"{name}: must lie in (0, 1), got {v!r}")
    n_datasets = _checks.check_positive_int(n_datasets, "n_datasets", minimum=10)
    if gaps is None:
        acc = min(max(y.mean(), 1.0 / len(y)), 1.0 - 1.0 / len(y))
        z_sum = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
        guess = 2.0 * z_sum * np.sqrt(acc * (1 - acc) / len(y)) / np.sqrt(0.75)
        grid = np.minimum(guess * np.geomspace(0.25, 4.0, 16), 1.0)
        grid = np.unique(grid)
    else:
        grid = _checks.as_array(gaps, "gaps", ndim=1)
        if np.any(grid <= 0) or np.any(grid > 1) or np.any(np.diff(grid) <= 0):
            raise ValueError("gaps: must be increasing values in (0, 1]")
    with jax.enable_x64(True):
        pw = np.asarray(
            _power_curve(
                jnp.asarray(c), jnp.asarray(y), jnp.asarray(units), jnp.asarray(grid), key,
                float(stats.norm.ppf(1 - alpha / 2)), n_datasets=n_datasets, n_strata=n_strata, n_units=n_units,
                clustered=clusters is not None,
            ),
            np.float64,
        )
    hits = np.round(pw * n_datasets).astype(int)
    ci = stats.binomtest  # Clopper-Pearson (exact) intervals
    bounds = np.array([ci(int(k), n_datasets).proportion_ci(0.95) for k in hits])
    return MinimumDetectableGap(
        _crossing(grid, pw, float(power)), grid, pw, bounds[:, 0], bounds[:, 1], n_datasets,
        float(alpha), float(power),
    )


def _crossing(grid: np.ndarray, pw: np.ndarray, target: float) -> float:
    """First gap where the running-maximum power reaches `target` (log-linear interpolation)."""
    mono = np.maximum.accumulate(pw)
    above = np.flatnonzero(mono >= target)
    if above.size == 0:
        return float("inf")
    i = int(above[0])
    if i == 0:
        return float(grid[0])
    lo, hi = np.log(grid[i - 1]), np.log(grid[i])
    frac = (target - mono[i - 1]) / max(mono[i] - mono[i - 1], 1e-12)
    return float(np.exp(lo + frac * (hi - lo)))
