"""results.json -> report.md, report.html (self-contained), tables (CSV) and figures (PNG).

`write_report(workdir)` reads `W/results.json` (written by `routecal.study.run.run` or
`routecal.study.diagnose.diagnose_predictions`; everything drawn, nulls and sweeps included, is in
it) and writes

    W/report.md      tables and verdicts, figures linked from W/figures/
    W/report.html    the same, one file, figures embedded as base64 PNG (opens offline in a browser)
    W/tables/*.csv   every table
    W/figures/*.png  reliability diagrams, permutation nulls, bandwidth sensitivity, depth heatmaps,
                     VMoER bars

Every verdict is computed from the numbers in results.json by `report.verdicts.verdicts`; nothing
in the report is written by hand. Figures: `report.figures`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.files import workdir as workdir_io
from routecal.report.figures import figures
from routecal.report.verdicts import verdicts
from routecal.stats.seeds import RULE

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
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(self.header)
        w.writerows(self.rows)
        workdir_io.write_text(path, buf.getvalue())  # atomic: temp file + rename


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
                f"Diagnostic tests: rejections at alpha = {diag.get('alpha', 0.05)} "
                f"across seeds (B = {diag.get('n_permutations')})",
                ["test", "arch", "routing feature", "seeds", "reject (raw)", "reject (Holm)",
                 "reject (BH)", "weighted gap (mean)", "min p", f"gap vs null mean ({RULE})"],
                [
                    [r.get("test", "-"), r["arch"], r["feature"], r["n_seeds"], r["n_reject_raw"],
                     r["n_reject_holm"], r["n_reject_bh"], r.get("mean_statistic"), r.get("min_p"),
                     r.get("vs_null", "-")]
                    for r in diag["rejections"]
                ],
            )
        )
    if diag.get("tests"):
        out.append(
            Table(
                "diagnostics_tests",
                "Every test: statistic (weighted subgroup gap for the within-bin permutation test, "
                "|Z| for the conditional test) and p-values (raw, Holm, BH); the minimum "
                "detectable gap (80% power, recommended test) on each cell's data",
                ["test", "arch", "seed", "feature", "statistic", "p", "p (Holm)", "p (BH)",
                 "detectable gap"],
                [
                    [t.get("test", "-"), t["arch"], t["seed"], t["feature"], t.get("statistic"),
                     t.get("p_value"), t.get("p_holm"), t.get("p_bh"),
                     t.get("minimum_detectable_gap")]
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


def write_report(workdir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes report.md, report.html, tables/*.csv and figures/*.png from W/results.json.

    Returns:
      dict with the paths of "markdown", "html", "figures" (directory) and "tables" (directory).
    """
    w = pathlib.Path(workdir)
    res_path = w / "results.json"
    if not res_path.exists():
        raise ValueError(f"workdir: no results.json in {w}; run `routecal study` first")
    results = workdir_io.read_json(res_path, "results")
    verdict = verdicts(results)
    tabs = tables(results)
    figs = figures(results, w / "figures")
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
    workdir_io.write_text(md_path, "\n".join(md))

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
    workdir_io.write_text(html_path, "\n".join(h))
    return {"markdown": md_path, "html": html_path, "figures": w / "figures", "tables": tab_dir}
