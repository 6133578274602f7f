"""results.json -> report.md, report.html (self-contained), tables (CSV) and figures (PNG).

`write_report(workdir)` reads `W/results.json` (written by `routecal.pipeline.study.run` or
`routecal.pipeline.study.diagnose_predictions`) and `W/stages/nulls.npz` (permutation nulls), and writes

    W/report.md      tables and verdicts, figures linked from W/figures/
    W/report.html    the same, one file, figures embedded as base64 PNG (opens offline in a browser)
    W/tables/*.csv   every table
    W/figures/*.png  reliability diagrams, permutation nulls, bandwidth sensitivity, depth heatmaps,
                     VMoER bars

Every verdict is computed from the numbers in results.json by `verdicts(results)`; nothing in the
report is written by hand.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.stats.seeds import seed_band  # noqa: F401 (re-exported)

ALPHA_DEFAULT = 0.05


# ----------------------------------------------------------------------------------------------
# Small helpers.
# ----------------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        if not np.isfinite(x):
            return "-"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.2e}"
        return f"{x:.{digits}f}"
    return str(x)


def _fmt_band(b: Mapping[str, float] | None, digits: int = 4) -> str:
    if not b or b.get("mean") is None or not np.isfinite(b["mean"]):
        return "-"
    if b.get("n", 1) <= 1:
        return _fmt(b["mean"], digits)
    return f"{_fmt(b['mean'], digits)} [{_fmt(b['min'], digits)}, {_fmt(b['max'], digits)}]"


class Table:
    """A titled table: header + rows of already formatted cells."""

    def __init__(self, name: str, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]):
        self.name, self.title, self.header = name, title, list(header)
        self.rows = [[_fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def write_csv(self, path: pathlib.Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.header)
            w.writerows(self.rows)


# ----------------------------------------------------------------------------------------------
# Verdicts: plain language computed from the numbers.
# ----------------------------------------------------------------------------------------------


def diagnostics_verdict(diag: Mapping[str, Any]) -> str:
    tests = diag.get("tests", [])
    if not tests:
        return "No diagnostic tests were run."
    alpha = float(diag.get("alpha", ALPHA_DEFAULT))
    n = len(tests)
    raw = sum(t["p_value"] < alpha for t in tests)
    holm = sum(t.get("p_holm", 1.0) < alpha for t in tests)
    bh = sum(t.get("p_bh", 1.0) < alpha for t in tests)
    expected = alpha * n
    if holm == 0 and bh == 0:
        head = "Routing adds no calibration evidence beyond confidence in this run"
    elif holm == 0:
        head = "Weak evidence that routing carries calibration information beyond confidence"
    else:
        head = "Routing carries calibration evidence beyond confidence in this run"
    cells = sorted(
        {(t["arch"], t["feature"]) for t in tests if t.get("p_holm", 1.0) < alpha}
    )
    where = ""
    if cells:
        where = " Holm-significant cells: " + ", ".join(f"{a}/{f}" for a, f in cells) + "."
    return (
        f"{head}: {raw} of {n} within-bin permutation tests reject at alpha = {alpha} before "
        f"adjustment (about {expected:.1f} expected under the null), {holm} after Holm, {bh} after "
        f"Benjamini-Hochberg.{where}"
    )


def _summary_lookup(summary: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], Any]:
    return {(s["arch"], s["probe"], s["bandwidth_rule"]): s for s in summary}


def probes_verdict(probes: Mapping[str, Any]) -> str:
    summary = probes.get("summary", [])
    if not summary:
        return "No probes were compared."
    look = _summary_lookup(summary)
    archs = sorted({s["arch"] for s in summary})
    parts = []
    for arch in archs:
        rule = "cv_nll"
        ar = look.get((arch, "nw_ar_condcal", rule))
        conf = look.get((arch, "nw_confidence", rule))
        ent = look.get((arch, "nw_entropy_control", rule))
        if ar is None or conf is None:
            continue
        a, c = ar["ece"], conf["ece"]
        if any(x.get(k) is None for x in (a, c) for k in ("mean", "min", "max")):
            continue
        outside = a["mean"] < c["min"] or a["mean"] > c["max"]
        n_seeds = c.get("n", 1)
        if n_seeds <= 1:
            judgement = "one seed, so no seed band to compare against"
        elif outside and a["mean"] < c["mean"]:
            judgement = "AR-CondCal leaves the confidence-only seed band (better)"
        elif outside:
            judgement = "AR-CondCal leaves the confidence-only seed band (worse)"
        else:
            judgement = "AR-CondCal stays inside the confidence-only seed band"
        ctrl = ""
        if ent is not None:
            e = ent["ece"]
            ctrl = f"; predictive-entropy control {e['mean']:.4f}"
        band = f" (band [{c['min']:.4f}, {c['max']:.4f}])" if n_seeds > 1 else ""
        parts.append(
            f"{arch}: test ECE with CV-NLL bandwidths, AR-CondCal {a['mean']:.4f} vs confidence-only "
            f"{c['mean']:.4f}{band}{ctrl}: {judgement}."
        )
        mlp_full = look.get((arch, "mlp_full", "-"))
        mlp_cap = look.get((arch, "mlp_capacity_matched", "-"))
        mlp_shuf = look.get((arch, "mlp_shuffled", "-"))
        if mlp_full and mlp_cap and mlp_shuf:
            parts.append(
                f"{arch} MLP probes (ECE): full vector {mlp_full['ece']['mean']:.4f}, "
                f"capacity-matched confidence-only {mlp_cap['ece']['mean']:.4f}, shuffled routing "
                f"{mlp_shuf['ece']['mean']:.4f}."
            )
    if not parts:
        return "No routing-based probe was comparable with its confidence-only control."
    return " ".join(parts)


def vmoer_verdict(vmoer: Mapping[str, Any]) -> str:
    rows = vmoer.get("rows", [])
    if not rows:
        return "The VMoER experiment was not run."
    base = next((r for r in rows if r["router"] == "deterministic"), None)
    if base is None:
        return "The VMoER table has no deterministic baseline."
    parts = []
    for r in rows:
        if r["router"] == "deterministic":
            continue
        bits = []
        for metric, better in (("stability", "higher"), ("ece", "lower"), ("ood_auroc", "higher")):
            if metric not in r or metric not in base:
                continue
            m, b = r[metric], base[metric]
            if not (np.isfinite(m["mean"]) and np.isfinite(b["mean"])) or b["mean"] == 0:
                continue
            rel = 100.0 * (m["mean"] - b["mean"]) / abs(b["mean"])
            overlap = not (m["min"] > b["max"] or m["max"] < b["min"])
            improved = (m["mean"] > b["mean"]) == (better == "higher")
            word = "better" if improved else "worse"
            if min(m.get("n", 1), b.get("n", 1)) <= 1:
                band = "one seed, no band"
            else:
                band = "seed bands overlap" if overlap else "seed bands separate"
            bits.append(f"{metric} {rel:+.1f}% ({word}, {band})")
        if "flops_overhead_percent" in r:
            bits.append(f"FLOP overhead {r['flops_overhead_percent']:.2f}%")
        parts.append(f"{r['router']}: " + ", ".join(bits))
    return "Against the deterministic router: " + "; ".join(parts) + "."


def verdicts(results: Mapping[str, Any]) -> dict[str, str]:
    """One plain-language verdict per question, computed from `results`."""
    return {
        "diagnostics": diagnostics_verdict(results.get("diagnostics", {})),
        "probes": probes_verdict(results.get("probes", {})),
        "vmoer": vmoer_verdict(results.get("vmoer", {})),
    }


# ----------------------------------------------------------------------------------------------
# Tables.
# ----------------------------------------------------------------------------------------------


def tables(results: Mapping[str, Any]) -> list[Table]:
    """All report tables built from `results`."""
    out: list[Table] = []
    runs = results.get("runs", [])
    if runs:
        out.append(
            Table(
                "runs",
                "Trained models (test split)",
                ["arch", "seed", "accuracy", "ECE", "NLL", "train time (s)"],
                [
                    [r["arch"], r["seed"], r.get("test_accuracy"), r.get("test_ece"),
                     r.get("test_nll"), r.get("train_seconds")]
                    for r in runs
                ],
            )
        )
    diag = results.get("diagnostics", {})
    if diag.get("rejections"):
        out.append(
            Table(
                "diagnostics_summary",
                f"Within-bin permutation tests: rejections at alpha = {diag.get('alpha', 0.05)} "
                f"across seeds (B = {diag.get('n_permutations')})",
                ["arch", "routing feature", "seeds", "reject (raw)", "reject (Holm)",
                 "reject (BH)", "weighted gap (mean)", "min p"],
                [
                    [r["arch"], r["feature"], r["n_seeds"], r["n_reject_raw"], r["n_reject_holm"],
                     r["n_reject_bh"], r.get("mean_statistic"), r.get("min_p")]
                    for r in diag["rejections"]
                ],
            )
        )
    if diag.get("tests"):
        out.append(
            Table(
                "diagnostics_tests",
                "Every test: weighted subgroup gap and p-values (raw, Holm, BH)",
                ["arch", "seed", "feature", "weighted gap", "p", "p (Holm)", "p (BH)"],
                [
                    [t["arch"], t["seed"], t["feature"], t["statistic"], t["p_value"],
                     t.get("p_holm"), t.get("p_bh")]
                    for t in diag["tests"]
                ],
            )
        )
    probes = results.get("probes", {})
    if probes.get("summary"):
        out.append(
            Table(
                "probes",
                "Post-hoc probes on the test split: mean [min, max] over seeds (oracle = test-set "
                "ECE bandwidth, an optimistic bound)",
                ["arch", "probe", "bandwidth rule", "ECE", "NLL", "Brier", "worst-tertile ECE"],
                [
                    [s["arch"], s["probe"],
                     s["bandwidth_rule"] + (" (optimistic)" if s.get("optimistic") else ""),
                     _fmt_band(s.get("ece")), _fmt_band(s.get("nll")), _fmt_band(s.get("brier")),
                     _fmt_band(s.get("worst_tertile_ece"))]
                    for s in probes["summary"]
                ],
            )
        )
    vm = results.get("vmoer", {})
    if vm.get("rows"):
        metrics = [m for m in ("accuracy", "stability", "ece", "ood_auroc") if m in vm["rows"][0]]
        rows = []
        for r in vm["rows"]:
            cells = [r["router"]] + [_fmt_band(r.get(m)) for m in metrics]
            cells.append(_fmt(r.get("flops_overhead_percent")))
            cells.append(
                ", ".join(f"{m} {v:+.1f}%" for m, v in r.get("rel_change", {}).items()) or "-"
            )
            rows.append(cells)
        out.append(
            Table(
                "vmoer",
                "VMoER vs deterministic routing: mean [min, max] over seeds",
                ["router", *metrics, "FLOP overhead (%)", "relative change vs deterministic"],
                rows,
            )
        )
    return out


# ----------------------------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_reliability(rel: Mapping[str, Mapping[str, Sequence[float]]], path: pathlib.Path) -> None:
    """Reliability diagram per probe: accuracy vs mean confidence per bin, bar width by count."""
    plt = _plt()
    names = list(rel)
    ncol = min(4, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.0 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        r = rel[name]
        conf = np.asarray(r["mean_confidence"], float)
        acc = np.asarray(r["accuracy"], float)
        cnt = np.asarray(r["count"], float)
        keep = cnt > 0
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        ax.scatter(conf[keep], acc[keep], s=10 + 60 * cnt[keep] / cnt.max(), color="C0")
        ax.plot(conf[keep], acc[keep], color="C0", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fig_nulls(
    nulls: Mapping[str, np.ndarray], tests: Sequence[Mapping[str, Any]], path: pathlib.Path,
    max_panels: int = 8,
) -> None:
    """Permutation-null histograms with the observed weighted gap (red line)."""
    plt = _plt()
    chosen = sorted(tests, key=lambda t: t["p_value"])[:max_panels]
    chosen = [t for t in chosen if _null_key(t) in nulls]
    if not chosen:
        return
    ncol = min(4, len(chosen))
    nrow = -(-len(chosen) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    for ax, t in zip(axes.flat, chosen, strict=False):
        null = np.asarray(nulls[_null_key(t)])
        ax.hist(null, bins=40, color="0.7")
        ax.axvline(t["statistic"], color="C3", lw=2)
        ax.set_title(f"{t['arch']} s{t['seed']} {t['feature']}\np = {t['p_value']:.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _null_key(t: Mapping[str, Any]) -> str:
    return f"{t['arch']}|{t['seed']}|{t['feature']}"


def fig_bandwidth(sweep: Mapping[str, Any], path: pathlib.Path) -> None:
    """Test ECE vs Scott multiple for each NW probe: mean over seeds with the min-max band."""
    plt = _plt()
    archs = list(sweep)
    if not archs:
        return
    fig, axes = plt.subplots(1, len(archs), figsize=(4.2 * len(archs), 3.2), squeeze=False)
    for ax, arch in zip(axes.flat, archs, strict=False):
        s = sweep[arch]
        m = np.asarray(s["multiples"], float)
        for i, (probe, per_seed) in enumerate(s["ece"].items()):
            v = np.asarray(per_seed, float)  # [seeds, multiples]
            ax.plot(m, v.mean(0), color=f"C{i}", label=probe, lw=1.5)
            if v.shape[0] > 1:
                ax.fill_between(m, v.min(0), v.max(0), color=f"C{i}", alpha=0.2)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xticks(m, [f"{x:g}" for x in m], fontsize=7)
        ax.set_xlabel("bandwidth / Scott", fontsize=8)
        ax.set_ylabel("test ECE", fontsize=8)
        ax.set_title(arch, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fig_depth(depth: Mapping[str, Any], path: pathlib.Path) -> None:
    """Per-layer depth-attention heatmaps: rows = sublayers, columns = sources, colour = mean weight."""
    plt = _plt()
    archs = [a for a in depth if np.asarray(depth[a]["alpha_mean"]).size]
    if not archs:
        return
    fig, axes = plt.subplots(1, len(archs), figsize=(4.0 * len(archs), 3.6), squeeze=False)
    for ax, arch in zip(axes.flat, archs, strict=False):
        a = np.asarray(depth[arch]["alpha_mean"], float).copy()
        ns = np.asarray(depth[arch]["n_sources"], int)
        for i, k in enumerate(ns):
            a[i, k:] = np.nan
        im = ax.imshow(a, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_xlabel("source (0 = embedding)", fontsize=8)
        ax.set_ylabel("sublayer", fontsize=8)
        names = depth[arch].get("sublayer_names")
        if names is not None and len(names) <= 20:
            ax.set_yticks(range(len(names)), [str(n) for n in names], fontsize=6)
        ax.set_title(arch, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fig_vmoer(vm: Mapping[str, Any], path: pathlib.Path) -> None:
    """VMoER table as bars (mean) with min-max seed bands, one panel per metric."""
    plt = _plt()
    rows = vm.get("rows", [])
    metrics = [m for m in ("accuracy", "stability", "ece", "ood_auroc") if rows and m in rows[0]]
    if not metrics:
        return
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.0), squeeze=False)
    names = [r["router"] for r in rows]
    for ax, metric in zip(axes.flat, metrics, strict=False):
        mean = np.array([r[metric]["mean"] for r in rows])
        lo = mean - np.array([r[metric]["min"] for r in rows])
        hi = np.array([r[metric]["max"] for r in rows]) - mean
        ax.bar(range(len(rows)), mean, yerr=[lo, hi], color=[f"C{i}" for i in range(len(rows))],
               capsize=3)
        ax.set_xticks(range(len(rows)), names, rotation=35, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def figures(results: Mapping[str, Any], nulls: Mapping[str, np.ndarray], fig_dir: pathlib.Path
            ) -> list[tuple[str, pathlib.Path]]:
    """Draws every figure the results support; returns (caption, path) pairs."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, pathlib.Path]] = []
    tests = results.get("diagnostics", {}).get("tests", [])
    vm = results.get("vmoer", {})
    specs = [
        ("reliability", results.get("probes", {}).get("reliability", {}), fig_reliability,
         "Reliability diagrams per probe (first architecture and seed, test split; marker size = "
         "bin count)"),
        ("permutation_nulls", nulls if tests else {}, lambda n, p: fig_nulls(n, tests, p),
         "Within-bin permutation nulls of the weighted gap (grey) with the observed statistic "
         "(red), the tests with the smallest p-values"),
        ("bandwidth_sensitivity", results.get("probes", {}).get("bandwidth_sweep", {}),
         fig_bandwidth,
         "Bandwidth sensitivity: test ECE against the Scott multiple, mean over seeds with min-max "
         "band"),
        ("depth_attention", results.get("depth_attention", {}), fig_depth,
         "Depth-attention weights per sublayer, averaged over tokens and test examples (first "
         "seed)"),
        ("vmoer", vm if vm.get("rows") else {}, fig_vmoer,
         "VMoER vs deterministic routing: mean with min-max seed band"),
    ]
    for name, data, draw, caption in specs:
        if not data:
            continue
        p = fig_dir / f"{name}.png"
        draw(data, p)
        if p.exists():
            out.append((caption, p))
    return out


# ----------------------------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.verdict{background:#f6f8fa;border-left:4px solid #4a7;padding:0.6em 1em;margin:0.5em 0}
img{max-width:100%} figure{margin:1.5em 0} figcaption{font-size:0.85em;color:#555}
"""


def load_nulls(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    path = workdir / "stages" / "nulls.npz"
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def write_report(workdir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes report.md, report.html, tables/*.csv and figures/*.png from W/results.json.

    Returns:
      dict with the paths of "markdown", "html", "figures" (directory) and "tables" (directory).
    """
    w = pathlib.Path(workdir)
    res_path = w / "results.json"
    if not res_path.exists():
        raise ValueError(f"workdir: no results.json in {w}; run `routecal study` first")
    results = json.loads(res_path.read_text())
    verdict = verdicts(results)
    tabs = tables(results)
    figs = figures(results, load_nulls(w), w / "figures")
    tab_dir = w / "tables"
    tab_dir.mkdir(exist_ok=True)
    for t in tabs:
        t.write_csv(tab_dir / f"{t.name}.csv")

    meta = results.get("meta", {})
    title = meta.get("title", "routecal report")
    questions = [
        ("Do routing traces carry calibration evidence beyond confidence?", "diagnostics"),
        ("Does a routing-aware probe calibrate better than its matched controls?", "probes"),
        ("Does a variational (Bayesian) router calibrate better?", "vmoer"),
    ]
    md = [f"# {title}", ""]
    prov = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    if prov:
        md += [f"Made by {prov}; config and every number in `results.json`.", ""]
    md += ["## Verdicts", ""]
    for q, k in questions:
        md += [f"**{q}** {verdict[k]}", ""]
    for t in tabs:
        md += [f"## {t.title}", "", t.markdown(), ""]
    md += ["## Figures", ""]
    for cap, p in figs:
        md += [f"![{cap}](figures/{p.name})", "", f"*{cap}*", ""]
    md_path = w / "report.md"
    md_path.write_text("\n".join(md))

    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if prov:
        h.append(f"<p>Made by {html.escape(prov)}; config and every number in results.json.</p>")
    h.append("<h2>Verdicts</h2>")
    for q, k in questions:
        h.append(f"<div class='verdict'><b>{html.escape(q)}</b> {html.escape(verdict[k])}</div>")
    for t in tabs:
        h.append(f"<h2>{html.escape(t.title)}</h2>{t.html()}")
    h.append("<h2>Figures</h2>")
    for cap, p in figs:
        b64 = base64.b64encode(p.read_bytes()).decode("ascii")
        h.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                 f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    h.append("</body></html>")
    html_path = w / "report.html"
    html_path.write_text("\n".join(h))
    return {"markdown": md_path, "html": html_path, "figures": w / "figures", "tables": tab_dir}


def to_json(obj: Any) -> Any:
    """Recursively converts numpy scalars/arrays to JSON-serialisable Python objects."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if hasattr(obj, "__array__") and not isinstance(obj, str):
        return to_json(np.asarray(obj))
    return obj


def dumps(obj: Any) -> str:
    buf = io.StringIO()
    json.dump(to_json(obj), buf, indent=1, sort_keys=False)
    return buf.getvalue()
