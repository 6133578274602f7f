"""The sections of token results (the LM study) for the one renderer (`render.write_page`):
the "At a glance" table, the runs, diagnostics, power, per-domain probe, temperature and VMoER
tables, and the figures: power curves, permutation nulls with the observed statistic, reliability
diagrams and bandwidth sensitivity per domain, depth-attention heatmaps per domain. Drawn only
from the results dict (`report.figures` draws the shared kinds).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.files import workdir as workdir_io
from routecal.report import vmoer_lm
from routecal.report.figures import _plt, fig_bandwidth, fig_depth, fig_nulls, fig_reliability
from routecal.report.table import Table, fmt_band
from routecal.report.verdicts import verdict_items
from routecal.stats import seeds

QUESTIONS = (
    ("Do routing traces carry calibration evidence beyond confidence, token by token?",
     "diagnostics"),
    ("Does a routing-aware probe calibrate tokens better than its matched controls?", "probes"),
    ("Does routing carry more evidence under domain shift?", "domains"),
)


def glance(results: Mapping[str, Any]) -> Table | None:
    """The first table: per domain, accuracy and ECE, each test's Holm rejections and median
    minimum detectable gap, and AR-CondCal's seed-band verdicts against NW on confidence."""
    domains = results.get("meta", {}).get("domains", {})
    rows = results.get("diagnostics", {}).get("tests", [])
    if not domains or not results.get("runs"):
        return None
    tests = list(dict.fromkeys(r["test"] for r in rows))
    alpha = float(results.get("diagnostics", {}).get("alpha", 0.05))
    probes = results.get("probes", {}).get("domains", {})
    clusters = results.get("diagnostics", {}).get("clusters", {})
    body = []
    for d, split in domains.items():
        runs = [r["splits"][split] for r in results["runs"] if split in r.get("splits", {})]
        cells = [d, float(np.mean([r["accuracy"] for r in runs])),
                 float(np.mean([r["ece"] for r in runs]))]
        for test in tests:
            ts = [r for r in rows if r["domain"] == d and r["test"] == test]
            mdg = [p["mdg"] for p in results.get("power", []) if p["domain"] == d
                   and p["test"] == test and p.get("mdg") is not None]
            cells.append(f"{sum(r['p_holm'] < alpha for r in ts)} of {len(ts)}; "
                         + (f"{np.median(mdg):.3f}" if mdg else "-"))
        look = {(s["arch"], s["probe"], s["bandwidth_rule"]): s
                for s in probes.get(d, {}).get("summary", [])}
        verdict = []
        for arch in dict.fromkeys(a for a, _, _ in look):
            ar, cf = look.get((arch, "nw_ar_condcal", "cv_nll")), look.get(
                (arch, "nw_confidence", "cv_nll"))
            if ar and cf and np.isfinite(ar["ece"]["mean"]) and np.isfinite(cf["ece"]["mean"]):
                v = seeds.compare_bands(ar["ece"], cf["ece"], higher_is_better=False)
                verdict.append(f"{arch}: {v}")
        cells.append("; ".join(verdict) or "-")
        cells.insert(3, cluster_text(clusters.get(d)))
        body.append(cells)
    head = ["domain", "accuracy", "ECE", "clusters: unit, number (effective)",
            *[f"{t} test: Holm rejections; MDG" for t in tests],
            "AR-CondCal vs NW-confidence (seed-band rule)"]
    return Table("glance", "At a glance (means over models and seeds; MDG = minimum detectable "
                 "gap at the target power, median)", head, body)


def cluster_text(c: Mapping[str, Any] | None) -> str:
    """"document: 12 (effective 8.3)" from a domain's `diagnostics.clusters` entry (ranges over
    cells when they differ); "-" when absent (results of an older routecal)."""
    if not c:
        return "-"

    def rng(v: Sequence[float], fmt: str) -> str:
        return format(v[0], fmt) if v[0] == v[1] else f"{v[0]:{fmt}}-{v[1]:{fmt}}"

    return (f"{c['cluster_unit']}: {rng(c['n_clusters'], 'd')} "
            f"(effective {rng(c['n_eff_clusters'], '.1f')})")


def tables(results: Mapping[str, Any]) -> list[Table]:
    """At a glance, runs, diagnostics summary, power, and per-domain probe tables."""
    first = glance(results)
    out = [first] if first else []
    domains = results.get("meta", {}).get("domains", {})
    runs = results.get("runs", [])
    if runs:
        head = ["arch", "seed"] + [f"{d} acc / ECE (tokens)" for d in domains] + ["train s"]
        out.append(Table("runs", "Trained decoders: next-token accuracy and ECE per domain", head, [
            [r["arch"], r["seed"], *[
                f"{r['splits'][s]['accuracy']:.3f} / {r['splits'][s]['ece']:.4f} "
                f"({r['splits'][s]['n_tokens']})" if s in r["splits"] else "-"
                for s in domains.values()], r.get("train_seconds")] for r in runs]))
    diag = results.get("diagnostics", {})
    if diag.get("summary"):
        out.append(Table(
            "diagnostics", f"Token diagnostics: rejections at alpha = {diag.get('alpha')} over "
            f"seeds (Holm and BH within each test x domain), B = {diag.get('n_permutations')}",
            ["test", "domain", "arch", "routing summary", "seeds", "reject", "Holm", "BH",
             "statistic (mean)", "min p", "vs null (seed-band rule)"],
            [[s["test"], s["domain"], s["arch"], s["feature"], s["n_seeds"], s["n_reject_raw"],
              s["n_reject_holm"], s["n_reject_bh"], s["mean_statistic"], s["min_p"],
              s.get("vs_null", "-")] for s in diag["summary"]]))
    if results.get("power"):
        out.append(Table(
            "power", "Minimum detectable gap per test (planted gap detected with the target power)",
            ["test", "domain", "arch", "seed", "minimum detectable gap"],
            [[p["test"], p["domain"], p["arch"], p["seed"], p.get("mdg")]
             for p in results["power"]]))
    for d, dom in results.get("probes", {}).get("domains", {}).items():
        out.append(Table(
            f"probes_{d}", f"Probes fitted on calib tokens, scored on the {d} domain "
            f"({dom.get('n_test')} tokens): mean [min, max] over seeds (oracle = optimistic)",
            ["arch", "probe", "bandwidth rule", "ECE", "NLL", "Brier", "worst-tertile ECE"],
            [[s["arch"], s["probe"], s["bandwidth_rule"] + (" (optimistic)" if s.get(
                "optimistic") else ""), fmt_band(s.get("ece")), fmt_band(s.get("nll")),
              fmt_band(s.get("brier")), fmt_band(s.get("worst_tertile_ece"))]
             for s in dom["summary"]]))
    timing = results.get("probes", {}).get("seconds", [])
    if timing:
        out.append(Table("probe_seconds", "Probe time (NW under every bandwidth rule; sweep)",
                         ["arch", "seed", "calib tokens", "compare s", "sweep s"],
                         [[t["arch"], t["seed"], t["n_calib"], t["compare_seconds"], t["sweep_seconds"]]
                          for t in timing]))
    temps = results.get("probes", {}).get("temperature", [])
    if temps:
        out.append(Table(
            "temperature", "Temperature scaling: T fitted on the calib tokens' recomputed logits "
            "(multiclass NLL; its rows are the probe 'temperature' above)",
            ["arch", "seed", "T", "at bound", "calib tokens", "calib token NLL before",
             "after", "stage s"],
            [[t["arch"], t["seed"], t["temperature"], t["at_bound"], t["n_calib"],
              t["calib_token_nll"]["before"], t["calib_token_nll"]["after"], t.get("seconds")]
             for t in temps]))
    if results.get("vmoer"):  # the VMoER section (all numbers: tables/vmoer.csv)
        out.append(vmoer_lm.section_table(results["vmoer"]))
    return out


def fig_power(power: Sequence[Mapping[str, Any]], path: pathlib.Path) -> None:
    """Power against planted gap, one panel per domain, one curve per (test, arch, seed)."""
    plt = _plt()
    curves = [p for p in power if p.get("curve")]
    domains = list(dict.fromkeys(p["domain"] for p in curves))
    if not domains:
        return
    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 3.3), squeeze=False)
    tests = list(dict.fromkeys(p["test"] for p in curves))
    for ax, d in zip(axes.flat, domains, strict=False):
        for p in (p for p in curves if p["domain"] == d):
            c = tests.index(p["test"])
            ax.plot(p["curve"]["gap"], p["curve"]["power"], color=f"C{c}", lw=1, alpha=0.7,
                    label=p["test"])
        ax.axhline(0.8, color="0.5", ls="--", lw=1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("planted gap", fontsize=8)
        ax.set_ylabel("power", fontsize=8)
        ax.set_title(f"{d} domain", fontsize=9)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=True))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    fig.tight_layout()
    workdir_io.save_figure(fig, path, dpi=90)  # atomic: temp file + rename
    plt.close(fig)


def figures(results: Mapping[str, Any], fig_dir: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """Draws every figure the results support; returns (caption, path) pairs in page order."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    specs: list[tuple[str, Any, Any, str]] = [
        ("power", results.get("power", []), fig_power,
         "Power curves: rejection rate against the planted gap per test (dashed: target power)"),
    ]
    rows = results.get("diagnostics", {}).get("tests", [])
    for test in dict.fromkeys(r["test"] for r in rows):
        specs.append((f"nulls_{test}", [r for r in rows if r["test"] == test], fig_nulls,
                      f"Nulls of the {test} test (grey) with the observed statistic (red): the "
                      "cells with the smallest p-values, any domain"))
    probes = results.get("probes", {}).get("domains", {})
    for d, dom in probes.items():
        rel = dom.get("reliability", {})
        arch = next(iter(rel), None)
        if arch:
            specs.append((f"reliability_{d}", rel[arch], fig_reliability,
                          f"Reliability diagrams, {d} domain ({arch}, first seed; marker size = "
                          "tokens in the bin)"))
        specs.append((f"bandwidth_{d}", dom.get("sweep", {}), fig_bandwidth,
                      f"Bandwidth sensitivity, {d} domain: test ECE against the Scott multiple, "
                      "mean over seeds with min-max band"))
    for d, depth in results.get("depth_attention", {}).items():
        specs.append((f"depth_{d}", depth, fig_depth,
                      f"Depth-attention weights per sublayer, {d} domain (first seed)"))
    out = []
    for name, data, draw, caption in (s for s in specs if s[1]):  # skip figures without data
        path = fig_dir / f"{name}.png"
        draw(data, path)
        out += [(caption, path)] if path.exists() else []
    return out


def sections(results: Mapping[str, Any], w: pathlib.Path) -> dict[str, Any]:
    """The page parts of token results (`render.write_page`): verdicts, tables, figures."""
    return {"questions": QUESTIONS, "items": verdict_items(results), "tables": tables(results),
            "figures": figures(results, w / "figures"), "default_title": "routecal LM study"}
