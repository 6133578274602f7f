"""The token unit of the study (language models, `configs/study_lm.py`): what differs from the
example unit.

`study.run` drives every unit: per (model, seed) the `run:` stage (`train_predict`: train a
decoder, or import the `hf` source, and write its token predictions), the diagnostics
(`study.grid`; a cell here is one domain's tokens thinned to whole clusters, `cell_rows`:
documents by default, `diagnostics.cluster_unit`; predictions without `doc_id` stop with an error
naming the fix; power cells for the first `diagnostics.power_seeds` seeds), `probes:` per routed
run (`probe_run`: fitted on calib tokens, scored per domain) and `temperature:` per routed run
(`analysis`, `study.temperature`, from the reloaded decoder). `assemble` gives results.json's

    runs          per (arch, seed): tokens, accuracy, ECE per split; train/predict seconds
    probes        per domain: rows, summary (seed bands, `probes.compare.summarise_probes`),
                  bandwidth sweep, reliability curves (first seed), NW seconds; temperature:
                  T per (arch, seed) (its rows, probe "temperature", sit with the others)
    depth_attention  per domain per arch: mean depth weights (first seed) when predictions hold them
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from routecal.files import predictions
from routecal.probes import compare
from routecal.study import grid, temperature, token_stages
from routecal.study.plan import ModelSpec, Plan
from routecal.study.stages import Stages


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


def assemble(plan: Plan, st: Stages, w: pathlib.Path, toks: Any) -> dict[str, Any]:
    """results.json's runs, probes and depth_attention from the finished stages."""
    runs = []
    for m, s in plan.runs:
        r = st.load(f"run:{m.name}:{s}")
        summ = token_stages.run_summary(toks[m.name, s], plan.tests.n_bins)
        metrics = r.get("metrics") or {}
        runs.append({
            "arch": m.name, "seed": s, "routed": m.routed, "splits": summ,
            "test_accuracy": summ[plan.domains[0][1]]["accuracy"],  # the first (in) domain
            "test_bits_per_byte": next((v for k, v in metrics.items() if "bits_per" in k
                                        and isinstance(v, int | float)), None),
            "train_seconds": r.get("train_seconds"), "predict_seconds": r.get("predict_seconds"),
        })
    return {"runs": runs, "probes": _probes(plan, st) if "probes" in plan.sections else {},
            "depth_attention": _depth(plan, st)}


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


def train_predict(plan: Plan, model: ModelSpec, seed: int, run_dir: pathlib.Path
                  ) -> dict[str, Any]:
    """The run stage (`token_stages.train_predict` with the plan's source and options)."""
    return token_stages.train_predict(
        model, seed, run_dir, source=plan.source, predict_options=plan.tokens.predict_options,
        depth_rows=plan.tokens.depth_rows, domains=plan.domains)


load = token_stages.load_tokens


def probe_run(plan: Plan, toks: Mapping[tuple[str, int], Any], arch: str, seed: int
              ) -> dict[str, Any]:
    """The probes stage of one routed run: fitted on its calib tokens, scored per domain."""
    t = toks[arch, seed]
    return token_stages.probe_run(t[plan.calib_split], {d: t[sp] for d, sp in plan.domains},
                                  seed=seed, plan=plan)


def analysis(plan: Plan, w: pathlib.Path, toks: Mapping[tuple[str, int], Any]
             ) -> list[tuple[str, Callable[[], Any]]]:
    """The unit's own stages after the probes: temperature scaling per routed run (name, thunk)."""
    tasks: list[tuple[str, Callable[[], Any]]] = []
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
