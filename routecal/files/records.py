"""JSON records of a run or study: `to_json` (numpy -> JSON; non-finite floats -> null), `dumps`,
atomic `write_json` (process 0 writes), the workdir-config guard, and package versions.

Shared by training (`routecal.training.train`), the study (`routecal.study.stages`) and the report,
so none of them imports another's layer for it. A workdir is keyed by its config:
`check_workdir_config` records it the first time and refuses a different one later, so one workdir
never mixes numbers from two configs.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import pathlib
import platform
from collections.abc import Mapping
from typing import Any

import numpy as np

from routecal import parallel
from routecal.files import workdir as workdir_io


def to_json(obj: Any) -> Any:
    """Recursively converts numpy scalars/arrays to JSON-serialisable Python objects."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if hasattr(obj, "__array__") and not isinstance(obj, str):
        return to_json(np.asarray(obj))
    return obj


def dumps(obj: Any) -> str:
    """`to_json(obj)` as indented JSON text."""
    buf = io.StringIO()
    json.dump(to_json(obj), buf, indent=1, sort_keys=False)
    return buf.getvalue()


def write_json(path: pathlib.Path, value: Any) -> Any:
    """Writes `to_json(value)` to `path` atomically (`routecal.files.workdir.write_text`).

    Multi-host: process 0 writes (`parallel.is_primary`), then every process waits at a barrier
    (`parallel.barrier`) and reads the file back, so every process returns process 0's value and
    no process reads the file before it is written. Every process must call it, in the same order.

    Returns:
      the value as read back (what a resumed run will see).
    """
    if parallel.is_primary():
        workdir_io.write_text(path, dumps(value))
    parallel.barrier(f"write_json:{pathlib.Path(path).name}")
    return workdir_io.read_json(path, "results")


def check_workdir_config(
    workdir: str | pathlib.Path, config: Mapping[str, Any], filename: str, what: str
) -> None:
    """Raises if `workdir/filename` records a config other than `config` (absent: no check).

    Args:
      workdir: the run's or study's directory.
      config: the config as a JSON-able dict (`json.loads(cfg.to_json_best_effort())`).
      filename: "config.json" (a training run) or "study_config.json" (a study).
      what: "run" or "study", for the message.
    Raises:
      ValueError: naming the workdir and the top-level keys that differ (or the corrupt file).
    """
    path = pathlib.Path(workdir) / filename
    if not path.exists():
        return
    theirs = workdir_io.read_json(path, "workdir")
    if theirs != config:
        diff = sorted(k for k in set(config) | set(theirs) if config.get(k) != theirs.get(k))
        raise ValueError(
            f"workdir: {workdir} holds a {what} with a different config (differs in {diff}); use "
            "a new workdir, or delete it to start over"
        )


def record_workdir_config(
    workdir: str | pathlib.Path, config: Mapping[str, Any], filename: str, what: str
) -> None:
    """`check_workdir_config`, then records `config` in `workdir/filename` if absent (atomic).

    Call it only once the whole config is validated, so a rejected config never keys a workdir.
    Multi-host: every process calls it; process 0 writes.
    """
    check_workdir_config(workdir, config, filename, what)
    path = pathlib.Path(workdir) / filename
    if not parallel.broadcast_flag(path.exists()) and parallel.is_primary():
        workdir_io.write_json(path, dict(config))
    parallel.barrier(f"record_workdir_config:{filename}")  # multi-host: written before it is read


def versions() -> dict[str, str]:
    """Python and package versions, recorded in results.json."""
    out = {"python": platform.python_version()}
    for pkg in ("routecal", "jax", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            if pkg == "routecal":
                from routecal._version import __version__

                out[pkg] = __version__
    return out
