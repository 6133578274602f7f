"""The VMoER section drawn from its results (`routecal.study.vmoer`, any source: `results["vmoer"]`
of a study, `vmoer_lm_results.json` of the LM experiment): the paper's claims, the seed-band
table's markdown, its per-router rows (`rows`: the example report's table, bars and verdict), the
accuracy interval and the LM experiment's markdown section (setting, seeds, time, the table and,
per claim, what each variational router shows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

PAPER_CLAIMS = {"stability": "+38%", "ece": "-94%", "ood_auroc": "+12%", "flops": "<1%"}
# table metric -> the paper claim it is read against
CLAIM_OF = {"stability": "stability", "ece": "ece", "ood_auroc_near": "ood_auroc",
            "ood_auroc_far": "ood_auroc", "flops_infer_pct": "flops"}  # fmt: skip
VMOER_ROUTERS = ("mfvr", "lowrank", "fcvr", "vtsr")  # the variational routers (and *_retrofit)
ROW_METRICS = ("accuracy", "stability", "ece", "ood_auroc")  # the example report's columns


def rows(vm: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The section's seed-band table (`vm["table"]`, router -> metric -> band) as one row per
    router ("det" named "deterministic"): its bands of `ROW_METRICS`, their relative changes
    against det and its FLOP overhead (the mean of `flops_overhead_pct`); [] without a table."""
    out = []
    for m, bands in vm.get("table", {}).items():
        row: dict[str, Any] = {"router": "deterministic" if m == "det" else m, "rel_change": {}}
        for metric in ROW_METRICS:
            band = bands.get(metric)
            if band is None:
                continue
            row[metric] = {k: band[k] for k in ("mean", "std", "min", "max", "n")}
            if m != "det" and band.get("rel_change_pct") is not None:
                row["rel_change"][metric] = band["rel_change_pct"]
        if "flops_overhead_pct" in bands:
            row["flops_overhead_percent"] = bands["flops_overhead_pct"]["mean"]
        out.append(row)
    return out


def accuracy_interval(accuracy: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on `n` items (`scipy.stats.binomtest`)."""
    from scipy import stats

    k = int(round(accuracy * n))
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def n_items(out: dict[str, Any]) -> int:
    """The in-domain items scored per seed (the accuracy interval's n): the section's
    `n_eval_items` (an older LM experiment's results: its data config's)."""
    return int(out["n_eval_items"] if "n_eval_items" in out
               else out["config"]["data"]["n_eval_items"])  # fmt: skip


def _settings_lines(out: dict[str, Any], names: list[str]) -> list[str]:
    """Per router and seed: the stability curve over layers at the headline sigma, the beta
    chosen on the calib split, ensemble members' final losses, SWAG iterates."""
    e = out.get("config", {}).get("experiment", {})
    if "stability_sigma" not in e:
        return []
    sig = f"{float(e['stability_sigma']):g}"
    lines = [f"Stability per MoE layer at sigma = {sig} "
             f"({e.get('stability_protocol', 'all_moe_inputs')} protocol), and the fitted "
             "settings:", "", "| router | seed | stability per layer | fitted |", "|---|---|---|---|"]
    for name in names:
        for seed, r in sorted(out["per_run"][name].items(), key=lambda x: int(x[0])):
            curve = ", ".join(f"{x:.4f}" for x in r.get(f"stability_layers_{sig}", []))
            fitted = []
            if "beta" in r:
                pairs = zip(r["beta_grid"], r["beta_calib_nll"], strict=True)
                nll = ", ".join(f"{b:g}: {v:.4f}" for b, v in pairs)
                edge = r.get("beta_at_edge")
                flag = f" **at the grid's {edge} value**" if edge else ""
                fitted.append(f"beta {r['beta']:g}{flag} (calib NLL {nll})")
            if "members" in r:
                fitted.append("members' final loss (steps) " + ", ".join(
                    f"{m['final_loss']:.4f} ({m['steps']}"
                    f"{'' if m['converged'] else ', not converged'})" for m in r["members"]))
            if "swag_n" in r:
                fitted.append(f"SWAG moments over {r['swag_n']} iterates")
            lines.append(f"| {name} | {seed} | {curve} | {'; '.join(fitted)} |")
    warned = [f"- {name}, seed {seed}: {w}" for name in names
              for seed, r in sorted(out["per_run"][name].items(), key=lambda x: int(x[0]))
              for w in r.get("warnings", [])]  # fmt: skip
    return lines + (["", "Warnings:", *warned] if warned else [])


def report(out: dict[str, Any]) -> str:
    """The markdown section of a finished run (`vmoer_lm_results.json`): setting, seeds, time,
    det's accuracy with its binomial interval, per-router time, the table and, per paper claim,
    what each VMoER router shows."""
    names, table = list(out["table"]), out["table"]
    n = n_items(out)
    seeds_ = sorted({s for runs in out["per_run"].values() for s in map(int, runs)})
    lines = [
        f"Scoring: {out.get('scoring', 'letter')}; seeds {seeds_}; {n} items per domain; "
        f"train+eval of every (router, seed): {out.get('runs_wall_s', 0) / 60:.1f} min wall, "
        f"{out.get('runs_cpu_s', 0) / 60:.1f} CPU-min (process CPU time, compilation included).",
        "",
        "det accuracy (in-domain, chance 0.25), Wilson 95% interval per seed: "
        + "; ".join(
            f"seed {s}: {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
            for s, r in sorted(out["per_run"]["det"].items(), key=lambda x: int(x[0]))
            for lo, hi in [accuracy_interval(r["accuracy"], n)]
        ),
        "",
        "| router | wall s / seed | CPU s / seed |",
        "|---|---|---|",
    ]
    for name in names:
        runs = list(out["per_run"][name].values())
        w = np.mean([r.get("wall_s", np.nan) for r in runs])
        c = np.mean([r.get("cpu_s", np.nan) for r in runs])
        lines.append(f"| {name} | {w:.0f} | {c:.0f} |")
    lines += ["", out["markdown"], "", *_settings_lines(out, names)]
    lines += ["", "What we see beside each claim (relative change vs det):"]
    vmoer_names = [x for x in names if x.removesuffix("_retrofit") in ("mfvr", "lowrank", "fcvr",
                                                                        "vtsr", "ensemble",
                                                                        "swag")]  # fmt: skip
    for metric, claim in CLAIM_OF.items():
        cells = []
        for name in vmoer_names:
            b = table[name].get(metric, {})
            if "rel_change_pct" in b:
                cells.append(f"{name} {b['rel_change_pct']:+.1f}% ({b['verdict']})")
            elif metric in table[name]:
                cells.append(f"{name} {table[name][metric]['mean']:.3f}")
        lines.append(f"- {metric} (paper {claim} {PAPER_CLAIMS[claim]}): " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def markdown(table: dict[str, dict[str, Any]], names: list[str], cols: list[str]) -> str:
    """The paper's table: per router, mean ± std [min, max] (change vs det, verdict) of `cols`,
    the seed-band rule and the paper's claims."""
    from routecal.report.table import Table
    from routecal.stats.seeds import RULE

    rows = [[n, *[band_cell(table[n].get(m), verdict=True) for m in cols]] for n in names]
    claims = ", ".join(f"{CLAIM_OF.get(k, k)} {v}" for k, v in PAPER_CLAIMS.items())
    return (Table("vmoer", "", ["router", *cols], rows).markdown() + f"\n\n{RULE}.\n\n"
            f"Paper's claims (relative to the deterministic router): {claims}.")


def band_cell(b: dict[str, Any] | None, *, verdict: bool = False) -> str:
    """One table cell of a seed band: "mean ± std [min, max]" plus "(+x.x%)" against det (and
    the band verdict when `verdict`); "n/a" when the metric is absent."""
    if not b:
        return "n/a"
    c = f"{b['mean']:.4f} ± {b['std']:.4f} [{b['min']:.4f}, {b['max']:.4f}]"
    if "rel_change_pct" in b:
        c += f" ({b['rel_change_pct']:+.1f}%, {b['verdict']})" if verdict else (
            f" ({b['rel_change_pct']:+.1f}%)")
    return c


def fitted_cell(runs: dict[Any, dict[str, Any]]) -> str:
    """What was fitted for one router over its seeds: the chosen betas with the grid edges
    flagged, and the ensemble members' plateau count and step range ("" if nothing)."""
    items = sorted(runs.items(), key=lambda x: int(x[0]))
    parts = []
    if any("beta" in r for _, r in items):
        parts.append("beta " + ", ".join(
            f"{r['beta']:g}" + (f" (grid's {r['beta_at_edge']})" if r.get("beta_at_edge") else "")
            for _, r in items if "beta" in r))  # fmt: skip
    members = [m for _, r in items for m in r.get("members", [])]
    if members:
        steps = [m["steps"] for m in members]
        parts.append(f"members plateaued {sum(bool(m['converged']) for m in members)}/"
                     f"{len(members)}, steps {min(steps)}-{max(steps)}")
    return "; ".join(parts)


def section_table(out: dict[str, Any]) -> Any:
    """The VMoER section of a study's report (`results["vmoer"]`): one row per router with det's
    in-domain accuracy interval, each paper-claim metric as a seed-band cell against det (verdict
    by the seed-band rule) and the router's wall seconds per seed."""
    from routecal.report.table import Table

    names, table = list(out["table"]), out["table"]
    n = n_items(out)
    cols = [*CLAIM_OF, "accuracy"]
    rows = []
    for name in names:
        runs = list(out["per_run"][name].values())
        acc = np.mean([r["accuracy"] for r in runs])
        lo, hi = accuracy_interval(float(acc), n)
        rows.append([name, *[band_cell(table[name].get(m), verdict=True) for m in cols],
                     f"{acc:.3f} [{lo:.3f}, {hi:.3f}]",
                     f"{np.mean([r.get('wall_s', np.nan) for r in runs]):.0f}",
                     fitted_cell(out["per_run"][name])])
    title = (f"VMoER: det vs every router on an MoE decoder, MCQA ({out.get('scoring')} scoring, "
             f"{n} items per domain, seeds {out.get('seeds')}); mean ± std [min, max] over seeds "
             f"(change vs det, seed-band rule); paper claims {PAPER_CLAIMS}")
    return Table("vmoer_summary", title,
                 ["router", *cols, "accuracy (seed mean, Wilson 95%)", "wall s / seed",
                  "fitted (per seed)"], rows)
