"""Binary metrics of calibrated top-label confidences (probes, bandwidth selection, the report).

Shapes: `N` examples. One clip constant, `PROB_CLIP`, for every log in routecal.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from routecal import _checks
from routecal.stats.binning import mass_bins
from routecal.stats.calibration import _check_confidence_correct, ece

PROB_CLIP = 1e-6  # the one clip: probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] in logs.


def binary_nll_core(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean binary NLL along the last axis, p clipped to [PROB_CLIP, 1 - PROB_CLIP] (unchecked).

    -mean_i [y_i log p_i + (1 - y_i) log(1 - p_i)]; p, y broadcast ([..., N]); returns [...].
    """
    p = np.clip(p, PROB_CLIP, 1.0 - PROB_CLIP)
    return -np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p), axis=-1)


def binary_nll(confidence: Any, correct: Any) -> float:
    """Binary NLL of the top-label event: [N] confidence in [0, 1], [N] 0/1 correct -> float."""
    c, y = _check_confidence_correct(confidence, correct)
    return float(binary_nll_core(c, y))


def binary_brier(confidence: Any, correct: Any) -> float:
    """Binary Brier score mean_i (c_i - correct_i)^2 (Brier 1950) of the top-label event."""
    c, y = _check_confidence_correct(confidence, correct)
    return float(np.mean((c - y) ** 2))


def worst_group_ece(
    confidence: Any, correct: Any, routing: Any, *, n_groups: int = 3, n_bins: int = 15
) -> float:
    """Worst-routing-tertile ECE: the largest ECE inside `n_groups` equal-size routing rank groups.

    Groups are equal-mass bins of `routing` (`stats.binning.mass_bins`: `numpy.array_split` of the
    sorted values, a tie block kept whole in the group of its first position; 3 = tertiles).

    Args:
      confidence: [N] calibrated confidences in [0, 1]. correct: [N] 0/1.
      routing: [N] the feature defining the groups (e.g. mean routing-depth variance).
      n_groups: number of rank groups. n_bins: equal-width ECE bins inside each group.
    """
    c, y = _check_confidence_correct(confidence, correct)
    r = _checks.as_array(routing, "routing", ndim=1)
    _checks.check_same_length(confidence=c, correct=y, routing=r)
    _checks.check_positive_int(n_groups, "n_groups")
    if len(c) < n_groups:
        raise ValueError(f"confidence: needs at least n_groups={n_groups} examples, got {len(c)}")
    part = mass_bins(r, n_groups)  # tied routing values share a group: row order is irrelevant
    return max(ece(c[part == g], y[part == g], n_bins=n_bins) for g in np.unique(part))
