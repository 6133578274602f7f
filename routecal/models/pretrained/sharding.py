"""Where each imported parameter lives on a device mesh (FSDP on embedding and expert axes).

Rules, by parameter path and shape. A mesh axis goes to the first listed dimension that its size
divides (e.g. Qwen's E = 60 experts on 8 devices: the FSDP axis falls through to D); if none
does, the parameter stays replicated along that axis (`ImportInfo.partition_specs` shows it):

* the embedding [V, D]: V (else D) over the FSDP axis; the untied head [D, V]: V (else D);
* expert weights [E, ., .]: E over the expert axis when the mesh has one (expert parallelism) and
  a feature axis over the FSDP axis; with no expert axis, E (else a feature axis) over FSDP;
* other 2-D kernels (attention, dense and shared-expert MLPs) [in, out]: `in` (else `out`) over
  the FSDP axis (over FSDP and expert axes jointly when both exist, as the embedding), except the router and shared-expert gate (a few thousand numbers, read by every
  token, replicated);
* 1-D parameters (norm scales, biases): replicated.

XLA's SPMD partitioner inserts the all-gathers when the jitted forward pass reads a sharded weight
(FSDP: weights are sharded at rest, gathered per use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Axis = str | tuple[str, ...] | None
EXPERT_MARK = ".experts."
REPLICATED_2D = ("router.proj.kernel", "shared_expert_gate.kernel")


def partition_spec(
    path: str,
    shape: Sequence[int],
    mesh_shape: Mapping[str, int],
    *,
    fsdp_axis: str = "fsdp",
    expert_axis: str | None = None,
) -> PartitionSpec:
    """The `PartitionSpec` of parameter `path` (e.g. "layers.0.mlp.experts.w_in_ExDxF").

    Args:
      path: dotted routecal parameter path. shape: its shape.
      mesh_shape: mesh axis name -> size (`mesh.shape`); `fsdp_axis` (and `expert_axis`, if
        given) must be among its axes.
    """
    for name, ax in (("fsdp_axis", fsdp_axis), ("expert_axis", expert_axis)):
        if ax is not None and ax not in mesh_shape:
            raise ValueError(f"{name}: {ax!r} is not an axis of the mesh {dict(mesh_shape)}")

    rank = len(shape)
    spec: list[Axis] = [None] * rank
    # Non-expert weights use every device: (fsdp, expert) jointly when there is an expert axis.
    dense_axes: tuple[Axis, ...] = (
        (fsdp_axis,) if expert_axis is None else ((fsdp_axis, expert_axis), fsdp_axis)
    )

    def put(axes: tuple[Axis, ...], dims: Sequence[int]) -> None:
        """Shards the first of `dims` (free, divisible by the axis size) over the first of `axes`
        that fits any."""
        for axis in axes:
            if axis is None:
                continue
            size = int(np.prod([mesh_shape[a] for a in _names(axis)]))
            for d in dims:
                if d < rank and spec[d] is None and shape[d] % size == 0:
                    spec[d] = axis
                    return

    if rank <= 1 or path.endswith(REPLICATED_2D):
        return PartitionSpec()
    if path == "embed.embedding":
        put(dense_axes, (0, 1))
    elif path == "lm_head.kernel":
        put(dense_axes, (1, 0))
    elif EXPERT_MARK in path and rank == 3:
        put((expert_axis,), (0,))
        put((fsdp_axis,), (0, 1, 2) if expert_axis is None else (1, 2))
    else:
        put(dense_axes, tuple(range(rank)))
    return PartitionSpec(*spec)


def _names(axis: Axis) -> tuple[str, ...]:
    return () if axis is None else (axis,) if isinstance(axis, str) else tuple(axis)


def plan(
    shapes: dict[str, tuple[int, ...]],
    mesh: Mesh,
    *,
    fsdp_axis: str = "fsdp",
    expert_axis: str | None = None,
) -> dict[str, NamedSharding]:
    """`NamedSharding` of every parameter path in `shapes` (see the module docstring)."""
    return {
        p: NamedSharding(
            mesh, partition_spec(p, s, mesh.shape, fsdp_axis=fsdp_axis, expert_axis=expert_axis)
        )
        for p, s in shapes.items()
    }


def bytes_per_device(
    shapes: dict[str, tuple[int, ...]],
    itemsize: int,
    specs: dict[str, PartitionSpec] | None = None,
    mesh_shape: Mapping[str, int] | None = None,
) -> int:
    """Per-device parameter bytes under `specs` over `mesh_shape` (None: all on one device).

    Computed from shapes, not measured: the sum over parameters of size * itemsize divided by the
    product of the mesh axis sizes its spec shards it over (all shards are equal because sharded
    axes are divisible).
    """
    total = 0
    for p, shape in shapes.items():
        n = itemsize
        for d in shape:
            n *= int(d)
        if specs is not None:
            for axis in specs[p]:
                for a in _names(axis):
                    n //= mesh_shape[a]
        total += n
    return int(total)
