"""Training: optax AdamW + warm-up/cosine, jit-compiled data-parallel step, orbax checkpoints, resume.

    metrics = train_and_evaluate(cfg, workdir)     # cfg: ConfigDict from configs/*.py
    model, cfg, dataset = load_trained(workdir)

The workdir holds `config.json`, `metrics.jsonl` (one JSON object per log / eval event),
`checkpoints/` (orbax, `routecal.checkpoints`: model state, optimizer state, step, data position and
training time) and, once finished, `final_metrics.json`. Calling `train_and_evaluate` again in the
same workdir resumes from the newest readable checkpoint (a partial last metrics line is dropped); a
finished run returns its final metrics at once. A run holds the workdir's lock (`routecal.workdir`).

Letters: B batch, T tokens, P token features, C classes.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from routecal import _checks, checkpoints, parallel
from routecal import workdir as workdir_io
from routecal.data import Dataset, Split, load_dataset
from routecal.models.transformer import ModelConfig, Transformer
from routecal.optim import TRAINABLE_PRESETS, make_tx, trainable_filter  # noqa: F401 (API)

# ----------------------------------------------------------------------------------------------
# Model and checks
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
# Initialisation from another run
# ----------------------------------------------------------------------------------------------


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

    The whole config (train, data, model, trainable selection, init_from) is checked before
    anything is written, so a rejected config leaves the workdir usable for a corrected one. The
    workdir is locked for the call (`routecal.workdir.lock`): a second process is refused.

    Args:
      cfg: the experiment config (keys seed, data, model, train; see configs/attnres_digits.py).
      workdir: output directory.
      mesh: device mesh for data parallelism (default: all local devices). The batch is sharded
        over its axis; parameters and optimizer state are replicated.
      max_steps_this_run: stop after this many steps in this call (as if pre-empted), without
        writing final metrics; a later call resumes from the newest readable checkpoint.

    Returns:
      {"step", "train/loss", "calib/accuracy", "calib/nll", "test/accuracy", "test/nll",
       "time_s"} at the end of training; `time_s` is the training time summed over every call
       that contributed (resumes included; steps lost to a kill and redone count once).

    Raises:
      ValueError: bad config, data or workdir content (corrupt files named), or another process
        holds the workdir; FloatingPointError: a non-finite loss.
    """
    workdir = pathlib.Path(workdir)
    mesh = mesh if mesh is not None else parallel.make_mesh()
    with workdir_io.lock(workdir, "train", enabled=jax.process_index() == 0):
        return _train_locked(cfg, workdir, mesh, max_steps_this_run)


def _finished(workdir: pathlib.Path, cfg: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """Checks `config.json` (if any) matches `cfg`; returns the final metrics of a finished run."""
    cfg_path, final_path = workdir / "config.json", workdir / "final_metrics.json"
    if cfg_path.exists():
        old = workdir_io.read_json(cfg_path, "workdir")
        if old != json.loads(cfg.to_json_best_effort()):
            raise ValueError(
                f"workdir: {workdir} holds a run with a different config; use a new workdir"
            )
    if not final_path.exists():
        return None
    try:
        final = workdir_io.read_json(final_path, "final metrics")
    except ValueError as e:
        print(f"routecal train: {e}; evaluating again", file=sys.stderr)
        return None
    return final if final.get("step") == int(cfg.train.steps) else None


def _train_locked(cfg, workdir: pathlib.Path, mesh, max_steps_this_run: int | None):
    tcfg = cfg.train
    _checks.check_positive_int(cfg.seed, "seed", minimum=0)
    _check_train_cfg(tcfg, mesh.size)
    final = _finished(workdir, cfg)
    if final is not None:
        return final
    # --- everything checked before the first write -----------------------------------------
    dataset = load_dataset(cfg.data)
    _check_dataset(dataset)
    model = build_model(cfg, dataset)
    wrt = trainable_filter(str(tcfg.trainable))
    if not jax.tree.leaves(nnx.state(model, wrt)):
        raise ValueError(f"train.trainable: {tcfg.trainable!r} selects no parameter")
    optimizer = nnx.Optimizer(model, make_tx(tcfg), wrt=wrt)
    if tcfg.get("init_from"):  # a checkpoint, if any, overwrites it below
        _init_from(model, tcfg.init_from)
    n_train, bs = len(dataset.train), int(tcfg.batch_size)
    if bs > n_train:
        raise ValueError(f"train.batch_size: {bs} exceeds the {n_train} training examples")
    eval_bs = int(tcfg.get("eval_batch_size", bs))
    if eval_bs % mesh.size:
        raise ValueError(f"train.eval_batch_size: {eval_bs} not divisible by {mesh.size} devices")
    cfg_path = workdir / "config.json"
    if not cfg_path.exists() and parallel.is_primary():  # multi-host: process 0 writes files
        workdir_io.write_json(cfg_path, json.loads(cfg.to_json_best_effort()))

    mngr = checkpoints.manager(workdir)
    try:
        rep = parallel.replicated(mesh)
        for obj in (model, optimizer):
            nnx.update(obj, jax.device_put(nnx.state(obj), rep))
        position = checkpoints.restore_newest_readable(mngr, model, optimizer) or {
            "step": 0, "epoch": 0, "index": 0,
        }
        return _loop(cfg, workdir, mesh, mngr, model, optimizer, dataset, position,
                     eval_bs=eval_bs, max_steps_this_run=max_steps_this_run)
    finally:
        mngr.close()


def _loop(cfg, workdir, mesh, mngr, model, optimizer, dataset, position, *, eval_bs,
          max_steps_this_run):
    tcfg = cfg.train
    metrics_path = workdir / "metrics.jsonl"
    primary = parallel.is_primary()  # multi-host: process 0 writes the workdir's files
    if primary:
        checkpoints.truncate_metrics(metrics_path, position["step"])
    # cached_partial caches the NNX graph traversal of model and optimizer (less overhead per step)
    train_step = nnx.cached_partial(_make_train_step(str(tcfg.trainable)), model, optimizer)
    seed = int(cfg.get("data_seed", cfg.seed))
    steps, n_train, bs = int(tcfg.steps), len(dataset.train), int(tcfg.batch_size)
    log_every = int(tcfg.get("log_every", 50))
    noise = float(tcfg.get("input_noise", 0.0))

    step, epoch, index = position["step"], position["epoch"], position["index"]
    time_before = float(position.get("train_time_s", 0.0))  # earlier calls, up to the checkpoint
    stop = steps if max_steps_this_run is None else min(steps, step + max_steps_this_run)
    pending: list[tuple[int, jax.Array]] = []
    last: dict[str, Any] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=step, desc=f"train {workdir.name}", dynamic_ncols=True,
               disable=not primary)
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
            if primary:
                checkpoints.log_metrics(
                    metrics_path, {"step": step, **{f"train/{k}": v for k, v in last.items()}}
                )
            bar.set_postfix(loss=f"{last['loss']:.4f}")
        if step % int(tcfg.eval_every) == 0 or step == steps:
            rec = {"step": step}
            for split in ("calib", "test"):
                ev = evaluate(model, dataset.split(split), batch_size=eval_bs, mesh=mesh)
                rec.update({f"{split}/{k}": v for k, v in ev.items()})
            if primary:
                checkpoints.log_metrics(metrics_path, rec)
        if step % int(tcfg.checkpoint_every) == 0 or step == steps:
            _check_finite(pending)
            elapsed = time_before + time.perf_counter() - t0
            checkpoints.save(mngr, step, model, optimizer,
                             {"step": step, "epoch": epoch, "index": index, "train_time_s": elapsed})
    bar.close()
    _check_finite(pending)
    mngr.wait_until_finished()
    if step < steps:
        return {"step": step, "finished": False}

    if not last:  # resumed exactly at the end: the last logged training loss
        last = {"loss": next(
            r["train/loss"] for r in reversed(checkpoints.read_metrics(metrics_path)) if "train/loss" in r
        )}
    final = {"step": step, "train/loss": last["loss"],
             "time_s": time_before + time.perf_counter() - t0}
    for split in ("calib", "test"):
        ev = evaluate(model, dataset.split(split), batch_size=eval_bs, mesh=mesh)
        final.update({f"{split}/{k}": v for k, v in ev.items()})
    if primary:
        workdir_io.write_json(workdir / "final_metrics.json", final)
    return final


def load_config_json(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was trained with (from config.json; corrupt files named)."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise ValueError(f"workdir: no config.json in {workdir} (not a routecal training run)")
    return ml_collections.ConfigDict(workdir_io.read_json(path, "workdir"))


def load_trained(
    workdir: str | pathlib.Path,
) -> tuple[Transformer, ml_collections.ConfigDict, Dataset]:
    """Rebuilds the model of the run in `workdir` from its latest checkpoint.

    Returns:
      (model, cfg, dataset); the model lives on the default device.

    Raises:
      ValueError: if `workdir` holds no config or no checkpoint, or the latest checkpoint is
        unreadable (named, in one line; resuming training falls back to an older one instead).
    """
    workdir = pathlib.Path(workdir)
    cfg = load_config_json(workdir)
    dataset = load_dataset(cfg.data)
    model = build_model(cfg, dataset)
    mngr = checkpoints.manager(workdir)
    try:
        latest = mngr.latest_step()
        if latest is None:
            raise ValueError(f"workdir: no checkpoint in {workdir / 'checkpoints'}")
        try:
            checkpoints.restore_into(mngr, latest, model)
        except Exception as e:  # orbax raises bare Exception for unreadable arrays
            raise checkpoints.unreadable(mngr, latest, e) from e
    finally:
        mngr.close()
    return model, cfg, dataset
