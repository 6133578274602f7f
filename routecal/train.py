"""Training: optax AdamW + warm-up/cosine, jit-compiled data-parallel step, orbax checkpoints, resume.

    metrics = train_and_evaluate(cfg, workdir)     # cfg: ConfigDict from configs/*.py
    model, cfg, dataset = load_trained(workdir)

The workdir holds `config.json`, `metrics.jsonl` (one JSON object per log / eval event),
`checkpoints/` (orbax: model state, optimizer state, step and data position) and, once finished,
`final_metrics.json`. Calling `train_and_evaluate` again in the same workdir resumes from the latest
checkpoint; a finished run returns its final metrics at once.

Letters: B batch, T tokens, P token features, C classes.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from routecal import _checks, parallel
from routecal.data import Dataset, Split, load_dataset
from routecal.models.transformer import ModelConfig, Transformer

# Named parameter selections for `train.trainable`; anything else is a regular expression searched
# in the "/"-joined parameter path (e.g. "blocks/0/mlp/router/kernel").
TRAINABLE_PRESETS = {"all": r".*", "router-only": r"(^|/)router"}

# ----------------------------------------------------------------------------------------------
# Model, optimizer, parameter selection
# ----------------------------------------------------------------------------------------------


def build_model(cfg: ml_collections.ConfigDict, dataset: Dataset) -> Transformer:
    """The `Transformer` described by `cfg.model` for `dataset`, initialised from `cfg.seed`."""
    mcfg = ModelConfig.from_config(
        cfg.model,
        seq_len=dataset.seq_len,
        token_dim=dataset.token_dim,
        num_classes=dataset.num_classes,
    )
    seed = int(cfg.seed)
    return Transformer(mcfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


@functools.lru_cache(maxsize=32)
def trainable_filter(spec: str) -> Any:
    """NNX filter selecting the trainable `nnx.Param`s: a preset name or a path regex.

    Cached, so one spec gives one filter object (it is part of the optimizer's static graph).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"train.trainable: expected a preset {list(TRAINABLE_PRESETS)} or a regex")
    pattern = TRAINABLE_PRESETS.get(spec, spec)
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"train.trainable: invalid regex {pattern!r} ({e})") from e

    def by_path(path: tuple, _: Any) -> bool:
        return rx.search("/".join(str(p) for p in path)) is not None

    return nnx.All(nnx.Param, by_path)


def make_tx(tcfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with linear warm-up then cosine decay, and global-norm clipping.

    The same settings return the same (cached) object, so the jit-compiled train step, whose
    optimizer graph holds it, is reused across runs in one process instead of recompiled.
    """
    steps = int(tcfg.steps)
    return _make_tx(
        steps=steps,
        warmup=min(int(tcfg.warmup), max(steps - 1, 0)),
        lr=float(tcfg.lr),
        weight_decay=float(tcfg.weight_decay),
        grad_clip=float(tcfg.get("grad_clip", 1.0)),
        end_lr_fraction=float(tcfg.get("end_lr_fraction", 0.0)),
    )


@functools.lru_cache(maxsize=32)
def _make_tx(
    *,
    steps: int,
    warmup: int,
    lr: float,
    weight_decay: float,
    grad_clip: float,
    end_lr_fraction: float,
) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=end_lr_fraction * lr,
    )
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.adamw(schedule, weight_decay=weight_decay),
    )


def _check_train_cfg(tcfg: ml_collections.ConfigDict, n_devices: int) -> None:
    for name in ("steps", "batch_size", "checkpoint_every", "eval_every"):
        _checks.check_positive_int(tcfg[name], f"train.{name}")
    _checks.check_positive_int(tcfg.warmup, "train.warmup", minimum=0)
    if tcfg.batch_size % n_devices:
        raise ValueError(
            f"train.batch_size: {tcfg.batch_size} is not divisible by the {n_devices} devices of "
            "the mesh"
        )
    if not float(tcfg.lr) > 0:
        raise ValueError(f"train.lr: must be > 0, got {tcfg.lr}")


def _check_dataset(dataset: Dataset) -> None:
    for split in ("train", "calib", "test"):
        s = dataset.split(split)
        _checks.as_array(s.tokens, f"{split}.tokens", ndim=3, dtype=None)
        _checks.check_labels(s.labels, dataset.num_classes, f"{split}.labels")
    if len(dataset.train) < 1:
        raise ValueError("dataset.train: is empty")


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _make_train_step(trainable: str):
    """The jit-compiled train step for one `train.trainable` selection (cached: compiles once per
    model structure and batch shape in a process)."""
    wrt = trainable_filter(trainable)

    @nnx.jit
    def train_step(model: Transformer, optimizer: nnx.Optimizer, tokens_BxTxP, labels_B):
        def loss_fn(m: Transformer):
            out = m(tokens_BxTxP, train=True)
            ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels_B).mean()
            return ce + out.aux_loss, (ce, out.aux_loss)

        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)
        (loss, (ce, aux_loss)), grads = grad_fn(model)
        optimizer.update(model, grads)
        return {"loss": loss, "ce": ce, "aux_loss": aux_loss, "grad_norm": optax.tree.norm(grads)}

    return train_step


@nnx.jit
def _eval_step(model: Transformer, tokens_BxTxP, labels_B, mask_B):
    logits = model(tokens_BxTxP).logits
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels_B)
    correct = (jnp.argmax(logits, axis=-1) == labels_B).astype(jnp.float32)
    return jnp.sum(nll * mask_B), jnp.sum(correct * mask_B)


def evaluate(model: Transformer, split: Split, *, batch_size: int, mesh=None) -> dict[str, float]:
    """Accuracy and mean NLL of `model` on `split`, in fixed-size padded batches."""
    mesh = mesh if mesh is not None else parallel.make_mesh(1)
    n = len(split)
    n_pad = parallel.pad_to_multiple(n, batch_size)
    tokens = np.zeros((n_pad, *split.tokens.shape[1:]), np.float32)
    tokens[:n] = split.tokens
    labels = np.zeros((n_pad,), np.int32)
    labels[:n] = split.labels
    mask = np.zeros((n_pad,), np.float32)
    mask[:n] = 1.0
    nll_sum, correct_sum = 0.0, 0.0
    for i in range(0, n_pad, batch_size):
        sl = slice(i, i + batch_size)
        t, y, m = _put_batch(mesh, tokens[sl], labels[sl], mask[sl])
        a, b = _eval_step(model, t, y, m)
        nll_sum, correct_sum = nll_sum + a, correct_sum + b
    return {"accuracy": float(correct_sum) / n, "nll": float(nll_sum) / n}


def _put_batch(mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    return tuple(jax.device_put(a, parallel.batch_sharding(mesh, a.ndim)) for a in arrays)


# ----------------------------------------------------------------------------------------------
# Data order: an epoch is a seeded permutation of the training set; the position is (epoch, index)
# ----------------------------------------------------------------------------------------------


def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def _next_batch(seed: int, epoch: int, index: int, n: int, batch_size: int):
    """Indices of the next batch and the new position (drops an epoch's incomplete tail)."""
    if index + batch_size > n:
        epoch, index = epoch + 1, 0
    idx = _epoch_permutation(seed, epoch, n)[index : index + batch_size]
    return idx, epoch, index + batch_size


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def _model_state(model: nnx.Module) -> nnx.State:
    # RNG keys are rebuilt from the seed; their counters (part of the state) are checkpointed.
    return nnx.state(model, nnx.Not(nnx.RngKey))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _checkpoint_manager(workdir: pathlib.Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def _save(mngr, step: int, model, optimizer, position: dict[str, int]) -> None:
    mngr.save(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(nnx.to_pure_dict(_model_state(model))),
            opt=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(optimizer))),
            position=ocp.args.JsonSave(position),
        ),
    )


def _restore_into(mngr, step: int, model, optimizer=None) -> dict[str, int] | None:
    """Restores model (and optimizer and data position if `optimizer` is given) from `step`."""
    mstate = _model_state(model)
    items = {"model": ocp.args.StandardRestore(_abstract(nnx.to_pure_dict(mstate)))}
    if optimizer is not None:
        ostate = nnx.state(optimizer)
        items["opt"] = ocp.args.StandardRestore(_abstract(nnx.to_pure_dict(ostate)))
        items["position"] = ocp.args.JsonRestore()
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
    nnx.replace_by_pure_dict(mstate, restored["model"])
    nnx.update(model, mstate)
    if optimizer is None:
        return None
    nnx.replace_by_pure_dict(ostate, restored["opt"])
    nnx.update(optimizer, ostate)
    return dict(restored["position"])


def _init_from(model: nnx.Module, src_workdir: str) -> int:
    """Copies every parameter of a finished run's model whose path exists here (shapes must match).

    Returns the number of parameters copied; raises ValueError if none match.
    """
    src_model, _, _ = load_trained(src_workdir)
    src = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(src_model, nnx.Param)))
    dst_state = nnx.state(model, nnx.Param)
    dst = nnx.traversals.flatten_mapping(nnx.to_pure_dict(dst_state))
    copied = 0
    for path, val in dst.items():
        if path in src:
            if src[path].shape != val.shape:
                raise ValueError(
                    f"train.init_from: parameter {'/'.join(map(str, path))} has shape "
                    f"{src[path].shape} in {src_workdir} but {val.shape} here"
                )
            dst[path] = jnp.asarray(src[path])
            copied += 1
    if copied == 0:
        raise ValueError(f"train.init_from: no parameter of {src_workdir} matches this model")
    nnx.replace_by_pure_dict(dst_state, nnx.traversals.unflatten_mapping(dst))
    nnx.update(model, dst_state)
    return copied


# ----------------------------------------------------------------------------------------------
# Metrics file
# ----------------------------------------------------------------------------------------------


def _truncate_metrics(path: pathlib.Path, after_step: int) -> None:
    """Drops lines logged after `after_step` (they are recomputed when a run resumes)."""
    if not path.exists():
        return
    keep = [
        ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= after_step
    ]
    path.write_text("".join(ln + "\n" for ln in keep))


def _log(path: pathlib.Path, record: dict[str, Any]) -> None:
    if not parallel.is_primary():  # multi-host: process 0 writes the workdir's files
        return
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _check_finite(pending: list[tuple[int, jax.Array]]) -> None:
    if not pending:
        return
    vals = np.asarray(jax.device_get([v for _, v in pending]))
    bad = ~np.isfinite(vals)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise FloatingPointError(f"training loss is {vals[i]} at step {pending[i][0]}")
    pending.clear()


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def train_and_evaluate(
    cfg: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    mesh: jax.sharding.Mesh | None = None,
    max_steps_this_run: int | None = None,
) -> dict[str, Any]:
    """Trains `cfg` in `workdir` (resuming if it holds checkpoints) and returns the final metrics.

    Args:
      cfg: the experiment config (keys seed, data, model, train; see configs/attnres_digits.py).
      workdir: output directory.
      mesh: device mesh for data parallelism (default: all local devices). The batch is sharded
        over its axis; parameters and optimizer state are replicated.
      max_steps_this_run: stop after this many steps in this call (as if pre-empted), without
        writing final metrics; a later call resumes from the latest checkpoint.

    Returns:
      {"step", "train/loss", "calib/accuracy", "calib/nll", "test/accuracy", "test/nll",
       "time_s"} at the end of training.

    Raises:
      ValueError: bad config, data or workdir content; FloatingPointError: a non-finite loss.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    final_path = workdir / "final_metrics.json"
    metrics_path = workdir / "metrics.jsonl"
    tcfg = cfg.train
    mesh = mesh if mesh is not None else parallel.make_mesh()
    _check_train_cfg(tcfg, mesh.size)

    cfg_json = json.loads(cfg.to_json_best_effort())
    cfg_path = workdir / "config.json"
    if not parallel.is_primary():
        pass  # multi-host: process 0 checks and writes the workdir's files
    elif cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old != cfg_json:
            raise ValueError(
                f"workdir: {workdir} holds a run with a different config; use a new workdir"
            )
    else:
        cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")

    steps = int(tcfg.steps)
    mngr = _checkpoint_manager(workdir)
    try:
        latest = mngr.latest_step()
        if latest == steps and final_path.exists():
            return json.loads(final_path.read_text())

        dataset = load_dataset(cfg.data)
        _check_dataset(dataset)
        model = build_model(cfg, dataset)
        wrt = trainable_filter(str(tcfg.trainable))
        if not jax.tree.leaves(nnx.state(model, wrt)):
            raise ValueError(f"train.trainable: {tcfg.trainable!r} selects no parameter")
        optimizer = nnx.Optimizer(model, make_tx(tcfg), wrt=wrt)
        if tcfg.get("init_from") and latest is None:
            _init_from(model, tcfg.init_from)

        rep = parallel.replicated(mesh)
        for obj in (model, optimizer):
            nnx.update(obj, jax.device_put(nnx.state(obj), rep))

        position = {"step": 0, "epoch": 0, "index": 0}
        if latest is not None:
            position = _restore_into(mngr, latest, model, optimizer)
        if parallel.is_primary():
            _truncate_metrics(metrics_path, position["step"])

        # cached_partial caches the NNX graph traversal of model and optimizer (less overhead per step)
        train_step = nnx.cached_partial(_make_train_step(str(tcfg.trainable)), model, optimizer)
        seed = int(cfg.get("data_seed", cfg.seed))
        n_train, bs = len(dataset.train), int(tcfg.batch_size)
        if bs > n_train:
            raise ValueError(f"train.batch_size: {bs} exceeds the {n_train} training examples")
        log_every = int(tcfg.get("log_every", 50))
        noise = float(tcfg.get("input_noise", 0.0))
        eval_bs = int(tcfg.get("eval_batch_size", bs))
        if eval_bs % mesh.size:
            raise ValueError(
                f"train.eval_batch_size: {eval_bs} not divisible by {mesh.size} devices"
            )

        step, epoch, index = position["step"], position["epoch"], position["index"]
        stop = steps if max_steps_this_run is None else min(steps, step + max_steps_this_run)
        pending: list[tuple[int, jax.Array]] = []
        last: dict[str, Any] = {}
        t0 = time.perf_counter()
        bar = tqdm(
            total=steps, initial=step, desc=f"train {workdir.name}", dynamic_ncols=True,
            disable=not parallel.is_primary(),
        )
        while step < stop:
            idx, epoch, index = _next_batch(seed, epoch, index, n_train, bs)
            x = dataset.train.tokens[idx].astype(np.float32)
            if noise > 0:  # Gaussian input noise, seeded by (seed, step): resumable, deterministic
                x = x + noise * np.random.default_rng([seed, 1, step]).standard_normal(
                    x.shape, dtype=np.float32
                )
            tokens, labels = _put_batch(mesh, x, dataset.train.labels[idx])
            out = train_step(tokens, labels)
            step += 1
            pending.append((step, out["loss"]))
            bar.update(1)
            if step % log_every == 0 or step == steps:
                _check_finite(pending)
                last = {k: float(v) for k, v in jax.device_get(out).items()}
                _log(metrics_path, {"step": step, **{f"train/{k}": v for k, v in last.items()}})
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            if step % int(tcfg.eval_every) == 0 or step == steps:
                rec = {"step": step}
                for split in ("calib", "test"):
                    ev = evaluate(model, dataset.split(split), batch_size=eval_bs, mesh=mesh)
                    rec.update({f"{split}/{k}": v for k, v in ev.items()})
                _log(metrics_path, rec)
            if step % int(tcfg.checkpoint_every) == 0 or step == steps:
                _check_finite(pending)
                _save(mngr, step, model, optimizer, {"step": step, "epoch": epoch, "index": index})
        bar.close()
        _check_finite(pending)
        mngr.wait_until_finished()
        if step < steps:
            return {"step": step, "finished": False}

        if not last:  # resumed exactly at the end: the last logged training loss
            logged = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln]
            last = {"loss": next(r["train/loss"] for r in reversed(logged) if "train/loss" in r)}
        final = {"step": step, "train/loss": last["loss"], "time_s": time.perf_counter() - t0}
        for split in ("calib", "test"):
            ev = evaluate(model, dataset.split(split), batch_size=eval_bs, mesh=mesh)
            final.update({f"{split}/{k}": v for k, v in ev.items()})
        if parallel.is_primary():
            final_path.write_text(json.dumps(final, indent=2, sort_keys=True) + "\n")
        return final
    finally:
        mngr.close()


def load_config_json(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was trained with (from config.json)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise ValueError(f"workdir: no config.json in {workdir} (not a routecal training run)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_trained(
    workdir: str | pathlib.Path,
) -> tuple[Transformer, ml_collections.ConfigDict, Dataset]:
    """Rebuilds the model of the run in `workdir` from its latest checkpoint.

    Returns:
      (model, cfg, dataset); the model lives on the default device.

    Raises:
      ValueError: if `workdir` holds no config or no checkpoint.
    """
    workdir = pathlib.Path(workdir)
    cfg = load_config_json(workdir)
    dataset = load_dataset(cfg.data)
    model = build_model(cfg, dataset)
    mngr = _checkpoint_manager(workdir)
    try:
        latest = mngr.latest_step()
        if latest is None:
            raise ValueError(f"workdir: no checkpoint in {workdir / 'checkpoints'}")
        _restore_into(mngr, latest, model)
    finally:
        mngr.close()
    return model, cfg, dataset
