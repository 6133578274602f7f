"""The LM study's verdicts, computed from results.json: each names its control, its power and the
seed-band rule (`routecal.stats.seeds.RULE`); nothing here is typed by hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.report.validity_note import paper_test_caveat
from routecal.stats import seeds

RULE_SENTENCE = seeds.RULE[0].upper() + seeds.RULE[1:]
CONTROLS = {
    "within_bin": "control: the within-bin permutation null (tokens exchangeable within confidence "
    "bins; tokens of one sequence are not, so its level is not controlled here: compare its "
    "power curve at the smallest planted gap with alpha)",
    "conditional": "control: the null of the recommended test with whole clusters (documents or "
    "packed rows, diagnostics.cluster_unit) flipped together",
    "omnibus": "control: the omnibus test's null (the same sign flips of whole clusters)",
}


def _mdg_text(power: Sequence[Mapping[str, Any]], test: str, domain: str, level: float) -> str:
    vals = [p["mdg"] for p in power if p["test"] == test and p["domain"] == domain]
    found = [v for v in vals if v is not None]
    if not vals:
        return "power not computed"
    if not found:
        return f"no planted gap reached {level:.0%} power (power too low to call a null)"
    lo, hi, med = min(found), max(found), float(np.median(found))
    miss = f"; {len(vals) - len(found)} cells reached no gap" if len(found) < len(vals) else ""
    return (f"power: detects planted gaps >= {med:.3f} (median over models and seeds, range "
            f"[{lo:.3f}, {hi:.3f}]) with {level:.0%} power{miss}")


def _mdg_median(power: Sequence[Mapping[str, Any]], test: str, domain: str) -> str:
    """The detectable gap's median over cells ("-": not computed; "none": no gap reached)."""
    vals = [p["mdg"] for p in power if p["test"] == test and p["domain"] == domain]
    found = [v for v in vals if v is not None]
    return "-" if not vals else "none" if not found else f"{float(np.median(found)):.3f}"


def diagnostics_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One verdict row per (domain, test): {domain, test, rejections ("raw / Holm / BH of n"),
    detectable gap (median over cells), verdict (word), sentence (the full verdict: rejections
    against the alpha * n expected under the null, the test's control, its minimum detectable
    gap, the seed-band comparison of the statistic with its null)}."""
    diag = results.get("diagnostics", {})
    rows = diag.get("tests", [])
    alpha = float(diag.get("alpha", 0.05))
    level = float(results.get("meta", {}).get("config", {}).get("diagnostics", {})
                  .get("power", 0.8))
    power = results.get("power", [])
    out = []
    for domain in dict.fromkeys(r["domain"] for r in rows):
        for test in dict.fromkeys(r["test"] for r in rows):
            ts = [r for r in rows if r["domain"] == domain and r["test"] == test]
            if not ts:
                continue
            raw = sum(r["p_value"] < alpha for r in ts)
            holm = sum(r["p_holm"] < alpha for r in ts)
            bh = sum(r["p_bh"] < alpha for r in ts)
            head = ("evidence that routing carries calibration information beyond confidence"
                    if holm else "weak evidence (BH only)" if bh else "no evidence")
            where = sorted({f"{r['arch']}/{r['feature']}" for r in ts if r["p_holm"] < alpha})
            summ = [s for s in diag.get("summary", []) if s["domain"] == domain
                    and s["test"] == test and "vs_null" in s]
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
            sentence = (
                f"{domain} domain, {test} test: {head}: {raw} of {len(ts)} reject at alpha = "
                f"{alpha} (about {alpha * len(ts):.1f} expected under the null), {holm} after "
                f"Holm, {bh} after BH"
                + (f" (Holm: {', '.join(where)})" if where else "")
                + f"; {CONTROLS.get(test, 'control: ' + test)}; "
                + _mdg_text(power, test, domain, level) + band + "."
            )
            out.append({"domain": domain, "test": test,
                        "rejections": f"{raw} / {holm} / {bh} of {len(ts)}",
                        "detectable_gap": _mdg_median(power, test, domain),
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


def _look(summary: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], Any]:
    return {(s["arch"], s["probe"], s["bandwidth_rule"]): s for s in summary}


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


def probes_items(results: Mapping[str, Any]) -> list[str]:
    """Per domain and AttnRes model: AR-CondCal vs confidence-only NW (CV-NLL bandwidths) and the
    full-vector MLP vs its capacity-matched and shuffled-across-sequences controls, by the rule."""
    domains = results.get("probes", {}).get("domains", {})
    parts = []
    for domain, dom in domains.items():
        look = _look(dom.get("summary", []))
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
    return {
        "diagnostics": diagnostics_items(results),
        "probes": probes_items(results),
        "domains": domains_items(results),
    }


def verdicts(results: Mapping[str, Any]) -> dict[str, str]:
    """One plain-language verdict per question, computed from `results`."""
    return {k: " ".join(v) for k, v in verdict_items(results).items()}
