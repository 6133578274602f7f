"""The diagnostic grid: every test spec on every (arch, seed, routing feature) cell, adjusted.

Shapes: N examples in a cell, B permutations.

The grid's specs (`specs`) are the registered tests (`study.registry`, one name per test for
every unit) and their detectable gaps. A spec is a name and a function of one cell's arrays
(confidence [N], correct [N], routing [N]) and a PRNG key returning the cell's numbers
(`statistic` and `p_value` for a test, `null` [B] when it has a permutation null; a spec without
`p_value`, e.g. a minimum detectable gap, is recorded per cell without adjustment).
`diagnostic_grid` runs every spec on every cell (cell i with `fold_in(key, i)`, as `stats.diagnostics.permutation_grid`), adds
Holm and Benjamini-Hochberg adjusted p-values per spec across cells, and returns one dict for
results.json in which the nulls travel: the figure's nulls are kept inside their test rows.
Adding a test to the study is one `registry.Test` (or a `TestSpec` in the `tests=` argument);
the settings are the study's one `registry.TestSettings`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from routecal import parallel
from routecal.stats import multiple_testing
from routecal.study import registry


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the grid: a model, a seed and one routing feature, with its arrays [N], and
    optionally cluster ids [N] (documents or sequences: dependent rows; None = independent)."""

    arch: str
    seed: int
    feature: str
    confidence: np.ndarray
    correct: np.ndarray
    routing: np.ndarray
    clusters: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class TestSpec:
    """A test of one cell: `run(confidence, correct, routing, key, settings)` -> numbers; a
    `clustered` spec is also passed `clusters=` (the cell's cluster ids [N] or None)."""

    name: str
    run: Callable[..., Mapping[str, Any]]
    clustered: bool = False


def _row_numbers(test: registry.Test):
    """A registered test as a grid spec: its numbers, with a signed statistic (the conditional
    tests' Z, two-sided) as |Z| against |Z*| so the seed-band comparison with the null's mean
    reads "larger = more evidence" as for the weighted gap; the signed Z and slope are kept."""

    def run(conf, correct, routing, key, s: registry.TestSettings, clusters=None) -> dict[str, Any]:
        nums = test.run(conf, correct, routing, key=key, clusters=clusters, s=s)
        if not test.signed:
            return nums
        keep = {k: nums[k] for k in ("warning",) if k in nums}
        return {"statistic": abs(nums["statistic"]), "p_value": nums["p_value"],
                "null": np.abs(nums["null"]), "z": nums["statistic"], "slope": nums["slope"],
                **keep}

    return run


def _detectable_gap(test: registry.Test):
    """A registered test's minimum detectable gap on each cell's confidence and correctness (the
    power analysis plants its own routing), as a grid measurement (no p-value)."""

    def run(conf, correct, routing, key, s: registry.TestSettings, clusters=None) -> dict[str, Any]:
        del routing
        p = test.power(conf, correct, key=key, clusters=clusters, s=s)
        return {"minimum_detectable_gap": p["mdg"], "power_target": s.power,
                "power_curve": {"gap": p["curve"]["gap"], "power": p["curve"]["power"]}}

    return run


def specs(tests: Sequence[str] = registry.NAMES, power: bool = True) -> tuple[TestSpec, ...]:
    """The registered `tests` (`study.registry`), in the registry's order, each followed, when
    `power`, by its minimum detectable gap ("minimum_detectable_gap_<test>") if its power needs
    no other test's gap grid (within_bin's does: the token unit's power stage computes it)."""
    return tuple(
        spec for t in registry.TESTS if t.name in tests for spec in (
            TestSpec(t.name, _row_numbers(t), clustered=True),
            *(() if t.power_on_gaps or not power else (
                TestSpec(f"minimum_detectable_gap_{t.name}", _detectable_gap(t),
                         clustered=True),))))


def diagnostic_grid(
    cells: Sequence[Cell], settings: registry.TestSettings,
    tests: Sequence[TestSpec] | None = None,
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
    tests = specs(settings.tests) if tests is None else tests

    def one(k: int) -> dict[str, Any]:  # (test k // cells, cell k % cells)
        spec, i = tests[k // len(cells)], k % len(cells)
        c = cells[i]
        kw = {"clusters": c.clusters} if spec.clustered else {}
        return dict(spec.run(c.confidence, c.correct, c.routing, jax.random.fold_in(key, i),
                             settings, **kw))

    # multi-host: each (test, cell) computed once, by one process (`parallel.share`)
    results = iter(parallel.share(one, len(tests) * len(cells), "diagnostic_grid"))
    for spec in tests:
        rows = []
        for c in cells:
            res = next(results)
            null = res.pop("null", None)
            row = {"test": spec.name, "arch": c.arch, "seed": c.seed, "feature": c.feature,
                   "n": int(len(c.confidence)), **res}
            if c.clusters is not None:
                row["n_clusters"] = int(len(np.unique(c.clusters)))
            if null is not None:
                row["null_mean"] = float(np.mean(null))
                row["null"] = null
            rows.append(row)
        out["tests"] += rows
        if not all("p_value" in r for r in rows):
            continue  # a measurement, not a test (e.g. a detectable gap): no adjustment
        out["rejections"] += multiple_testing.adjust_rows(rows, settings.alpha, ("test",), ("test", "arch", "feature"),
                                    banded=lambda ts: all("null_mean" in t for t in ts))
        shown = {id(r) for r in sorted(rows, key=lambda r: r["p_value"])[: settings.n_null_figures]}
        for r in rows:
            if id(r) not in shown:
                r.pop("null", None)
    out.update(n_bins=settings.n_bins, n_groups=settings.n_groups)
    return out
