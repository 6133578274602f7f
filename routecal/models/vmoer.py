"""VMoER: variational MoE routing (arXiv:2603.09453), Bayesian inference confined to expert selection.

Two routers replace the deterministic `TopKRouter` of `routecal.models.moe`; both keep its
parameters (`router/proj/kernel`) and add their posterior heads under a submodule named `vrouter`,
so (i) a deterministic MoE checkpoint loads into a VMoER model unchanged (`retrofit_from`) and
(ii) training only the posterior is the path filter `trainable="vrouter"` (`VROUTER_PATH`).

Logit-space (`LogitVariationalRouter`): a Gaussian posterior over the router logits of token u,
    q(l | u) = N(mu(u), Sigma(u)),  mu = router(u) + delta_mu(u),
    Sigma = diag(sigma(u)^2) + V(u) V(u)^T   (V: optional rank-R factor, R = `vmoer_rank`),
with `delta_mu` zero-initialised (the posterior mean starts at the deterministic router) and
sigma = softplus(head) + sigma_min. Prior p(l | u) = N(stopgrad(router(u)), sigma_p^2 I); the loss
adds beta * KL(q || p) (closed form, `gaussian_kl`) averaged over tokens. Training draws one
reparameterised sample l = mu + sigma * eps (+ V eps'); inference averages softmax(l_s) over S
samples inside the router and then takes top-k, so the experts run once.

Selection-space (`TemperatureRouter`): an amortised temperature T(u) = softplus(head(u)) + T_min,
initialised at exactly 1 and bounded below by T_min > 0 (no collapse whatever the head weights);
s = softmax(logits / T). In training (and at inference with `sample=True`) K distinct experts are
*sampled* without replacement by Gumbel-top-k (Plackett-Luce sampling, Kool et al. 2019);
otherwise top-k of s. A log-normal prior on T, log T ~ N(0, s_T^2), adds the MAP penalty
beta * mean((log T)^2) / (2 s_T^2).

Letters: B batch, T tokens, D width, E experts, K experts per token, S samples, R covariance rank.
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
VROUTER_PATH = "vrouter"  # path substring of every router-posterior parameter
ROUTER_TYPES = ("logit", "temp")


@dataclasses.dataclass(frozen=True)
class VMoERConfig(moe.MoEConfig):
    """MoE config plus the VMoER options (any object with these attributes works too).

    Attributes:
      vmoer_beta: weight beta of the KL term (logit) / log-temperature prior (temp).
      vmoer_prior_sigma: prior std sigma_p of the logits around the deterministic router.
      vmoer_init_sigma: posterior std at initialisation.
      vmoer_sigma_min: floor added to the softplus std.
      vmoer_rank: rank R of the low-rank covariance factor (0 = diagonal).
      vmoer_samples: S, logit samples averaged inside the router at inference.
      vmoer_min_temperature: T_min, the temperature floor.
      vmoer_temp_prior_sigma: s_T, std of the log-normal temperature prior.
    """

    vmoer_beta: float = 1e-2
    vmoer_prior_sigma: float = 1.0
    vmoer_init_sigma: float = 0.3
    vmoer_sigma_min: float = 1e-4
    vmoer_rank: int = 0
    vmoer_samples: int = 8
    vmoer_min_temperature: float = 0.05
    vmoer_temp_prior_sigma: float = 1.0


_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(VMoERConfig) if f.name.startswith("vmoer")
}


def _opt(cfg: Any, name: str) -> Any:
    """Option `name` from `cfg.<name>`, else `cfg.vmoer_options[name or name minus "vmoer_"]`
    (the transformer's ModelConfig keeps VMoER options in a dict), else the default."""
    if hasattr(cfg, name):
        return getattr(cfg, name)
    opts = dict(getattr(cfg, "vmoer_options", {}) or {})
    short = name.removeprefix("vmoer_")
    return opts.get(name, opts.get(short, _DEFAULTS[name]))


def check_vmoer_options(options: dict[str, Any]) -> None:
    """Raises ValueError naming an unknown VMoER option (keys with or without "vmoer_")."""
    valid = set(_DEFAULTS) | {k.removeprefix("vmoer_") for k in _DEFAULTS}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"model.vmoer: unknown option(s) {unknown}; valid: {sorted(_DEFAULTS)}")


def _router_stream(rngs: nnx.Rngs) -> nnx.RngStream:
    """A private RNG stream for routing noise: the "router" stream if present, else a fork of
    "dropout" or "default" (so `nnx.Rngs(params=s, dropout=s + 1)` works)."""
    for name in ("router", "dropout", "default"):
        if name in rngs:
            return rngs[name].fork()
    return rngs["params"].fork()


def _softplus_inverse(y: float) -> float:
    """x with softplus(x) = y (y > 0), computed stably."""
    return float(y + math.log(-math.expm1(-y)))


def gaussian_kl(
    delta_BxTxE: Array, sigma_BxTxE: Array, prior_sigma: float, v_BxTxExR: Array | None = None
) -> Array:
    """Per-token KL( N(m + delta, diag(sigma^2) + V V^T) || N(m, prior_sigma^2 I) ) -> [B, T].

    Closed form for Gaussians (e.g. Bishop 2006, eq. for KL between multivariate normals):
      KL = 1/2 [ tr(Sigma_q)/s_p^2 + |delta|^2/s_p^2 - E + E log s_p^2 - log det Sigma_q ],
    with tr(Sigma_q) = sum sigma^2 + |V|_F^2 and, by the matrix determinant lemma,
    log det Sigma_q = sum log sigma^2 + log det(I_R + V^T diag(sigma^-2) V).
    """
    e = delta_BxTxE.shape[-1]
    sp2 = prior_sigma**2
    trace = jnp.sum(jnp.square(sigma_BxTxE), axis=-1)
    logdet = 2.0 * jnp.sum(jnp.log(sigma_BxTxE), axis=-1)
    if v_BxTxExR is not None:
        trace = trace + jnp.sum(jnp.square(v_BxTxExR), axis=(-2, -1))
        w = v_BxTxExR / sigma_BxTxE[..., None]
        r = v_BxTxExR.shape[-1]
        inner = jnp.einsum("bter,btes->btrs", w, w) + jnp.eye(r, dtype=w.dtype)[None, None]
        logdet = logdet + jnp.linalg.slogdet(inner)[1]
    maha = jnp.sum(jnp.square(delta_BxTxE), axis=-1)
    return 0.5 * ((trace + maha) / sp2 - e + e * math.log(sp2) - logdet)


def gumbel_top_k(key: Array, log_probs_NxE: Array, k: int) -> Array:
    """K distinct indices sampled without replacement with probabilities softmax(log_probs).

    Gumbel-top-k (Kool, van Hoof & Welling 2019): the top-k of log_probs + Gumbel noise is an
    ordered sample from the Plackett-Luce distribution, i.e. sequential sampling without
    replacement. Returns int32 indices [..., K] in sampling order.
    """
    g = jax.random.gumbel(key, log_probs_NxE.shape, dtype=jnp.float32)
    _, idx = jax.lax.top_k(log_probs_NxE.astype(jnp.float32) + g, k)
    return idx.astype(jnp.int32)


def _zeros_linear(d_in: int, d_out: int, bias: float, rngs: nnx.Rngs, stddev: float = 0.0):
    kinit = nnx.initializers.zeros if stddev == 0 else nnx.initializers.normal(stddev)
    return nnx.Linear(
        d_in,
        d_out,
        kernel_init=kinit,
        bias_init=nnx.initializers.constant(bias),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


class LogitPosteriorHeads(nnx.Module):
    """Amortised heads u -> (delta_mu [E], pre-softplus sigma [E], optional V [E, R])."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        d, e = cfg.d_model, cfg.n_experts
        init_sigma = float(_opt(cfg, "vmoer_init_sigma"))
        sigma_min = float(_opt(cfg, "vmoer_sigma_min"))
        if not init_sigma > sigma_min >= 0:
            raise ValueError(
                f"vmoer_init_sigma: must exceed vmoer_sigma_min={sigma_min} >= 0, got {init_sigma}"
            )
        self.rank = int(_opt(cfg, "vmoer_rank"))
        if self.rank < 0:
            raise ValueError(f"vmoer_rank: must be >= 0, got {self.rank}")
        self.delta_mu = _zeros_linear(d, e, 0.0, rngs)
        self.sigma = _zeros_linear(d, e, _softplus_inverse(init_sigma - sigma_min), rngs)
        self.lowrank = _zeros_linear(d, e * self.rank, 0.0, rngs, 0.01) if self.rank else None


class LogitVariationalRouter(moe.TopKRouter):
    """Logit-space VMoER router (see module docstring). Adds `vmoer_kl` to aux.

    Set `sample = True` (or `set_router_sampling(model, True)`) to draw one logit sample per
    forward pass at inference (for mutual information over S full stochastic passes); by default
    inference averages softmax over `vmoer_samples` samples.
    """

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.vrouter = LogitPosteriorHeads(cfg, rngs=rngs)
        self.rngs = _router_stream(rngs)
        self.beta = float(_opt(cfg, "vmoer_beta"))
        self.prior_sigma = float(_opt(cfg, "vmoer_prior_sigma"))
        self.sigma_min = float(_opt(cfg, "vmoer_sigma_min"))
        self.n_samples = int(_opt(cfg, "vmoer_samples"))
        if self.prior_sigma <= 0:
            raise ValueError(f"vmoer_prior_sigma: must be > 0, got {self.prior_sigma}")
        if self.n_samples < 1:
            raise ValueError(f"vmoer_samples: must be >= 1, got {self.n_samples}")
        self.sample = False

    def posterior(self, x_BxTxD: Array) -> tuple[Array, Array, Array, Array | None]:
        """-> (deterministic logits, delta_mu, sigma [B, T, E], V [B, T, E, R] or None)."""
        u = x_BxTxD.astype(jnp.float32)
        logits = self.proj(u)
        delta = self.vrouter.delta_mu(u)
        sigma = jax.nn.softplus(self.vrouter.sigma(u)) + self.sigma_min
        v = None
        if self.vrouter.lowrank is not None:
            v = self.vrouter.lowrank(u).reshape(*u.shape[:-1], logits.shape[-1], -1)
        return logits, delta, sigma, v

    def __call__(self, x_BxTxD: Array, *, train: bool = False) -> moe.RouterOutput:
        logits, delta, sigma, v = self.posterior(x_BxTxD)
        mu = logits + delta
        n = 1 if (train or self.sample) else self.n_samples
        k_eps, k_low = jax.random.split(self.rngs())
        eps_SxBxTxE = jax.random.normal(k_eps, (n, *mu.shape), jnp.float32)
        l_SxBxTxE = mu[None] + sigma[None] * eps_SxBxTxE
        if v is not None:
            eps_SxBxTxR = jax.random.normal(k_low, (n, *mu.shape[:-1], v.shape[-1]), jnp.float32)
            l_SxBxTxE = l_SxBxTxE + jnp.einsum("bter,sbtr->sbte", v, eps_SxBxTxR)
        probs = jnp.mean(jax.nn.softmax(l_SxBxTxE, axis=-1), axis=0)
        experts, gates = moe.top_k_gates(probs, self.top_k, normalize=self.normalize_gates)
        kl_BxT = gaussian_kl(delta, sigma, self.prior_sigma, v)
        aux = {"vmoer_kl": self.beta * jnp.mean(kl_BxT)}
        trace = {"router_sigma": jnp.mean(sigma, axis=-1)}
        return moe.RouterOutput(mu, probs, experts, gates, aux, trace)


class TemperatureHead(nnx.Module):
    """u -> pre-softplus temperature (zero kernel, bias so that T = 1 at initialisation)."""

    def __init__(self, cfg: Any, min_temperature: float, *, rngs: nnx.Rngs):
        self.temp = _zeros_linear(cfg.d_model, 1, _softplus_inverse(1.0 - min_temperature), rngs)


class TemperatureRouter(moe.TopKRouter):
    """Selection-space VMoER router with an inferred temperature (see module docstring)."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.min_temperature = float(_opt(cfg, "vmoer_min_temperature"))
        if not 0 < self.min_temperature < 1:
            raise ValueError(
                f"vmoer_min_temperature: must lie in (0, 1), got {self.min_temperature}"
            )
        self.vrouter = TemperatureHead(cfg, self.min_temperature, rngs=rngs)
        self.rngs = _router_stream(rngs)
        self.beta = float(_opt(cfg, "vmoer_beta"))
        self.temp_prior_sigma = float(_opt(cfg, "vmoer_temp_prior_sigma"))
        self.sample = False

    def temperature(self, x_BxTxD: Array) -> Array:
        """T(u) = softplus(head(u)) + T_min >= T_min > 0: [B, T, D] -> [B, T]."""
        z = self.vrouter.temp(x_BxTxD.astype(jnp.float32))[..., 0]
        return jax.nn.softplus(z) + self.min_temperature

    def __call__(self, x_BxTxD: Array, *, train: bool = False) -> moe.RouterOutput:
        logits = self.logits(x_BxTxD)
        temp_BxT = self.temperature(x_BxTxD)
        scaled = logits / temp_BxT[..., None]
        probs = jax.nn.softmax(scaled, axis=-1)
        if train or self.sample:
            experts = gumbel_top_k(self.rngs(), jax.nn.log_softmax(scaled, axis=-1), self.top_k)
            gates = jnp.take_along_axis(probs, experts, axis=-1)
            if self.normalize_gates:
                gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
        else:
            experts, gates = moe.top_k_gates(probs, self.top_k, normalize=self.normalize_gates)
        # MAP penalty of a log-normal prior log T ~ N(0, s_T^2) (centred on T = 1).
        penalty = jnp.mean(jnp.square(jnp.log(temp_BxT))) / (2 * self.temp_prior_sigma**2)
        aux = {"vmoer_temp_prior": self.beta * penalty}
        return moe.RouterOutput(logits, probs, experts, gates, aux, {"temperature": temp_BxT})


def make_router(cfg: Any, router_type: str, *, rngs: nnx.Rngs) -> moe.TopKRouter:
    """Router factory: "det" (deterministic), "logit" or "temp"."""
    check_vmoer_options(dict(getattr(cfg, "vmoer_options", {}) or {}))
    if router_type == "det":
        return moe.TopKRouter(cfg, rngs=rngs)
    if router_type == "logit":
        return LogitVariationalRouter(cfg, rngs=rngs)
    if router_type == "temp":
        return TemperatureRouter(cfg, rngs=rngs)
    raise ValueError(f"router_type: unknown {router_type!r}; expected det, logit or temp")


class VMoEMLP(moe.MoEMLP):
    """MoE MLP sublayer with a variational router (`router_type` "logit" or "temp")."""

    def __init__(self, cfg: Any, *, router_type: str = "logit", rngs: nnx.Rngs):
        if router_type not in ROUTER_TYPES:
            raise ValueError(
                f"router_type: unknown {router_type!r}; expected one of {ROUTER_TYPES}"
            )
        super().__init__(cfg, router=make_router(cfg, router_type, rngs=rngs), rngs=rngs)


def set_router_sampling(model: nnx.Module, sample: bool) -> int:
    """Sets `sample` on every variational router in `model`; returns how many were set.

    With `sample=True`, inference draws one logit sample (logit router) or Gumbel-top-k selection
    (temperature router) per forward pass, so S passes give S stochastic predictions.
    """
    n = 0
    for _, m in nnx.iter_modules(model):
        if isinstance(m, LogitVariationalRouter | TemperatureRouter):
            m.sample = bool(sample)
            n += 1
    return n


def router_posterior_param_names(model: nnx.Module) -> list[str]:
    """'/'-joined paths of the router-posterior parameters (those a retrofit trains)."""
    state = nnx.state(model, nnx.All(nnx.Param, nnx.PathContains(VROUTER_PATH)))
    return sorted("/".join(str(p) for p in path) for path, _ in nnx.to_flat_state(state))


def retrofit_from(vmoer_model: nnx.Module, deterministic_model_or_state: Any) -> None:
    """Copies every parameter of a trained deterministic MoE model into a VMoER model in place.

    Paths are shared (router/proj, experts, attention, ...); the `vrouter` heads keep their
    initialisation, so the VMoER model starts as the deterministic one (delta_mu = 0, T = 1).
    Train afterwards with `trainable=VROUTER_PATH` so only the routing posterior moves.

    Raises:
      ValueError: if a deterministic parameter has no counterpart of the same shape.
    """
    src = deterministic_model_or_state
    if isinstance(src, nnx.Module):
        src = nnx.state(src, nnx.Param)
    dst = dict(nnx.to_flat_state(nnx.state(vmoer_model, nnx.Param)))
    for path, var in nnx.to_flat_state(src):
        if path not in dst:
            raise ValueError(
                f"deterministic_model_or_state: parameter {path} not in the VMoER model"
            )
        if dst[path].shape != var.shape:
            raise ValueError(
                f"deterministic_model_or_state: shape mismatch at {path}: "
                f"{var.shape} vs {dst[path].shape}"
            )
    nnx.update(vmoer_model, src)
