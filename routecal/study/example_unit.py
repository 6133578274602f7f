"""The example unit of the study (digits, `configs/study.py`): its stages and its results.json.

Per (model, seed) run: `train:<arch>:<seed>` (train, orbax resume) and `predict:<arch>:<seed>`
(prediction files, paths relative to the workdir); then, as the plan's sections say, `diagnostics` (the grid, `study.grid`, on every routed model x
seed x feature, the calib split and the domains' splits pooled; with each test's detectable gap
when the plan has "power") and `probes:<arch>:<seed>` per routed run (fitted on the calib split,
scored on the first domain's split). `study.run` drives them (the same driver as the token unit,
`study.token_unit`, and the VMoER section); `assemble` builds results.json from the stored stages:
meta, runs, diagnostics, probes, depth_attention.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

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
from routecal.study.stages import Stages, versions

Preds = dict[tuple[str, int], dict[str, dict[str, np.ndarray]]]  # (arch, seed) -> split -> arrays
Step = Callable[..., Any]  # step(name, fn, check=None) -> the stage's stored output


def check(plan: Plan) -> None:
    """Every model's training config, whole (model, data, train), for this process's mesh."""
    from routecal import parallel
    from routecal.training import train

    mesh_size = parallel.make_mesh().size
    for spec in plan.models:
        train.check_config(spec.load(plan.seeds[0]), mesh_size)


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


def _run_dir(w: pathlib.Path, spec: ModelSpec, seed: int) -> pathlib.Path:
    return w / "runs" / spec.name / f"seed{seed}"


def runs(plan: Plan, w: pathlib.Path, step: Step, producer: Any = None) -> Preds:
    """The train and predict stages of every run, in order; returns their predictions."""
    if producer is not None:
        raise ValueError("producer: the example unit trains its models (token unit only)")
    preds: Preds = {}
    for spec, seed in plan.runs:
        run_dir = _run_dir(w, spec, seed)
        step(f"train:{spec.name}:{seed}", functools.partial(train_stage, spec, seed, run_dir))
        pr = step(f"predict:{spec.name}:{seed}", functools.partial(predict_stage, run_dir, w),
                  check=functools.partial(stored_paths, workdir=w))
        preds[spec.name, seed] = {k: load_predictions(p) for k, p in stored_paths(pr, w).items()}
    return preds


def load_runs(plan: Plan, w: pathlib.Path, st: Stages) -> Preds:
    """The predictions of every stored run (a study worker's start)."""
    return {(spec.name, seed): {k: load_predictions(p) for k, p in stored_paths(
        st.load(f"predict:{spec.name}:{seed}"), w).items()} for spec, seed in plan.runs}


def run_stage_names(plan: Plan) -> list[str]:
    """The stages every run must have finished before the analysis (a study worker waits)."""
    return [f"{k}:{m.name}:{s}" for m, s in plan.runs for k in ("train", "predict")]


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


def _test_split(plan: Plan) -> str:
    return plan.domains[0][1]


def cell_rows(plan: Plan, preds: Preds, cell: tuple[str, str, int]) -> grid.Rows:
    """One run's diagnostics rows: the calib split and the domains' splits pooled (nothing is
    fitted to them; `Plan.cells` names the pool "all"), independent rows."""
    _, arch, seed = cell
    d = concat_predictions([preds[arch, seed][s] for s in plan.splits])
    conf, correct = confidence_correct(d)
    return grid.Rows(conf, correct, routing_features(d))


def probes_stage(plan: Plan, preds: Preds, arch: str, seed: int) -> dict[str, Any]:
    return probe_comparison(
        preds[arch, seed][plan.calib_split], preds[arch, seed][_test_split(plan)], seed=seed,
        bandwidth_rules=plan.bandwidth_rules, sweep_multiples=plan.sweep_multiples,
        n_bins=plan.tests.n_bins,
    )


def analysis(plan: Plan, w: pathlib.Path, preds: Preds) -> list[tuple[str, Callable[[], Any]]]:
    """The plan's probes stages after the runs and the diagnostics, in order: (name, thunk)."""
    del w
    return [(f"probes:{spec.name}:{seed}",
             functools.partial(probes_stage, plan, preds, spec.name, seed))
            for spec in plan.routed for seed in plan.seeds] if "probes" in plan.sections else []


def probes_section(sweep_multiples: Sequence[float],
                   per_run: Mapping[tuple[str, int], Mapping[str, Any]]) -> dict[str, Any]:
    """Per-(arch, seed) probe comparisons (`probes.compare.probe_comparison`) -> rows, seed-band
    summary, sweeps, reliability (the first run's); also `routecal diagnose`'s probes."""
    rows, sweeps, reliability = [], {}, {}
    for (arch, seed), out in per_run.items():
        rows += [{**r, "arch": arch, "seed": seed} for r in out["rows"]]
        sw = sweeps.setdefault(arch, {"multiples": list(sweep_multiples), "ece": {}})
        for name, eces in out["sweep"].items():
            sw["ece"].setdefault(name, []).append(eces)
        reliability = reliability or out["reliability"]
    return {"rows": rows, "summary": summarise_probes(rows), "bandwidth_sweep": sweeps,
            "reliability": reliability}


def depth_attention(plan: Plan, preds: Preds) -> dict[str, Any]:
    """Mean depth-attention weights of each routed model's first seed (the heatmap figure)."""
    depth = {}
    for spec in plan.routed:
        t = preds[spec.name, plan.seeds[0]][_test_split(plan)]
        if "alpha_mean" in t and t["alpha_mean"].size:
            keys = ("alpha_mean", "n_sources", "sublayer_names")
            depth[spec.name] = {k: t[k] for k in keys if k in t}
    return depth


def assemble(plan: Plan, st: Stages, w: pathlib.Path, preds: Preds,
             wall_seconds: float | None = None) -> dict[str, Any]:
    """The results dict (without verdicts) from the finished stages (`wall_seconds` unused: the
    example unit's results hold the stages' own seconds)."""
    del wall_seconds
    runs = [run_summary(spec, seed, workdir_io.to_relative(_run_dir(w, spec, seed), w),
                        st.load(f"train:{spec.name}:{seed}"),
                        preds[spec.name, seed][_test_split(plan)], plan.tests.n_bins)
            for spec, seed in plan.runs]
    probes = {(spec.name, seed): st.load(f"probes:{spec.name}:{seed}")
              for spec in plan.routed for seed in plan.seeds} if "probes" in plan.sections else {}
    meta = {"title": plan.title, "source": plan.source, "unit": plan.unit,
            "config": plan.config, "versions": versions(), "seeds": list(plan.seeds),
            "devices": [str(d) for d in jax.devices()]}
    return {"meta": meta, "runs": runs,
            "probes": probes_section(plan.sweep_multiples, probes) if probes else {},
            "depth_attention": depth_attention(plan, preds)}
