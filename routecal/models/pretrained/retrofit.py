"""VMoER retrofit of an imported MoE LM: train only the routing posterior, everything else frozen.

VMoER (Li and Wicker, arXiv:2603.09453, Sec. "retrofitting"): keep the pretrained model and its
deterministic router, add a variational posterior over the routing (the `vrouter` heads of
`routecal.models.vmoer`, initialised so the model starts as the deterministic one) and fit only
those heads on the task. Here:

    model, info = load_hf(ckpt, overrides={"mlp_type": "vmoer_mfvr"})    # posterior fresh
    summary = retrofit(model, batches, workdir, RetrofitConfig(steps=500))

* Frozen by construction: gradients are taken only with respect to the trained selection
  (`trainable`, default `POSTERIOR`, the `vrouter` heads: `nnx.DiffState(0, wrt)`) and the optax
  optimizer state exists only for it (`nnx.Optimizer(..., wrt=wrt)`), so a 16B model never holds
  a 16B gradient or Adam moments (the NNX form of masking the optimizer, without computing the
  frozen gradients). A test checks every other parameter is bit-identical after training.
* Orbax checkpoints hold the posterior alone (its parameters, optimizer state, RNG streams and the
  step), a few MB even for a 16B model; a run restarted on the same workdir resumes from the last
  one, and `batches(step)` must be a pure function of the step, so the resumed run is the same run.
* The loss is any `loss_fn(model, batch, train) -> (loss, metrics)`; `choice_loss` is the MCQA one:
  cross-entropy over the option letters' next-token logits (the answer-letter scoring of the
  paper's MCQA evaluation), plus the router's own term (beta * KL, or the temperature prior).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from flax import nnx

from routecal.files import workdir as workdir_io
from routecal.models.vmoer import VROUTER_PATH
from routecal.training.optim import trainable_filter

Array = jax.Array
Batch = dict[str, Any]
LossFn = Callable[..., tuple[Array, dict[str, Array]]]
POSTERIOR = trainable_filter(VROUTER_PATH)  # the `vrouter` heads of every variational router
METRICS_FILE = "retrofit_metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class RetrofitConfig:
    """Optimisation of the routing posterior (AdamW, warm-up then cosine, global-norm clipping).

    Attributes:
      steps: optimiser steps in total (a resumed run continues up to it).
      lr, warmup, weight_decay, grad_clip: AdamW schedule and clipping.
      checkpoint_every: steps between orbax checkpoints (the last step is always saved).
      max_to_keep: checkpoints kept.
    """

    steps: int = 200
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    max_to_keep: int = 2

    def __post_init__(self) -> None:
        for name in ("steps", "checkpoint_every", "max_to_keep"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"retrofit.{name}: must be an integer >= 1, got {v!r}")
        if not (isinstance(self.warmup, int) and 0 <= self.warmup):
            raise ValueError(f"retrofit.warmup: must be an integer >= 0, got {self.warmup!r}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"retrofit.{name}: must be > 0, got {getattr(self, name)!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"retrofit.weight_decay: must be >= 0, got {self.weight_decay!r}")


@functools.lru_cache(maxsize=8)
def make_tx(cfg: RetrofitConfig) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with linear warm-up then cosine decay, norm clipping.

    Cached: one config gives one transformation object, so the jitted step (whose optimizer graph
    holds it) compiles once per process, resumed runs included."""
    warmup = min(cfg.warmup, cfg.steps - 1)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, warmup_steps=warmup, decay_steps=max(cfg.steps, warmup + 1)
    )
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(schedule, weight_decay=cfg.weight_decay),
    )


def choice_logits(model: nnx.Module, batch: Batch, *, train: bool = False) -> tuple[Array, Any]:
    """MCQA option scores: the next-token logits of each option's letter at the answer position.

    Args:
      batch: "ids" [B, T] prompt token ids (question, options, "Answer:"), "position" [B] the index
        of the token after which the answer letter comes, "choice_ids" [B, K] the token id of each
        option's letter.

    Returns:
      (logits_BxK float32, the model output).
    """
    out = model(batch["ids"], train=train)
    b = batch["ids"].shape[0]
    last_BxV = out.logits[jnp.arange(b), batch["position"]]
    return jnp.take_along_axis(last_BxV, batch["choice_ids"], axis=1), out


def choice_loss(model: nnx.Module, batch: Batch, *, train: bool) -> tuple[Array, dict[str, Array]]:
    """Cross-entropy of the correct option (`batch["label"]` [B]) over the K option letters, plus
    the model's auxiliary losses (the posterior's KL / temperature prior)."""
    logits_BxK, out = choice_logits(model, batch, train=train)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxK, batch["label"]).mean()
    acc = jnp.mean((jnp.argmax(logits_BxK, axis=-1) == batch["label"]).astype(jnp.float32))
    return ce + out.aux_loss, {"ce": ce, "aux_loss": out.aux_loss, "accuracy": acc}


@functools.lru_cache(maxsize=8)
def _make_step(loss_fn: LossFn, trainable: str) -> Callable[..., dict[str, Array]]:
    """The jitted train step of the `trainable` selection for `loss_fn` (cached: one compile per
    model shape)."""
    wrt = trainable_filter(trainable)

    @nnx.jit
    def step(model: nnx.Module, optimizer: nnx.Optimizer, batch: Batch) -> dict[str, Array]:
        def f(m: nnx.Module) -> tuple[Array, dict[str, Array]]:
            return loss_fn(m, batch, train=True)

        grad_fn = nnx.value_and_grad(f, argnums=nnx.DiffState(0, wrt), has_aux=True)
        (loss, metrics), grads = grad_fn(model)
        optimizer.update(model, grads)
        return {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}

    return step


# --- checkpoints of the posterior alone -------------------------------------------------------


def _keys_to_data(tree: Any) -> Any:
    """Typed PRNG keys -> their raw uint32 data (orbax stores plain arrays)."""
    def f(x: Any) -> Any:
        return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x

    return jax.tree.map(f, tree)


def _items(model: nnx.Module, wrt: Any, optimizer: nnx.Optimizer | None = None) -> dict:
    items = {
        "posterior": nnx.to_pure_dict(nnx.state(model, wrt)),
        "rng": _keys_to_data(nnx.to_pure_dict(nnx.state(model, nnx.RngState))),
    }
    if optimizer is not None:
        items["opt"] = nnx.to_pure_dict(nnx.state(optimizer))
    return items


def _manager(workdir: pathlib.Path, cfg: RetrofitConfig | None = None) -> ocp.CheckpointManager:
    keep = cfg.max_to_keep if cfg is not None else 2
    return ocp.CheckpointManager(
        (workdir / "posterior").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )


def _restore(
    mngr: ocp.CheckpointManager, step: int, model: nnx.Module, wrt: Any, optimizer=None
) -> None:
    items = _items(model, wrt, optimizer)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, items)
    got = mngr.restore(
        step, args=ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in abstract.items()})
    )
    _replace(model, wrt, got["posterior"])
    rng_state = nnx.state(model, nnx.RngState)
    wrapped = jax.tree.map(
        lambda cur, raw: jax.random.wrap_key_data(raw, impl=jax.random.key_impl(cur))
        if jnp.issubdtype(cur.dtype, jax.dtypes.prng_key) else raw,
        nnx.to_pure_dict(rng_state), dict(got["rng"]),
    )
    nnx.replace_by_pure_dict(rng_state, wrapped)
    nnx.update(model, rng_state)
    if optimizer is not None:
        _replace(optimizer, ..., got["opt"])


def _replace(obj: Any, filt: Any, pure: Any) -> None:
    state = nnx.state(obj, filt)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(obj, state)


def restore_posterior(
    model: nnx.Module,
    workdir: str | pathlib.Path,
    step: int | None = None,
    *,
    trainable: str = VROUTER_PATH,
) -> int:
    """Loads the saved trained parameters (and RNG streams) into `model` (an imported VMoER model
    built with the same overrides); returns the step. ValueError if `workdir` holds none."""
    mngr = _manager(pathlib.Path(workdir))
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"workdir: no posterior checkpoint under {workdir!s}/posterior")
        _restore(mngr, step, model, trainable_filter(trainable))
        return int(step)
    finally:
        mngr.close()


# --- the loop -----------------------------------------------------------------------------------


def retrofit(
    model: nnx.Module,
    batches: Callable[[int], Batch],
    workdir: str | pathlib.Path,
    cfg: RetrofitConfig = RetrofitConfig(),
    *,
    loss_fn: LossFn = choice_loss,
    trainable: str = VROUTER_PATH,
    on_step: Callable[[int], None] | None = None,
    stop: Callable[[list[float]], bool] | None = None,
) -> dict[str, Any]:
    """Trains the routing posterior of `model` in place; resumes from `workdir` if it has one.

    Args:
      model: an imported VMoER model (`load_hf(..., overrides={"mlp_type": "vmoer_mfvr"})`).
      batches: step -> batch (a pure function of the step, so resuming replays the same data).
      workdir: where `posterior/` checkpoints and `retrofit_metrics.jsonl` go.
      loss_fn: (model, batch, train=...) -> (scalar loss, metrics dict).
      trainable: regex over "/"-joined parameter paths of what trains (`optim.trainable_filter`;
        default the `vrouter` heads; `routers.RETROFIT_TRAINABLE[name]` for the baselines, e.g.
        the MC-dropout router retrains `router/proj`).
      on_step: called with the 0-based step after each update (e.g. SWAG moment collection;
        what it accumulates is not checkpointed).
      stop: called with the per-step `ce` metric so far (resumed steps included) after each
        update; True ends the fit there, checkpointed (e.g. `routers.baselines.Plateau.stop`; a
        resumed fit whose recorded steps already satisfy it trains no further).

    Returns:
      {"step" (the last step trained), "start_step", "last": last step's metrics,
      "n_posterior_params"}.

    Raises:
      ValueError: the model has no routing posterior; FloatingPointError: a non-finite loss.
    """
    wrt = trainable_filter(trainable)
    n_post = sum(x.size for x in jax.tree.leaves(nnx.state(model, wrt)))
    if n_post == 0:
        raise ValueError(
            f"model: no parameter matches trainable={trainable!r}: no routing posterior to train "
            "(import with overrides={'mlp_type': 'vmoer_mfvr'}, or another variational router)"
        )
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    optimizer = nnx.Optimizer(model, make_tx(cfg), wrt=wrt)
    mngr = _manager(workdir, cfg)
    metrics_path = workdir / METRICS_FILE
    try:
        start = mngr.latest_step() or 0
        if start:
            _restore(mngr, start, model, wrt, optimizer)
        _truncate(metrics_path, start)
        step_fn = _make_step(loss_fn, trainable)
        last: dict[str, float] = {}
        records = (workdir_io.read_jsonl(metrics_path, "retrofit metrics")[0]
                   if stop is not None and metrics_path.exists() else [])
        losses = [float(r["ce"]) for r in records]
        done = bool(stop is not None and start and stop(losses))
        step = start - 1
        for step in range(start, cfg.steps if not done else start):
            m = step_fn(model, optimizer, batches(step))
            if on_step is not None:
                on_step(step)
            last = {k: float(v) for k, v in m.items()}
            if not all(map(jnp.isfinite, last.values())):
                raise FloatingPointError(f"retrofit: non-finite metrics at step {step + 1}: {last}")
            with metrics_path.open("a") as f:
                f.write(json.dumps({"step": step + 1, **last}) + "\n")
            if stop is not None:
                if "ce" not in last:
                    raise ValueError(f"stop: needs a 'ce' metric from loss_fn, got {sorted(last)}")
                losses.append(last["ce"])
                done = stop(losses)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or done:
                mngr.save(
                    step + 1,
                    args=ocp.args.Composite(
                        **{
                            k: ocp.args.StandardSave(v)
                            for k, v in _items(model, wrt, optimizer).items()
                        }
                    ),
                )
            if done:
                break
        mngr.wait_until_finished()
    finally:
        mngr.close()
    return {"step": max(step + 1, start), "start_step": start, "last": last,
            "n_posterior_params": n_post}


def _truncate(path: pathlib.Path, after_step: int) -> None:
    """Drops metric lines past `after_step` (left by a run killed between checkpoints)."""
    if not path.exists():
        return
    records, _ = workdir_io.read_jsonl(path, "retrofit metrics")  # a killed append: dropped
    keep = [r for r in records if r["step"] <= after_step]
    workdir_io.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))  # atomic
