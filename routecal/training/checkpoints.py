"""What a training run resumes or starts from: orbax checkpoints (the newest readable one), another
run's parameters (`train.init_from`) and the metrics log.

A checkpoint (`W/checkpoints/<step>/`) holds the model state, the optimizer state and the position
`{"step", "epoch", "index", "train_time_s"}` (data order and cumulative training time). RNG keys are
rebuilt from the seed; their counters are part of the model state. `metrics.jsonl` holds one JSON
object per log / eval event; on resume the lines after the checkpoint are dropped (they are logged
again), and so is a partial last line left by a kill.
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from routecal import parallel
from routecal.files import workdir as workdir_io


def model_state(model: nnx.Module) -> nnx.State:
    """The checkpointed state of `model`: everything but the RNG keys."""
    return nnx.state(model, nnx.Not(nnx.RngKey))


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def manager(workdir: pathlib.Path, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """The orbax manager of `workdir/checkpoints` (created if missing).

    Multi-host: every process of the job takes part (orbax's own barriers span them), except
    inside `parallel.alone()`, where this process restores by itself (a trained run's model, e.g.
    the temperature stage) and orbax waits for no other process. Saving inside `alone()` is
    refused (`save`, `save_model`): orbax's save signals through keys every process shares.
    """
    root = (pathlib.Path(workdir) / "checkpoints").absolute()
    mp = {}
    if parallel.is_alone() and jax.process_count() > 1:
        me = jax.process_index()
        mp["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"alone{me}")
        root.mkdir(parents=True, exist_ok=True)  # orbax creates it only with every process
    return ocp.CheckpointManager(
        root, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not mp, **mp))


def _check_not_alone() -> None:
    if parallel.is_alone() and jax.process_count() > 1:
        raise ValueError("checkpoints: saving inside parallel.alone() is not supported on several "
                         "processes (mark the stage `stages.spmd`)")


def save(mngr, step: int, model, optimizer, position: dict[str, Any]) -> None:
    _check_not_alone()
    mngr.save(
        step,
        args=ocp.args.Composite(
            model=ocp.args.StandardSave(nnx.to_pure_dict(model_state(model))),
            opt=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(optimizer))),
            position=ocp.args.JsonSave(position),
        ),
    )


def save_model(workdir: str | pathlib.Path, step: int, model) -> None:
    """Saves the model state alone (no optimizer, no data position) as checkpoint `step` of
    `workdir/checkpoints`: what a model fitted in memory by a study leaves (with its
    `config.json`, `train.load_trained` rebuilds it; `restore_into` without an optimizer)."""
    _check_not_alone()
    mngr = manager(pathlib.Path(workdir))
    try:
        mngr.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(nnx.to_pure_dict(model_state(model)))))
        mngr.wait_until_finished()
    finally:
        mngr.close()


def restore_into(mngr, step: int, model, optimizer=None) -> dict[str, Any] | None:
    """Restores model (and optimizer and data position if `optimizer` is given) from `step`."""
    mstate = model_state(model)
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


def copy_params(model: nnx.Module, src_model: nnx.Module, what: str) -> int:
    """Copies every parameter of `src_model` whose path exists in `model` (shapes must match).

    Returns the number of parameters copied; raises ValueError (naming `what`) if a shape differs
    or none match.
    """
    src = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(src_model, nnx.Param)))
    dst_state = nnx.state(model, nnx.Param)
    dst = nnx.traversals.flatten_mapping(nnx.to_pure_dict(dst_state))
    copied = 0
    for path, val in dst.items():
        if path in src:
            if src[path].shape != val.shape:
                raise ValueError(
                    f"{what}: parameter {'/'.join(map(str, path))} has shape {src[path].shape} "
                    f"there but {val.shape} here"
                )
            dst[path] = jnp.asarray(src[path])
            copied += 1
    if copied == 0:
        raise ValueError(f"{what}: no parameter matches this model")
    nnx.replace_by_pure_dict(dst_state, nnx.traversals.unflatten_mapping(dst))
    nnx.update(model, dst_state)
    return copied


def _one_line(e: BaseException) -> str:
    """The first line of the innermost cause (orbax wraps the informative TensorStore error)."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    return f"{type(e).__name__}: {text[:200]}"


def unreadable(mngr, step: int, e: BaseException) -> ValueError:
    """The one-line error for checkpoint `step` that orbax could not read (`e` as the cause)."""
    return ValueError(
        f"checkpoint: {mngr.directory / str(step)} is unreadable ({_one_line(e)})"
    )


def restore_newest_readable(mngr, model, optimizer) -> dict[str, Any] | None:
    """Resumes from the newest checkpoint that restores; returns its position (None: no checkpoint).

    A checkpoint that fails to restore (truncated or corrupt files) gets one line on stderr and the
    next older one is tried; once one restores, the unreadable newer ones are deleted (training
    redoes their steps and saves them again).

    Raises:
      ValueError: checkpoints exist but none restores (the newest one's error as the cause).
    """
    bad: list[int] = []
    first_error: BaseException | None = None
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            position = restore_into(mngr, step, model, optimizer)
        except Exception as e:  # orbax raises bare Exception for unreadable arrays
            err = unreadable(mngr, step, e)
            print(f"routecal train: {err}; trying an older checkpoint", file=sys.stderr)
            bad.append(step)
            first_error = first_error or e
            continue
        for b in bad:
            mngr.delete(b)
        if bad:
            print(
                f"routecal train: resuming from step {step}; deleted unreadable checkpoint(s) {bad}",
                file=sys.stderr,
            )
        return position
    if bad:
        raise ValueError(
            f"checkpoint: no readable checkpoint in {mngr.directory} (steps {bad} all fail); "
            "delete that directory to train from scratch"
        ) from first_error
    return None


# ----------------------------------------------------------------------------------------------
# The metrics log
# ----------------------------------------------------------------------------------------------


def read_metrics(path: pathlib.Path) -> list[dict[str, Any]]:
    """The records of `metrics.jsonl` ([] if absent); a partial last line (a kill mid-append) is
    dropped with a message."""
    if not path.exists():
        return []
    records, dropped = workdir_io.read_jsonl(path, "metrics")
    if dropped:
        print(f"routecal train: dropped a partial last line of {path}", file=sys.stderr)
    return records


def truncate_metrics(path: pathlib.Path, after_step: int) -> None:
    """Keeps the lines logged up to `after_step` (the rest are logged again on resume); atomic."""
    if path.exists():
        keep = [r for r in read_metrics(path) if r["step"] <= after_step]
        workdir_io.write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def log_metrics(path: pathlib.Path, record: dict[str, Any]) -> None:
    """Appends `record` as one line (a kill mid-append leaves a partial line that resume drops)."""
    with workdir_io.naming(path), path.open("a") as f:
        f.write(json.dumps(record) + "\n")
