"""Shared simulated probe inputs for tests/probes."""

import numpy as np
import pytest
import scipy.special

from routecal import probes


def simulate_probe_data(n: int, effect: float, seed: int, n_layers: int = 3) -> probes.ProbeData:
    """Correctness depends on confidence c and, with strength `effect`, on a routing feature v.

    P(correct | c, v) = clip(c + effect * (v - 1/2), 0.02, 0.98); entropy is a noisy function of c
    only (the non-routing control); H is a routing profile whose mean is v.
    """
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.4, 1.0, n)
    v = rng.uniform(0.0, 1.0, n)
    p = np.clip(c + effect * (v - 0.5), 0.02, 0.98)
    correct = (rng.random(n) < p).astype(float)
    entropy = -(c * np.log(c) + (1 - c) * np.log1p(-np.minimum(c, 1 - 1e-9))) + 0.05 * rng.normal(
        size=n
    )
    h = v[:, None] + 0.1 * rng.normal(size=(n, n_layers))
    return probes.ProbeData(c, correct, entropy, routing={"depth_var_mean": v, "H": h})


def predictions_dict(n: int, s: int, seed: int) -> dict:
    """A predictions dict (`routecal.files.predictions` schema) with S routed sublayers (S may be 0)."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.normal(size=(n, 4))
    probs = scipy.special.softmax(logits, axis=1)
    labels = np.array([rng.choice(4, p=p) for p in scipy.special.softmax(logits / 1.5, axis=1)])
    return {
        "probs": probs,
        "labels": labels,
        "H": rng.uniform(0, 1, size=(n, s)),
        "depth_var": rng.uniform(0, 2, size=(n, s)),
    }


@pytest.fixture
def simulate():
    return simulate_probe_data


@pytest.fixture
def predictions():
    return predictions_dict
