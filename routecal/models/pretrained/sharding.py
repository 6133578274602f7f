"""Where each imported parameter lives on a device mesh (FSDP on embedding and expert axes).

Rules, by parameter path and shape (an axis is sharded only when the mesh axis size divides it;
otherwise it stays replicated and `plan` says so):

* the embedding [V, D]: V over the FSDP axis; the untied head [D, V]: V over the FSDP axis;
* expert weights [E, ., .]: E over the expert axis when the mesh has one (expert parallelism) and
  the first feature axis over the FSDP axis; with no expert axis, E over the FSDP axis;
* other 2-D kernels (attention, dense and shared-expert MLPs) [in, out]: `in` over the FSDP axis,
  except the router and shared-expert gate (a few thousand numbers, read by every token);
* 1-D parameters (norm scales, biases): replicated.

XLA's SPMD partitioner inserts the all-gathers when the jitted forward pass reads a sharded weight
(FSDP: weights are sharded at rest, gathered per use).
"""

from __future__ import annotations

from collections.abc import Sequence

from jax.sharding import Mesh, NamedSharding, PartitionSpec

EXPERT_MARK = ".experts."
REPLICATED_2D = ("router.proj.kernel", "shared_expert_gate.kernel")


def partition_spec(
    path: str,
    shape: Sequence[int],
    mesh: Mesh,
    *,
    fsdp_axis: str = "fsdp",
    expert_axis: str | None = None,
) -> PartitionSpec:
    """The `PartitionSpec` of parameter `path` (e.g. "layers.0.mlp.experts.w_in_ExDxF").

    Args:
      path: dotted routecal parameter path. shape: its shape.
      mesh: the device mesh; `fsdp_axis` (and `expert_axis`, if given) must be among its axes.
    """
    for name, ax in (("fsdp_axis", fsdp_axis), ("expert_axis", expert_axis)):
        if ax is not None and ax not in mesh.shape:
            raise ValueError(f"{name}: {ax!r} is not an axis of the mesh {dict(mesh.shape)}")

    def fits(axis: str | None, dim: int) -> str | None:
        return axis if axis is not None and shape[dim] % mesh.shape[axis] == 0 else None

    rank = len(shape)
    if rank <= 1 or path.endswith(REPLICATED_2D):
        return PartitionSpec()
    if path == "embed.embedding":
        return PartitionSpec(fits(fsdp_axis, 0), None)
    if path == "lm_head.kernel":
        return PartitionSpec(None, fits(fsdp_axis, 1))
    if EXPERT_MARK in path and rank == 3:
        if expert_axis is not None:
            return PartitionSpec(fits(expert_axis, 0), fits(fsdp_axis, 1), None)
        return PartitionSpec(fits(fsdp_axis, 0), None, None)
    return PartitionSpec(fits(fsdp_axis, 0), *([None] * (rank - 1)))


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
            mesh, partition_spec(p, s, mesh, fsdp_axis=fsdp_axis, expert_axis=expert_axis)
        )
        for p, s in shapes.items()
    }


def bytes_per_device(
    shapes: dict[str, tuple[int, ...]], itemsize: int, shardings: dict[str, NamedSharding] | None
) -> int:
    """Largest per-device parameter bytes under `shardings` (None: everything on one device).

    Computed from shapes, not measured: the sum over parameters of size * itemsize divided by the
    product of the mesh axis sizes its spec shards it over (all shards are equal because sharded
    axes are divisible).
    """
    total = 0
    for p, shape in shapes.items():
        n = itemsize
        for d in shape:
            n *= int(d)
        if shardings is not None:
            sh = shardings[p]
            for axis in sh.spec:
                for a in (axis,) if isinstance(axis, str) else (axis or ()):
                    n //= sh.mesh.shape[a]
        total += n
    return int(total)
