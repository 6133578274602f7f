"""VMoER on a language model, scored on multiple-choice QA (Li & Wicker, arXiv:2603.09453, Sec. 5).

    out = run(cfg, workdir)          # cfg: configs/vmoer_lm.py; writes workdir/tables/vmoer.csv

Per seed: an MoE decoder (`routecal.models.decoder`) is pretrained on the embedded stdlib corpus
(next-token loss) and fine-tuned on the embedded continuation MCQA (`routecal.data.mcqa`: choose
the true next bytes of a context among 4; option scores by `experiment.scoring`: the answer
letter's logit restricted to A-D, or the length-normalised option log-likelihood, see
`vmoer_lm_data.py`). `det` is trained once per seed and every `*_retrofit` router is fitted on
it (the default: one shared base model per seed): the router copies the fine-tuned `det` model
(`vmoer.retrofit_from`) and trains only its routing posterior (`routers.RETROFIT_TRAINABLE`,
optax through `nnx.Optimizer(wrt=...)`) on the MCQA train split; beta is chosen on the calib
split from `experiment.beta_grid`, ensemble members are fitted one by one and SWAG collects the
router weights' moments (`vmoer_lm_fit.py`); fixed_temp has nothing to fit and is evaluated as
copied. Routers without the suffix are trained from scratch (both phases). Evaluation is in
`vmoer_lm_eval.py`; MCQA sets: in-domain (held-out stdlib modules), near (Lib/test), far (pydoc
prose), all built deterministically from `data.mcqa_seed`.

Letters: B batch, T tokens, V vocabulary, K options.
"""

from __future__ import annotations

import json
import time
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from routecal.files import workdir as workdir_io
from routecal.models import routers
from routecal.study import vmoer_lm_fit
from routecal.study.vmoer_lm_data import (
    DOMAINS,
    build_data,
    check_scoring,
)
from routecal.study.vmoer_lm_fit import (  # noqa: F401 (the model and its fit live there)
    fit,
    make_model,
    model_config,
    seq_limit,
)

__all__ = ["DOMAINS", "build_data", "fit", "make_model", "model_config", "run", "train_router"]

# ----------------------------------------------------------------------------------------------
# Models and steps
# ----------------------------------------------------------------------------------------------


def train_router(cfg, data, router: str, seed: int, det_model=None) -> tuple[nnx.Module, dict]:
    """One trained model: from scratch (LM + MCQA with `router`) or, for "<name>_retrofit", the
    fine-tuned `det_model` with only the routing posterior of <name> fitted on MCQA
    (`vmoer_lm_fit.retrofit`)."""
    t0 = time.perf_counter()
    t = cfg.train
    base, is_retrofit = routers.split_method(router)
    if is_retrofit:
        if det_model is None:
            raise ValueError(f"experiment.routers: {router} needs 'det' trained first")
        model, log = vmoer_lm_fit.retrofit(cfg, data, base, seed, det_model)
    else:
        model = make_model(cfg, base, seed, seq_limit(cfg))
        log: dict[str, Any] = {}
        log["lm"] = fit(
            model, data, t, phase="lm", steps=int(t.pretrain_steps), lr=float(t.lr),
            trainable="all", seed=seed,
        )  # fmt: skip
        collect = vmoer_lm_fit.swag_hook(model, int(t.finetune_steps)) if base == "swag" else None
        log["mcqa"] = fit(
            model, data, t, phase="mcqa", steps=int(t.finetune_steps), lr=float(t.finetune_lr),
            trainable="all", seed=seed + 1, on_step=collect.hook if collect else None,
        )  # fmt: skip
        if collect is not None:
            collect.install()
    log["time_s"] = time.perf_counter() - t0
    return model, log


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates every (router, seed) of `cfg.experiment` under its option scoring
    (`experiment.scoring`, `vmoer_lm_data.SCORINGS`); writes
    `workdir/vmoer_lm_results.json` and `workdir/tables/vmoer.csv` (one row per router).

    Each finished seed is saved as `workdir/seed<s>.json` and loaded instead of retrained, so
    seeds can run in parallel processes (`experiment.seeds=(s,)` each) and a last call with all
    seeds only assembles the table (`experiment.assemble_only=True` also tables partial seeds).
    The file is rewritten after every router; a seed found incomplete is retrained from `det`."""
    import pathlib

    from routecal.study import vmoer_lm_eval as ev

    e = cfg.experiment
    scoring = check_scoring(str(e.get("scoring", "letter")))
    names = list(e.routers)
    if "det" not in names:
        raise ValueError("experiment.routers: must include 'det' (the baseline)")
    for n in names:
        routers.split_method(n)  # ValueError naming the new name of an old one
    wd = pathlib.Path(workdir)
    (wd / "tables").mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    data = None if e.get("assemble_only", False) else build_data(cfg.data, scoring)
    per_run: dict[str, dict[int, dict[str, float]]] = {n: {} for n in names}
    for seed in e.seeds:
        seed_file = wd / f"seed{int(seed)}.json"
        done = workdir_io.read_json(seed_file, "vmoer_lm") if seed_file.exists() else {}
        if set(done) >= set(names) or e.get("assemble_only", False):
            # finished earlier (or by a parallel process), or only assembling: no training
            for name in names:
                if name in done:
                    per_run[name][int(seed)] = done[name]
            continue
        det, runs = None, {}
        for name in ["det", *[n for n in names if n != "det"]]:
            w0, p0 = time.perf_counter(), time.process_time()
            model, log = train_router(cfg, data, name, int(seed), det)
            if name == "det":
                det = model
            res = ev.evaluate(model, data, e, seed=int(seed))
            res["train_time_s"] = log["time_s"]
            # train + eval of this router (compilation included: first seed of a process)
            res["wall_s"] = time.perf_counter() - w0
            res["cpu_s"] = time.process_time() - p0
            res["final_task_loss"] = float(np.mean(log["mcqa"][-10:])) if log.get("mcqa") else None
            res.update({k: v for k, v in log.items() if k not in ("lm", "mcqa", "time_s")})
            runs[name] = per_run[name][int(seed)] = res
            print(f"[vmoer_lm] seed {seed} {name}: " + ev.one_line(res), flush=True)
            workdir_io.write_text(seed_file, json.dumps(runs, default=float) + "\n")  # atomic
    flops = ev.flop_overheads(cfg, names)
    for name in names:
        for r in per_run[name].values():
            r.update(flops[name])
    table = ev.summarize(per_run)
    ev.write_csv(table, names, wd / "tables" / "vmoer.csv")
    out = {
        "per_run": per_run,
        "table": table,
        "markdown": ev.to_markdown(table, names),
        "paper_claims": ev.PAPER_CLAIMS,
        "scoring": scoring,
        "seeds": [int(x) for x in e.seeds],
        "time_s": time.perf_counter() - t0,  # this call (an assembling call trains nothing)
        "cpu_time_s": time.process_time() - c0,
        # summed over every (router, seed) run, whichever process trained it
        "runs_wall_s": sum(r.get("wall_s", 0.0) for v in per_run.values() for r in v.values()),
        "runs_cpu_s": sum(r.get("cpu_s", 0.0) for v in per_run.values() for r in v.values()),
        "config": json.loads(cfg.to_json_best_effort()),
    }
    workdir_io.write_text(wd / "vmoer_lm_results.json",
                          json.dumps(out, indent=2, default=float) + "\n")
    return out
