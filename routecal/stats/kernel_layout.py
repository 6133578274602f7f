"""Host-side validation and tile layout for the Nadaraya-Watson engine (`routecal.stats.kernels`).

Shapes: N training examples, M queries, D features, T padded columns, ct / rt column / row tiles.
"""

from __future__ import annotations

import numpy as np
from jax.sharding import Mesh

from routecal import _checks
from routecal.parallel import pad_to_multiple

_PAD_COORD = 1e18  # padding points sit this far away: their kernel weight is exactly 0 in float32.


def _features(x, name: str, *, min_rows: int = 1) -> np.ndarray:
    """`x` as a finite float64 [N, D] array (a 1-D input is one feature)."""
    arr = _checks.as_array(x, name)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a [N, D] array, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} examples, got {arr.shape[0]}")
    return arr


def _bandwidth_grid(bandwidths, d: int, name: str = "bandwidths") -> np.ndarray:
    """Bandwidths as a [K, D] float64 array of finite positive values."""
    h = _checks.as_array(bandwidths, name)
    if h.ndim == 0:
        h = h.reshape(1, 1)
    if h.ndim == 1:
        h = h[None, :]
    if h.ndim != 2 or h.shape[1] != d:
        raise ValueError(
            f"{name}: expected shape [K, {d}] (one bandwidth per feature), got {h.shape}"
        )
    if np.any(h <= 0):
        raise ValueError(f"{name}: every bandwidth must be > 0; got min {h.min()}")
    return h


def _n_devices(mesh: Mesh | None) -> int:
    if mesh is None:
        return 1
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh: expected a 1-D mesh, got axes {mesh.axis_names}")
    return int(mesh.devices.size)


def _tile_sizes(n_rows_per_device: int, n_cols: int, row_tile: int, col_tile: int):
    """Row tile (multiple of 8) and column tile (multiple of the row tile).

    The column tile is kept to <= ~1/4 of the columns so that, in leave-one-out, only a small
    fraction of tiles (the one holding each row's own column) needs the slower self-mask.
    """
    rt = max(8, min(row_tile, pad_to_multiple(n_rows_per_device, 8)))
    ct = min(col_tile, pad_to_multiple(-(-n_cols // 4), rt))
    return rt, pad_to_multiple(max(ct, rt), rt)


def _layout_columns(x: np.ndarray, y: np.ndarray, ct: int, multiple: int):
    """Lays out training columns in tiles of `ct`: 0/1 targets sorted by label (1s first).

    Only the tile straddling the label boundary is "mixed"; real-valued targets make every tile
    mixed. Padding points (far away, weight 0, target 0) fill the end up to a multiple of
    `multiple`.

    Returns:
      xc [T, D] float32, yc [T] float32, tile_y [T/ct], tile_mixed [T/ct] int32, position [N]
      (the padded index of each example). Examples are sorted by feature 0 (inside each label
      block) so tiles have narrow bounding boxes.
    """
    n, d = x.shape
    total = pad_to_multiple(n, multiple)
    n_tiles = total // ct
    position = np.empty(n, np.int64)
    if _is_binary(y):
        order = np.lexsort((x[:, 0], -y))  # 1s first, each label block sorted by feature 0
        position[order] = np.arange(n)
        n_pos = int(y.sum())
        starts = np.arange(n_tiles) * ct
        tile_mixed = ((starts < n_pos) & (starts + ct > n_pos)).astype(np.int32)
        tile_y = (starts + ct <= n_pos).astype(np.float32)
    else:
        position[np.argsort(x[:, 0], kind="stable")] = np.arange(n)
        tile_mixed = np.ones(n_tiles, np.int32)
        tile_y = np.zeros(n_tiles, np.float32)
    xc = np.full((total, d), _PAD_COORD, np.float32)
    yc = np.zeros(total, np.float32)
    xc[position] = x
    yc[position] = y
    return xc, yc, tile_y, tile_mixed, position


def _tile_boxes(x_pad: np.ndarray, n_real: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile bounding boxes ([T/size, D] lower, upper) of the first `n_real` rows of x_pad."""
    real = np.arange(len(x_pad)) < n_real
    xt = x_pad.reshape(-1, size, x_pad.shape[1]).astype(np.float64)
    mask = real.reshape(-1, size)[:, :, None]
    lo = np.where(mask, xt, np.inf).min(axis=1)
    hi = np.where(mask, xt, -np.inf).max(axis=1)
    empty = ~mask.any(axis=1)[:, 0]
    lo[empty], hi[empty] = _PAD_COORD, _PAD_COORD
    return lo.astype(np.float32), hi.astype(np.float32)


def _centre(xt: np.ndarray, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtracts the training points' per-feature midrange from both, in float64, before the engine
    casts to float32 (so shifting all coordinates by 1e6 does not change a prediction)."""
    centre = 0.5 * (xt.min(axis=0) + xt.max(axis=0))
    return xt - centre[None, :], xq - centre[None, :]


def _is_binary(y: np.ndarray) -> bool:
    return bool(np.all((y == 0) | (y == 1)))
