"""Mixture-of-Experts MLP sublayer: tokens-choose top-k routing with capacity, einsum dispatch.

The sublayer follows the MLP protocol of `routecal.models.layers`::

    y_BxTxD, aux, trace = moe(x_BxTxD, train=train)

Routing (as in GShard, Switch, V-MoE / flaxformer):
  * the router is a bias-free linear map computed in float32: logits = x W_r, probs = softmax;
  * each token chooses its top-k experts; each expert processes at most C tokens per group
    (a group is one sequence, so an example's output never depends on the rest of the batch),
    C = ceil(capacity_factor * K * T / E) (clipped to [1, T]; `capacity_factor <= 0` disables
    dropping). Slots are filled by priority: all tokens' first choices (in token order), then all
    second choices, ... ; assignments past capacity are dropped and counted;
  * dispatch and combine are one-hot einsums over [B, T, E, C] tensors (flaxformer / vmoe style);
  * auxiliary losses: Switch load balancing and ST-MoE router z-loss (equations cited below).

Letters: B batch (= groups), T tokens per group, D model width, F expert hidden width,
E experts, K experts per token, C expert capacity per group.

Traces (per token): `router_probs` [B, T, E], `experts` [B, T, K] (int32), `gates` [B, T, K]
(combine weights, zero where the assignment was dropped), `dropped` [B, T, K] (1.0 where the
assignment exceeded capacity). `dropped_fraction(trace)` gives the fraction of dropped assignments.

Routers are pluggable (`MoEMLP(cfg, router=...)`): any module with
`router(x_BxTxD_f32, train=...) -> RouterOutput` works; `routecal.models.vmoer` provides the
variational ones. Parameter paths of the deterministic router (`router/proj/kernel`) are shared by
the variational routers, so a deterministic checkpoint loads into a VMoER model (retrofit).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from routecal.models import dispatch

Array = jax.Array
EXPERT_TYPES = ("gelu", "swiglu")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Typed MoE configuration (the transformer's ModelConfig with these attributes also works).

    Attributes:
      d_model: model width D.
      mlp_dim: hidden width F of each expert.
      n_experts: number of experts E.
      top_k: experts per token K (1 <= K <= E).
      capacity_factor: expert capacity C = ceil(capacity_factor * K * T / E); <= 0 disables
        dropping (C = T).
      lb_coef: weight of the load-balancing loss (Switch uses 1e-2).
      z_coef: weight of the router z-loss (ST-MoE uses 1e-3).
      dtype: computation dtype of the experts (the router always runs in float32).
      expert_type: "gelu" (D -> F -> D) or "swiglu" (gate/up/down projections).
      normalize_gates: renormalise the K selected gates to sum to 1 (Mixtral style) if True.
      n_group, topk_group: group-limited greedy selection (DeepSeek-V2): the E experts form
        n_group equal groups and each token picks its top K among the topk_group groups of
        highest max probability (1, 1: plain top-k).
      routed_scaling: the selected gates are multiplied by it (DeepSeek-V2
        `routed_scaling_factor`).
    """

    d_model: int = 64
    mlp_dim: int = 128
    n_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.25
    lb_coef: float = 1e-2
    z_coef: float = 1e-3
    dtype: Any = jnp.float32
    expert_type: str = "gelu"
    normalize_gates: bool = False
    n_group: int = 1
    topk_group: int = 1
    routed_scaling: float = 1.0

    def __post_init__(self) -> None:
        validate_moe_config(self)


def validate_moe_config(cfg: Any) -> None:
    """Raises ValueError naming the bad attribute of an MoE config (any object with the fields)."""
    for name in ("d_model", "mlp_dim", "n_experts", "top_k"):
        v = getattr(cfg, name, None)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: must be a positive integer, got {v!r}")
    if cfg.top_k > cfg.n_experts:
        raise ValueError(f"top_k: must be <= n_experts={cfg.n_experts}, got {cfg.top_k}")
    for name in ("lb_coef", "z_coef"):
        v = getattr(cfg, name, 0.0)
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: must be a finite number >= 0, got {v!r}")
    cf = getattr(cfg, "capacity_factor", 0.0)
    if not (isinstance(cf, int | float) and math.isfinite(cf)):
        raise ValueError(f"capacity_factor: must be a finite number, got {cf!r}")
    n_group, topk_group = getattr(cfg, "n_group", 1), getattr(cfg, "topk_group", 1)
    if not (isinstance(n_group, int) and n_group >= 1 and cfg.n_experts % n_group == 0):
        raise ValueError(f"n_group: must be a positive divisor of n_experts={cfg.n_experts}, "
                         f"got {n_group!r}")
    if not (isinstance(topk_group, int) and 1 <= topk_group <= n_group):
        raise ValueError(f"topk_group: must lie in [1, n_group={n_group}], got {topk_group!r}")
    if topk_group * (cfg.n_experts // n_group) < cfg.top_k:
        raise ValueError(f"topk_group: {topk_group} groups of {cfg.n_experts // n_group} experts "
                         f"hold fewer than top_k={cfg.top_k}")
    rs = getattr(cfg, "routed_scaling", 1.0)
    if not (isinstance(rs, int | float) and math.isfinite(rs) and rs > 0):
        raise ValueError(f"routed_scaling: must be a finite number > 0, got {rs!r}")
    et = getattr(cfg, "expert_type", "gelu")
    if et not in EXPERT_TYPES:
        raise ValueError(f"expert_type: unknown {et!r}; expected one of {EXPERT_TYPES}")


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """C = ceil(capacity_factor * K * T / E), clipped to [1, T]; T if capacity_factor <= 0."""
    if capacity_factor <= 0:
        return n_tokens
    c = math.ceil(capacity_factor * top_k * n_tokens / n_experts)
    return int(min(max(c, 1), n_tokens))


class RouterOutput(NamedTuple):
    """What a router returns (all float32 except `experts`).

    Attributes:
      logits_BxTxE: the deterministic router logits (used by the z-loss).
      probs_BxTxE: routing probabilities used for selection and the load-balancing loss.
      experts_BxTxK: selected experts (int32), distinct per token, in priority order.
      gates_BxTxK: combine weights of the selected experts (before capacity dropping).
      aux: extra weighted losses (e.g. the VMoER KL term).
      trace: extra per-token traces (e.g. temperature).
    """

    logits_BxTxE: Array
    probs_BxTxE: Array
    experts_BxTxK: Array
    gates_BxTxK: Array
    aux: dict[str, Array]
    trace: dict[str, Array]


def top_k_gates(
    probs_BxTxE: Array,
    top_k: int,
    *,
    normalize: bool = False,
    n_group: int = 1,
    topk_group: int = 1,
    scale: float = 1.0,
) -> tuple[Array, Array]:
    """Top-k experts by probability and their gate values: -> experts [B,T,K] int32, gates [B,T,K].

    With n_group > 1, DeepSeek-V2's `group_limited_greedy` (DeepSeek-AI 2024, arXiv:2405.04434,
    sec. 2.1.2 "device-limited routing"; HF `DeepseekV2TopkRouter`): a group's score is its largest
    probability, the topk_group best groups are kept and the other groups' probabilities set to 0
    before the top-k. Gates are renormalised to sum to 1 if `normalize`, then times `scale`.
    """
    if n_group > 1:
        b, t, e = probs_BxTxE.shape
        grouped = probs_BxTxE.reshape(b, t, n_group, e // n_group)
        _, best_BxTxG = jax.lax.top_k(jnp.max(grouped, axis=-1), topk_group)
        keep_BxTxG = jnp.sum(jax.nn.one_hot(best_BxTxG, n_group, dtype=jnp.bool_), axis=2) > 0
        probs_BxTxE = jnp.where(keep_BxTxG[..., None], grouped, 0.0).reshape(b, t, e)
    gates, experts = jax.lax.top_k(probs_BxTxE, top_k)
    if normalize:
        gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
    if scale != 1.0:
        gates = gates * scale
    return experts.astype(jnp.int32), gates


class TopKRouter(nnx.Module):
    """Deterministic tokens-choose top-k router: probs = softmax(x W_r) in float32."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        validate_moe_config(cfg)
        self.n_experts = cfg.n_experts
        self.top_k = cfg.top_k
        self.normalize_gates = bool(getattr(cfg, "normalize_gates", False))
        self.n_group = int(getattr(cfg, "n_group", 1))
        self.topk_group = int(getattr(cfg, "topk_group", 1))
        self.routed_scaling = float(getattr(cfg, "routed_scaling", 1.0))
        self.proj = nnx.Linear(
            cfg.d_model,
            cfg.n_experts,
            use_bias=False,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            kernel_init=nnx.initializers.normal(stddev=0.02),
            rngs=rngs,
        )

    def logits(self, x_BxTxD: Array) -> Array:
        """Deterministic router logits in float32: [B, T, D] -> [B, T, E]."""
        return self.proj(x_BxTxD.astype(jnp.float32))

    def __call__(self, x_BxTxD: Array, *, train: bool = False) -> RouterOutput:
        del train
        logits = self.logits(x_BxTxD)
        probs = jax.nn.softmax(logits, axis=-1)
        experts, gates = top_k_gates(
            probs,
            self.top_k,
            normalize=self.normalize_gates,
            n_group=self.n_group,
            topk_group=self.topk_group,
            scale=self.routed_scaling,
        )
        return RouterOutput(logits, probs, experts, gates, {}, {})


def load_balancing_loss(probs_BxTxE: Array, experts_BxTxK: Array) -> Array:
    """Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4), top-k generalisation.

    Switch eq. 4: loss = E * sum_e f_e * P_e, with f_e the fraction of tokens dispatched to expert e
    and P_e the mean router probability of e. For top-k, f_e counts all K assignments and divides by
    T * K (so sum_e f_e = 1 and K = 1 is exactly eq. 4; the minimum is 1 under uniform routing).
    Computed per group (sequence) before capacity dropping, then averaged over groups (flaxformer).
    """
    n_experts = probs_BxTxE.shape[-1]
    mask_BxTxKxE = jax.nn.one_hot(experts_BxTxK, n_experts, dtype=jnp.float32)
    f_BxE = jnp.mean(jnp.sum(mask_BxTxKxE, axis=2), axis=1) / experts_BxTxK.shape[-1]
    p_BxE = jnp.mean(probs_BxTxE.astype(jnp.float32), axis=1)
    return jnp.mean(n_experts * jnp.sum(f_BxE * p_BxE, axis=-1))


def router_z_loss(logits_BxTxE: Array) -> Array:
    """Router z-loss (Zoph et al. 2022, ST-MoE, eq. 5): (1/N) sum_tokens (logsumexp_e x_e)^2."""
    lse_BxT = jax.nn.logsumexp(logits_BxTxE.astype(jnp.float32), axis=-1)
    return jnp.mean(jnp.square(lse_BxT))


def dispatch_and_combine(
    experts_BxTxK: Array, gates_BxTxK: Array, n_experts: int, capacity: int
) -> tuple[Array, Array, Array]:
    """One-hot dispatch / combine tensors with per-group capacity.

    Priority: slot positions are assigned in the order (k, t): every token's first choice before
    any second choice, tokens in order within a choice rank (GShard / V-MoE "top-k first").

    Returns:
      dispatch_BxTxExC (0/1, float32), combine_BxTxExC (gate-weighted), kept_BxTxK (0/1 float32).
    """
    b, t, k = experts_BxTxK.shape
    mask_BxKxTxE = jax.nn.one_hot(jnp.swapaxes(experts_BxTxK, 1, 2), n_experts, dtype=jnp.int32)
    mask_BxKTxE = mask_BxKxTxE.reshape(b, k * t, n_experts)
    pos_BxKTxE = jnp.cumsum(mask_BxKTxE, axis=1) - 1  # slot index within the expert
    pos_BxKTxE = jnp.where(mask_BxKTxE > 0, pos_BxKTxE, -1)
    pos_BxTxK = jnp.swapaxes(jnp.max(pos_BxKTxE, axis=-1).reshape(b, k, t), 1, 2)
    kept_BxTxK = (pos_BxTxK < capacity).astype(jnp.float32)
    # one_hot of an out-of-range slot is all zeros, so dropped assignments vanish.
    slot_BxTxKxC = jax.nn.one_hot(jnp.where(kept_BxTxK > 0, pos_BxTxK, capacity), capacity)
    expert_BxTxKxE = jax.nn.one_hot(experts_BxTxK, n_experts, dtype=jnp.float32)
    dispatch = jnp.einsum("btke,btkc->btec", expert_BxTxKxE, slot_BxTxKxC)
    combine = jnp.einsum("btke,btkc->btec", expert_BxTxKxE * gates_BxTxK[..., None], slot_BxTxKxC)
    return dispatch, combine, kept_BxTxK


def dropped_fraction(trace: dict[str, Array]) -> Array:
    """Fraction of (token, choice) assignments dropped for capacity, from an MoE trace."""
    return jnp.mean(trace["dropped"])


class Experts(nnx.Module):
    """E independent MLPs applied to capacity buffers: [B, E, C, D] -> [B, E, C, D]."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        e, d, f = cfg.n_experts, cfg.d_model, cfg.mlp_dim
        self.expert_type = getattr(cfg, "expert_type", "gelu")
        self.dtype = getattr(cfg, "dtype", jnp.float32)
        init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        self.w_in_ExDxF = nnx.Param(init(rngs.params(), (e, d, f), jnp.float32))
        if self.expert_type == "swiglu":
            self.w_gate_ExDxF = nnx.Param(init(rngs.params(), (e, d, f), jnp.float32))
        else:
            self.b_in_ExF = nnx.Param(jnp.zeros((e, f), jnp.float32))
        self.w_out_ExFxD = nnx.Param(init(rngs.params(), (e, f, d), jnp.float32))

    def weights(self) -> dispatch.ExpertWeights:
        """The stacked expert weights in the compute dtype (for `dispatch`'s grouped matmuls)."""
        dt = self.dtype
        gate = self.w_gate_ExDxF[...].astype(dt) if self.expert_type == "swiglu" else None
        bias = None if self.expert_type == "swiglu" else self.b_in_ExF[...].astype(dt)
        return dispatch.ExpertWeights(
            self.w_in_ExDxF[...].astype(dt), self.w_out_ExFxD[...].astype(dt), gate, bias
        )

    def __call__(self, x_BxExCxD: Array) -> Array:
        dt = self.dtype
        x = x_BxExCxD.astype(dt)
        h = jnp.einsum("becd,edf->becf", x, self.w_in_ExDxF[...].astype(dt))
        if self.expert_type == "swiglu":
            g = jnp.einsum("becd,edf->becf", x, self.w_gate_ExDxF[...].astype(dt))
            h = jax.nn.silu(g) * h
        else:
            h = jax.nn.gelu(h + self.b_in_ExF[...].astype(dt)[None, :, None, :])
        return jnp.einsum("becf,efd->becd", h, self.w_out_ExFxD[...].astype(dt))


class MoEMLP(nnx.Module):
    """Mixture-of-Experts MLP sublayer (MLP protocol): [B, T, D] -> ([B, T, D], aux, trace).

    Args:
      cfg: `MoEConfig` or any object with its attributes (e.g. the transformer's ModelConfig).
      router: optional router module (default: deterministic `TopKRouter`).
      rngs: parameter RNGs.

    `aux` holds `moe_lb` = lb_coef * load-balancing loss and `moe_z` = z_coef * z-loss, plus any
    router losses (e.g. `vmoer_kl`), all already weighted.
    """

    def __init__(self, cfg: Any, *, router: nnx.Module | None = None, rngs: nnx.Rngs):
        validate_moe_config(cfg)
        self.n_experts = cfg.n_experts
        self.top_k = cfg.top_k
        self.capacity_factor = float(getattr(cfg, "capacity_factor", 0.0))
        self.lb_coef = float(getattr(cfg, "lb_coef", 0.0))
        self.z_coef = float(getattr(cfg, "z_coef", 0.0))
        self.router = router if router is not None else TopKRouter(cfg, rngs=rngs)
        self.experts = Experts(cfg, rngs=rngs)
        # Optional perturbation of the layer's input hidden state (a module [B, T, D] ->
        # [B, T, D]; set by `routecal.models.vmoer.set_hidden_noise` for routing stability).
        self.input_noise: nnx.Module | None = nnx.data(None)

    def __call__(
        self, x_BxTxD: Array, *, train: bool = False
    ) -> tuple[Array, dict[str, Array], dict[str, Array]]:
        if x_BxTxD.ndim != 3:
            raise ValueError(f"x_BxTxD: expected a [B, T, D] array, got shape {x_BxTxD.shape}")
        _, t, _ = x_BxTxD.shape
        if self.input_noise is not None:
            x_BxTxD = self.input_noise(x_BxTxD)
        r = self.router(x_BxTxD, train=train)
        capacity = expert_capacity(t, self.n_experts, self.top_k, self.capacity_factor)
        dispatch, combine, kept = dispatch_and_combine(
            r.experts_BxTxK, r.gates_BxTxK, self.n_experts, capacity
        )
        x_in = jnp.einsum("btd,btec->becd", x_BxTxD.astype(jnp.float32), dispatch)
        y_out = self.experts(x_in).astype(jnp.float32)
        y = jnp.einsum("becd,btec->btd", y_out, combine).astype(x_BxTxD.dtype)
        aux = {
            "moe_lb": self.lb_coef * load_balancing_loss(r.probs_BxTxE, r.experts_BxTxK),
            "moe_z": self.z_coef * router_z_loss(r.logits_BxTxE),
            **r.aux,
        }
        trace = {
            "router_probs": r.probs_BxTxE,
            "experts": r.experts_BxTxK,
            "gates": r.gates_BxTxK * kept,
            "dropped": 1.0 - kept,
            **r.trace,
        }
        return y, aux, trace
