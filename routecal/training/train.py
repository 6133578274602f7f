"""Training: optax AdamW + warm-up/cosine, jit-compiled data-parallel step, orbax checkpoints, resume.

    metrics = train_and_evaluate(cfg, workdir)     # cfg: ConfigDict from configs/*.py
    model, cfg, dataset = load_trained(workdir)

The workdir holds `config.json`, `metrics.jsonl` (one JSON object per log / eval event),
`checkpoints/` (orbax, `routecal.training.checkpoints`: model state, optimizer state, step, data position and
training time) and, once finished, `final_metrics.json`. Calling `train_and_evaluate` again in the
same workdir resumes from the newest readable checkpoint (a partial last metrics line is dropped); a
finished run returns its final metrics at once. A run holds the workdir's lock (`routecal.files.workdir`).

`cfg.task` chooses what is trained ("classify": the transformer classifier on a `Dataset`, the
default; "lm": a causal decoder LM on text, `routecal.training.lm`): the task object is the one branch point.

Letters: B batch, T tokens, P token features, C classes.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from routecal import _checks, parallel
from routecal.data import Dataset, load_dataset
from routecal.files import workdir as workdir_io
from routecal.files.records import check_workdir_config, record_workdir_config
from routecal.models.transformer import Transformer
from routecal.training import checkpoints
from routecal.training.classify import (  # noqa: F401 (API: train.build_model, train.evaluate, ...)
    ClassifierTask,
    _make_train_step,
    build_model,
    evaluate,
)
from routecal.training.classify import put_batch as _put_batch
from routecal.training.optim import TRAINABLE_PRESETS, make_tx, trainable_filter  # noqa: F401 (API)

# ----------------------------------------------------------------------------------------------
# Checks and tasks: the one branch point between the classifier (`routecal.training.classify`) and the
# causal LM (`routecal.training.lm`)
# ----------------------------------------------------------------------------------------------


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


TASKS = ("classify", "lm")


def make_task(cfg: ml_collections.ConfigDict):
    """The task of `cfg.task` ("classify", the default, or "lm"), with its data loaded."""
    kind = cfg.get("task", "classify")
    if kind == "classify":
        return ClassifierTask(cfg, load_dataset(cfg.data))
    if kind == "lm":
        from routecal.training.lm import LMTask

        return LMTask(cfg)
    raise ValueError(f"task: unknown {kind!r}; expected one of {TASKS}")


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
    workdir is locked for the call (`routecal.files.workdir.lock`): a second process is refused.

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
    # every process: a relative `train.init_from` ("../det") resolves through this directory,
    # which the lock creates on process 0 alone (multi-host: process 1 raced it)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh if mesh is not None else parallel.make_mesh()
    with workdir_io.lock(workdir, "train", enabled=parallel.is_primary()):
        out = _train_locked(cfg, workdir, mesh, max_steps_this_run)
    parallel.barrier("train_and_evaluate")  # multi-host: process 0's files are written
    return out


def _finished(workdir: pathlib.Path, cfg: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """Checks `config.json` (if any) matches `cfg`; returns the final metrics of a finished run."""
    final_path = workdir / "final_metrics.json"
    check_workdir_config(workdir, json.loads(cfg.to_json_best_effort()), "config.json", "run")
    if not final_path.exists():
        return None
    try:
        final = workdir_io.read_json(final_path, "final metrics")
    except ValueError as e:
        print(f"routecal train: {e}; evaluating again", file=sys.stderr)
        return None
    return final if final.get("step") == int(cfg.train.steps) else None


def init_from_dir(init_from: str, workdir: str | pathlib.Path | None) -> pathlib.Path:
    """The run `train.init_from` names: an absolute path as is; a relative one (what a study
    stores, e.g. "../det", so a copied or moved study still points inside itself) is read from
    the run's own `workdir` (from the current directory when no workdir is known yet)."""
    p = pathlib.Path(init_from)
    return p if p.is_absolute() or workdir is None else pathlib.Path(workdir) / p


def check_config(cfg: ml_collections.ConfigDict, n_devices: int = 1, task: Any = None,
                 workdir: str | pathlib.Path | None = None) -> Any:
    """Checks a training config whole, writing nothing: what `train_and_evaluate` checks first.

    Seed, train settings (for a mesh of `n_devices`), the task and its data, the model (built
    abstractly, `nnx.eval_shape`: no parameter is allocated), the trainable selection, batch sizes
    and `train.init_from` (a finished run). A study checks each of its models with it first.

    Args:
      cfg: the training config; n_devices: the mesh size; task: `make_task(cfg)` if the caller
        has it already (made otherwise); workdir: the run's directory (a relative
        `train.init_from` is read from it, `init_from_dir`).
    Returns:
      the task (its data loaded once; `train_and_evaluate` reuses it).

    Raises:
      ValueError: naming the first bad key.
    """
    tcfg = cfg.train
    _checks.check_positive_int(cfg.seed, "seed", minimum=0)
    _check_train_cfg(tcfg, n_devices)
    task = make_task(cfg) if task is None else task
    model = nnx.eval_shape(task.build_model)
    if not jax.tree.leaves(nnx.state(model, trainable_filter(str(tcfg.trainable)))):
        raise ValueError(f"train.trainable: {tcfg.trainable!r} selects no parameter")
    n_train, bs = task.n_train, int(tcfg.batch_size)
    if bs > n_train:
        raise ValueError(f"train.batch_size: {bs} exceeds the {n_train} training examples")
    eval_bs = int(tcfg.get("eval_batch_size", bs))
    if eval_bs % n_devices:
        raise ValueError(f"train.eval_batch_size: {eval_bs} not divisible by {n_devices} devices")
    if tcfg.get("init_from"):
        src = init_from_dir(str(tcfg.init_from), workdir)
        if not (src / "config.json").exists():
            raise ValueError(f"train.init_from: {tcfg.init_from!r} ({src}) is not a routecal "
                             "training run")
    return task


def _put(x: Any, sharding: jax.sharding.Sharding) -> Any:
    """`jax.device_put(x, sharding)` of a state leaf, through the host (PRNG keys through their
    data). Multi-host, `device_put` refuses a device-placed array on a sharding over other
    processes' devices; a host array it checks is the same on every process and places."""
    if not isinstance(x, jax.Array):
        return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(x), sharding)


def _train_locked(cfg, workdir: pathlib.Path, mesh, max_steps_this_run: int | None):
    tcfg = cfg.train
    final = _finished(workdir, cfg)
    if final is not None:
        return final
    # --- everything checked before the first write -----------------------------------------
    task = check_config(cfg, mesh.size, workdir=workdir)
    model = task.build_model()
    optimizer = nnx.Optimizer(model, make_tx(tcfg), wrt=trainable_filter(str(tcfg.trainable)))
    if tcfg.get("init_from"):  # a checkpoint, if any, overwrites it below
        src = init_from_dir(str(tcfg.init_from), workdir)
        checkpoints.copy_params(model, load_trained(src)[0], f"train.init_from ({src})")
    eval_bs = int(tcfg.get("eval_batch_size", tcfg.batch_size))
    record_workdir_config(workdir, json.loads(cfg.to_json_best_effort()), "config.json", "run")
    for name, obj in task.artifacts().items():  # e.g. the LM corpus manifest
        workdir_io.write_json(workdir / name, obj)

    mngr = checkpoints.manager(workdir)
    try:
        rep = parallel.replicated(mesh)
        for obj in (model, optimizer):
            nnx.update(obj, jax.tree.map(lambda x: _put(x, rep), nnx.state(obj)))
        position = checkpoints.restore_newest_readable(mngr, model, optimizer) or {
            "step": 0, "epoch": 0, "index": 0,
        }
        return _loop(cfg, workdir, mesh, mngr, model, optimizer, task, position,
                     eval_bs=eval_bs, max_steps_this_run=max_steps_this_run)
    finally:
        mngr.close()


def _loop(cfg, workdir, mesh, mngr, model, optimizer, task, position, *, eval_bs,
          max_steps_this_run):
    tcfg = cfg.train
    metrics_path = workdir / "metrics.jsonl"
    primary = parallel.is_primary()  # multi-host: process 0 writes the workdir's files
    if primary:
        checkpoints.truncate_metrics(metrics_path, position["step"])
    # cached_partial caches the NNX graph traversal of model and optimizer (less overhead per step)
    train_step = nnx.cached_partial(task.train_step(str(tcfg.trainable)), model, optimizer)
    seed = int(cfg.get("data_seed", cfg.seed))
    steps, n_train, bs = int(tcfg.steps), task.n_train, int(tcfg.batch_size)
    log_every = int(tcfg.get("log_every", 50))

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
        out = train_step(*_put_batch(mesh, *task.train_batch(idx, step)))
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
            for split in task.eval_splits:
                ev = task.evaluate(model, split, batch_size=eval_bs, mesh=mesh)
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
    for split in task.final_splits:
        ev = task.evaluate(model, split, batch_size=eval_bs, mesh=mesh, final=True)
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
      (model, cfg, dataset); the model lives on the default device. For an LM run
      (`cfg.task == "lm"`) the model is a `Decoder` and the dataset a `TextDataset`.

    Raises:
      ValueError: if `workdir` holds no config or no checkpoint, or the latest checkpoint is
        unreadable (named, in one line; resuming training falls back to an older one instead).
    """
    workdir = pathlib.Path(workdir)
    cfg = load_config_json(workdir)
    task = make_task(cfg)
    model, dataset = task.build_model(), task.dataset
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
