"""Nadaraya-Watson probes: kernel regression of correctness on named features (AR-CondCal).

Shapes: N calibration examples, M query examples, D features.

features=("confidence",) is the confidence-only NW probe; ("confidence", "depth_var_mean") is
AR-CondCal (confidence + mean routing-depth variance); ("confidence", "entropy") is its control
with a non-routing second feature. Kernel and bandwidth rules: `routecal.stats.kernels`
(Nadaraya 1964; Watson 1964; Scott's rule, CV-NLL, the optimistic test-ECE oracle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from routecal import _checks
from routecal.probes.data import Probe, ProbeData, targets_of
from routecal.stats import kernels

# Named feature sets of the matched comparison (the report and sweep use these names).
FEATURE_SETS = {
    "confidence": ("confidence",),
    "ar_condcal": ("confidence", "depth_var_mean"),  # AR-CondCal: confidence + depth variance
    "entropy_control": ("confidence", "entropy"),  # the non-routing control
}


class NWParams(NamedTuple):
    x_train: np.ndarray  # [N, D]
    y_train: np.ndarray  # [N] 0/1
    selection: kernels.BandwidthSelection  # bandwidth [D] and how it was chosen


def nw_fit(
    x_NxD: np.ndarray, y_N: np.ndarray, bandwidth_rule: str, *, multiples: np.ndarray,
    n_bins: int = 15, test: tuple[np.ndarray, np.ndarray] | None = None, mesh: Any = None,
) -> NWParams:
    """Chooses the bandwidth by `bandwidth_rule` (`kernels.select_bandwidth`) and keeps the data."""
    selection = kernels.select_bandwidth(
        bandwidth_rule, x_NxD, y_N, multiples=multiples, test=test, n_bins=n_bins, mesh=mesh
    )
    return NWParams(x_NxD, y_N, selection)


def nw_apply(params: NWParams, x_MxD: np.ndarray, mesh: Any = None) -> np.ndarray:
    """[M] estimated P(correct | x), clipped to [0, 1]."""
    p = kernels.nadaraya_watson(
        params.x_train, params.y_train, x_MxD, params.selection.bandwidth, mesh=mesh
    )
    return np.clip(p, 0.0, 1.0)


class NadarayaWatsonProbe(Probe):
    """Kernel regression of correctness on named features (Nadaraya 1964; Watson 1964).

    Args:
      features: feature names read from a ProbeData ("confidence", "entropy", routing summaries
        such as "depth_var_mean").
      bandwidth_rule: "scott", "scott_x<m>", "cv_nll" or "oracle_ece" (see
        `routecal.stats.kernels.select_bandwidth`; "oracle_ece" needs `fit(..., test=...)` and is
        an optimistic bound).
      multiples: Scott multiples searched by "cv_nll"/"oracle_ece".
      n_bins: ECE bins for "oracle_ece".
      mesh: optional device mesh for the kernel sums.
    """

    def __init__(
        self,
        features: Sequence[str] = ("confidence",),
        bandwidth_rule: str = "cv_nll",
        multiples: Any = kernels.DEFAULT_MULTIPLES,
        n_bins: int = 15,
        mesh: Any = None,
    ):
        if isinstance(features, str):
            features = (features,)
        self.features = tuple(features)
        if not self.features:
            raise ValueError("features: at least one feature name is required")
        self.bandwidth_rule = bandwidth_rule
        self.multiples = np.asarray(multiples, dtype=np.float64)
        self.n_bins = n_bins
        self.mesh = mesh

    def __repr__(self):
        bw = None if self.params_ is None else np.round(self.bandwidth_, 5).tolist()
        return (
            f"NadarayaWatsonProbe(features={self.features}, bandwidth_rule={self.bandwidth_rule!r}, "
            f"bandwidth={bw})"
        )

    @property
    def selection_(self) -> kernels.BandwidthSelection | None:
        return None if self.params_ is None else self.params_.selection

    @property
    def bandwidth_(self) -> np.ndarray | None:
        return None if self.params_ is None else self.params_.selection.bandwidth

    def _x(self, data: Any, name: str) -> np.ndarray:
        if isinstance(data, ProbeData):
            return np.stack([data.feature(f) for f in self.features], axis=1)
        x = _checks.as_array(data, name)
        x = x[:, None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(
                f"{name}: expected [N, {len(self.features)}] for features {self.features}, "
                f"got {x.shape}"
            )
        return x

    def fit(self, data: Any, correct: Any = None, *, test: Any = None) -> NadarayaWatsonProbe:
        """Fits on a ProbeData (or features [N, D] + correct [N]); `test` only for "oracle_ece"."""
        x = self._x(data, "features")
        y = targets_of(x, data, correct)
        test_xy = None
        if isinstance(test, ProbeData):
            test_xy = (self._x(test, "test"), test.correct)
        elif test is not None:
            test_xy = (self._x(test[0], "test[0]"), test[1])
        self.params_ = nw_fit(
            x, y, self.bandwidth_rule, multiples=self.multiples, n_bins=self.n_bins, test=test_xy,
            mesh=self.mesh,
        )
        return self

    def predict(self, data: Any) -> np.ndarray:
        params = self._check_fitted()
        return nw_apply(params, self._x(data, "features"), mesh=self.mesh)
