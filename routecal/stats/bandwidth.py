"""Bandwidths for Nadaraya-Watson: Scott's rule, Scott multiples, the selection rules and their result
(`kernels.select_bandwidth` runs CV / oracle selection on the engine; this module needs no engine).

Shapes: N examples, D features, K bandwidths in a grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from routecal import _checks
from routecal.stats.kernel_layout import _features

# Default bandwidth grid for CV / oracle selection: 32 log-spaced multiples of Scott's rule.
DEFAULT_MULTIPLES = np.geomspace(1.0 / 8.0, 8.0, 32)


def scott_bandwidth(x) -> np.ndarray:
    """Scott's rule per feature: h_d = sigma_d * n^(-1/(D+4)) (Scott 1992, eq. 6.42).

    Matches `scipy.stats.gaussian_kde(...).factor` (= n^(-1/(D+4))) times the sample standard
    deviations (ddof=1), i.e. the diagonal of gaussian_kde's kernel bandwidth.

    Args:
      x: [N, D] features (a 1-D array is one feature), N >= 2.

    Returns:
      [D] float64 bandwidths.

    Raises:
      ValueError: fewer than 2 examples, NaN/inf, or a constant feature (zero standard deviation).
    """
    arr = _features(x, "x", min_rows=2)
    n, d = arr.shape
    sd = arr.std(axis=0, ddof=1)
    const = np.flatnonzero(~(sd > 0))
    if const.size:
        raise ValueError(
            f"x: feature(s) {const.tolist()} are constant (zero standard deviation): "
            "no bandwidth can be derived"
        )
    return sd * n ** (-1.0 / (d + 4))


def scott_multiples(x, multiples=DEFAULT_MULTIPLES) -> np.ndarray:
    """A grid of Scott bandwidths: `multiples[k] * scott_bandwidth(x)`.

    Args:
      x: [N, D] features.
      multiples: [K] positive multipliers.

    Returns:
      [K, D] bandwidth grid.
    """
    mult = _checks.as_array(np.atleast_1d(multiples), "multiples", ndim=1)
    if np.any(mult <= 0):
        raise ValueError(f"multiples: must all be > 0; got min {mult.min()}")
    return mult[:, None] * scott_bandwidth(x)[None, :]


# ----------------------------------------------------------------------------------------------
# Bandwidth selection
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BandwidthSelection:
    """A chosen bandwidth and how it was chosen.

    Attributes:
      rule: "scott", "scott_x<m>", "cv_nll" or "oracle_ece".
      bandwidth: [D] chosen bandwidth.
      multiple: the chosen Scott multiple.
      optimistic: True when the choice looked at the test set ("oracle_ece"): its scores are an
        optimistic bound, not an honest estimate.
      grid: [K] Scott multiples searched (one entry for fixed rules).
      scores: [K] criterion on the grid (CV-NLL or test ECE); None for fixed rules.
    """

    rule: str
    bandwidth: np.ndarray
    multiple: float
    optimistic: bool
    grid: np.ndarray = field(repr=False)
    scores: np.ndarray | None = field(default=None, repr=False)


_SCOTT_X = re.compile(r"^scott_x(\d+(?:\.\d*)?|\.\d+)$")
RULES = ("scott", "scott_x<m>", "cv_nll", "oracle_ece")
