"""The one confidence binning used by every module (calibration metrics, diagnostics, tests).

Shapes: `N` examples, `M` bins.

* ``"width"``: bin ``b`` of ``M`` holds confidence in ``(b/M, (b+1)/M]``; confidence exactly 0 goes
  to bin 0 and exactly 1 to bin ``M - 1``. The edges ``b/M`` are float64. A float64 confidence is
  compared with them exactly; a float32 confidence is compared with the largest float32 not above each
  edge, which gives the same answer as comparing its (exact) float64 value with the float64 edge. So
  a value lands in the same bin on host (numpy, float64) and on device (jax, float32 or float64).
  Public functions bin on host before any float32 cast, so e.g. 7/13 stays in bin 6 of 13.
* ``"mass"``: equal-mass bins that keep tied confidences together: an example's bin is the part
  ``numpy.array_split(range(N), M)`` assigns to the *first* sorted position of its confidence value.
  Without ties this is the usual stable-sort split; with ties a whole tie block shares one bin (bins
  may then be unequal or empty), so the bins do not depend on the row order.

`bin_index` accepts numpy (computed in numpy) or jax arrays (jittable, vmappable).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BINNINGS = ("width", "mass")


def check_binning(binning: Any) -> str:
    """Raises ValueError naming `binning` unless it is "width" or "mass"."""
    if binning not in BINNINGS:
        raise ValueError(f"binning: must be one of {BINNINGS}, got {binning!r}")
    return binning


def interior_edges(n_bins: int, dtype: Any) -> np.ndarray:
    """[M - 1] edges b/M (b = 1..M-1) as float64, rounded *down* to `dtype` when it is narrower.

    For a value v of `dtype`: v > rounded_edge  <=>  float64(v) > b/M, so bins agree across dtypes.
    """
    e64 = np.arange(1, n_bins, dtype=np.float64) / n_bins
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return e64
    e = e64.astype(dtype)
    up = e.astype(np.float64) > e64
    e[up] = np.nextafter(e[up], np.asarray(-np.inf, dtype))
    return e


def split_index(rank: Any, n: Any, n_parts: int) -> Any:
    """Part of each rank when `n` ordered items are split as `numpy.array_split(range(n), n_parts)`.

    The first `n % n_parts` parts have `n // n_parts + 1` items, the rest `n // n_parts`.
    Works elementwise with a per-item `n` (e.g. the size of each item's bin), numpy or jax.
    """
    xp = jnp if isinstance(rank, jax.Array) or isinstance(n, jax.Array) else np
    q = n // n_parts
    rem = n % n_parts
    big = rem * (q + 1)
    q_safe = xp.maximum(q, 1)
    return xp.where(rank < big, rank // (q + 1), rem + (rank - big) // q_safe)


def width_bins(confidence: Any, n_bins: int) -> Any:
    """Equal-width bin in [0, M): (b/M, (b+1)/M] -> b, 0 -> 0 (float64 edges). [N] -> [N] int32."""
    xp = jnp if isinstance(confidence, jax.Array) else np
    conf = xp.asarray(confidence)
    if not xp.issubdtype(conf.dtype, xp.floating):
        conf = conf.astype(xp.float32 if xp is jnp else np.float64)
    edges = xp.asarray(interior_edges(n_bins, conf.dtype))
    return xp.searchsorted(edges, conf, side="left").astype(xp.int32)


def mass_bins(confidence: Any, n_bins: int) -> Any:
    """Equal-mass bins keeping ties together (see the module docstring). [N] -> [N] int32."""
    xp = jnp if isinstance(confidence, jax.Array) else np
    conf = xp.asarray(confidence)
    n = conf.shape[0]
    first = xp.searchsorted(xp.sort(conf), conf, side="left")  # first sorted position of the value
    return split_index(first, n, n_bins).astype(xp.int32)


def bin_index(confidence: Any, n_bins: int, binning: str = "width") -> Any:
    """Bin of each confidence, "width" or "mass" (module docstring). [N] -> [N] int32."""
    if check_binning(binning) == "width":
        return width_bins(confidence, n_bins)
    return mass_bins(confidence, n_bins)
