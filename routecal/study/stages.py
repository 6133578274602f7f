"""The stage cache: `W/stages/<name>.json`, present = done, skipped on resume (`Stages.run`).

The JSON helpers and the workdir-config guard live in `routecal.files.records` (shared with
training and the report); they are re-exported here for the study's modules.
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

from routecal import parallel
from routecal.files import workdir as workdir_io
from routecal.files.records import (  # noqa: F401 (re-exported for the study's stages)
    check_workdir_config,
    dumps,
    record_workdir_config,
    to_json,
    versions,
    write_json,
)


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

    def _usable(self, name: str, check: Callable[[Any], None] | None) -> bool:
        """True when the stage's stored output exists, reads and passes `check`."""
        if not self.done(name):
            return False
        try:
            value = self.load(name)
            if check is not None:
                check(value)
            return True
        except ValueError as e:
            print(f"routecal: stage {name}: {e}; recomputing it", file=sys.stderr)
            return False

    def run(
        self, name: str, fn: Callable[[], Any], check: Callable[[Any], None] | None = None
    ) -> Any:
        """The stage's stored output, or `fn()` (timed in "seconds" when a dict), stored.

        A stored output that cannot be read (truncated, corrupt) or that `check` rejects (a
        ValueError, e.g. a path outside the workdir written by an older routecal or by the workdir
        this one was copied from) counts as not done: one line on stderr, and the stage reruns.

        Multi-host: process 0 decides whether the stage is done (`parallel.broadcast_flag`), so
        every process takes the same branch; every process computes `fn()` (its collectives span
        every process), process 0 stores it and every process returns the stored value
        (`write_json`: written, barrier, read back), identical on every process.
        """
        if parallel.broadcast_flag(self._usable(name, check)):  # multi-host: process 0 decides
            return self.load(name)
        t0 = time.perf_counter()
        value = fn()
        if isinstance(value, dict):
            value = {**value, "seconds": time.perf_counter() - t0}
        parallel.release_compiled()  # a long study stays under the kernel's memory-map limit
        return self.save(name, value)
