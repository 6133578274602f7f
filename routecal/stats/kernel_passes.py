"""The two tiled passes of the Nadaraya-Watson engine (see `routecal.stats.kernels`).

Pass 1 finds each row's smallest squared scaled distance; pass 2 sums exp(m_i - d_ij) (largest
weight 1: log-sum-exp with the nearest point) and the weighted targets. Shapes: rt rows and ct
columns per tile, D features, T padded columns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_BIG = float(np.finfo(np.float32).max)
_SKIP_LOG = (
    40.0  # a column tile whose every weight is < exp(-40) (relative to the row max) is skipped
)
_MATMUL_MIN_DIM = 5  # from this many features on, squared distances use |a|^2 + |b|^2 - 2 a.b


def _sqdist(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared Euclidean distances [R, C] between rows of a [R, D] and b [C, D]."""
    d = a.shape[1]
    if d < _MATMUL_MIN_DIM:
        # Direct differences: exact (no cancellation) and fused with the exp by XLA.
        out = (a[:, 0][:, None] - b[:, 0][None, :]) ** 2
        for k in range(1, d):
            out = out + (a[:, k][:, None] - b[:, k][None, :]) ** 2
        return out
    aa = jnp.sum(a * a, axis=1)
    bb = jnp.sum(b * b, axis=1)
    return jnp.maximum(aa[:, None] + bb[None, :] - 2.0 * (a @ b.T), 0.0)


def _row_min(zr: jax.Array, g: jax.Array, zc_t: jax.Array, *, loo: bool) -> jax.Array:
    """Pass 1: each row's smallest squared scaled distance over all column tiles (self excluded).

    Args:
      zr: [rt, D] scaled rows of one row tile; g: global index of its first row.
      zc_t: [T/ct, ct, D] scaled column tiles.
    Returns:
      [rt] row minima.
    """
    row_tile, col_tile = zr.shape[0], zc_t.shape[1]
    diag = g // col_tile if loo else jnp.int32(-1)
    self_mask = _self_mask(row_tile, col_tile, g % col_tile)

    def step(m, xs):
        zt, t = xs
        # The distance is computed inside each branch so each branch is one fused loop.
        tile_min = lax.cond(
            t == diag,
            lambda: jnp.where(self_mask, jnp.inf, _sqdist(zr, zt)).min(axis=1),
            lambda: _sqdist(zr, zt).min(axis=1),
        )
        return jnp.minimum(m, tile_min), None

    tiles = jnp.arange(zc_t.shape[0], dtype=jnp.int32)
    m, _ = lax.scan(step, jnp.full((row_tile,), _BIG, jnp.float32), (zc_t, tiles))
    return m


def _self_mask(row_tile: int, col_tile: int, offset: jax.Array) -> jax.Array:
    """[rt, ct] True where column (offset + r) of the diagonal tile is row r itself.

    With square tiles (leave-one-out uses ct == rt) the offset is 0 and the mask is a constant.
    """
    if row_tile == col_tile:
        return jnp.asarray(np.eye(row_tile, dtype=bool))
    cols = lax.broadcasted_iota(jnp.int32, (row_tile, col_tile), 1)
    return cols == lax.broadcasted_iota(jnp.int32, (row_tile, col_tile), 0) + offset


def _row_sums(
    zr: jax.Array,
    g: jax.Array,
    m: jax.Array,
    zc_t: jax.Array,
    yc_t: jax.Array,
    tile_y: jax.Array,
    tile_mixed: jax.Array,
    row_box: tuple[jax.Array, jax.Array],
    col_box: tuple[jax.Array, jax.Array],
    *,
    loo: bool,
) -> jax.Array:
    """Pass 2: sum_j w_ij y_j / sum_j w_ij with w_ij = exp(m_i - d_ij) <= 1 (largest weight 1).

    Tiles are skipped when they cannot matter: if the bounding boxes of the row tile and a column
    tile are so far apart that every weight is < exp(-_SKIP_LOG) (~4e-18, the row's largest
    weight being 1), the tile is not computed. The skipped mass is < N * 4e-18 relative, far below
    float32 resolution, so results are unchanged; examples sorted by their first feature make the
    boxes narrow, so small bandwidths skip most tiles.

    A "pure" column tile holds one target value `tile_y[t]` (0/1 targets sorted by label), so both
    sums come from one reduction; a "mixed" tile (`tile_mixed[t]`, the label boundary or real-valued
    targets) reduces w and w * y separately.

    Args:
      zr: [rt, D] scaled rows; g: global index of the first row; m: [rt] row minima.
      zc_t: [T/ct, ct, D] scaled column tiles; yc_t: [T/ct, ct] column targets;
      tile_y: [T/ct] each pure tile's target value; tile_mixed: [T/ct] int32 0/1.
      row_box: ([D], [D]) scaled lower/upper corners of the row tile's points.
      col_box: ([T/ct, D], [T/ct, D]) scaled corners of each column tile's points.
    Returns:
      [rt] estimates.
    """
    row_tile, col_tile = zr.shape[0], zc_t.shape[1]
    diag = g // col_tile if loo else jnp.int32(-1)
    self_mask = _self_mask(row_tile, col_tile, g % col_tile)

    m_max = m.max()
    # log-sum-exp with the nearest point: its weight must be exactly exp(0) = 1. Pass 1 and pass 2
    # may round the same squared distance differently (XLA may contract `m - u * u` into an FMA),
    # by up to a few ulp of m; at m ~ 4e9 an ulp is 256, enough to underflow every weight (0/0).
    # Points within that slack (a few ulp of m) of the minimum get weight exactly 1; every other
    # weight is unchanged, so accuracy is unchanged (those distances carry that rounding anyway).
    slack = (2 * zr.shape[1] + 4) * 2.0**-23 * m

    def step(carry, xs):
        num, den = carry
        zt, yt, ty, mixed, lo, hi, t = xs
        gap = jnp.maximum(jnp.maximum(lo - row_box[1], row_box[0] - hi), 0.0)
        box = jnp.sum(gap * gap)
        skip = (m_max - box < -_SKIP_LOG - 1e-5 * (box + m_max)) & (t != diag)  # + rounding slack
        def w():
            e = m[:, None] - _sqdist(zr, zt)
            return jnp.exp(jnp.where(e > -slack[:, None], 0.0, e))

        w_masked = lambda: jnp.where(self_mask, 0.0, w())

        def pure(wf):
            s = wf().sum(axis=1)
            return s, ty * s

        def mix(wf):
            return wf().sum(axis=1), (wf() * yt[None, :]).sum(axis=1)

        branches = (
            lambda: pure(w),
            lambda: mix(w),
            lambda: pure(w_masked),
            lambda: mix(w_masked),
            lambda: (jnp.zeros_like(m), jnp.zeros_like(m)),
        )
        index = jnp.where(skip, 4, 2 * (t == diag).astype(jnp.int32) + mixed)
        sw, swy = lax.switch(index, branches)
        return (num + swy, den + sw), None

    zeros = jnp.zeros((row_tile,), jnp.float32)
    tiles = jnp.arange(zc_t.shape[0], dtype=jnp.int32)
    xs = (zc_t, yc_t, tile_y, tile_mixed, col_box[0], col_box[1], tiles)
    (num, den), _ = lax.scan(step, (zeros, zeros), xs)
    return num / den
