"""Simulated (confidence, correct, routing) data for checking the diagnostic suite's own validity.

Shapes: `D` datasets, `N` examples each, `K` clusters of `S` tokens (N = K * S).

Besides the model below (`simulate`), `design` draws the nulls real traces have (issue 11), each
with an optional planted effect (`effect = 0`: the null):

* ``"confounded"``: c ~ U(conf_low, conf_high), P(correct | c) = clip(0.75 + 2 (c - 0.8)) (the
  miscalibration P(correct | c) - c varies with c), routing = c + N(0, 0.01^2): routing tracks
  confidence, and inside a confidence bin the high-routing group has higher confidence.
  Effect: + effect * sign(routing - c) (on the routing's own noise).
* ``"binary"`` / ``"constant"``: c ~ U, calibrated (P(correct | c) = c), routing ~ Bernoulli(1/2)
  or 0, independent of everything; rows stored correct-first (sorted by correctness, stable).
  Effect (binary only): + effect * (2 routing - 1).
* ``"clustered"``: K sequences of S tokens; c ~ U per token, routing = a_k + N(0, 0.1^2) with a
  per-sequence level a_k ~ N(0, 1), P(correct) = clip(c + o_k) with a per-sequence offset
  o_k ~ N(0, 0.2^2) independent of a_k. Returns the sequence ids as `clusters`.
  Effect: + effect * sign(routing) (mostly *between* sequences: routing is dominated by a_k).
  ``"clustered_within"``: the same data, the effect planted *within* sequences: + effect *
  sign(routing - a_k) (the sign of the routing's own token noise); ``"clustered_vshape"``: a
  V-shape within sequences, + effect (1 - 2 |2 Phi(z) - 1|) with z = (routing - a_k) / 0.1.
* ``"sign"``: c ~ U, routing ~ N(0, 1), P(correct) = clip(c + effect * sign(routing)) (the issue's
  planted effect; at effect = 0 the exchangeable null).

Issue 22's designs:

* ``"pareto"``: as "clustered" with n / cluster_size clusters whose sizes are Pareto(1.1)
  proportions (a few huge clusters, many tiny ones; empty ones drop out).
* ``"tied"`` / ``"tied_step"``: confidence in the 5 `TIED_LEVELS` with shares `TIED_SHARES`
  (20/20/320/320/320 at N = 1000), P(correct) = `TIED_ACCURACY` of the level (not linear in c),
  routing = c ("tied") or 1[c >= 0.6] ("tied_step"). Effect: + effect * sign(z) on a hidden z.
* ``"vshape"``: routing r = 2 Phi(z) - 1 ~ U(-1, 1), P = clip(c + effect (1 - 2|r|)).
* ``"signflip"``: routing ~ N(0, 1), P = clip(c + effect sign(r) sign(c - 0.6)).
* ``"track_square"``, ``"track_sine"``, ``"track_exp"``: routing a non-linear function of c
  ((c - 0.7)^2, sin(12 c), exp(6 c)) plus N(0, 0.001^2) noise, with the "confounded" design's
  miscalibration; ``"piled"``: c = 1 - (1 - conf_low) U^6 (piled near 1), routing = -log(1 - c)
  + N(0, 0.01^2). Nulls on which the paper's within-bin test is confounded.

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
    _check_knobs(conf_low, conf_high, effect=effect, rho=rho, miscalibration=miscalibration)
    out = simulate_jax(
        key, n, n_datasets, float(effect), float(rho), float(miscalibration), float(conf_low),
        float(conf_high),
    )
    # float64 on host: float32 confidences are exact in float64, so bins agree on host and device
    return SimulatedData(*(np.asarray(o, np.float64) for o in out))


def _check_knobs(conf_low: float, conf_high: float, **finite: float) -> None:
    for name, v in finite.items():
        if not np.isfinite(v):
            raise ValueError(f"{name}: must be finite, got {v!r}")
    if not 0.0 <= conf_low < conf_high <= 1.0:
        raise ValueError(
            f"conf_low, conf_high: need 0 <= conf_low < conf_high <= 1, got {conf_low}, {conf_high}"
        )


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


DESIGNS = ("confounded", "binary", "constant", "clustered", "sign", "pareto", "tied", "tied_step",
           "vshape", "signflip", "track_square", "track_sine", "track_exp", "piled",
           "clustered_within", "clustered_vshape")
# the tied designs: 5 confidence levels holding 2%, 2%, 32%, 32%, 32% of the examples (issue 22:
# counts 20/20/320/320/320 at N = 1000) with a miscalibration that is not linear in the level
TIED_LEVELS = (0.3, 0.45, 0.6, 0.75, 0.9)
TIED_SHARES = (0.02, 0.02, 0.32, 0.32, 0.32)
TIED_ACCURACY = (0.55, 0.2, 0.7, 0.5, 0.95)


class DesignData(NamedTuple):
    """confidence, correct (0/1), routing: [D, N] float64; clusters: [D, N] int32 sequence ids
    (each example its own cluster except in the clustered and Pareto designs)."""

    confidence: Any
    correct: Any
    routing: Any
    clusters: Any


@functools.partial(jax.jit, static_argnames=("design", "n", "n_datasets", "cluster_size"))
def design_jax(
    key: jax.Array,
    design: str,
    n: int,
    n_datasets: int,
    effect: float | jax.Array = 0.0,
    conf_low: float | jax.Array = 0.3,
    conf_high: float | jax.Array = 1.0,
    cluster_size: int = 30,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Jittable batched draw of one of `DESIGNS` (module docstring), vmapped over `split(key, D)`.

    Returns:
      (confidence, correct, routing) [D, N] float32 and clusters [D, N] int32.
    """

    def one(k):
        kc, kz, ky, ka, ko = jax.random.split(k, 5)
        c = jax.random.uniform(kc, (n,), minval=conf_low, maxval=conf_high)
        z = jax.random.normal(kz, (n,))
        ids = jnp.arange(n, dtype=jnp.int32)
        if design == "confounded":
            routing = c + 0.01 * z
            p = 0.75 + 2.0 * (c - 0.8) + effect * jnp.sign(z)
        elif design in ("binary", "constant"):
            b = (z > 0).astype(jnp.float32)
            routing = b if design == "binary" else jnp.zeros_like(c)
            p = c + (effect * (2.0 * b - 1.0) if design == "binary" else 0.0)
        elif design.startswith("clustered"):
            ids = ids // cluster_size
            n_clusters = -(-n // cluster_size)
            level = jax.random.normal(ka, (n_clusters,))[ids]
            offset = 0.2 * jax.random.normal(ko, (n_clusters,))[ids]
            routing = level + 0.1 * z
            shape = {"clustered": jnp.sign(routing), "clustered_within": jnp.sign(z),
                     "clustered_vshape": 1.0 - 2.0 * jnp.abs(2.0 * ndtr(z) - 1.0)}[design]
            p = c + offset + effect * shape
        elif design == "pareto":  # K = n / cluster_size clusters with Pareto(1.1) sizes
            n_clusters = max(n // cluster_size, 2)
            size = jax.random.uniform(ka, (n_clusters,), minval=1e-6) ** (-1.0 / 1.1)
            edges = jnp.cumsum(size) / jnp.sum(size) * n
            ids = jnp.minimum(jnp.searchsorted(edges, ids.astype(jnp.float32), side="right"),
                              n_clusters - 1).astype(jnp.int32)
            level = jax.random.normal(jax.random.fold_in(ka, 1), (n_clusters,))[ids]
            offset = 0.2 * jax.random.normal(ko, (n_clusters,))[ids]
            routing = level + 0.1 * z
            p = c + offset + effect * jnp.sign(routing)
        elif design in ("tied", "tied_step"):
            edges = jnp.cumsum(jnp.asarray(TIED_SHARES)) * n
            lvl = jnp.minimum(jnp.searchsorted(edges, ids.astype(jnp.float32), side="right"), 4)
            c = jnp.asarray(TIED_LEVELS, jnp.float32)[lvl]
            routing = c if design == "tied" else (c >= 0.6).astype(jnp.float32)
            p = jnp.asarray(TIED_ACCURACY)[lvl] + effect * jnp.sign(z)
        elif design == "vshape":  # r ~ U(-1, 1): P = c + effect (1 - 2 |r|)
            routing = 2.0 * ndtr(z) - 1.0
            p = c + effect * (1.0 - 2.0 * jnp.abs(routing))
        elif design == "signflip":
            routing = z
            p = c + effect * jnp.sign(z) * jnp.sign(c - 0.6)
        elif design.startswith("track") or design == "piled":
            if design == "piled":  # confidence piled near 1, routing its log-odds
                c = 1.0 - (1.0 - conf_low) * jax.random.uniform(kc, (n,)) ** 6
                routing = -jnp.log1p(-jnp.minimum(c, 1.0 - 1e-6)) + 0.01 * z
            else:
                f = {"track_square": lambda x: (x - 0.7) ** 2,
                     "track_sine": lambda x: jnp.sin(12.0 * x),
                     "track_exp": lambda x: jnp.exp(6.0 * x)}[design]
                routing = f(c) + 0.001 * z
            p = 0.75 + 2.0 * (c - 0.8) + effect * jnp.sign(z)
        else:  # "sign"
            routing = z
            p = c + effect * jnp.sign(z)
        correct = (jax.random.uniform(ky, (n,)) < jnp.clip(p, 0.0, 1.0)).astype(jnp.float32)
        if design in ("binary", "constant"):  # stored correct-first (stable)
            order = jnp.argsort(-correct, stable=True)
            c, correct, routing = c[order], correct[order], routing[order]
        return c, correct, routing, ids

    return jax.vmap(one)(jax.random.split(key, n_datasets))


def design(
    key: jax.Array,
    name: str,
    n: int,
    *,
    n_datasets: int = 1,
    effect: float = 0.0,
    conf_low: float = 0.3,
    conf_high: float = 1.0,
    cluster_size: int = 30,
) -> DesignData:
    """Draws `n_datasets` datasets of `n` examples from design `name` (module docstring).

    Args:
      key: jax PRNG key (or an integer seed). name: one of `DESIGNS`. n: N.
      effect: planted effect (0 = the null). cluster_size: S tokens per sequence ("clustered",
        "clustered_within", "clustered_vshape", "pareto").
    Returns:
      DesignData of [D, N] numpy arrays (float64 confidence/correct/routing, int32 clusters).
    """
    key = _checks.check_key(key)
    if name not in DESIGNS:
        raise ValueError(f"name: must be one of {DESIGNS}, got {name!r}")
    n = _checks.check_positive_int(n, "n")
    n_datasets = _checks.check_positive_int(n_datasets, "n_datasets")
    cluster_size = _checks.check_positive_int(cluster_size, "cluster_size")
    _check_knobs(conf_low, conf_high, effect=effect)
    if name == "constant" and effect != 0:
        raise ValueError("effect: constant routing carries no effect; use 'binary'")
    c, y, r, ids = design_jax(
        key, name, n, n_datasets, float(effect), float(conf_low), float(conf_high), cluster_size
    )
    f64 = functools.partial(np.asarray, dtype=np.float64)
    return DesignData(f64(c), f64(y), f64(r), np.asarray(ids, np.int32))
