"""SWAG router (Maddox, Garipov, Izmailov, Vetrov & Wilson 2019, "A Simple Baseline for Bayesian
Uncertainty in Deep Learning"): a Gaussian over the router weights W_r [D, E] fitted to the
SGD trajectory of a retrofit, sampled S times at inference.

Moments (Maddox et al. 2019, Sec. 4, Algorithm 1), over the n collected iterates theta_i:
  theta_bar = (1/n) sum_i theta_i,   theta2_bar = (1/n) sum_i theta_i^2,
  Sigma_diag = theta2_bar - theta_bar^2,
  D_hat = [theta_i - theta_bar_i]  for the last K iterates (theta_bar_i the running mean at i);
sample (their eq. for SWAG with diagonal plus low-rank covariance):
  theta~ = theta_bar + (1/sqrt 2) Sigma_diag^(1/2) z1 + (1/sqrt(2 (K - 1))) D_hat z2,
  z1 ~ N(0, I_P), z2 ~ N(0, I_K).
Inference: s = (1/S) sum_s softmax(u W_s), then top-k (the experts run once); in training (and
before moments exist) the router is the deterministic `router/proj`. One weight sample serves
every token of a call, so an item's options share it (common random numbers by construction).

`swag_init` / `swag_update` are pure functions on a NamedTuple (the optax state shape);
`SwagCollector` reads the `router/proj` kernel of every SWAG router after each step and
`install` writes the moments into the routers' `vrouter` variables; `collect_from(model, steps)`
gives its step callback (from step `vmoer_swag_start * steps` on), the one
`training.router_fit.fit_swag` passes to every source's fitting loop.

Traces: `router_logit_var` [B, T] = mean over experts of the variance of the S sampled logits.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from routecal.models import moe
from routecal.models.routers import common

Array = jax.Array


class SwagMoment(nnx.Variable):
    """A SWAG moment (not an `nnx.Param`: no optimiser or retrofit copy touches it)."""


class SwagState(NamedTuple):
    """Running SWAG moments of one weight array theta of shape P.

    Attributes: n (iterates seen), mean [P], sq_mean [P], dev [K, P] (deviations theta_i -
    theta_bar_i of the last min(n, K) iterates, oldest first; zero rows before).
    """

    n: int
    mean: np.ndarray
    sq_mean: np.ndarray
    dev: np.ndarray


def swag_init(shape: tuple[int, ...], rank: int) -> SwagState:
    """Empty moments for weights of `shape` with a rank-`rank` deviation matrix."""
    if rank < 2:
        raise ValueError(f"vmoer_swag_rank: must be >= 2 (1 / sqrt(K - 1)), got {rank}")
    z = np.zeros(shape, np.float64)
    return SwagState(0, z, z.copy(), np.zeros((rank, *shape), np.float64))


def swag_update(state: SwagState, theta: Any) -> SwagState:
    """One iterate: running first and second moments and the newest deviation column."""
    t = np.asarray(theta, np.float64)
    n = state.n + 1
    mean = state.mean + (t - state.mean) / n
    sq_mean = state.sq_mean + (t * t - state.sq_mean) / n
    dev = np.concatenate([state.dev[1:], (t - mean)[None]], axis=0)
    return SwagState(n, mean, sq_mean, dev)


class SwagMoments(nnx.Module):
    """The `vrouter` of a SWAG router: mean, sq_mean [D, E], dev [K, D, E], n (float)."""

    def __init__(self, d: int, e: int, rank: int):
        self.mean = SwagMoment(jnp.zeros((d, e), jnp.float32))
        self.sq_mean = SwagMoment(jnp.zeros((d, e), jnp.float32))
        self.dev = SwagMoment(jnp.zeros((rank, d, e), jnp.float32))
        self.n = SwagMoment(jnp.zeros((), jnp.float32))


class SwagRouter(moe.TopKRouter):
    """SWAG router (module docstring)."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.rank = int(common.opt(cfg, "vmoer_swag_rank"))
        if self.rank < 2:
            raise ValueError(f"vmoer_swag_rank: must be >= 2, got {self.rank}")
        self.n_samples = int(common.opt(cfg, "vmoer_samples"))
        if self.n_samples < 1:
            raise ValueError(f"vmoer_samples: must be >= 1, got {self.n_samples}")
        self.swag_start = float(common.opt(cfg, "vmoer_swag_start"))
        if not 0 <= self.swag_start < 1:
            raise ValueError(f"vmoer_swag_start: must lie in [0, 1), got {self.swag_start}")
        self.vrouter = SwagMoments(cfg.d_model, cfg.n_experts, self.rank)
        self.rngs = common.router_stream(rngs)
        self.sample = False
        self.noise_group = 1  # weights are shared by all rows anyway

    def weight_samples(self, n: int) -> Array:
        """n SWAG samples of W_r -> [S, D, E]; W_r itself (S copies) while no moments exist."""
        v = self.vrouter
        k1, k2 = jax.random.split(self.rngs())
        var = jnp.maximum(v.sq_mean[...] - jnp.square(v.mean[...]), 0.0)
        z1 = jax.random.normal(k1, (n, *var.shape), jnp.float32)
        z2 = jax.random.normal(k2, (n, self.rank), jnp.float32)
        low = jnp.einsum("sk,kde->sde", z2, v.dev[...]) / math.sqrt(2 * (self.rank - 1))
        w = v.mean[...][None] + jnp.sqrt(var)[None] * z1 / math.sqrt(2.0) + low
        return jnp.where(v.n[...] > 0, w, self.proj.kernel[...][None])

    def __call__(self, x_BxTxD: Array, *, train: bool = False) -> moe.RouterOutput:
        u = x_BxTxD.astype(jnp.float32)
        if train:
            return super().__call__(x_BxTxD, train=True)
        n = 1 if self.sample else self.n_samples
        l_S = jnp.einsum("btd,sde->sbte", u, self.weight_samples(n))
        probs = jnp.mean(jax.nn.softmax(l_S, axis=-1), axis=0)
        experts, gates = moe.top_k_gates(probs, self.top_k, normalize=self.normalize_gates)
        trace = {"router_logit_var": jnp.mean(jnp.var(l_S, axis=0), axis=-1)}
        return moe.RouterOutput(jnp.mean(l_S, axis=0), probs, experts, gates, {}, trace)


def swag_routers(model: nnx.Module) -> list[SwagRouter]:
    """The SWAG routers of `model`, in module order."""
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, SwagRouter)]


class SwagCollector:
    """Collects SWAG moments of every SWAG router's `router/proj` kernel (call after a step)."""

    def __init__(self, model: nnx.Module):
        self.routers = swag_routers(model)
        if not self.routers:
            raise ValueError("model: has no SWAG router")
        self.states = [swag_init(r.proj.kernel.shape, r.rank) for r in self.routers]
        self.hook: Any = None  # a fitting loop's `on_step(i)` callback (`collect_from`)

    def __call__(self) -> None:
        self.states = [
            swag_update(s, r.proj.kernel[...]) for s, r in zip(self.states, self.routers, strict=True)
        ]

    def install(self) -> None:
        """Writes the moments into the routers (their inference then samples from them).
        ValueError if no iterate was collected (the router would silently act as det)."""
        if self.states[0].n == 0:
            raise ValueError("SWAG: no iterate collected (e.g. a fit resumed past "
                             "vmoer_swag_start, whose moments are not checkpointed); without "
                             "moments the router acts as det")
        for s, r in zip(self.states, self.routers, strict=True):
            r.vrouter.mean[...] = jnp.asarray(s.mean, jnp.float32)
            r.vrouter.sq_mean[...] = jnp.asarray(s.sq_mean, jnp.float32)
            r.vrouter.dev[...] = jnp.asarray(s.dev, jnp.float32)
            r.vrouter.n[...] = jnp.asarray(float(s.n), jnp.float32)


def collect_from(model: nnx.Module, steps: int) -> SwagCollector:
    """A collector whose `hook(i)` (call after step i of `steps`) collects from step
    `vmoer_swag_start * steps` on; call `install()` after the last step."""
    collector = SwagCollector(model)
    start = int(float(collector.routers[0].swag_start) * steps)

    def hook(i: int) -> None:
        if i >= start:
            collector()

    collector.hook = hook
    return collector
