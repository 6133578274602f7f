"""Percentile bootstrap intervals for any jax-traceable metric (`calibration.bootstrap_ci`).

Shapes: `N` examples, `R` bootstrap resamples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from routecal import _checks


class BootstrapCI(NamedTuple):
    """estimate: metric on the full data; low/high: percentile interval; samples: [R] resampled."""

    estimate: float
    low: float
    high: float
    samples: np.ndarray


def bootstrap_ci(
    metric_fn: Callable[..., jax.Array],
    *arrays: Any,
    key: jax.Array,
    n_resamples: int = 1000,
    level: float = 0.95,
    batch_size: int = 256,
) -> BootstrapCI:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) for any jax-traceable metric.

    Resamples the N examples with replacement; the `n_resamples` evaluations run vmapped in chunks
    of `batch_size` (memory bounded whatever R).

    Args:
      metric_fn: jax-traceable function of the arrays returning a scalar, e.g. `ece_jax`,
        `functools.partial(ece_jax, n_bins=10)`, `nll_jax`.
      *arrays: arrays sharing their leading dimension N (numpy or jax).
      key: a jax PRNG key.
      n_resamples: R >= 1. level: coverage in (0, 1).
    Returns:
      BootstrapCI(estimate, low, high, samples [R]).
    """
    if not arrays:
        raise ValueError("arrays: give at least one array to resample")
    key = _checks.check_key(key)
    n_resamples = _checks.check_positive_int(n_resamples, "n_resamples")
    batch_size = _checks.check_positive_int(batch_size, "batch_size")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level: must lie in (0, 1), got {level!r}")
    checked = []
    for i, a in enumerate(arrays):
        arr = _checks.as_array(a, f"arrays[{i}]", dtype=None)
        if arr.ndim == 0:
            raise ValueError(f"arrays[{i}]: needs a leading example dimension")
        checked.append(jnp.asarray(arr))
    _checks.check_same_length(**{f"arrays[{i}]": a for i, a in enumerate(checked)})
    n = checked[0].shape[0]

    @jax.jit
    def run(key, *xs):
        def one(k):
            idx = jax.random.randint(k, (n,), 0, n)
            return metric_fn(*(x[idx] for x in xs))

        keys = jax.random.split(key, n_resamples)
        return jax.lax.map(one, keys, batch_size=min(batch_size, n_resamples))

    samples = np.asarray(run(key, *checked), np.float64)
    estimate = float(metric_fn(*checked))
    alpha = 1.0 - float(level)
    low, high = np.quantile(samples, [alpha / 2, 1.0 - alpha / 2])
    return BootstrapCI(estimate, float(low), float(high), samples)
