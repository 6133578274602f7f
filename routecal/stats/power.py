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
3. The conditional test's statistic is computed (all E x R datasets in one vmapped computation)
   and compared with the test's own sign-flip null (issue 22: the normal limit claimed power 0.8
   at K = 5 clusters where the test cannot reject at all): with K <= 12 units all 2^K sign
   patterns (the exact randomisation p-value: a sign-flip null has power 0 at K <= 5), with
   K <= 256 a fixed set of 499 random flips, beyond that the multiplier null's Gaussian limit with
   covariance w^T w (exact for the monotone test's one column: N(0, 1)); with the re-studentised
   null (as in the test: on request) every pattern's
   statistic is recomputed on its wild sample (`restudentised.statistic`); with the within-cluster
   t reference (as in the test: 2 to 12 clusters by default, `within_clusters`) the simulated p is
   its t_{K-1} p (the omnibus test: Bonferroni over its columns). `tests/stats/test_power.py` and
   benchmarks/validity.py check the stated power against the full test.
   With `p_value="randomized"` the simulated p is the randomised one (`ci.randomized_p`).

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
from routecal.stats import cluster_inference as ci
from routecal.stats import restudentised as rs
from routecal.stats import within_clusters as wc
from routecal.stats.conditional import check_inputs, score_matrix
from routecal.stats.conditional_omnibus import check_alternative


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


def _fitted(confidence, correct, n_strata, stratum_size):
    """P(correct | c) fitted by the test's within-stratum fit (pooled), clipped to (0, 1)."""
    strat = ci.strata(confidence, n_strata, stratum_size)
    n_seg = n_strata + confidence.shape[0]
    fit = ci.crossfit(strat, None, confidence, n_seg=n_seg, n_units=None)
    y_res = ci.residuals(fit, correct[:, None], n_seg)[:, 0]
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


ENUMERATE_K = 12  # up to 2^12 sign patterns: the exact randomisation p-value
FLIP_K = 256  # up to 256 units: B_FLIPS random sign flips; beyond: the Gaussian limit
B_FLIPS = 499
BATCH_ELEMENTS = 2**24  # simulated datasets per vmapped batch: this many examples x columns


def _reference(key, n_units: int, n_cols: int):
    """The null the simulated test compares with: [M, K] signs (exact or random), or for large K
    [M, J] standard normals (the multiplier null's limit, coloured per dataset in `_rejects`)."""
    if n_units <= ENUMERATE_K:
        pats = (jnp.arange(2**n_units)[:, None] >> jnp.arange(n_units)[None, :]) & 1
        return 1.0 - 2.0 * pats.astype(jnp.float64)
    if n_units <= FLIP_K:
        return jax.random.rademacher(key, (B_FLIPS, n_units), jnp.float64)
    return jax.random.normal(key, (4 * B_FLIPS, n_cols), jnp.float64)


def _rejects(z, w, ref, alpha, alternative, u=None):
    """Does the test reject at `alpha`? z [J], w [K, J] (or the re-studentised null's
    `rs.Parts`), ref from `_reference`; u: the randomised p's uniform (`p_value="randomized"`),
    None for the default p."""
    if isinstance(w, rs.Parts):
        k = w.a.shape[0]
        null = rs.statistic(ref < 0, w)  # [M, J]
    elif (k := w.shape[0]) <= FLIP_K:
        null = ref @ w  # [M, J]
    else:  # Gaussian limit: Cov(Z*) = w^T w
        null = ref @ jnp.linalg.cholesky(w.T @ w + 1e-12 * jnp.eye(w.shape[1])).T
    if alternative == "monotone":
        stat, null = jnp.abs(z[0]), jnp.abs(null[:, 0])
    else:
        stat, null = jnp.max(jnp.abs(z)), jnp.max(jnp.abs(null), axis=1)
    if u is not None:  # `ci.randomized_p`; with all 2^K patterns the identity is among them
        if k <= ENUMERATE_K:
            tail = ci.randomized_p(stat, null, u) * (1.0 + null.shape[0])
            return (tail - u) / null.shape[0] <= alpha
        return ci.randomized_p(stat, null, u) <= alpha
    hits = jnp.sum(null >= stat * (1 - 1e-10) - 1e-15)
    # exact enumeration counts the identity itself; random references add it, as the test does
    p = hits / null.shape[0] if k <= ENUMERATE_K else (1.0 + hits) / (1.0 + null.shape[0])
    return jnp.maximum(p, 2.0 ** (1 - k)) <= alpha  # the test's floor (`floored_p`)


@functools.partial(
    jax.jit, static_argnames=("n_datasets", "n_strata", "n_units", "clustered", "stratum_size",
                              "alternative", "p_value", "reference")
)
def _power_curve(confidence, correct, units, gaps, key, alpha, *, n_datasets, n_strata, n_units,
                 clustered, stratum_size, alternative, p_value="conservative", reference="fixed"):
    n = confidence.shape[0]
    g = _fitted(confidence, correct, n_strata, stratum_size)
    key, kref = jax.random.split(key)
    keys = jax.random.split(key, n_datasets)
    n_cols = 1 if alternative == "monotone" else 4
    ref = _reference(kref, n_units, n_cols)
    # datasets vmapped in batches of about BATCH_ELEMENTS (examples x columns): at 200k tokens
    # the omnibus scores of 200 datasets at once need ~16 GB; same keys, same draws
    batch = max(1, min(n_datasets, BATCH_ELEMENTS // (n * n_cols)))

    def one_gap(gap):
        def one(k):
            zr, ur = _draw(k, n, units, n_units, clustered)  # the same draw for every gap
            y = _plant(correct, g, zr, ur, gap)
            stat, w, _ = score_matrix(confidence, y, zr, units, n_strata=n_strata,
                                      n_units=n_units, stratum_size=stratum_size,
                                      alternative=alternative, reference=reference)
            if reference == "within":  # the t reference: no sign-flip set
                return wc.p_value(w, units, n_units) <= alpha
            u = ci.tie_uniform(k) if p_value == "randomized" else None
            return _rejects(stat, w, ref, alpha, alternative, u)

        return jnp.mean(jax.lax.map(one, keys, batch_size=batch))

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
    units, n_units = ci.cluster_units(clusters, len(c))
    key = _checks.check_key(key)
    with jax.enable_x64(True):
        g = _fitted(jnp.asarray(c), jnp.asarray(y), n_strata, stratum_size)
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
    alternative: str = "monotone",
    p_value: str = "conservative",
    reference: str = "auto",
) -> MinimumDetectableGap:
    """The accuracy gap between high- and low-routing examples of equal confidence that
    `conditional_calibration_test` detects with probability `power` at level `alpha` on data with
    this confidence and correctness (module docstring).

    Args:
      confidence: [N] in [0, 1]. correct: [N] 0/1. key: PRNG key or integer seed.
      alpha: test level in (0, 1). power: target power in (0, 1).
      clusters: optional [N] integer cluster ids (planted routing then has a per-cluster level).
      n_datasets: R simulated datasets per gap. gaps: optional [E] increasing grid of gaps in (0, 1].
      stratum_size, alternative, p_value, reference: as in the test (the simulated test is the one
        asked for).
    Returns:
      MinimumDetectableGap (the detectable gap, and the power curve with binomial intervals).
    """
    c, y, _, n_strata = check_inputs(confidence, correct, np.zeros(len(confidence)), stratum_size)
    units, n_units = ci.cluster_units(clusters, len(c))
    alternative, p_value = check_alternative(alternative), ci.check_p_value(p_value)
    reference = rs.resolve(reference, n_units, alternative, len(c))
    key = _checks.check_key(key)
    for name, v in (("alpha", alpha), ("power", power)):
        if not 0.0 < float(v) < 1.0:
            raise ValueError(f"{name}: must lie in (0, 1), got {v!r}")
    n_datasets = _checks.check_positive_int(n_datasets, "n_datasets", minimum=10)
    if gaps is None:
        acc = min(max(y.mean(), 1.0 / len(y)), 1.0 - 1.0 / len(y))
        z_sum = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
        guess = 2.0 * z_sum * np.sqrt(acc * (1 - acc) / len(y)) / np.sqrt(0.75)
        if clusters is None:
            grid = np.minimum(guess * np.geomspace(0.25, 4.0, 16), 1.0)
        else:  # clustered routing and labels: a design effect of up to 16^2
            grid = np.minimum(guess * np.geomspace(0.25, 16.0, 20), 1.0)
        grid = np.unique(grid)
    else:
        grid = _checks.as_array(gaps, "gaps", ndim=1)
        if np.any(grid <= 0) or np.any(grid > 1) or np.any(np.diff(grid) <= 0):
            raise ValueError("gaps: must be increasing values in (0, 1]")
    with jax.enable_x64(True):
        pw = np.asarray(
            _power_curve(
                jnp.asarray(c), jnp.asarray(y), jnp.asarray(units), jnp.asarray(grid), key,
                float(alpha), n_datasets=n_datasets, n_strata=n_strata, n_units=n_units,
                clustered=clusters is not None, stratum_size=stratum_size,
                alternative=alternative, p_value=p_value, reference=reference,
            ),
            np.float64,
        )
    hits = np.round(pw * n_datasets).astype(int)
    bounds = np.array([stats.binomtest(int(k), n_datasets).proportion_ci(0.95)  # Clopper-Pearson
                       for k in hits])
    return MinimumDetectableGap(
        crossing_gap(grid, pw, float(power)), grid, pw, bounds[:, 0], bounds[:, 1], n_datasets,
        float(alpha), float(power),
    )


def crossing_gap(grid: np.ndarray, pw: np.ndarray, target: float) -> float:
    """First gap where the running-maximum power reaches `target`, linear in log gap between
    grid points; inf if it never does. The one detectable-gap rule (the study's within-bin power
    reads its curve with it too).

    Args:
      grid: [G] increasing gaps. pw: [G] power at each gap. target: the power to reach.
    """
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
