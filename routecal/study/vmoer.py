"""The VMoER experiment: deterministic MoE vs variational routers, over seeds, on digits.

    results = run_vmoer_experiment(cfg, workdir)     # cfg: configs/vmoer_digits.py
    print(results["markdown"])

For every seed it trains (in `workdir/seed<s>/<method>`, resuming finished runs):
  det             deterministic MoE (mlp_type "moe")
  mfvr, vtsr, ... any router of `routecal.models.routers` (one vocabulary), from scratch
  *_retrofit      the same routers fitted on the frozen trained `det` model: every parameter is
                  copied from it (`train.init_from`) and only the router's
                  `RETROFIT_TRAINABLE` selection is trained, as the paper does for pretrained
                  models. ensemble_retrofit and swag_retrofit are fitted in memory (`fit_alone`,
                  the classifier task's own train step): every ensemble member alone from the
                  det router plus N(0, s^2), its own seed and batch order, its losses recorded
                  (`routers.baselines.fit_members`, as in the LM study); SWAG collects the
                  router weights' moments over the retrofit (`routers.swag.collect_from`,
                  constant learning rate after warm-up). Members train until their loss
                  plateaus (`baselines.Plateau`, `experiment.member_*`). The models are saved
                  like trained runs (`<method>/config.json` + orbax checkpoint: SWAG moments
                  and members included; `train.load_trained`), their metrics and fit logs
                  (member losses, steps, plateau flags) in `<method>/metrics.json`.
  ensemble        from scratch: a router ensemble shares its experts, so its members are
                  fitted alone on the backbone trained from scratch with one router (det's
                  training at this seed: det is reused), each from the router's initialiser
                  N(0, 0.02^2), its own seed (`fit_alone`); not drawn per token in a joint fit.
                  `swag` from scratch raises: the trainer has no per-step hook.
and measures on the test split:
  accuracy, ece            top-label ECE, `experiment.n_bins` equal-width bins
  stability                routing stability: mean Jaccard of the selected-expert sets of every
                           MoE layer, clean vs Gaussian-perturbed inputs (std
                           `experiment.stability_noise_std`); the same routing noise draws for
                           both inputs (the model is cloned), so it measures input sensitivity
  ood_auroc                OOD AUROC of predictive entropy (test split = in-distribution; OOD
                           sets from `routecal.data.shift`, `experiment.ood_kinds`), mean over
                           the OOD kinds; also `ood_auroc_maxprob` and, for the stochastic
                           routers, `ood_auroc_mi` (mutual information over S sampled passes)
  flops_overhead_pct       whole-model forward FLOPs over the deterministic MoE (XLA cost
                           analysis), and the realistic-layer overhead from `routecal.flops`.
The table gives, per metric and method, the mean over seeds, the seed band (std, min, max) and the
relative change of the mean vs `det` in percent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from routecal import flops, parallel
from routecal.data import Split, load_dataset, shift
from routecal.files import records
from routecal.files import workdir as workdir_io
from routecal.models import routers, vmoer
from routecal.models.routers import baselines, common, swag
from routecal.models.transformer import ModelConfig
from routecal.report.vmoer_lm import band_cell
from routecal.stats import calibration, uncertainty
from routecal.stats.seeds import seed_band
from routecal.training import classify, optim, predict


def method_spec(method: str) -> tuple[str, bool]:
    """A method name (`routers` vocabulary: a router name, optionally with "_retrofit") ->
    (model mlp_type, retrofit?); ValueError for an unknown name, naming the new name of an old
    one ("logit" -> "mfvr", "temp" -> "vtsr")."""
    try:
        base, retrofit = routers.split_method(method)
    except ValueError as e:
        raise ValueError(f"experiment.methods: {e}") from None
    if base == "det" and retrofit:
        raise ValueError("experiment.methods: 'det_retrofit' has nothing to fit")
    if base == "swag" and not retrofit:
        raise ValueError("experiment.methods: 'swag' from scratch collects no SWAG moments here "
                         "(the trainer has no per-step hook); use 'swag_retrofit'")
    return ("moe" if base == "det" else f"vmoer_{base}"), retrofit
METRICS = (
    "stability",
    "ece",
    "ood_auroc",
    "ood_auroc_maxprob",
    "ood_auroc_mi",
    "accuracy",
    "nll",
    "flops_overhead_pct",
)
# The paper's headline numbers (relative to the deterministic router).
PAPER_CLAIMS = {"stability": "+38%", "ece": "-94%", "ood_auroc": "+12%", "flops": "<1%"}


def run_config(cfg: ml_collections.ConfigDict, method: str, seed: int, det_workdir: str | None):
    """The training config of one (method, seed) run, without the `experiment` section."""
    mlp_type, retrofit = method_spec(method)
    d = cfg.to_dict()
    d.pop("experiment", None)
    rc = ml_collections.ConfigDict(d)
    rc.seed = int(seed)
    rc.model.mlp_type = mlp_type
    if retrofit:
        if det_workdir is None:
            raise ValueError(f"experiment.methods: {method} needs 'det' trained first")
        e = cfg.experiment
        rc.train.init_from = str(det_workdir)  # relative: read from the run's workdir
        base = routers.split_method(method)[0]
        rc.train.trainable = routers.RETROFIT_TRAINABLE[base] or vmoer.VROUTER_PATH
        rc.train.steps = int(e.retrofit_steps)
        rc.train.lr = float(e.retrofit_lr)
        rc.train.warmup = min(int(rc.train.warmup), max(int(e.retrofit_steps) // 10, 1))
        rc.train.checkpoint_every = int(e.retrofit_steps)
        rc.train.eval_every = int(e.retrofit_steps)
        rc.train.log_every = min(int(rc.train.log_every), int(e.retrofit_steps))
    return rc


FITTED_ALONE = ("ensemble", "swag")  # fitted in memory (`fit_alone`), retrofit or scratch
PROJ = r"router/proj"


def fit_steps(task, model: nnx.Module, tcfg: ml_collections.ConfigDict, *, steps: int,
              seed: int, on_step: Any = None, constant_lr: bool = False,
              stop: Any = None) -> list[float]:
    """Trains `router/proj` of `model` in place for `steps` steps of the classifier task's own
    train step (AdamW, `tcfg` lr / warm-up / clipping; cosine decay unless `constant_lr`);
    batches drawn with numpy from `seed`; `on_step(i)` after step i; `stop(losses)` (e.g.
    `baselines.Plateau.stop`) ends it early. Returns the task (cross-entropy) losses;
    FloatingPointError on a non-finite one."""
    t = ml_collections.ConfigDict(tcfg.to_dict())
    t.steps, t.end_lr_fraction = int(steps), 1.0 if constant_lr else 0.0
    optimizer = nnx.Optimizer(model, optim.make_tx(t), wrt=optim.trainable_filter(PROJ))
    step_fn, rng, losses = task.train_step(PROJ), np.random.default_rng(seed), []
    for i in range(int(steps)):
        idx = rng.integers(0, task.n_train, int(t.batch_size))
        losses.append(float(step_fn(model, optimizer, *task.train_batch(idx, i))["ce"]))
        if on_step is not None:
            on_step(i)
        if stop is not None and stop(losses):
            break
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"retrofit: non-finite training loss {losses[-5:]}")
    return losses


def fit_alone(cfg: ml_collections.ConfigDict, method: str, seed: int, det: nnx.Module,
              dataset: Any) -> tuple[nnx.Module, dict[str, Any]]:
    """ensemble_retrofit / swag_retrofit / ensemble (from scratch) on the trained deterministic
    model `det` (module docstring) -> (model, log: `members` (ensemble) or `losses`, `swag_n`,
    `converged`). Members train at a constant rate after warm-up until `baselines.Plateau`
    (`experiment.member_*`) stops them; from scratch they start from the router's initialiser
    N(0, 0.02^2) (`baselines.reset_routers`) instead of det's router plus N(0, s^2)."""
    base, retrofit = routers.split_method(method)
    rc = run_config(cfg, f"{base}_retrofit", seed, "det")  # the retrofit's optimiser settings
    task = classify.ClassifierTask(rc, dataset)  # the digits task (`train.make_task`)
    model = task.build_model()
    vmoer.retrofit_from(model, det)
    opts, steps = cfg.model.get("vmoer", {}), int(rc.train.steps)
    if base == "ensemble":
        n = baselines.router_list(model)[0].n_members
        scale = float(opts.get("ensemble_perturb", common.DEFAULTS["vmoer_ensemble_perturb"]))
        rule = baselines.Plateau.from_config(cfg.experiment, steps)
        kernels, members = baselines.fit_members(
            lambda: nnx.clone(det) if retrofit else baselines.reset_routers(nnx.clone(det)),
            lambda member, m, rule: fit_steps(task, member, rc.train, steps=rule.max_steps,
                                              seed=seed * 1000 + 100 + m, stop=rule.stop,
                                              constant_lr=True),
            n, scale if retrofit else baselines.ROUTER_INIT_STD, seed, rule,
        )  # fmt: skip
        baselines.install_members(model, kernels)
        return model, {"members": members}
    collector = swag.collect_from(model, steps)
    losses = fit_steps(task, model, rc.train, steps=steps, seed=seed + 2,
                       on_step=collector.hook, constant_lr=True)
    collector.install()
    return model, {"losses": losses, "swag_n": collector.states[0].n,
                   "converged": baselines.converged(losses)}


def _moe_experts(model: nnx.Module, tokens: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Selected experts [N, T, K] of every MoE layer; the model is cloned so every call sees the
    same routing-noise draws (RNG counters are part of the model state)."""
    out = predict.predict_arrays(nnx.clone(model), tokens, batch_size=batch_size)
    return [np.asarray(tr["experts"]) for tr in out["mlp"] if "experts" in tr]


def _sampled_probs(model: nnx.Module, tokens: np.ndarray, n: int, batch_size: int) -> np.ndarray:
    """[S, N, C] class probabilities from S stochastic passes (routing sampled in every pass)."""
    m = nnx.clone(model)
    if vmoer.set_router_sampling(m, True) == 0:
        return np.zeros((0,))
    return np.stack(
        [predict.predict_arrays(m, tokens, batch_size=batch_size)["probs"] for _ in range(n)]
    )


def evaluate_model(model: nnx.Module, dataset, ecfg: ml_collections.ConfigDict) -> dict[str, float]:
    """All per-run metrics of one trained model (see the module docstring)."""
    bs = 256
    test: Split = dataset.test
    probs = predict.predict_arrays(nnx.clone(model), test.tokens, batch_size=bs)["probs"]
    probs = probs / probs.sum(axis=1, keepdims=True)
    labels = np.asarray(test.labels)
    res: dict[str, float] = {
        "accuracy": float(np.mean(probs.argmax(1) == labels)),
        "ece": calibration.ece_from_probs(probs, labels, n_bins=int(ecfg.n_bins)),
        "nll": float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)))),
    }
    noisy = shift.pixel_noise(test, float(ecfg.stability_noise_std), seed=1234, clip=False)
    res["stability"] = uncertainty.routing_stability(
        _moe_experts(model, test.tokens, bs), _moe_experts(model, noisy.tokens, bs)
    ).overall
    mc_in = _sampled_probs(model, test.tokens, int(ecfg.mc_samples), bs)
    au_h, au_p, au_mi = [], [], []
    for kind in ecfg.ood_kinds:
        kw = {"std": float(ecfg.ood_noise_std), "seed": 99} if kind == "pixel_noise" else {}
        _, ood = shift.make_ood(dataset, kind, **kw)
        p_out = predict.predict_arrays(nnx.clone(model), ood.tokens, batch_size=bs)["probs"]
        p_out = p_out / p_out.sum(axis=1, keepdims=True)
        au_h.append(
            uncertainty.ood_auroc(
                uncertainty.ood_score(probs, "entropy"), uncertainty.ood_score(p_out, "entropy")
            )
        )
        au_p.append(
            uncertainty.ood_auroc(
                uncertainty.ood_score(probs, "max_prob"), uncertainty.ood_score(p_out, "max_prob")
            )
        )
        if mc_in.size:
            mc_out = _sampled_probs(model, ood.tokens, int(ecfg.mc_samples), bs)
            norm = lambda p: p / p.sum(axis=-1, keepdims=True)
            au_mi.append(
                uncertainty.ood_auroc(
                    uncertainty.mutual_information(norm(mc_in)),
                    uncertainty.mutual_information(norm(mc_out)),
                )
            )
    res["ood_auroc"] = float(np.mean(au_h))
    res["ood_auroc_maxprob"] = float(np.mean(au_p))
    if au_mi:
        res["ood_auroc_mi"] = float(np.mean(au_mi))
    return res


def summarize(per_run: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """per_run[method][seed][metric] -> table[metric][method] = band (+ rel_change_pct vs det)."""
    table: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        row = {}
        for method, runs in per_run.items():
            vals = [r[metric] for r in runs.values() if metric in r]
            if vals:
                row[method] = seed_band(vals)
        base = row.get("det", {}).get("mean")
        for method, band in row.items():
            if base not in (None, 0.0) and method != "det":
                band["rel_change_pct"] = 100.0 * (band["mean"] / base - 1.0)
        if row:
            table[metric] = row
    return table


def to_markdown(table: dict[str, dict[str, Any]], methods: list[str]) -> str:
    """The table as Markdown: mean ± std [min, max] (relative change vs det)."""
    head = "| metric | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 1)]
    for metric, row in table.items():
        cells = [band_cell(row.get(m)) for m in methods]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fitted_alone_metrics(cfg, method: str, seed: int, det_dir: pathlib.Path,
                          wd: pathlib.Path) -> dict[str, Any]:
    """`fit_alone` + `evaluate_model`, kept in `wd/metrics.json` (read back when present). The
    fitted model is saved like a trained run (`wd/config.json` + an orbax checkpoint of the
    model state, SWAG moments and ensemble members included; `train.load_trained(wd)` rebuilds
    it) with its fit log (`wd/fit_log.json`); a rerun that finds both evaluates it unrefitted."""
    done = wd / "metrics.json"
    if done.exists():
        return workdir_io.read_json(done, "vmoer")
    from routecal.training import checkpoints, train

    t0 = time.perf_counter()
    det, _, dataset = train.load_trained(det_dir)
    fit_log = wd / "fit_log.json"
    if fit_log.exists():  # fitted and saved, not yet evaluated
        model, log = train.load_trained(wd)[0], workdir_io.read_json(fit_log, "vmoer")
    else:
        model, log = fit_alone(cfg, method, seed, det, dataset)
        log["train_time_s"] = time.perf_counter() - t0
        rc = run_config(cfg, method, seed, os.path.relpath(det_dir, wd))
        records.record_workdir_config(wd, json.loads(rc.to_json_best_effort()), "config.json",
                                      "run")  # multi-host: process 0 writes
        steps = [m["steps"] for m in log["members"]] if "members" in log else [len(log["losses"])]
        checkpoints.save_model(wd, sum(steps), model)
        if parallel.is_primary():
            workdir_io.write_json(fit_log, log)
    res: dict[str, Any] = {**evaluate_model(model, dataset, cfg.experiment), **log}
    if parallel.is_primary():
        workdir_io.write_json(done, res)
    return res


def run_vmoer_experiment(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Trains and evaluates every (method, seed) of `cfg.experiment` and returns the table.

    Returns:
      {"per_run": method -> seed -> metrics, "table": metric -> method -> band,
       "markdown": str, "flops": {...}, "paper_claims": {...}, "time_s": float}; also written to
      `workdir/vmoer_results.json`.
    """
    from routecal.training import train

    workdir = pathlib.Path(workdir)
    ecfg = cfg.experiment
    methods = list(ecfg.methods)
    if "det" not in methods:
        raise ValueError("experiment.methods: must include 'det' (the baseline)")
    t0 = time.perf_counter()
    per_run: dict[str, dict[int, dict[str, float]]] = {m: {} for m in methods}
    dataset = load_dataset(cfg.data)
    mcfg = ModelConfig.from_config(
        cfg.model,
        seq_len=dataset.seq_len,
        token_dim=dataset.token_dim,
        num_classes=dataset.num_classes,
    )
    types = tuple(sorted({method_spec(m)[0] for m in methods} - {"moe"}))
    model_flops = flops.model_overhead(mcfg, batch_size=1, mlp_types=types)
    realistic = flops.vmoer_overhead(flops.REALISTIC_LAYER)
    for seed in ecfg.seeds:
        det_dir = workdir / f"seed{seed}" / "det"
        for method in ["det", *[m for m in methods if m != "det"]]:
            wd = workdir / f"seed{seed}" / method
            if routers.split_method(method)[0] in FITTED_ALONE:  # swag: retrofit only
                res = _fitted_alone_metrics(cfg, method, int(seed), det_dir, wd)
            else:
                rc = run_config(cfg, method, seed, os.path.relpath(det_dir, wd))  # in-workdir
                final = train.train_and_evaluate(rc, wd)
                model, _, ds = train.load_trained(wd)
                res = evaluate_model(model, ds, ecfg)
                res["train_time_s"] = float(final.get("time_s", float("nan")))
            mlp_type = method_spec(method)[0]
            res["flops_overhead_pct"] = (
                0.0 if mlp_type == "moe" else model_flops[f"overhead_{mlp_type}_pct"]
            )
            per_run[method][int(seed)] = res
    table = summarize(per_run)
    out = {
        "per_run": per_run,
        "table": table,
        "markdown": to_markdown(table, methods),
        "flops": {
            "small_model": model_flops,
            "realistic_layer": {k: v for k, v in realistic.items() if k != "shape"},
        },
        "paper_claims": PAPER_CLAIMS,
        "time_s": time.perf_counter() - t0,
        "config": json.loads(cfg.to_json_best_effort()),
        "model_config": {k: str(v) for k, v in dataclasses.asdict(mcfg).items()},
    }
    if parallel.is_primary():  # atomic: temp file + rename; multi-host: process 0 writes
        workdir_io.write_text(
            workdir / "vmoer_results.json", json.dumps(out, indent=2, default=float) + "\n"
        )
    return out


_REPORT_NAMES = {"det": "deterministic"}
_REPORT_METRICS = ("accuracy", "stability", "ece", "ood_auroc")


def report_rows(out: dict[str, Any]) -> dict[str, Any]:
    """`run_vmoer_experiment` output -> the study's VMoER section (one row per router)."""
    table = out["table"]
    rows = []
    for m in next(iter(table.values())):
        row: dict[str, Any] = {"router": _REPORT_NAMES.get(m, m), "rel_change": {}}
        for metric in _REPORT_METRICS:
            band = table.get(metric, {}).get(m)
            if band is None:
                continue
            row[metric] = {k: band[k] for k in ("mean", "std", "min", "max", "n")}
            if m != "det" and band.get("rel_change_pct") is not None:
                row["rel_change"][metric] = band["rel_change_pct"]
        fl = table.get("flops_overhead_pct", {}).get(m)
        if fl is not None:
            row["flops_overhead_percent"] = fl["mean"]
        rows.append(row)
    keep = {"flops": {}, "paper_claims": {}, "per_run": {}, "markdown": ""}
    return {"rows": rows, **{k: out.get(k, v) for k, v in keep.items()}}
