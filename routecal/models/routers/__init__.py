"""Router registry: every MoE router routecal trains, by the name configs and tables use.

  det          deterministic top-k (`moe.TopKRouter`)
  mfvr         logit-space VMoER, diagonal covariance        (routers.logit)
  lowrank      logit-space VMoER, diagonal + rank-R          (routers.logit)
  fcvr         logit-space VMoER, full covariance (Cholesky) (routers.logit)
  vtsr         selection-space VMoER, learned temperature    (routers.selection)
  fixed_temp   Sample-K at a fixed temperature (baseline)    (routers.selection)
  mc_dropout   MC-dropout router (baseline)                  (routers.baselines)
  ensemble     deep-ensemble router (baseline)               (routers.baselines)
  swag         SWAG router (baseline, Maddox et al. 2019)    (routers.swag)

A method name is a router name, or a router name plus `RETROFIT_SUFFIX` ("mfvr_retrofit": the
router fitted on a trained deterministic model). This is the one vocabulary (configs, tables,
FLOP counts, model `mlp_type` "vmoer_<name>"): the old names "logit" and "temp" raise a
ValueError naming "mfvr" and "vtsr". A retrofit trains only the parameters matching
`RETROFIT_TRAINABLE[name]` (None: the router has nothing to fit).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flax import nnx

from routecal.models import moe
from routecal.models.routers import baselines, common, logit, selection, swag

ROUTERS: dict[str, Callable[..., moe.TopKRouter]] = {
    "det": moe.TopKRouter,
    "mfvr": functools.partial(logit.LogitVariationalRouter, covariance="diag"),
    "lowrank": functools.partial(logit.LogitVariationalRouter, covariance="lowrank"),
    "fcvr": functools.partial(logit.LogitVariationalRouter, covariance="full"),
    "vtsr": selection.TemperatureRouter,
    "fixed_temp": selection.FixedTemperatureRouter,
    "mc_dropout": baselines.MCDropoutRouter,
    "ensemble": baselines.EnsembleRouter,
    "swag": swag.SwagRouter,
}
RENAMED = {"logit": "mfvr", "temp": "vtsr"}  # old name -> the registry name (issue 21)
RETROFIT_SUFFIX = "_retrofit"
RETROFIT_TRAINABLE: dict[str, str | None] = {
    "det": None,
    "mfvr": common.VROUTER_PATH,
    "lowrank": common.VROUTER_PATH,
    "fcvr": common.VROUTER_PATH,
    "vtsr": common.VROUTER_PATH,
    "fixed_temp": None,
    "mc_dropout": r"router/proj",
    # the selection a joint fit of members 1..M-1 would train; every retrofit path (LM study,
    # digits study, imported checkpoints) instead fits each member alone from a perturbed det
    # router (`baselines.fit_members`), so this entry is only the fallback of a plain trainer
    "ensemble": common.VROUTER_PATH,
    "swag": r"router/proj",  # + the moments of its trajectory (`swag.collect_from`)
}
STOCHASTIC = (
    logit.LogitVariationalRouter,
    selection.TemperatureRouter,
    selection.FixedTemperatureRouter,
    baselines.MCDropoutRouter,
    baselines.EnsembleRouter,
    swag.SwagRouter,
)


def canonical(name: str) -> str:
    """`name` if it is a registry name; ValueError naming the new name of an old one."""
    if name in RENAMED:
        raise ValueError(f"router: {name!r} was renamed; use {RENAMED[name]!r}")
    if name not in ROUTERS:
        raise ValueError(f"router: unknown {name!r}; expected one of {sorted(ROUTERS)}")
    return name


def split_method(method: str) -> tuple[str, bool]:
    """A method name -> (router registry name, retrofit?); ValueError if unknown or renamed
    ("mfvr_retrofit" -> ("mfvr", True); "logit" -> ValueError naming "mfvr")."""
    base = method.removesuffix(RETROFIT_SUFFIX)
    return canonical(base), base != method


def make(cfg: Any, name: str, *, rngs: nnx.Rngs) -> moe.TopKRouter:
    """Builds the router `name` for an MoE config (with optional `vmoer_*` options)."""
    common.check_options(dict(getattr(cfg, "vmoer_options", {}) or {}))
    return ROUTERS[canonical(name)](cfg, rngs=rngs)
