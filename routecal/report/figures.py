"""Report figures (matplotlib, PNG), each drawn only from a results dict (relplot's shape).

Reliability diagrams per probe, permutation nulls with the observed statistic (the nulls travel
inside `results["diagnostics"]["tests"]`), bandwidth sensitivity with seed bands, depth-attention
heatmaps and VMoER bars.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.files import workdir as workdir_io
from routecal.report import vmoer_lm

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
    workdir_io.save_figure(fig, path, dpi=90)  # atomic: temp file + rename
    plt.close(fig)


def fig_nulls(tests: Sequence[Mapping[str, Any]], path: pathlib.Path, max_panels: int = 8) -> None:
    """Permutation-null histograms (tests carrying a "null" [B]) with the observed statistic (red)."""
    plt = _plt()
    chosen = sorted((t for t in tests if t.get("null")), key=lambda t: t["p_value"])[:max_panels]
    if not chosen:
        return
    ncol = min(4, len(chosen))
    nrow = -(-len(chosen) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    for ax, t in zip(axes.flat, chosen, strict=False):
        ax.hist(np.asarray(t["null"], float), bins=40, color="0.7")
        ax.axvline(t["statistic"], color="C3", lw=2)
        ax.set_title(f"{t.get('test', '')} {t['arch']} s{t['seed']} {t['feature']}\n"
                     f"p = {t['p_value']:.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(chosen):]:
        ax.axis("off")
    fig.tight_layout()
    workdir_io.save_figure(fig, path, dpi=90)  # atomic: temp file + rename
    plt.close(fig)


def fig_power(tests: Sequence[Mapping[str, Any]], path: pathlib.Path) -> None:
    """Power of the recommended test against the planted gap, one curve per (arch, seed) cell
    (the power analysis depends on confidence and correctness only, not on the feature)."""
    plt = _plt()
    curves: dict[tuple[str, Any], Mapping[str, Any]] = {}
    for t in tests:
        if t.get("power_curve"):
            curves.setdefault((t["arch"], t["seed"]), t)
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    for (arch, seed), t in curves.items():
        ax.plot(t["power_curve"]["gap"], t["power_curve"]["power"], marker=".", lw=1,
                label=f"{arch} s{seed}")
    ax.axhline(float(next(iter(curves.values())).get("power_target", 0.8)), color="0.5", ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("planted accuracy gap (high vs low routing, equal confidence)")
    ax.set_ylabel("power")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    workdir_io.save_figure(fig, path, dpi=90)
    plt.close(fig)


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
    workdir_io.save_figure(fig, path, dpi=90)  # atomic: temp file + rename
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
    workdir_io.save_figure(fig, path, dpi=90)  # atomic: temp file + rename
    plt.close(fig)


def fig_vmoer(rows: Sequence[Mapping[str, Any]], path: pathlib.Path) -> None:
    """VMoER table as bars (mean) with min-max seed bands, one panel per metric; `rows` one per
    router (`report.vmoer_lm.rows`)."""
    plt = _plt()
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
    workdir_io.save_figure(fig, path, dpi=90)  # atomic: temp file + rename
    plt.close(fig)


def figures(results: Mapping[str, Any], fig_dir: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """Draws every figure the results support; returns (caption, path) pairs."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    out: list[tuple[str, pathlib.Path]] = []
    tests = results.get("diagnostics", {}).get("tests", [])
    specs = [
        ("reliability", results.get("probes", {}).get("reliability", {}), fig_reliability,
         "Reliability diagrams per probe (first architecture and seed, test split; marker size = "
         "bin count)"),
        ("permutation_nulls", tests, fig_nulls,
         "Permutation / sign-flip nulls (grey) with the observed statistic (red): weighted gap for "
         "the within-bin test, |Z| for the conditional test; the tests with the smallest p-values"),
        ("power_curves", tests, fig_power,
         "Power of the recommended conditional test against a planted accuracy gap between high- "
         "and low-routing examples of equal confidence, per model and seed (dashed: the target "
         "power of the minimum detectable gap)"),
        ("bandwidth_sensitivity", results.get("probes", {}).get("bandwidth_sweep", {}),
         fig_bandwidth,
         "Bandwidth sensitivity: test ECE against the Scott multiple, mean over seeds with min-max "
         "band"),
        ("depth_attention", results.get("depth_attention", {}), fig_depth,
         "Depth-attention weights per sublayer, averaged over tokens and test examples (first "
         "seed)"),
        ("vmoer", vmoer_lm.rows(results.get("vmoer", {})), fig_vmoer,
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
