"""The study at language-model scale: AttnRes decoders on the embedded stdlib corpus, token-level.

    routecal study --config configs/study_lm.py --workdir W          # the default (see config)
    routecal study --config configs/study_lm.py:quick --workdir W    # under 3 minutes

From Python: `routecal.pipeline.lm_study.run(config, workdir)`. Plan (`lm_plan.LMPlan`), then
stages (`lm_stages`), each stored in `W/stages/` and skipped when done (a killed study redoes
nothing it finished: train/predict per run, one stage per diagnostics cell, power per cell of the
first `diagnostics.power_seeds` seeds, probes per run, then temperature scaling per run from the
reloaded decoder, `lm_temperature`: a workdir of an older routecal resumes and runs only these),
then `W/results.json` (every number, with config, versions, wall time and peak RSS) and the report
(`routecal.report.lm`).
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

from routecal import workdir as workdir_io
from routecal.pipeline import lm_results, lm_stages, lm_temperature
from routecal.pipeline.lm_plan import LMPlan
from routecal.pipeline.stages import Stages, record_workdir_config


def is_lm_config(cfg: ml_collections.ConfigDict) -> bool:
    """True for a language-model study config (`configs/study_lm.py`)."""
    return cfg.get("study", "") == "lm"


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, write_report: bool = True,
        producer: lm_stages.Producer | None = None) -> dict[str, Any]:
    """Runs (or resumes) the LM study in `workdir`; returns the results dict.

    Args:
      producer: (model, seed, run_dir) -> {"paths": {split: predictions}, ...}; default trains
        and predicts (`lm_stages.train_predict`). Tests pass a synthetic one.
    """
    t_start = time.perf_counter()
    plan = LMPlan.from_config(cfg)  # validated before anything is written
    w = pathlib.Path(workdir)
    with workdir_io.lock(w, "study"):  # one process per workdir
        record_workdir_config(w, plan.config, "study_config.json", "study")
        results = _run(plan, w, producer, t_start)
    if write_report:
        from routecal.report import lm as lm_report

        lm_report.write_report(w)
    return results


def _run(plan: LMPlan, w: pathlib.Path, producer: lm_stages.Producer | None, t_start: float
         ) -> dict[str, Any]:
    from tqdm.auto import tqdm

    st = Stages(w)
    fresh = not any(st.dir.glob("*.json"))
    produce = producer or functools.partial(
        lm_stages.train_predict, predict_options=plan.predict_options,
        depth_rows=plan.depth_rows, domains=plan.domains)
    n_feats = len(plan.features)
    n_probes = len(plan.routed) * len(plan.seeds)
    bar = tqdm(total=len(plan.runs) * 2 + len(plan.cells()) * n_feats + len(plan.power_cells())
               + 2 * n_probes,
               desc="lm study")

    def step(name: str, fn: Callable[[], Any]) -> Any:
        bar.set_postfix_str(name)
        out = st.run(name, fn)
        bar.update()
        return out

    runs, toks = {}, {}
    for m, s in plan.runs:
        runs[m.name, s] = step(f"run:{m.name}:{s}", lambda m=m, s=s: lm_stages.relative_paths(
            produce(m, s, w / "runs" / m.name / f"seed{s}"), w))
        splits = [plan.calib_split, *[sp for _, sp in plan.domains]]
        toks[m.name, s] = {sp: lm_stages.load_tokens(
            workdir_io.from_relative(runs[m.name, s]["paths"][sp], w), f"{m.name}/seed{s}/{sp}")
            for sp in splits}
        step(f"summary:{m.name}:{s}", lambda m=m, s=s: lm_stages.run_summary(
            toks[m.name, s], plan.tests.n_bins))
    key = jax.random.key(plan.diag_seed)
    for i, (d, a, s) in enumerate(plan.cells()):
        t = lm_stages.cell_tokens(toks[a, s][dict(plan.domains)[d]], plan)
        ck = jax.random.fold_in(key, i)
        for j, f in enumerate(plan.features):
            name = f"diag:{d}:{a}:{s}:{f}"
            step(name, lambda t=t, f=f, ck=ck, j=j, name=name: lm_stages.diagnose_cell(
                t, f, key=jax.random.fold_in(ck, j), plan=plan,
                null_path=lm_results.null_path(w, name)))
        if (d, a, s) not in plan.power_cells():
            continue
        step(f"power:{d}:{a}:{s}", lambda t=t, ck=ck: lm_stages.power_cell(
            t, key=jax.random.fold_in(ck, 10_000), plan=plan))
    for m in plan.routed:
        for s in plan.seeds:
            step(f"probes:{m.name}:{s}", lambda m=m, s=s: lm_stages.probe_run(
                toks[m.name, s][plan.calib_split],
                {d: toks[m.name, s][sp] for d, sp in plan.domains}, seed=s, plan=plan))
    for m in plan.routed:  # after every older stage: an existing workdir resumes into these
        for s in plan.seeds:
            run_dir = w / "runs" / m.name / f"seed{s}"
            if not lm_temperature.has_trained_model(run_dir):  # a stand-in producer's run
                bar.update()
                continue
            step(f"temperature:{m.name}:{s}", lambda m=m, s=s, run_dir=run_dir:
                 lm_temperature.temperature_run(
                     run_dir, toks[m.name, s][plan.calib_split],
                     {d: toks[m.name, s][sp] for d, sp in plan.domains},
                     splits=dict(plan.domains), seed=s, plan=plan))
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

