"""MLP probes on routing profiles with matched controls (Flax NNX, optax AdamW, seeded).

Shapes: N examples, S routed sublayers, D = 1 + S inputs (c, H_1..H_S).

Variants:
  "full": one hidden layer of `hidden` units on (c, H_1..H_S): params = hidden * (S + 3) + 1.
  "capacity_matched": confidence only, with hidden * (S + 3) / 3 units, so its parameter count
    (3 * width + 1) equals the full model's exactly (`hidden` must be a multiple of 3).
  "shuffled": the full architecture on (c, H[pi]) with the rows of H permuted across examples
    (a fixed seeded permutation at fit time and another at predict time): same inputs' marginals,
    the per-example pairing of routing with correctness destroyed.
Inputs are standardised with calibration-split means and standard deviations (a constant column,
e.g. the entropy of a sublayer with one source, is only centred).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from routecal import _checks
from routecal.probes.data import PROFILE, Probe, ProbeData, targets_of

VARIANTS = ("full", "capacity_matched", "shuffled")


class _MLP(nnx.Module):
    """One hidden layer: n_in -> hidden (tanh) -> 1 logit."""

    def __init__(self, n_in: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(n_in, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x_NxD: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(x_NxD)))[:, 0]


@functools.partial(jax.jit, static_argnames=("graphdef", "steps"))
def _train(graphdef, state, x_NxD, y_N, lr, weight_decay, *, steps: int):
    """Full-batch AdamW on the binary cross-entropy; returns the trained state and final loss."""
    tx = optax.adamw(lr, weight_decay=weight_decay)

    def loss_fn(st):
        logits = nnx.merge(graphdef, st)(x_NxD)
        return optax.sigmoid_binary_cross_entropy(logits, y_N).mean()

    def step(carry, _):
        st, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(st)
        updates, opt_state = tx.update(grads, opt_state, st)
        return (optax.apply_updates(st, updates), opt_state), loss

    (state, _), losses = jax.lax.scan(step, (state, tx.init(state)), None, length=steps)
    return state, losses[-1]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _forward(graphdef, state, x_NxD):
    return jax.nn.sigmoid(nnx.merge(graphdef, state)(x_NxD))


class MLPParams(NamedTuple):
    graphdef: Any  # nnx.GraphDef of the MLP
    state: Any  # its trained nnx.State
    mean: np.ndarray  # [D'] input standardisation
    scale: np.ndarray  # [D']
    variant: str
    seed: int
    n_routing: int  # S the probe was fitted with
    width: int  # hidden units
    n_params: int


def design(x_NxD: np.ndarray, variant: str, seed: int, stream: int) -> tuple[np.ndarray, Any]:
    """The variant's inputs from x = (c, H_1..H_S): (design [N, D'], permutation or None).

    "shuffled" permutes the routing columns' rows with a permutation seeded by (seed, stream)
    (stream 0 at fit, 1 at predict); "capacity_matched" keeps the confidence column only.
    """
    perm = None
    if variant == "shuffled":
        perm = np.random.default_rng([seed, stream]).permutation(len(x_NxD))
        shuffled = x_NxD.copy()
        shuffled[:, 1:] = x_NxD[perm, 1:]
        x_NxD = shuffled
    if variant == "capacity_matched":
        x_NxD = x_NxD[:, :1]
    return x_NxD, perm


def mlp_fit(
    x_NxD: np.ndarray, y_N: np.ndarray, *, variant: str, hidden: int, steps: int,
    learning_rate: float, weight_decay: float, seed: int,
) -> tuple[MLPParams, np.ndarray, Any]:
    """Trains the variant on x = (c, H_1..H_S); returns (params, training design, permutation)."""
    n_routing = x_NxD.shape[1] - 1
    full_params = hidden * (n_routing + 3) + 1
    x, perm = design(x_NxD, variant, seed, stream=0)
    width = (full_params - 1) // 3 if variant == "capacity_matched" else hidden
    mean = x.mean(axis=0)
    sd = x.std(axis=0)
    scale = np.where(sd > 0, sd, 1.0)
    model = _MLP(x.shape[1], width, rngs=nnx.Rngs(seed))
    n_params = int(sum(np.size(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))
    graphdef, state = nnx.split(model)
    z = jnp.asarray((x - mean) / scale, jnp.float32)
    state, loss = _train(
        graphdef, state, z, jnp.asarray(y_N, jnp.float32), learning_rate, weight_decay,
        steps=steps,
    )
    if not np.isfinite(float(loss)):
        raise ValueError(f"MLPProbe: training diverged (loss {float(loss)}); lower learning_rate")
    params = MLPParams(graphdef, state, mean, scale, variant, seed, n_routing, width, n_params)
    return params, x, perm


def mlp_apply(params: MLPParams, x_NxD: np.ndarray) -> np.ndarray:
    """[N] P(correct) of the fitted MLP on x = (c, H_1..H_S) (shuffled: predict-time stream)."""
    x, _ = design(x_NxD, params.variant, params.seed, stream=1)
    z = jnp.asarray((x - params.mean) / params.scale, jnp.float32)
    return np.asarray(_forward(params.graphdef, params.state, z), np.float64)


class MLPProbe(Probe):
    """MLP probe (see the module docstring for the variants and their matching)."""

    VARIANTS = VARIANTS

    def __init__(
        self,
        variant: str = "full",
        *,
        profile: str = PROFILE,
        hidden: int = 24,
        steps: int = 500,
        learning_rate: float = 1e-2,
        weight_decay: float = 1e-4,
        seed: int = 0,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
        if _checks.check_positive_int(hidden, "hidden") % 3:
            raise ValueError(
                f"hidden: must be a multiple of 3 for exact capacity matching, got {hidden}"
            )
        self.variant = variant
        self.profile = profile
        self.hidden = hidden
        self.steps = _checks.check_positive_int(steps, "steps")
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)

    n_params_ = property(lambda self: None if self.params_ is None else self.params_.n_params)
    width_ = property(lambda self: None if self.params_ is None else self.params_.width)
    n_routing_ = property(lambda self: None if self.params_ is None else self.params_.n_routing)

    def __repr__(self):
        if self.params_ is None:
            return f"MLPProbe(variant={self.variant!r}, hidden={self.hidden}, unfitted)"
        s = self.n_routing_
        inputs = (
            "confidence only"
            if self.variant == "capacity_matched"
            else f"(c, {self.profile}_1..{self.profile}_{s})"
        )
        return (
            f"MLPProbe(variant={self.variant!r}, inputs={inputs}, width={self.width_}, "
            f"n_params={self.n_params_}, matched to full MLP with hidden={self.hidden}, "
            f"S={s}: {self.hidden * (s + 3) + 1} params)"
        )

    def _inputs(self, data: Any, name: str) -> np.ndarray:
        if isinstance(data, ProbeData):
            return np.concatenate([data.confidence[:, None], data.profile(self.profile)], axis=1)
        x = _checks.as_array(data, name, ndim=2)
        if x.shape[1] < 2:
            raise ValueError(
                f"{name}: expected [N, 1 + S] = (c, H_1..H_S) with S >= 1, got {x.shape}"
            )
        return x

    def fit(self, data: Any, correct: Any = None) -> MLPProbe:
        """Fits on a ProbeData (with routing profile `profile`) or x [N, 1 + S] + correct [N]."""
        x = self._inputs(data, "features")
        y = targets_of(x, data, correct)
        self.params_, self.train_inputs_, self.permutation_ = mlp_fit(
            x, y, variant=self.variant, hidden=self.hidden, steps=self.steps,
            learning_rate=self.learning_rate, weight_decay=self.weight_decay, seed=self.seed,
        )
        return self

    def predict(self, data: Any) -> np.ndarray:
        params = self._check_fitted()
        x = self._inputs(data, "features")
        if x.shape[1] - 1 != params.n_routing:
            raise ValueError(
                f"features: fitted with S={params.n_routing} routing columns, got {x.shape[1] - 1}"
            )
        return mlp_apply(params, x)
