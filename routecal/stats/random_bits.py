"""Counter-based random bits for the permutation engines (paper test and conditional test).

Permutation b's two key words come from `jax.random` (threefry) via `fold_in(key, b)`, so a null
depends only on the key: never on the chunk size, the device or process count or the backend.
Shapes: `Bc` lanes, `L` counters.
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
    """Counter-based random bits: [2, Bc] per-lane keys and [L] uint32 counters -> [L, Bc] uint32.

    Two keyed rounds of `_mix32` over (counter * golden ratio + k0): for a fixed lane the counters
    map to distinct, well-mixed words; lanes differ by their threefry-drawn keys.
    """
    x = counter[:, None] * jnp.uint32(0x9E3779B9) + seed[0][None, :]
    return _mix32(_mix32(x) ^ seed[1][None, :])


def chunk_seeds(key: jax.Array, n_chunks: int, chunk_size: int) -> jax.Array:
    """[n_chunks, 2, Bc] uint32 lane keys; permutation b = c * Bc + i draws its two words from
    `fold_in(key, b)`, so the null depends on the key only (not on chunk size or device count)."""
    lanes = jnp.arange(n_chunks * chunk_size, dtype=jnp.uint32)
    words = jax.vmap(lambda b: jax.random.bits(jax.random.fold_in(key, b), (2,), jnp.uint32))(lanes)
    return words.reshape(n_chunks, chunk_size, 2).transpose(0, 2, 1)
