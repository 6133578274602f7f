"""Logit-space VMoER routers: MFVR (diagonal), low-rank and FCVR (full covariance via Cholesky).

Li & Wicker (arXiv:2603.09453), Sec. 3.1, "amortised variational inference over routing logits":
  q(l | u) = N(mu(u), Sigma(u)),  mu = l_det(u) + delta_mu(u),  prior p(l | u) = N(l_det(u), I),
  loss = task + beta * KL(q || p)  (closed form, `gaussian.kl_*`, averaged over tokens),
  training: one reparameterised sample l ~ q, s = softmax(l), top-k of s;
  inference: s = (1/S) sum_s softmax(l_s), then top-k; the experts run once.
Heads are amortised: by default an MLP trunk (`vmoer_head="mlp"`) and outputs delta_mu [E],
log sigma [E] (`vmoer_sigma_param="log"`; "softplus" keeps sigma = softplus(.) + sigma_min) and,
for FCVR, the E (E - 1) / 2 strictly-lower Cholesky entries; for the low-rank family a factor
V [E, R]. delta_mu and the Cholesky / V heads start at zero, log sigma at log(init_sigma), so a
retrofitted router starts at the deterministic router's mean.

The prior's mean is stop_gradient(l_det): the KL regularises the posterior's shift and spread,
never pulls the deterministic router.

Traces: `router_logit_var` [B, T] = mean_e Sigma_ee (the router-logit variance OOD score).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from routecal.models import moe
from routecal.models.routers import common, gaussian

Array = jax.Array
COVARIANCES = ("diag", "lowrank", "full")


class LogitPosteriorHeads(nnx.Module):
    """u -> (delta_mu [E], raw sigma [E], V [E, R] or Cholesky off-diagonals [P] or None)."""

    def __init__(self, cfg: Any, covariance: str, *, rngs: nnx.Rngs):
        e = cfg.n_experts
        self.covariance = common.check_choice(covariance, "covariance", COVARIANCES)
        self.sigma_param = common.check_choice(
            common.opt(cfg, "vmoer_sigma_param"), "vmoer_sigma_param", common.SIGMA_PARAMS
        )
        init_sigma = float(common.opt(cfg, "vmoer_init_sigma"))
        self.sigma_min = float(common.opt(cfg, "vmoer_sigma_min"))
        if not init_sigma > self.sigma_min >= 0:
            raise ValueError(
                f"vmoer_init_sigma: must exceed vmoer_sigma_min={self.sigma_min} >= 0, "
                f"got {init_sigma}"
            )
        self.trunk = common.HeadTrunk(cfg, rngs=rngs)
        w = self.trunk.width
        self.delta_mu = common.linear(w, e, rngs)
        if self.sigma_param == "log":
            bias = math.log(init_sigma)
        else:
            bias = common.softplus_inverse(init_sigma - self.sigma_min)
        self.sigma = common.linear(w, e, rngs, bias=bias)
        lowrank, full = covariance == "lowrank", covariance == "full"
        self.rank = int(common.opt(cfg, "vmoer_rank")) if lowrank else 0
        if lowrank and self.rank < 1:
            raise ValueError(f"vmoer_rank: must be >= 1 for the lowrank router, got {self.rank}")
        self.lowrank = common.linear(w, e * self.rank, rngs, std=0.01) if lowrank else None
        self.offdiag = common.linear(w, e * (e - 1) // 2, rngs) if full else None

    def __call__(self, u_BxTxD: Array) -> tuple[Array, Array, Array | None, Array | None]:
        """-> delta [B, T, E], sigma [B, T, E], V [B, T, E, R] | None, L [B, T, E, E] | None."""
        h = self.trunk(u_BxTxD)
        delta = self.delta_mu(h)
        raw = self.sigma(h)
        if self.sigma_param == "log":
            sigma = jnp.exp(raw)
        else:
            sigma = jax.nn.softplus(raw) + self.sigma_min
        v = chol = None
        if self.lowrank is not None:
            v = self.lowrank(h).reshape(*delta.shape, self.rank)
        if self.offdiag is not None:
            chol = gaussian.cholesky_factor(sigma, self.offdiag(h))
        return delta, sigma, v, chol


class LogitVariationalRouter(moe.TopKRouter):
    """MFVR / low-rank / FCVR router (module docstring). Adds `vmoer_kl` (= beta * KL) to aux.

    `sample = True` (`set_router_sampling`) draws one logit sample per forward pass at inference,
    so S full passes give S stochastic predictions (mutual information).
    """

    def __init__(self, cfg: Any, *, covariance: str = "diag", rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.rngs = common.router_stream(rngs)  # forked first: noise independent of the heads
        self.vrouter = LogitPosteriorHeads(cfg, covariance, rngs=rngs)
        self.beta = float(common.opt(cfg, "vmoer_beta"))
        self.prior_sigma = float(common.opt(cfg, "vmoer_prior_sigma"))
        self.n_samples = int(common.opt(cfg, "vmoer_samples"))
        self.aux_to_posterior = bool(common.opt(cfg, "vmoer_aux_to_posterior"))
        if self.prior_sigma <= 0:
            raise ValueError(f"vmoer_prior_sigma: must be > 0, got {self.prior_sigma}")
        if self.n_samples < 1:
            raise ValueError(f"vmoer_samples: must be >= 1, got {self.n_samples}")
        if self.beta < 0:
            raise ValueError(f"vmoer_beta: must be >= 0, got {self.beta}")
        self.sample = False
        self.noise_group = 1  # common random numbers (`vmoer.set_common_noise`)

    def posterior(self, x_BxTxD: Array) -> tuple[Array, Array, Array, Array | None, Array | None]:
        """-> (deterministic logits, delta_mu, sigma [B, T, E], V or None, L or None)."""
        logits = self.logits(x_BxTxD)
        delta, sigma, v, chol = self.vrouter(x_BxTxD)
        return logits, delta, sigma, v, chol

    def kl(self, delta: Array, sigma: Array, v: Array | None, chol: Array | None) -> Array:
        """Per-token KL(q || p) [B, T] in the closed form of the covariance family."""
        if chol is not None:
            return gaussian.kl_cholesky(delta, chol, self.prior_sigma)
        return gaussian.kl_lowrank(delta, sigma, v, self.prior_sigma)

    def __call__(self, x_BxTxD: Array, *, train: bool = False) -> moe.RouterOutput:
        logits, delta, sigma, v, chol = self.posterior(x_BxTxD)
        mu = logits + delta
        n = 1 if (train or self.sample) else self.n_samples
        l_SxBxTxE = gaussian.sample_logits(
            self.rngs(), mu, sigma, n, v_BxTxExR=v, chol_BxTxExE=chol, group=self.noise_group
        )
        probs = jnp.mean(jax.nn.softmax(l_SxBxTxE, axis=-1), axis=0)
        experts, gates = moe.top_k_gates(probs, self.top_k, normalize=self.normalize_gates)
        det_probs = jax.nn.softmax(logits, axis=-1)
        aux = {"vmoer_kl": self.beta * jnp.mean(self.kl(delta, sigma, v, chol))}
        trace = {
            "router_sigma": jnp.mean(sigma, axis=-1),
            "router_logit_var": gaussian.logit_variance(sigma, v_BxTxExR=v, chol_BxTxExE=chol),
        }
        return moe.RouterOutput(
            common.aux_values(mu, logits, self.aux_to_posterior),
            common.aux_values(probs, det_probs, self.aux_to_posterior),
            experts,
            gates,
            aux,
            trace,
        )
