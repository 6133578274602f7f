"""Uncertainty scores, OOD AUROC and routing stability (the VMoER metrics).

Pure functions of arrays (numpy or jax in, numpy out); bad input raises ValueError naming the
argument. Letters: S stochastic forward passes, N examples, C classes, L MoE layers, T tokens,
K experts per token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from routecal import _checks

OOD_SCORES = ("entropy", "mutual_information", "max_prob")


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis; 0 log 0 = 0."""
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _probs_snc(probs: Any, name: str) -> np.ndarray:
    p = _checks.as_array(probs, name)
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3:
        raise ValueError(f"{name}: expected [N, C] or [S, N, C] probabilities, got shape {p.shape}")
    for s in range(p.shape[0]):
        _checks.check_probs(p[s], name)
    return p


def predictive_entropy(probs: Any) -> np.ndarray:
    """Entropy of the mean predictive distribution, H[mean_s p_s]: [N, C] or [S, N, C] -> [N]."""
    return _entropy(_probs_snc(probs, "probs").mean(axis=0))


def mutual_information(probs_SxNxC: Any) -> np.ndarray:
    """Mutual information (BALD) from S stochastic passes: H[mean_s p_s] - mean_s H[p_s] -> [N].

    Zero when all passes agree (e.g. a deterministic model); clipped at 0 against rounding.
    """
    p = _checks.as_array(probs_SxNxC, "probs_SxNxC", ndim=3)
    p = _probs_snc(p, "probs_SxNxC")
    mi = _entropy(p.mean(axis=0)) - _entropy(p).mean(axis=0)
    return np.maximum(mi, 0.0)


def max_prob(probs: Any) -> np.ndarray:
    """Confidence max_c of the mean predictive distribution: [N, C] or [S, N, C] -> [N]."""
    return _probs_snc(probs, "probs").mean(axis=0).max(axis=-1)


def ood_score(probs: Any, kind: str = "entropy") -> np.ndarray:
    """An OOD score (higher = more likely OOD): "entropy", "mutual_information" or "max_prob"
    (scored as 1 - max_prob). `probs`: [N, C] or [S, N, C] ([S, N, C] needed for MI)."""
    if kind == "entropy":
        return predictive_entropy(probs)
    if kind == "max_prob":
        return 1.0 - max_prob(probs)
    if kind == "mutual_information":
        return mutual_information(probs)
    raise ValueError(f"kind: unknown OOD score {kind!r}; expected one of {OOD_SCORES}")


def ood_auroc(scores_in: Any, scores_out: Any) -> float:
    """AUROC of separating OOD (positive) from in-distribution examples; higher score = more OOD.

    Mann-Whitney form with ties counted one half: AUROC = P(s_out > s_in) + 1/2 P(s_out = s_in),
    computed from average ranks (equals `sklearn.metrics.roc_auc_score` with OOD labelled 1).
    """
    a = _checks.as_array(scores_in, "scores_in", ndim=1)
    b = _checks.as_array(scores_out, "scores_out", ndim=1)
    ranks = stats.rankdata(np.concatenate([a, b]))  # average ranks for ties
    n_in, n_out = len(a), len(b)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


@dataclasses.dataclass(frozen=True)
class RoutingStability:
    """Mean Jaccard similarity of selected-expert sets, per layer [L] and overall (mean of layers)."""

    per_layer: np.ndarray
    overall: float


def _as_layers(x: Any, name: str) -> list[np.ndarray]:
    if isinstance(x, list | tuple):
        layers = [_checks.as_array(e, f"{name}[{i}]", dtype=None) for i, e in enumerate(x)]
    else:
        arr = _checks.as_array(x, name, dtype=None)
        layers = list(arr) if arr.ndim == 4 else [arr]
    for i, e in enumerate(layers):
        if e.dtype.kind not in "iu":
            raise ValueError(f"{name}[{i}]: expert indices must be integers, got {e.dtype}")
        if e.ndim != 3 or np.any(e < 0):
            raise ValueError(
                f"{name}[{i}]: expected non-negative expert indices [N, T, K], got {e.shape}"
            )
    return layers


def jaccard(experts_a: Any, experts_b: Any) -> np.ndarray:
    """Per-token Jaccard index |A & B| / |A | B| of two expert-index sets [..., K] -> [...]."""
    a = np.asarray(experts_a)
    b = np.asarray(experts_b)
    for name, e in (("experts_a", a), ("experts_b", b)):
        if e.ndim == 0 or e.size == 0 or e.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected integer expert indices [..., K], got {e.dtype}{e.shape}")
        if np.any(e < 0):  # -1 (a "no expert" marker) would silently index the last expert
            raise ValueError(f"{name}: expert indices must be >= 0, got min {e.min()}")
    if a.shape[:-1] != b.shape[:-1]:
        raise ValueError(f"experts_b: shape {b.shape} does not match experts_a {a.shape}")
    n_e = int(max(a.max(), b.max())) + 1
    ma = np.zeros((*a.shape[:-1], n_e), bool)
    mb = np.zeros((*b.shape[:-1], n_e), bool)
    np.put_along_axis(ma, a, True, axis=-1)
    np.put_along_axis(mb, b, True, axis=-1)
    return (ma & mb).sum(-1) / (ma | mb).sum(-1)


def routing_stability(experts_clean: Any, experts_noisy: Any) -> RoutingStability:
    """Routing stability (VMoER): mean Jaccard of selected-expert sets, clean vs perturbed input.

    Args:
      experts_clean: per MoE layer, selected experts [N, T, K] (a list of L arrays, or one array
        [L, N, T, K], or a single layer [N, T, K]).
      experts_noisy: the same for the perturbed input.

    Returns:
      RoutingStability(per_layer [L], overall): means over examples and tokens; 1 = identical.
    """
    a = _as_layers(experts_clean, "experts_clean")
    b = _as_layers(experts_noisy, "experts_noisy")
    if len(a) != len(b):
        raise ValueError(f"experts_noisy: {len(b)} layers, experts_clean has {len(a)}")
    per_layer = np.array([jaccard(x, y).mean() for x, y in zip(a, b, strict=True)])
    return RoutingStability(per_layer, float(per_layer.mean()))


def routing_stability_under_noise(
    experts_fn: Callable[[np.ndarray], Sequence[Any]],
    tokens_NxTxP: Any,
    noise_std: float,
    *,
    seed: int = 0,
) -> RoutingStability:
    """Runs `experts_fn` on clean tokens and on tokens + N(0, noise_std^2) noise; compares routing.

    Args:
      experts_fn: tokens [N, T, P] -> per-layer selected experts [N, T, K] (e.g. a trained model's
        forward pass returning its MoE `experts` traces, with deterministic routing).
      tokens_NxTxP: clean inputs.
      noise_std: std of the Gaussian perturbation (0 gives stability 1 for a deterministic router).
      seed: seed of the noise.
    """
    x = _checks.as_array(tokens_NxTxP, "tokens_NxTxP", ndim=3, dtype=np.float32)
    if not (np.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std: must be a finite number >= 0, got {noise_std}")
    noise = np.random.default_rng(seed).normal(size=x.shape).astype(np.float32)
    return routing_stability(experts_fn(x), experts_fn(x + np.float32(noise_std) * noise))


# ------------------------------------------------------------------------------------------------
# Router-internal OOD scores (VMoER, arXiv:2603.09453, Sec. 5: router-logit variance vs gating
# entropy), averaged over tokens (optionally masked) and MoE layers -> one score per example.
# ------------------------------------------------------------------------------------------------

ROUTER_OOD_SCORES = ("gating_entropy", "router_logit_variance")


def _layer_token_mean(layers: Any, name: str, mask_NxT: Any | None, ndim: int) -> np.ndarray:
    arrs = list(layers) if isinstance(layers, list | tuple) else [layers]
    if not arrs:
        raise ValueError(f"{name}: no MoE layer given")
    out = [_checks.as_array(x, f"{name}[{i}]", ndim=ndim) for i, x in enumerate(arrs)]
    out_shape = out[0].shape[:2]
    for i, a in enumerate(out):
        if a.shape[:2] != out_shape:
            raise ValueError(f"{name}[{i}]: shape {a.shape[:2]} differs from layer 0 {out_shape}")
    w = np.ones(out_shape) if mask_NxT is None else _checks.as_array(mask_NxT, "mask_NxT", ndim=2)
    if w.shape != out_shape or np.any(w.sum(axis=1) <= 0):
        raise ValueError(f"mask_NxT: expected [N, T] = {out_shape} with a token in every row")
    vals = [a if ndim == 2 else _entropy(a) for a in out]
    return np.mean([(v * w).sum(1) / w.sum(1) for v in vals], axis=0)


def gating_entropy(router_probs: Any, mask_NxT: Any | None = None) -> np.ndarray:
    """Mean entropy of the routing distribution over tokens and MoE layers -> [N].

    Args:
      router_probs: one [N, T, E] array per MoE layer (a list), or a single layer.
      mask_NxT: optional 0/1 weights of the tokens to average (e.g. the answer position).
    """
    return _layer_token_mean(router_probs, "router_probs", mask_NxT, 3)


def router_logit_variance(router_var: Any, mask_NxT: Any | None = None) -> np.ndarray:
    """Mean router-logit variance (a router's `router_var` trace [N, T] per layer) -> [N]."""
    return _layer_token_mean(router_var, "router_var", mask_NxT, 2)


# The per-item OOD scores of an MoE classifier over options (the VMoER section's names).
MOE_OOD_SCORES = ("entropy", "max_prob", "mi", "gating_entropy", "router_logit_variance")


def moe_ood_scores(
    names: Sequence[str],
    probs_NxK: Any,
    layers: Sequence[dict[str, Any]],
    mc_SxNxK: Any | None,
    mask_NxT: Any | None = None,
) -> dict[str, np.ndarray]:
    """Every OOD score in `names` (`MOE_OOD_SCORES`) per item -> {name: [N]}; ValueError for an
    unknown name. entropy / max_prob (1 - max p) of `probs_NxK`; mi over S sampled passes
    (`mutual_information`; 0 without them: a deterministic model); gating_entropy and
    router_logit_variance are token means over the MoE layers' `router_probs` /
    `router_logit_var` traces ([N, T, E] per layer, weighted by `mask_NxT`); the variance is 0
    where no layer emits it (deterministic logits: det, vtsr, fixed_temp)."""
    names = tuple(names)
    unknown = sorted(set(names) - set(MOE_OOD_SCORES))
    if unknown:
        raise ValueError(f"experiment.ood_scores: unknown {unknown}; expected {MOE_OOD_SCORES}")
    n = len(probs_NxK)
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name in ("entropy", "max_prob"):
            out[name] = ood_score(probs_NxK, name)
        elif name == "mi":
            out[name] = np.zeros(n) if mc_SxNxK is None else mutual_information(mc_SxNxK)
        elif name == "gating_entropy":
            out[name] = gating_entropy([t["router_probs"] for t in layers], mask_NxT)
        elif not any("router_logit_var" in t for t in layers):
            out[name] = np.zeros(n)
        else:
            out[name] = router_logit_variance([t["router_logit_var"] for t in layers], mask_NxT)
    return out


def ood_aurocs(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """{domain: {score: [N]}} with an "in" domain -> ood_auroc_<domain>_<score> for every OOD
    domain present ("near", "far"), and ood_auroc_<domain> = its entropy AUROC."""
    res: dict[str, float] = {}
    for dom in ("near", "far"):
        if dom in scores:
            for k, v in scores[dom].items():
                res[f"ood_auroc_{dom}_{k}"] = ood_auroc(scores["in"][k], v)
            if f"ood_auroc_{dom}_entropy" in res:
                res[f"ood_auroc_{dom}"] = res[f"ood_auroc_{dom}_entropy"]
    return res
