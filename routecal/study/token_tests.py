"""The token-level diagnostic tests: the paper's test and the recommended test side by side, with
documents (or packed rows) as clusters, multiple-testing adjustment, and each test's power.

Shapes: N tokens, B permutations, G planted gaps of a power curve.

Two tests per cell (domain, model, seed, routing summary):

  * "paper": the seed paper's within-bin permutation test
    (`stats.diagnostics.within_bin_permutation_test`); it treats tokens as independent, which
    tokens of one sequence are not (its level under clustered nulls is measured in the stats issue).
  * "recommended": `stats.diagnostics.conditional_calibration_test(..., clusters=...)`, the
    library's test valid with routing that tracks confidence, ties and dependent tokens. The
    clusters are `diagnostics.cluster_unit` (`TestSettings.cluster_unit`): "document" (default,
    `doc_id`: rows cut from one file share its style, difficulty and routing, so rows are not
    independent; benchmarks/RESULTS.md, "Token clusters") or "row" (`seq_id`, the packed row).

`run_cell` runs the configured tests on one cell (one stage of the study, so a killed study keeps
every finished cell); `adjust` adds Holm and Benjamini-Hochberg p-values per (test, domain) family;
`power` gives each test's minimum detectable gap at the configured power
(`stats.diagnostics.minimum_detectable_gap`) and its power curve when the engine returns one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from routecal.stats import diagnostics
from routecal.stats.seeds import compare_bands, seed_band

TESTS = ("paper", "recommended", "omnibus")
LABELS = {
    "paper": "paper's within-bin permutation test (tokens as iid)",
    "recommended": "recommended conditional calibration test (clusters: diagnostics.cluster_unit)",
    "omnibus": "omnibus conditional calibration test (non-monotone effects; clusters: "
    "diagnostics.cluster_unit)",
}
CLUSTER_UNITS = ("document", "row")  # `tokens.CLUSTER_UNITS` maps each to its id column
_NEEDS = {
    "recommended": "conditional_calibration_test",
    "omnibus": "conditional_calibration_test",
}


@dataclasses.dataclass(frozen=True)
class TestSettings:
    """The token tests' knobs (from `configs/study_lm.py` diagnostics.*)."""

    tests: tuple[str, ...] = ("paper", "recommended")  # "omnibus": name it in the config
    n_permutations: int = 10_000
    n_bins: int = 15
    n_groups: int = 3
    alpha: float = 0.05
    power: float = 0.8
    power_kwargs: tuple[tuple[str, Any], ...] = ()  # extra minimum_detectable_gap arguments
    paper_power_datasets: int = 50  # planted datasets per gap for the paper test's power
    paper_power_permutations: int = 200  # its permutations per planted dataset
    cluster_unit: str = "document"  # the recommended test's clusters: "document" or "row"

    def __post_init__(self):
        if self.cluster_unit not in CLUSTER_UNITS:
            raise ValueError(f"diagnostics.cluster_unit: expected one of {CLUSTER_UNITS}, got "
                             f"{self.cluster_unit!r}")
        unknown = [t for t in self.tests if t not in TESTS]
        if unknown or not self.tests:
            raise ValueError(f"diagnostics.tests: expected a subset of {TESTS}, got {self.tests}")
        if self.n_permutations < 1:
            raise ValueError(
                f"diagnostics.n_permutations: expected >= 1, got {self.n_permutations}")
        if not 0 < self.alpha < 1 or not 0 < self.power < 1:
            raise ValueError(f"diagnostics.alpha, power: expected in (0, 1), got {self.alpha}, "
                             f"{self.power}")


def missing_engines(tests: Sequence[str]) -> list[str]:
    """Names of `stats.diagnostics` functions the tests (and their power) need that this install
    does not have."""
    need = [_NEEDS[t] for t in tests if t in _NEEDS] + ["minimum_detectable_gap"]
    out = []
    for name in need:
        try:
            getattr(diagnostics, name)
        except (AttributeError, ImportError):
            out.append(name)
    return out


def _numbers(res: Any) -> dict[str, Any]:
    """statistic, p_value and (when present) null [B] of a test result (NamedTuple or dict)."""
    get = res.get if isinstance(res, Mapping) else lambda k, d=None: getattr(res, k, d)
    out = {"statistic": float(get("statistic")), "p_value": float(get("p_value"))}
    for k in ("slope", "n_units", "n_strata"):  # the recommended test's extras
        if get(k) is not None:
            out[k] = float(get(k))
    if get("warning"):
        out["warning"] = str(get("warning"))
    null = get("null", None)
    if null is not None:
        out["null"] = np.asarray(null, np.float32)
    return out


def run_cell(
    confidence: np.ndarray, correct: np.ndarray, routing: np.ndarray, clusters: np.ndarray,
    *, key: jax.Array, settings: TestSettings,
) -> dict[str, dict[str, Any]]:
    """Every configured test on one cell's tokens.

    Args:
      confidence, correct, routing, clusters: [N] arrays (clusters = document or row ids).
      key: the cell's PRNG key (test t uses `fold_in(key, t)`).
    Returns:
      {test: {statistic, p_value, null [B] (float32, when the test has a permutation null),
      null_mean}}.
    Raises:
      ValueError: a configured test whose engine is not installed (named).
    """
    missing = [n for n in missing_engines(settings.tests) if n != "minimum_detectable_gap"]
    if missing:
        raise ValueError(f"diagnostics.tests: routecal.stats.diagnostics has no {missing}")
    common = {"n_permutations": settings.n_permutations, "n_bins": settings.n_bins,
              "n_groups": settings.n_groups}
    out = {}
    for i, test in enumerate(TESTS):
        if test not in settings.tests:
            continue
        k = jax.random.fold_in(key, i)
        if test == "paper":
            res = diagnostics.within_bin_permutation_test(
                confidence, correct, routing, key=k, **common)
        else:  # too few sequences to reach alpha: run, and record why (few_clusters="warn")
            res = diagnostics.conditional_calibration_test(
                confidence, correct, routing, key=k, clusters=clusters,
                n_permutations=settings.n_permutations, alpha=settings.alpha,
                few_clusters="warn",
                alternative="omnibus" if test == "omnibus" else "monotone")
        nums = _numbers(res)
        if "null" in nums:
            nums["null_mean"] = float(np.mean(nums["null"]))
        out[test] = nums
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
    families: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        families.setdefault((r["test"], r["domain"]), []).append(r)
    for fam in families.values():
        ps = [r["p_value"] for r in fam]
        for r, h, b in zip(fam, diagnostics.adjust_pvalues(ps, "holm"),
                           diagnostics.adjust_pvalues(ps, "bh"), strict=True):
            r["p_holm"], r["p_bh"] = float(h), float(b)
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["test"], r["domain"], r["arch"], r["feature"]), []).append(r)
    summary = []
    for (test, domain, arch, feature), ts in groups.items():
        s = {
            "test": test, "domain": domain, "arch": arch, "feature": feature,
            "n_seeds": len(ts),
            "n_reject_raw": sum(t["p_value"] < alpha for t in ts),
            "n_reject_holm": sum(t["p_holm"] < alpha for t in ts),
            "n_reject_bh": sum(t["p_bh"] < alpha for t in ts),
            "mean_statistic": float(np.mean([t["statistic"] for t in ts])),
            "min_p": float(min(t["p_value"] for t in ts)),
        }
        if test == "paper" and all(t.get("null_mean") is not None for t in ts):
            # the weighted gap against its null's mean (the recommended test's Z is signed and
            # standardised: its p-values carry the comparison)
            s["statistic_band"] = seed_band([t["statistic"] for t in ts])
            s["null_mean_band"] = seed_band([t["null_mean"] for t in ts])
            s["vs_null"] = compare_bands(s["statistic_band"], s["null_mean_band"],
                                         higher_is_better=True)
        summary.append(s)
    return summary


def power(
    confidence: np.ndarray, correct: np.ndarray, clusters: np.ndarray, *, key: jax.Array,
    settings: TestSettings,
) -> dict[str, dict[str, Any]]:
    """Each configured test's minimum detectable gap at `settings.power` on these tokens, with
    its power curve, on the same planted design (`stats.power`: routing with a per-sequence level,
    correctness moved by gap / 2 in each routing half, observed dependence kept).

    recommended: `stats.diagnostics.minimum_detectable_gap(..., clusters=...)` (documents or
      rows, `diagnostics.cluster_unit`).
    omnibus: the same with `alternative="omnibus"` (its own detectable gap).
    paper: the same planted datasets (`stats.power.plant_gap`, common random numbers across
      gaps) through the within-bin test (`diagnostics.permutation_test_batch`), on the
      recommended test's gap grid; `paper_power_datasets` datasets per gap, `paper_power_
      permutations` permutations each.

    Returns:
      {test: {"mdg": float or None (no gap on the grid reached the target power), "curve":
      {"gap": [G], "power": [G]}}}.
    """
    if "minimum_detectable_gap" in missing_engines(settings.tests):
        raise ValueError("diagnostics.power: routecal.stats.diagnostics has no "
                         "minimum_detectable_gap")
    rec = _power_numbers(diagnostics.minimum_detectable_gap(
        confidence, correct, key=jax.random.fold_in(key, 1), alpha=settings.alpha,
        power=settings.power, clusters=clusters, **dict(settings.power_kwargs)))
    out = {}
    if "recommended" in settings.tests:
        out["recommended"] = rec
    if "omnibus" in settings.tests:
        out["omnibus"] = _power_numbers(diagnostics.minimum_detectable_gap(
            confidence, correct, key=jax.random.fold_in(key, 2), alpha=settings.alpha,
            power=settings.power, clusters=clusters, alternative="omnibus",
            **dict(settings.power_kwargs)))
    if "paper" in settings.tests:
        out["paper"] = paper_power(confidence, correct, clusters, rec["curve"]["gap"],
                                   key=jax.random.fold_in(key, 0), settings=settings)
    return out


def paper_power(
    confidence: np.ndarray, correct: np.ndarray, clusters: np.ndarray, gaps: Sequence[float], *,
    key: jax.Array, settings: TestSettings,
) -> dict[str, Any]:
    """The paper test's power curve and detectable gap on `stats.power`'s planted design."""
    from routecal.stats import power as power_engine

    rates = []
    for gap in gaps:  # the same key at every gap: common random numbers, a smooth curve
        z, ys = power_engine.plant_gap(confidence, correct, float(gap), key=key, clusters=clusters,
                                       n_datasets=settings.paper_power_datasets)
        res = diagnostics.permutation_test_batch(
            np.broadcast_to(confidence, ys.shape), ys, z, key=jax.random.fold_in(key, 1),
            n_permutations=settings.paper_power_permutations, n_bins=settings.n_bins,
            n_groups=settings.n_groups)
        rates.append(float(np.mean(np.asarray(res.p_value) <= settings.alpha)))
    return {"mdg": detectable_gap(gaps, rates, settings.power),
            "curve": {"gap": [float(g) for g in gaps], "power": rates},
            "n_datasets": settings.paper_power_datasets,
            "n_permutations": settings.paper_power_permutations}


def detectable_gap(gaps: Sequence[float], rates: Sequence[float], target: float) -> float | None:
    """The first gap at which the running maximum of the power curve reaches `target`, linear in
    log gap between grid points (the rule of `stats.power`); None if it never does."""
    g, mono = np.log(np.asarray(gaps, float)), np.maximum.accumulate(np.asarray(rates, float))
    above = np.flatnonzero(mono >= target)
    if above.size == 0:
        return None
    i = int(above[0])
    if i == 0:
        return float(gaps[0])
    frac = (target - mono[i - 1]) / max(mono[i] - mono[i - 1], 1e-12)
    return float(np.exp(g[i - 1] + frac * (g[i] - g[i - 1])))


def _power_numbers(res: Any) -> dict[str, Any]:
    """{"mdg", "curve"} from a `stats.power.MinimumDetectableGap` (gap, gaps, power [E])."""
    get = res.get if isinstance(res, Mapping) else lambda k, d=None: getattr(res, k, d)
    curve = {"gap": np.asarray(get("gaps"), float).tolist(),
             "power": np.asarray(get("power"), float).tolist()}
    for k in ("power_low", "power_high"):
        if get(k) is not None:
            curve[k] = np.asarray(get(k), float).tolist()
    return {"mdg": _finite(get("gap")), "curve": curve}


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(float(x)) else None
