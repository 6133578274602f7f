"""Tests for routecal.probes.mlp: exact capacity matching, the shuffled control, bad input."""

import numpy as np
import pytest

from routecal import probes
from routecal.stats import binary

MLP_KW = {"hidden": 12, "steps": 200, "seed": 0}


def test_mlp_capacity_matching_and_shuffling(simulate):
    data = simulate(400, 0.6, 4, n_layers=4)
    full = probes.MLPProbe("full", **MLP_KW).fit(data)
    matched = probes.MLPProbe("capacity_matched", **MLP_KW).fit(data)
    shuffled = probes.MLPProbe("shuffled", **MLP_KW).fit(data)
    # full: (1 + S) * h + h + h + 1 = 12 * 7 + 1; matched: 1 -> 28 -> 1 = 3 * 28 + 1
    assert full.n_params_ == matched.n_params_ == shuffled.n_params_ == 12 * (4 + 3) + 1
    assert matched.width_ == 28
    assert f"n_params={full.n_params_}" in repr(matched)
    # shuffled: H rows permuted across examples, confidence column untouched
    h = data.routing["H"]
    perm = shuffled.permutation_
    assert not np.array_equal(perm, np.arange(len(perm)))
    np.testing.assert_array_equal(shuffled.train_inputs_[:, 1:], h[perm])
    np.testing.assert_array_equal(shuffled.train_inputs_[:, 0], data.confidence)
    assert np.mean(perm == np.arange(len(perm))) < 0.05
    for probe in (full, matched, shuffled):
        pred = probe.predict(data)
        assert pred.shape == (400,) and np.all((pred >= 0) & (pred <= 1))
    # with a real routing effect, the full MLP fits the calibration data better than the control
    nll_full = binary.binary_nll(full.predict(data), data.correct)
    nll_matched = binary.binary_nll(matched.predict(data), data.correct)
    assert nll_full < nll_matched - 0.02


def test_bad_input(simulate):
    data = simulate(50, 0.0, 5)
    with pytest.raises(ValueError, match="hidden"):
        probes.MLPProbe(hidden=10)
    with pytest.raises(ValueError, match="variant"):
        probes.MLPProbe("wide")
    with pytest.raises(ValueError, match="S >= 1"):
        probes.MLPProbe(**MLP_KW).fit(data.confidence[:, None], data.correct)
