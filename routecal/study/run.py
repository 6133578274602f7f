"""The study, for every unit: plan -> runs -> analysis stages -> results.json -> report.

    routecal study --config configs/study.py --workdir W          # digits (example unit)
    routecal study --config configs/study_lm.py:quick --workdir W # language model (token unit)
    routecal study --config configs/study_lm.py --workdir W --worker   # a second job's share
    routecal diagnose --predictions preds.npz                    # bring your own traces

From Python: `routecal.study.run.run(config, workdir)`.

The config becomes the typed `plan.Plan` first (source, unit, domains, sections), validated whole
before anything is written. Its unit (`UNITS`) adapts the stages: per (model, seed) run two
stages that train (or import) and predict, then the plan's sections (diagnostics, power, probes,
temperature scaling: `study.example_unit`, `study.token_unit`; the VMoER section: `vmoer_tasks`,
the one call into it), then `unit.assemble` builds `W/results.json` (every number, with config and versions) from the
stored stages, the verdicts are added (`routecal.report.verdicts`) and the report is drawn from
it (`routecal.report.write_report`). Every stage writes
`W/stages/<stage>.json` when it finishes and is skipped when that file exists, so a killed study
resumes where it stopped (training resumes from its orbax checkpoint); `W/study_config.json`
keys the workdir to its config (`files.records`). Predictions are read through
`routecal.files.predictions`.
"""

from __future__ import annotations

import functools
import pathlib
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import ml_collections

from routecal import parallel, report
from routecal.files import workdir as workdir_io
from routecal.study import example_unit, grid, token_stages, token_unit
from routecal.study import plan as plan_lib
from routecal.study.stages import (
    Stages,
    check_workdir_config,
    record_workdir_config,
    spmd,
    to_json,
    write_json,
)

# A unit is a module with the same functions of the plan (shapes: `example_unit`):
#   check(plan)                             configs a plan cannot check alone
#   runs(plan, w, step, producer)           the runs' stages, in order -> their predictions
#   load_runs(plan, w, stages)              the same predictions, from stored stages (a worker)
#   run_stage_names(plan)                   the runs' stage names
#   cell_rows(plan, predictions, cell)      one diagnostics cell's rows (`study.grid`)
#   analysis(plan, w, predictions)          [(stage name, thunk)] after the diagnostics', in
#                                           order (then the VMoER section's: `vmoer_tasks`)
#   assemble(plan, stages, w, predictions, wall_seconds)  results.json without verdicts
UNITS = {"example": example_unit, "token": token_unit}


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, write_report: bool = True,
        producer: token_stages.Producer | None = None, worker: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the study in `workdir`; returns the results dict.

    Args:
      cfg: a study config (`configs/study.py`, `configs/study_lm.py`, ...).
      workdir: where runs, predictions, stage outputs, results.json and the report go.
      write_report: also write report.md / report.html.
      producer: token unit only: (model, seed, run_dir) -> {"paths": {split: predictions}, ...};
        default trains and predicts (`token_stages.train_predict`). Tests pass a synthetic one.
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
    missing = [n for n in unit.run_stage_names(plan) if not st.done(n)]
    if missing:
        raise ValueError(f"worker: the study in {w} has not finished its runs {missing}; start "
                         "the worker once every model is trained and predicted")
    done = []
    for name, fn in reversed(_analysis(plan, unit, w, unit.load_runs(plan, w, st))):
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
    bar = tqdm(total=len(unit.run_stage_names(plan)), desc="study", unit="stage")

    def step(name: str, fn: Callable[[], Any], check: Callable[[Any], None] | None = None
             ) -> Any:
        bar.set_postfix_str(name)
        out = st.run(name, fn, check)
        bar.update()
        return out

    preds = unit.runs(plan, w, step, producer)
    tasks = _analysis(plan, unit, w, preds)
    bar.total += len(tasks)
    # multi-host: each stage computed once, by one process (`Stages.run_all`)
    st.run_all(tasks, on_stage=lambda name: (bar.set_postfix_str(name), bar.update()))
    bar.close()
    results = unit.assemble(plan, st, w, preds,
                            (time.perf_counter() - t_start) if fresh else None)
    results["diagnostics"] = (grid.results(plan.cells(), plan.features, st.load, plan.tests, w)
                              if plan.cells() else {})
    results["power"] = grid.power_rows(plan.power_cells(), st.load)
    results["vmoer"] = vmoer_results(plan, st, w) if "vmoer" in plan.sections else {}
    results["verdicts"] = report.verdicts(to_json(results))
    return write_json(w / "results.json", results)


def _analysis(plan: plan_lib.Plan, unit: ModuleType, w: pathlib.Path, preds: Any
              ) -> list[tuple[str, Callable[[], Any]]]:
    diagnostics = grid.tasks(plan.cells(), plan.features, plan.power_cells(),
                             functools.partial(unit.cell_rows, plan, preds), plan.tests, w)
    return diagnostics + unit.analysis(plan, w, preds) + (
        vmoer_tasks(plan, w) if "vmoer" in plan.sections else [])


# The VMoER section: the study's one call into it (`study.vmoer`, for every MoE source).
def vmoer_tasks(plan: plan_lib.Plan, w: pathlib.Path) -> list[tuple[str, Callable[[], Any]]]:
    """The VMoER section's stages: `vmoer` (classifier source: det vs every router of
    `experiment.routers`, `vmoer.run` in W/vmoer) or one `vmoer:<seed>` per seed (decoders: det
    trained, then every router from scratch or retrofitted on it, `vmoer.run_seed`)."""
    from routecal.study import vmoer

    vcfg = plan.load_vmoer()
    if plan.source == "classifier":
        # trains over the global mesh: every process together (`stages.spmd`)
        return [("vmoer", spmd(lambda: vmoer.report_rows(vmoer.run(vcfg, w / "vmoer"))))]
    source = vmoer.make_source(vcfg, w / "vmoer")
    # every process together, each router but det fitted by one (`vmoer.run_seed`)
    return [(f"vmoer:{s}", spmd(lambda s=s: {"runs": vmoer.run_seed(source, s)}))
            for s in source.seeds]


def vmoer_results(plan: plan_lib.Plan, st: Stages, w: pathlib.Path) -> dict[str, Any]:
    """The VMoER section's results from its stages (`vmoer_tasks`); on decoders
    `vmoer.assemble`, which writes W/tables/vmoer.csv, one row per router."""
    if plan.source == "classifier":
        return st.load("vmoer")
    from routecal.study import vmoer

    source = vmoer.make_source(plan.load_vmoer(), w / "vmoer")
    stored = {s: st.load(f"vmoer:{s}") for s in source.seeds}
    per_run = {n: {s: stored[s]["runs"][n] for s in source.seeds} for n in source.names}
    out = vmoer.assemble(source, per_run, w / "tables" / "vmoer.csv",
                         write=parallel.is_primary())
    out["stage_seconds"] = {s: stored[s]["seconds"] for s in source.seeds}
    return out
