"""Verdicts: the report's plain-language decisions from the numbers in a results dict, every unit
(`verdicts` picks the questions by `meta.unit`; `diagnostics_rows`: the diagnostics verdict as
rows, domain x test, with the full sentence). Every across-seed comparison uses the one seed-band
rule (`seeds.compare_bands`) and names it (`seeds.RULE`); nothing here is written by hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.report import vmoer_lm
from routecal.report.validity_note import paper_test_caveat
from routecal.stats import seeds

ALPHA_DEFAULT = 0.05
_RULE = f"[{seeds.RULE}]"


def _test_counts(tests: Sequence[Mapping[str, Any]], alpha: float) -> tuple[int, int, int]:
    raw = sum(t["p_value"] < alpha for t in tests)
    holm = sum(t.get("p_holm", 1.0) < alpha for t in tests)
    bh = sum(t.get("p_bh", 1.0) < alpha for t in tests)
    return raw, holm, bh


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


def _detectable_text(power: Sequence[Mapping[str, Any]], target: float) -> str:
    """The minimum detectable gap beside a "no evidence" verdict (median and range over cells)."""
    gaps = [p["mdg"] for p in power if p["test"] == "conditional"]
    omni = [p["mdg"] for p in power if p["test"] == "omnibus" and p["mdg"] is not None]
    omni_text = (f" The omnibus variant's detectable gap (same planted design) is "
                 f"{np.median(omni):.3f} (median over {len(omni)} cells)." if omni else "")
    if not gaps:
        return omni_text
    finite = [g for g in gaps if g is not None]
    if not finite:
        return (f" No evidence is not evidence of absence: no simulated gap was detected with "
                f"power {target} on these data." + omni_text)
    return (
        f" No evidence is not evidence of absence: the recommended test detects an accuracy gap "
        f"between high- and low-routing examples of equal confidence of {np.median(finite):.3f} "
        f"(median over {len(gaps)} cells; range {min(finite):.3f}-{max(finite):.3f}"
        + (f"; {len(gaps) - len(finite)} beyond the simulated grid" if len(finite) < len(gaps)
           else "")
        + f") with power {target}; smaller gaps cannot be ruled out."
    ) + omni_text


def diagnostics_verdict(diag: Mapping[str, Any], power: Sequence[Mapping[str, Any]] = (),
                        target: float = 0.8) -> str:
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
        text += _detectable_text(power, target)
    if "within_bin" in by:
        text += " " + paper_test_caveat()
    banded = [r for r in diag.get("summary", [])
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
    return bool(band) and all(band.get(k) is not None and np.isfinite(band[k])
                              for k in ("mean", "min", "max"))


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
    rows = vmoer_lm.rows(vmoer)
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


# ----- token results: one sentence per (domain, test) / (domain, model) ---------------------------
RULE_SENTENCE = seeds.RULE[0].upper() + seeds.RULE[1:]
CONTROLS = {
    "within_bin": "control: the within-bin permutation null (tokens exchangeable within confidence "
    "bins; tokens of one sequence are not, so its level is not controlled here: compare its "
    "power curve at the smallest planted gap with alpha)",
    "conditional": "control: the null of the recommended test with whole clusters (documents or "
    "packed rows, diagnostics.cluster_unit) flipped together",
    "omnibus": "control: the omnibus test's null (the same sign flips of whole clusters)",
}


EXAMPLE_CONTROLS = {  # the same tests on examples (independent rows)
    "within_bin": "control: the within-bin permutation null (examples exchangeable within "
    "confidence bins)",
    "conditional": "control: the recommended test's sign-flip null (examples as units)",
    "omnibus": "control: the omnibus test's null (the same sign flips)",
}
def _domain(row: Mapping[str, Any]) -> str:
    return row.get("domain", "all")  # example results: one pool of rows


def _mdg(power: Sequence[Mapping[str, Any]], test: str, domain: str, level: float
         ) -> tuple[str, str]:
    """(the detectable gap's sentence, its median over cells: "-" not computed, "none" no gap)."""
    vals = [p["mdg"] for p in power if p["test"] == test and p["domain"] == domain]
    found = [v for v in vals if v is not None]
    if not vals:
        return "power not computed", "-"
    if not found:
        return f"no planted gap reached {level:.0%} power (power too low to call a null)", "none"
    lo, hi, med = min(found), max(found), float(np.median(found))
    miss = f"; {len(vals) - len(found)} cells reached no gap" if len(found) < len(vals) else ""
    return (f"power: detects planted gaps >= {med:.3f} (median over models and seeds, range "
            f"[{lo:.3f}, {hi:.3f}]) with {level:.0%} power{miss}", f"{med:.3f}")


def diagnostics_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One verdict row per (domain, test), for every unit: {domain, test, rejections ("raw / Holm
    / BH of n"), detectable gap (median over cells), verdict (word), sentence (the full verdict:
    rejections against the alpha * n expected under the null, the test's control, its minimum
    detectable gap (`results["power"]`), the seed-band comparison of the statistic with its
    null)}. Example results pool their rows in one domain, "all"."""
    diag = results.get("diagnostics", {})
    rows = [r for r in diag.get("tests", []) if "p_value" in r]
    alpha = float(diag.get("alpha", 0.05))
    level = float(results.get("meta", {}).get("config", {}).get("diagnostics", {})
                  .get("power", 0.8))
    power = results.get("power", [])
    controls = CONTROLS if results.get("meta", {}).get("unit") == "token" else EXAMPLE_CONTROLS
    out = []
    for domain in dict.fromkeys(_domain(r) for r in rows):
        for test in dict.fromkeys(r.get("test", "within_bin") for r in rows):
            ts = [r for r in rows if _domain(r) == domain and r.get("test", "within_bin") == test]
            if not ts:
                continue
            raw = sum(r["p_value"] < alpha for r in ts)
            holm = sum(r["p_holm"] < alpha for r in ts)
            bh = sum(r["p_bh"] < alpha for r in ts)
            head = ("evidence that routing carries calibration information beyond confidence"
                    if holm else "weak evidence (BH only)" if bh else "no evidence")
            where = sorted({f"{r['arch']}/{r['feature']}" for r in ts if r["p_holm"] < alpha})
            summ = [s for s in diag.get("summary", [])
                    if _domain(s) == domain and s.get("test") == test and "vs_null" in s]
            band = ""
            if summ and all(s["vs_null"] != "one seed: no band" for s in summ):
                above = sum(s["vs_null"] == "better" for s in summ)
                band = (f"; {above} of {len(summ)} (model, summary) statistics lie above their "
                        "null's seed band (seed-band rule)")
            elif summ:
                band = "; one seed, so no seed band (seed-band rule)"
            cl = diag.get("clusters", {}).get(domain) if test == "conditional" else None
            if cl:
                band += (f"; clusters: {cl['cluster_unit']}s, {cl['n_clusters'][0]} (effective "
                         f"{cl['n_eff_clusters'][0]:.1f})")
            mdg_text, mdg_median = _mdg(power, test, domain, level)
            sentence = (
                f"{domain} domain, {test} test: {head}: {raw} of {len(ts)} reject at alpha = "
                f"{alpha} (about {alpha * len(ts):.1f} expected under the null), {holm} after "
                f"Holm, {bh} after BH"
                + (f" (Holm: {', '.join(where)})" if where else "")
                + f"; {controls.get(test, 'control: ' + test)}; "
                + mdg_text + band + "."
            )
            out.append({"domain": domain, "test": test,
                        "rejections": f"{raw} / {holm} / {bh} of {len(ts)}",
                        "detectable_gap": mdg_median,
                        "verdict": "evidence" if holm else "weak (BH only)" if bh else
                        "no evidence", "sentence": sentence})
    return out


def diagnostics_items(results: Mapping[str, Any]) -> list[str]:
    """The diagnostics verdict's sentences: one per (domain, test) (`diagnostics_rows`), the
    within-bin test's measured-inflation caveat, the seed-band rule."""
    rows = results.get("diagnostics", {}).get("tests", [])
    if not rows:
        return ["No diagnostic tests were run."]
    parts = [r["sentence"] for r in diagnostics_rows(results)]
    if any(r["test"] == "within_bin" for r in rows):
        parts.append(paper_test_caveat())
    return parts + [RULE_SENTENCE + "."]


def _versus(method: Mapping[str, Any], control: Mapping[str, Any], what: str, ctrl: str) -> str:
    a, c = method["ece"], control["ece"]
    if not all(np.isfinite(x.get(k, np.nan)) for x in (a, c) for k in ("mean", "min", "max")):
        return f"{what} vs {ctrl}: not comparable"
    verdict = seeds.compare_bands(a, c, higher_is_better=False)
    width = c["max"] - c["min"]
    res = ("" if verdict == "one seed: no band" else
           f"; resolution: differences inside the control's band width {width:.4f} cannot be "
           "called")
    return (f"{what} ECE {a['mean']:.4f} vs control {ctrl} {c['mean']:.4f} "
            f"[{c['min']:.4f}, {c['max']:.4f}]: {verdict}{res}")


def token_probes_items(results: Mapping[str, Any]) -> list[str]:
    """Per domain and AttnRes model: AR-CondCal vs confidence-only NW (CV-NLL bandwidths) and the
    full-vector MLP vs its capacity-matched and shuffled-across-sequences controls, by the rule."""
    domains = results.get("probes", {}).get("domains", {})
    parts = []
    for domain, dom in domains.items():
        look = _lookup(dom.get("summary", []))
        for arch in dict.fromkeys(s["arch"] for s in dom.get("summary", [])):
            bits = []
            pairs = [
                (("nw_ar_condcal", "cv_nll"), ("nw_confidence", "cv_nll"), "AR-CondCal",
                 "NW on confidence"),
                (("mlp_full", "-"), ("mlp_capacity_matched", "-"), "full-vector MLP",
                 "capacity-matched confidence-only MLP"),
                (("mlp_full", "-"), ("mlp_shuffled_sequences", "-"), "full-vector MLP",
                 "routing shuffled across sequences"),
            ]
            for (mp, mr), (cp, cr), what, ctrl in pairs:
                m, c = look.get((arch, mp, mr)), look.get((arch, cp, cr))
                if m and c:
                    bits.append(_versus(m, c, what, ctrl))
            if bits:
                parts.append(f"{domain} domain, {arch}: " + "; ".join(bits) + ".")
    if not parts:
        return ["No routing-based probe was compared with its control."]
    return parts + [RULE_SENTENCE + " (test ECE; CV-NLL bandwidths for NW)."]


def domains_items(results: Mapping[str, Any]) -> list[str]:
    """Accuracy and ECE per domain (mean over models and seeds) and where the recommended test
    rejects (after Holm): does routing carry evidence under shift?"""
    runs = results.get("runs", [])
    domains = results.get("meta", {}).get("domains", {})
    if not runs or not domains:
        return ["No domains were evaluated."]
    rows = results.get("diagnostics", {}).get("tests", [])
    test = "conditional" if any(r["test"] == "conditional" for r in rows) else "within_bin"
    alpha = float(results.get("diagnostics", {}).get("alpha", 0.05))
    parts = []
    for domain, split in domains.items():
        acc = [r["splits"][split]["accuracy"] for r in runs if split in r.get("splits", {})]
        ece = [r["splits"][split]["ece"] for r in runs if split in r.get("splits", {})]
        ts = [r for r in rows if r["domain"] == domain and r["test"] == test]
        rej = sum(r["p_holm"] < alpha for r in ts)
        parts.append(f"{domain} domain (mean over models and seeds): next-token accuracy "
                     f"{np.mean(acc):.3f}, ECE {np.mean(ece):.4f}; {rej} of {len(ts)} {test}-test "
                     "cells reject after Holm.")
    if parts:
        parts.append(f"Control, power and seed-band rule of the {test} test: as in its diagnostics "
                     "verdict, domain by domain (a domain's cells are one Holm/BH family).")
    return parts


def verdict_items(results: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per question, the verdict's sentences (one per domain / model, then the rule)."""
    return {"diagnostics": diagnostics_items(results), "probes": token_probes_items(results),
            "domains": domains_items(results)}


def verdicts(results: Mapping[str, Any]) -> dict[str, str]:
    """One plain-language verdict per question, computed from `results`: examples
    {diagnostics, probes, vmoer}; tokens (`meta.unit == "token"`) {diagnostics, probes, domains},
    each the `verdict_items` sentences joined."""
    if results.get("meta", {}).get("unit") == "token":
        return {k: " ".join(v) for k, v in verdict_items(results).items()}
    return {
        "diagnostics": diagnostics_verdict(
            results.get("diagnostics", {}), results.get("power", []),
            float(results.get("meta", {}).get("config", {}).get("diagnostics", {})
                  .get("power", 0.8))),
        "probes": probes_verdict(results.get("probes", {})),
        "vmoer": vmoer_verdict(results.get("vmoer", {})),
    }
