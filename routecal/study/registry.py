"""The one test registry: every diagnostic test by one name, for every unit (examples in the
digits grid and `routecal diagnose`, `study.grid`; tokens in the LM study, `study.token_unit`).

Shapes: N rows (examples or tokens) of one cell, B permutations, G planted gaps.

  within_bin   the seed paper's test: confidence bins, routing groups within each bin, weighted
               gap, within-bin permutation null (`stats.diagnostics.within_bin_permutation_test`);
               rows exchangeable within a bin (it ignores clusters).
  conditional  the recommended test (`stats.diagnostics.conditional_calibration_test`,
               alternative "monotone"): valid when routing tracks confidence, with ties and with
               dependent rows (`clusters`: sign flips of whole clusters).
  omnibus      the same test with alternative "omnibus" (max-type over routing transforms:
               V-shaped and confidence-dependent effects).

A test is one `Test` in `TESTS`: `run` (one cell's numbers: statistic, p_value, null [B] when it
has a permutation null, the conditional test's slope / n_units / n_strata / warning / reference:
the null it used, "within" for the monotone test with 2 to 12 clusters) and `power`
(its minimum detectable gap and power curve, `stats.power`; within_bin's on the conditional
test's planted datasets and gap grid). Both units call the same entries, in this order (a test's
position numbers its PRNG key in a token cell); a new test registers here once.
The settings `s` are one `TestSettings` (the config's `diagnostics.*`) for every unit.
`run_cell` runs the configured tests on one cell, `power` gives each test's minimum detectable
gap and power curve (within_bin's on the conditional test's gap grid).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from routecal.stats import diagnostics
from routecal.stats import power as power_engine

CLUSTER_UNITS = ("document", "row")  # token clusters: `doc_id` or `seq_id` (`stats.clusters`)


@dataclasses.dataclass(frozen=True)
class TestSettings:
    """The tests' knobs, for every unit (a study config's `diagnostics.*`)."""

    tests: tuple[str, ...] = ("within_bin", "conditional", "omnibus")
    n_permutations: int = 10_000
    n_bins: int = 15
    n_groups: int = 3
    alpha: float = 0.05
    seed: int = 0  # the tests' PRNG key
    n_null_figures: int = 8  # permutation nulls kept per test (the smallest p-values)
    power: float = 0.8  # the detectable gaps' target power
    power_kwargs: tuple[tuple[str, Any], ...] = ()  # extra minimum_detectable_gap arguments
    paper_power_datasets: int = 50  # planted datasets per gap for the within-bin test's power
    paper_power_permutations: int = 200  # its permutations per planted dataset
    cluster_unit: str = "document"  # tokens: the conditional tests' clusters (`CLUSTER_UNITS`)

    def __post_init__(self):
        if self.cluster_unit not in CLUSTER_UNITS:
            raise ValueError(f"diagnostics.cluster_unit: expected one of {CLUSTER_UNITS}, got "
                             f"{self.cluster_unit!r}")
        check_names(self.tests, "diagnostics.tests")
        if self.n_permutations < 1:
            raise ValueError(
                f"diagnostics.n_permutations: expected >= 1, got {self.n_permutations}")
        if not 0 < self.alpha < 1 or not 0 < self.power < 1:
            raise ValueError(f"diagnostics.alpha, power: expected in (0, 1), got {self.alpha}, "
                             f"{self.power}")


@dataclasses.dataclass(frozen=True)
class Test:
    """One registered test: its name, a one-line label, `run` and `power` (module docstring);
    `signed`: the statistic is a signed Z (two-sided p), `power_on_gaps`: its power is computed
    on another test's gap grid (passed as `gaps=`)."""

    name: str
    label: str
    run: Callable[..., dict[str, Any]]
    power: Callable[..., dict[str, Any]]
    signed: bool = False
    power_on_gaps: bool = False


# the names before the one registry (configs and result files of older routecal versions)
OLD_NAMES = {"paper": "within_bin", "within_bin_permutation": "within_bin",
             "recommended": "conditional", "conditional_omnibus": "omnibus"}


def stratum_size(n: int) -> int:
    """The conditional test's strata: 50 rows, fewer on tiny cells (at least 3)."""
    return max(3, min(50, n // 4))


def numbers(res: Any) -> dict[str, Any]:
    """statistic, p_value, the conditional test's extras and null [B] (float32) of a result."""
    get = res.get if isinstance(res, Mapping) else lambda k, d=None: getattr(res, k, d)
    out = {"statistic": float(get("statistic")), "p_value": float(get("p_value"))}
    for k in ("slope", "n_units", "n_strata"):
        if get(k) is not None:
            out[k] = float(get(k))
    for k in ("warning", "reference"):
        if get(k):
            out[k] = str(get(k))
    null = get("null", None)
    if null is not None:
        out["null"] = np.asarray(null, np.float32)
    return out


def power_numbers(res: Any) -> dict[str, Any]:
    """{"mdg": float or None (no gap on the grid reached the target), "curve": {gap, power,
    power_low, power_high}} of a `stats.power.MinimumDetectableGap`."""
    curve = {"gap": np.asarray(res.gaps, float).tolist(),
             "power": np.asarray(res.power, float).tolist()}
    for k in ("power_low", "power_high"):
        if getattr(res, k, None) is not None:
            curve[k] = np.asarray(getattr(res, k), float).tolist()
    gap = float(res.gap)
    return {"mdg": gap if np.isfinite(gap) else None, "curve": curve}


def _within_bin(confidence, correct, routing, *, key, clusters, s) -> dict[str, Any]:
    del clusters  # the paper's test treats rows as exchangeable within a bin
    return numbers(diagnostics.within_bin_permutation_test(
        confidence, correct, routing, key=key, n_permutations=s.n_permutations, n_bins=s.n_bins,
        n_groups=s.n_groups))


def _conditional(confidence, correct, routing, *, key, clusters, s,
                 alternative: str = "monotone") -> dict[str, Any]:
    # too few clusters to reach alpha: run, and record why (few_clusters="warn")
    return numbers(diagnostics.conditional_calibration_test(
        confidence, correct, routing, key=key, clusters=clusters,
        n_permutations=s.n_permutations, stratum_size=stratum_size(len(confidence)),
        alpha=s.alpha, few_clusters="warn", alternative=alternative))


def _omnibus(confidence, correct, routing, *, key, clusters, s) -> dict[str, Any]:
    return _conditional(confidence, correct, routing, key=key, clusters=clusters, s=s,
                        alternative="omnibus")


def _conditional_power(confidence, correct, *, key, clusters, s, gaps=None,
                       alternative: str = "monotone") -> dict[str, Any]:
    del gaps  # its own grid (`stats.power`)
    return power_numbers(diagnostics.minimum_detectable_gap(
        confidence, correct, key=key, alpha=s.alpha, power=s.power, clusters=clusters,
        stratum_size=stratum_size(len(confidence)), alternative=alternative,
        **dict(s.power_kwargs)))


def _omnibus_power(confidence, correct, *, key, clusters, s, gaps=None) -> dict[str, Any]:
    return _conditional_power(confidence, correct, key=key, clusters=clusters, s=s,
                              alternative="omnibus")


def _within_bin_power(confidence, correct, *, key, clusters, s, gaps: Sequence[float]
                      ) -> dict[str, Any]:
    """The paper test's power curve on `stats.power`'s planted datasets (common random numbers
    across `gaps`, the conditional test's grid): `paper_power_datasets` datasets per gap through
    the within-bin test (`diagnostics.permutation_test_batch`, `paper_power_permutations` each);
    the detectable gap by `stats.power.crossing_gap`."""
    rates = []
    for gap in gaps:  # the same key at every gap: common random numbers, a smooth curve
        z, ys = power_engine.plant_gap(confidence, correct, float(gap), key=key, clusters=clusters,
                                       n_datasets=s.paper_power_datasets)
        res = diagnostics.permutation_test_batch(
            np.broadcast_to(confidence, ys.shape), ys, z, key=jax.random.fold_in(key, 1),
            n_permutations=s.paper_power_permutations, n_bins=s.n_bins, n_groups=s.n_groups)
        rates.append(float(np.mean(np.asarray(res.p_value) <= s.alpha)))
    gap = power_engine.crossing_gap(np.asarray(gaps, float), np.asarray(rates, float), s.power)
    return {"mdg": gap if np.isfinite(gap) else None,
            "curve": {"gap": [float(g) for g in gaps], "power": rates},
            "n_datasets": s.paper_power_datasets, "n_permutations": s.paper_power_permutations}


TESTS: tuple[Test, ...] = (
    Test("within_bin", "the seed paper's within-bin permutation test (rows exchangeable within a "
         "confidence bin)", _within_bin, _within_bin_power, power_on_gaps=True),
    Test("conditional", "the recommended conditional calibration test (monotone; clusters as "
         "units)", _conditional, _conditional_power, signed=True),
    Test("omnibus", "the omnibus conditional calibration test (non-monotone effects; clusters "
         "as units)", _omnibus, _omnibus_power, signed=True),
)
NAMES = tuple(t.name for t in TESTS)
BY_NAME = {t.name: t for t in TESTS}


def check_names(names: Sequence[str], key: str) -> tuple[str, ...]:
    """The registered tests `names` (config key `key`), in the registry's order.

    Raises:
      ValueError: an old name (naming its new one), an unknown name, or none.
    """
    old = [n for n in names if n in OLD_NAMES]
    if old:
        raise ValueError(f"{key}: {old} were renamed: use "
                         f"{[OLD_NAMES[n] for n in old]} (the tests are {NAMES})")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise ValueError(f"{key}: expected a non-empty subset of {NAMES}, got {tuple(names)}")
    return tuple(n for n in NAMES if n in names)


def run_cell(confidence: np.ndarray, correct: np.ndarray, routing: np.ndarray,
             clusters: np.ndarray | None, *, key: jax.Array, s: TestSettings
             ) -> dict[str, dict[str, Any]]:
    """Every configured test on one cell's rows [N] (test t with key `fold_in(key, t)`, t its
    position in `TESTS`); {test: {statistic, p_value, null [B] and null_mean when it has a
    permutation null, ...}}."""
    out = {}
    for i, test in enumerate(TESTS):
        if test.name in s.tests:
            nums = test.run(confidence, correct, routing, key=jax.random.fold_in(key, i),
                            clusters=clusters, s=s)
            if "null" in nums:
                nums["null_mean"] = float(np.mean(nums["null"]))
            out[test.name] = nums
    return out


def power(confidence: np.ndarray, correct: np.ndarray, clusters: np.ndarray | None, *,
          key: jax.Array, s: TestSettings) -> dict[str, dict[str, Any]]:
    """Each configured test's minimum detectable gap at `s.power` on one cell, with its power
    curve, on one planted design (`stats.power`; test t with key `fold_in(key, t)`). A test whose
    power needs a gap grid (within_bin) uses the conditional test's, computed for it when
    conditional is not configured.

    Returns:
      {test: {"mdg": float or None (no gap on the grid reached the target power), "curve":
      {"gap": [G], "power": [G]}, ...}}.
    """
    def one(t: Test, gaps: Any = None) -> dict[str, Any]:
        return t.power(confidence, correct, key=jax.random.fold_in(key, NAMES.index(t.name)),
                       clusters=clusters, s=s, gaps=gaps)

    out = {t.name: one(t) for t in TESTS if t.name in s.tests and not t.power_on_gaps}
    for t in TESTS:
        if t.name in s.tests and t.power_on_gaps:
            ref = out.get("conditional") or one(BY_NAME["conditional"])
            out[t.name] = one(t, ref["curve"]["gap"])
    return out
