"""Tests for routecal.probes.data: ProbeData from the predictions schema, standard models, checks."""

import numpy as np
import pytest

from routecal import probes
from routecal.files import predictions as rc_predictions


def test_from_predictions_uses_the_schema(tmp_path, predictions):
    pred = predictions(50, 3, 0)
    np.savez(tmp_path / "test.npz", **pred)
    data = probes.ProbeData.from_predictions(tmp_path / "test.npz")
    np.testing.assert_allclose(data.confidence, pred["probs"].max(axis=1))
    # the scalar routing features are exactly the diagnostics' (one derivation, one name)
    feats = rc_predictions.routing_features(pred)
    assert set(feats) <= set(data.routing)
    for name, v in feats.items():
        np.testing.assert_array_equal(data.routing[name], v)
    np.testing.assert_allclose(data.routing["depth_var_mean"], pred["depth_var"].mean(axis=1))
    assert data.routing["H"].shape == (50, 3)
    np.testing.assert_allclose(data.entropy, -np.sum(pred["probs"] * np.log(pred["probs"]), axis=1))
    same = probes.ProbeData.from_predictions(pred)
    np.testing.assert_array_equal(same.entropy, data.entropy)


def test_standard_model_has_no_routing(predictions):
    std = probes.ProbeData.from_predictions(predictions(50, 0, 1))
    assert std.routing == {}
    with pytest.raises(ValueError, match="S = 0"):
        probes.NadarayaWatsonProbe(("confidence", "depth_var_mean")).fit(std)
    with pytest.raises(ValueError, match="S = 0"):
        probes.MLPProbe("full").fit(std)


def test_subset_keeps_rows(simulate):
    data = simulate(40, 0.0, 0)
    sub = data.subset(np.arange(10))
    assert len(sub) == 10
    np.testing.assert_array_equal(sub.routing["H"], data.routing["H"][:10])


def test_bad_input(simulate, predictions):
    data = simulate(50, 0.0, 5)
    c, y = data.confidence, data.correct
    with pytest.raises(ValueError, match="correct"):
        probes.ProbeData(c, y + 0.5, data.entropy)
    with pytest.raises(ValueError, match="mismatched"):
        probes.ProbeData(c, y, data.entropy[:-1])
    with pytest.raises(ValueError, match="confidence"):
        probes.ProbeData(c * 2, y, data.entropy)
    with pytest.raises(ValueError, match="inf"):
        probes.ProbeData(c, y, np.where(c > 0.9, np.inf, data.entropy))
    with pytest.raises(ValueError, match="missing key"):
        probes.ProbeData.from_predictions({"probs": np.ones((3, 2)) / 2})
    with pytest.raises(ValueError, match="no such file"):
        probes.ProbeData.from_predictions("/nonexistent/preds.npz")
    with pytest.raises(ValueError, match="unknown feature"):
        data.feature("depth")
