"""VMoER: variational MoE routing (Li & Wicker, arXiv:2603.09453; thesis arXiv:2509.23830).

Bayesian inference confined to expert selection. The routers live in `routecal.models.routers`
(registry names: det, mfvr, lowrank, fcvr, vtsr, fixed_temp, mc_dropout, ensemble, swag); this
module is the model-level front: the config, the MoE sublayer with a chosen router, switching
routers to per-pass sampling, common random numbers across an item's option sequences, hidden-state
noise (routing stability: at one layer's input, the paper's protocol, or at every MoE input), and
the retrofit of a trained deterministic MoE.

Every router keeps the deterministic parameters (`router/proj/kernel`) and adds its own under
`vrouter`, so (i) a deterministic MoE checkpoint loads into a VMoER model unchanged
(`retrofit_from`) and (ii) a retrofit trains only `routers.RETROFIT_TRAINABLE[name]`.

Letters: B batch, T tokens, D width, E experts, K experts per token, S samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from routecal.models import moe, routers
from routecal.models.routers import common, gaussian, logit, selection
from routecal.models.routers.baselines import EnsembleRouter, MCDropoutRouter
from routecal.stats import uncertainty

Array = jax.Array
VROUTER_PATH = common.VROUTER_PATH
VMoERConfig = common.VMoERConfig
ROUTER_NAMES = tuple(routers.ROUTERS)
ROUTER_TYPES = tuple(n for n in ROUTER_NAMES if n != "det")
STABILITY_PROTOCOLS = ("layer_input", "all_moe_inputs")
LogitVariationalRouter = logit.LogitVariationalRouter
TemperatureRouter = selection.TemperatureRouter
FixedTemperatureRouter = selection.FixedTemperatureRouter
gumbel_top_k = selection.gumbel_top_k
gaussian_kl = gaussian.kl_lowrank
check_vmoer_options = common.check_options
__all__ = [
    "EnsembleRouter",
    "MCDropoutRouter",
    "FixedTemperatureRouter",
    "LogitVariationalRouter",
    "TemperatureRouter",
    "VMoERConfig",
]


def make_router(cfg: Any, router_type: str, *, rngs: nnx.Rngs) -> moe.TopKRouter:
    """Router factory by registry name (`routers.ROUTERS`; old names raise naming the new one)."""
    return routers.make(cfg, router_type, rngs=rngs)


class VMoEMLP(moe.MoEMLP):
    """MoE MLP sublayer with router `router_type` (any registry name but "det")."""

    def __init__(self, cfg: Any, *, router_type: str = "mfvr", rngs: nnx.Rngs):
        if routers.canonical(router_type) not in ROUTER_TYPES:
            raise ValueError(
                f"router_type: unknown {router_type!r}; expected one of {ROUTER_TYPES}"
            )
        super().__init__(cfg, router=make_router(cfg, router_type, rngs=rngs), rngs=rngs)


def set_router_sampling(model: nnx.Module, sample: bool) -> int:
    """Sets `sample` on every stochastic router in `model`; returns how many were set.

    With `sample=True` inference draws one sample per forward pass (one logit sample, one
    dropout mask, one ensemble member per token, or Sample-K), so S passes give S stochastic
    predictions (for mutual information).
    """
    n = 0
    for _, m in nnx.iter_modules(model):
        if isinstance(m, routers.STOCHASTIC):
            m.sample = bool(sample)
            n += 1
    return n


def set_common_noise(model: nnx.Module, group: int) -> int:
    """Common random numbers: every stochastic router of `model` draws its routing noise once per
    `group` consecutive batch rows (an MCQA item's K option sequences, flattened item-major), so
    an item's options are scored under one routing draw. `group=1` restores independent rows.
    Returns how many routers were set."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"group: must be an integer >= 1, got {group!r}")
    n = 0
    for _, m in nnx.iter_modules(model):
        if isinstance(m, routers.STOCHASTIC):
            m.noise_group = group
            n += 1
    return n


class HiddenNoise(nnx.Module):
    """x -> x + N(0, std^2 I), a fresh draw per call from its own RNG stream."""

    def __init__(self, std: float, seed: int):
        self.std = nnx.Variable(jnp.asarray(std, jnp.float32))  # data: no recompile per std
        self.rngs = nnx.Rngs(noise=seed)

    def __call__(self, x_BxTxD: Array) -> Array:
        eps = jax.random.normal(self.rngs.noise(), x_BxTxD.shape, jnp.float32)
        return (x_BxTxD.astype(jnp.float32) + self.std[...] * eps).astype(x_BxTxD.dtype)


def set_hidden_noise(
    model: nnx.Module, std: float | None, *, seed: int = 0, keep_zero: bool = False
) -> int:
    """Adds N(0, std^2 I) to the input hidden state of every MoE layer of `model` (in place).

    The "all_moe_inputs" stability protocol: every MoE layer's input u (the normalised hidden
    state the layer receives) is perturbed at once, independently (layer i draws from seed + i),
    so noise compounds across layers. The paper's protocol (noise at one layer's input hidden
    state) is `set_layer_noise`. `std=None` (or 0, unless `keep_zero`) removes the noise;
    `keep_zero=True` keeps a std-0 noise module (the identity) so the graph, hence the compiled
    function, is the same for every std. Returns the layer count.
    """
    if std is not None and not std >= 0:
        raise ValueError(f"std: must be >= 0, got {std}")
    n = 0
    for _, m in nnx.iter_modules(model):
        if isinstance(m, moe.MoEMLP):
            on = std is not None and (std > 0 or keep_zero)
            m.input_noise = nnx.data(HiddenNoise(std, seed + n) if on else None)
            n += 1
    return n


def set_layer_noise(model: nnx.Module, std: float | None, layer: int | None, *, seed: int = 0) -> int:
    """Adds N(0, std^2 I) to the token hidden state entering decoder layer `layer` (before its
    attention), and nowhere else: the routing-stability perturbation of Li & Wicker
    (arXiv:2603.09453, Sec. 5). With the standard residual the stream is exactly h_l + eps from
    layer `layer` on, so layers before it are untouched. Every layer gets a noise module (std 0,
    the exact identity, except at `layer`), so one compiled graph serves every (layer, std);
    `layer=None` removes them. Returns the number of decoder layers.
    """
    if std is not None and not std >= 0:
        raise ValueError(f"std: must be >= 0, got {std}")
    layers = list(getattr(model, "layers", []))
    if not layers or not all(hasattr(x, "input_noise") for x in layers):
        raise ValueError("model: expected a decoder with `layers` carrying `input_noise`")
    if layer is not None and not 0 <= layer < len(layers):
        raise ValueError(f"layer: must lie in [0, {len(layers)}), got {layer}")
    for i, x in enumerate(layers):
        noise = HiddenNoise(float(std or 0.0) if i == layer else 0.0, seed + i)
        x.input_noise = nnx.data(None if layer is None else noise)
    return len(layers)


def router_posterior_param_names(model: nnx.Module, router: str = "mfvr") -> list[str]:
    """'/'-joined paths of the parameters a retrofit of `router` trains."""
    import re

    pattern = routers.RETROFIT_TRAINABLE[routers.canonical(router)]
    if pattern is None:
        return []
    state = nnx.state(model, nnx.Param)
    names = ("/".join(str(p) for p in path) for path, _ in nnx.to_flat_state(state))
    return sorted(n for n in names if re.search(pattern, n))


def retrofit_from(vmoer_model: nnx.Module, deterministic_model_or_state: Any) -> None:
    """Copies every parameter of a trained deterministic MoE model into a VMoER model in place.

    Paths are shared (router/proj, experts, attention, ...); the `vrouter` parameters keep their
    initialisation, so logit routers start at the deterministic mean and VTSR at T = 1.

    Raises:
      ValueError: if a deterministic parameter has no counterpart of the same shape.
    """
    src = deterministic_model_or_state
    if isinstance(src, nnx.Module):
        src = nnx.state(src, nnx.Param)
    dst = dict(nnx.to_flat_state(nnx.state(vmoer_model, nnx.Param)))
    for path, var in nnx.to_flat_state(src):
        if path not in dst:
            raise ValueError(
                f"deterministic_model_or_state: parameter {path} not in the VMoER model"
            )
        if dst[path].shape != var.shape:
            raise ValueError(
                f"deterministic_model_or_state: shape mismatch at {path}: "
                f"{var.shape} vs {dst[path].shape}"
            )
    nnx.update(vmoer_model, src)


# ----------------------------------------------------------------------------------------------
# Routing stability under hidden-state noise (the VMoER metric; letters N items, L MoE layers)
#   layer_input     (default; Li & Wicker, arXiv:2603.09453, Sec. 5): for each MoE layer l,
#                   eps ~ N(0, sigma^2 I) is added to the token hidden state entering layer l
#                   and nowhere else (`set_layer_noise`); layer l's score is the Jaccard of its
#                   top-k set, clean vs perturbed.
#   all_moe_inputs  noise on the normalised MoE input of every layer at once (`set_hidden_noise`),
#                   compounding across layers; layer l's score is its Jaccard in that one run.
# Every run uses a clone of the model, so a stochastic router draws the same routing noise in
# the clean and the perturbed run (1 at sigma = 0); the clean run is the same compiled graph at
# std 0 (x + 0 eps = x exactly).
# ----------------------------------------------------------------------------------------------

ExpertsFn = Callable[[nnx.Module], list[np.ndarray]]  # model -> per MoE layer experts [N, T, K]


def moe_layer_indices(model: nnx.Module) -> list[int]:
    """Decoder layer index of each MoE layer (the order of the `experts` traces)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "uses_moe"):
        raise ValueError("model: expected a routecal Decoder (cfg.uses_moe)")
    idx = [i for i in range(cfg.n_layers) if cfg.uses_moe(i)]
    if not idx:
        raise ValueError("model: has no MoE layer")
    return idx


def _jaccard_mean(a: np.ndarray, b: np.ndarray, mask_NxT: np.ndarray | None) -> float:
    j = uncertainty.jaccard(a, b)
    if mask_NxT is None:
        return float(j.mean())
    return float((j * mask_NxT).sum() / mask_NxT.sum())


def _experts(model: nnx.Module, experts_fn: ExpertsFn, setter: Callable[[nnx.Module], Any]):
    m = nnx.clone(model)
    setter(m)
    return experts_fn(m)


def stability(
    model: nnx.Module,
    experts_fn: ExpertsFn,
    sigmas: Sequence[float],
    *,
    seed: int = 0,
    protocol: str = "layer_input",
    mask_NxT: np.ndarray | None = None,
) -> dict[str, Any]:
    """stability_<sigma> (mean over MoE layers) and stability_layers_<sigma> ([L] curve).

    Args:
      model: a routecal Decoder (own or imported).
      experts_fn: runs a (perturbed) copy of the model on the items -> experts per MoE layer.
      sigmas: noise standard deviations.
      protocol: "layer_input" or "all_moe_inputs" (module docstring).
      mask_NxT: optional 0/1 token weights of the Jaccard means.
    """
    if protocol not in STABILITY_PROTOCOLS:
        raise ValueError(
            f"experiment.stability_protocol: unknown {protocol!r}; "
            f"expected one of {STABILITY_PROTOCOLS}"
        )
    layers = moe_layer_indices(model)
    sd = 1000 + int(seed)
    out: dict[str, Any] = {"stability_protocol": protocol}
    if protocol == "all_moe_inputs":

        def run(std: float) -> list[np.ndarray]:
            return _experts(
                model, experts_fn, lambda m: set_hidden_noise(m, std, seed=sd, keep_zero=True)
            )

        clean = run(0.0)
        for s in sigmas:
            noisy = run(float(s))
            per = [_jaccard_mean(a, b, mask_NxT) for a, b in zip(clean, noisy, strict=True)]
            out[f"stability_layers_{s:g}"] = per
            out[f"stability_{s:g}"] = float(np.mean(per))
        return out
    def run_at(std: float, i: int) -> list[np.ndarray]:
        return _experts(model, experts_fn, lambda m: set_layer_noise(m, std, i, seed=sd))

    clean = run_at(0.0, layers[0])  # std 0 everywhere: the same graph as every perturbed run
    curves: dict[float, list[float]] = {float(s): [] for s in sigmas}
    for j, i in enumerate(layers):
        for s in curves:
            curves[s].append(_jaccard_mean(clean[j], run_at(s, i)[j], mask_NxT))
    for s, per in curves.items():
        out[f"stability_layers_{s:g}"] = per
        out[f"stability_{s:g}"] = float(np.mean(per))
    return out
