"""Device meshes and sharding helpers.

routecal scales out on JAX's own engine: a 1-D `jax.sharding.Mesh` over the local devices (or, after
`jax.distributed.initialize()`, over every device of a multi-host job), `shard_map` for batched
statistics and `NamedSharding` for data parallelism. Test on CPU with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXIS = "batch"


def make_mesh(devices: Sequence[jax.Device] | int | None = None, axis: str = BATCH_AXIS) -> Mesh:
    """Returns a 1-D mesh named `axis`.

    Args:
      devices: explicit devices, a count (the first `n` of `jax.devices()`), or None for all.
      axis: the mesh axis name.
    """
    if devices is None:
        devs = jax.devices()
    elif isinstance(devices, int):
        all_devs = jax.devices()
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


def initialize_distributed(**kwargs) -> None:
    """Joins a multi-host job so `jax.devices()` (and `make_mesh()`) span every host.

    Calls `jax.distributed.initialize(**kwargs)`, which auto-detects Cloud TPU pods, SLURM and
    Open MPI clusters; pass `coordinator_address`, `num_processes` and `process_id` elsewhere.
    Call it once per process before any other JAX call (`routecal --distributed ...` does).
    """
    if jax.process_count() > 1:
        return  # already part of a multi-process job
    jax.distributed.initialize(**kwargs)
