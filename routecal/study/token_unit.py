"""The token unit of the study (language models, `configs/study_lm.py`): stage order and results.

`study.run` drives it (the same driver as the example unit, `study.example_unit`). Per (model,
seed): `run:` (train a decoder, or import the `hf` source, and write its token predictions,
`token_stages`) and `summary:`; then, as the plan's sections say: one `diag:` stage per (domain,
model, seed, routing summary), `power:` per cell of the first `diagnostics.power_seeds` seeds,
`probes:` and `temperature:` per run (`study.temperature`, from the reloaded decoder). The
recommended test's clusters are documents by default (`diagnostics.cluster_unit`, "document" or
"row"); token predictions without `doc_id` stop the diagnostics with an error naming the fix.

`assemble` gathers every stage's numbers, adjusted and summarised, into results.json:

    meta          title, source, unit, config, versions, seeds, domains, wall_seconds (fresh
                  runs), stage_seconds, peak_rss_mb, devices
    runs          per (arch, seed): tokens, accuracy, ECE per split; train/predict seconds
    diagnostics   tests: one row per (test, domain, arch, seed, feature) with p, Holm and BH
                  p-values (per (test, domain) family), the cluster unit, number of clusters and
                  effective number (sum n)^2 / sum n^2 and, for the `n_null_figures` smallest
                  p-values of each test, the permutation null [B]; summary: rejection counts and
                  seed bands per (test, domain, arch, feature); clusters: per domain the unit
                  and the range over cells of the cluster count and effective count; settings
    power         one row per (test, domain, arch, seed): minimum detectable gap, power curve
    probes        per domain: rows, summary (seed bands, `probes.compare.summarise_probes`),
                  bandwidth sweep, reliability curves (first seed), NW seconds; temperature:
                  T per (arch, seed) (its rows, probe "temperature", sit with the others)
    depth_attention  per domain per arch: mean depth weights (first seed) when predictions hold them
"""

from __future__ import annotations

import functools
import pathlib
import resource
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from routecal.files import predictions
from routecal.files import workdir as workdir_io
from routecal.probes import compare
from routecal.study import grid, temperature, token_stages
from routecal.study.plan import Plan
from routecal.study.stages import Stages, versions


def stage_seconds(st: Stages) -> dict[str, float]:
    out = {}
    for p in sorted(st.dir.glob("*.json")):
        v = st.load(p.stem)
        if isinstance(v, dict) and isinstance(v.get("seconds"), int | float):
            out[p.stem] = float(v["seconds"])
    return out


def _probes(plan: Plan, st: Stages) -> dict[str, Any]:
    per_domain: dict[str, Any] = {}
    for m in plan.routed:
        for i, s in enumerate(plan.seeds):
            out = st.load(f"probes:{m.name}:{s}")
            for r in out["rows"]:
                dom = per_domain.setdefault(r["domain"], {"rows": [], "sweep": {},
                                                          "reliability": {}, "n_test": 0})
                dom["rows"].append({**r, "arch": m.name, "seed": s})
            for d, sw in out["sweep"].items():
                entry = per_domain[d]["sweep"].setdefault(
                    m.name, {"multiples": list(plan.sweep_multiples), "ece": {}})
                for probe, eces in sw.items():
                    entry["ece"].setdefault(probe, []).append(eces)
            for d in out["n_test"]:
                per_domain[d]["n_test"] = out["n_test"][d]
                if i == 0:
                    per_domain[d]["reliability"][m.name] = out["reliability"][d]
            per_domain.setdefault("_seconds", []).append(
                {"arch": m.name, "seed": s, "n_calib": out["n_calib"],
                 "compare_seconds": out["seconds_compare"],
                 "sweep_seconds": out["seconds_sweep"]})
    timing = per_domain.pop("_seconds", [])
    temperature = _temperature(plan, st, per_domain)
    for dom in per_domain.values():
        dom["summary"] = compare.summarise_probes(dom["rows"])
    return {"domains": per_domain, "seconds": timing, "temperature": temperature}


def _temperature(plan: Plan, st: Stages, per_domain: dict[str, Any]) -> list[dict[str, Any]]:
    """Merges the `temperature:<arch>:<seed>` stages (`temperature`) into the probe rows, each
    right after its run's uncalibrated row, and the first seed's reliability curves; returns T
    per (arch, seed). Runs without the stage (a stand-in producer trains no decoder) are absent."""
    out = []
    for m in plan.routed:
        for i, s in enumerate(plan.seeds):
            name = f"temperature:{m.name}:{s}"
            if not st.done(name):
                continue
            t = st.load(name)
            for r in t["rows"]:
                rows = per_domain[r["domain"]]["rows"]
                at = next((j + 1 for j, x in enumerate(rows) if x["probe"] == "uncalibrated" and
                           (x["arch"], x["seed"]) == (m.name, s)), len(rows))
                rows.insert(at, {**r, "arch": m.name, "seed": s})
                if i == 0:  # the curve next to the uncalibrated one
                    rel = per_domain[r["domain"]]["reliability"]
                    curve, new = t["reliability"][r["domain"]], {}
                    for k, v in rel.get(m.name, {}).items():
                        new |= {k: v, "temperature": curve} if k == "uncalibrated" else {k: v}
                    rel[m.name] = new | {"temperature": curve}
            out.append({"arch": m.name, "seed": s, "temperature": t["temperature"],
                        "at_bound": t["at_bound"], "n_calib": t["n_calib"],
                        "calib_token_nll": t["calib_token_nll"], "seconds": t["seconds"]})
    return out


def _depth(plan: Plan, st: Stages) -> dict[str, Any]:
    """{domain: {arch: depth-attention means}} of the first seed (`predict.decoder_depth_attention`)."""
    out: dict[str, Any] = {}
    for m in plan.routed:
        for d, v in (st.load(f"run:{m.name}:{plan.seeds[0]}").get("depth_attention") or {}
                     ).items():
            out.setdefault(d, {})[m.name] = v
    return out


def assemble(plan: Plan, st: Stages, w: pathlib.Path, toks: Any = None,
             wall_seconds: float | None = None) -> dict[str, Any]:
    """The results dict (without verdicts) from the finished stages; `wall_seconds`: the study's
    wall time from a fresh workdir (None when resumed). `toks` unused (all is in the stages)."""
    del toks
    runs = []
    for m, s in plan.runs:
        r = st.load(f"run:{m.name}:{s}")
        summ = st.load(f"summary:{m.name}:{s}")
        metrics = r.get("metrics") or {}
        runs.append({
            "arch": m.name, "seed": s, "routed": m.routed,
            "splits": {k: v for k, v in summ.items() if k != "seconds"},
            "test_accuracy": summ[plan.domains[0][1]]["accuracy"],  # the first (in) domain
            "test_bits_per_byte": next((v for k, v in metrics.items() if "bits_per" in k
                                        and isinstance(v, int | float)), None),
            "train_seconds": r.get("train_seconds"), "predict_seconds": r.get("predict_seconds"),
        })
    results = {
        "meta": {"title": plan.title, "source": plan.source, "unit": plan.unit,
                 "config": plan.config,
                 "versions": versions(), "seeds": list(plan.seeds),
                 "domains": dict(plan.domains), "calib_split": plan.calib_split,
                 "jax_backend": jax.default_backend()},
        "runs": runs,
        "probes": _probes(plan, st) if "probes" in plan.sections else {},
        "depth_attention": _depth(plan, st),
    }
    results["meta"].update(
        stage_seconds=stage_seconds(st), wall_seconds=wall_seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        devices=[str(dv) for dv in jax.devices()],
    )
    return results


def cell_rows(plan: Plan, toks: Mapping[tuple[str, int], Any], cell: tuple[str, str, int]
              ) -> grid.Rows:
    """One (domain, arch, seed) cell's diagnostics rows: the domain's tokens thinned to whole
    clusters (`token_stages.cell_tokens`), clustered by `diagnostics.cluster_unit`."""
    d, a, s = cell
    split = dict(plan.domains)[d]
    t = token_stages.cell_tokens(toks[a, s][split], plan, f"{a}/seed{s}/{split}")
    unit = plan.tests.cluster_unit
    return grid.Rows(t["confidence"], t["correct"], predictions.routing_features(t),
                     predictions.cluster_ids(t, unit), unit,
                     {"n_sequences": int(len(np.unique(t["seq_id"])))})


def _load_run(plan: Plan, w: pathlib.Path, out: Mapping[str, Any], m: str, s: int
              ) -> dict[str, Any]:
    fps = out.get("fingerprints") or {}  # recorded when the run was predicted
    return {sp: token_stages.load_tokens(workdir_io.from_relative(out["paths"][sp], w),
                            f"{m}/seed{s}/{sp}", fps.get(sp)) for sp in plan.splits}


def run_stage_names(plan: Plan) -> list[str]:
    """The stages every run must have finished before the analysis (a study worker waits)."""
    return [f"{k}:{m.name}:{s}" for m, s in plan.runs for k in ("run", "summary")]


def runs(plan: Plan, w: pathlib.Path, step: Callable[..., Any],
         producer: token_stages.Producer | None = None) -> dict[tuple[str, int], Any]:
    """Per (model, seed): `run:` (train or import, predict: `producer`, default `train_predict`)
    and `summary:` (`run_summary`); returns {(model, seed): {split: token arrays}}."""
    produce = producer or functools.partial(
        token_stages.train_predict, source=plan.source,
        predict_options=plan.tokens.predict_options, depth_rows=plan.tokens.depth_rows,
        domains=plan.domains)
    toks = {}
    for m, s in plan.runs:
        out = step(f"run:{m.name}:{s}", lambda m=m, s=s: token_stages.relative_paths(
            produce(m, s, w / "runs" / m.name / f"seed{s}"), w))
        toks[m.name, s] = _load_run(plan, w, out, m.name, s)
        step(f"summary:{m.name}:{s}", lambda m=m, s=s: token_stages.run_summary(
            toks[m.name, s], plan.tests.n_bins))
    return toks


def load_runs(plan: Plan, w: pathlib.Path, st: Stages) -> dict[tuple[str, int], Any]:
    """The token arrays of every stored run (a study worker's start)."""
    return {(m.name, s): _load_run(plan, w, st.load(f"run:{m.name}:{s}"), m.name, s)
            for m, s in plan.runs}


def analysis(plan: Plan, w: pathlib.Path, toks: Mapping[tuple[str, int], Any]
             ) -> list[tuple[str, Callable[[], Any]]]:
    """Every analysis stage after the runs, in the study's order: (name, thunk). Diagnostics
    cells (one per routing summary) with their power cell, probes, temperature scaling, VMoER."""
    tasks: list[tuple[str, Callable[[], Any]]] = []
    for m in plan.routed if "probes" in plan.sections else ():
        for s in plan.seeds:
            tasks.append((f"probes:{m.name}:{s}", lambda m=m, s=s: token_stages.probe_run(
                toks[m.name, s][plan.calib_split],
                {d: toks[m.name, s][sp] for d, sp in plan.domains}, seed=s, plan=plan)))
    # after every older stage: an existing workdir resumes into these
    for m in plan.routed if "temperature" in plan.sections else ():
        for s in plan.seeds:
            run_dir = w / "runs" / m.name / f"seed{s}"
            if not temperature.has_trained_model(run_dir):  # a stand-in producer's run
                continue
            tasks.append((f"temperature:{m.name}:{s}", lambda m=m, s=s, run_dir=run_dir:
                          temperature.temperature_run(
                              run_dir, toks[m.name, s][plan.calib_split],
                              {d: toks[m.name, s][sp] for d, sp in plan.domains},
                              splits=dict(plan.domains), seed=s, plan=plan)))
    return tasks


def check(plan: Plan) -> None:
    """Nothing beyond `Plan.from_config` (an `hf` model is imported, not trained)."""
