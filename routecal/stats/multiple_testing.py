"""Multiple testing (Holm, Benjamini-Hochberg) and the rows of a test grid
(`diagnostics.permutation_grid` runs the within-bin permutation test on every cell).

Shapes: `m` p-values.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

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
