"""The example unit of the study (digits, `configs/study.py`): what differs from the token unit.

`study.run` drives every unit: per (model, seed) the `run:<arch>:<seed>` stage (`train_predict`:
train with orbax resume, write the prediction files), the diagnostics (`study.grid`; a cell here
pools the calib split and the domains' splits of one run, `cell_rows`), `probes:<arch>:<seed>`
per routed run (`probe_run`: fitted on the calib split, scored on the first domain's split) and
the VMoER section; `assemble` gives results.json's runs, probes and depth_attention.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

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
from routecal.study.stages import Stages

Preds = dict[tuple[str, int], dict[str, dict[str, np.ndarray]]]  # (arch, seed) -> split -> arrays


def check(plan: Plan) -> None:
    """Every model's training config, whole (model, data, train), for this process's mesh."""
    from routecal import parallel
    from routecal.training import train

    mesh_size = parallel.make_mesh().size
    for spec in plan.models:
        train.check_config(spec.load(plan.seeds[0]), mesh_size)


def train_predict(plan: Plan, spec: ModelSpec, seed: int, run_dir: pathlib.Path
                  ) -> dict[str, Any]:
    """Trains `spec` for `seed` in `run_dir` (resuming) and writes its prediction files."""
    from routecal.training import predict, train

    mcfg = spec.load(seed)
    metrics = train.train_and_evaluate(mcfg, str(run_dir))
    # training time summed over every call that trained this run (resumes included)
    return {"metrics": metrics, "train_seconds": metrics["time_s"],
            "residual": mcfg.model.residual,
            "paths": {k: str(v) for k, v in predict.predict_workdir(str(run_dir)).items()}}


def load(path: pathlib.Path, name: str, fingerprint: Any = None) -> dict[str, np.ndarray]:
    """One split's predictions file (`files.predictions.load_predictions`)."""
    del name, fingerprint  # the file names itself in its errors; npz files have no fingerprint
    return load_predictions(path)


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


def probe_run(plan: Plan, preds: Preds, arch: str, seed: int) -> dict[str, Any]:
    return probe_comparison(
        preds[arch, seed][plan.calib_split], preds[arch, seed][_test_split(plan)], seed=seed,
        bandwidth_rules=plan.bandwidth_rules, sweep_multiples=plan.sweep_multiples,
        n_bins=plan.tests.n_bins,
    )


def analysis(plan: Plan, w: pathlib.Path, preds: Preds) -> list:
    """The unit's own stages: none (temperature scaling is one of the probes here)."""
    return []


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


def assemble(plan: Plan, st: Stages, w: pathlib.Path, preds: Preds) -> dict[str, Any]:
    """results.json's runs, probes and depth_attention from the finished stages."""
    runs = [run_summary(spec, seed, workdir_io.to_relative(w / "runs" / spec.name / f"seed{seed}",
                                                           w),
                        st.load(f"run:{spec.name}:{seed}"),
                        preds[spec.name, seed][_test_split(plan)], plan.tests.n_bins)
            for spec, seed in plan.runs]
    probes = {(spec.name, seed): st.load(f"probes:{spec.name}:{seed}")
              for spec in plan.routed for seed in plan.seeds} if "probes" in plan.sections else {}
    return {"runs": runs,
            "probes": probes_section(plan.sweep_multiples, probes) if probes else {},
            "depth_attention": depth_attention(plan, preds)}
