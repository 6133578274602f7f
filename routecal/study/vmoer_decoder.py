"""VMoER on a language model, scored on multiple-choice QA (Li & Wicker, arXiv:2603.09453, Sec. 5).

    out = run(cfg, workdir)          # cfg: configs/vmoer_lm.py; writes workdir/tables/vmoer.csv

Per seed: an MoE decoder (`routecal.models.decoder`) is pretrained on the embedded stdlib corpus
(next-token loss) and fine-tuned on the embedded continuation MCQA (`routecal.data.mcqa`: choose
the true next bytes of a context among 4; option scores by `experiment.scoring`: the answer
letter's logit restricted to A-D, or the length-normalised option log-likelihood, see
`vmoer_decoder_data.py`). `det` is trained once per seed and every `*_retrofit` router is fitted on
it (the default: one shared base model per seed): the router copies the fine-tuned `det` model
(`vmoer.retrofit_from`) and trains only its routing posterior (`routers.RETROFIT_TRAINABLE`,
optax through `nnx.Optimizer(wrt=...)`) on the MCQA train split; beta is chosen on the calib
split from `experiment.beta_grid`, ensemble members are fitted one by one and SWAG collects the
router weights' moments (`vmoer_decoder_fit.py`); fixed_temp has nothing to fit and is evaluated as
copied. Routers without the suffix are trained from scratch (both phases). Evaluation is in
`vmoer_decoder_eval.py`; MCQA sets: in-domain (held-out stdlib modules), near (Lib/test), far (pydoc
prose), all built deterministically from `data.mcqa_seed`.

Letters: B batch, T tokens, V vocabulary, K options.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from routecal import parallel
from routecal.files import workdir as workdir_io
from routecal.models import routers
from routecal.study import vmoer_decoder_fit
from routecal.study.vmoer_decoder_data import (
    DOMAINS,
    build_data,
    check_scoring,
)
from routecal.study.vmoer_decoder_fit import (  # noqa: F401 (the model and its fit live there)
    fit,
    make_model,
    model_config,
    seq_limit,
)

__all__ = ["DOMAINS", "assemble", "build_data", "check_routers", "check_scoring", "fit",
           "make_model", "model_config", "run", "run_seed", "train_router"]

# ----------------------------------------------------------------------------------------------
# Models and steps
# ----------------------------------------------------------------------------------------------


def train_router(cfg, data, router: str, seed: int, det_model=None) -> tuple[nnx.Module, dict]:
    """One trained model: from scratch (LM + MCQA with `router`) or, for "<name>_retrofit", the
    fine-tuned `det_model` with only the routing posterior of <name> fitted on MCQA
    (`vmoer_decoder_fit.retrofit`).

    "ensemble" from scratch: a router ensemble shares the experts, so its members cannot be
    trained as independent whole models; the backbone is trained from scratch with one router
    (LM + MCQA at this seed: exactly `det_model`'s training, so `det_model` is reused) and every
    member is then fitted alone from the router's own initialiser N(0, 0.02^2), its own seed,
    the same MCQA objective (`vmoer_decoder_fit.fit_ensemble(scratch=True)`), not drawn per token
    in a joint fit."""
    t0 = time.perf_counter()
    t = cfg.train
    base, is_retrofit = routers.split_method(router)
    if is_retrofit or base == "ensemble":
        if det_model is None:
            raise ValueError(f"experiment.routers: {router} needs 'det' trained first")
        if is_retrofit:
            model, log = vmoer_decoder_fit.retrofit(cfg, data, base, seed, det_model)
        else:  # independent members from the router's initialiser on the scratch backbone
            model, log = vmoer_decoder_fit.fit_ensemble(cfg, data, seed, det_model, scratch=True)
    else:
        model = make_model(cfg, base, seed, seq_limit(cfg))
        log: dict[str, Any] = {}
        log["lm"] = fit(
            model, data, t, phase="lm", steps=int(t.pretrain_steps), lr=float(t.lr),
            trainable="all", seed=seed,
        )  # fmt: skip
        collect = vmoer_decoder_fit.swag_hook(model, int(t.finetune_steps)) if base == "swag" else None
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


def check_routers(e: ml_collections.ConfigDict) -> list[str]:
    """`experiment.routers` as a list; ValueError without 'det' or for an unknown/old name."""
    names = list(e.routers)
    if "det" not in names:
        raise ValueError("experiment.routers: must include 'det' (the baseline)")
    for n in names:
        routers.split_method(n)  # ValueError naming the new name of an old one
    return names


def run_seed(cfg: ml_collections.ConfigDict, data: dict[str, Any], seed: int,
             on_router: Any = None) -> dict[str, dict[str, Any]]:
    """Every router of `experiment.routers` for one seed: `det` first (trained), then each
    router from scratch or retrofitted on it, each evaluated (`vmoer_decoder_eval.evaluate`) with its
    train time, wall and CPU seconds (compilation included) and fitted settings.

    Args:
      on_router: called as `on_router(runs)` after each router (the experiment saves its seed
        file there).
    Returns:
      {router: metrics}.
    """
    from routecal.study import vmoer_decoder_eval as ev

    names = check_routers(cfg.experiment)

    def run(name: str, det: Any) -> tuple[Any, dict[str, Any]]:
        w0, p0 = time.perf_counter(), time.process_time()
        model, log = train_router(cfg, data, name, int(seed), det)
        res = ev.evaluate(model, data, cfg.experiment, seed=int(seed))
        res["train_time_s"] = log["time_s"]
        res["wall_s"] = time.perf_counter() - w0
        res["cpu_s"] = time.process_time() - p0
        res["final_task_loss"] = float(np.mean(log["mcqa"][-10:])) if log.get("mcqa") else None
        res.update({k: v for k, v in log.items() if k not in ("lm", "mcqa", "time_s")})
        return model, res

    # det on every process (each router starts from it); multi-host: each other router trained
    # once, by one process (`parallel.share`)
    det, runs = run("det", None)
    runs = {"det": runs}
    others = [n for n in names if n != "det"]
    done = parallel.share(lambda k: run(others[k], det)[1], len(others), f"vmoer_seed{seed}")
    for name, res in [("det", runs["det"]), *zip(others, done, strict=True)]:
        runs[name] = res
        print(f"[vmoer_lm] seed {seed} {name}: " + ev.one_line(res), flush=True)
        if on_router is not None:
            on_router(runs)
    return runs


def assemble(cfg: ml_collections.ConfigDict, per_run: dict[str, dict[int, dict[str, Any]]],
             csv_path: pathlib.Path, write: bool = True) -> dict[str, Any]:
    """The experiment's results from per_run[router][seed] (FLOP overheads added in place):
    {per_run, table (seed bands), markdown, paper_claims, scoring, seeds, runs_wall_s, runs_cpu_s,
    config}; writes `csv_path` (one row per router, `vmoer_decoder_eval.write_csv`) when `write`
    (multi-host: process 0)."""
    from routecal.study import vmoer_decoder_eval as ev

    names = check_routers(cfg.experiment)
    flops = ev.flop_overheads(cfg, names)
    for name in names:
        for r in per_run[name].values():
            r.update(flops[name])
    table = ev.summarize(per_run)
    if write:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        ev.write_csv(table, names, csv_path)
    return {
        "per_run": per_run,
        "table": table,
        "markdown": ev.to_markdown(table, names),
        "paper_claims": ev.PAPER_CLAIMS,
        "scoring": check_scoring(str(cfg.experiment.get("scoring", "letter"))),
        "seeds": [int(x) for x in cfg.experiment.seeds],
        # summed over every (router, seed) run, whichever process trained it
        "runs_wall_s": sum(r.get("wall_s", 0.0) for v in per_run.values() for r in v.values()),
        "runs_cpu_s": sum(r.get("cpu_s", 0.0) for v in per_run.values() for r in v.values()),
        "config": json.loads(cfg.to_json_best_effort()),
    }


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates every (router, seed) of `cfg.experiment` under its option scoring
    (`experiment.scoring`, `vmoer_decoder_data.SCORINGS`); writes
    `workdir/vmoer_lm_results.json` and `workdir/tables/vmoer.csv` (one row per router).

    Each finished seed is saved as `workdir/seed<s>.json` and loaded instead of retrained, so
    seeds can run in parallel processes (`experiment.seeds=(s,)` each) and a last call with all
    seeds only assembles the table (`experiment.assemble_only=True` also tables partial seeds).
    The file is rewritten after every router; a seed found incomplete is retrained from `det`.
    The LM study runs the same pieces as its VMoER section (`run_seed`, `assemble`)."""
    e = cfg.experiment
    scoring = check_scoring(str(e.get("scoring", "letter")))
    names = check_routers(e)
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

        def save(runs: dict[str, Any], seed_file: pathlib.Path = seed_file) -> None:
            workdir_io.write_text(seed_file, json.dumps(runs, default=float) + "\n")  # atomic

        for name, res in run_seed(cfg, data, int(seed), on_router=save).items():
            per_run[name][int(seed)] = res
    out = assemble(cfg, per_run, wd / "tables" / "vmoer.csv")
    out["time_s"] = time.perf_counter() - t0  # this call (an assembling call trains nothing)
    out["cpu_time_s"] = time.process_time() - c0
    workdir_io.write_text(wd / "vmoer_lm_results.json",
                          json.dumps(out, indent=2, default=float) + "\n")
    return out
