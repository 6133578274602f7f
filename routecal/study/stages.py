"""The stage cache: `W/stages/<name>.json`, present = done, skipped on resume (`Stages.run`);
independent stages split over the processes of a multi-host job (`Stages.run_all`).

The JSON helpers and the workdir-config guard live in `routecal.files.records` (shared with
training and the report); they are re-exported here for the study's modules.
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Callable, Sequence
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

Task = tuple[str, Callable[[], Any]]


def spmd(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Marks a stage thunk that every process of a multi-host job computes together
    (`Stages.run_all` does not give it to one process): its collectives span every process, e.g.
    model training data-parallel over the global mesh. Returns `fn`, marked."""
    fn.routecal_spmd = True
    return fn


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

    def run_all(self, tasks: Sequence[Task],
                on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Independent stages (none reads another's output), each computed once: their stored
        outputs by name.

        One process: `run` for each, in order. Multi-host: process 0 decides which are stored
        (`parallel.broadcast_flags`); the pending ones marked `spmd` run first, on every process
        together (`run`); every other pending stage k (in the order of their names) is owned by
        process `parallel.owner(k)` (round-robin), which computes it alone (`parallel.alone()`: its own
        devices, no collective with the others) and writes its JSON to the shared workdir; then
        every process waits at one barrier and reads every stage. A stage is a function of its
        key alone (never of the device count: `routecal.stats.diagnostics`), so the numbers are
        the same for any process count. If an owner fails, the others wait at the barrier until
        jax's coordination service reports the lost process.

        Args:
          tasks: (stage name, thunk) pairs; a thunk returns the stage's output (`run`).
          on_stage: called with each stage's name once this process has it (a progress bar).
        """
        names = [n for n, _ in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks: stage names repeat in {names}")
        stored = parallel.broadcast_flags(  # multi-host: process 0 decides
            [parallel.is_primary() and self._usable(n, None) for n in names])
        pending = [t for t, done in zip(tasks, stored, strict=True) if not done]
        together = [t for t in pending if parallel.is_alone() or getattr(t[1], "routecal_spmd", 0)]
        shared = [t for t in pending if t not in together]
        for name, fn in together:
            self.run(name, fn)
            if on_stage is not None:
                on_stage(name)
        # round-robin over the sorted names: stages of one kind (e.g. every power cell, the
        # costly ones) alternate between processes instead of all landing on one
        for k, (name, fn) in enumerate(sorted(shared, key=lambda t: t[0])):
            if parallel.owner(k) == parallel.process_index():
                with parallel.alone():
                    self.run(name, fn)
                print(f"routecal: process {parallel.process_index()} computed stage {name}",
                      file=sys.stderr, flush=True)
                if on_stage is not None:
                    on_stage(name)
        if shared:
            parallel.barrier(f"Stages.run_all:{len(shared)}:{shared[0][0]}")
        return {n: self.load(n) for n in names}
