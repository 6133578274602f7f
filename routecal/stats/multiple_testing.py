"""Multiple testing (Holm, Benjamini-Hochberg) and the permutation-test grid runner.

Shapes: `m` p-values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from routecal import _checks


def adjust_pvalues(p: Any, method: str = "holm") -> np.ndarray:
    """Family-wise (Holm 1979) or false-discovery-rate (Benjamini & Hochberg 1995) adjusted p-values.

    holm: p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j)); bh: p_(i) -> min_{j >= i} min(1, m p_(j) / j),
    with p_(1) <= ... <= p_(m) the sorted p-values; returned in the input order.

    Args:
      p: [m] p-values in [0, 1]. method: "holm" or "bh".
    """
    pv = _checks.check_unit_interval(_checks.as_array(p, "p", ndim=1), "p")
    if method not in ("holm", "bh"):
        raise ValueError(f"method: must be 'holm' or 'bh', got {method!r}")
    m = len(pv)
    order = np.argsort(pv, kind="stable")
    ps = pv[order]
    i = np.arange(1, m + 1)
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - i + 1) * ps))
    else:
        adj = np.minimum.accumulate(np.minimum(1.0, m * ps / i)[::-1])[::-1]
    out = np.empty(m)
    out[order] = adj
    return out


class GridRow(NamedTuple):
    """One cell of a permutation-test grid."""

    name: Any
    statistic: float
    p_value: float
    p_holm: float
    p_bh: float


def permutation_grid(
    cells: Mapping[Any, Sequence[Any]],
    *,
    key: jax.Array,
    n_permutations: int = 10_000,
    n_bins: int = 15,
    n_groups: int = 3,
    mesh: Mesh | None = None,
    binning: str = "width",
) -> list[GridRow]:
    """Tests many (routing feature x seed x model) cells in one call, with Holm and BH adjustment.

    Args:
      cells: mapping name -> (confidence, correct, routing), each [N_cell]. Cell i (in mapping order)
        uses key `fold_in(key, i)`.
    Returns:
      a list of GridRow(name, statistic, p_value, p_holm, p_bh), one per cell, in mapping order.
    """
    if not isinstance(cells, Mapping) or not cells:
        raise ValueError("cells: must be a non-empty mapping name -> (confidence, correct, routing)")
    from routecal.stats.diagnostics import within_bin_permutation_test  # it re-exports this module

    names, stats, ps = [], [], []
    for i, (name, arrays) in enumerate(cells.items()):
        if len(arrays) != 3:
            raise ValueError(f"cells[{name!r}]: expected (confidence, correct, routing)")
        res = within_bin_permutation_test(
            *arrays, key=jax.random.fold_in(key, i), n_permutations=n_permutations,
            n_bins=n_bins, n_groups=n_groups, mesh=mesh, binning=binning,
        )
        names.append(name)
        stats.append(res.statistic)
        ps.append(res.p_value)
    holm, bh = adjust_pvalues(ps, "holm"), adjust_pvalues(ps, "bh")
    return [
        GridRow(n, s, p, float(h), float(b))
        for n, s, p, h, b in zip(names, stats, ps, holm, bh, strict=True)
    ]

