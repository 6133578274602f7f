"""The token-level diagnostic tests: the paper's test and the recommended test side by side, with
sequences as clusters, multiple-testing adjustment, and each test's power.

Shapes: N tokens, B permutations, G planted gaps of a power curve.

Two tests per cell (domain, model, seed, routing summary):

  * "paper": the seed paper's within-bin permutation test
    (`stats.diagnostics.within_bin_permutation_test`); it treats tokens as independent, which
    tokens of one sequence are not (its level under clustered nulls is measured in the stats issue).
  * "recommended": `stats.diagnostics.conditional_calibration_test(..., clusters=seq_id)`, the
    library's test valid with routing that tracks confidence, ties and dependent tokens.

`run_cell` runs the configured tests on one cell (one stage of the study, so a killed study keeps
every finished cell); `adjust` adds Holm and Benjamini-Hochberg p-values per (test, domain) family;
`power` gives each test's minimum detectable gap at the configured power
(`stats.diagnostics.minimum_detectable_gap`) and its power curve when the engine returns one.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from routecal.stats import diagnostics
from routecal.stats.seeds import compare_bands, seed_band

TESTS = ("paper", "recommended")
LABELS = {
    "paper": "paper's within-bin permutation test (tokens as iid)",
    "recommended": "recommended conditional calibration test (sequences as clusters)",
}
_NEEDS = {
    "recommended": "conditional_calibration_test",
}


@dataclasses.dataclass(frozen=True)
class TestSettings:
    """The token tests' knobs (from `configs/study_lm.py` diagnostics.*)."""

    tests: tuple[str, ...] = TESTS
    n_permutations: int = 10_000
    n_bins: int = 15
    n_groups: int = 3
    alpha: float = 0.05
    power: float = 0.8
    power_kwargs: tuple[tuple[str, Any], ...] = ()  # extra minimum_detectable_gap arguments

    def __post_init__(self):
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
    """Names of `stats.diagnostics` functions the tests need that this install does not have."""
    need = [_NEEDS[t] for t in tests if t in _NEEDS]
    if any(t in tests for t in TESTS):
        need.append("minimum_detectable_gap")
    return [n for n in need if not hasattr(diagnostics, n)]


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` keeping only keyword arguments `fn` accepts (engine versions differ
    in optional knobs; the required ones are always passed)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **kwargs)
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})


def _numbers(res: Any) -> dict[str, Any]:
    """statistic, p_value and (when present) null [B] of a test result (NamedTuple or dict)."""
    get = res.get if isinstance(res, Mapping) else lambda k, d=None: getattr(res, k, d)
    out = {"statistic": float(get("statistic")), "p_value": float(get("p_value"))}
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
      confidence, correct, routing, clusters: [N] arrays (clusters = sequence ids).
      key: the cell's PRNG key (test t uses `fold_in(key, t)`).
    Returns:
      {test: {statistic, p_value, null [B] (float32, when the test has a permutation null),
      null_mean}}.
    Raises:
      ValueError: a configured test whose engine is not installed (named).
    """
    missing = [_NEEDS[t] for t in settings.tests if t in _NEEDS and not hasattr(diagnostics,
                                                                                 _NEEDS[t])]
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
        else:
            res = _call(diagnostics.conditional_calibration_test, confidence, correct, routing,
                        key=k, clusters=clusters, **common)
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
        if all(t.get("null_mean") is not None for t in ts):
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
    """Each configured test's minimum detectable gap at `settings.power` on these tokens.

    Returns:
      {test: {"mdg": float (the planted gap detected with the target power; None when none of
      the planted gaps reaches it), "curve": {"gap": [G], "power": [G]} when the engine returns
      one}}.
    """
    if not hasattr(diagnostics, "minimum_detectable_gap"):
        raise ValueError("diagnostics.tests: routecal.stats.diagnostics has no "
                         "minimum_detectable_gap")
    out = {}
    for i, test in enumerate(TESTS):
        if test not in settings.tests:
            continue
        res = _call(
            diagnostics.minimum_detectable_gap, confidence, correct,
            key=jax.random.fold_in(key, i), alpha=settings.alpha, power=settings.power,
            test="conditional" if test == "recommended" else "within_bin",
            clusters=clusters if test == "recommended" else None,
            n_permutations=settings.n_permutations, n_bins=settings.n_bins,
            n_groups=settings.n_groups, **dict(settings.power_kwargs),
        )
        out[test] = _power_numbers(res)
    return out


def _power_numbers(res: Any) -> dict[str, Any]:
    """{"mdg", "curve"} from a float or a result with a gap and optional (gaps, power) curve."""
    if isinstance(res, int | float | np.floating):
        return {"mdg": _finite(res), "curve": None}
    get = res.get if isinstance(res, Mapping) else lambda k, d=None: getattr(res, k, d)
    mdg = next((get(k) for k in ("gap", "mdg", "minimum_detectable_gap") if get(k) is not None),
               None)
    gaps = next((get(k) for k in ("gaps", "planted_gaps") if get(k) is not None), None)
    pw = next((get(k) for k in ("powers", "power_curve", "power") if get(k) is not None
               and np.ndim(get(k)) == 1), None)
    curve = None
    if gaps is not None and pw is not None:
        curve = {"gap": np.asarray(gaps, float).tolist(), "power": np.asarray(pw, float).tolist()}
    return {"mdg": _finite(mdg), "curve": curve}


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(float(x)) else None
