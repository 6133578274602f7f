"""Simulated (confidence, correct, routing) data for checking the diagnostic suite's own validity.

Shapes: `D` datasets, `N` examples each.

Generative model (every draw independent across examples and datasets):

    confidence c ~ Uniform(conf_low, conf_high)
    z ~ Normal(0, 1)                                   (the routing feature's own noise)
    routing   = rho * (c - mean c) / sd(c) + z         (rho: routing may track confidence)
    P(correct | c, z) = clip(c - miscalibration + effect * (2 Phi(z) - 1), 0, 1)

* `effect = 0` is the null: routing is independent of correctness given confidence (exactly
  exchangeable within a confidence bin when also `rho = 0`, so the within-bin permutation test is
  exactly valid there).
* `effect > 0` plants a routing-dependent calibration gap inside every confidence bin:
  2 Phi(z) - 1 is Uniform(-1, 1), so with tertiles the top group's accuracy exceeds the bottom
  group's by about (2/3 - (-2/3)) * effect = 4/3 * effect (less where the clip binds), and the
  expected weighted gap is about 4/3 * effect.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from routecal import _checks


class SimulatedData(NamedTuple):
    """confidence, correct (0/1 float), routing: [D, N] numpy arrays."""

    confidence: Any
    correct: Any
    routing: Any


@functools.partial(jax.jit, static_argnames=("n", "n_datasets"))
def simulate_jax(
    key: jax.Array,
    n: int,
    n_datasets: int,
    effect: float | jax.Array = 0.0,
    rho: float | jax.Array = 0.0,
    miscalibration: float | jax.Array = 0.0,
    conf_low: float | jax.Array = 0.3,
    conf_high: float | jax.Array = 1.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Jittable batched generator: D datasets of N examples, vmapped over `split(key, D)`.

    Returns:
      (confidence [D, N] float32, correct [D, N] float32 0/1, routing [D, N] float32).
    """

    def one(k):
        kc, kz, ky = jax.random.split(k, 3)
        c = jax.random.uniform(kc, (n,), minval=conf_low, maxval=conf_high)
        z = jax.random.normal(kz, (n,))
        c_std = (c - jnp.mean(c)) / (jnp.std(c) + 1e-12)
        routing = rho * c_std + z
        p = jnp.clip(c - miscalibration + effect * (2.0 * ndtr(z) - 1.0), 0.0, 1.0)
        correct = (jax.random.uniform(ky, (n,)) < p).astype(jnp.float32)
        return c, correct, routing

    return jax.vmap(one)(jax.random.split(key, n_datasets))


def simulate(
    key: jax.Array,
    n: int,
    *,
    n_datasets: int = 1,
    effect: float = 0.0,
    rho: float = 0.0,
    miscalibration: float = 0.0,
    conf_low: float = 0.3,
    conf_high: float = 1.0,
) -> SimulatedData:
    """Draws `n_datasets` datasets of `n` examples from the model in the module docstring.

    Args:
      key: jax PRNG key. n: N >= 1. n_datasets: D >= 1.
      effect: planted routing effect (0 = null). rho: routing-confidence correlation knob.
      miscalibration: overconfidence shift (independent of routing).
      conf_low, conf_high: range of the confidence, inside [0, 1].
    Returns:
      SimulatedData of [D, N] numpy arrays.
    """
    key = _checks.check_key(key)
    n = _checks.check_positive_int(n, "n")
    n_datasets = _checks.check_positive_int(n_datasets, "n_datasets")
    for name, v in (("effect", effect), ("rho", rho), ("miscalibration", miscalibration)):
        if not np.isfinite(v):
            raise ValueError(f"{name}: must be finite, got {v!r}")
    if not 0.0 <= conf_low < conf_high <= 1.0:
        raise ValueError(
            f"conf_low, conf_high: need 0 <= conf_low < conf_high <= 1, got {conf_low}, {conf_high}"
        )
    out = simulate_jax(
        key, n, n_datasets, float(effect), float(rho), float(miscalibration), float(conf_low),
        float(conf_high),
    )
    # float64 on host: float32 confidences are exact in float64, so bins agree on host and device
    return SimulatedData(*(np.asarray(o, np.float64) for o in out))


def null_data(key: jax.Array, n: int, *, n_datasets: int = 1, **kwargs: Any) -> SimulatedData:
    """Null datasets: routing independent of correctness given confidence (`effect = 0`)."""
    return simulate(key, n, n_datasets=n_datasets, effect=0.0, **kwargs)


def planted_effect(
    key: jax.Array, n: int, effect: float, *, n_datasets: int = 1, **kwargs: Any
) -> SimulatedData:
    """Datasets whose correctness depends on routing within each confidence bin (size `effect`)."""
    if effect == 0:
        raise ValueError("effect: a planted effect must be non-zero (use null_data for the null)")
    return simulate(key, n, n_datasets=n_datasets, effect=effect, **kwargs)
