"""Calibration metrics: ECE variants, NLL, Brier, reliability curves and bootstrap intervals.

Shapes: `N` examples, `C` classes, `M` bins, `R` bootstrap resamples.

Every public metric validates its input on host (numpy) and raises `ValueError` naming the argument,
then calls a jit-compiled core (`*_jax`) that takes jax arrays and can itself be jitted, vmapped or
bootstrapped (`bootstrap_ci(ece_jax, confidence, correct, key=key)`).

Binning: the one function `routecal.stats.binning.bin_index` (float64 edges; equal-mass bins keep
tied confidences together). Public metrics bin on host in float64 *before* the float32 cast and pass
the bins to the cores (`bins=`), so a confidence lands in the same bin here and in `diagnostics`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from routecal import _checks
from routecal.stats.binning import BINNINGS as _BINNINGS
from routecal.stats.binning import bin_index, mass_bins, split_index, width_bins
from routecal.stats.bootstrap import BootstrapCI, bootstrap_ci

# re-exported: the one binning (stats.binning) and the bootstrap (stats.bootstrap)
__all__ = ["BootstrapCI", "bootstrap_ci", "mass_bins", "split_index", "width_bins"]
_NORMS = ("l1", "l2", "max")

# ------------------------------------------------------------------------------------------------
# Validation helpers
# ------------------------------------------------------------------------------------------------


def _check_confidence_correct(confidence: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    c = _checks.check_unit_interval(
        _checks.as_array(confidence, "confidence", ndim=1), "confidence"
    )
    y = _checks.check_binary(correct, "correct")
    _checks.check_same_length(confidence=c, correct=y)
    return c, y


def _check_probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _checks.check_probs(probs, "probs")
    y = _checks.check_labels(labels, p.shape[1], "labels")
    _checks.check_same_length(probs=p, labels=y)
    return p, y


def _check_bins(n_bins: Any, binning: str, n: int | None = None) -> int:
    n_bins = _checks.check_positive_int(n_bins, "n_bins")
    if binning not in _BINNINGS:
        raise ValueError(f"binning: must be one of {_BINNINGS}, got {binning!r}")
    if binning == "mass" and n is not None and n < n_bins:
        raise ValueError(f"n_bins: equal-mass binning needs at least n_bins={n_bins} examples, got {n}")
    return n_bins


def _check_norm(norm: str) -> str:
    if norm not in _NORMS:
        raise ValueError(f"norm: must be one of {_NORMS}, got {norm!r}")
    return norm


# ------------------------------------------------------------------------------------------------
# Jittable cores
# ------------------------------------------------------------------------------------------------


def _bin_sums(bins: jax.Array, values: tuple[jax.Array, ...], n_bins: int) -> tuple[jax.Array, ...]:
    """Per-bin sums of each [N] value array -> tuple of [M] arrays (one scatter-add pass)."""
    sums = jax.ops.segment_sum(jnp.stack(values, axis=1), bins, num_segments=n_bins)
    return tuple(sums[:, i] for i in range(len(values)))


class ReliabilityCurve(NamedTuple):
    """Per-bin reliability data; bins with count 0 hold 0 in mean_confidence and accuracy.

    count: [M] examples per bin; mean_confidence: [M]; accuracy: [M].
    """

    count: Any
    mean_confidence: Any
    accuracy: Any


def _bins(bins: jax.Array | None, confidence: jax.Array, n_bins: int, binning: str) -> jax.Array:
    """The given [N] bins, or the bins of `confidence` (before any dtype cast)."""
    return bin_index(jnp.asarray(confidence), n_bins, binning) if bins is None else bins


@functools.partial(jax.jit, static_argnames=("n_bins", "binning"))
def reliability_curve_jax(
    confidence: jax.Array,
    correct: jax.Array,
    n_bins: int = 15,
    binning: str = "width",
    bins: jax.Array | None = None,
) -> ReliabilityCurve:
    """Jittable reliability curve ([N], [N] -> three [M] arrays); `bins` [N] overrides binning."""
    bins = _bins(bins, confidence, n_bins, binning)
    confidence = jnp.asarray(confidence, jnp.float32)
    correct = jnp.asarray(correct, jnp.float32)
    ones = jnp.ones_like(confidence)
    cnt, sc, sy = _bin_sums(bins, (ones, confidence, correct), n_bins)
    safe = jnp.maximum(cnt, 1.0)
    return ReliabilityCurve(cnt, sc / safe, sy / safe)


@functools.partial(jax.jit, static_argnames=("n_bins", "binning", "norm"))
def ece_jax(
    confidence: jax.Array,
    correct: jax.Array,
    n_bins: int = 15,
    binning: str = "width",
    norm: str = "l1",
    bins: jax.Array | None = None,
) -> jax.Array:
    """Jittable binned calibration error (no input checks; see `ece`); `bins` [N] overrides binning.

    l1: sum_b (n_b/N) |acc_b - conf_b| (ECE, Naeini et al. 2015; Guo et al. 2017, eq. 3);
    l2: sqrt(sum_b (n_b/N) (acc_b - conf_b)^2) (RMSCE); max: max_b |acc_b - conf_b| over non-empty
    bins (MCE, Naeini et al. 2015).

    Args:
      confidence: [N] in [0, 1]; correct: [N] 0/1.
    Returns:
      scalar float32.
    """
    bins = _bins(bins, confidence, n_bins, binning)
    confidence = jnp.asarray(confidence, jnp.float32)
    correct = jnp.asarray(correct, jnp.float32)
    n = confidence.shape[0]
    ones = jnp.ones_like(confidence)
    cnt, gap_sum = _bin_sums(bins, (ones, correct - confidence), n_bins)
    gap = gap_sum / jnp.maximum(cnt, 1.0)  # acc_b - conf_b
    w = cnt / n
    if norm == "l1":
        return jnp.sum(w * jnp.abs(gap))
    if norm == "l2":
        return jnp.sqrt(jnp.sum(w * gap**2))
    return jnp.max(jnp.where(cnt > 0, jnp.abs(gap), 0.0))


def top_label(probs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[N, C] probabilities and [N] labels -> ([N] confidence = max prob, [N] float 0/1 correct)."""
    conf = jnp.max(probs, axis=1)
    correct = (jnp.argmax(probs, axis=1) == labels).astype(jnp.float32)
    return conf, correct


@functools.partial(jax.jit, static_argnames=("n_bins", "binning", "norm"))
def ece_from_probs_jax(
    probs: jax.Array, labels: jax.Array, n_bins: int = 15, binning: str = "width", norm: str = "l1"
) -> jax.Array:
    """Jittable top-label ECE from [N, C] probabilities and [N] integer labels."""
    conf, correct = top_label(probs, labels)
    return ece_jax(conf, correct, n_bins=n_bins, binning=binning, norm=norm)


@functools.partial(jax.jit, static_argnames=("n_bins",))
def classwise_ece_jax(probs: jax.Array, labels: jax.Array, n_bins: int = 15) -> jax.Array:
    """Jittable classwise ECE (Kull et al. 2019, "Beyond temperature scaling", eq. for classwise-ECE):
    mean over classes k of sum_b (n_bk/N) |mean(1[y=k]) - mean(p_k)| over equal-width bins of p_k."""
    probs = jnp.asarray(probs, jnp.float32)
    n_classes = probs.shape[1]
    onehot = (labels[:, None] == jnp.arange(n_classes)[None, :]).astype(jnp.float32)
    per_class = jax.vmap(lambda p, y: ece_jax(p, y, n_bins=n_bins), in_axes=(1, 1))(probs, onehot)
    return jnp.mean(per_class)


@functools.partial(jax.jit, static_argnames=("n_bins", "binning"))
def debiased_ece_jax(
    confidence: jax.Array,
    correct: jax.Array,
    n_bins: int = 15,
    binning: str = "mass",
    bins: jax.Array | None = None,
) -> jax.Array:
    """Jittable debiased l2 calibration error (Kumar, Liang & Ma 2019, "Verified Uncertainty
    Calibration", Sec. 5 / their `unbiased_l2_ce`):

      sq = sum_b (n_b/N) [ (acc_b - conf_b)^2 - acc_b (1 - acc_b) / (n_b - 1) ],  bins with n_b < 2 add 0;
      result = sqrt(max(sq, 0)).
    """
    bins = _bins(bins, confidence, n_bins, binning)
    confidence = jnp.asarray(confidence, jnp.float32)
    correct = jnp.asarray(correct, jnp.float32)
    n = confidence.shape[0]
    cnt, sc, sy = _bin_sums(bins, (jnp.ones_like(confidence), confidence, correct), n_bins)
    safe = jnp.maximum(cnt, 1.0)
    acc, conf = sy / safe, sc / safe
    term = (acc - conf) ** 2 - acc * (1.0 - acc) / jnp.maximum(cnt - 1.0, 1.0)
    sq = jnp.sum(jnp.where(cnt >= 2, cnt / n * term, 0.0))
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def _reflected_gaussian(t: jax.Array, f: jax.Array, sigma: jax.Array) -> jax.Array:
    """Gaussian kernel on [0, 1] reflected at both ends (Blasiok & Nakkiran 2023, Sec. 4):
    K(t, f) = sum_k phi_s(t - f - 2k) + phi_s(t + f - 2k), k in {-1, 0, 1} (enough for sigma <= 1)."""
    out = 0.0
    for k in (-1, 0, 1):
        for d in (t - f - 2 * k, t + f - 2 * k):
            out = out + jnp.exp(-0.5 * (d / sigma) ** 2)
    return out / (sigma * jnp.sqrt(2.0 * jnp.pi))


def smooth_ece_sigma_jax(
    confidence: jax.Array, correct: jax.Array, sigma: jax.Array, n_grid: int = 512
) -> jax.Array:
    """smECE_sigma = integral_0^1 |(1/N) sum_i K_sigma(t, f_i) (y_i - f_i)| dt (Blasiok & Nakkiran
    2023, Def. 4.1: kernel-smoothed residual r(t) times smoothed density, reflected Gaussian kernel).

    Residual mass is first binned onto `n_grid` cells by linear interpolation (as their `relplot`
    implementation does), then the kernel is applied cell-to-cell; midpoint rule on the grid.
    """
    confidence = jnp.asarray(confidence, jnp.float32)
    res = jnp.asarray(correct, jnp.float32) - confidence
    n = confidence.shape[0]
    g = jnp.linspace(0.0, 1.0, n_grid)  # grid nodes
    pos = confidence * (n_grid - 1)
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, n_grid - 2)
    frac = pos - lo
    mass = jnp.zeros((n_grid,), jnp.float32)
    mass = mass.at[lo].add(res * (1.0 - frac)).at[lo + 1].add(res * frac) / n
    t = (jnp.arange(n_grid) + 0.5) / n_grid  # integration midpoints
    kmat = _reflected_gaussian(t[:, None], g[None, :], sigma)
    return jnp.mean(jnp.abs(kmat @ mass))


@functools.partial(jax.jit, static_argnames=("n_grid", "n_iter"))
def smooth_ece_jax(
    confidence: jax.Array, correct: jax.Array, n_grid: int = 512, n_iter: int = 30
) -> jax.Array:
    """Jittable smooth ECE: smECE_{sigma*} at the fixed point sigma* = smECE_{sigma*} (Blasiok &
    Nakkiran 2023, "Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing",
    arXiv:2309.12236, Sec. 4; smECE_sigma decreases in sigma, so bisection on [0, 1] finds it)."""

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        above = smooth_ece_sigma_jax(confidence, correct, mid, n_grid) > mid
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, n_iter, body, (jnp.float32(1e-4), jnp.float32(1.0)))
    return 0.5 * (lo + hi)


@jax.jit
def nll_jax(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean negative log-likelihood -mean_i log p_i[y_i]; probabilities floored at 1e-12."""
    p = jnp.take_along_axis(jnp.asarray(probs, jnp.float32), labels[:, None], axis=1)[:, 0]
    return -jnp.mean(jnp.log(jnp.maximum(p, 1e-12)))


@jax.jit
def brier_jax(probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Multiclass Brier score (Brier 1950): mean_i sum_k (p_ik - 1[y_i = k])^2."""
    probs = jnp.asarray(probs, jnp.float32)
    onehot = labels[:, None] == jnp.arange(probs.shape[1])[None, :]
    return jnp.mean(jnp.sum((probs - onehot.astype(jnp.float32)) ** 2, axis=1))


# ------------------------------------------------------------------------------------------------
# Public, validated metrics
# ------------------------------------------------------------------------------------------------


def ece(
    confidence: Any,
    correct: Any,
    n_bins: int = 15,
    binning: str = "width",
    norm: str = "l1",
) -> float:
    """Top-label binned calibration error.

    Equal-width bin b holds confidence in (b/M, (b+1)/M]; confidence 0 is in bin 0 and 1 in bin
    M - 1 (float64 edges). Equal-mass bins: sorted confidences split as numpy.array_split, a tie
    block kept whole in the bin of its first position (`stats.binning`).

    Args:
      confidence: [N] in [0, 1]. correct: [N] 0/1 or bool.
      n_bins: M. binning: "width" or "mass".
      norm: "l1" (ECE), "l2" (RMSCE) or "max" (MCE, over non-empty bins).
    Returns:
      the calibration error as a float.
    Raises:
      ValueError: naming the argument on NaN/inf, values outside [0, 1], non-binary `correct`,
        mismatched lengths or unknown options.
    """
    c, y = _check_confidence_correct(confidence, correct)
    n_bins = _check_bins(n_bins, binning, len(c))
    _check_norm(norm)
    bins = jnp.asarray(bin_index(c, n_bins, binning))  # float64 edges, before the float32 cast
    return float(
        ece_jax(jnp.asarray(c), jnp.asarray(y), n_bins=n_bins, binning=binning, norm=norm, bins=bins)
    )


def ece_from_probs(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE (equal-width bins) from [N, C] probabilities and [N] integer labels."""
    p, y = _check_probs_labels(probs, labels)
    n_bins = _check_bins(n_bins, "width")
    return float(ece_from_probs_jax(jnp.asarray(p), jnp.asarray(y), n_bins=n_bins))


def classwise_ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al. 2019): mean over classes of the equal-width ECE of p_k vs 1[y=k].

    Args:
      probs: [N, C] rows summing to 1. labels: [N] ints in [0, C).
    """
    p, y = _check_probs_labels(probs, labels)
    n_bins = _check_bins(n_bins, "width")
    return float(classwise_ece_jax(jnp.asarray(p), jnp.asarray(y), n_bins=n_bins))


def debiased_ece(confidence: Any, correct: Any, n_bins: int = 15, binning: str = "mass") -> float:
    """Debiased l2 calibration error of Kumar et al. (2019); see `debiased_ece_jax`.

    Args:
      confidence: [N] in [0, 1]. correct: [N] 0/1. n_bins: M. binning: "mass" (their default) or
        "width".
    """
    c, y = _check_confidence_correct(confidence, correct)
    n_bins = _check_bins(n_bins, binning, len(c))
    bins = jnp.asarray(bin_index(c, n_bins, binning))
    return float(
        debiased_ece_jax(jnp.asarray(c), jnp.asarray(y), n_bins=n_bins, binning=binning, bins=bins)
    )


def smooth_ece(confidence: Any, correct: Any, n_grid: int = 512) -> float:
    """Smooth ECE of Blasiok & Nakkiran (2023) at its self-consistent bandwidth sigma* = smECE.

    Args:
      confidence: [N] in [0, 1]. correct: [N] 0/1. n_grid: grid resolution of the kernel smoother.
    """
    c, y = _check_confidence_correct(confidence, correct)
    n_grid = _checks.check_positive_int(n_grid, "n_grid", minimum=16)
    return float(smooth_ece_jax(jnp.asarray(c), jnp.asarray(y), n_grid=n_grid))


def nll(probs: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the labels ([N, C] probs, [N] labels)."""
    p, y = _check_probs_labels(probs, labels)
    return float(nll_jax(jnp.asarray(p), jnp.asarray(y)))


def brier(probs: Any, labels: Any) -> float:
    """Multiclass Brier score mean_i sum_k (p_ik - 1[y_i = k])^2 ([N, C] probs, [N] labels)."""
    p, y = _check_probs_labels(probs, labels)
    return float(brier_jax(jnp.asarray(p), jnp.asarray(y)))


def reliability_curve(
    confidence: Any, correct: Any, n_bins: int = 15, binning: str = "width"
) -> ReliabilityCurve:
    """Reliability-diagram data: per-bin count, mean confidence and accuracy (numpy [M] arrays).

    Empty bins have count 0 and hold 0 in mean_confidence and accuracy (mask them with count > 0).
    """
    c, y = _check_confidence_correct(confidence, correct)
    n_bins = _check_bins(n_bins, binning, len(c))
    bins = jnp.asarray(bin_index(c, n_bins, binning))
    out = reliability_curve_jax(
        jnp.asarray(c), jnp.asarray(y), n_bins=n_bins, binning=binning, bins=bins
    )
    return ReliabilityCurve(
        np.asarray(out.count).astype(np.int64),
        np.asarray(out.mean_confidence, np.float64),
        np.asarray(out.accuracy, np.float64),
    )
