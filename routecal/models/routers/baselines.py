"""Weight-space Bayesian router baselines of the thesis (Li, arXiv:2509.23830, Ch. 3): MC-dropout
and deep-ensemble routers. Both average S (resp. M) softmax vectors inside the router at
inference and then take top-k, so the experts run once (as the logit-space routers do).

MC-dropout ("mc_dropout", Gal & Ghahramani 2016): dropout of rate p on the router input u,
  l = W_r (m * u / (1 - p)), m ~ Bernoulli(1 - p)^D; one mask in training, S masks averaged at
  inference. Its posterior is the router weight W_r itself (a retrofit trains `router/proj`).
Deep ensemble ("ensemble", Lakshminarayanan et al. 2017): M router projections, member 0 in
  `router/proj` and members 1..M-1 under `vrouter/members`; at inference
  s = (1/M) sum_m softmax(l_m). Every study fits each member alone (`fit_members`: from the
  deterministic router plus an N(0, s^2) perturbation for a retrofit, from the router's own
  initialiser N(0, 0.02^2) on a backbone trained from scratch (`reset_routers`); its own seed,
  the same objective, until its loss plateaus (`Plateau`, capped), its loss curve, steps and
  plateau flag recorded) and writes them into the router (`install_members`); every source of
  the VMoER section shares them through `training.router_fit.fit_ensemble` (imported
  checkpoints with a fixed step count). A plain
  trainer given an ensemble router (no study) routes every token by one member drawn
  uniformly in training (members 1..M-1 initialised N(0, 0.02^2)): a joint fit, the fallback.
SWAG (Maddox et al. 2019): `routers.swag`.

Traces: `router_logit_var` [B, T] = mean over experts of the variance of the logits over the S masks
(resp. M members).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from routecal.models import moe
from routecal.models.routers import common

Array = jax.Array


def _average_and_select(router: moe.TopKRouter, l_SxBxTxE: Array) -> tuple[Array, Array, Array]:
    probs = jnp.mean(jax.nn.softmax(l_SxBxTxE, axis=-1), axis=0)
    experts, gates = moe.top_k_gates(probs, router.top_k, normalize=router.normalize_gates)
    return probs, experts, gates


class MCDropoutRouter(moe.TopKRouter):
    """MC-dropout router (module docstring)."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.rate = float(common.opt(cfg, "vmoer_dropout"))
        if not 0 < self.rate < 1:
            raise ValueError(f"vmoer_dropout: must lie in (0, 1), got {self.rate}")
        self.n_samples = int(common.opt(cfg, "vmoer_samples"))
        if self.n_samples < 1:
            raise ValueError(f"vmoer_samples: must be >= 1, got {self.n_samples}")
        self.rngs = common.router_stream(rngs)
        self.sample = False
        self.noise_group = 1  # common random numbers (`vmoer.set_common_noise`)

    def __call__(self, x_BxTxD: Array, *, train: bool = False) -> moe.RouterOutput:
        u = x_BxTxD.astype(jnp.float32)
        n = 1 if (train or self.sample) else self.n_samples

        def bernoulli(k: Array, shape: tuple[int, ...]) -> Array:
            return jax.random.bernoulli(k, 1.0 - self.rate, shape)

        keep = common.common_draws(self.rngs(), bernoulli, (n, *u.shape), 1, self.noise_group)
        u_S = jnp.where(keep, u[None] / (1.0 - self.rate), 0.0)
        l_S = self.proj(u_S)
        probs, experts, gates = _average_and_select(self, l_S)
        trace = {"router_logit_var": jnp.mean(jnp.var(l_S, axis=0), axis=-1)}
        return moe.RouterOutput(jnp.mean(l_S, axis=0), probs, experts, gates, {}, trace)


class EnsembleMembers(nnx.Module):
    """Members 1..M-1 of the deep-ensemble router: one [D, (M - 1) E] projection, no bias."""

    def __init__(self, cfg: Any, n_members: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(
            cfg.d_model,
            (n_members - 1) * cfg.n_experts,
            use_bias=False,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            kernel_init=nnx.initializers.normal(stddev=0.02),
            rngs=rngs,
        )


class EnsembleRouter(moe.TopKRouter):
    """Deep-ensemble router (module docstring)."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.n_members = int(common.opt(cfg, "vmoer_ensemble"))
        if self.n_members < 2:
            raise ValueError(f"vmoer_ensemble: must be >= 2 members, got {self.n_members}")
        self.vrouter = EnsembleMembers(cfg, self.n_members, rngs=rngs)
        self.rngs = common.router_stream(rngs)
        self.aux_to_posterior = bool(common.opt(cfg, "vmoer_aux_to_posterior"))
        self.sample = False
        self.noise_group = 1  # common random numbers (`vmoer.set_common_noise`)

    def member_logits(self, x_BxTxD: Array) -> Array:
        """Logits of every member: [B, T, D] -> [M, B, T, E] (member 0 = deterministic)."""
        u = x_BxTxD.astype(jnp.float32)
        rest = self.vrouter.proj(u).reshape(*u.shape[:-1], self.n_members - 1, self.n_experts)
        return jnp.concatenate([self.proj(u)[None], jnp.moveaxis(rest, -2, 0)], axis=0)

    def __call__(self, x_BxTxD: Array, *, train: bool = False) -> moe.RouterOutput:
        l_M = self.member_logits(x_BxTxD)
        if train or self.sample:
            def randint(k: Array, shape: tuple[int, ...]) -> Array:
                return jax.random.randint(k, shape, 0, self.n_members)

            pick = common.common_draws(self.rngs(), randint, l_M.shape[1:3], 0, self.noise_group)
            onehot = jax.nn.one_hot(pick, self.n_members, axis=0, dtype=jnp.float32)
            l_S = jnp.sum(onehot[..., None] * l_M, axis=0)[None]
        else:
            l_S = l_M
        probs, experts, gates = _average_and_select(self, l_S)
        det_probs = jax.nn.softmax(l_M[0], axis=-1)
        trace = {"router_logit_var": jnp.mean(jnp.var(l_M, axis=0), axis=-1)}
        return moe.RouterOutput(
            l_M[0],
            common.aux_values(probs, det_probs, self.aux_to_posterior),
            experts,
            gates,
            {},
            trace,
        )


# ----------------------------------------------------------------------------------------------
# Members fitted alone (deep ensemble retrofit)
# ----------------------------------------------------------------------------------------------


def converged(losses: list[float], window: float = 0.1, tol: float = 0.02, z: float = 2.0) -> bool:
    """Whether a loss curve has reached a plateau: the last w = max(floor(window n), 1) steps
    improve on the w before them by no more than the tolerance plus the batch noise,

        mean(prev) - mean(last) <= tol |mean(prev)| + z s sqrt(2 / w),

    s the residual sd of a straight line fitted to the 2w losses (the per-step batch noise with
    the trend removed; 0 when 2w = 2). One-sided: a loss that rises has stopped improving. With
    z = 0 it is the plain relative-change rule; z = 2 keeps minibatch noise (sd 0.14 per step in
    the LM ensemble members, about 4.5% between two 20-step windows) from posing as progress,
    a one-sided Welch-type comparison of two window means at about the 2.3% level.
    """
    n = len(losses)
    w = max(int(n * window), 1)
    if n < 2 * w:
        return False
    x = np.asarray(losses[-2 * w :], np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("losses: NaN or inf in the loss curve (the member's fit diverged)")
    prev, last = float(x[:w].mean()), float(x[w:].mean())
    s = 0.0
    if 2 * w > 2:
        t = np.arange(2 * w, dtype=np.float64)
        resid = x - np.polyval(np.polyfit(t, x, 1), t)
        s = float(np.sqrt(resid @ resid / (2 * w - 2)))
    return bool(prev - last <= tol * max(abs(prev), 1e-12) + z * s * float(np.sqrt(2.0 / w)))


@dataclasses.dataclass(frozen=True)
class Plateau:
    """When a member's fit stops: `converged(losses, window, tol, z)` is checked after
    `min_steps` steps and every `check_every` steps after that; the fit stops at the first
    check where it holds, at `max_steps` at the latest. `Plateau(n, n, 1)` is a fixed n steps.

    Raises:
      ValueError: naming the config key (`train.member_steps`, `train.member_max_steps`,
        `train.member_check_every`, `train.member_plateau_z`) of a bad value.
    """

    min_steps: int
    max_steps: int
    check_every: int = 50
    window: float = 0.1
    tol: float = 0.02
    z: float = 2.0

    def __post_init__(self) -> None:
        if self.min_steps < 1:
            raise ValueError(f"train.member_steps: must be >= 1, got {self.min_steps}")
        if self.max_steps < self.min_steps:
            raise ValueError(f"train.member_max_steps: must be >= train.member_steps "
                             f"({self.min_steps}), got {self.max_steps}")
        if self.check_every < 1:
            raise ValueError(f"train.member_check_every: must be >= 1, got {self.check_every}")
        if not (self.z >= 0 and np.isfinite(self.z)):
            raise ValueError(f"train.member_plateau_z: must be finite and >= 0, got {self.z}")

    @classmethod
    def from_config(cls, section: Any, fallback_steps: int) -> Plateau:
        """The rule of a config section (`train` in the LM study, `experiment` in digits):
        `member_steps` (default `fallback_steps`), `member_max_steps` (default `member_steps`:
        a fixed length), `member_check_every` (default 50), `member_plateau_z` (default 2)."""
        first = int(section.get("member_steps", fallback_steps))
        return cls(first, int(section.get("member_max_steps", first)),
                   int(section.get("member_check_every", 50)),
                   z=float(section.get("member_plateau_z", 2.0)))

    def stop(self, losses: list[float]) -> bool:
        """Whether a fit with these task `losses` (one per step so far) stops now."""
        n = len(losses)
        due = n >= self.min_steps and (n - self.min_steps) % self.check_every == 0
        return n >= self.max_steps or (due and converged(losses, self.window, self.tol, self.z))


ROUTER_INIT_STD = 0.02  # `moe.TopKRouter`'s kernel initialiser: where from-scratch members start


def router_list(model: nnx.Module) -> list[moe.TopKRouter]:
    """Every top-k router of `model` (any registry router), in module order."""
    return [m for _, m in nnx.iter_modules(model) if isinstance(m, moe.TopKRouter)]


def perturb_routers(model: nnx.Module, scale: float, rng: np.random.Generator) -> None:
    """Adds N(0, scale^2) noise (numpy `rng`) to every router's `router/proj` kernel, in place."""
    for r in router_list(model):
        w = r.proj.kernel[...]
        r.proj.kernel[...] = w + jnp.asarray(scale * rng.standard_normal(w.shape), w.dtype)


def reset_routers(model: nnx.Module) -> nnx.Module:
    """Sets every router's `router/proj` kernel to zero, in place (a from-scratch member then
    starts at N(0, s^2) after `perturb_routers`: the router's own initialiser); returns `model`."""
    for r in router_list(model):
        r.proj.kernel[...] = jnp.zeros_like(r.proj.kernel[...])
    return model


def fit_members(
    make_member: Callable[[], nnx.Module],
    fit_member: Callable[[nnx.Module, int, Plateau], list[float]],
    n_members: int,
    scale: float,
    seed: int,
    rule: Plateau,
) -> tuple[list[list[Array]], list[dict[str, Any]]]:
    """Fits the M members of a deep-ensemble router one by one (Lakshminarayanan et al. 2017).

    Member m: `make_member()` (a model routed by the deterministic router, copied from the
    trained one; from scratch its router kernels are zero, `reset_routers`), its router kernels
    perturbed by N(0, scale^2) (numpy seed (seed, m)), then `fit_member(member, m, rule)` trains
    it alone (its own batch order, the caller's objective) for at most `rule.max_steps` steps,
    stopping when `rule.stop(losses)` holds, and returns its task losses.

    Returns:
      (kernels[m][layer] [D, E], logs[m] = {"seed", "steps" (used), "max_steps", "losses",
      "final_loss" (mean of the last 10), "converged" (`converged` on the whole curve)}).
    """
    if n_members < 2:
        raise ValueError(f"vmoer_ensemble: must be >= 2 members, got {n_members}")
    kernels, logs = [], []
    for m in range(n_members):
        member = make_member()
        perturb_routers(member, scale, np.random.default_rng([seed, m]))
        losses = [float(x) for x in fit_member(member, m, rule)]
        kernels.append([r.proj.kernel[...] for r in router_list(member)])
        logs.append({"seed": [seed, m], "steps": len(losses), "max_steps": rule.max_steps,
                     "losses": losses,
                     "final_loss": float(np.mean(losses[-10:])) if losses else None,
                     "converged": converged(losses, rule.window, rule.tol, rule.z)})  # fmt: skip
    return kernels, logs


def install_members(model: nnx.Module, kernels: list[list[Array]]) -> None:
    """Writes member kernels (`fit_members`) into every `EnsembleRouter` of `model`: member 0
    into `router/proj`, members 1..M-1 into `vrouter/proj` ([D, (M - 1) E], member-major)."""
    ens = [r for r in router_list(model) if isinstance(r, EnsembleRouter)]
    if not ens:
        raise ValueError("model: has no ensemble router")
    if any(len(k) != len(ens) for k in kernels) or len(kernels) != ens[0].n_members:
        raise ValueError(f"kernels: expected {ens[0].n_members} members x {len(ens)} layers, got "
                         f"{len(kernels)} x {[len(k) for k in kernels]}")
    for j, r in enumerate(ens):
        r.proj.kernel[...] = kernels[0][j]
        r.vrouter.proj.kernel[...] = jnp.concatenate([k[j] for k in kernels[1:]], axis=1)
