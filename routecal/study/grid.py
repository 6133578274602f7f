"""The diagnostic grid: every test spec on every (arch, seed, routing feature) cell, adjusted.

Shapes: N examples in a cell, B permutations.

A test is one `TestSpec` entry in `TESTS`: a name and a function of one cell's arrays (confidence
[N], correct [N], routing [N]) and a PRNG key returning the cell's numbers (`statistic` and
`p_value` for a test, `null` [B] when it has a permutation null; a spec without `p_value`, e.g. a
minimum detectable gap, is recorded per cell without adjustment). `diagnostic_grid` runs every
spec on every cell (cell i with `fold_in(key, i)`, as `stats.diagnostics.permutation_grid`), adds
Holm and Benjamini-Hochberg adjusted p-values per spec across cells, and returns one dict for
results.json in which the nulls travel: the figure's nulls are kept inside their test rows.
Adding a test to the study is one more `TestSpec` in `TESTS` (or in the `tests=` argument).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from routecal.stats import diagnostics
from routecal.stats.seeds import compare_bands, seed_band


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the grid: a model, a seed and one routing feature, with its arrays [N]."""

    arch: str
    seed: int
    feature: str
    confidence: np.ndarray
    correct: np.ndarray
    routing: np.ndarray


@dataclasses.dataclass(frozen=True)
class GridSettings:
    """The grid's knobs (from the study plan or the `diagnose` arguments)."""

    n_permutations: int
    n_bins: int
    n_groups: int
    alpha: float
    seed: int
    n_null_figures: int = 8


@dataclasses.dataclass(frozen=True)
class TestSpec:
    """A test of one cell: `run(confidence, correct, routing, key, settings)` -> numbers."""

    name: str
    run: Callable[[np.ndarray, np.ndarray, np.ndarray, jax.Array, GridSettings], Mapping[str, Any]]


def _within_bin(conf, correct, routing, key, s: GridSettings) -> dict[str, Any]:
    res = diagnostics.within_bin_permutation_test(
        conf, correct, routing, key=key, n_permutations=s.n_permutations, n_bins=s.n_bins,
        n_groups=s.n_groups,
    )
    return {"statistic": float(res.statistic), "p_value": float(res.p_value),
            "null": np.asarray(res.null, np.float32)}


def _stratum_size(n: int) -> int:
    """The conditional test's strata: 50 examples, fewer on tiny cells (at least 3)."""
    return max(3, min(50, n // 4))


def _conditional(conf, correct, routing, key, s: GridSettings,
                 alternative: str = "monotone") -> dict[str, Any]:
    res = diagnostics.conditional_calibration_test(
        conf, correct, routing, key=key, n_permutations=s.n_permutations,
        stratum_size=_stratum_size(len(conf)), alternative=alternative,
    )
    # |Z| against |Z*| (the test is two-sided), so the seed-band comparison with the null's mean
    # reads "larger = more evidence" as for the weighted gap; the signed Z and slope are kept.
    return {"statistic": abs(res.statistic), "p_value": float(res.p_value),
            "null": np.abs(np.asarray(res.null, np.float32)), "z": float(res.statistic),
            "slope": float(res.slope)}


def _conditional_omnibus(conf, correct, routing, key, s: GridSettings) -> dict[str, Any]:
    return _conditional(conf, correct, routing, key, s, alternative="omnibus")


def _detectable_gap(conf, correct, routing, key, s: GridSettings,
                    alternative: str = "monotone") -> dict[str, Any]:
    del routing  # the power analysis plants its own routing on this confidence and correctness
    m = diagnostics.minimum_detectable_gap(
        conf, correct, key=key, alpha=s.alpha, stratum_size=_stratum_size(len(conf)),
        alternative=alternative,
    )
    gap = float(m.gap) if np.isfinite(m.gap) else None  # None: beyond the simulated grid
    return {"minimum_detectable_gap": gap, "power_target": m.target,
            "power_curve": {"gap": m.gaps.tolist(), "power": m.power.tolist()}}


def _detectable_gap_omnibus(conf, correct, routing, key, s: GridSettings) -> dict[str, Any]:
    return _detectable_gap(conf, correct, routing, key, s, alternative="omnibus")


# The paper's test (matched-confidence bins, routing groups, within-bin permutation null), the
# recommended conditional test (valid when routing tracks confidence and with ties), and the gap
# the recommended test detects with 80% power on each cell's confidence and correctness; then the
# omnibus variant of the recommended test (V-shaped and confidence-dependent effects, issue 22)
# with its own detectable gap.
TESTS: tuple[TestSpec, ...] = (
    TestSpec("within_bin_permutation", _within_bin),
    TestSpec("conditional", _conditional),
    TestSpec("minimum_detectable_gap", _detectable_gap),
    TestSpec("conditional_omnibus", _conditional_omnibus),
    TestSpec("minimum_detectable_gap_omnibus", _detectable_gap_omnibus),
)


def diagnostic_grid(
    cells: Sequence[Cell], settings: GridSettings, tests: Sequence[TestSpec] = TESTS
) -> dict[str, Any]:
    """Runs every test on every cell; returns {"tests", "rejections", settings...}.

    `tests` rows: {test, arch, seed, feature, n, statistic, p_value, p_holm, p_bh, null_mean}
    plus `null` [B] for the `n_null_figures` smallest p-values of each test (the report's figure).
    `rejections`: per (test, arch, feature) across seeds, the rejection counts at `alpha` (raw,
    Holm, BH), the mean statistic, min p, and the seed bands of the statistic and of the null's
    mean with the seed-band rule's verdict (`stats.seeds.compare_bands`, higher = larger gap).
    """
    out: dict[str, Any] = {"tests": [], "rejections": [], "alpha": settings.alpha,
                           "n_permutations": settings.n_permutations}
    if not cells:
        return out
    key = jax.random.key(settings.seed)
    for spec in tests:
        rows = []
        for i, c in enumerate(cells):
            res = dict(spec.run(c.confidence, c.correct, c.routing, jax.random.fold_in(key, i),
                                settings))
            null = res.pop("null", None)
            row = {"test": spec.name, "arch": c.arch, "seed": c.seed, "feature": c.feature,
                   "n": int(len(c.confidence)), **res}
            if null is not None:
                row["null_mean"] = float(np.mean(null))
                row["null"] = null
            rows.append(row)
        out["tests"] += rows
        if not all("p_value" in r for r in rows):
            continue  # a measurement, not a test (e.g. a detectable gap): no adjustment
        ps = [r["p_value"] for r in rows]
        holm = diagnostics.adjust_pvalues(ps, "holm")
        bh = diagnostics.adjust_pvalues(ps, "bh")
        for r, h, b in zip(rows, holm, bh, strict=True):
            r["p_holm"], r["p_bh"] = float(h), float(b)
        shown = {id(r) for r in sorted(rows, key=lambda r: r["p_value"])[: settings.n_null_figures]}
        for r in rows:
            if id(r) not in shown:
                r.pop("null", None)
        out["rejections"] += _rejections(rows, settings.alpha)
    out.update(n_bins=settings.n_bins, n_groups=settings.n_groups)
    return out


def _rejections(rows: Sequence[Mapping[str, Any]], alpha: float) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for t in rows:
        groups.setdefault((t["test"], t["arch"], t["feature"]), []).append(t)
    out = []
    for (test, arch, feature), ts in groups.items():
        row = {
            "test": test, "arch": arch, "feature": feature, "n_seeds": len(ts),
            "n_reject_raw": sum(t["p_value"] < alpha for t in ts),
            "n_reject_holm": sum(t["p_holm"] < alpha for t in ts),
            "n_reject_bh": sum(t["p_bh"] < alpha for t in ts),
            "mean_statistic": float(np.mean([t["statistic"] for t in ts])),
            "min_p": float(min(t["p_value"] for t in ts)),
        }
        if all("null_mean" in t for t in ts):
            row["statistic_band"] = seed_band([t["statistic"] for t in ts])
            row["null_mean_band"] = seed_band([t["null_mean"] for t in ts])
            row["vs_null"] = compare_bands(
                row["statistic_band"], row["null_mean_band"], higher_is_better=True
            )
        out.append(row)
    return out
