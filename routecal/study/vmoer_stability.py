"""Routing stability of a decoder MoE under hidden-state noise (the VMoER metric).

    out = stability(model, experts_fn, sigmas, seed=0, protocol="layer_input", mask_NxT=mask)

Protocols (`experiment.stability_protocol`, `vmoer.STABILITY_PROTOCOLS`):
  layer_input     (default; Li & Wicker, arXiv:2603.09453, Sec. 5): for each MoE layer l,
                  eps ~ N(0, sigma^2 I) is added to the token hidden state entering layer l
                  (before its attention) and nowhere else (`vmoer.set_layer_noise`); the score
                  of layer l is the Jaccard of layer l's top-k set, clean vs perturbed.
  all_moe_inputs  (routecal's earlier protocol): noise on the normalised MoE input of every
                  layer at once (`vmoer.set_hidden_noise`), so noise compounds across layers;
                  layer l's score is its Jaccard in that one perturbed run.
Both give stability_<sigma> = mean over MoE layers and stability_layers_<sigma> = the per-layer
curve, Jaccard means over tokens (weighted by `mask_NxT`, e.g. the real tokens). Every run uses a
clone of the model, so a stochastic router draws the same routing noise in the clean and the
perturbed run (its score measures input sensitivity: 1 at sigma = 0); the clean run is the same
compiled graph at std 0 (x + 0 eps = x exactly).

Letters: N items, T tokens, K experts per token, L MoE layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flax import nnx

from routecal.models import vmoer
from routecal.stats import uncertainty

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
    if protocol not in vmoer.STABILITY_PROTOCOLS:
        raise ValueError(
            f"experiment.stability_protocol: unknown {protocol!r}; "
            f"expected one of {vmoer.STABILITY_PROTOCOLS}"
        )
    layers = moe_layer_indices(model)
    sd = 1000 + int(seed)
    out: dict[str, Any] = {"stability_protocol": protocol}
    if protocol == "all_moe_inputs":

        def run(std: float) -> list[np.ndarray]:
            return _experts(
                model, experts_fn, lambda m: vmoer.set_hidden_noise(m, std, seed=sd, keep_zero=True)
            )

        clean = run(0.0)
        for s in sigmas:
            noisy = run(float(s))
            per = [_jaccard_mean(a, b, mask_NxT) for a, b in zip(clean, noisy, strict=True)]
            out[f"stability_layers_{s:g}"] = per
            out[f"stability_{s:g}"] = float(np.mean(per))
        return out
    def run_at(std: float, i: int) -> list[np.ndarray]:
        return _experts(model, experts_fn, lambda m: vmoer.set_layer_noise(m, std, i, seed=sd))

    clean = run_at(0.0, layers[0])  # std 0 everywhere: the same graph as every perturbed run
    curves: dict[float, list[float]] = {float(s): [] for s in sigmas}
    for j, i in enumerate(layers):
        for s in curves:
            curves[s].append(_jaccard_mean(clean[j], run_at(s, i)[j], mask_NxT))
    for s, per in curves.items():
        out[f"stability_layers_{s:g}"] = per
        out[f"stability_{s:g}"] = float(np.mean(per))
    return out
