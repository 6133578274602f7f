"""Fitting routers on a trained deterministic MoE: the VMoER retrofits, the same for every source.

    model, log = retrofit("mfvr", seed, copy, fit, n_members=4, perturb=0.02, rule=rule,
                          swag_steps=60, beta_grid=(1e-3, 1e-2), calib_nll=nll)

A source (a classifier or decoder trained here, an imported checkpoint) supplies two callables:
  copy(router, options) -> a model routed by `router` (registry name) holding the trained det
                           model's weights, `options` overriding its VMoER options (e.g. beta);
  fit(model, trainable, stream, *, steps, on_step, constant_lr, stop) -> per-step task losses:
                           trains the `trainable` selection (a regex over parameter paths) of
                           `model` in place; `stream` names the fit (None: the router's own,
                           m: ensemble member m, "beta<b>": the fit at that beta), so a source
                           picks its batch order and, if resumable, its checkpoint folder;
                           `steps` None = the source's retrofit steps.
The recipes (Li & Wicker, arXiv:2603.09453, Sec. 5, and the baselines' papers):
* beta routers (`BETA_ROUTERS`: the KL weight of mfvr / lowrank / fcvr, vtsr's regulariser
  weight): one retrofit per `beta_grid` value, the lowest `calib_nll` kept (`choose_beta`; the
  test splits never choose); an empty grid keeps the configured beta.
* ensemble (deep ensemble, Lakshminarayanan et al. 2017): members fitted alone
  (`baselines.fit_members`: det's router plus N(0, s^2), or from scratch the router's initialiser
  N(0, 0.02^2) on zeroed kernels) at a constant rate after warm-up until `rule` stops them, then
  installed in one `EnsembleRouter` per layer.
* swag (Maddox et al. 2019): `router/proj` fitted from det's weights at a constant rate after
  warm-up; from `vmoer_swag_start * steps` on every iterate enters the moments
  (`swag.collect_from`), installed at the end; `moments` (a file) keeps them for a resumed fit.
* the rest (fixed_temp, mc_dropout): `routers.RETROFIT_TRAINABLE[name]` fitted (none: as copied).
A source reads the ensemble's settings from its config with `ensemble_options`; one trained here
numbers its fits' batch orders with `stream_seed`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx

from routecal.files import workdir as workdir_io
from routecal.models import routers
from routecal.models.routers import baselines, common, swag

BETA_ROUTERS = ("mfvr", "lowrank", "fcvr", "vtsr")
PROJ = r"router/proj"
Copy = Callable[[str, dict[str, Any]], nnx.Module]
Fit = Callable[..., list[float]]


def ensemble_options(vmoer: Mapping[str, Any], plateau: Any, steps: int) -> dict[str, Any]:
    """The ensemble's keywords of `retrofit` from a source's config: `n_members` and `perturb`
    from its VMoER options (`model.vmoer`; defaults `routers.common.DEFAULTS`), the members'
    plateau `rule` from `plateau` (`baselines.Plateau.from_config`, `steps` the fit's steps)."""

    def option(name: str) -> Any:
        return vmoer.get(name, common.DEFAULTS[f"vmoer_{name}"])

    return {"n_members": int(option("ensemble")), "perturb": float(option("ensemble_perturb")),
            "rule": baselines.Plateau.from_config(plateau, steps)}


def stream_seed(seed: int, stream: int | str | None) -> int:
    """The batch-order seed of one fit at `seed` of a source trained here: ensemble member m
    -> seed * 1000 + 100 + m; the router's own fit (or one beta's) -> seed + 2."""
    return seed * 1000 + 100 + stream if isinstance(stream, int) else seed + 2


def fit_ensemble(copy: Copy, fit: Fit, *, n_members: int, perturb: float, seed: int,
                 rule: baselines.Plateau, scratch: bool = False) -> tuple[nnx.Module, dict]:
    """The ensemble (module docstring) -> (model, {"members": per-member fit logs})."""

    def make_member() -> nnx.Module:
        member = copy("det", {})
        return baselines.reset_routers(member) if scratch else member

    def fit_member(member: nnx.Module, m: int, rule: baselines.Plateau) -> list[float]:
        return fit(member, PROJ, m, steps=rule.max_steps, stop=rule.stop, constant_lr=True)

    kernels, members = baselines.fit_members(
        make_member, fit_member, n_members,
        baselines.ROUTER_INIT_STD if scratch else perturb, seed, rule,
    )  # fmt: skip
    model = copy("ensemble", {})
    baselines.install_members(model, kernels)
    return model, {"members": members}


def fit_swag(copy: Copy, fit: Fit, steps: int,
             moments: pathlib.Path | None = None) -> tuple[nnx.Module, dict]:
    """SWAG (module docstring) -> (model, {"losses", "swag_n", "converged"}). With `moments`,
    a fit that collected nothing (resumed after it had finished) reads the saved moments back,
    and the installed moments are saved there."""
    model = copy("swag", {})
    collector = swag.collect_from(model, steps)
    losses = fit(model, PROJ, None, steps=steps, on_step=collector.hook, constant_lr=True)
    if moments is not None and collector.states[0].n == 0 and moments.exists():
        with np.load(moments) as z:
            collector.states = [swag.SwagState(int(z[f"{i}/n"]), z[f"{i}/mean"],
                                               z[f"{i}/sq_mean"], z[f"{i}/dev"])
                                for i in range(len(collector.states))]  # fmt: skip
    collector.install()  # ValueError if no iterate was collected
    if moments is not None:
        workdir_io.save_npz(moments, {f"{i}/{k}": v for i, st in enumerate(collector.states)
                                      for k, v in st._asdict().items()})  # fmt: skip
    return model, {"losses": losses, "swag_n": collector.states[0].n,
                   "converged": baselines.converged(losses)}


def retrofit(base: str, seed: int, copy: Copy, fit: Fit, *, n_members: int, perturb: float,
             rule: baselines.Plateau, swag_steps: int, beta_grid: Sequence[float] = (),
             calib_nll: Callable[[nnx.Module], float] | None = None,
             moments: pathlib.Path | None = None,
             scratch: bool = False) -> tuple[nnx.Module, dict[str, Any]]:
    """Router `base` (a registry name) fitted on the source's det model (module docstring) ->
    (model, log: "losses" and, by recipe, "members" / "swag_n", "converged" / the beta record).
    `scratch` (ensemble only): members from the router's initialiser, not det's router."""
    if base == "ensemble":
        return fit_ensemble(copy, fit, n_members=n_members, perturb=perturb, seed=seed, rule=rule,
                            scratch=scratch)
    if base == "swag":
        return fit_swag(copy, fit, swag_steps, moments)

    def plain(options: dict[str, Any], stream: str | None = None) -> tuple[nnx.Module, list[float]]:
        model = copy(base, options)
        pattern = routers.RETROFIT_TRAINABLE[base]
        return model, [] if pattern is None else fit(model, pattern, stream)

    if base not in BETA_ROUTERS or not beta_grid:
        model, losses = plain({})
        return model, {"losses": losses}
    if calib_nll is None:
        raise ValueError("experiment.beta_grid: needs a calib split")

    def fit_one(beta: float) -> tuple[float, tuple[nnx.Module, list[float]]]:
        fitted = plain({"beta": beta}, f"beta{beta:g}")
        return calib_nll(fitted[0]), fitted

    (model, losses), record = choose_beta([float(b) for b in beta_grid], fit_one)
    return model, {"losses": losses, **record}


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
