"""Router registry: every MoE router routecal trains, by the name configs and tables use.

  det          deterministic top-k (`moe.TopKRouter`)
  mfvr         logit-space VMoER, diagonal covariance        (routers.logit)
  lowrank      logit-space VMoER, diagonal + rank-R          (routers.logit)
  fcvr         logit-space VMoER, full covariance (Cholesky) (routers.logit)
  vtsr         selection-space VMoER, learned temperature    (routers.selection)
  fixed_temp   Sample-K at a fixed temperature (baseline)    (routers.selection)
  mc_dropout   MC-dropout router (baseline)                  (routers.baselines)
  ensemble     deep-ensemble router (baseline)               (routers.baselines)

"logit" and "temp" are kept as aliases of "mfvr" and "vtsr". A retrofit trains only the
parameters matching `RETROFIT_TRAINABLE[name]` (None: the router has nothing to fit).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flax import nnx

from routecal.models import moe
from routecal.models.routers import baselines, common, logit, selection

ROUTERS: dict[str, Callable[..., moe.TopKRouter]] = {
    "det": moe.TopKRouter,
    "mfvr": functools.partial(logit.LogitVariationalRouter, covariance="diag"),
    "lowrank": functools.partial(logit.LogitVariationalRouter, covariance="lowrank"),
    "fcvr": functools.partial(logit.LogitVariationalRouter, covariance="full"),
    "vtsr": selection.TemperatureRouter,
    "fixed_temp": selection.FixedTemperatureRouter,
    "mc_dropout": baselines.MCDropoutRouter,
    "ensemble": baselines.EnsembleRouter,
}
ALIASES = {"logit": "mfvr", "temp": "vtsr"}
RETROFIT_TRAINABLE: dict[str, str | None] = {
    "det": None,
    "mfvr": common.VROUTER_PATH,
    "lowrank": common.VROUTER_PATH,
    "fcvr": common.VROUTER_PATH,
    "vtsr": common.VROUTER_PATH,
    "fixed_temp": None,
    "mc_dropout": r"router/proj",
    "ensemble": common.VROUTER_PATH,
}
STOCHASTIC = (
    logit.LogitVariationalRouter,
    selection.TemperatureRouter,
    selection.FixedTemperatureRouter,
    baselines.MCDropoutRouter,
    baselines.EnsembleRouter,
)


def canonical(name: str) -> str:
    """The registry name of `name` (aliases resolved); ValueError if unknown."""
    name = ALIASES.get(name, name)
    if name not in ROUTERS:
        raise ValueError(
            f"router: unknown {name!r}; expected one of {sorted(ROUTERS)} or {sorted(ALIASES)}"
        )
    return name


def make(cfg: Any, name: str, *, rngs: nnx.Rngs) -> moe.TopKRouter:
    """Builds the router `name` for an MoE config (with optional `vmoer_*` options)."""
    common.check_options(dict(getattr(cfg, "vmoer_options", {}) or {}))
    return ROUTERS[canonical(name)](cfg, rngs=rngs)
