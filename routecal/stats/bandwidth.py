"""Bandwidths for Nadaraya-Watson: Scott's rule, Scott multiples and CV / oracle selection.

Shapes: N examples, D features, K bandwidths in a grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from jax.sharding import Mesh

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


def select_bandwidth(
    rule: str,
    x,
    y,
    *,
    multiples=DEFAULT_MULTIPLES,
    test: tuple | None = None,
    n_bins: int = 15,
    mesh: Mesh | None = None,
) -> BandwidthSelection:
    """Chooses a Nadaraya-Watson bandwidth for features x [N, D] and binary targets y [N].

    Rules:
      "scott": Scott's rule (multiple 1).
      "scott_x<m>": m times Scott's rule, e.g. "scott_x2", "scott_x0.5".
      "cv_nll": argmin over `multiples` x Scott of the leave-one-out NLL on (x, y).
      "oracle_ece": argmin over the grid of the ECE on the *test* set, `test=(x_test, y_test)`:
        an optimistic bound (it peeks at the test labels), flagged `optimistic=True`.

    Returns:
      a `BandwidthSelection`.
    """
    if not isinstance(rule, str):
        raise ValueError(f"rule: expected a string, one of {RULES}; got {rule!r}")
    scott = scott_bandwidth(x)
    if rule == "scott" or _SCOTT_X.match(rule):
        mult = 1.0 if rule == "scott" else float(_SCOTT_X.match(rule).group(1))
        if mult <= 0:
            raise ValueError(f"rule: Scott multiple must be > 0, got {rule!r}")
        return BandwidthSelection(rule, mult * scott, mult, False, np.array([mult]))
    grid_m = _checks.as_array(np.atleast_1d(multiples), "multiples", ndim=1)
    if np.any(grid_m <= 0):
        raise ValueError(f"multiples: must all be > 0; got min {grid_m.min()}")
    grid = grid_m[:, None] * scott[None, :]
    from routecal.stats.kernels import _nw_grid, loo_nll  # the engine imports this module

    if rule == "cv_nll":
        scores = loo_nll(x, y, grid, mesh=mesh)
        optimistic = False
    elif rule == "oracle_ece":
        if test is None:
            raise ValueError("test: rule 'oracle_ece' needs test=(x_test, y_test)")
        from routecal.stats.calibration import ece

        x_test = _features(test[0], "test[0] (x_test)")
        y_test = _checks.check_binary(test[1], "test[1] (y_test)")
        _checks.check_same_length(x_test=x_test, y_test=y_test)
        xa = _features(x, "x")
        ya = _checks.check_binary(y, "y")
        _checks.check_same_length(x=xa, y=ya)
        if x_test.shape[1] != xa.shape[1]:
            raise ValueError(f"test[0]: has {x_test.shape[1]} features, x has {xa.shape[1]}")
        preds = _nw_grid(xa, ya, x_test, grid, mesh=mesh, row_tile=None, col_tile=None)
        preds = np.clip(preds, 0.0, 1.0)
        scores = np.array([ece(p, y_test, n_bins=n_bins) for p in preds])
        optimistic = True
    else:
        raise ValueError(f"rule: unknown bandwidth rule {rule!r}; expected one of {RULES}")
    finite = np.isfinite(scores)
    if not finite.any():
        raise ValueError(f"rule: every {rule} score on the bandwidth grid is NaN/inf")
    k = int(np.argmin(np.where(finite, scores, np.inf)))  # never an argmin over NaN
    return BandwidthSelection(rule, grid[k], float(grid_m[k]), optimistic, grid_m, scores)
