"""Counter-based random bits for the permutation engines (paper test and conditional test).

Per-lane keys come from `jax.random` (threefry) via `fold_in(key, chunk)`, so a null depends only
on the key and the chunk size, never on the device count. Shapes: `Bc` lanes, `L` counters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _mix32(x: jax.Array) -> jax.Array:
    """Bijective 32-bit integer hash "lowbias32" (C. Wellons, hash-prospector; murmur3-style)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _uniform_bits(seed: jax.Array, counter: jax.Array) -> jax.Array:
    """Counter-based random bits: [2, Bc] per-lane keys and [L] counters -> [L, Bc] uint32.

    Two keyed rounds of `_mix32` over (counter * golden ratio + k0): for a fixed lane the counters
    map to distinct, well-mixed words; lanes differ by their threefry-drawn keys.
    """
    x = counter[:, None] * jnp.uint32(0x9E3779B9) + seed[0][None, :]
    return _mix32(_mix32(x) ^ seed[1][None, :])


def chunk_seeds(key: jax.Array, n_chunks: int, chunk_size: int) -> jax.Array:
    """[n_chunks, 2, Bc] uint32 lane keys; chunk c uses `fold_in(key, c)` (device-independent)."""
    return jax.vmap(
        lambda c: jax.random.bits(jax.random.fold_in(key, c), (2, chunk_size), jnp.uint32)
    )(jnp.arange(n_chunks))
