"""The study, for every unit: plan -> runs -> analysis stages -> results.json -> report.

    routecal study --config configs/study.py --workdir W          # digits (example unit)
    routecal study --config configs/study_lm.py:quick --workdir W # language model (token unit)
    routecal study --config configs/study_lm.py --workdir W --worker   # a second job's share
    routecal diagnose --predictions preds.npz                    # bring your own traces

From Python: `routecal.study.run.run(config, workdir)`.

The config becomes the typed `plan.Plan` first (source, unit, domains, sections), validated whole
before anything is written. Every unit runs the same stages; its module (`UNITS`) says only what
differs: per (model, seed) one `run:` stage that trains (or imports) and predicts, then the plan's
sections: the diagnostics and power cells (`study.grid`, with the unit's `cell_rows`), `probes:`
per routed run (the unit's `probe_run`), the unit's own stages (temperature scaling of decoders)
and the VMoER section (`vmoer_tasks`, the one call into it). Then `W/results.json` (meta, the
unit's runs / probes / depth attention, diagnostics, power, vmoer, verdicts:
`routecal.report.verdicts`) and the report drawn from it (`routecal.report.write_report`). Every
stage writes `W/stages/<stage>.json` when it finishes and is skipped when that file exists, so a
killed study resumes where it stopped (training resumes from its orbax checkpoint);
`W/study_config.json` keys the workdir to its config (`files.records`).
"""

from __future__ import annotations

import functools
import pathlib
import resource
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import jax
import ml_collections

from routecal import parallel, report
from routecal.files import workdir as workdir_io
from routecal.study import example_unit, grid, token_unit
from routecal.study import plan as plan_lib
from routecal.study.stages import (
    Stages,
    check_workdir_config,
    record_workdir_config,
    spmd,
    to_json,
    versions,
    write_json,
)

# A unit is a module with the same functions (shapes: `example_unit`, `token_unit`):
#   check(plan)                             configs a plan cannot check alone
#   train_predict(plan, spec, seed, run_dir)  the run stage: train (or import), predict -> paths
#   load(path, name, fingerprint)           one split's predictions
#   cell_rows(plan, predictions, cell)      one diagnostics cell's rows (`study.grid`)
#   probe_run(plan, predictions, arch, seed)  one routed run's probes stage
#   analysis(plan, w, predictions)          [(stage name, thunk)] after the probes (temperature)
#   assemble(plan, st, w, predictions)      results.json's runs, probes and depth_attention
UNITS = {"example": example_unit, "token": token_unit}
Producer = Callable[[plan_lib.ModelSpec, int, pathlib.Path], Mapping[str, Any]]


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, write_report: bool = True,
        producer: Producer | None = None, worker: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the study in `workdir`; returns the results dict.

    Args:
      cfg: a study config (`configs/study.py`, `configs/study_lm.py`, ...).
      workdir: where runs, predictions, stage outputs, results.json and the report go.
      write_report: also write report.md / report.html.
      producer: (model, seed, run_dir) -> {"paths": {split: predictions}, ...}; default trains
        and predicts (the unit's `train_predict`). Tests pass a synthetic one.
      worker: a second, separate job for a study running in `workdir` (`routecal study ...
        --worker`; the pattern for job arrays on a shared filesystem): once every run (train +
        predict) is stored, it computes the pending analysis stages from the END of the plan
        while the study works from the start, so two jobs share the stages (each stage is a
        deterministic function of its key, stored atomically; one both happen to compute is
        written twice with the same numbers). Lock semantics: the study holds the workdir lock
        (`routecal.files.workdir.lock`) for its whole run; the worker takes no lock, only checks
        the recorded study config, and writes neither results.json nor the report; it returns
        {"stages": names it computed}. It is one process: several processes of ONE job run the
        study itself with `routecal --distributed study ...` (process 0 holds the lock and
        writes results; each stage is computed once, by one process, `Stages.run_all`;
        docs/ARCHITECTURE.md "Processes and workdirs").

    The plan and every model's config are checked whole before anything is written. Stored paths
    are relative to the workdir, so a copied or moved workdir reads only its own files.
    """
    t_start = time.perf_counter()
    plan = plan_lib.Plan.from_config(cfg)  # validated before anything is written
    unit = UNITS[plan.unit]
    unit.check(plan)
    w = pathlib.Path(workdir)
    if worker:
        check_workdir_config(w, plan.config, "study_config.json", "study")
        return _work(plan, unit, w)
    # one job per workdir; multi-host: process 0 holds the lock for every process of the job
    with workdir_io.lock(w, "study", enabled=parallel.is_primary()):
        record_workdir_config(w, plan.config, "study_config.json", "study")
        results = _run(plan, unit, w, producer, t_start)
    if write_report and parallel.is_primary():  # multi-host: process 0 writes the report
        report.write_report(w)
    return results


def _work(plan: Any, unit: ModuleType, w: pathlib.Path) -> dict[str, Any]:
    """The `worker=True` loop: pending analysis stages in reverse order (see `run`)."""
    st = Stages(w)
    missing = [n for n in run_stage_names(plan) if not st.done(n)]
    if missing:
        raise ValueError(f"worker: the study in {w} has not finished its runs {missing}; start "
                         "the worker once every model is trained and predicted")
    done = []
    for name, fn in reversed(_analysis(plan, unit, w, {(m.name, s): _load(plan, unit, w, st.load(f"run:{m.name}:{s}"), m.name, s)
                        for m, s in plan.runs})):
        if not st.done(name):
            st.run(name, fn)
            done.append(name)
            print(f"routecal study worker: {name}", flush=True)
    return {"stages": done}


def _run(plan: Any, unit: ModuleType, w: pathlib.Path, producer: Any, t_start: float
         ) -> dict[str, Any]:
    from tqdm.auto import tqdm

    st = Stages(w)
    fresh = not any(st.dir.glob("*.json"))
    bar = tqdm(total=len(run_stage_names(plan)), desc="study", unit="stage")

    def step(name: str, fn: Callable[[], Any], check: Callable[[Any], None] | None = None
             ) -> Any:
        bar.set_postfix_str(name)
        out = st.run(name, fn, check)
        bar.update()
        return out

    produce = producer or functools.partial(unit.train_predict, plan)
    preds = {}
    for m, s in plan.runs:  # train (or import) and predict, one stage per run
        out = step(f"run:{m.name}:{s}", lambda m=m, s=s: _stored(produce(
            m, s, w / "runs" / m.name / f"seed{s}"), w), functools.partial(_paths, workdir=w))
        preds[m.name, s] = _load(plan, unit, w, out, m.name, s)
    tasks = _analysis(plan, unit, w, preds)
    bar.total += len(tasks)
    # multi-host: each stage computed once, by one process (`Stages.run_all`)
    st.run_all(tasks, on_stage=lambda name: (bar.set_postfix_str(name), bar.update()))
    bar.close()
    meta = {"title": plan.title, "source": plan.source, "unit": plan.unit,
            "config": plan.config, "versions": versions(), "seeds": list(plan.seeds),
            "domains": dict(plan.domains), "calib_split": plan.calib_split,
            "jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "stage_seconds": stage_seconds(st),
            "wall_seconds": (time.perf_counter() - t_start) if fresh else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    results = {"meta": meta, **unit.assemble(plan, st, w, preds)}
    results["diagnostics"] = (grid.results(plan.cells(), plan.features, st.load, plan.tests, w)
                              if plan.cells() else {})
    results["power"] = grid.power_rows(plan.power_cells(), st.load)
    results["vmoer"] = vmoer_results(plan, st, w) if "vmoer" in plan.sections else {}
    results["verdicts"] = report.verdicts(to_json(results))
    return write_json(w / "results.json", results)


def run_stage_names(plan: plan_lib.Plan) -> list[str]:
    """The stages every run must have finished before the analysis (a study worker waits)."""
    return [f"run:{m.name}:{s}" for m, s in plan.runs]


def _stored(out: Mapping[str, Any], w: pathlib.Path) -> dict[str, Any]:
    """A run stage's output: prediction paths relative to the workdir (a moved or copied
    workdir still resolves them) and the fingerprints of its shard directories (every later
    load checks that it reads the same run, `shards.check_fingerprint`)."""
    from routecal.files import shards

    paths = {k: pathlib.Path(v) for k, v in out["paths"].items()}
    return {**out, "paths": {k: workdir_io.to_relative(v, w) for k, v in paths.items()},
            "fingerprints": {k: shards.ShardedColumns(p).fingerprint for k, p in paths.items()
                             if (p / "index.json").is_file()}}


def _paths(stage: Mapping[str, Any], workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """The predictions a run stage recorded, inside `workdir` (ValueError otherwise: absolute
    paths from an older routecal or from the workdir this one was copied from, or a file that is
    gone; the stage is then recomputed)."""
    paths = {k: workdir_io.from_relative(p, workdir) for k, p in stage["paths"].items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise ValueError(f"predictions: recorded files are missing: {missing}")
    return paths


def _load(plan: plan_lib.Plan, unit: ModuleType, w: pathlib.Path, out: Mapping[str, Any],
          arch: str, seed: int) -> dict[str, Any]:
    paths, fps = _paths(out, w), out.get("fingerprints") or {}
    return {sp: unit.load(paths[sp], f"{arch}/seed{seed}/{sp}", fps.get(sp))
            for sp in plan.splits}


def stage_seconds(st: Stages) -> dict[str, float]:
    out = {}
    for p in sorted(st.dir.glob("*.json")):
        v = st.load(p.stem)
        if isinstance(v, dict) and isinstance(v.get("seconds"), int | float):
            out[p.stem] = float(v["seconds"])
    return out


def _analysis(plan: plan_lib.Plan, unit: ModuleType, w: pathlib.Path, preds: Any
              ) -> list[tuple[str, Callable[[], Any]]]:
    """Every analysis stage after the runs, in order: diagnostics and power cells, probes per
    routed run, the unit's own (temperature), the VMoER section."""
    diagnostics = grid.tasks(plan.cells(), plan.features, plan.power_cells(),
                             functools.partial(unit.cell_rows, plan, preds), plan.tests, w)
    probes = [(f"probes:{m.name}:{s}", functools.partial(unit.probe_run, plan, preds, m.name, s))
              for m in plan.routed for s in plan.seeds] if "probes" in plan.sections else []
    return diagnostics + probes + unit.analysis(plan, w, preds) + (
        vmoer_tasks(plan, w) if "vmoer" in plan.sections else [])


# The VMoER section: the study's one call into it (`study.vmoer`, for every MoE source).
def vmoer_tasks(plan: plan_lib.Plan, w: pathlib.Path) -> list[tuple[str, Callable[[], Any]]]:
    """The VMoER section's stages: one `vmoer:<seed>` per seed (det trained or imported, then
    every router of `experiment.routers` from scratch or fitted on it, `vmoer.seed_stage`; every
    process together, each router but det fitted by one)."""
    from routecal.study import vmoer

    source = vmoer.make_source(plan.load_vmoer(), w / "vmoer")
    return [(f"vmoer:{s}", spmd(lambda s=s: vmoer.seed_stage(source, s, w / "vmoer")))
            for s in source.seeds]


def vmoer_results(plan: plan_lib.Plan, st: Stages, w: pathlib.Path) -> dict[str, Any]:
    """The VMoER section's results from its stages (`vmoer_tasks`): `vmoer.assemble`, which
    writes W/tables/vmoer.csv, one row per router; the same shape for every source (the report
    draws it: `report.vmoer_lm`)."""
    from routecal.study import vmoer

    source = vmoer.make_source(plan.load_vmoer(), w / "vmoer")
    stored = {s: st.load(f"vmoer:{s}") for s in source.seeds}
    per_run = {n: {s: stored[s]["runs"][n] for s in source.seeds} for n in source.names}
    out = vmoer.assemble(source, per_run, w / "tables" / "vmoer.csv",
                         write=parallel.is_primary())
    out["stage_seconds"] = {s: stored[s]["seconds"] for s in source.seeds}
    return out
