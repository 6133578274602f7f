"""results.json -> report.md, report.html (self-contained), tables (CSV) and figures (PNG).

`routecal.report.write_report(workdir)` reads `W/results.json` (written by `routecal.study.run.run`
or `routecal.study.diagnose.diagnose_predictions`; everything drawn, nulls and sweeps included, is
in it), takes the sections its unit's results hold (`example_sections` here, `report.lm.sections`
for tokens) and `write_page` writes

    W/report.md      tables and verdicts, figures linked from W/figures/
    W/report.html    the same, one file, figures embedded as base64 PNG (opens offline in a browser)
    W/tables/*.csv   every table
    W/figures/*.png  reliability diagrams, permutation nulls, bandwidth sensitivity, depth heatmaps,
                     VMoER bars

Every verdict is computed from the numbers in results.json by `report.verdicts`; nothing in the
report is written by hand. Figures: `report.figures`.
"""

from __future__ import annotations

import base64
import html
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from routecal.files import workdir as workdir_io
from routecal.report import vmoer_lm
from routecal.report.figures import figures
from routecal.report.table import Table, fmt, fmt_band
from routecal.report.verdicts import diagnostics_rows, verdicts
from routecal.stats.seeds import RULE

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
    if diag.get("summary"):
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
                    for r in diag["summary"]
                ],
            )
        )
    if diag.get("tests"):
        out.append(
            Table(
                "diagnostics_tests",
                "Every test: statistic (weighted subgroup gap for the within-bin permutation test, "
                "Z for the conditional tests) and p-values (raw, Holm, BH)",
                ["test", "arch", "seed", "feature", "statistic", "p", "p (Holm)", "p (BH)"],
                [
                    [t.get("test", "-"), t["arch"], t["seed"], t["feature"], t.get("statistic"),
                     t.get("p_value"), t.get("p_holm"), t.get("p_bh")]
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
                     fmt_band(s.get("ece")), fmt_band(s.get("nll")), fmt_band(s.get("brier")),
                     fmt_band(s.get("worst_tertile_ece"))]
                    for s in probes["summary"]
                ],
            )
        )
    vm_rows = vmoer_lm.rows(results.get("vmoer", {}))
    if vm_rows:
        metrics = [m for m in vmoer_lm.ROW_METRICS if m in vm_rows[0]]
        rows = []
        for r in vm_rows:
            cells = [r["router"]] + [fmt_band(r.get(m)) for m in metrics]
            cells.append(fmt(r.get("flops_overhead_percent")))
            cells.append(
                ", ".join(f"{m} {v:+.1f}%" for m, v in r.get("rel_change", {}).items()) or "-"
            )
            rows.append(cells)
        out.append(
            Table(  # the study's own W/tables/vmoer.csv (one row per router) stays
                "vmoer_summary",
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


def read_results(workdir: str | pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(workdir) / "results.json"
    if not path.exists():
        raise ValueError(f"workdir: no results.json in {workdir}; run `routecal study` first")
    return workdir_io.read_json(path, "results")


EXAMPLE_QUESTIONS = (
    ("Do routing traces carry calibration evidence beyond confidence?", "diagnostics"),
    ("Does a routing-aware probe calibrate better than its matched controls?", "probes"),
    ("Does a variational (Bayesian) router calibrate better?", "vmoer"),
)


def example_sections(results: Mapping[str, Any], w: pathlib.Path) -> dict[str, Any]:
    """The page parts of example results (`write_page`): verdicts, tables, figures."""
    v = verdicts(results)
    return {"questions": EXAMPLE_QUESTIONS, "items": {k: [v[k]] for k in v},
            "tables": tables(results), "figures": figures(results, w / "figures"),
            "default_title": "routecal report"}


def facts(meta: Mapping[str, Any]) -> str:
    """One line: seeds, domains, wall time and peak memory when recorded, provenance."""
    bits = [f"Seeds {meta['seeds']}"] if meta.get("seeds") else []
    bits += [f"domains {meta['domains']}"] if meta.get("domains") else []
    if meta.get("wall_seconds") is not None:
        bits.append(f"wall time {meta['wall_seconds']:.0f} s from a fresh workdir")
    if meta.get("peak_rss_mb") is not None:
        bits.append(f"peak RSS {meta['peak_rss_mb']:.0f} MB")
    prov = ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
    return "; ".join(bits) + ". " * bool(bits) + f"Made by {prov}; config and every number in results.json."


def verdict_table(rows: Sequence[Mapping[str, Any]], *, markdown: bool) -> str:
    """The diagnostics verdicts as a table (domain x test: rejections raw / Holm / BH, median
    detectable gap, verdict word), each verdict's full sentence in a <details> under its word."""
    head = ["domain", "test", "rejections (raw / Holm / BH of cells)", "detectable gap (median)",
            "verdict"]
    cells = [[r["domain"], r["test"], r["rejections"], r["detectable_gap"],
              f"<details><summary>{html.escape(r['verdict'])}</summary>"
              f"{html.escape(r['sentence'])}</details>"] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                                  for row in cells])
    th = "".join(f"<th>{html.escape(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{c if i == 4 else html.escape(c)}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in cells)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def write_page(w: pathlib.Path, results: Mapping[str, Any], *, questions: Sequence[tuple[str, str]],
               items: Mapping[str, Sequence[str]], tables: Sequence[Table],
               figures: Sequence[tuple[str, pathlib.Path]], default_title: str,
               ) -> dict[str, pathlib.Path]:
    """THE renderer, for every unit: report.md, self-contained report.html (figures as base64
    PNG), tables/*.csv. The page: title, facts, the "glance" table when there is one, the
    verdicts (per question; the diagnostics' as table rows, `verdicts.diagnostics_rows`, with each
    full sentence in <details>; token items repeating those sentences are not repeated), the
    other tables, the figures."""
    (w / "tables").mkdir(exist_ok=True)
    for t in tables:
        t.write_csv(w / "tables" / f"{t.name}.csv")
    meta = results.get("meta", {})
    title, line = meta.get("title", default_title), facts(meta)
    top = [t for t in tables if t.name == "glance"]
    rest = [t for t in tables if t.name != "glance"]
    rows = diagnostics_rows(results)
    skip = len(rows) if meta.get("unit") == "token" else 0  # token items: those sentences first
    md = [f"# {title}", "", line, ""]
    md += [f"## {t.title}\n\n{t.markdown()}\n" for t in top] + ["## Verdicts", ""]
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
         f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
         f"<p>{html.escape(line)}</p>"]
    h += [f"<h2>{html.escape(t.title)}</h2>{t.html()}" for t in top] + ["<h2>Verdicts</h2>"]
    for q, k in questions:
        bullets, table_md, table_html = items.get(k, ["-"]), "", ""
        if k == "diagnostics" and rows:  # one row per (domain, test), the sentence one click away
            table_md, table_html = (verdict_table(rows, markdown=m) for m in (True, False))
            bullets = bullets[skip:]
        md += [f"**{q}**", ""] + ([table_md, ""] if table_md else [])
        md += [f"- {s}" for s in bullets] + [""]
        h.append(f"<div class='verdict'><b>{html.escape(q)}</b>{table_html}<ul>"
                 + "".join(f"<li>{html.escape(s)}</li>" for s in bullets) + "</ul></div>")
    md += [f"## {t.title}\n\n{t.markdown()}\n" for t in rest]
    md += ["## Figures", ""] + [f"![{c}](figures/{p.name})\n\n*{c}*\n" for c, p in figures]
    workdir_io.write_text(w / "report.md", "\n".join(md))
    h += [f"<h2>{html.escape(t.title)}</h2>{t.html()}" for t in rest] + ["<h2>Figures</h2>"]
    for cap, p in figures:
        b64 = base64.b64encode(p.read_bytes()).decode("ascii")
        h.append(f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{b64}'>"
                 f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    workdir_io.write_text(w / "report.html", "\n".join(h) + "</body></html>")
    return {"markdown": w / "report.md", "html": w / "report.html", "figures": w / "figures",
            "tables": w / "tables"}
