"""Seed bands and the one rule every verdict uses to compare two methods across seeds.

A seed band summarises one metric over S training seeds (S independent runs of the same config):
mean, sample std (ddof = 1), min, max and S. The rule (`compare_bands`):

    two methods differ on a metric only when their [min, max] seed bands do not overlap;
    then the one with the better mean is "better" (and the other "worse"); overlapping bands are
    "within seed band"; with fewer than 2 seeds on either side there is no band to compare.

It is deliberately conservative (with S seeds per side, two non-overlapping bands are the event
that every run of one method beats every run of the other; under exchangeable runs this has
probability 2 / binom(2S, S), 0.1 for S = 3). `RULE` is the sentence the report prints next to every
verdict that uses it (see docs/ARCHITECTURE.md, "The seed-band rule").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

RULE = (
    "seed-band rule: two methods differ only when their [min, max] bands over seeds do not "
    "overlap (routecal.stats.seeds)"
)
VERDICTS = ("better", "worse", "within seed band", "one seed: no band")


def seed_band(values: Iterable[float | None]) -> dict[str, float]:
    """Mean, sample std (ddof = 1; 0 for one seed), min, max and count of per-seed values.

    None and non-finite values are dropped; no values give NaN statistics and n = 0.
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {
        "mean": float(v.mean()),
        "std": sd,
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


def bands_overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True when the closed intervals [a.min, a.max] and [b.min, b.max] intersect."""
    return not (a["min"] > b["max"] or a["max"] < b["min"])


def compare_bands(
    method: Mapping[str, Any], baseline: Mapping[str, Any], *, higher_is_better: bool
) -> str:
    """The seed-band rule (module docstring): one of `VERDICTS` for `method` against `baseline`.

    Args:
      method, baseline: seed bands (`seed_band` output: mean, min, max, n).
      higher_is_better: the metric's direction (False for ECE, NLL, Brier).
    Raises:
      ValueError: a band without finite mean/min/max.
    """
    for name, band in (("method", method), ("baseline", baseline)):
        if any(band.get(k) is None or not np.isfinite(band[k]) for k in ("mean", "min", "max")):
            raise ValueError(f"{name}: seed band needs finite mean, min and max, got {dict(band)}")
    if min(method.get("n", 1), baseline.get("n", 1)) < 2:
        return "one seed: no band"
    if bands_overlap(method, baseline):
        return "within seed band"
    improved = (method["mean"] > baseline["mean"]) == higher_is_better
    return "better" if improved else "worse"


def band_table(per_run: Mapping[str, Mapping[Any, Mapping[str, Any]]], metrics: Iterable[str],
               lower_is_better: Iterable[str] = (), baseline: str = "det"
               ) -> dict[str, dict[str, Any]]:
    """per_run[method][seed][metric] -> table[method][metric] = `seed_band` over the seeds
    (metrics absent or None skipped), plus, against `baseline`'s band, `rel_change_pct` =
    100 (mean / baseline mean - 1) and the `compare_bands` verdict (`lower_is_better` metrics
    compared the other way); no comparison where the baseline mean is 0 or not finite."""
    lower = frozenset(lower_is_better)
    table: dict[str, dict[str, Any]] = {}
    for name, runs in per_run.items():
        vals = {m: [r[m] for r in runs.values() if r.get(m) is not None] for m in metrics}
        table[name] = {m: seed_band(v) for m, v in vals.items() if v}
    base = table.get(baseline, {})
    for name, row in table.items():
        for metric, band in row.items():
            b = base.get(metric, {}).get("mean")
            if name != baseline and b not in (None, 0.0) and np.isfinite(b):
                band["rel_change_pct"] = 100.0 * (band["mean"] / b - 1.0)
                band["verdict"] = compare_bands(band, base[metric],
                                                higher_is_better=metric not in lower)
    return table
