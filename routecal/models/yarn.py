"""YaRN rotary scaling (Peng et al. 2023, arXiv:2309.00071) as DeepSeek-V2 uses it (its config's
`rope_scaling` {"type": "yarn", factor, original_max_position_embeddings, beta_fast, beta_slow,
mscale, mscale_all_dim}; HF `_compute_yarn_parameters`, `yarn_apply_mscale`).

* inverse frequencies: per rotary pair i, a blend of extrapolation theta^(-2i/K) and interpolation
  theta^(-2i/K) / factor, with weight 1 - ramp(i) on the extrapolated one; the ramp goes linearly
  from 0 to 1 between the pair indices floor(low) and ceil(high) where a pair makes beta_fast and
  beta_slow rotations over the original context (sec. 3.2, "NTK-by-parts");
* cos / sin times mscale(factor, mscale) / mscale(factor, mscale_all_dim), with
  mscale(s, m) = 0.1 m ln(s) + 1 for s > 1 (eq. 21), 1 otherwise;
* the attention softmax scale times mscale(factor, mscale_all_dim)^2 (DeepSeek's MLA).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
        "mscale_all_dim")


def mscale(factor: float, m: float = 1.0) -> float:
    """YaRN eq. 21: 0.1 m ln(factor) + 1 (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0


def check_params(p: Mapping[str, Any], name: str = "rope_scaling") -> dict[str, float]:
    """The YaRN parameters with their defaults (beta_fast 32, beta_slow 1, mscale 1,
    mscale_all_dim 0); ValueError naming a missing or non-positive one."""
    out = {"beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.0}
    out.update({k: float(v) for k, v in p.items() if k in KEYS and v is not None})
    for k in ("factor", "original_max_position_embeddings"):
        if k not in out or not out[k] > 0:
            raise ValueError(f"{name}: YaRN needs a positive {k!r}, got {dict(p)}")
    return out


def inv_freq(dim: int, theta: float, p: Mapping[str, float]) -> np.ndarray:
    """[dim / 2] float32 inverse frequencies of YaRN (see the module doc)."""
    p = check_params(p)
    pos = theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    extra, inter = 1.0 / pos, 1.0 / (p["factor"] * pos)

    def corr(rot: float) -> float:
        return dim * math.log(p["original_max_position_embeddings"] / (rot * 2 * math.pi)) / (
            2 * math.log(theta))

    low = max(math.floor(corr(p["beta_fast"])), 0)
    high = min(math.ceil(corr(p["beta_slow"])), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extra_w = 1.0 - ramp
    return (inter * (1.0 - extra_w) + extra * extra_w).astype(np.float32)


def cos_sin_scale(p: Mapping[str, float]) -> float:
    """The factor on cos / sin: mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both
    are set, else mscale(factor)."""
    p = check_params(p)
    if p["mscale"] and p["mscale_all_dim"]:
        return mscale(p["factor"], p["mscale"]) / mscale(p["factor"], p["mscale_all_dim"])
    return mscale(p["factor"])


def softmax_scale_factor(p: Mapping[str, float]) -> float:
    """The factor on the attention scale: mscale(factor, mscale_all_dim)^2 (1 without it)."""
    p = check_params(p)
    return mscale(p["factor"], p["mscale_all_dim"]) ** 2 if p["mscale_all_dim"] else 1.0


def from_hf_config(hf: Mapping[str, Any]) -> dict[str, float]:
    """YaRN parameters of a config.json: `rope_scaling` {"type": "yarn", ...} (remote code) or
    `rope_parameters` {"rope_type": "yarn", ...} (transformers >= 5); {} for the default RoPE."""
    for p, key in ((hf.get("rope_scaling") or {}, "type"),
                   (hf.get("rope_parameters") or {}, "rope_type")):
        kind = p.get(key, p.get("rope_type"))
        if kind == "yarn":
            return check_params(p, "config.json: rope_scaling")
    return {}
