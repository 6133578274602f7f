"""Selection-space routers: VTSR (learned temperature, Sample-K) and fixed-temperature sampling.

VTSR (Li & Wicker, arXiv:2603.09453, Sec. 3.2, "inferring a temperature parameter for stochastic
expert selection"): a temperature network T(u) > 0 rescales the deterministic logits,
s = softmax(l_det / T(u)), and K distinct experts are *sampled* from s without replacement
("Sample-K", Gumbel-top-k = Plackett-Luce sampling, Kool, van Hoof & Welling 2019) in training
AND at inference (one pass; `vmoer_vtsr_inference="mean"` takes top-k of s instead). Gates are
the selected entries of s. T(u) = softplus(head(u)) + T_min, initialised at exactly 1.

Regulariser (`vmoer_vtsr_reg`), added as beta * mean over tokens:
  "entropy"   (paper): -a H(s) - b log T (a = b = 1 in the paper; `vmoer_vtsr_*_weight`), an entropy term plus the -log T proxy, both of which keep
              T from collapsing to 0 (deterministic routing) under the task loss;
  "lognormal": (log T)^2 / (2 s_T^2), the MAP penalty of a log-normal prior centred on T = 1.

Baseline `FixedTemperatureRouter` ("fixed_temp"): the same Sample-K from softmax(l_det / T0)
with a constant T0 (`vmoer_fixed_temperature`) and no parameters of its own.

Traces: `temperature` [B, T] (no logit variance: VTSR keeps the deterministic logits).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from routecal.models import moe
from routecal.models.routers import common

Array = jax.Array
VTSR_REGS = ("entropy", "lognormal")
VTSR_INFERENCE = ("sample", "mean")


def gumbel_top_k(key: Array, log_probs_NxE: Array, k: int, group: int = 1) -> Array:
    """K distinct indices sampled without replacement with probabilities softmax(log_probs).

    Gumbel-top-k (Kool et al. 2019, Sec. 3): the top-k of log_probs + Gumbel noise is an ordered
    Plackett-Luce sample (sequential sampling without replacement). -> int32 [..., K].
    `group` > 1 shares the Gumbel noise among each `group` consecutive rows of axis 0.
    """

    def gumbel(k: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.gumbel(k, shape, dtype=jnp.float32)

    g = common.common_draws(key, gumbel, log_probs_NxE.shape, 0, group)
    _, idx = jax.lax.top_k(log_probs_NxE.astype(jnp.float32) + g, k)
    return idx.astype(jnp.int32)


class TemperatureHead(nnx.Module):
    """u -> pre-softplus temperature (trunk as the logit heads; bias so that T = 1 at init)."""

    def __init__(self, cfg: Any, min_temperature: float, *, rngs: nnx.Rngs):
        self.trunk = common.HeadTrunk(cfg, rngs=rngs)
        bias = common.softplus_inverse(1.0 - min_temperature)
        self.temp = common.linear(self.trunk.width, 1, rngs, bias=bias)

    def __call__(self, u_BxTxD: Array) -> Array:
        return self.temp(self.trunk(u_BxTxD))[..., 0]


class _SampleKRouter(moe.TopKRouter):
    """Shared Sample-K selection from s = softmax(l_det / T)."""

    def _init_sampling(self, cfg: Any, rngs: nnx.Rngs) -> None:
        self.rngs = common.router_stream(rngs)
        self.inference = common.check_choice(
            common.opt(cfg, "vmoer_vtsr_inference"), "vmoer_vtsr_inference", VTSR_INFERENCE
        )
        self.aux_to_posterior = bool(common.opt(cfg, "vmoer_aux_to_posterior"))
        self.sample = False
        self.noise_group = 1  # common random numbers (`vmoer.set_common_noise`)

    def _select(self, logits: Array, temp_BxT: Array, train: bool) -> tuple[Array, Array, Array]:
        scaled = logits / temp_BxT[..., None]
        probs = jax.nn.softmax(scaled, axis=-1)
        if train or self.sample or self.inference == "sample":
            log_s = jax.nn.log_softmax(scaled, axis=-1)
            experts = gumbel_top_k(self.rngs(), log_s, self.top_k, self.noise_group)
        else:
            experts = jax.lax.top_k(probs, self.top_k)[1].astype(jnp.int32)
        return probs, experts, common.gates_of(probs, experts, self.normalize_gates)


class TemperatureRouter(_SampleKRouter):
    """VTSR (module docstring). Adds `vmoer_vtsr_reg` (= beta * regulariser) to aux."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.min_temperature = float(common.opt(cfg, "vmoer_min_temperature"))
        if not 0 < self.min_temperature < 1:
            raise ValueError(
                f"vmoer_min_temperature: must lie in (0, 1), got {self.min_temperature}"
            )
        self.vrouter = TemperatureHead(cfg, self.min_temperature, rngs=rngs)
        self.beta = float(common.opt(cfg, "vmoer_beta"))
        self.reg = common.check_choice(
            common.opt(cfg, "vmoer_vtsr_reg"), "vmoer_vtsr_reg", VTSR_REGS
        )
        self.temp_prior_sigma = float(common.opt(cfg, "vmoer_temp_prior_sigma"))
        self.entropy_weight = float(common.opt(cfg, "vmoer_vtsr_entropy_weight"))
        self.logt_weight = float(common.opt(cfg, "vmoer_vtsr_logt_weight"))
        self._init_sampling(cfg, rngs)

    def temperature(self, x_BxTxD: Array) -> Array:
        """T(u) = softplus(head(u)) + T_min >= T_min > 0: [B, T, D] -> [B, T]."""
        return jax.nn.softplus(self.vrouter(x_BxTxD)) + self.min_temperature

    def regulariser(self, probs_BxTxE: Array, temp_BxT: Array) -> Array:
        """Mean over tokens of -a H(s) - b log T ("entropy"; a, b the `vmoer_vtsr_*_weight`s)
        or (log T)^2 / 2 s_T^2 ("lognormal")."""
        if self.reg == "entropy":
            h = common.entropy(probs_BxTxE)
            return jnp.mean(-self.entropy_weight * h - self.logt_weight * jnp.log(temp_BxT))
        return jnp.mean(jnp.square(jnp.log(temp_BxT))) / (2 * self.temp_prior_sigma**2)

    def __call__(self, x_BxTxD: Array, *, train: bool = False) -> moe.RouterOutput:
        logits = self.logits(x_BxTxD)
        temp_BxT = self.temperature(x_BxTxD)
        probs, experts, gates = self._select(logits, temp_BxT, train)
        aux = {"vmoer_vtsr_reg": self.beta * self.regulariser(probs, temp_BxT)}
        det_probs = jax.nn.softmax(logits, axis=-1)
        return moe.RouterOutput(
            logits,
            common.aux_values(probs, det_probs, self.aux_to_posterior),
            experts,
            gates,
            aux,
            {"temperature": temp_BxT},
        )


class FixedTemperatureRouter(_SampleKRouter):
    """Baseline: Sample-K from softmax(l_det / T0), T0 = `vmoer_fixed_temperature`."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.t0 = float(common.opt(cfg, "vmoer_fixed_temperature"))
        if not self.t0 > 0:
            raise ValueError(f"vmoer_fixed_temperature: must be > 0, got {self.t0}")
        self._init_sampling(cfg, rngs)

    def __call__(self, x_BxTxD: Array, *, train: bool = False) -> moe.RouterOutput:
        logits = self.logits(x_BxTxD)
        temp_BxT = jnp.full(logits.shape[:-1], self.t0, jnp.float32)
        probs, experts, gates = self._select(logits, temp_BxT, train)
        return moe.RouterOutput(logits, probs, experts, gates, {}, {"temperature": temp_BxT})
