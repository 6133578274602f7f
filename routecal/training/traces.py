"""Raw routing traces -> per-example routing summaries (pure functions of arrays).

Depth-attention weights `alpha [..., S]` of one sublayer are a distribution over its S depth sources,
indexed i = 0..S-1 (0 = the embedding). Per docs/ARCHITECTURE.md ("Statistics"):

* entropy           H   = -sum_i alpha_i log alpha_i            (natural log; 0 log 0 = 0)
* normalised entropy H_norm = H / log S                          (0 when S = 1: one source, no choice)
* routing depth      D   = sum_i i alpha_i
* depth variance     V   = sum_i alpha_i (i - D)^2

`summarize` turns a list of per-sublayer traces `[N, T, S_l]` into `[N, L']` arrays, one column per
sublayer, averaging the per-token statistics over tokens (or picking one token).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
SUMMARY_KEYS = ("H", "H_norm", "depth_mean", "depth_var")


def _source_index(alpha: Array) -> Array:
    s = alpha.shape[-1]
    return jnp.arange(s, dtype=alpha.dtype).reshape((1,) * (alpha.ndim - 1) + (s,))


def entropy(alpha: Array) -> Array:
    """Entropy (nats) over the last axis: [..., S] -> [...]."""
    alpha = jnp.asarray(alpha, jnp.float32)
    safe = jnp.where(alpha > 0, alpha, 1.0)
    return -jnp.sum(jnp.where(alpha > 0, alpha * jnp.log(safe), 0.0), axis=-1)


def normalized_entropy(alpha: Array) -> Array:
    """H / log S over the last axis (0 when S = 1): [..., S] -> [...] in [0, 1]."""
    alpha = jnp.asarray(alpha, jnp.float32)
    s = alpha.shape[-1]
    if s == 1:
        return jnp.zeros(alpha.shape[:-1], jnp.float32)
    return entropy(alpha) / jnp.log(jnp.float32(s))


def depth_mean(alpha: Array) -> Array:
    """Routing depth D = sum_i i alpha_i: [..., S] -> [...]."""
    alpha = jnp.asarray(alpha, jnp.float32)
    return jnp.sum(alpha * _source_index(alpha), axis=-1)


def depth_var(alpha: Array) -> Array:
    """Depth variance V = sum_i alpha_i (i - D)^2: [..., S] -> [...]."""
    alpha = jnp.asarray(alpha, jnp.float32)
    d = depth_mean(alpha)[..., None]
    return jnp.sum(alpha * jnp.square(_source_index(alpha) - d), axis=-1)


def summarize(alpha_list: Sequence[Array], token: str | int = "mean") -> dict[str, np.ndarray]:
    """Per-example summaries of a list of per-sublayer depth weights.

    Args:
      alpha_list: L' arrays [N, T, S_l] (S_l may differ between sublayers); weights over the last axis.
      token: "mean" averages each per-token statistic over tokens; an int picks that token
        (negative counts from the end).

    Returns:
      {"H", "H_norm", "depth_mean", "depth_var"}: float32 arrays [N, L'] (shape [0, 0] if the list
      is empty, e.g. for a standard-residual model).

    Raises:
      ValueError: if an alpha is not 3-D, the N or T differ between sublayers, or `token` is invalid.
    """
    if not alpha_list:
        return {k: np.zeros((0, 0), np.float32) for k in SUMMARY_KEYS}
    arrs = []
    for l, a in enumerate(alpha_list):
        a = jnp.asarray(a, jnp.float32)
        if a.ndim != 3:
            raise ValueError(f"alpha_list[{l}]: expected [N, T, S], got shape {a.shape}")
        arrs.append(a)
    n, t = arrs[0].shape[:2]
    for l, a in enumerate(arrs):
        if a.shape[:2] != (n, t):
            raise ValueError(
                f"alpha_list[{l}]: shape {a.shape} does not match N, T = {(n, t)} of alpha_list[0]"
            )
    if isinstance(token, str):
        if token != "mean":
            raise ValueError(f"token: expected 'mean' or an int, got {token!r}")
        reduce = lambda x: jnp.mean(x, axis=1)
    elif isinstance(token, int | np.integer) and not isinstance(token, bool):
        if not -t <= token < t:
            raise ValueError(f"token: index {token} out of range for T={t}")
        reduce = lambda x: x[:, int(token)]
    else:
        raise ValueError(f"token: expected 'mean' or an int, got {token!r}")
    fns = {
        "H": entropy,
        "H_norm": normalized_entropy,
        "depth_mean": depth_mean,
        "depth_var": depth_var,
    }
    return {
        k: np.stack([np.asarray(reduce(fn(a))) for a in arrs], axis=1).astype(np.float32)
        for k, fn in fns.items()
    }


def alpha_mean(alpha_list: Sequence[Array]) -> tuple[np.ndarray, np.ndarray]:
    """Token- and example-averaged depth weights, zero-padded to a common width.

    Returns:
      alpha_mean [L', S_max] (row l holds the mean weights over its S_l sources then zeros) and
      n_sources [L'] (int32).
    """
    if not alpha_list:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.int32)
    n_sources = np.array([np.shape(a)[-1] for a in alpha_list], np.int32)
    out = np.zeros((len(alpha_list), int(n_sources.max())), np.float32)
    for l, a in enumerate(alpha_list):
        out[l, : n_sources[l]] = np.asarray(a, np.float32).mean(axis=(0, 1))
    return out, n_sources


MOE_SUMMARY_KEYS = ("router_entropy", "router_entropy_norm", "top1_margin", "gate_mass", "dropped")


def moe_summaries(mlp_traces: Sequence[dict], token: str | int = "mean") -> dict[str, np.ndarray]:
    """Per-example MoE routing summaries from the MLP traces of a forward pass.

    Only traces holding `router_probs` (MoE / VMoER layers) count; M is their number.

    Args:
      mlp_traces: per-MLP trace dicts (`router_probs` [N, T, E], `gates` [N, T, K], `dropped`
        [N, T, K]); dense MLPs contribute empty dicts.
      token: "mean" over tokens, or an int token index.

    Returns:
      float32 [N, M] arrays: `router_entropy` (nats), `router_entropy_norm` (/ log E),
      `top1_margin` (p_(1) - p_(2) of the router probabilities), `gate_mass` (sum of the kept
      combine weights) and `dropped` (fraction of the token's assignments dropped for capacity).
      Empty dict if there is no MoE layer.
    """
    moe_tr = [tr for tr in mlp_traces if "router_probs" in tr]
    if not moe_tr:
        return {}
    if isinstance(token, str):
        if token != "mean":
            raise ValueError(f"token: expected 'mean' or an int, got {token!r}")
        reduce = lambda x: np.mean(x, axis=1)
    elif isinstance(token, int | np.integer) and not isinstance(token, bool):
        reduce = lambda x: x[:, int(token)]
    else:
        raise ValueError(f"token: expected 'mean' or an int, got {token!r}")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in MOE_SUMMARY_KEYS}
    for tr in moe_tr:
        p = np.asarray(tr["router_probs"], np.float32)
        h = np.asarray(entropy(p))
        top2 = -np.sort(-p, axis=-1)[..., :2]
        margin = top2[..., 0] - (top2[..., 1] if p.shape[-1] > 1 else 0.0)
        cols["router_entropy"].append(reduce(h))
        cols["router_entropy_norm"].append(
            reduce(h / np.log(p.shape[-1])) if p.shape[-1] > 1 else reduce(np.zeros_like(h))
        )
        cols["top1_margin"].append(reduce(margin))
        cols["gate_mass"].append(reduce(np.sum(np.asarray(tr["gates"], np.float32), axis=-1)))
        cols["dropped"].append(reduce(np.mean(np.asarray(tr["dropped"], np.float32), axis=-1)))
    return {k: np.stack(v, axis=1).astype(np.float32) for k, v in cols.items()}
