"""Retrofits of the VMoER language-model experiment (`vmoer_decoder.py`): every router fitted on one
trained deterministic model per seed.

    model, log = retrofit(cfg, data, "mfvr", seed, det_model)

* Routers with a beta (`BETA_ROUTERS`: the KL weight of mfvr / lowrank / fcvr, the regulariser
  weight of vtsr): one retrofit per value of `experiment.beta_grid`, the value with the lowest
  option NLL on the calib split kept (`vmoer_decoder_eval.calib_nll`; the test splits are never
  seen; `choose_beta`); the log records beta, the grid, each value's calib NLL and whether
  the choice is the grid's lowest or highest value (`beta_at_edge`, with a sentence in
  `warnings`). An empty grid keeps `model.vmoer.beta`.
* ensemble (deep ensemble, Lakshminarayanan et al. 2017): member m starts from the deterministic
  router's weights plus N(0, s^2) noise (s = `vmoer_ensemble_perturb`, numpy seed (seed, m)) and
  is fitted alone (only `router/proj`) with the same objective at a constant rate after
  warm-up, its own batch order, until its loss plateaus (`routers.baselines.Plateau`: checked
  after `train.member_steps` steps and every `train.member_check_every` after, at most
  `train.member_max_steps`); its loss curve, steps used, final loss and plateau flag are
  logged (`routers.baselines.fit_members`, shared with the digits study and imported
  checkpoints). The members are then written into one `EnsembleRouter` per layer. From
  scratch (`fit_ensemble(scratch=True)`) the members start from the router's initialiser
  N(0, 0.02^2) instead.
* swag (Maddox et al. 2019): `router/proj` is fitted from the deterministic weights at a constant
  learning rate after warm-up; from step `vmoer_swag_start * retrofit_steps` on, every iterate
  enters the SWAG moments (`routers.swag.SwagCollector`), installed at the end.
* the rest (fixed_temp, mc_dropout): the router's `RETROFIT_TRAINABLE` selection is fitted
  (nothing for fixed_temp).
"""

from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from routecal.data.text import ByteTokenizer
from routecal.models import decoder, routers, vmoer
from routecal.models.decoder_config import DecoderConfig
from routecal.models.routers import baselines, common
from routecal.models.routers.baselines import converged
from routecal.models.routers.swag import collect_from as swag_hook  # the shared SWAG callback
from routecal.study.vmoer_decoder_data import (
    noise_group,
    option_outputs,
    option_scores,
    take,
)
from routecal.training import optim

BETA_ROUTERS = ("mfvr", "lowrank", "fcvr", "vtsr")
PROJ = r"router/proj"


def with_vmoer(cfg: ml_collections.ConfigDict, **options: Any) -> ml_collections.ConfigDict:
    """A copy of `cfg` with `model.vmoer` options replaced."""
    c = ml_collections.ConfigDict(cfg.to_dict())
    for k, v in options.items():
        c.model.vmoer[k] = v
    return c


def model_config(cfg: ml_collections.ConfigDict, router: str, max_len: int) -> DecoderConfig:
    """The decoder config with the MoE layers routed by `router` (a registry name)."""
    name = routers.canonical(router)
    mlp_type = "moe" if name == "det" else f"vmoer_{name}"
    d = cfg.model.to_dict()
    d["mlp_type"] = mlp_type
    return DecoderConfig.from_config(d, vocab_size=ByteTokenizer.vocab_size, max_len=max_len)


def make_model(cfg: ml_collections.ConfigDict, router: str, seed: int, max_len: int):
    mcfg = model_config(cfg, router, max_len)
    return decoder.Decoder(mcfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1, router=seed + 2))


@functools.lru_cache(maxsize=16)
def _steps(trainable: str, pad: int):
    """Jit-compiled LM and MCQA train steps for one trainable-parameter selection (cached, so
    one compile per model structure is reused across seeds)."""
    wrt = optim.trainable_filter(trainable)

    def _update(model, optimizer, loss_fn):
        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)
        (loss, task), grads = grad_fn(model)
        optimizer.update(model, grads)
        return loss, task

    @nnx.jit
    def lm_step(model, optimizer, rows_BxT1):
        def loss_fn(m):
            out = m(rows_BxT1[:, :-1], train=True)
            tgt = rows_BxT1[:, 1:]
            mask = (tgt != pad).astype(jnp.float32)
            ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, tgt)
            ce = jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
            return ce + out.aux_loss, ce

        return _update(model, optimizer, loss_fn)

    @nnx.jit
    def mcqa_step(model, optimizer, batch, letters_K):
        def loss_fn(m):
            outs, out = option_outputs(m, batch, train=True)
            scores_BxK = option_scores(outs, letters_K)
            ce = optax.softmax_cross_entropy_with_integer_labels(scores_BxK, batch["answers"])
            return ce.mean() + out.aux_loss, ce.mean()

        return _update(model, optimizer, loss_fn)

    return lm_step, mcqa_step


def _tx(
    tcfg: ml_collections.ConfigDict, steps: int, lr: float, end_lr_fraction: float = 0.0
) -> optax.GradientTransformation:
    return optim.make_tx(
        ml_collections.ConfigDict(
            dict(
                steps=steps,
                warmup=min(int(tcfg.warmup), max(steps // 10, 1)),
                lr=lr,
                weight_decay=float(tcfg.weight_decay),
                grad_clip=float(tcfg.grad_clip),
                end_lr_fraction=end_lr_fraction,
            )
        )
    )


def fit(
    model: nnx.Module,
    data: dict[str, Any],
    tcfg: ml_collections.ConfigDict,
    *,
    phase: str,
    steps: int,
    lr: float,
    trainable: str,
    seed: int,
    on_step: Any = None,
    constant_lr: bool = False,
    stop: Any = None,
) -> list[float]:
    """Trains `model` in place for `steps` steps of `phase` ("lm" or "mcqa"); returns the task
    losses (logged every step). Batches are drawn with numpy from `seed`. MCQA steps route an
    item's option sequences with one draw (`vmoer.set_common_noise`). `on_step(i)` runs after
    step i (e.g. SWAG collection); `constant_lr` keeps the peak rate after warm-up; `stop(losses)`
    (e.g. `baselines.Plateau.stop`) ends the fit early when it returns True."""
    if steps <= 0:
        return []
    vmoer.set_common_noise(model, noise_group(data) if phase == "mcqa" else 1)
    lm_step, mcqa_step = _steps(trainable, int(data["tokenizer"].pad))
    tx = _tx(tcfg, steps, lr, end_lr_fraction=1.0 if constant_lr else 0.0)
    optimizer = nnx.Optimizer(model, tx, wrt=optim.trainable_filter(trainable))
    rng = np.random.default_rng(seed)
    bs = int(tcfg.batch_size if phase == "lm" else tcfg.get("mcqa_batch_size", tcfg.batch_size))
    losses = []
    for _ in range(steps):
        if phase == "lm":
            rows = data["lm"][rng.integers(0, len(data["lm"]), bs)]
            loss, task = lm_step(model, optimizer, jnp.asarray(rows))
        else:
            train = data["mcqa"]["train"]
            batch = take(train, rng.integers(0, len(train["answers"]), bs))
            loss, task = mcqa_step(model, optimizer, batch, data["letters"])
        losses.append(float(task))
        if on_step is not None:
            on_step(len(losses) - 1)
        if stop is not None and stop(losses):
            break
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"{phase}: non-finite training loss {losses[-5:]}")
    return losses


def seq_limit(cfg: ml_collections.ConfigDict) -> int:
    return max(int(cfg.data.lm_seq_len), int(cfg.data.max_prompt_len))


def _option(cfg: ml_collections.ConfigDict, name: str) -> Any:
    return cfg.model.vmoer.get(name, common.DEFAULTS[f"vmoer_{name}"])


def _copy(cfg, data, router: str, seed: int, det_model: nnx.Module) -> nnx.Module:
    model = make_model(cfg, router, seed, seq_limit(cfg))
    vmoer.retrofit_from(model, nnx.state(det_model, nnx.Param))
    return model


def _fit(cfg, data, model, seed: int, trainable: str, **kw: Any) -> list[float]:
    t = cfg.train
    steps = int(kw.pop("steps", t.retrofit_steps))
    return fit(model, data, t, phase="mcqa", steps=steps, lr=float(t.retrofit_lr),
                        trainable=trainable, seed=seed, **kw)  # fmt: skip


def fit_ensemble(cfg, data, seed: int, det_model: nnx.Module,
                 scratch: bool = False) -> tuple[nnx.Module, dict]:
    """The ensemble retrofit (module docstring; `routers.baselines.fit_members`) -> (model, log
    with `members`). Members train at a constant rate after warm-up, so where the plateau rule
    stops them does not depend on the cap. `scratch`: the members start from the router's own
    initialiser N(0, s^2) (`baselines.reset_routers`) instead of det's router plus N(0, s^2)."""

    def make_member() -> nnx.Module:
        member = _copy(cfg, data, "det", seed, det_model)
        return baselines.reset_routers(member) if scratch else member

    def fit_member(member: nnx.Module, m: int, rule: baselines.Plateau) -> list[float]:
        return _fit(cfg, data, member, seed * 1000 + 100 + m, PROJ, steps=rule.max_steps,
                    stop=rule.stop, constant_lr=True)

    kernels, members = baselines.fit_members(
        make_member, fit_member, int(_option(cfg, "ensemble")),
        baselines.ROUTER_INIT_STD if scratch else float(_option(cfg, "ensemble_perturb")), seed,
        baselines.Plateau.from_config(cfg.train, int(cfg.train.retrofit_steps)),
    )  # fmt: skip
    model = _copy(cfg, data, "ensemble", seed, det_model)
    baselines.install_members(model, kernels)
    return model, {"members": members, "mcqa": [x for mm in members for x in mm["losses"]]}


def fit_swag(cfg, data, seed: int, det_model: nnx.Module) -> tuple[nnx.Module, dict]:
    """The SWAG retrofit (module docstring) -> (model, log with `swag_n` iterates collected)."""
    model = _copy(cfg, data, "swag", seed, det_model)
    steps = int(cfg.train.retrofit_steps)
    collector = swag_hook(model, steps)
    losses = _fit(cfg, data, model, seed + 2, PROJ, on_step=collector.hook, constant_lr=True)
    collector.install()
    return model, {"mcqa": losses, "swag_n": collector.states[0].n, "converged": converged(losses)}


def _plain(cfg, data, base: str, seed: int, det_model) -> tuple[nnx.Module, list[float]]:
    model = _copy(cfg, data, base, seed, det_model)
    pattern = routers.RETROFIT_TRAINABLE[base]
    losses = [] if pattern is None else _fit(cfg, data, model, seed + 2, pattern)
    return model, losses


def retrofit(cfg, data, base: str, seed: int, det_model: nnx.Module) -> tuple[nnx.Module, dict]:
    """Router `base` fitted on the trained `det_model` (module docstring) -> (model, log)."""
    from routecal.study import vmoer_decoder_eval

    if base == "ensemble":
        return fit_ensemble(cfg, data, seed, det_model)
    if base == "swag":
        return fit_swag(cfg, data, seed, det_model)
    grid = [float(b) for b in cfg.experiment.get("beta_grid", ())]
    if base not in BETA_ROUTERS or not grid:
        model, losses = _plain(cfg, data, base, seed, det_model)
        return model, {"mcqa": losses}
    if "calib" not in data["mcqa"]:
        raise ValueError("experiment.beta_grid: needs a calib split (data.n_calib_items > 0)")

    def fit_one(beta: float) -> tuple[float, tuple[nnx.Module, list[float]]]:
        fitted = _plain(with_vmoer(cfg, beta=beta), data, base, seed, det_model)
        return vmoer_decoder_eval.calib_nll(fitted[0], data, cfg.experiment), fitted

    (model, losses), record = choose_beta(grid, fit_one)
    return model, {"mcqa": losses, **record}


def beta_edge(grid: list[float], beta: float) -> str | None:
    """"lowest" / "highest" when `beta` is the grid's smallest / largest value (the calib
    optimum may lie outside the grid), None inside it or for a one-value grid."""
    if len(set(grid)) < 2:
        return None
    return "lowest" if beta == min(grid) else "highest" if beta == max(grid) else None


def choose_beta(grid: list[float], fit_one: Any) -> tuple[Any, dict[str, Any]]:
    """The beta of `grid` with the lowest calibration-split NLL (never the test splits).

    Args:
      grid: the betas tried (`experiment.beta_grid`, `--beta-grid`).
      fit_one: beta -> (calib NLL, fitted), one retrofit at that beta.
    Returns:
      (fitted of the chosen beta, record {"beta", "beta_grid", "beta_calib_nll" (per grid
      value), "beta_at_edge" (`beta_edge`), "warnings" (a sentence when at an edge)}).
    """
    if not grid:
        raise ValueError("experiment.beta_grid: empty")
    best, nlls = None, []
    for beta in grid:
        nll, fitted = fit_one(float(beta))
        nlls.append(float(nll))
        if best is None or nlls[-1] < best[0]:
            best = (nlls[-1], float(beta), fitted)
    _, beta, fitted = best
    edge = beta_edge([float(b) for b in grid], beta)
    warn = [] if edge is None else [
        f"beta {beta:g} is the grid's {edge} value: the calib optimum may lie "
        f"{'below' if edge == 'lowest' else 'above'} the grid (extend experiment.beta_grid)"]
    return fitted, {"beta": beta, "beta_grid": [float(b) for b in grid],
                    "beta_calib_nll": nlls, "beta_at_edge": edge, "warnings": warn}
