"""The probes' input: `ProbeData` (one split, validated once) and the array coercions probes share.

Shapes: N examples, C classes, S routed sublayers (S = 0 for a standard model), D probe features.

`ProbeData.from_predictions` (examples) and `ProbeData.from_tokens` (token arrays) read predictions through the one schema (`routecal.files.predictions`):
confidence and correctness from `confidence_correct`, the scalar routing features from
`routing_features` (`H_mean`, `depth_var_mean`, `depth_mean_mean`, `H_mid`, `H_last`,
`routing_<name>`: the same names the diagnostics use) plus the per-sublayer entropy profile `H`
[N, S] for the MLP probes, and the predictive entropy from `stats.uncertainty.predictive_entropy`.

Probes accept a `ProbeData` (already validated: used as is) or plain arrays (validated here, once,
by `confidence_correct_of` / `confidence_of` / `targets_of`); the pure fit/apply functions behind
them never validate.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from routecal import _checks
from routecal.files.predictions import confidence_correct, load_predictions, routing_features
from routecal.stats.sequences import shuffle_across_sequences
from routecal.stats.uncertainty import predictive_entropy

PROFILE = "H"  # the [N, S] routing profile kept whole (per-sublayer routing entropy)


@dataclasses.dataclass
class ProbeData:
    """One split's per-example inputs to the probes.

    Attributes:
      confidence: [N] top-1 probability.
      correct: [N] 0/1, top-1 prediction == label.
      entropy: [N] predictive entropy (nats).
      routing: name -> [N] scalar summary or [N, S] profile (e.g. "depth_var_mean" [N], "H"
        [N, S]); empty for a standard (non-routing) model.
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
    def from_predictions(cls, predictions: Any) -> ProbeData:
        """Builds ProbeData from a predictions mapping or `.npz` path (`routecal.files.predictions`).

        Args:
          predictions: keys probs [N, C], labels [N] and optionally H / H_norm / depth_var /
            depth_mean [N, S] and routing_<name> [N]. S = 0 (or no routing keys) means a standard
            model: routing-based probes then raise.
        """
        if isinstance(predictions, str | os.PathLike):
            predictions = load_predictions(predictions)
        if not isinstance(predictions, Mapping) and not hasattr(predictions, "files"):
            raise ValueError("predictions: expected a dict, an NpzFile or a path to a .npz file")
        for key in ("probs", "labels"):
            if key not in predictions:
                raise ValueError(f"predictions: missing key {key!r}")
        probs = _checks.check_probs(predictions["probs"], "predictions['probs']")
        labels = _checks.check_labels(
            predictions["labels"], probs.shape[1], "predictions['labels']"
        )
        preds = {k: predictions[k] for k in predictions}
        preds["probs"], preds["labels"] = probs, labels
        routing = routing_features(preds)
        profile = preds.get(PROFILE)
        if profile is not None and np.ndim(profile) == 2 and np.shape(profile)[1] > 0:
            routing[PROFILE] = _checks.as_array(profile, f"predictions[{PROFILE!r}]")
        confidence, correct = confidence_correct(preds)
        return cls(confidence, correct, predictive_entropy(probs), routing, probs, labels)

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, np.ndarray], *, shuffle_seed: int | None = None
                    ) -> ProbeData:
        """ProbeData over token arrays (`predictions.token_arrays`; no [N, V] probabilities):
        confidence, correct, predictive entropy, the scalar routing features (with the
        position-aware ones) and the profile `H` (normalised entropy [N, S] when present).

        Args:
          shuffle_seed: if set, the profile is shuffled across sequences
            (`stats.sequences.shuffle_across_sequences`: the sequence-level control).
        """
        routing = routing_features(tokens)
        prof = tokens.get("H_norm", tokens.get("H"))
        if prof is not None and np.ndim(prof) == 2 and np.shape(prof)[1] > 0:
            if shuffle_seed is not None:
                prof = shuffle_across_sequences(prof, tokens["seq_id"], tokens["position"],
                                                seed=shuffle_seed)
            routing[PROFILE] = np.asarray(prof, np.float64)
        return cls(tokens["confidence"], tokens["correct"], tokens["entropy"], routing)

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

    def profile(self, name: str = PROFILE) -> np.ndarray:
        """The [N, S] routing profile `name` (raises if the model has no routing traces)."""
        if name not in self.routing:
            why = (
                "(S = 0: a standard model without routing)"
                if not self.routing
                else f"(have {list(self.routing)})"
            )
            raise ValueError(f"data: routing profile {name!r} not available {why}")
        arr = self.routing[name]
        return arr[:, None] if arr.ndim == 1 else arr

    def subset(self, index: Any) -> ProbeData:
        """The examples selected by `index` (an integer array or boolean mask)."""
        return ProbeData(
            confidence=self.confidence[index],
            correct=self.correct[index],
            entropy=self.entropy[index],
            routing={k: v[index] for k, v in self.routing.items()},
            probs=None if self.probs is None else self.probs[index],
            labels=None if self.labels is None else self.labels[index],
        )


# ----------------------------------------------------------------------------------------------
# Coercions: a ProbeData passes through, arrays are validated here (the one place).
# ----------------------------------------------------------------------------------------------


def _min_rows(n: int, name: str) -> None:
    if n < 2:
        raise ValueError(f"{name}: needs at least 2 examples to fit, got {n}")


def confidence_of(data: Any) -> np.ndarray:
    """[N] confidence from a ProbeData or an array (checked to lie in [0, 1])."""
    if isinstance(data, ProbeData):
        return data.confidence
    return _checks.check_unit_interval(_checks.as_array(data, "confidence", ndim=1), "confidence")


def confidence_correct_of(data: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """([N] confidence, [N] 0/1 correct) to fit on, from a ProbeData or two arrays (N >= 2)."""
    if isinstance(data, ProbeData):
        return data.confidence, data.correct
    c = confidence_of(data)
    if correct is None:
        raise ValueError("correct: required when fitting on arrays")
    y = _checks.check_binary(correct, "correct")
    _checks.check_same_length(confidence=c, correct=y)
    _min_rows(len(c), "confidence")
    return c, y


def targets_of(x: np.ndarray, data: Any, correct: Any) -> np.ndarray:
    """Correctness [N] from a ProbeData or `correct`, checked against features `x` [N, D]."""
    y = data.correct if isinstance(data, ProbeData) else _checks.check_binary(correct, "correct")
    _checks.check_same_length(features=x, correct=y)
    _min_rows(len(y), "features")
    return y


class Probe:
    """Thin stateful shell over a probe's pure fit/apply: holds `params_` (a NamedTuple)."""

    params_: Any = None

    def _check_fitted(self) -> Any:
        if self.params_ is None:
            raise ValueError(f"{type(self).__name__}: predict called before fit")
        return self.params_
