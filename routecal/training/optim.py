"""The optimizer and the parameter selection of `train.trainable`.

    tx = make_tx(cfg.train)                       # AdamW, warm-up + cosine, global-norm clipping
    optimizer = nnx.Optimizer(model, tx, wrt=trainable_filter(cfg.train.trainable))
"""

from __future__ import annotations

import functools
import re
from typing import Any

import ml_collections
import optax
from flax import nnx

# Named parameter selections for `train.trainable`; anything else is a regular expression searched
# in the "/"-joined parameter path (e.g. "blocks/0/mlp/router/kernel").
TRAINABLE_PRESETS = {"all": r".*", "router-only": r"(^|/)router"}


@functools.lru_cache(maxsize=32)
def trainable_filter(spec: str) -> Any:
    """NNX filter selecting the trainable `nnx.Param`s: a preset name or a path regex.

    Cached, so one spec gives one filter object (it is part of the optimizer's static graph).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"train.trainable: expected a preset {list(TRAINABLE_PRESETS)} or a regex")
    pattern = TRAINABLE_PRESETS.get(spec, spec)
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"train.trainable: invalid regex {pattern!r} ({e})") from e

    def by_path(path: tuple, _: Any) -> bool:
        return rx.search("/".join(str(p) for p in path)) is not None

    return nnx.All(nnx.Param, by_path)


def make_tx(tcfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with linear warm-up then cosine decay, and global-norm clipping.

    The same settings return the same (cached) object, so the jit-compiled train step, whose
    optimizer graph holds it, is reused across runs in one process instead of recompiled.
    """
    steps = int(tcfg.steps)
    return _make_tx(
        steps=steps,
        warmup=min(int(tcfg.warmup), max(steps - 1, 0)),
        lr=float(tcfg.lr),
        weight_decay=float(tcfg.weight_decay),
        grad_clip=float(tcfg.get("grad_clip", 1.0)),
        end_lr_fraction=float(tcfg.get("end_lr_fraction", 0.0)),
    )


@functools.lru_cache(maxsize=32)
def _make_tx(
    *,
    steps: int,
    warmup: int,
    lr: float,
    weight_decay: float,
    grad_clip: float,
    end_lr_fraction: float,
) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),
        end_value=end_lr_fraction * lr,
    )
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.adamw(schedule, weight_decay=weight_decay),
    )
