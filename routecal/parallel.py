r"""Device meshes, multi-host helpers and backend-aware engine sizes.

routecal scales out on JAX's own engine: a 1-D `jax.sharding.Mesh` over the local devices (or, after
`jax.distributed.initialize()`, over every device of a multi-host job), `shard_map` for batched
statistics and `NamedSharding` for data parallelism. Test on CPU with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`; multi-process runs are tested on one machine
with local processes joined over 127.0.0.1 (tests/test_multihost.py).

A multi-host study is one SPMD program whose independent pieces are each computed once: training
runs on every process together (the global mesh); a piece owned by one process (`owner`: round-
robin) runs inside `alone()`, where this module's helpers treat the process as a job of one (its
own devices, no barrier); `share` gathers such pieces' results through jax.distributed's
key-value store, `routecal.study.stages.Stages.run_all` through the stage files.

Multi-host launch (every process runs the same command; see `initialize_distributed`):

    # Cloud TPU pod slice (all workers; topology auto-detected from the TPU metadata)
    gcloud compute tpus tpu-vm ssh NAME --zone Z --worker=all \
        --command="routecal --distributed study --config configs/study.py --workdir /shared/run"
    # SLURM GPU cluster (one process per node; SLURM variables auto-detected)
    srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 \
        routecal --distributed study --config configs/study.py --workdir /shared/run
    # anything else: explicit flags (process i of n; the coordinator is process 0's host:port)
    routecal --distributed --coordinator-address 10.0.0.1:1234 --num-processes 2 --process-id i \
        study --config configs/study.py --workdir /shared/run
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXIS = "batch"


def make_mesh(devices: Sequence[jax.Device] | int | None = None, axis: str = BATCH_AXIS) -> Mesh:
    """Returns a 1-D mesh named `axis`.

    Args:
      devices: explicit devices, a count (the first `n` of `jax.devices()`), or None for all
        (after `initialize_distributed`, all devices of every process; inside `alone()`, this
        process's own devices).
      axis: the mesh axis name.
    """
    if devices is None:
        devs = _devices()
    elif isinstance(devices, int):
        all_devs = _devices()
        if not 1 <= devices <= len(all_devs):
            raise ValueError(f"devices: asked for {devices}, have {len(all_devs)}")
        devs = all_devs[:devices]
    else:
        devs = list(devices)
        if not devs:
            raise ValueError("devices: empty")
    return Mesh(np.asarray(devs), (axis,))


def batch_sharding(mesh: Mesh, ndim: int, axis: str = BATCH_AXIS) -> NamedSharding:
    """Sharding that splits the leading dimension of an `ndim`-D array over `axis`."""
    return NamedSharding(mesh, P(axis, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding over `mesh`."""
    return NamedSharding(mesh, P())


def pad_to_multiple(n: int, k: int) -> int:
    """Smallest multiple of `k` that is >= `n`."""
    return -(-n // k) * k


# ------------------------------------------------------------------------------------------------
# Multi-host
# ------------------------------------------------------------------------------------------------


def initialize_distributed(**kwargs: Any) -> None:
    """Joins a multi-host job so `jax.devices()` (and `make_mesh()`) span every host.

    Calls `jax.distributed.initialize(**kwargs)`, which auto-detects Cloud TPU pods, SLURM and
    Open MPI clusters; elsewhere pass `coordinator_address="host:port"`, `num_processes` and
    `process_id` (launch lines in the module docstring). On CPU, cross-process collectives go
    through gloo. Call it once per process before any other JAX computation
    (`routecal --distributed ...` does); a second call is a no-op.
    """
    if jax.distributed.is_initialized():
        return
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):  # older jax defaults
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


_ALONE = [False]  # inside `alone()`: this process works by itself (a stage it owns)


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Multi-host: this process computes a piece of work by itself (a stage it owns,
    `routecal.study.stages.Stages.run_all`), as if it were a one-process job.

    Inside, `make_mesh()` spans this process's own devices (`jax.local_devices()`), `is_primary()`
    is True (the owner writes the piece's files), `barrier` and `broadcast_flag` do nothing and
    `process_slice` is everything: no collective waits for the processes that are not computing
    it. On one process it changes nothing.
    """
    before = _ALONE[0]
    _ALONE[0] = True
    try:
        yield
    finally:
        _ALONE[0] = before


def is_alone() -> bool:
    """True inside `alone()` or on a one-process job: no other process takes part in the work."""
    return _ALONE[0] or jax.process_count() == 1


def _devices() -> list[jax.Device]:
    return jax.local_devices() if _ALONE[0] else jax.devices()


def process_count() -> int:
    """Processes taking part in the current work: 1 inside `alone()`, else `jax.process_count()`."""
    return 1 if _ALONE[0] else jax.process_count()


def process_index() -> int:
    """This process's index among those taking part: 0 inside `alone()`, else
    `jax.process_index()`."""
    return 0 if _ALONE[0] else jax.process_index()


def owner(i: int) -> int:
    """The process that owns item `i` of a list of independent pieces of work (round-robin:
    `i mod process_count()`), so every process agrees without talking."""
    return i % process_count()


def is_primary() -> bool:
    """True on process 0 (the one process that writes results, reports and logs), and on the
    owner of a piece of work inside `alone()`."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Multi-host: waits until every process reaches the barrier `name` (no-op on one process
    and inside `alone()`).

    Every file process 0 writes is followed by a barrier before any process reads it
    (`jax.experimental.multihost_utils.sync_global_devices`, which also checks that every process
    passed the same name). The processes must call it in the same order.
    """
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_flag(flag: bool) -> bool:
    """Multi-host: process 0's `flag` on every process (so every process takes the same branch,
    e.g. "this stage is already stored"); `flag` itself on one process and inside `alone()`."""
    return bool(broadcast_flags([flag])[0])


def broadcast_flags(flags: Sequence[bool]) -> list[bool]:
    """`broadcast_flag` for a list of flags at once (one collective): process 0's list."""
    if process_count() == 1 or not flags:
        return [bool(f) for f in flags]
    from jax.experimental import multihost_utils

    out = multihost_utils.broadcast_one_to_all(np.asarray(flags, np.int32).reshape(-1))
    return [bool(f) for f in np.asarray(out)]


def process_slice(n: int) -> slice:
    """This process's contiguous part of `n` items (split as `numpy.array_split`, process order;
    all of them on one process and inside `alone()`)."""
    k, i = process_count(), process_index()
    q, r = divmod(n, k)
    start = i * q + min(i, r)
    return slice(start, start + q + (i < r))


_SHARED = [0]  # share() calls so far: the same count on every process (they call in one order)
_WAIT_MS = 24 * 3600 * 1000  # how long a process waits for another's item


def share(fn: Callable[[int], Any], n: int, name: str) -> list[Any]:
    """`[fn(i) for i in range(n)]` for n independent items, each computed once.

    Multi-host: process `owner(i)` computes item i alone (`alone()`) and puts it, pickled, in
    jax.distributed's key-value store; every process then reads every item. One process (and
    inside `alone()`): computed in order. On every process count each item passes through
    `jax.device_get`, so the results (numpy, not jax arrays) are the same objects' values.
    Every process must call it, in the same order (keys are numbered by call). If an owner fails,
    the others wait for its items until jax's coordination service reports the lost process.

    Args:
      fn: item index -> a picklable result (e.g. one diagnostic cell's numbers).
      n: number of items; name: a label for the keys (and for errors).
    """
    if process_count() == 1:
        return [jax.device_get(fn(i)) for i in range(n)]
    import pickle

    from jax._src import distributed  # the client of jax.distributed.initialize (no public API)

    client = distributed.global_state.client
    call = _SHARED[0]
    _SHARED[0] += 1
    key = f"routecal/share/{call}/{name}"
    me = jax.process_index()
    for i in range(n):
        if owner(i) == me:
            with alone():
                value = jax.device_get(fn(i))
            client.key_value_set_bytes(f"{key}/{i}", pickle.dumps(value))
            print(f"routecal: process {me} computed {name} item {i}", file=sys.stderr, flush=True)
    return [pickle.loads(client.blocking_key_value_get_bytes(f"{key}/{i}", _WAIT_MS))
            for i in range(n)]


def replicate(x: Any, mesh: Mesh) -> Any:
    """Inside `jit`: constrains `x` (a pytree) to be replicated on every device of `mesh`, so every
    process can read the whole result (XLA inserts the all-gather)."""
    return jax.lax.with_sharding_constraint(x, replicated(mesh))


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly globally sharded) array on this host, on every process."""
    if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ------------------------------------------------------------------------------------------------
# Backend-aware engine sizes
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EngineSizes:
    """Chunk, lane and tile sizes of the statistics engines for one backend.

    They bound memory (never N or B) and set speed, never results: the permutation null for a key
    is the same for every lane/block size (`routecal.stats.diagnostics`), the kernel sums agree to
    float32 rounding for every tile size.

    Attributes:
      permutation_lanes: permutations per chunk (working set ~ lanes x scan_block x 8 bytes x 4).
      scan_block: examples per step of the permutation scan (unrolled).
      nw_row_tile, nw_col_tile: Nadaraya-Watson tiles (memory ~ row x col floats per device).
      bandwidth_chunk: bandwidths per sharded kernel call.
    """

    permutation_lanes: int
    scan_block: int
    nw_row_tile: int
    nw_col_tile: int
    bandwidth_chunk: int


# CPU: 192 lanes keep each scan step under XLA:CPU's threshold for splitting a fused kernel over
# the intra-op pool (split kernels pay a fork-join per step: ~2x the CPU time, measured at
# 256-1024 lanes; 192 ran the paper test ~10% faster than 128, issue 26); the sharded program's memory grew with bandwidths per call (2.4 GB for 32 at
# N = 100k), hence 4. GPU/TPU: a step is one kernel launch, so more lanes and longer steps amortise
# it (a GPU needs >= 10^4 threads per kernel); tiles of 4096^2 floats are 64 MiB.
_ENGINE_SIZES = {
    "cpu": EngineSizes(192, 16, 512, 8192, 4),
    "gpu": EngineSizes(8192, 128, 4096, 16384, 8),
    "tpu": EngineSizes(8192, 128, 4096, 16384, 8),
}


def engine_sizes(backend: str | Mesh | None = None) -> EngineSizes:
    """Sizes for `backend`: "cpu", "gpu" ("cuda", "rocm"), "tpu", a mesh (its devices' platform),
    or None (`jax.default_backend()`)."""
    if isinstance(backend, Mesh):
        b = backend.devices.flat[0].platform
    else:
        b = jax.default_backend() if backend is None else backend
    b = {"cuda": "gpu", "rocm": "gpu"}.get(b, b)
    if b not in _ENGINE_SIZES:
        raise ValueError(f"backend: unknown {backend!r}; expected one of {sorted(_ENGINE_SIZES)}")
    return _ENGINE_SIZES[b]


def nw_tiles(row_tile: int | None, col_tile: int | None, mesh: Mesh | None) -> tuple[int, int]:
    """Nadaraya-Watson (row, column) tiles: the given ones, else the mesh backend's defaults."""
    sizes = engine_sizes(mesh)
    out = []
    for name, v, default in (("row_tile", row_tile, sizes.nw_row_tile),
                             ("col_tile", col_tile, sizes.nw_col_tile)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1):
            raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
        out.append(default if v is None else int(v))
    return out[0], out[1]


MAX_MAPS = 20_000  # memory mappings before `release_compiled` drops the compiled executables


def memory_maps() -> int | None:
    """Memory mappings of this process (`/proc/self/maps` lines); None where there is no procfs."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def release_compiled(max_maps: int = MAX_MAPS) -> bool:
    """Drops JAX's compiled executables (`jax.clear_caches`) once this process holds more than
    `max_maps` memory mappings; True if it did.

    Every executable XLA:CPU compiles keeps ~3 mappings until it is freed, and Linux refuses new
    ones past `vm.max_map_count` (65,530 by default): a long process that compiles ~19,000
    programs (a pytest worker running half the suite, a notebook running many studies) then dies
    with a segfault or abort inside XLA's compiler. Called between study stages and test modules;
    the cost is recompiling what a later stage reuses.
    """
    n = memory_maps()
    if n is None or n <= max_maps:
        return False
    import gc

    jax.clear_caches()
    gc.collect()
    return True
