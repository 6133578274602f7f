"""Ranks, tie blocks and dense ids through one-operand integer sorts (fast on XLA:CPU).

Shapes: `N` values.

XLA:CPU sorts one integer operand with a plain comparison about 6x faster than a float64 array
(whose comparator is the NaN-aware total order) or several operands sorted together (measured at
N = 1M on the 2-core machine of issue 26: 0.06 s against 0.35-0.45 s; the sort is single-threaded).
So floats are mapped to order-preserving int64 keys (the IEEE-754 bit trick: flip the magnitude bits
of negative numbers; -0.0 is first made +0.0 so the two zeros stay tied), the keys are sorted alone,
and positions come from `searchsorted` on the sorted keys. Inputs are finite (callers check).

`host_tie_levels` computes the same integers in numpy for inputs already on the host (the CPU
backend): numpy's vectorised (AVX-512) quicksort argsorts 1M float64 in ~0.08 s against XLA:CPU's
~0.13 s, releases the GIL so two vectors are ranked on two threads at once, and tie blocks do not
depend on the order a sort leaves equal values in, so an unstable sort gives the same answer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def order_key(x: jax.Array) -> jax.Array:
    """[N] float -> [N] int64 keys with key(a) < key(b) iff a < b (and equal iff a == b)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.int64)
    x = jnp.where(x == 0, jnp.zeros_like(x), x).astype(jnp.float64)  # -0.0 -> +0.0
    b = lax.bitcast_convert_type(x, jnp.int64)
    return b ^ ((b >> 63) & jnp.int64(0x7FFFFFFFFFFFFFFF))


def _argsort_keys(k: jax.Array) -> jax.Array | None:
    """Stable argsort of [N] int64 keys by two one-operand sorts, or None when N > 2^21.

    With b = bits of N - 1: sort (key with its low b bits replaced by the row) -> runs of equal
    high bits in key order; then sort (run id, the key's low b bits, row), 3b <= 63 bits, which
    orders by the full key, ties by row. Two 0.05 s sorts at N = 1M instead of a sort and two
    binary searches (`searchsorted`: 0.15 s each).
    """
    n = k.shape[0]
    b = max(1, (n - 1).bit_length())
    if 3 * b > 63:
        return None
    low = jnp.int64((1 << b) - 1)
    rows = jnp.arange(n, dtype=jnp.int64)
    p1 = jnp.sort(((k >> b) << b) | rows) & low  # rows by (high bits, row)
    high = (k >> b)[p1]
    run = jnp.cumsum(jnp.concatenate([jnp.zeros((1,), jnp.int64),
                                      (high[1:] != high[:-1]).astype(jnp.int64)]))
    return (jnp.sort((run << (2 * b)) | ((k[p1] & low) << b) | p1) & low).astype(jnp.int32)


def tie_blocks(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """First and last sorted position of each value's tie block, and the sorted keys.

    Args:
      x: [N] finite floats or integers.
    Returns:
      (first [N] int32, last [N] int32, sorted keys [N] int64): first = #{x_j < x_i},
      last = #{x_j <= x_i} - 1.
    """
    k = order_key(x)
    order = _argsort_keys(k)
    if order is None:  # N > 2^21: binary searches in the sorted keys
        sk = jnp.sort(k)
        first = jnp.searchsorted(sk, k, side="left").astype(jnp.int32)
        last = jnp.searchsorted(sk, k, side="right").astype(jnp.int32) - 1
        return first, last, sk
    n = k.shape[0]
    sk = k[order]
    pos = jnp.arange(n, dtype=jnp.int32)
    new = jnp.concatenate([jnp.ones((1,), bool), sk[1:] != sk[:-1]])
    end = jnp.concatenate([sk[1:] != sk[:-1], jnp.ones((1,), bool)])
    first_s = lax.cummax(jnp.where(new, pos, 0))
    last_s = lax.cummin(jnp.where(end, pos, n - 1), reverse=True)
    first = jnp.zeros((n,), jnp.int32).at[order].set(first_s, unique_indices=True)
    last = jnp.zeros((n,), jnp.int32).at[order].set(last_s, unique_indices=True)
    return first, last, sk


def tie_levels(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """`tie_blocks` plus the dense rank of each value among the distinct values.

    Args:
      x: [N] finite floats or integers.
    Returns:
      (first [N], last [N], level [N] int32 in [0, D), D [] int32): level orders as the values.
    """
    first, last, sk = tie_blocks(x)
    new = jnp.concatenate([jnp.ones((1,), bool), sk[1:] != sk[:-1]])
    level_of_pos = jnp.cumsum(new.astype(jnp.int32)) - 1
    return first, last, level_of_pos[first], level_of_pos[-1] + 1


def host_tie_levels(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """`tie_levels` in numpy: (first [N], last [N], level [N] int32, D) of [N] finite values.

    -0.0 and +0.0 are tied (numpy compares them equal), as `order_key` makes them.
    """
    x = np.asarray(x)
    n = x.shape[0]
    order = np.argsort(x)  # any order within ties: the blocks are the same
    sx = x[order]
    new = np.empty(n, bool)
    new[:1] = True
    np.not_equal(sx[1:], sx[:-1], out=new[1:])
    if new.all():  # no ties: first = last = level = the rank (one scatter instead of three)
        rank = np.empty(n, np.int32)
        rank[order] = np.arange(n, dtype=np.int32)
        return rank, rank, rank, n
    level_s = np.cumsum(new, dtype=np.int32) - 1
    starts = np.flatnonzero(new).astype(np.int32)
    ends = np.append(starts[1:], np.int32(n)) - 1
    first, last, level = (np.empty(n, np.int32) for _ in range(3))
    first[order], last[order], level[order] = starts[level_s], ends[level_s], level_s
    return first, last, level, len(starts)


def stable_order(major: jax.Array, minor: jax.Array, n_major: int) -> jax.Array:
    """Row order sorting by (major, minor), ties by row: one packed int64 sort when it fits.

    Args:
      major: [N] ints in [0, n_major). minor: [N] finite floats or integers.
    Returns:
      [N] int32 permutation (as `lax.sort((major, minor, iota), num_keys=2, is_stable=True)`).
    """
    n = major.shape[0]
    iota = jnp.arange(n, dtype=jnp.int32)
    if n_major * n * n >= 2**62:  # cannot pack (n > ~2^29): the several-operand sort
        return lax.sort((major, minor, iota), num_keys=2, is_stable=True)[2]
    rank = tie_blocks(minor)[0].astype(jnp.int64)  # ties share their first position
    packed = (major.astype(jnp.int64) * n + rank) * n + iota.astype(jnp.int64)
    return (jnp.sort(packed) % n).astype(jnp.int32)
