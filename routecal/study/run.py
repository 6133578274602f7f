"""The study, for every unit: plan -> runs -> analysis stages -> results.json -> report.

    routecal study --config configs/study.py --workdir W          # digits (example unit)
    routecal study --config configs/study_lm.py:quick --workdir W # language model (token unit)
    routecal study --config configs/study_lm.py --workdir W --worker   # a second job's share
    routecal diagnose --predictions preds.npz                    # bring your own traces

From Python: `routecal.study.run.run(config, workdir)`.

The config becomes a typed plan first (`plan.from_config`: `Plan` for examples, `TokenPlan` for
tokens), validated whole before anything is written. Its unit (`UNITS`) says which stages run:
per (model, seed) run two stages that train (or import) and predict, then the analysis stages
(diagnostics, power, probes, temperature scaling, VMoER; `study.example_unit`, `study.token_unit`),
then `unit.assemble` builds `W/results.json` (every number, with config and versions) from the
stored stages, the verdicts are added and the report is drawn from it. Every stage writes
`W/stages/<stage>.json` when it finishes and is skipped when that file exists, so a killed study
resumes where it stopped (training resumes from its orbax checkpoint); `W/study_config.json`
keys the workdir to its config (`files.records`). Predictions are read through
`routecal.files.predictions`.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import ml_collections

from routecal import parallel
from routecal.files import workdir as workdir_io
from routecal.study import example_unit, token_stages, token_unit
from routecal.study import plan as plan_lib
from routecal.study.stages import (
    Stages,
    check_workdir_config,
    record_workdir_config,
    to_json,
    write_json,
)

# A unit is a module with the same functions of the plan (shapes: `example_unit`):
#   check(plan)                             configs a plan cannot check alone
#   runs(plan, w, step, producer)           the runs' stages, in order -> their predictions
#   load_runs(plan, w, stages)              the same predictions, from stored stages (a worker)
#   run_stage_names(plan)                   the runs' stage names
#   analysis(plan, w, predictions)          [(stage name, thunk)] after the runs, in order
#   assemble(plan, stages, w, predictions, wall_seconds)  results.json without verdicts
#   verdicts(results as JSON), write_report(workdir)
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
    plan = plan_lib.from_config(cfg)  # validated before anything is written
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
        unit.write_report(w)
    return results


def _work(plan: Any, unit: ModuleType, w: pathlib.Path) -> dict[str, Any]:
    """The `worker=True` loop: pending analysis stages in reverse order (see `run`)."""
    st = Stages(w)
    missing = [n for n in unit.run_stage_names(plan) if not st.done(n)]
    if missing:
        raise ValueError(f"worker: the study in {w} has not finished its runs {missing}; start "
                         "the worker once every model is trained and predicted")
    done = []
    for name, fn in reversed(unit.analysis(plan, w, unit.load_runs(plan, w, st))):
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
    tasks = unit.analysis(plan, w, preds)
    bar.total += len(tasks)
    # multi-host: each stage computed once, by one process (`Stages.run_all`)
    st.run_all(tasks, on_stage=lambda name: (bar.set_postfix_str(name), bar.update()))
    bar.close()
    results = unit.assemble(plan, st, w, preds,
                            (time.perf_counter() - t_start) if fresh else None)
    results["verdicts"] = unit.verdicts(to_json(results))
    return write_json(w / "results.json", results)
