"""Multiple testing (Holm, Benjamini-Hochberg) and the rows of a test grid
(`diagnostics.permutation_grid` runs the within-bin permutation test on every cell;
`adjust_rows` adjusts any table of test rows per family and summarises each group across seeds).

Shapes: `m` p-values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from routecal import _checks
from routecal.stats.seeds import compare_bands, seed_band


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


def adjust_rows(rows: Sequence[dict[str, Any]], alpha: float, family: Sequence[str],
           group: Sequence[str], banded: Callable[[list[dict[str, Any]]], bool]
           ) -> list[dict[str, Any]]:
    """Adds p_holm and p_bh to every row, adjusting within each family (the rows that share the
    values of the `family` keys: a test in the study's grid, a test x domain for tokens); returns one
    `rejection_row` per group of rows sharing the `group` keys (across seeds), in first-seen
    order, with seed bands when `banded(group rows)`."""
    families: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault(tuple(r[k] for k in family), []).append(r)
    for fam in families.values():
        ps = [r["p_value"] for r in fam]
        for r, h, b in zip(fam, adjust_pvalues(ps, "holm"),
                           adjust_pvalues(ps, "bh"), strict=True):
            r["p_holm"], r["p_bh"] = float(h), float(b)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in group), []).append(r)
    return [rejection_row(dict(zip(group, key, strict=True)), ts, alpha, banded=banded(ts))
            for key, ts in groups.items()]


def rejection_row(head: Mapping[str, Any], ts: Sequence[Mapping[str, Any]], alpha: float, *,
                  banded: bool) -> dict[str, Any]:
    """One cell group's summary across seeds (the digits grid's and the token tests'): `head`,
    the rejection counts at `alpha` (raw, Holm, BH), mean statistic, min p and, when `banded`,
    the seed bands of the statistic and of its null's mean with the seed-band rule's verdict
    (`stats.seeds.compare_bands`, higher = larger gap)."""
    row = {
        **head, "n_seeds": len(ts),
        "n_reject_raw": sum(t["p_value"] < alpha for t in ts),
        "n_reject_holm": sum(t["p_holm"] < alpha for t in ts),
        "n_reject_bh": sum(t["p_bh"] < alpha for t in ts),
        "mean_statistic": float(np.mean([t["statistic"] for t in ts])),
        "min_p": float(min(t["p_value"] for t in ts)),
    }
    if banded:
        row["statistic_band"] = seed_band([t["statistic"] for t in ts])
        row["null_mean_band"] = seed_band([t["null_mean"] for t in ts])
        row["vs_null"] = compare_bands(row["statistic_band"], row["null_mean_band"],
                                       higher_is_better=True)
    return row
