"""Calibration metrics. (Seed version: top-label ECE only; the calibration issue completes it.)"""

from __future__ import annotations

import numpy as np

from routecal import _checks


def ece(confidence, correct, n_bins: int = 15, binning: str = "width") -> float:
    """Top-label expected calibration error, equal-width bins (b/n, (b+1)/n], 0 in bin 0."""
    c = _checks.check_unit_interval(
        _checks.as_array(confidence, "confidence", ndim=1), "confidence"
    )
    y = _checks.check_binary(correct, "correct")
    _checks.check_same_length(confidence=c, correct=y)
    if binning != "width":
        raise ValueError(f"binning: unsupported {binning!r}")
    b = np.clip(np.ceil(c * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = np.bincount(b, weights=y - c, minlength=n_bins)
    return float(np.sum(np.abs(gap)) / len(c))


def ece_from_probs(probs, labels, n_bins: int = 15) -> float:
    """Top-label ECE from a [N, C] probability matrix and [N] integer labels."""
    p = _checks.check_probs(probs)
    y = _checks.check_labels(labels, p.shape[1])
    _checks.check_same_length(probs=p, labels=y)
    return ece(p.max(axis=1), (p.argmax(axis=1) == y), n_bins=n_bins)
