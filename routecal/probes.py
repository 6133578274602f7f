"""Post-hoc calibration probes and the matched probe comparison (AR-CondCal and its controls).

Shapes: N examples, C classes, S routed sublayers (S = 0 for a standard model), D probe features.

Every probe is fitted on a calibration split and maps new examples to a calibrated confidence in
[0, 1] (the probability that the model's top-1 prediction is correct):

  * `TemperatureScaling` (Guo et al. 2017): softmax(z / T), T fitted by NLL over log T.
  * `PlattScaling` (Platt 1999): sigmoid(a * logit(c) + b): the linear confidence baseline.
  * `HistogramBinning` (Zadrozny & Elkan 2001): per-bin accuracy.
  * `IsotonicCalibration` (Zadrozny & Elkan 2002): monotone fit (scikit-learn).
  * `NadarayaWatsonProbe`: kernel regression of correctness on (c), (c, routing-depth variance) =
    AR-CondCal, or (c, predictive entropy) = its non-routing control; bandwidth by rule.
  * `MLPProbe`: an MLP on (c, H_1..H_S) against a capacity-matched confidence-only MLP (same
    parameter count) and against the full MLP trained on shuffled routing profiles.

`fit(...)` returns the probe; `predict(...)` before `fit` raises ValueError. Probes accept either a
`ProbeData` or plain arrays. `compare_probes` runs every probe x bandwidth rule for one set of
predictions; `seed_band_verdict` turns per-seed metrics into "better / within band / worse".
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
import scipy.special
from flax import nnx
from sklearn.isotonic import IsotonicRegression

from routecal import _checks
from routecal.stats import kernels
from routecal.stats.calibration import ece

__all__ = [
    "HistogramBinning",
    "IsotonicCalibration",
    "MLPProbe",
    "NadarayaWatsonProbe",
    "PlattScaling",
    "ProbeData",
    "TemperatureScaling",
    "compare_probes",
    "seed_band_verdict",
    "worst_routing_tertile_ece",
]

_EPS = 1e-6  # probabilities are clipped to [_EPS, 1 - _EPS] inside logs (NLL, logit).


# ----------------------------------------------------------------------------------------------
# Metrics (binary, on calibrated confidences)
# ----------------------------------------------------------------------------------------------


def _binary_nll(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Mean binary NLL of `correct` under `confidence`, clipped to [1e-6, 1 - 1e-6]."""
    p = np.clip(confidence, _EPS, 1.0 - _EPS)
    return float(-np.mean(correct * np.log(p) + (1.0 - correct) * np.log1p(-p)))


def _brier(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Binary Brier score mean((c - correct)^2) (Brier 1950), on the top-label event."""
    return float(np.mean((confidence - correct) ** 2))


def _tertile_groups(routing: np.ndarray, n_groups: int) -> list[np.ndarray]:
    """Index sets of `n_groups` equal-size groups by rank of `routing` (ties broken stably)."""
    order = np.argsort(routing, kind="stable")
    return np.array_split(order, n_groups)


def worst_routing_tertile_ece(
    confidence, correct, routing, *, n_groups: int = 3, n_bins: int = 15
) -> float:
    """Worst-routing-tertile ECE: max over routing groups (tertiles) of the ECE inside the group.

    Args:
      confidence: [N] calibrated confidences in [0, 1].
      correct: [N] 0/1 correctness.
      routing: [N] routing feature defining the groups (e.g. mean routing-depth variance).
      n_groups: number of equal-size rank groups (3 = tertiles).
      n_bins: ECE bins inside each group.

    Returns:
      the largest within-group ECE.
    """
    c = _checks.check_unit_interval(
        _checks.as_array(confidence, "confidence", ndim=1), "confidence"
    )
    y = _checks.check_binary(correct, "correct")
    r = _checks.as_array(routing, "routing", ndim=1)
    _checks.check_same_length(confidence=c, correct=y, routing=r)
    _checks.check_positive_int(n_groups, "n_groups")
    if len(c) < n_groups:
        raise ValueError(f"confidence: needs at least n_groups={n_groups} examples, got {len(c)}")
    return max(ece(c[g], y[g], n_bins=n_bins) for g in _tertile_groups(r, n_groups))


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -np.sum(scipy.special.xlogy(probs, probs), axis=1)


@dataclasses.dataclass
class ProbeData:
    """One split's per-example inputs to the probes.

    Attributes:
      confidence: [N] top-1 probability.
      correct: [N] 0/1, top-1 prediction == label.
      entropy: [N] predictive entropy (nats).
      routing: name -> [N] scalar summary or [N, S] profile (e.g. "depth_var" [N], "H" [N, S]);
        empty for a standard (non-routing) model.
      probs: optional [N, C] probabilities (needed by temperature scaling).
      labels: optional [N] integer labels (needed by temperature scaling).
    """

    confidence: np.ndarray
    correct: np.ndarray
    entropy: np.ndarray
    routing: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    probs: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self):
        self.confidence = _checks.check_unit_interval(
            _checks.as_array(self.confidence, "confidence", ndim=1), "confidence"
        )
        self.correct = _checks.check_binary(self.correct, "correct")
        self.entropy = _checks.as_array(self.entropy, "entropy", ndim=1)
        arrays = {"confidence": self.confidence, "correct": self.correct, "entropy": self.entropy}
        routing = {}
        for name, value in dict(self.routing).items():
            arr = _checks.as_array(value, f"routing[{name!r}]")
            if arr.ndim not in (1, 2):
                raise ValueError(f"routing[{name!r}]: expected [N] or [N, S], got {arr.shape}")
            routing[name] = arr
            arrays[f"routing[{name!r}]"] = arr
        self.routing = routing
        if self.probs is not None:
            self.probs = _checks.check_probs(self.probs)
            arrays["probs"] = self.probs
        if self.labels is not None:
            n_classes = (
                self.probs.shape[1] if self.probs is not None else int(np.max(self.labels)) + 1
            )
            self.labels = _checks.check_labels(self.labels, n_classes)
            arrays["labels"] = self.labels
        _checks.check_same_length(**arrays)

    def __len__(self) -> int:
        return len(self.confidence)

    @classmethod
    def from_predictions(cls, predictions, routing_summary: str | int = "mean") -> ProbeData:
        """Builds ProbeData from a predictions dict / `.npz` (as written by `routecal.predict`).

        Args:
          predictions: a mapping or `.npz` path with keys probs [N, C], labels [N] and optionally
            H [N, S] (per-sublayer routing entropy) and depth_var [N, S] (routing-depth variance).
            S = 0 (or missing keys) means a standard model: routing-based probes then raise.
          routing_summary: how depth_var [N, S] becomes one scalar per example: "mean", "max",
            "last", or an integer sublayer index. H is kept as the full [N, S] profile.
        """
        if isinstance(predictions, str | os.PathLike):
            with np.load(predictions) as f:
                predictions = {k: f[k] for k in f.files}
        if not isinstance(predictions, Mapping) and not hasattr(predictions, "files"):
            raise ValueError("predictions: expected a dict, an NpzFile or a path to a .npz file")
        for key in ("probs", "labels"):
            if key not in predictions:
                raise ValueError(f"predictions: missing key {key!r}")
        probs = _checks.check_probs(predictions["probs"], "predictions['probs']")
        labels = _checks.check_labels(
            predictions["labels"], probs.shape[1], "predictions['labels']"
        )
        routing: dict[str, np.ndarray] = {}
        for key in ("H", "depth_var"):
            if key not in predictions:
                continue
            arr = np.asarray(predictions[key])
            if arr.ndim != 2 or arr.shape[0] != len(labels):
                raise ValueError(
                    f"predictions[{key!r}]: expected [N={len(labels)}, S], got {arr.shape}"
                )
            if arr.shape[1] == 0:
                continue
            arr = _checks.as_array(arr, f"predictions[{key!r}]")
            routing[key] = arr if key == "H" else _summarise(arr, routing_summary, key)
        return cls(
            confidence=probs.max(axis=1),
            correct=(probs.argmax(axis=1) == labels).astype(np.float64),
            entropy=_entropy(probs),
            routing=routing,
            probs=probs,
            labels=labels,
        )

    def feature(self, name: str) -> np.ndarray:
        """The [N] feature `name`: "confidence", "entropy" or a scalar routing summary."""
        if name == "confidence":
            return self.confidence
        if name == "entropy":
            return self.entropy
        if name not in self.routing:
            if not self.routing:
                raise ValueError(
                    f"features: {name!r} needs routing traces, but these predictions have none "
                    "(S = 0: a standard model without routing)"
                )
            raise ValueError(
                f"features: unknown feature {name!r}; available: "
                f"confidence, entropy, {', '.join(self.routing)}"
            )
        arr = self.routing[name]
        if arr.ndim != 1:
            raise ValueError(
                f"features: routing feature {name!r} is a profile {arr.shape}, not [N]"
            )
        return arr

    def profile(self, name: str = "H") -> np.ndarray:
        """The [N, S] routing profile `name` (raises if the model has no routing traces)."""
        if name not in self.routing:
            raise ValueError(
                f"data: routing profile {name!r} not available "
                + (
                    "(S = 0: a standard model without routing)"
                    if not self.routing
                    else f"(have {list(self.routing)})"
                )
            )
        arr = self.routing[name]
        return arr[:, None] if arr.ndim == 1 else arr

    def subset(self, index) -> ProbeData:
        """The examples selected by `index` (an integer array or boolean mask)."""
        return ProbeData(
            confidence=self.confidence[index],
            correct=self.correct[index],
            entropy=self.entropy[index],
            routing={k: v[index] for k, v in self.routing.items()},
            probs=None if self.probs is None else self.probs[index],
            labels=None if self.labels is None else self.labels[index],
        )


def _summarise(arr: np.ndarray, how: str | int, name: str) -> np.ndarray:
    if isinstance(how, int | np.integer) and not isinstance(how, bool):
        if not -arr.shape[1] <= how < arr.shape[1]:
            raise ValueError(
                f"routing_summary: index {how} out of range for {name} with S={arr.shape[1]}"
            )
        return arr[:, int(how)]
    if how == "mean":
        return arr.mean(axis=1)
    if how == "max":
        return arr.max(axis=1)
    if how == "last":
        return arr[:, -1]
    raise ValueError(f"routing_summary: expected 'mean', 'max', 'last' or an int, got {how!r}")


# ----------------------------------------------------------------------------------------------
# Probe base
# ----------------------------------------------------------------------------------------------


class _Probe:
    """Shared fit/predict plumbing: the fitted flag and the (confidence, correct) unpacking."""

    _fitted = False

    @staticmethod
    def _targets(x: np.ndarray, data, correct) -> np.ndarray:
        """Correctness [N] from a ProbeData or `correct`, checked against features `x` [N, D]."""
        y = data.correct if isinstance(data, ProbeData) else _checks.check_binary(correct, "correct")
        _checks.check_same_length(features=x, correct=y)
        if len(y) < 2:
            raise ValueError(f"features: needs at least 2 examples to fit, got {len(y)}")
        return y

    def _check_fitted(self):
        if not self._fitted:
            raise ValueError(f"{type(self).__name__}: predict called before fit")

    @staticmethod
    def _conf_correct(data, correct) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(data, ProbeData):
            return data.confidence, data.correct
        c = _checks.check_unit_interval(_checks.as_array(data, "confidence", ndim=1), "confidence")
        if correct is None:
            raise ValueError("correct: required when fitting on arrays")
        y = _checks.check_binary(correct, "correct")
        _checks.check_same_length(confidence=c, correct=y)
        if len(c) < 2:
            raise ValueError(f"confidence: needs at least 2 examples to fit, got {len(c)}")
        return c, y

    @staticmethod
    def _conf(data) -> np.ndarray:
        if isinstance(data, ProbeData):
            return data.confidence
        return _checks.check_unit_interval(
            _checks.as_array(data, "confidence", ndim=1), "confidence"
        )


# ----------------------------------------------------------------------------------------------
# Temperature, Platt, histogram, isotonic
# ----------------------------------------------------------------------------------------------


def _as_logits(values, kind: str, name: str) -> np.ndarray:
    """[N, C] logits from logits or probabilities ("auto": probabilities iff rows are simplices)."""
    z = _checks.as_array(values, name, ndim=2)
    if kind not in ("auto", "logits", "probs"):
        raise ValueError(f"kind: expected 'auto', 'logits' or 'probs', got {kind!r}")
    is_probs = kind == "probs" or (
        kind == "auto"
        and np.all(z >= 0)
        and np.all(z <= 1)
        and np.allclose(z.sum(axis=1), 1.0, atol=1e-3)
    )
    if is_probs:
        _checks.check_probs(z, name)
        return np.log(np.clip(z, 1e-12, None))
    return z


class TemperatureScaling(_Probe):
    """Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 9).

    p = softmax(z / T) with T > 0 minimising the multiclass NLL on the calibration split; optimised
    over log T with L-BFGS (scipy). Calibrated confidence = max_c p_c.
    """

    def __init__(self, kind: str = "auto"):
        self.kind = kind
        self.temperature_: float | None = None

    def __repr__(self):
        return f"TemperatureScaling(T={self.temperature_})"

    def fit(self, logits_or_probs, labels=None) -> TemperatureScaling:
        """Fits T. Args: logits_or_probs [N, C] (or a ProbeData with probs), labels [N] ints."""
        z, y = self._logits_labels(logits_or_probs, labels)
        if len(y) < 2:
            raise ValueError(f"labels: needs at least 2 examples to fit, got {len(y)}")
        z_y = z[np.arange(len(y)), y]

        def nll_and_grad(log_t):
            t = float(np.exp(log_t[0]))
            s = z / t
            lse = scipy.special.logsumexp(s, axis=1)
            p = np.exp(s - lse[:, None])
            nll = np.mean(lse - z_y / t)
            # d nll / d log T = -(1/T) * mean(E_p[z] - z_y)
            grad = -np.mean(np.sum(p * z, axis=1) - z_y) / t
            return nll, np.array([grad])

        res = scipy.optimize.minimize(
            nll_and_grad, x0=np.zeros(1), jac=True, method="L-BFGS-B", bounds=[(-7.0, 7.0)]
        )
        self.temperature_ = float(np.exp(res.x[0]))
        self._fitted = True
        return self

    def _logits_labels(self, data, labels):
        if isinstance(data, ProbeData):
            if data.probs is None or data.labels is None:
                raise ValueError("data: temperature scaling needs ProbeData with probs and labels")
            return np.log(np.clip(data.probs, 1e-12, None)), data.labels
        z = _as_logits(data, self.kind, "logits_or_probs")
        if labels is None:
            raise ValueError("labels: required when fitting on arrays")
        y = _checks.check_labels(labels, z.shape[1])
        _checks.check_same_length(logits_or_probs=z, labels=y)
        return z, y

    def predict_probs(self, logits_or_probs) -> np.ndarray:
        """[N, C] temperature-scaled probabilities."""
        self._check_fitted()
        if isinstance(logits_or_probs, ProbeData):
            if logits_or_probs.probs is None:
                raise ValueError("data: temperature scaling needs ProbeData with probs")
            z = np.log(np.clip(logits_or_probs.probs, 1e-12, None))
        else:
            z = _as_logits(logits_or_probs, self.kind, "logits_or_probs")
        return scipy.special.softmax(z / self.temperature_, axis=1)

    def predict(self, logits_or_probs) -> np.ndarray:
        """[N] calibrated confidence max_c softmax(z / T)_c."""
        return self.predict_probs(logits_or_probs).max(axis=1)


class PlattScaling(_Probe):
    """Platt scaling (Platt 1999): P(correct) = sigmoid(a * logit(c) + b), fitted by binary NLL.

    The linear confidence baseline; (a, b) by L-BFGS on the exact logistic loss (unregularised).
    """

    def __init__(self):
        self.coef_: tuple[float, float] | None = None

    def __repr__(self):
        return f"PlattScaling(a, b={self.coef_})"

    def fit(self, confidence, correct=None) -> PlattScaling:
        c, y = self._conf_correct(confidence, correct)
        u = scipy.special.logit(np.clip(c, _EPS, 1 - _EPS))

        def loss(ab):
            s = ab[0] * u + ab[1]
            # logistic loss: log(1 + e^s) - y s; gradient (sigmoid(s) - y) * [u, 1]
            val = np.mean(np.logaddexp(0.0, s) - y * s)
            r = scipy.special.expit(s) - y
            return val, np.array([np.mean(r * u), np.mean(r)])

        res = scipy.optimize.minimize(loss, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        self.coef_ = (float(res.x[0]), float(res.x[1]))
        self._fitted = True
        return self

    def predict(self, confidence) -> np.ndarray:
        self._check_fitted()
        c = self._conf(confidence)
        u = scipy.special.logit(np.clip(c, _EPS, 1 - _EPS))
        return scipy.special.expit(self.coef_[0] * u + self.coef_[1])


class HistogramBinning(_Probe):
    """Histogram binning (Zadrozny & Elkan 2001): the calibration-split accuracy of each bin.

    Args:
      n_bins: number of bins.
      binning: "mass" (equal-frequency edges from the calibration confidences) or "width".
    An empty bin predicts its own midpoint (no evidence: identity map).
    """

    def __init__(self, n_bins: int = 15, binning: str = "mass"):
        self.n_bins = _checks.check_positive_int(n_bins, "n_bins")
        if binning not in ("mass", "width"):
            raise ValueError(f"binning: expected 'mass' or 'width', got {binning!r}")
        self.binning = binning
        self.edges_: np.ndarray | None = None
        self.values_: np.ndarray | None = None

    def __repr__(self):
        return f"HistogramBinning(n_bins={self.n_bins}, binning={self.binning!r})"

    def fit(self, confidence, correct=None) -> HistogramBinning:
        c, y = self._conf_correct(confidence, correct)
        if self.binning == "width":
            edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        else:
            edges = np.unique(np.quantile(c, np.linspace(0.0, 1.0, self.n_bins + 1)))
            edges[0], edges[-1] = 0.0, 1.0
            if len(edges) < 2:
                edges = np.array([0.0, 1.0])
        b = self._bin(c, edges)
        n_b = np.bincount(b, minlength=len(edges) - 1)
        acc = np.bincount(b, weights=y, minlength=len(edges) - 1)
        mid = 0.5 * (edges[:-1] + edges[1:])
        self.values_ = np.where(n_b > 0, acc / np.maximum(n_b, 1), mid)
        self.edges_ = edges
        self._fitted = True
        return self

    @staticmethod
    def _bin(c, edges):
        return np.clip(np.searchsorted(edges[1:-1], c, side="right"), 0, len(edges) - 2)

    def predict(self, confidence) -> np.ndarray:
        self._check_fitted()
        return self.values_[self._bin(self._conf(confidence), self.edges_)]


class IsotonicCalibration(_Probe):
    """Isotonic regression of correctness on confidence (Zadrozny & Elkan 2002), via scikit-learn."""

    def __init__(self):
        self.model_: IsotonicRegression | None = None

    def __repr__(self):
        return "IsotonicCalibration()"

    def fit(self, confidence, correct=None) -> IsotonicCalibration:
        c, y = self._conf_correct(confidence, correct)
        self.model_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(c, y)
        self._fitted = True
        return self

    def predict(self, confidence) -> np.ndarray:
        self._check_fitted()
        return np.clip(self.model_.predict(self._conf(confidence)), 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Nadaraya-Watson probe
# ----------------------------------------------------------------------------------------------

FEATURE_SETS = {
    "confidence": ("confidence",),
    "ar_condcal": ("confidence", "depth_var"),  # AR-CondCal: confidence + routing-depth variance
    "entropy_control": ("confidence", "entropy"),  # the non-routing control
}


class NadarayaWatsonProbe(_Probe):
    """Kernel regression of correctness on named features (Nadaraya 1964; Watson 1964).

    features=("confidence",) is the confidence-only NW probe; ("confidence", "depth_var") is
    AR-CondCal; ("confidence", "entropy") is its control with a non-routing second feature.

    Args:
      features: feature names read from a ProbeData ("confidence", "entropy", routing summaries).
      bandwidth_rule: "scott", "scott_x<m>", "cv_nll" or "oracle_ece" (see
        `routecal.kernels.select_bandwidth`; "oracle_ece" needs `fit(..., test=...)` and is an
        optimistic bound).
      multiples: Scott multiples searched by "cv_nll"/"oracle_ece".
      n_bins: ECE bins for "oracle_ece".
      mesh: optional device mesh for the kernel sums.
    """

    def __init__(
        self,
        features: Sequence[str] = ("confidence",),
        bandwidth_rule: str = "cv_nll",
        multiples=kernels.DEFAULT_MULTIPLES,
        n_bins: int = 15,
        mesh=None,
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
        self.selection_: kernels.BandwidthSelection | None = None

    def __repr__(self):
        bw = None if self.selection_ is None else np.round(self.selection_.bandwidth, 5).tolist()
        return (
            f"NadarayaWatsonProbe(features={self.features}, bandwidth_rule={self.bandwidth_rule!r}, "
            f"bandwidth={bw})"
        )

    @property
    def bandwidth_(self) -> np.ndarray | None:
        return None if self.selection_ is None else self.selection_.bandwidth

    def _x(self, data, name: str) -> np.ndarray:
        if isinstance(data, ProbeData):
            return np.stack([data.feature(f) for f in self.features], axis=1)
        x = _checks.as_array(data, name)
        x = x[:, None] if x.ndim == 1 else x
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(
                f"{name}: expected [N, {len(self.features)}] for features {self.features}, got {x.shape}"
            )
        return x

    def fit(self, data, correct=None, *, test=None) -> NadarayaWatsonProbe:
        """Fits on a ProbeData (or features [N, D] + correct [N]); `test` only for "oracle_ece"."""
        x = self._x(data, "features")
        y = self._targets(x, data, correct)
        test_xy = None
        if test is not None:
            if isinstance(test, ProbeData):
                test_xy = (self._x(test, "test"), test.correct)
            else:
                test_xy = (self._x(test[0], "test[0]"), test[1])
        self.selection_ = kernels.select_bandwidth(
            self.bandwidth_rule,
            x,
            y,
            multiples=self.multiples,
            test=test_xy,
            n_bins=self.n_bins,
            mesh=self.mesh,
        )
        self._x_train, self._y_train = x, y
        self._fitted = True
        return self

    def predict(self, data) -> np.ndarray:
        self._check_fitted()
        x = self._x(data, "features")
        p = kernels.nadaraya_watson(
            self._x_train, self._y_train, x, self.selection_.bandwidth, mesh=self.mesh
        )
        return np.clip(p, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# MLP probes
# ----------------------------------------------------------------------------------------------


class _MLP(nnx.Module):
    """One hidden layer: n_in -> hidden (tanh) -> 1 logit."""

    def __init__(self, n_in: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(n_in, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)

    def __call__(self, x_NxD: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(x_NxD)))[:, 0]


def _n_params(model: nnx.Module) -> int:
    return int(sum(np.size(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))


@functools.partial(jax.jit, static_argnames=("graphdef", "steps"))
def _train_mlp(graphdef, state, x_NxD, y_N, lr, weight_decay, *, steps: int):
    """Full-batch AdamW on the binary cross-entropy; returns the trained state and final loss."""
    tx = optax.adamw(lr, weight_decay=weight_decay)

    def loss_fn(st):
        logits = nnx.merge(graphdef, st)(x_NxD)
        return optax.sigmoid_binary_cross_entropy(logits, y_N).mean()

    def step(carry, _):
        st, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(st)
        updates, opt_state = tx.update(grads, opt_state, st)
        return (optax.apply_updates(st, updates), opt_state), loss

    (state, _), losses = jax.lax.scan(step, (state, tx.init(state)), None, length=steps)
    return state, losses[-1]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _apply_mlp(graphdef, state, x_NxD):
    return jax.nn.sigmoid(nnx.merge(graphdef, state)(x_NxD))


class MLPProbe(_Probe):
    """MLP probes on routing profiles with matched controls (Flax NNX, optax AdamW, seeded).

    Inputs are x = (c, H_1..H_S) [N, 1 + S]. Variants:
      "full": one hidden layer of `hidden` units on (c, H_1..H_S): params = hidden * (S + 3) + 1.
      "capacity_matched": confidence only, with hidden * (S + 3) / 3 units, so its parameter count
        (3 * width + 1) equals the full model's exactly (`hidden` must be a multiple of 3).
      "shuffled": the full architecture on (c, H[pi]) with the rows of H permuted across examples
        (a fixed seeded permutation at fit time and another at predict time): same inputs' marginals,
        the per-example pairing of routing with correctness destroyed.
    Inputs are standardised with calibration-split means and standard deviations (a constant column,
    e.g. the entropy of a sublayer with one source, is only centred).
    """

    VARIANTS = ("full", "capacity_matched", "shuffled")

    def __init__(
        self,
        variant: str = "full",
        *,
        profile: str = "H",
        hidden: int = 24,
        steps: int = 500,
        learning_rate: float = 1e-2,
        weight_decay: float = 1e-4,
        seed: int = 0,
    ):
        if variant not in self.VARIANTS:
            raise ValueError(f"variant: expected one of {self.VARIANTS}, got {variant!r}")
        if _checks.check_positive_int(hidden, "hidden") % 3:
            raise ValueError(
                f"hidden: must be a multiple of 3 for exact capacity matching, got {hidden}"
            )
        self.variant = variant
        self.profile = profile
        self.hidden = hidden
        self.steps = _checks.check_positive_int(steps, "steps")
        self.learning_rate = float(learning_rate)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.n_params_: int | None = None
        self.width_: int | None = None
        self.n_routing_: int | None = None

    def __repr__(self):
        if not self._fitted:
            return f"MLPProbe(variant={self.variant!r}, hidden={self.hidden}, unfitted)"
        inputs = (
            "confidence only"
            if self.variant == "capacity_matched"
            else f"(c, {self.profile}_1..{self.profile}_{self.n_routing_})"
        )
        return (
            f"MLPProbe(variant={self.variant!r}, inputs={inputs}, width={self.width_}, "
            f"n_params={self.n_params_}, matched to full MLP with hidden={self.hidden}, "
            f"S={self.n_routing_}: {self.hidden * (self.n_routing_ + 3) + 1} params)"
        )

    def _inputs(self, data, name: str) -> np.ndarray:
        if isinstance(data, ProbeData):
            return np.concatenate([data.confidence[:, None], data.profile(self.profile)], axis=1)
        x = _checks.as_array(data, name, ndim=2)
        if x.shape[1] < 2:
            raise ValueError(
                f"{name}: expected [N, 1 + S] = (c, H_1..H_S) with S >= 1, got {x.shape}"
            )
        return x

    def _permute(self, x: np.ndarray, stream: int) -> tuple[np.ndarray, np.ndarray]:
        perm = np.random.default_rng([self.seed, stream]).permutation(len(x))
        out = x.copy()
        out[:, 1:] = x[perm, 1:]
        return out, perm

    def _design(self, x: np.ndarray, stream: int) -> np.ndarray:
        if self.variant == "shuffled":
            x, perm = self._permute(x, stream)
            if stream == 0:
                self.permutation_ = perm
        if self.variant == "capacity_matched":
            x = x[:, :1]
        return x

    def fit(self, data, correct=None) -> MLPProbe:
        """Fits on a ProbeData (with routing profile `profile`) or x [N, 1 + S] + correct [N]."""
        x = self._inputs(data, "features")
        y = self._targets(x, data, correct)
        self.n_routing_ = x.shape[1] - 1
        full_params = self.hidden * (self.n_routing_ + 3) + 1
        design = self._design(x, stream=0)
        if self.variant == "capacity_matched":
            self.width_ = (full_params - 1) // 3
        else:
            self.width_ = self.hidden
        self.mean_ = design.mean(axis=0)
        sd = design.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        model = _MLP(design.shape[1], self.width_, rngs=nnx.Rngs(self.seed))
        self.n_params_ = _n_params(model)
        graphdef, state = nnx.split(model)
        z = jnp.asarray((design - self.mean_) / self.scale_, jnp.float32)
        state, loss = _train_mlp(
            graphdef,
            state,
            z,
            jnp.asarray(y, jnp.float32),
            self.learning_rate,
            self.weight_decay,
            steps=self.steps,
        )
        if not np.isfinite(float(loss)):
            raise ValueError(
                f"MLPProbe: training diverged (loss {float(loss)}); lower learning_rate"
            )
        self._graphdef, self._state = graphdef, state
        self.train_inputs_ = design
        self._fitted = True
        return self

    def predict(self, data) -> np.ndarray:
        self._check_fitted()
        x = self._inputs(data, "features")
        if x.shape[1] - 1 != self.n_routing_:
            raise ValueError(
                f"features: fitted with S={self.n_routing_} routing columns, got {x.shape[1] - 1}"
            )
        design = self._design(x, stream=1)
        z = jnp.asarray((design - self.mean_) / self.scale_, jnp.float32)
        return np.asarray(_apply_mlp(self._graphdef, self._state, z), np.float64)


# ----------------------------------------------------------------------------------------------
# The matched comparison
# ----------------------------------------------------------------------------------------------


def _metrics(conf: np.ndarray, test: ProbeData, routing: np.ndarray | None, n_bins: int) -> dict:
    conf = np.clip(np.asarray(conf, np.float64), 0.0, 1.0)
    if not np.all(np.isfinite(conf)):
        raise ValueError("probe produced non-finite confidences")
    return {
        "ece": ece(conf, test.correct, n_bins=n_bins),
        "nll": _binary_nll(conf, test.correct),
        "brier": _brier(conf, test.correct),
        "worst_tertile_ece": None
        if routing is None
        else worst_routing_tertile_ece(conf, test.correct, routing, n_bins=n_bins),
    }


def compare_probes(
    calib: ProbeData,
    test: ProbeData,
    *,
    bandwidth_rules: Sequence[str] = ("scott", "cv_nll", "oracle_ece"),
    seed: int = 0,
    n_bins: int = 15,
    routing_feature: str = "depth_var",
    profile: str = "H",
    mlp_kwargs: Mapping[str, Any] | None = None,
    multiples=kernels.DEFAULT_MULTIPLES,
    return_predictions: bool = False,
) -> list[dict]:
    """Runs every probe x bandwidth rule on one set of predictions (fit on calib, score on test).

    With `return_predictions=True` every row also holds "predictions": the probe's calibrated
    test confidences [N_test] (for reliability diagrams).

    Probes: temperature (if probs/labels present), Platt, histogram, isotonic; NW on confidence,
    on (confidence, `routing_feature`) = AR-CondCal (if routing present) and on (confidence,
    entropy) = control, one row per bandwidth rule; MLP full / capacity_matched / shuffled (if the
    routing profile `profile` is present). Routing-based probes are skipped for a standard model.

    Returns:
      a list of rows {probe, features, bandwidth_rule, bandwidth, bandwidth_multiple, ece, nll,
      brier, worst_tertile_ece, optimistic}; `optimistic` is True for "oracle_ece" rows (test-set
      bandwidth choice: an optimistic bound). worst_tertile_ece groups the test set by
      `routing_feature` (None without routing). The uncalibrated model is the first row.
    """
    if not isinstance(calib, ProbeData) or not isinstance(test, ProbeData):
        raise ValueError("calib, test: expected ProbeData (see ProbeData.from_predictions)")
    has_routing = routing_feature in calib.routing and routing_feature in test.routing
    routing = test.routing[routing_feature] if has_routing else None
    if routing is not None and routing.ndim != 1:
        raise ValueError(f"routing_feature: {routing_feature!r} must be a scalar summary [N]")
    rows: list[dict] = []

    def add(probe, features, conf, rule=None, selection=None):
        row = {
            "probe": probe,
            "features": tuple(features),
            "bandwidth_rule": rule,
            "bandwidth": None if selection is None else [float(v) for v in selection.bandwidth],
            "bandwidth_multiple": None if selection is None else selection.multiple,
        }
        row.update(_metrics(conf, test, routing, n_bins))
        row["optimistic"] = bool(selection is not None and selection.optimistic)
        if return_predictions:
            row["predictions"] = np.clip(np.asarray(conf, np.float64), 0.0, 1.0)
        rows.append(row)

    add("uncalibrated", ("confidence",), test.confidence)
    if calib.probs is not None and test.probs is not None and calib.labels is not None:
        add("temperature", ("probs",), TemperatureScaling().fit(calib).predict(test))
    add("platt", ("confidence",), PlattScaling().fit(calib).predict(test))
    add("histogram", ("confidence",), HistogramBinning(n_bins=n_bins).fit(calib).predict(test))
    add("isotonic", ("confidence",), IsotonicCalibration().fit(calib).predict(test))

    feature_sets = [("confidence",), ("confidence", "entropy")]
    if has_routing:
        feature_sets.insert(1, ("confidence", routing_feature))
    for feats in feature_sets:
        for rule in bandwidth_rules:
            probe = NadarayaWatsonProbe(feats, rule, multiples=multiples, n_bins=n_bins)
            probe.fit(calib, test=test if rule == "oracle_ece" else None)
            add("nadaraya_watson", feats, probe.predict(test), rule, probe.selection_)

    if profile in calib.routing and profile in test.routing:
        kw = dict(mlp_kwargs or {})
        kw.setdefault("seed", seed)
        for variant in MLPProbe.VARIANTS:
            probe = MLPProbe(variant, profile=profile, **kw).fit(calib)
            feats = ("confidence",) if variant == "capacity_matched" else ("confidence", profile)
            add(f"mlp_{variant}", feats, probe.predict(test))
            rows[-1]["n_params"] = probe.n_params_
    return rows


def seed_band_verdict(metric_probe, metric_baseline, *, k: float = 2.0) -> dict:
    """Paired across-seed comparison of a probe with its baseline on a lower-is-better metric.

    improvement_s = baseline_s - probe_s for seeds s = 1..S; band = k * sd(improvement) / sqrt(S)
    (k = 2: an approximate 95% band for the mean improvement over seeds).

    Returns:
      {"mean_improvement", "band", "verdict"} with verdict "better" (mean > band), "worse"
      (mean < -band) or "within seed band".
    """
    a = _checks.as_array(metric_probe, "metric_probe", ndim=1)
    b = _checks.as_array(metric_baseline, "metric_baseline", ndim=1)
    _checks.check_same_length(metric_probe=a, metric_baseline=b)
    if len(a) < 2:
        raise ValueError(f"metric_probe: needs at least 2 seeds for a seed band, got {len(a)}")
    d = b - a
    mean = float(d.mean())
    band = float(k * d.std(ddof=1) / np.sqrt(len(d)))
    verdict = "better" if mean > band else ("worse" if mean < -band else "within seed band")
    return {"mean_improvement": mean, "band": band, "verdict": verdict}
