"""The study at language-model scale: AttnRes decoders on the embedded stdlib corpus, token-level.

    routecal study --config configs/study_lm.py --workdir W          # the default (see config)
    routecal study --config configs/study_lm.py:quick --workdir W    # under 3 minutes

From Python: `routecal.study.lm_study.run(config, workdir)`. Plan (`plan.LMPlan`), then
stages (`lm_stages`), each stored in `W/stages/` and skipped when done (a killed study redoes
nothing it finished: train/predict per run, one stage per diagnostics cell, power per cell of the
first `diagnostics.power_seeds` seeds, probes per run, then temperature scaling per run from the
reloaded decoder, `lm_temperature`, then the VMoER section per seed when `vmoer.enabled`: an MoE
decoder's det router against every router, `study.vmoer_lm`, its table in `W/tables/vmoer.csv`),
then `W/results.json` (every number, with config, versions, wall time and peak RSS) and the report
(`routecal.report.lm`).

The recommended test's clusters are documents by default (`diagnostics.cluster_unit`, "document" or
"row"). A workdir written before that key existed does not resume (its recorded study config
differs: the config guard names `diagnostics`; use a new workdir), and token predictions without
`doc_id` stop the diagnostics with an error naming them and the fix (re-predict, or
`diagnostics.cluster_unit=row`): nothing is silently clustered by rows.
"""

from __future__ import annotations

import functools
import json
import pathlib
import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from routecal import parallel
from routecal.files import workdir as workdir_io
from routecal.study import lm_results, lm_stages, lm_temperature
from routecal.study.plan import LMPlan
from routecal.study.stages import Stages, check_workdir_config, record_workdir_config


def is_lm_config(cfg: ml_collections.ConfigDict) -> bool:
    """True for a language-model study config (`configs/study_lm.py`)."""
    return cfg.get("study", "") == "lm"


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, write_report: bool = True,
        producer: lm_stages.Producer | None = None, worker: bool = False) -> dict[str, Any]:
    """Runs (or resumes) the LM study in `workdir`; returns the results dict.

    Args:
      producer: (model, seed, run_dir) -> {"paths": {split: predictions}, ...}; default trains
        and predicts (`lm_stages.train_predict`). Tests pass a synthetic one.
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
        writes, every process computes every stage; docs/ARCHITECTURE.md "Processes and
        workdirs").
    """
    t_start = time.perf_counter()
    plan = LMPlan.from_config(cfg)  # validated before anything is written
    w = pathlib.Path(workdir)
    if worker:
        check_workdir_config(w, plan.config, "study_config.json", "study")
        return _work(plan, w)
    # one job per workdir; multi-host: process 0 holds the lock for every process of the job
    with workdir_io.lock(w, "study", enabled=parallel.is_primary()):
        record_workdir_config(w, plan.config, "study_config.json", "study")
        results = _run(plan, w, producer, t_start)
    if write_report and parallel.is_primary():  # multi-host: process 0 writes the report
        from routecal.report import lm as lm_report

        lm_report.write_report(w)
    return results


def _splits(plan: LMPlan) -> list[str]:
    return [plan.calib_split, *[sp for _, sp in plan.domains]]


def _load_tokens(plan: LMPlan, w: pathlib.Path, out: dict[str, Any], m: str, s: int
                 ) -> dict[str, Any]:
    fps = out.get("fingerprints") or {}  # recorded when the run was predicted
    return {sp: lm_stages.load_tokens(workdir_io.from_relative(out["paths"][sp], w),
                                      f"{m}/seed{s}/{sp}", fps.get(sp)) for sp in _splits(plan)}


def _analysis(plan: LMPlan, w: pathlib.Path, toks: dict[tuple[str, int], Any]
              ) -> list[tuple[str, Callable[[], Any]]]:
    """Every analysis stage after the runs, in the study's order: (name, thunk). Diagnostics
    cells (one per routing summary) with their power cell, probes, temperature scaling."""
    tasks: list[tuple[str, Callable[[], Any]]] = []
    key = jax.random.key(plan.diag_seed)

    @functools.lru_cache(maxsize=2)
    def cell(d: str, a: str, s: int) -> dict[str, Any]:
        split = dict(plan.domains)[d]
        return lm_stages.cell_tokens(toks[a, s][split], plan, f"{a}/seed{s}/{split}")

    for i, (d, a, s) in enumerate(plan.cells()):
        ck = jax.random.fold_in(key, i)
        for j, f in enumerate(plan.features):
            name = f"diag:{d}:{a}:{s}:{f}"
            tasks.append((name, lambda d=d, a=a, s=s, f=f, ck=ck, j=j, name=name:
                          lm_stages.diagnose_cell(cell(d, a, s), f, key=jax.random.fold_in(ck, j),
                                                  plan=plan,
                                                  null_path=lm_results.null_path(w, name))))
        if (d, a, s) in plan.power_cells():
            tasks.append((f"power:{d}:{a}:{s}", lambda d=d, a=a, s=s, ck=ck: lm_stages.power_cell(
                cell(d, a, s), key=jax.random.fold_in(ck, 10_000), plan=plan)))
    for m in plan.routed:
        for s in plan.seeds:
            tasks.append((f"probes:{m.name}:{s}", lambda m=m, s=s: lm_stages.probe_run(
                toks[m.name, s][plan.calib_split],
                {d: toks[m.name, s][sp] for d, sp in plan.domains}, seed=s, plan=plan)))
    for m in plan.routed:  # after every older stage: an existing workdir resumes into these
        for s in plan.seeds:
            run_dir = w / "runs" / m.name / f"seed{s}"
            if not lm_temperature.has_trained_model(run_dir):  # a stand-in producer's run
                continue
            tasks.append((f"temperature:{m.name}:{s}", lambda m=m, s=s, run_dir=run_dir:
                          lm_temperature.temperature_run(
                              run_dir, toks[m.name, s][plan.calib_split],
                              {d: toks[m.name, s][sp] for d, sp in plan.domains},
                              splits=dict(plan.domains), seed=s, plan=plan)))
    return tasks + _vmoer_tasks(plan)


def _vmoer_tasks(plan: LMPlan) -> list[tuple[str, Callable[[], Any]]]:
    """The VMoER section, one stage per seed (`vmoer:<seed>`: det trained, then every router of
    `experiment.routers` from scratch or retrofitted on it, `vmoer_lm.run_seed`); the MCQA data
    are built once, when the first of these stages runs."""
    if plan.vmoer_config is None:
        return []
    from routecal.study import vmoer_lm

    vcfg = plan.load_vmoer()
    data = functools.cache(lambda: vmoer_lm.build_data(
        vcfg.data, vmoer_lm.check_scoring(str(vcfg.experiment.scoring))))
    return [(f"vmoer:{int(s)}", lambda s=int(s): {"runs": vmoer_lm.run_seed(vcfg, data(), s)})
            for s in vcfg.experiment.seeds]


def _work(plan: LMPlan, w: pathlib.Path) -> dict[str, Any]:
    """The `worker=True` loop: pending analysis stages in reverse order (see `run`)."""
    st = Stages(w)
    missing = [f"run:{m.name}:{s}" for m, s in plan.runs if not st.done(f"run:{m.name}:{s}")]
    if missing:
        raise ValueError(f"worker: the study in {w} has not finished its runs {missing}; start "
                         "the worker once every model is trained and predicted")
    toks = {(m.name, s): _load_tokens(plan, w, st.load(f"run:{m.name}:{s}"), m.name, s)
            for m, s in plan.runs}
    done = []
    for name, fn in reversed(_analysis(plan, w, toks)):
        if not st.done(name):
            st.run(name, fn)
            done.append(name)
            print(f"routecal study worker: {name}", flush=True)
    return {"stages": done}


def _run(plan: LMPlan, w: pathlib.Path, producer: lm_stages.Producer | None, t_start: float
         ) -> dict[str, Any]:
    from tqdm.auto import tqdm

    st = Stages(w)
    fresh = not any(st.dir.glob("*.json"))
    produce = producer or functools.partial(
        lm_stages.train_predict, predict_options=plan.predict_options,
        depth_rows=plan.depth_rows, domains=plan.domains)
    runs, toks = {}, {}
    bar = tqdm(total=len(plan.runs) * 2, desc="lm study")

    def step(name: str, fn: Callable[[], Any]) -> Any:
        bar.set_postfix_str(name)
        out = st.run(name, fn)
        bar.update()
        return out

    for m, s in plan.runs:
        runs[m.name, s] = step(f"run:{m.name}:{s}", lambda m=m, s=s: lm_stages.relative_paths(
            produce(m, s, w / "runs" / m.name / f"seed{s}"), w))
        toks[m.name, s] = _load_tokens(plan, w, runs[m.name, s], m.name, s)
        step(f"summary:{m.name}:{s}", lambda m=m, s=s: lm_stages.run_summary(
            toks[m.name, s], plan.tests.n_bins))
    tasks = _analysis(plan, w, toks)
    bar.total += len(tasks)
    for name, fn in tasks:
        step(name, fn)
    bar.close()
    results = lm_results.assemble(plan, st, w)
    results["meta"].update(
        stage_seconds=lm_results.stage_seconds(st),
        wall_seconds=(time.perf_counter() - t_start) if fresh else None,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        devices=[str(dv) for dv in jax.devices()],
    )
    lm_results.write(w, results)
    return json.loads((w / "results.json").read_text())

