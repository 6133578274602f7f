"""Nadaraya-Watson kernel regression, Scott bandwidths and leave-one-out bandwidth selection.

Shapes: N training / calibration examples, M query points, D features, K bandwidths in a grid.

The Gaussian product kernel with per-feature bandwidth h (Nadaraya 1964; Watson 1964)::

    w_ij = exp(-sum_d (x_id - x_jd)^2 / (2 h_d^2)),   m(x_i) = sum_j w_ij y_j / sum_j w_ij.

Engine (one code path for `nadaraya_watson`, `loo_predictions` and `loo_nll`):
  * float32 throughout, coordinates pre-scaled by 1/(sqrt(2) h) so a weight is one fused `exp`.
  * numerically stable: every row subtracts its smallest squared scaled distance (self excluded in
    leave-one-out) before `exp`, so the largest weight of a row is exactly 1 and a far outlier never
    underflows its whole row (its estimate becomes its nearest neighbour's label, not 0/0).
  * tiled: rows in tiles of `row_tile`, columns in tiles of `col_tile` (a `lax.scan`), two passes
    (row minimum, then exp-sums); XLA fuses each pass into one loop, so memory is O(N + tile) and the
    N x N kernel matrix is never materialised, for any bandwidth; bandwidths are iterated with
    `lax.map`.
  * binary targets: columns are sorted by label and each label block padded to whole tiles, so a
    column tile has one label and both sums (sum_j w_ij and sum_j w_ij y_j) come from one single-output
    reduction per tile (multi-output reductions are ~4x slower on XLA:CPU).
  * leave-one-out: square tiles, rows and columns in the same order, so a row tile's own points
    are the diagonal of exactly one column tile; only that tile is computed with the self-mask
    (`lax.switch`), the rest unmasked.
  * proportional bandwidth grids (Scott multiples) share each row's nearest neighbour: the
    row-minimum pass runs once and is rescaled per bandwidth.
  * pruning without approximation in float32: examples are sorted by their first feature; a
    column tile whose bounding box is so far from the row tile's that every weight is below
    exp(-40) relative to the row's largest weight (1) is skipped (total skipped mass < N * 4e-18).
  * shardable: query rows are split over a 1-D `jax.sharding.Mesh` (see `routecal.parallel`) with
    `jax.shard_map`; the training columns are replicated.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from routecal import _checks, parallel
from routecal.parallel import pad_to_multiple
from routecal.stats.bandwidth import (
    _SCOTT_X,
    DEFAULT_MULTIPLES,
    RULES,
    BandwidthSelection,
    scott_bandwidth,
    scott_multiples,
)
from routecal.stats.binary import binary_nll_core
from routecal.stats.kernel_layout import (
    _bandwidth_grid,
    _centre,
    _features,
    _layout_columns,
    _n_devices,
    _tile_boxes,
    _tile_sizes,
)
from routecal.stats.kernel_passes import _row_min, _row_sums

__all__ = [
    "DEFAULT_MULTIPLES",
    "RULES",
    "BandwidthSelection",
    "loo_nll",
    "loo_predictions",
    "nadaraya_watson",
    "scott_bandwidth",
    "scott_multiples",
    "select_bandwidth",
]



# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _build(row_tile: int, col_tile: int, loo: bool, shared_min: bool, mesh: Mesh | None):
    """A jitted fn(xq [R,D], xc [T,D], yc [T], tile_y, tile_mixed [T/ct], row_lo, row_hi [R/rt, D],
    col_lo, col_hi [T/ct, D], scales [K,D], ratio [K]) -> [K, R] estimates.

    row_lo/row_hi are indexed by global row tile; on a mesh each device holds R/n_dev rows.

    With `shared_min` the bandwidths are proportional (scales[k] = scales[0] / sqrt(ratio[k])), so
    each row's nearest neighbour is the same for all of them: pass 1 runs once, at scales[0], and
    row minima are rescaled, m_k = ratio[k] * m_0.
    """

    def per_device(xq, xc, yc, tile_y, tile_mixed, boxes, scales, ratio, q_start):
        row_lo, row_hi, col_lo, col_hi = boxes
        r_total, d = xq.shape
        n_row_tiles = r_total // row_tile
        starts = q_start + jnp.arange(n_row_tiles, dtype=jnp.int32) * row_tile
        yc_t = yc.reshape(-1, col_tile)

        def tiles(x, s, size):
            return (x * s[None, :]).reshape(-1, size, d)

        def minima(s):
            zc_t = tiles(xc, s, col_tile)
            return lax.map(
                lambda a: _row_min(a[0], a[1], zc_t, loo=loo), (tiles(xq, s, row_tile), starts)
            )

        m0 = minima(scales[0]) if shared_min else None

        def one_bandwidth(args):
            s, r = args
            m = m0 * r if shared_min else minima(s)
            zc_t = tiles(xc, s, col_tile)
            col_box = (col_lo * s[None, :], col_hi * s[None, :])

            def one_row_tile(a):
                zr, g, m_r = a
                i = g // row_tile
                row_box = (row_lo[i] * s, row_hi[i] * s)
                return _row_sums(
                    zr, g, m_r, zc_t, yc_t, tile_y, tile_mixed, row_box, col_box, loo=loo
                )

            out = lax.map(one_row_tile, (tiles(xq, s, row_tile), starts, m))
            return out.reshape(r_total)

        return lax.map(one_bandwidth, (scales, ratio))

    if mesh is None:

        def fn(xq, xc, yc, tile_y, tile_mixed, boxes, scales, ratio):
            return per_device(xq, xc, yc, tile_y, tile_mixed, boxes, scales, ratio, jnp.int32(0))

        return jax.jit(fn)

    axis = mesh.axis_names[0]

    def sharded(xq, xc, yc, tile_y, tile_mixed, boxes, scales, ratio):
        q_start = lax.axis_index(axis).astype(jnp.int32) * xq.shape[0]
        return per_device(xq, xc, yc, tile_y, tile_mixed, boxes, scales, ratio, q_start)

    fn = jax.shard_map(
        sharded,
        mesh=mesh,
        in_specs=(P(axis, None), P(), P(), P(), P(), P(), P(), P()),
        out_specs=P(None, axis),
        check_vma=False,
    )
    # Replicated output: every process of a multi-host mesh reads the whole [K, R] result.
    return jax.jit(fn, out_shardings=parallel.replicated(mesh))


def _scales(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Coordinate scales 1/(sqrt(2) h) [K, D], min ratios [K] and whether the grid is proportional."""
    scales = 1.0 / (math.sqrt(2.0) * h)
    a = h / h[:1]  # [K, D]: proportional grid iff each row of a is constant
    shared = bool(np.allclose(a, a[:, :1], rtol=1e-10))
    ratio = (1.0 / a[:, 0] ** 2) if shared else np.ones(len(h))
    return scales.astype(np.float32), ratio.astype(np.float32), shared


def _run_chunked(fn, args, scales, ratio, mesh) -> np.ndarray:
    """Runs `fn` over the bandwidth grid: all at once on one device; on a mesh in chunks of
    `parallel.engine_sizes(mesh).bandwidth_chunk` bandwidths (4 on CPU), because the sharded
    XLA:CPU program's memory was seen to grow with the bandwidths of one call (2.4 GB for 32 at
    N = 100k; freed after the call). Chunks are padded to full size (one compilation)."""
    chunk = parallel.engine_sizes(mesh).bandwidth_chunk
    if mesh is None or len(scales) <= chunk:
        return np.asarray(fn(*args, scales, ratio), np.float64)
    k = len(scales)
    k_pad = pad_to_multiple(k, chunk)
    scales = np.concatenate([scales, np.repeat(scales[:1], k_pad - k, axis=0)])
    ratio = np.concatenate([ratio, np.repeat(ratio[:1], k_pad - k)])
    # A proportional grid's row minima are computed at the first bandwidth of each call: keep
    # every chunk's ratios relative to its own first bandwidth.
    outs = []
    for s in range(0, k_pad, chunk):
        sc, r = scales[s : s + chunk], ratio[s : s + chunk]
        outs.append(np.asarray(fn(*args, sc, r / r[0]), np.float64))
    return np.concatenate(outs)[:k]


def nadaraya_watson(
    x_train,
    y_train,
    x_query,
    bandwidth,
    *,
    mesh: Mesh | None = None,
    row_tile: int | None = None,
    col_tile: int | None = None,
) -> np.ndarray:
    """Nadaraya-Watson estimate with a Gaussian product kernel.

    m(q) = sum_j K_h(q - x_j) y_j / sum_j K_h(q - x_j), K_h(u) = prod_d exp(-u_d^2 / (2 h_d^2)).

    Args:
      x_train: [N, D] training features (1-D = one feature).
      y_train: [N] training targets (any real values; 0/1 targets take a faster path).
      x_query: [M, D] query features.
      bandwidth: [D] positive bandwidths.
      mesh: optional 1-D mesh; query rows are sharded over it.
      row_tile, col_tile: tile sizes (memory ~ row_tile * col_tile floats per device; default
        by backend, `parallel.engine_sizes`: 512 x 8192 on CPU).

    Returns:
      [M] float64 estimates (float32 precision). A query far from every training point gets the
      target of its nearest training point (stable), never NaN.
    """
    xt = _features(x_train, "x_train")
    yt = _checks.as_array(y_train, "y_train", ndim=1)
    _checks.check_same_length(x_train=xt, y_train=yt)
    xq = _features(x_query, "x_query")
    if xq.shape[1] != xt.shape[1]:
        raise ValueError(f"x_query: has {xq.shape[1]} features but x_train has {xt.shape[1]}")
    h = _bandwidth_grid(bandwidth, xt.shape[1], "bandwidth")
    if h.shape[0] != 1:
        raise ValueError(f"bandwidth: expected one bandwidth vector [D], got shape {h.shape}")
    return _nw_grid(xt, yt, xq, h, mesh=mesh, row_tile=row_tile, col_tile=col_tile)[0]


def _nw_grid(xt, yt, xq, h, *, mesh, row_tile, col_tile) -> np.ndarray:
    """[K, M] NW estimates for every bandwidth row of h [K, D] (inputs already validated)."""
    xt, xq = _centre(xt, xq)
    n_dev = _n_devices(mesh)
    row_tile, col_tile = parallel.nw_tiles(row_tile, col_tile, mesh)
    m = xq.shape[0]
    rt, ct = _tile_sizes(-(-m // n_dev), xt.shape[0], row_tile, col_tile)
    xc, yc, tile_y, tile_mixed, _ = _layout_columns(xt, yt, ct, ct)
    m_pad = pad_to_multiple(m, n_dev * rt)
    order = np.argsort(xq[:, 0], kind="stable")  # sorted queries: narrow row-tile boxes
    xq_pad = np.zeros((m_pad, xq.shape[1]), np.float32)
    xq_pad[:m] = xq[order]
    boxes = (*_tile_boxes(xq_pad, m, rt), *_tile_boxes(xc, xt.shape[0], ct))
    scales, ratio, shared = _scales(h)
    fn = _build(rt, ct, False, shared, mesh)
    out = _run_chunked(fn, (xq_pad, xc, yc, tile_y, tile_mixed, boxes), scales, ratio, mesh)
    result = np.empty((len(h), m))
    result[:, order] = out[:, :m]
    return result


def loo_predictions(
    x,
    y,
    bandwidths,
    *,
    mesh: Mesh | None = None,
    row_tile: int | None = None,
    col_tile: int | None = None,
) -> np.ndarray:
    """Leave-one-out Nadaraya-Watson estimates for a grid of bandwidths (unclipped).

    p_k(i) = sum_{j != i} w^k_ij y_j / sum_{j != i} w^k_ij.

    Args:
      x: [N, D] features, N >= 2.
      y: [N] binary targets (0/1 or bool).
      bandwidths: [K, D] positive bandwidths (a [D] vector is one row).
      mesh: optional 1-D mesh; rows are sharded over it.
      row_tile, col_tile: tile sizes.

    Returns:
      [K, N] float64 estimates in [0, 1].
    """
    xa = _features(x, "x", min_rows=2)
    ya = _checks.check_binary(y, "y")
    _checks.check_same_length(x=xa, y=ya)
    h = _bandwidth_grid(bandwidths, xa.shape[1])
    xa, _ = _centre(xa, xa[:1])
    n = xa.shape[0]
    n_dev = _n_devices(mesh)
    row_tile, col_tile = parallel.nw_tiles(row_tile, col_tile, mesh)
    # Square tiles: a row tile's own columns form one [rt, rt] tile with self on its diagonal.
    rt, _ = _tile_sizes(-(-n // n_dev), n, row_tile, col_tile)
    ct = rt
    xc, yc, tile_y, tile_mixed, position = _layout_columns(xa, ya, ct, math.lcm(ct, n_dev * rt))
    scales, ratio, shared = _scales(h)
    fn = _build(rt, ct, True, shared, mesh)
    box = _tile_boxes(xc, n, ct)
    out = _run_chunked(fn, (xc, xc, yc, tile_y, tile_mixed, (*box, *box)), scales, ratio, mesh)
    return out[:, position]


def loo_nll(
    x,
    y,
    bandwidths,
    *,
    mesh: Mesh | None = None,
    row_tile: int | None = None,
    col_tile: int | None = None,
) -> np.ndarray:
    """Leave-one-out cross-validated binary NLL of Nadaraya-Watson for each bandwidth.

    CV-NLL(h) = -(1/N) sum_i [y_i log p_h(-i) + (1 - y_i) log(1 - p_h(-i))], with the leave-one-out
    estimate p_h(-i) clipped to [PROB_CLIP, 1 - PROB_CLIP] (`stats.binary`; likelihood cross-validation, Hall 1987).

    Args:
      x: [N, D] features, N >= 2.
      y: [N] binary targets.
      bandwidths: [K, D] bandwidth grid.
      mesh: optional 1-D mesh to shard rows over.

    Returns:
      [K] float64 CV-NLL per bandwidth.
    """
    p = loo_predictions(x, y, bandwidths, mesh=mesh, row_tile=row_tile, col_tile=col_tile)
    return binary_nll_core(p, _checks.check_binary(y, "y")[None, :])


def select_bandwidth(
    rule: str,
    x,
    y,
    *,
    multiples=DEFAULT_MULTIPLES,
    test: tuple | None = None,
    n_bins: int = 15,
    mesh: Mesh | None = None,
) -> BandwidthSelection:
    """Chooses a Nadaraya-Watson bandwidth for features x [N, D] and binary targets y [N].

    Rules:
      "scott": Scott's rule (multiple 1).
      "scott_x<m>": m times Scott's rule, e.g. "scott_x2", "scott_x0.5".
      "cv_nll": argmin over `multiples` x Scott of the leave-one-out NLL on (x, y).
      "oracle_ece": argmin over the grid of the ECE on the *test* set, `test=(x_test, y_test)`:
        an optimistic bound (it peeks at the test labels), flagged `optimistic=True`.

    Returns:
      a `BandwidthSelection`.
    """
    if not isinstance(rule, str):
        raise ValueError(f"rule: expected a string, one of {RULES}; got {rule!r}")
    scott = scott_bandwidth(x)
    if rule == "scott" or _SCOTT_X.match(rule):
        mult = 1.0 if rule == "scott" else float(_SCOTT_X.match(rule).group(1))
        if mult <= 0:
            raise ValueError(f"rule: Scott multiple must be > 0, got {rule!r}")
        return BandwidthSelection(rule, mult * scott, mult, False, np.array([mult]))
    grid_m = _checks.as_array(np.atleast_1d(multiples), "multiples", ndim=1)
    if np.any(grid_m <= 0):
        raise ValueError(f"multiples: must all be > 0; got min {grid_m.min()}")
    grid = grid_m[:, None] * scott[None, :]
    if rule == "cv_nll":
        scores = loo_nll(x, y, grid, mesh=mesh)
        optimistic = False
    elif rule == "oracle_ece":
        if test is None:
            raise ValueError("test: rule 'oracle_ece' needs test=(x_test, y_test)")
        from routecal.stats.calibration import ece

        x_test = _features(test[0], "test[0] (x_test)")
        y_test = _checks.check_binary(test[1], "test[1] (y_test)")
        _checks.check_same_length(x_test=x_test, y_test=y_test)
        xa = _features(x, "x")
        ya = _checks.check_binary(y, "y")
        _checks.check_same_length(x=xa, y=ya)
        if x_test.shape[1] != xa.shape[1]:
            raise ValueError(f"test[0]: has {x_test.shape[1]} features, x has {xa.shape[1]}")
        preds = _nw_grid(xa, ya, x_test, grid, mesh=mesh, row_tile=None, col_tile=None)
        preds = np.clip(preds, 0.0, 1.0)
        scores = np.array([ece(p, y_test, n_bins=n_bins) for p in preds])
        optimistic = True
    else:
        raise ValueError(f"rule: unknown bandwidth rule {rule!r}; expected one of {RULES}")
    finite = np.isfinite(scores)
    if not finite.any():
        raise ValueError(f"rule: every {rule} score on the bandwidth grid is NaN/inf")
    k = int(np.argmin(np.where(finite, scores, np.inf)))  # never an argmin over NaN
    return BandwidthSelection(rule, grid[k], float(grid_m[k]), optimistic, grid_m, scores)
