"""Pieces shared by the permutation engines (the paper test in `diagnostics`, the recommended test in
`conditional`): counter-based random bits, chunk sizes, the tie tolerance and checked engine
arguments.

Permutation b's two key words come from `jax.random` (threefry) via `fold_in(key, b)`, so a null
depends only on the key: never on the chunk size, the device or process count or the backend.
Shapes: `Bc` lanes, `L` counters.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from routecal import _checks, parallel


def _mix32(x: jax.Array) -> jax.Array:
    """Bijective 32-bit integer hash "lowbias32" (C. Wellons, hash-prospector; murmur3-style)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _uniform_bits(seed: jax.Array, counter: jax.Array) -> jax.Array:
    """Counter-based random bits: [2, Bc] per-lane keys and [L] uint32 counters -> [L, Bc] uint32.

    Two keyed rounds of `_mix32` over (counter * golden ratio + k0): for a fixed lane the counters
    map to distinct, well-mixed words; lanes differ by their threefry-drawn keys.
    """
    x = counter[:, None] * jnp.uint32(0x9E3779B9) + seed[0][None, :]
    return _mix32(_mix32(x) ^ seed[1][None, :])


def _lane_bits(seed: jax.Array, counter: jax.Array) -> jax.Array:
    """Cheaper counter-based bits for one word per (example, lane): [2, Bc], [L] -> [L, Bc] uint32.

    One `_mix32` round over a per-lane Weyl sequence, counter * (k1 | 1) + k0 (SplitMix32's
    construction, Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators",
    OOPSLA, with the increment itself a random odd key per lane): within a lane the inputs are
    distinct (an odd multiplier is a bijection mod 2^32), and lanes differ in both offset and step, so
    no lane's stream is a shifted copy of another's. Half the work of `_uniform_bits`; the paper test
    draws N x B words with it (issue 26: the hash was half of that engine's time).
    """
    x = counter[:, None] * (seed[1] | jnp.uint32(1))[None, :] + seed[0][None, :]
    return _mix32(x)


def chunk_seeds(key: jax.Array, n_chunks: int, chunk_size: int) -> jax.Array:
    """[n_chunks, 2, Bc] uint32 lane keys; permutation b = c * Bc + i draws its two words from
    `fold_in(key, b)`, so the null depends on the key only (not on chunk size or device count)."""
    lanes = jnp.arange(n_chunks * chunk_size, dtype=jnp.uint32)
    words = jax.vmap(lambda b: jax.random.bits(jax.random.fold_in(key, b), (2,), jnp.uint32))(lanes)
    return words.reshape(n_chunks, chunk_size, 2).transpose(0, 2, 1)


_CHUNK = 192  # permutations per chunk (lanes) on CPU (`parallel.engine_sizes`)


def default_chunk_size(n_permutations: int) -> int:
    """Lanes per chunk for this backend (`parallel.engine_sizes`): 192 on CPU, 8192 on GPU/TPU.

    On CPU 192 keeps each scan step's fused kernels below XLA:CPU's cost threshold for splitting a
    kernel across the intra-op thread pool; split kernels pay a fork-join per step that costs more
    than it gains (measured: ~2x the CPU time at 256-1024 lanes on one device). Parallelism comes
    from sharding chunks over devices instead; B = 10,000 gives 53 chunks. The chunk size never
    changes the null: lane b's random stream depends only on (key, b).
    """
    del n_permutations
    return parallel.engine_sizes().permutation_lanes


def _resolve_chunk(chunk_size: int | None, n_permutations: int) -> int:
    if chunk_size is None:
        chunk_size = default_chunk_size(n_permutations)
    chunk_size = _checks.check_positive_int(chunk_size, "chunk_size")
    return min(chunk_size, n_permutations)


_TIE_RTOL = 1e-10


def engine_args(key: Any, n_permutations: Any, chunk_size: Any, mesh: Mesh | None):
    """Checked (key, B, chunk size, 1-D mesh; default all local devices) for a sharded engine."""
    key = _checks.check_key(key)
    n_permutations = _checks.check_positive_int(n_permutations, "n_permutations")
    mesh = parallel.make_mesh() if mesh is None else mesh
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh: must be 1-D, got axes {mesh.axis_names}")
    lanes = parallel.engine_sizes(mesh).permutation_lanes  # by backend; never changes the null
    chunk_size = _resolve_chunk(lanes if chunk_size is None else chunk_size, n_permutations)
    return key, n_permutations, chunk_size, mesh
