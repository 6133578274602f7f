"""Shared pieces of the VMoER routers: options, posterior-head MLPs, RNG streams, aux gradients.

Every router subclasses `moe.TopKRouter` (so it keeps the deterministic parameters
`router/proj/kernel` and a deterministic MoE checkpoint loads into it) and keeps its
posterior/temperature/ensemble parameters under a submodule named `vrouter` (`VROUTER_PATH`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from routecal.models import moe

Array = jax.Array
VROUTER_PATH = "vrouter"
HEAD_TYPES = ("mlp", "linear")
SIGMA_PARAMS = ("log", "softplus")


@dataclasses.dataclass(frozen=True)
class VMoERConfig(moe.MoEConfig):
    """MoE config plus the VMoER options (any object with these attributes works too).

    Attributes:
      vmoer_beta: weight beta of the KL term / VTSR regulariser (loss = task + beta * reg).
      vmoer_prior_sigma: prior std s_p of the logits around the deterministic router (paper: 1).
      vmoer_init_sigma: posterior std at initialisation.
      vmoer_sigma_min: floor added to sigma (softplus parameterisation only).
      vmoer_sigma_param: "log" (sigma = exp(head), the paper's log-sigma heads) or "softplus".
      vmoer_head: "mlp" (paper: u -> GELU(W1 u) -> outputs) or "linear" posterior heads.
      vmoer_head_hidden: hidden width H of MLP heads (0: d_model). The default 64 keeps the
        heads' 2 D H FLOPs per token well under 1% of a realistic MoE layer.
      vmoer_rank: rank R of the low-rank covariance factor ("lowrank" router).
      vmoer_samples: S, logit samples (or dropout masks, ...) averaged in the router at inference.
      vmoer_min_temperature: T_min > 0, floor of every learned temperature.
      vmoer_temp_prior_sigma: s_T of the log-normal temperature prior (vtsr_reg "lognormal").
      vmoer_vtsr_reg: "entropy" (paper: -H(s) - log T) or "lognormal" (beta (log T)^2 / 2 s_T^2).
      vmoer_vtsr_inference: "sample" (paper: Sample-K at inference) or "mean" (top-k of s).
      vmoer_fixed_temperature: T of the fixed temperature-sampling baseline.
      vmoer_dropout: rate of the MC-dropout router.
      vmoer_ensemble: members M of the deep-ensemble router.
      vmoer_ensemble_perturb: std of the N(0, s^2) perturbation added to the deterministic
        router's weights before a retrofitted ensemble member is fitted (its own seed).
      vmoer_swag_rank: K, columns of the SWAG low-rank deviation matrix (Maddox et al. 2019).
      vmoer_swag_start: fraction of the retrofit steps after which SWAG collects moments.
      vmoer_vtsr_entropy_weight, vmoer_vtsr_logt_weight: weights a, b of the VTSR "entropy"
        regulariser -a H(s) - b log T (the paper's: 1 and 1).
      vmoer_aux_to_posterior: whether the load-balance and z losses send gradient to the
        posterior heads (False: their values are unchanged, their gradient reaches only the
        deterministic router, so a retrofit is driven by the task loss and the KL alone).
    """

    vmoer_beta: float = 1e-2
    vmoer_prior_sigma: float = 1.0
    vmoer_init_sigma: float = 0.3
    vmoer_sigma_min: float = 1e-4
    vmoer_sigma_param: str = "log"
    vmoer_head: str = "mlp"
    vmoer_head_hidden: int = 64
    vmoer_rank: int = 2
    vmoer_samples: int = 8
    vmoer_min_temperature: float = 0.05
    vmoer_temp_prior_sigma: float = 1.0
    vmoer_vtsr_reg: str = "entropy"
    vmoer_vtsr_inference: str = "sample"
    vmoer_fixed_temperature: float = 1.0
    vmoer_dropout: float = 0.1
    vmoer_ensemble: int = 4
    vmoer_ensemble_perturb: float = 0.02
    vmoer_swag_rank: int = 10
    vmoer_swag_start: float = 0.5
    vmoer_vtsr_entropy_weight: float = 1.0
    vmoer_vtsr_logt_weight: float = 1.0
    vmoer_aux_to_posterior: bool = False


DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(VMoERConfig) if f.name.startswith("vmoer")
}


def opt(cfg: Any, name: str) -> Any:
    """Option `name` from `cfg.<name>`, else `cfg.vmoer_options[name or name minus "vmoer_"]`
    (the transformer's ModelConfig keeps VMoER options in a dict), else the default."""
    if hasattr(cfg, name):
        return getattr(cfg, name)
    opts = dict(getattr(cfg, "vmoer_options", {}) or {})
    short = name.removeprefix("vmoer_")
    return opts.get(name, opts.get(short, DEFAULTS[name]))


def check_options(options: dict[str, Any]) -> None:
    """Raises ValueError naming an unknown VMoER option (keys with or without "vmoer_")."""
    valid = set(DEFAULTS) | {k.removeprefix("vmoer_") for k in DEFAULTS}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"model.vmoer: unknown option(s) {unknown}; valid: {sorted(DEFAULTS)}")


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name}: unknown {value!r}; expected one of {choices}")
    return value


def router_stream(rngs: nnx.Rngs) -> nnx.RngStream:
    """A private RNG stream for routing noise: "router" if present, else a fork of "dropout",
    "default" or "params" (so `nnx.Rngs(params=s, dropout=s + 1)` works)."""
    for name in ("router", "dropout", "default"):
        if name in rngs:
            return rngs[name].fork()
    return rngs["params"].fork()


def common_draws(
    key: Array, sampler: Any, shape: tuple[int, ...], batch_axis: int, group: int
) -> Array:
    """`sampler(key, shape)` with the draw shared by each `group` consecutive indices of
    `batch_axis` (common random numbers: an MCQA item's K option sequences are rows
    [i K, (i + 1) K) of the flattened batch, `vmoer.set_common_noise`). group 1: independent."""
    if group <= 1:
        return sampler(key, shape)
    b = shape[batch_axis]
    if b % group:
        raise ValueError(f"noise_group: batch axis of size {b} is not a multiple of {group}")
    small = (*shape[:batch_axis], b // group, *shape[batch_axis + 1 :])
    return jnp.repeat(sampler(key, small), group, axis=batch_axis)


def softplus_inverse(y: float) -> float:
    """x with softplus(x) = y (y > 0), computed stably."""
    return float(y + math.log(-math.expm1(-y)))


def linear(d_in: int, d_out: int, rngs: nnx.Rngs, *, bias: float = 0.0, std: float = 0.0):
    """float32 Linear with a constant bias and a zero (std = 0) or normal(std) kernel."""
    kinit = nnx.initializers.zeros if std == 0 else nnx.initializers.normal(std)
    return nnx.Linear(
        d_in,
        d_out,
        kernel_init=kinit,
        bias_init=nnx.initializers.constant(bias),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


class HeadTrunk(nnx.Module):
    """The shared input of a router's posterior heads: u itself ("linear") or GELU(W1 u + b1)
    ("mlp", the paper's MLP heads; W1 ~ N(0, 1/D), so each output head starts at its bias)."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        self.kind = check_choice(opt(cfg, "vmoer_head"), "vmoer_head", HEAD_TYPES)
        hidden = int(opt(cfg, "vmoer_head_hidden")) or cfg.d_model
        mlp = self.kind == "mlp"
        self.width = hidden if mlp else cfg.d_model
        std = 1.0 / math.sqrt(cfg.d_model)
        self.hidden = linear(cfg.d_model, hidden, rngs, std=std) if mlp else None

    def __call__(self, u_BxTxD: Array) -> Array:
        u = u_BxTxD.astype(jnp.float32)
        return u if self.hidden is None else jax.nn.gelu(self.hidden(u))


def aux_values(value: Array, det_value: Array, to_posterior: bool) -> Array:
    """The value a load-balance / z loss sees: `value` itself, or (to_posterior False) the same
    value whose gradient flows only through the deterministic `det_value`."""
    if to_posterior:
        return value
    return det_value + jax.lax.stop_gradient(value - det_value)


def entropy(p_BxTxE: Array) -> Array:
    """Shannon entropy (nats) over the last axis, 0 log 0 = 0."""
    return -jnp.sum(
        jnp.where(p_BxTxE > 0, p_BxTxE * jnp.log(jnp.where(p_BxTxE > 0, p_BxTxE, 1.0)), 0.0), -1
    )


def gates_of(probs_BxTxE: Array, experts_BxTxK: Array, normalize: bool) -> Array:
    """Gate values of the selected experts (optionally renormalised to sum to 1)."""
    g = jnp.take_along_axis(probs_BxTxE, experts_BxTxK, axis=-1)
    return g / jnp.sum(g, axis=-1, keepdims=True) if normalize else g
