"""The study: plan -> train -> predict -> diagnostics -> probes -> VMoER -> results -> report.

    routecal study --config configs/study.py --workdir W          # the main job
    routecal study --config configs/study.py:quick --workdir W    # smoke run
    routecal diagnose --predictions preds.npz                    # bring your own traces

From Python: `routecal.study.run.run(config, workdir)`.

The config becomes a typed `Plan` (`pipeline.plan`) first, validated whole before anything is
written. Every stage writes `W/stages/<stage>.json` when it finishes and is skipped when that file
exists, so a killed study resumes where it stopped (training resumes from its orbax checkpoint);
`W/study_config.json` keys the workdir to its config (`pipeline.stages`). `W/results.json` holds
every number (nulls, sweeps and reliability data included) with the config and package versions;
the report draws only from it. Predictions are read through `routecal.files.predictions`.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from routecal import parallel, report
from routecal.files import workdir as workdir_io
from routecal.files.predictions import (
    concat_predictions,
    confidence_correct,
    load_predictions,
    routing_features,
)
from routecal.probes.compare import probe_comparison, summarise_probes
from routecal.stats import calibration
from routecal.study import grid
from routecal.study.plan import ModelSpec, Plan
from routecal.study.stages import (
    Stages,
    record_workdir_config,
    to_json,
    versions,
    write_json,
)
from routecal.training import train

Preds = dict[tuple[str, int], dict[str, dict[str, np.ndarray]]]  # (arch, seed) -> split -> arrays

# ----------------------------------------------------------------------------------------------
# Stages: module-level functions of the plan and their inputs (bound with functools.partial).
# ----------------------------------------------------------------------------------------------


def train_stage(spec: ModelSpec, seed: int, run_dir: pathlib.Path) -> dict[str, Any]:
    from routecal.training import train

    mcfg = spec.load(seed)
    metrics = train.train_and_evaluate(mcfg, str(run_dir))
    # training time summed over every call that trained this run (resumes included)
    return {"metrics": metrics, "train_seconds": metrics["time_s"],
            "residual": mcfg.model.residual}


def predict_stage(run_dir: pathlib.Path, workdir: pathlib.Path) -> dict[str, Any]:
    """Writes the run's predictions; stores their paths relative to the study's `workdir`."""
    from routecal.training import predict

    paths = predict.predict_workdir(str(run_dir))
    return {"paths": {k: workdir_io.to_relative(v, workdir) for k, v in paths.items()}}


def stored_paths(stage: Mapping[str, Any], workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """The predictions files a predict stage recorded, inside `workdir` (ValueError otherwise:
    absolute paths from an older routecal or from the workdir this one was copied from, or a
    file that is gone; the stage is then recomputed)."""
    paths = {k: workdir_io.from_relative(p, workdir) for k, p in stage["paths"].items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(f"predictions: recorded files are missing: {missing}")
    return paths


def run_summary(
    spec: ModelSpec, seed: int, run_dir: str, trained: Mapping[str, Any],
    test: Mapping[str, np.ndarray], n_bins: int,
) -> dict[str, Any]:
    """One trained model's row: test accuracy, ECE, NLL and training time (`run_dir` relative to
    the study's workdir)."""
    conf, correct = confidence_correct(test)
    return {
        "arch": spec.name, "seed": seed, "workdir": run_dir, "residual": trained["residual"],
        "test_accuracy": float(correct.mean()),
        "test_ece": calibration.ece(conf, correct, n_bins=n_bins),
        "test_nll": calibration.nll(test["probs"], test["labels"]),
        "train_seconds": trained["train_seconds"],
    }


def grid_cells(plan: Plan, preds: Preds) -> list[grid.Cell]:
    """One cell per routed model x seed x feature, on the plan's pooled splits."""
    cells = []
    for spec in plan.routed:
        for seed in plan.seeds:
            d = concat_predictions([preds[spec.name, seed][s] for s in plan.splits])
            conf, correct = confidence_correct(d)
            rf = routing_features(d)
            for f in plan.features:
                if f not in rf:
                    raise ValueError(
                        f"diagnostics.features: {f!r} not available for {spec.name} "
                        f"(available: {sorted(rf)})"
                    )
                cells.append(grid.Cell(spec.name, seed, f, conf, correct, rf[f]))
    return cells


def diagnostics_stage(plan: Plan, preds: Preds) -> dict[str, Any]:
    return grid.diagnostic_grid(grid_cells(plan, preds), plan.grid)


def probes_stage(plan: Plan, preds: Preds, arch: str, seed: int) -> dict[str, Any]:
    return probe_comparison(
        preds[arch, seed]["calib"], preds[arch, seed]["test"], seed=seed,
        bandwidth_rules=plan.bandwidth_rules, sweep_multiples=plan.sweep_multiples,
        n_bins=plan.grid.n_bins,
    )


def vmoer_stage(plan: Plan, workdir: pathlib.Path) -> dict[str, Any]:
    from routecal.study import vmoer

    return vmoer.report_rows(vmoer.run_vmoer_experiment(plan.load_vmoer(), str(workdir)))


def probes_section(plan: Plan, per_run: Mapping[tuple[str, int], Mapping[str, Any]]
                   ) -> dict[str, Any]:
    """Per-(arch, seed) probe stage outputs -> rows, seed-band summary, sweeps, reliability."""
    rows, sweeps, reliability = [], {}, {}
    for (arch, seed), out in per_run.items():
        rows += [{**r, "arch": arch, "seed": seed} for r in out["rows"]]
        sw = sweeps.setdefault(arch, {"multiples": list(plan.sweep_multiples), "ece": {}})
        for name, eces in out["sweep"].items():
            sw["ece"].setdefault(name, []).append(eces)
        reliability = reliability or out["reliability"]
    return {"rows": rows, "summary": summarise_probes(rows), "bandwidth_sweep": sweeps,
            "reliability": reliability}


def depth_attention(plan: Plan, preds: Preds) -> dict[str, Any]:
    """Mean depth-attention weights of each routed model's first seed (the heatmap figure)."""
    depth = {}
    for spec in plan.routed:
        t = preds[spec.name, plan.seeds[0]]["test"]
        if "alpha_mean" in t and t["alpha_mean"].size:
            keys = ("alpha_mean", "n_sources", "sublayer_names")
            depth[spec.name] = {k: t[k] for k in keys if k in t}
    return depth


# ----------------------------------------------------------------------------------------------
# The study.
# ----------------------------------------------------------------------------------------------


def _step(stages: Stages, bar: Any, name: str, fn: Callable[[], Any], check=None) -> Any:
    bar.set_postfix_str(name)
    out = stages.run(name, fn, check)
    bar.update()
    return out


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, write_report: bool = True
        ) -> dict[str, Any]:
    """Runs (or resumes) the whole study in `workdir`; returns the results dict.

    Args:
      cfg: a study config (`configs/study.py`).
      workdir: where runs, predictions, stage outputs, results.json and the report go.
      write_report: also write report.md / report.html.

    The plan and every model's training config are checked whole before anything is written; the
    workdir is locked for the run (a second process is refused, naming the holder). Stored paths
    are relative to the workdir, so a copied or moved workdir reads only its own files.
    """
    plan = Plan.from_config(cfg)  # validated before anything is written
    mesh_size = parallel.make_mesh().size
    for spec in plan.models:  # each model's training config, whole (model, data, train)
        train.check_config(spec.load(plan.seeds[0]), mesh_size)
    w = pathlib.Path(workdir)
    with workdir_io.lock(w, "study", enabled=jax.process_index() == 0):
        return _run_locked(plan, w, write_report)


def _run_locked(plan: Plan, w: pathlib.Path, write_report: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    record_workdir_config(w, plan.config, "study_config.json", "study")
    bar = tqdm(total=plan.n_stages, desc="study", unit="stage")
    step = functools.partial(_step, Stages(w), bar)
    runs, preds = [], {}
    for spec, seed in plan.runs:
        run_dir = w / "runs" / spec.name / f"seed{seed}"
        tr = step(f"train:{spec.name}:{seed}", functools.partial(train_stage, spec, seed, run_dir))
        pr = step(f"predict:{spec.name}:{seed}", functools.partial(predict_stage, run_dir, w),
                  check=functools.partial(stored_paths, workdir=w))
        preds[spec.name, seed] = {k: load_predictions(p) for k, p in stored_paths(pr, w).items()}
        test = preds[spec.name, seed]["test"]
        runs.append(run_summary(spec, seed, workdir_io.to_relative(run_dir, w), tr, test,
                                plan.grid.n_bins))
    diag = step("diagnostics", functools.partial(diagnostics_stage, plan, preds))
    probe_out = {
        (spec.name, seed): step(f"probes:{spec.name}:{seed}",
                                functools.partial(probes_stage, plan, preds, spec.name, seed))
        for spec in plan.routed for seed in plan.seeds
    }
    vmoer = {}
    if plan.vmoer_config is not None:
        vmoer = step("vmoer", functools.partial(vmoer_stage, plan, w / "vmoer"))
    meta = {"title": plan.title, "config": plan.config, "versions": versions(),
            "seeds": list(plan.seeds), "devices": [str(d) for d in jax.devices()]}
    results = {"meta": meta, "runs": runs, "diagnostics": diag,
               "probes": probes_section(plan, probe_out),
               "depth_attention": depth_attention(plan, preds), "vmoer": vmoer}
    results["verdicts"] = report.verdicts(to_json(results))
    results = write_json(w / "results.json", results)
    if write_report and parallel.is_primary():  # multi-host: process 0 writes the report
        report.write_report(w)
    bar.update()
    bar.close()
    return results
