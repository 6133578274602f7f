"""The stage cache, the workdir-config guard (shared with `routecal.train`), versions, JSON I/O.

A stage's output is `W/stages/<name>.json`: present = done, skipped on resume (`Stages.run`). A
workdir is keyed by its config: `check_workdir_config` records it the first time and refuses a
different one later, so one workdir never mixes numbers from two configs. Every result that
leaves a stage goes through `to_json` (numpy -> JSON; non-finite floats -> null).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from routecal import parallel
from routecal import workdir as workdir_io


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
    """Writes `to_json(value)` to `path` atomically (`routecal.workdir.write_text`).

    Multi-host: process 0 writes (`parallel.is_primary`); every process returns the same value.

    Returns:
      the value as read back (what a resumed run will see).
    """
    text = dumps(value)
    if not parallel.is_primary():
        return json.loads(text)
    workdir_io.write_text(path, text)
    return workdir_io.read_json(path, "results")


class Stages:
    """`W/stages/<name>.json`: a finished stage's output; present = done, skipped on resume."""

    def __init__(self, workdir: pathlib.Path):
        self.dir = pathlib.Path(workdir) / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> pathlib.Path:
        return self.dir / (name.replace("/", "_").replace(":", "_") + ".json")

    def done(self, name: str) -> bool:
        return self.path(name).exists()

    def load(self, name: str) -> Any:
        return workdir_io.read_json(self.path(name), f"stage {name!r}")

    def save(self, name: str, value: Any) -> Any:
        return write_json(self.path(name), value)

    def run(
        self, name: str, fn: Callable[[], Any], check: Callable[[Any], None] | None = None
    ) -> Any:
        """The stage's stored output, or `fn()` (timed in "seconds" when a dict), stored.

        A stored output that cannot be read (truncated, corrupt) or that `check` rejects (a
        ValueError, e.g. a path outside the workdir written by an older routecal or by the workdir
        this one was copied from) counts as not done: one line on stderr, and the stage reruns.
        """
        if self.done(name):
            try:
                value = self.load(name)
                if check is not None:
                    check(value)
                return value
            except ValueError as e:
                print(f"routecal: stage {name}: {e}; recomputing it", file=sys.stderr)
        t0 = time.perf_counter()
        value = fn()
        if isinstance(value, dict):
            value = {**value, "seconds": time.perf_counter() - t0}
        return self.save(name, value)


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
    """
    check_workdir_config(workdir, config, filename, what)
    path = pathlib.Path(workdir) / filename
    if not path.exists():
        workdir_io.write_json(path, dict(config))


def versions() -> dict[str, str]:
    """Python and package versions, recorded in results.json."""
    out = {"python": platform.python_version()}
    for pkg in ("routecal", "jax", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            if pkg == "routecal":
                import routecal

                out[pkg] = routecal.__version__
    return out
