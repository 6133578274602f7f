"""Confidence-only recalibration: temperature, Platt, histogram binning, isotonic regression.

Shapes: N examples, C classes, M bins.

Each method is a pair of pure functions on validated numpy arrays (optax's shape: a NamedTuple of
parameters from `*_fit`, applied by `*_apply`) and a thin class (`fit(...)` then `predict(...)`)
that validates its input once (`routecal.probes.data`) and keeps the parameters in `params_`.

  * temperature (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 9):
    softmax(z / T), T > 0 minimising the multiclass NLL, optimised over log T.
  * Platt (Platt 1999): sigmoid(a * logit(c) + b), fitted by the exact logistic loss.
  * histogram binning (Zadrozny & Elkan 2001): the calibration-split accuracy of each bin.
  * isotonic (Zadrozny & Elkan 2002): a monotone fit (scikit-learn).
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import scipy.optimize
import scipy.special
from sklearn.isotonic import IsotonicRegression

from routecal import _checks
from routecal.probes.data import Probe, ProbeData, confidence_correct_of, confidence_of
from routecal.stats.binary import PROB_CLIP

LOG_FLOOR = 1e-12  # probabilities are floored here before log (probabilities -> logits)


# ----------------------------------------------------------------------------------------------
# Temperature scaling
# ----------------------------------------------------------------------------------------------


_LOG_T_BOUNDS = (-7.0, 7.0)  # T in [e^-7, e^7] ~ [0.0009, 1097]


class TemperatureParams(NamedTuple):
    """temperature: the fitted T; at_bound: True when T sits at a bound of [e^-7, e^7] (e.g. labels
    independent of the inputs push T to the upper bound: the probe then predicts ~ uniform)."""

    temperature: float
    at_bound: bool = False


def temperature_fit(z_NxC: np.ndarray, labels_N: np.ndarray) -> TemperatureParams:
    """T minimising mean_i [logsumexp(z_i / T) - z_iy / T] by L-BFGS over log T in [-7, 7]."""
    z_y = z_NxC[np.arange(len(labels_N)), labels_N]

    def nll_and_grad(log_t):
        t = float(np.exp(log_t[0]))
        s = z_NxC / t
        lse = scipy.special.logsumexp(s, axis=1)
        p = np.exp(s - lse[:, None])
        nll = np.mean(lse - z_y / t)
        # d nll / d log T = -(1/T) * mean(E_p[z] - z_y)
        grad = -np.mean(np.sum(p * z_NxC, axis=1) - z_y) / t
        return nll, np.array([grad])

    res = scipy.optimize.minimize(
        nll_and_grad, x0=np.zeros(1), jac=True, method="L-BFGS-B", bounds=[_LOG_T_BOUNDS]
    )
    log_t = float(res.x[0])
    at_bound = min(abs(log_t - b) for b in _LOG_T_BOUNDS) < 1e-6
    if at_bound:
        warnings.warn(
            f"temperature scaling: T = {np.exp(log_t):.4g} sits at a bound of [e^-7, e^7]; the "
            "NLL keeps falling past it (labels nearly independent of the logits, or separable)",
            RuntimeWarning,
            stacklevel=2,
        )
    return TemperatureParams(float(np.exp(log_t)), at_bound)


def temperature_apply(params: TemperatureParams, z_NxC: np.ndarray) -> np.ndarray:
    """[N, C] probabilities softmax(z / T)."""
    return scipy.special.softmax(z_NxC / params.temperature, axis=1)


def temperature_nll(params: TemperatureParams, z_NxC: np.ndarray, labels_N: np.ndarray
                    ) -> np.ndarray:
    """[N] -log softmax(z / T)_label: the multiclass NLL that `temperature_fit` minimises (Guo et
    al. 2017, "On Calibration of Modern Neural Networks", eq. 9)."""
    logp = np.asarray(z_NxC, np.float64) / params.temperature
    logp = logp - scipy.special.logsumexp(logp, axis=1, keepdims=True)
    return -logp[np.arange(len(labels_N)), labels_N]


def _as_logits(values: Any, kind: str, name: str) -> np.ndarray:
    """[N, C] logits from logits or probabilities ("auto": probabilities iff rows are simplices)."""
    if isinstance(values, ProbeData):
        if values.probs is None:
            raise ValueError("data: temperature scaling needs ProbeData with probs and labels")
        return np.log(np.clip(values.probs, LOG_FLOOR, None))
    z = _checks.as_array(values, name, ndim=2)
    # "auto": values all in [0, 1] are probabilities and must then be valid (rows summing to 1);
    # rows that fail the simplex check are refused, never silently read as logits.
    is_probs = kind == "probs" or (kind == "auto" and np.all(z >= 0) and np.all(z <= 1))
    if is_probs:
        try:
            _checks.check_probs(z, name)
        except ValueError as e:
            if kind == "auto":
                raise ValueError(
                    f"{e}; kind='auto' reads values in [0, 1] as probabilities: pass "
                    "kind='logits' if these are logits"
                ) from e
            raise
        return np.log(np.clip(z, LOG_FLOOR, None))
    return z


class TemperatureScaling(Probe):
    """Temperature scaling (Guo et al. 2017, eq. 9); calibrated confidence = max_c softmax(z/T)_c.

    Args:
      kind: what arrays hold: "logits", "probs" or "auto" (probabilities iff every value lies in
        [0, 1]; such arrays must then have rows summing to 1, else ValueError).
    """

    def __init__(self, kind: str = "auto"):
        if kind not in ("auto", "logits", "probs"):
            raise ValueError(f"kind: expected 'auto', 'logits' or 'probs', got {kind!r}")
        self.kind = kind

    def __repr__(self):
        return f"TemperatureScaling(T={self.temperature_})"

    @property
    def at_bound_(self) -> bool | None:
        """True when the fitted T sits at a bound of [e^-7, e^7] (fit also warns)."""
        return None if self.params_ is None else self.params_.at_bound

    @property
    def temperature_(self) -> float | None:
        return None if self.params_ is None else self.params_.temperature

    def fit(self, logits_or_probs: Any, labels: Any = None) -> TemperatureScaling:
        """Fits T. Args: logits_or_probs [N, C] (or a ProbeData with probs), labels [N] ints."""
        z = _as_logits(logits_or_probs, self.kind, "logits_or_probs")
        if isinstance(logits_or_probs, ProbeData):
            if logits_or_probs.labels is None:
                raise ValueError("data: temperature scaling needs ProbeData with probs and labels")
            y = logits_or_probs.labels
        else:
            if labels is None:
                raise ValueError("labels: required when fitting on arrays")
            y = _checks.check_labels(labels, z.shape[1])
            _checks.check_same_length(logits_or_probs=z, labels=y)
        if len(y) < 2:
            raise ValueError(f"labels: needs at least 2 examples to fit, got {len(y)}")
        self.params_ = temperature_fit(z, y)
        return self

    def predict_probs(self, logits_or_probs: Any) -> np.ndarray:
        """[N, C] temperature-scaled probabilities."""
        params = self._check_fitted()
        return temperature_apply(params, _as_logits(logits_or_probs, self.kind, "logits_or_probs"))

    def predict(self, logits_or_probs: Any) -> np.ndarray:
        """[N] calibrated confidence max_c softmax(z / T)_c."""
        return self.predict_probs(logits_or_probs).max(axis=1)


# ----------------------------------------------------------------------------------------------
# Platt scaling
# ----------------------------------------------------------------------------------------------


class PlattParams(NamedTuple):
    a: float
    b: float


def _logit(c: np.ndarray) -> np.ndarray:
    return scipy.special.logit(np.clip(c, PROB_CLIP, 1 - PROB_CLIP))


def platt_fit(c_N: np.ndarray, y_N: np.ndarray) -> PlattParams:
    """(a, b) minimising the logistic loss of sigmoid(a * logit(c) + b) (L-BFGS, unregularised)."""
    u = _logit(c_N)

    def loss(ab):
        s = ab[0] * u + ab[1]
        # logistic loss: log(1 + e^s) - y s; gradient (sigmoid(s) - y) * [u, 1]
        val = np.mean(np.logaddexp(0.0, s) - y_N * s)
        r = scipy.special.expit(s) - y_N
        return val, np.array([np.mean(r * u), np.mean(r)])

    res = scipy.optimize.minimize(loss, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    return PlattParams(float(res.x[0]), float(res.x[1]))


def platt_apply(params: PlattParams, c_N: np.ndarray) -> np.ndarray:
    return scipy.special.expit(params.a * _logit(c_N) + params.b)


class PlattScaling(Probe):
    """Platt scaling (Platt 1999): P(correct) = sigmoid(a * logit(c) + b): the linear baseline."""

    def __repr__(self):
        return f"PlattScaling(a, b={self.coef_})"

    @property
    def coef_(self) -> tuple[float, float] | None:
        return None if self.params_ is None else tuple(self.params_)

    def fit(self, confidence: Any, correct: Any = None) -> PlattScaling:
        self.params_ = platt_fit(*confidence_correct_of(confidence, correct))
        return self

    def predict(self, confidence: Any) -> np.ndarray:
        return platt_apply(self._check_fitted(), confidence_of(confidence))


# ----------------------------------------------------------------------------------------------
# Histogram binning
# ----------------------------------------------------------------------------------------------


class HistogramParams(NamedTuple):
    edges: np.ndarray  # [M' + 1] bin edges from 0 to 1
    values: np.ndarray  # [M'] calibrated confidence per bin


def histogram_bin(c_N: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index [N] of each confidence (bins closed on the left, the last on both sides)."""
    return np.clip(np.searchsorted(edges[1:-1], c_N, side="right"), 0, len(edges) - 2)


def histogram_fit(c_N: np.ndarray, y_N: np.ndarray, n_bins: int, binning: str) -> HistogramParams:
    """Per-bin accuracy; "mass" edges are calibration quantiles. An empty bin keeps its midpoint."""
    if binning == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.unique(np.quantile(c_N, np.linspace(0.0, 1.0, n_bins + 1)))
        edges[0], edges[-1] = 0.0, 1.0
        if len(edges) < 2:
            edges = np.array([0.0, 1.0])
    b = histogram_bin(c_N, edges)
    n_b = np.bincount(b, minlength=len(edges) - 1)
    acc = np.bincount(b, weights=y_N, minlength=len(edges) - 1)
    mid = 0.5 * (edges[:-1] + edges[1:])
    return HistogramParams(edges, np.where(n_b > 0, acc / np.maximum(n_b, 1), mid))


def histogram_apply(params: HistogramParams, c_N: np.ndarray) -> np.ndarray:
    return params.values[histogram_bin(c_N, params.edges)]


class HistogramBinning(Probe):
    """Histogram binning (Zadrozny & Elkan 2001).

    Args:
      n_bins: number of bins.
      binning: "mass" (equal-frequency edges from the calibration confidences) or "width".
    """

    def __init__(self, n_bins: int = 15, binning: str = "mass"):
        self.n_bins = _checks.check_positive_int(n_bins, "n_bins")
        if binning not in ("mass", "width"):
            raise ValueError(f"binning: expected 'mass' or 'width', got {binning!r}")
        self.binning = binning

    def __repr__(self):
        return f"HistogramBinning(n_bins={self.n_bins}, binning={self.binning!r})"

    @property
    def edges_(self) -> np.ndarray | None:
        return None if self.params_ is None else self.params_.edges

    def fit(self, confidence: Any, correct: Any = None) -> HistogramBinning:
        c, y = confidence_correct_of(confidence, correct)
        self.params_ = histogram_fit(c, y, self.n_bins, self.binning)
        return self

    def predict(self, confidence: Any) -> np.ndarray:
        return histogram_apply(self._check_fitted(), confidence_of(confidence))


# ----------------------------------------------------------------------------------------------
# Isotonic regression
# ----------------------------------------------------------------------------------------------


class IsotonicParams(NamedTuple):
    regressor: IsotonicRegression  # fitted, clipping out-of-range confidences


def isotonic_fit(c_N: np.ndarray, y_N: np.ndarray) -> IsotonicParams:
    return IsotonicParams(IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(c_N, y_N))


def isotonic_apply(params: IsotonicParams, c_N: np.ndarray) -> np.ndarray:
    return np.clip(params.regressor.predict(c_N), 0.0, 1.0)


class IsotonicCalibration(Probe):
    """Isotonic regression of correctness on confidence (Zadrozny & Elkan 2002), via scikit-learn."""

    def __repr__(self):
        return "IsotonicCalibration()"

    def fit(self, confidence: Any, correct: Any = None) -> IsotonicCalibration:
        self.params_ = isotonic_fit(*confidence_correct_of(confidence, correct))
        return self

    def predict(self, confidence: Any) -> np.ndarray:
        return isotonic_apply(self._check_fitted(), confidence_of(confidence))
