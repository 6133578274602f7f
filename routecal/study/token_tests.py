"""The token-level diagnostic tests: the registered tests (`study.registry`: within_bin,
conditional, omnibus) side by side on tokens, with documents (or packed rows) as clusters,
multiple-testing adjustment, and each test's power.

Shapes: N tokens, B permutations, G planted gaps of a power curve.

Per cell (domain, model, seed, routing summary), the configured tests (`diagnostics.tests`):

  * "within_bin": the seed paper's within-bin permutation test; it treats tokens as independent,
    which tokens of one sequence are not (its level under clustered nulls is measured in the
    stats issue).
  * "conditional": the library's recommended test, valid with routing that tracks confidence,
    ties and dependent tokens. The clusters are `diagnostics.cluster_unit`
    (`TestSettings.cluster_unit`): "document" (default, `doc_id`: rows cut from one file share
    its style, difficulty and routing, so rows are not independent; benchmarks/RESULTS.md,
    "Token clusters") or "row" (`seq_id`, the packed row).
  * "omnibus": the conditional test against non-monotone alternatives.

`run_cell` runs the configured tests on one cell (one stage of the study, so a killed study keeps
every finished cell); `adjust` adds Holm and Benjamini-Hochberg p-values per (test, domain) family;
`power` gives each test's minimum detectable gap at the configured power and its power curve
(`stats.power`, through the registry).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from routecal.study import grid, registry

TESTS = registry.NAMES
LABELS = {
    "within_bin": "paper's within-bin permutation test (tokens as iid)",
    "conditional": "recommended conditional calibration test (clusters: diagnostics.cluster_unit)",
    "omnibus": "omnibus conditional calibration test (non-monotone effects; clusters: "
    "diagnostics.cluster_unit)",
}
CLUSTER_UNITS = ("document", "row")  # `tokens.CLUSTER_UNITS` maps each to its id column


@dataclasses.dataclass(frozen=True)
class TestSettings:
    """The token tests' knobs (from `configs/study_lm.py` diagnostics.*)."""

    tests: tuple[str, ...] = ("within_bin", "conditional")  # "omnibus": name it in the config
    n_permutations: int = 10_000
    n_bins: int = 15
    n_groups: int = 3
    alpha: float = 0.05
    power: float = 0.8
    power_kwargs: tuple[tuple[str, Any], ...] = ()  # extra minimum_detectable_gap arguments
    paper_power_datasets: int = 50  # planted datasets per gap for the within-bin test's power
    paper_power_permutations: int = 200  # its permutations per planted dataset
    cluster_unit: str = "document"  # the conditional tests' clusters: "document" or "row"

    def __post_init__(self):
        if self.cluster_unit not in CLUSTER_UNITS:
            raise ValueError(f"diagnostics.cluster_unit: expected one of {CLUSTER_UNITS}, got "
                             f"{self.cluster_unit!r}")
        registry.check_names(self.tests, "diagnostics.tests")
        if self.n_permutations < 1:
            raise ValueError(
                f"diagnostics.n_permutations: expected >= 1, got {self.n_permutations}")
        if not 0 < self.alpha < 1 or not 0 < self.power < 1:
            raise ValueError(f"diagnostics.alpha, power: expected in (0, 1), got {self.alpha}, "
                             f"{self.power}")


def run_cell(
    confidence: np.ndarray, correct: np.ndarray, routing: np.ndarray, clusters: np.ndarray,
    *, key: jax.Array, settings: TestSettings,
) -> dict[str, dict[str, Any]]:
    """Every configured test on one cell's tokens.

    Args:
      confidence, correct, routing, clusters: [N] arrays (clusters = document or row ids).
      key: the cell's PRNG key (the registry's test t uses `fold_in(key, t)`).
    Returns:
      {test: {statistic, p_value, null [B] (float32, when the test has a permutation null),
      null_mean, ...}}.
    """
    out = {}
    for i, test in enumerate(registry.TESTS):
        if test.name not in settings.tests:
            continue
        nums = test.run(confidence, correct, routing, key=jax.random.fold_in(key, i),
                        clusters=clusters, s=settings)
        if "null" in nums:
            nums["null_mean"] = float(np.mean(nums["null"]))
        out[test.name] = nums
    return out


def adjust(rows: list[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """Adds p_holm and p_bh to every row, adjusting within each (test, domain) family.

    Args:
      rows: {test, domain, arch, seed, feature, statistic, p_value, ...} per test x cell.
    Returns:
      the rejection summary per (test, domain, arch, feature) across seeds: counts at `alpha`
      (raw, Holm, BH), mean statistic, min p, and, when the test has a null, the seed bands of the
      statistic and of the null mean with the seed-band rule's verdict (`stats.seeds`).
    """
    # the weighted gap against its null's mean (the conditional tests' Z is signed and
    # standardised: their p-values carry the comparison)
    return grid.adjust(rows, alpha, ("test", "domain"), ("test", "domain", "arch", "feature"),
                       banded=lambda ts: not registry.BY_NAME[ts[0]["test"]].signed and all(
                           t.get("null_mean") is not None for t in ts))


def power(
    confidence: np.ndarray, correct: np.ndarray, clusters: np.ndarray, *, key: jax.Array,
    settings: TestSettings,
) -> dict[str, dict[str, Any]]:
    """Each configured test's minimum detectable gap at `settings.power` on these tokens, with
    its power curve, on the same planted design (`stats.power`: routing with a per-sequence level,
    correctness moved by gap / 2 in each routing half, observed dependence kept); each test's
    `power` from the registry with key `fold_in(key, t)`. A test whose power needs a gap grid
    (within_bin) uses the conditional test's, computed for it when conditional is not configured.

    Returns:
      {test: {"mdg": float or None (no gap on the grid reached the target power), "curve":
      {"gap": [G], "power": [G]}, ...}}.
    """
    def one(t: registry.Test, gaps: Any = None) -> dict[str, Any]:
        i = registry.NAMES.index(t.name)
        return t.power(confidence, correct, key=jax.random.fold_in(key, i), clusters=clusters,
                       s=settings, gaps=gaps)

    out: dict[str, dict[str, Any]] = {}
    for t in registry.TESTS:
        if t.name in settings.tests and not t.power_on_gaps:
            out[t.name] = one(t)
    grid = None
    for t in registry.TESTS:
        if t.name in settings.tests and t.power_on_gaps:
            if grid is None:
                ref = out.get("conditional") or one(registry.BY_NAME["conditional"])
                grid = ref["curve"]["gap"]
            out[t.name] = one(t, grid)
    return out
