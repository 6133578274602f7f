"""The MoE sources of the VMoER section (`study.vmoer`): how each trains, fits and scores a router.

    source = DecoderSource(cfg)      # `study.vmoer.make_source(cfg, workdir)` picks one

  classifier  the digits classifier MoE trained here (configs/vmoer_digits.py). Routers from
              scratch and the plain retrofits run the trainer (`train.train_and_evaluate` in
              `workdir/seed<s>/<router>`, resuming; a retrofit copies det's run, `init_from`, and
              trains `routers.RETROFIT_TRAINABLE[name]`); ensemble and swag are fitted in memory
              (`training.router_fit` with `classify.fit_router_steps`) and saved like trained
              runs (`<router>/config.json` + checkpoint, `fit_log.json`). Metrics:
              `predict.vmoer_metrics` on the test split; FLOPs of the whole model (XLA).
  decoder     the MoE decoder trained here (configs/vmoer_lm.py): pretrained on the embedded
              stdlib corpus, fine-tuned on the embedded continuation MCQA (`data.mcqa.build_data`,
              `training.mcqa.fit`); routers retrofitted on det (`training.router_fit`: beta on the
              calib split, ensemble members until their plateau, SWAG moments) or trained from
              scratch (both phases). Metrics: `training.mcqa.evaluate` on in / near / far.
  imported    a Hugging Face checkpoint (configs/vmoer_pretrained.py; nothing downloads): det is
              the imported router, every other router is retrofitted (`models.pretrained.retrofit`,
              resumable cells `workdir/<router>/seed<s>/`, a fixed `train.steps`); MCQA from the
              published files (`data.mcqa_formats.load_split`), read at each prompt's last token.
FLOP overheads of the router (train, inference) at the realistic layer (`flops.REALISTIC_LAYER`)
or the checkpoint's layer shape.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from routecal import flops, parallel
from routecal.data import load_dataset
from routecal.data import mcqa as mcqa_data
from routecal.files import records
from routecal.files import workdir as workdir_io
from routecal.models import routers, vmoer
from routecal.models.routers import swag
from routecal.models.transformer import ModelConfig
from routecal.training import classify, mcqa, predict, router_fit


def check_routers(e: ml_collections.ConfigDict) -> list[str]:
    """`experiment.routers` as a list, det first; ValueError without 'det', for an unknown or
    old name, or for 'det_retrofit'."""
    names = list(e.routers)
    if "det" not in names:
        raise ValueError("experiment.routers: must include 'det' (the baseline)")
    for n in names:
        try:
            base, retrofit = routers.split_method(n)  # ValueError naming an old name's new one
        except ValueError as err:
            raise ValueError(f"experiment.routers: {err}") from None
        if base == "det" and retrofit:
            raise ValueError("experiment.routers: 'det_retrofit' has nothing to fit")
    return ["det", *[n for n in names if n != "det"]]


MCQA_METRICS = ("stability", "ece", "ood_auroc_near", "ood_auroc_far", "flops_infer_pct",
                "accuracy", "mce", "nll", "brier", "ood_auroc_near_router_logit_variance",
                "ood_auroc_far_router_logit_variance", "ood_auroc_near_gating_entropy",
                "ood_auroc_far_gating_entropy", "ood_auroc_near_mi", "ood_auroc_far_mi",
                "flops_train_pct")  # fmt: skip
MCQA_LOWER = frozenset({"ece", "mce", "nll", "brier", "flops_infer_pct", "flops_train_pct"})


def _base(name: str) -> str:
    return routers.split_method(name)[0]


def router_overheads(shape: flops.LayerShape, names: list[str]) -> dict[str, dict[str, float]]:
    """flops_train_pct, flops_infer_pct of each router name (a retrofit shares its router's)."""
    over = flops.router_overheads(shape, tuple(sorted({_base(n) for n in names})))
    return {n: {f"flops_{m}_pct": over[_base(n)][f"{m}_pct"] for m in ("train", "infer")}
            for n in names}  # fmt: skip


def run_config(cfg: ml_collections.ConfigDict, name: str, seed: int,
               det_dir: str | None) -> ml_collections.ConfigDict:
    """The classifier's training config of one (router, seed) run, without the `experiment`
    section; `det_dir` is where a retrofit reads det's run (relative to the run's workdir).
    ValueError for an unknown or old router name."""
    try:
        base, retrofit = routers.split_method(name)
    except ValueError as err:
        raise ValueError(f"experiment.routers: {err}") from None
    d = cfg.to_dict()
    d.pop("experiment")
    rc = ml_collections.ConfigDict(d)
    rc.seed, rc.model.mlp_type = int(seed), "moe" if base == "det" else f"vmoer_{base}"
    if retrofit:
        if det_dir is None:
            raise ValueError(f"experiment.routers: {name} needs det's run")
        e, steps = cfg.experiment, int(cfg.experiment.retrofit_steps)
        rc.train.init_from = det_dir
        rc.train.trainable = routers.RETROFIT_TRAINABLE[base] or vmoer.VROUTER_PATH
        rc.train.update(steps=steps, lr=float(e.retrofit_lr),
                        warmup=min(int(rc.train.warmup), max(steps // 10, 1)),
                        checkpoint_every=steps, eval_every=steps,
                        log_every=min(int(rc.train.log_every), steps))  # fmt: skip
    return rc


class ClassifierSource:
    """The digits classifier MoE (module docstring)."""

    metrics = ("stability", "ece", "ood_auroc", "ood_auroc_maxprob", "ood_auroc_mi", "accuracy",
               "nll", "flops_overhead_pct")  # fmt: skip
    lower_is_better = frozenset({"ece", "nll", "flops_overhead_pct"})
    share_fits = False  # routers are trainer runs with orbax checkpoints (collective saves)

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: pathlib.Path):
        self.cfg, self.wd, e = cfg, workdir, cfg.experiment
        self.names, self.seeds = check_routers(e), [int(s) for s in e.seeds]
        if "swag" in self.names:
            raise ValueError("experiment.routers: 'swag' from scratch collects no SWAG moments "
                             "here (the trainer has no per-step hook); use 'swag_retrofit'")
        self.dataset = load_dataset(cfg.data)

    @functools.cached_property
    def model_flops(self) -> dict[str, Any]:
        """Whole-model forward FLOPs of every router's model over det's (XLA cost analysis)."""
        ds = self.dataset
        mcfg = ModelConfig.from_config(self.cfg.model, seq_len=ds.seq_len,
                                       token_dim=ds.token_dim, num_classes=ds.num_classes)
        types = tuple(sorted({f"vmoer_{_base(n)}" for n in self.names} - {"vmoer_det"}))
        return flops.model_overhead(mcfg, batch_size=1, mlp_types=types)

    def fit(self, name: str, seed: int, det) -> tuple[nnx.Module, dict[str, Any]]:
        from routecal.training import train

        wd, det_dir = self.wd / f"seed{seed}" / name, self.wd / f"seed{seed}" / "det"
        if _base(name) in ("ensemble", "swag"):
            return self._fit_alone(name, seed, wd, det_dir)
        rc = run_config(self.cfg, name, seed, os.path.relpath(det_dir, wd))  # in-workdir path
        final = train.train_and_evaluate(rc, wd)
        return train.load_trained(wd)[0], {"train_time_s": float(final.get("time_s", np.nan))}

    def _fit_alone(self, name: str, seed: int, wd: pathlib.Path, det_dir: pathlib.Path):
        """`fit_alone` on det's run, saved like a trained run (`config.json` + checkpoint, SWAG
        moments and members included) with `fit_log.json`; a rerun finding both loads it."""
        from routecal.training import checkpoints, train

        fit_log = wd / "fit_log.json"
        if fit_log.exists():  # fitted and saved before
            return train.load_trained(wd)[0], workdir_io.read_json(fit_log, "vmoer")
        t0 = time.perf_counter()
        model, log = self.fit_alone(name, seed, train.load_trained(det_dir)[0])
        log["train_time_s"] = time.perf_counter() - t0
        rc = run_config(self.cfg, name, seed, os.path.relpath(det_dir, wd))
        records.record_workdir_config(wd, json.loads(rc.to_json_best_effort()), "config.json",
                                      "run")  # multi-host: process 0 writes
        used = [m["steps"] for m in log["members"]] if "members" in log else [len(log["losses"])]
        checkpoints.save_model(wd, sum(used), model)
        if parallel.is_primary():
            workdir_io.write_json(fit_log, log)
        return model, log

    def fit_alone(self, name: str, seed: int, det: nnx.Module) -> tuple[nnx.Module, dict]:
        """ensemble(_retrofit) / swag_retrofit fitted in memory on the trained `det`
        (`router_fit`, the classifier task's own train step, `experiment.member_*` plateau)."""
        base, retrofit = routers.split_method(name)
        rc = run_config(self.cfg, f"{base}_retrofit", seed, "det")  # the retrofit's settings
        task = classify.ClassifierTask(rc, self.dataset)  # the digits task (`train.make_task`)

        def copy(router: str, options: dict[str, Any]) -> nnx.Module:
            if router == "det":
                return nnx.clone(det)
            model = task.build_model()
            vmoer.retrofit_from(model, det)
            return model

        def fit(model, trainable, stream, *, steps=None, **kw) -> list[float]:
            return classify.fit_router_steps(task, model, rc.train, trainable,
                                             seed=router_fit.stream_seed(seed, stream),
                                             steps=int(steps or rc.train.steps), **kw)

        steps = int(rc.train.steps)
        return router_fit.retrofit(
            base, seed, copy, fit, swag_steps=steps, scratch=not retrofit,
            **router_fit.ensemble_options(self.cfg.model.vmoer, self.cfg.experiment, steps))

    def evaluate(self, model: nnx.Module, seed: int) -> dict[str, Any]:
        return predict.vmoer_metrics(model, self.dataset, self.cfg.experiment)

    def overheads(self) -> dict[str, dict[str, float]]:
        return {n: {"flops_overhead_pct": 0.0 if _base(n) == "det"
                    else self.model_flops[f"overhead_vmoer_{_base(n)}_pct"]}
                for n in self.names}  # fmt: skip

    def extras(self) -> dict[str, Any]:
        realistic = flops.vmoer_overhead(flops.REALISTIC_LAYER)
        return {"flops": {"small_model": self.model_flops,
                          "realistic_layer": {k: v for k, v in realistic.items() if k != "shape"}},
                "config": json.loads(self.cfg.to_json_best_effort())}


class DecoderSource:
    """The MoE decoder trained here, scored on the embedded MCQA (module docstring)."""

    metrics, lower_is_better = MCQA_METRICS, MCQA_LOWER
    share_fits = True  # routers fitted in memory: one process each (`parallel.share`)

    def __init__(self, cfg: ml_collections.ConfigDict, data: dict[str, Any] | None = None):
        self.cfg, e = cfg, cfg.experiment
        self.names, self.seeds = check_routers(e), [int(s) for s in e.seeds]
        self.scoring = mcqa_data.check_scoring(str(e.scoring))
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        """The corpus LM rows and MCQA tensors, built on first use."""
        if self._data is None:
            self._data = mcqa_data.build_data(self.cfg.data, self.scoring)
        return self._data

    def _fit(self, model, trainable, stream, *, steps=None, **kw) -> list[float]:
        t = self.cfg.train
        return mcqa.fit(model, self.data, t, phase="mcqa", steps=int(steps or t.retrofit_steps),
                        lr=float(t.retrofit_lr), trainable=trainable, seed=stream, **kw)

    def fit(self, name: str, seed: int, det) -> tuple[nnx.Module, dict[str, Any]]:
        """From scratch (LM + MCQA with the router) or fitted on det (`router_fit`). "ensemble"
        from scratch: a router ensemble shares its experts, so the backbone is det's (trained
        from scratch with one router at this seed) and every member is fitted alone from the
        router's own initialiser N(0, 0.02^2), not drawn per token in a joint fit."""
        t0, cfg, t = time.perf_counter(), self.cfg, self.cfg.train
        base, retrofit = routers.split_method(name)
        limit = mcqa.seq_limit(cfg)
        if retrofit or base == "ensemble":
            det_params = nnx.state(det(), nnx.Param)

            def copy(router: str, options: dict[str, Any]) -> nnx.Module:
                model = mcqa.make_model(mcqa.with_vmoer(cfg, **options) if options else cfg,
                                        router, seed, limit)  # fmt: skip
                vmoer.retrofit_from(model, det_params)
                return model

            def fit(model, trainable, stream, **kw) -> list[float]:
                return self._fit(model, trainable, router_fit.stream_seed(seed, stream), **kw)

            steps = int(t.retrofit_steps)
            calib = self.data["mcqa"].get("calib") if retrofit else None  # beta routers only
            nll = None if calib is None else lambda m: mcqa.calib_nll(
                m, calib, self.data["letters"], int(cfg.experiment.eval_batch_size),
                mcqa.noise_group(self.data))  # fmt: skip
            model, log = router_fit.retrofit(
                base, seed, copy, fit, swag_steps=steps, beta_grid=tuple(cfg.experiment.beta_grid),
                calib_nll=nll, scratch=not retrofit,
                **router_fit.ensemble_options(cfg.model.vmoer, t, steps))  # fmt: skip
            losses = log.pop("losses", None) or [x for m in log.get("members", [])
                                                 for x in m["losses"]]  # fmt: skip
        else:
            model, log = mcqa.make_model(cfg, base, seed, limit), {}
            mcqa.fit(model, self.data, t, phase="lm", steps=int(t.pretrain_steps),
                     lr=float(t.lr), trainable="all", seed=seed)  # fmt: skip
            collect = swag.collect_from(model, int(t.finetune_steps)) \
                if base == "swag" else None  # fmt: skip
            losses = mcqa.fit(model, self.data, t, phase="mcqa", steps=int(t.finetune_steps),
                              lr=float(t.finetune_lr), trainable="all", seed=seed + 1,
                              on_step=collect.hook if collect else None)  # fmt: skip
            if collect is not None:
                collect.install()
        log["final_task_loss"] = float(np.mean(losses[-10:])) if losses else None
        log["train_time_s"] = time.perf_counter() - t0
        return model, log

    def evaluate(self, model: nnx.Module, seed: int) -> dict[str, Any]:
        return mcqa.evaluate(model, self.data["mcqa"], self.data["letters"], self.cfg.experiment,
                             seed=seed, group=mcqa.noise_group(self.data))  # fmt: skip

    def overheads(self) -> dict[str, dict[str, float]]:
        return router_overheads(flops.REALISTIC_LAYER, self.names)

    def extras(self) -> dict[str, Any]:
        return {"scoring": self.scoring, "seeds": self.seeds,
                "n_eval_items": int(self.cfg.data.n_eval_items),  # per domain
                "config": json.loads(self.cfg.to_json_best_effort())}
