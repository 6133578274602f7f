"""Tests for routecal.probes.nadaraya_watson: the matched control detects a planted effect."""

import numpy as np
import pytest

from routecal import probes
from routecal.probes import nadaraya_watson as nw
from routecal.stats import binary, kernels
from routecal.stats.seeds import compare_bands, seed_band


def test_nw_matched_control_detects_effect_and_its_absence(simulate):
    results = {}
    for effect in (0.6, 0.0):
        nll = {"conf": [], "routing": [], "entropy": []}
        for seed in range(4):
            calib, test = simulate(800, effect, 2 * seed), simulate(800, effect, 2 * seed + 1)
            for key, feats in (
                ("conf", ("confidence",)),
                ("routing", ("confidence", "depth_var_mean")),
                ("entropy", ("confidence", "entropy")),
            ):
                pred = probes.NadarayaWatsonProbe(feats, "cv_nll").fit(calib).predict(test)
                nll[key].append(binary.binary_nll(pred, test.correct))
        bands = {k: seed_band(v) for k, v in nll.items()}
        results[effect] = {
            k: compare_bands(bands[k], bands["conf"], higher_is_better=False)
            for k in ("routing", "entropy")
        }
        results[effect]["gain"] = bands["conf"]["mean"] - bands["routing"]["mean"]
    # planted effect: AR-CondCal beats confidence-only beyond the seed band; the entropy control
    # (same dimension, no routing information) does not.
    assert results[0.6]["routing"] == "better"
    assert results[0.6]["gain"] > 0.03
    assert results[0.6]["entropy"] != "better"
    # no effect: the routing probe does not beat confidence-only.
    assert results[0.0]["routing"] != "better"


def test_pure_pair_matches_kernel_regression(simulate):
    data = simulate(300, 0.3, 0)
    probe = probes.NadarayaWatsonProbe(("confidence", "depth_var_mean"), "scott").fit(data)
    x = np.stack([data.confidence, data.routing["depth_var_mean"]], axis=1)
    params = nw.nw_fit(x, data.correct, "scott", multiples=kernels.DEFAULT_MULTIPLES)
    np.testing.assert_array_equal(params.selection.bandwidth, probe.bandwidth_)
    # brute-force Gaussian product kernel (independent of the tiled engine)
    h = params.selection.bandwidth
    w = np.exp(-(((x[:, None, :] - x[None, :, :]) / h) ** 2).sum(-1) / 2)
    np.testing.assert_allclose(nw.nw_apply(params, x), w @ data.correct / w.sum(1), atol=1e-5)
    np.testing.assert_allclose(probe.predict(x), probe.predict(data))


def test_bad_input(simulate):
    data = simulate(50, 0.0, 5)
    c, y = data.confidence, data.correct
    with pytest.raises(ValueError, match="at least 2"):
        probes.NadarayaWatsonProbe().fit(c[:1], y[:1])
    with pytest.raises(ValueError, match="constant"):
        probes.NadarayaWatsonProbe(("confidence", "depth_var_mean")).fit(
            probes.ProbeData(c, y, data.entropy, routing={"depth_var_mean": np.ones(50)})
        )
    with pytest.raises(ValueError, match="unknown feature"):
        probes.NadarayaWatsonProbe(("confidence", "depth")).fit(data)
    with pytest.raises(ValueError, match="features"):
        probes.NadarayaWatsonProbe(())
    with pytest.raises(ValueError, match=r"expected \[N, 2\]"):
        probes.NadarayaWatsonProbe(("confidence", "entropy")).fit(np.ones((5, 3)), np.ones(5))
