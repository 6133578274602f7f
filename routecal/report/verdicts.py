"""Verdicts: the report's plain-language decisions, computed from the numbers in a results dict.

Every across-seed comparison uses the one seed-band rule (`routecal.stats.seeds.compare_bands`)
and names it (`seeds.RULE`) in the sentence that uses it; nothing here is written by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.report.validity_note import paper_test_caveat
from routecal.stats import seeds

ALPHA_DEFAULT = 0.05
_RULE = f"[{seeds.RULE}]"


def _test_counts(tests: Sequence[Mapping[str, Any]], alpha: float) -> tuple[int, int, int]:
    raw = sum(t["p_value"] < alpha for t in tests)
    holm = sum(t.get("p_holm", 1.0) < alpha for t in tests)
    bh = sum(t.get("p_bh", 1.0) < alpha for t in tests)
    return raw, holm, bh


MDG = "minimum_detectable_gap_conditional"  # the grid's row of the conditional test's gap
_TEST_NAMES = {
    "conditional": "conditional (recommended)",
    "omnibus": "conditional omnibus (non-monotone effects)",
    "within_bin": "within-bin permutation (paper)",
}


def _by_test(tests: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Test rows grouped by test name, the recommended test first (rows without a name: paper)."""
    by: dict[str, list[Mapping[str, Any]]] = {}
    for t in tests:
        by.setdefault(t.get("test", "within_bin"), []).append(t)
    return dict(sorted(by.items(), key=lambda kv: kv[0] != "conditional"))


def _detectable_text(diag: Mapping[str, Any]) -> str:
    """The minimum detectable gap beside a "no evidence" verdict (median and range over cells)."""
    rows = [t for t in diag.get("tests", []) if "minimum_detectable_gap" in t
            and t.get("test", MDG) == MDG]
    omni = [t["minimum_detectable_gap"] for t in diag.get("tests", [])
            if t.get("test") == "minimum_detectable_gap_omnibus"
            and t.get("minimum_detectable_gap") is not None]
    omni_text = (f" The omnibus variant's detectable gap (same planted design) is "
                 f"{np.median(omni):.3f} (median over {len(omni)} cells)." if omni else "")
    if not rows:
        return omni_text
    gaps = [t["minimum_detectable_gap"] for t in rows]
    finite = [g for g in gaps if g is not None]
    target = rows[0].get("power_target", 0.8)
    if not finite:
        return (f" No evidence is not evidence of absence: no simulated gap was detected with "
                f"power {target} on these data." + omni_text)
    return (
        f" No evidence is not evidence of absence: the recommended test detects an accuracy gap "
        f"between high- and low-routing examples of equal confidence of {np.median(finite):.3f} "
        f"(median over {len(rows)} cells; range {min(finite):.3f}-{max(finite):.3f}"
        + (f"; {len(gaps) - len(finite)} beyond the simulated grid" if len(finite) < len(gaps)
           else "")
        + f") with power {target}; smaller gaps cannot be ruled out."
    ) + omni_text


def diagnostics_verdict(diag: Mapping[str, Any]) -> str:
    """Rejection counts (raw, Holm, BH) of each test against the alpha * n expected under the
    null (the head follows the recommended conditional test when it ran), the minimum detectable
    gap beside a "no evidence" verdict, and the cells whose statistic's seed band lies above the
    null's (the seed-band rule)."""
    tests = [t for t in diag.get("tests", []) if "p_value" in t]
    if not tests:
        return "No diagnostic tests were run."
    alpha = float(diag.get("alpha", ALPHA_DEFAULT))
    by = _by_test(tests)
    lead = next(iter(by))
    _, holm, bh = _test_counts(by[lead], alpha)
    if holm == 0 and bh == 0:
        head = "Routing adds no calibration evidence beyond confidence in this run"
    elif holm == 0:
        head = "Weak evidence that routing carries calibration information beyond confidence"
    else:
        head = "Routing carries calibration evidence beyond confidence in this run"
    parts = []
    for name, ts in by.items():
        r, h, b = _test_counts(ts, alpha)
        parts.append(
            f"{r} of {len(ts)} {_TEST_NAMES.get(name, name)} tests reject at alpha = {alpha} "
            f"before adjustment (about {alpha * len(ts):.1f} expected under the null), {h} after "
            f"Holm, {b} after Benjamini-Hochberg"
        )
    cells = sorted({(t["arch"], t["feature"]) for t in by[lead] if t.get("p_holm", 1.0) < alpha})
    where = ""
    if cells:
        where = " Holm-significant cells: " + ", ".join(f"{a}/{f}" for a, f in cells) + "."
    text = f"{head}: " + "; ".join(parts) + "." + where
    if holm == 0:
        text += _detectable_text(diag)
    if "within_bin" in by:
        text += " " + paper_test_caveat()
    banded = [r for r in diag.get("rejections", [])
              if "vs_null" in r and r.get("test", "within_bin") == lead]
    if banded and all(r["vs_null"] != "one seed: no band" for r in banded):
        above = [f"{r['arch']}/{r['feature']}" for r in banded if r["vs_null"] == "better"]
        text += (
            f" Across seeds, {len(above)} of {len(banded)} (model, feature) cells have a "
            f"{_TEST_NAMES.get(lead, lead)} statistic whose seed band lies above the null's mean"
            + (f" ({', '.join(above)})" if above else "")
            + f" {_RULE}."
        )
    return text


def _finite(band: Mapping[str, Any] | None) -> bool:
    return bool(band) and all(
        band.get(k) is not None and np.isfinite(band[k]) for k in ("mean", "min", "max")
    )


def _lookup(summary: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], Any]:
    return {(s["arch"], s["probe"], s["bandwidth_rule"]): s for s in summary}


def _band_text(verdict: str, what: str, baseline: str) -> str:
    if verdict == "one seed: no band":
        return "one seed, so no seed band to compare against"
    if verdict == "within seed band":
        return f"{what} stays within the {baseline} seed band"
    return f"{what} is {verdict} than {baseline} beyond the seed band"


def probes_verdict(probes: Mapping[str, Any]) -> str:
    """AR-CondCal vs confidence-only NW (test ECE, CV-NLL bandwidths) and the MLP controls, per
    architecture, by the seed-band rule."""
    summary = probes.get("summary", [])
    if not summary:
        return "No probes were compared."
    look = _lookup(summary)
    parts = []
    for arch in sorted({s["arch"] for s in summary}):
        ar = look.get((arch, "nw_ar_condcal", "cv_nll"))
        conf = look.get((arch, "nw_confidence", "cv_nll"))
        if ar is None or conf is None or not (_finite(ar["ece"]) and _finite(conf["ece"])):
            continue
        a, c = ar["ece"], conf["ece"]
        verdict = seeds.compare_bands(a, c, higher_is_better=False)
        ent = look.get((arch, "nw_entropy_control", "cv_nll"))
        ctrl = f"; predictive-entropy control {ent['ece']['mean']:.4f}" if ent else ""
        band = f" (band [{c['min']:.4f}, {c['max']:.4f}])" if c.get("n", 1) > 1 else ""
        parts.append(
            f"{arch}: test ECE with CV-NLL bandwidths, AR-CondCal {a['mean']:.4f} vs "
            f"confidence-only {c['mean']:.4f}{band}{ctrl}: "
            f"{_band_text(verdict, 'AR-CondCal', 'confidence-only')} {_RULE}."
        )
        full = look.get((arch, "mlp_full", "-"))
        cap = look.get((arch, "mlp_capacity_matched", "-"))
        shuf = look.get((arch, "mlp_shuffled", "-"))
        if full and cap and shuf and all(_finite(x["ece"]) for x in (full, cap, shuf)):
            vs = [
                _band_text(seeds.compare_bands(full["ece"], other["ece"], higher_is_better=False),
                           "the full-vector MLP", name)
                for other, name in ((cap, "capacity-matched MLP"), (shuf, "shuffled-routing MLP"))
            ]
            parts.append(
                f"{arch} MLP probes (ECE): full vector {full['ece']['mean']:.4f}, "
                f"capacity-matched confidence-only {cap['ece']['mean']:.4f}, shuffled routing "
                f"{shuf['ece']['mean']:.4f}: {vs[0]}; {vs[1]} {_RULE}."
            )
    if not parts:
        return "No routing-based probe was comparable with its confidence-only control."
    return " ".join(parts)


_VMOER_DIRECTION = (("stability", True), ("ece", False), ("ood_auroc", True))


def vmoer_verdict(vmoer: Mapping[str, Any]) -> str:
    """Each variational router against the deterministic one: relative change of the mean and the
    seed-band rule's verdict per metric (stability and OOD AUROC higher-better, ECE lower)."""
    rows = vmoer.get("rows", [])
    if not rows:
        return "The VMoER experiment was not run."
    base = next((r for r in rows if r["router"] == "deterministic"), None)
    if base is None:
        return "The VMoER table has no deterministic baseline."
    parts = []
    for r in rows:
        if r is base:
            continue
        bits = []
        for metric, higher in _VMOER_DIRECTION:
            if metric not in r or metric not in base:
                continue
            m, b = r[metric], base[metric]
            if not (_finite(m) and _finite(b)) or b["mean"] == 0:
                continue
            rel = 100.0 * (m["mean"] - b["mean"]) / abs(b["mean"])
            improved = (m["mean"] > b["mean"]) == higher
            band = seeds.compare_bands(m, b, higher_is_better=higher)
            bits.append(f"{metric} {rel:+.1f}% ({'better' if improved else 'worse'} mean; {band})")
        if "flops_overhead_percent" in r:
            bits.append(f"FLOP overhead {r['flops_overhead_percent']:.2f}%")
        parts.append(f"{r['router']}: " + ", ".join(bits))
    return "Against the deterministic router: " + "; ".join(parts) + f" {_RULE}."


def verdicts(results: Mapping[str, Any]) -> dict[str, str]:
    """One plain-language verdict per question, computed from `results`."""
    return {
        "diagnostics": diagnostics_verdict(results.get("diagnostics", {})),
        "probes": probes_verdict(results.get("probes", {})),
        "vmoer": vmoer_verdict(results.get("vmoer", {})),
    }
