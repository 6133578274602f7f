"""Tests for routecal.probes: planted temperatures, matched controls, capacity matching, bad input."""

import numpy as np
import pytest
import scipy.special
from sklearn.linear_model import LogisticRegression

from routecal import probes
from routecal.stats.calibration import ece

MLP_KW = {"hidden": 12, "steps": 200, "seed": 0}


def simulate(n: int, effect: float, seed: int, n_layers: int = 3) -> probes.ProbeData:
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
    return probes.ProbeData(c, correct, entropy, routing={"depth_var": v, "H": h})


# ---------------------------------------------------------------------------------------------
# Classical probes
# ---------------------------------------------------------------------------------------------


def test_temperature_recovers_planted_temperature():
    rng = np.random.default_rng(0)
    n, k, t_true = 4000, 5, 2.5
    z = 3.0 * rng.normal(size=(n, k))
    labels = np.array([rng.choice(k, p=p) for p in scipy.special.softmax(z / t_true, axis=1)])
    ts = probes.TemperatureScaling().fit(z, labels)
    assert abs(ts.temperature_ - t_true) < 0.15
    # probabilities in, same temperature out (log-probs are logits up to a per-row constant)
    tp = probes.TemperatureScaling().fit(scipy.special.softmax(z, axis=1), labels)
    assert abs(tp.temperature_ - ts.temperature_) < 1e-3
    conf = ts.predict(z)
    np.testing.assert_allclose(conf, scipy.special.softmax(z / ts.temperature_, axis=1).max(axis=1))


def test_platt_matches_unregularised_logistic_regression():
    data = simulate(600, 0.0, 1)
    platt = probes.PlattScaling().fit(data)
    u = scipy.special.logit(data.confidence)[:, None]
    lr = LogisticRegression(C=1e10, tol=1e-10, max_iter=10_000).fit(u, data.correct)
    np.testing.assert_allclose(platt.coef_, [lr.coef_[0, 0], lr.intercept_[0]], atol=1e-3)
    np.testing.assert_allclose(platt.predict(data), lr.predict_proba(u)[:, 1], atol=1e-4)


def test_histogram_and_isotonic():
    data = simulate(500, 0.0, 2)
    hb = probes.HistogramBinning(n_bins=5, binning="width").fit(data)
    c, y = data.confidence, data.correct
    b = np.minimum((c * 5).astype(int), 4)
    expected = {i: y[b == i].mean() for i in np.unique(b)}
    np.testing.assert_allclose(hb.predict(c), [expected[i] for i in b])
    hm = probes.HistogramBinning(n_bins=4).fit(data)  # equal mass: ~125 per bin
    counts = np.bincount(hm._bin(c, hm.edges_))
    assert counts.min() >= 120
    iso = probes.IsotonicCalibration().fit(data)
    pred = iso.predict(np.sort(c))
    assert np.all(np.diff(pred) >= 0)  # monotone
    np.testing.assert_allclose(
        iso.predict(data).mean(), y.mean(), atol=1e-9
    )  # isotonic keeps the mean


def test_worst_routing_tertile_ece_matches_manual():
    rng = np.random.default_rng(3)
    c = rng.uniform(0, 1, 300)
    y = (rng.random(300) < c).astype(float)
    r = rng.normal(size=300)
    order = np.argsort(r)
    manual = max(ece(c[g], y[g]) for g in (order[:100], order[100:200], order[200:]))
    assert probes.worst_routing_tertile_ece(c, y, r) == pytest.approx(manual)


# ---------------------------------------------------------------------------------------------
# Matched-control logic: the routing probe beats confidence-only iff the routing effect is real
# ---------------------------------------------------------------------------------------------


def test_nw_matched_control_detects_effect_and_its_absence():
    results = {}
    for effect in (0.6, 0.0):
        nll = {"conf": [], "routing": [], "entropy": []}
        for seed in range(4):
            calib, test = simulate(800, effect, 2 * seed), simulate(800, effect, 2 * seed + 1)
            for key, feats in (
                ("conf", ("confidence",)),
                ("routing", ("confidence", "depth_var")),
                ("entropy", ("confidence", "entropy")),
            ):
                pred = probes.NadarayaWatsonProbe(feats, "cv_nll").fit(calib).predict(test)
                nll[key].append(probes._binary_nll(pred, test.correct))
        results[effect] = {
            "routing": probes.seed_band_verdict(nll["routing"], nll["conf"]),
            "entropy": probes.seed_band_verdict(nll["entropy"], nll["conf"]),
        }
    # planted effect: AR-CondCal beats confidence-only beyond the seed band; the entropy control
    # (same dimension, no routing information) does not.
    assert results[0.6]["routing"]["verdict"] == "better"
    assert results[0.6]["routing"]["mean_improvement"] > 0.03
    assert results[0.6]["entropy"]["verdict"] != "better"
    # no effect: the routing probe does not beat confidence-only.
    assert results[0.0]["routing"]["verdict"] != "better"
    assert results[0.0]["routing"]["mean_improvement"] < results[0.0]["routing"]["band"]


def test_seed_band_verdict_closed_form():
    out = probes.seed_band_verdict([1.0, 1.1, 0.9, 1.0], [2.0, 2.0, 2.0, 2.0])
    # improvements 1.0, 0.9, 1.1, 1.0: mean 1.0, sd 0.0816..., band 2 * sd / 2
    assert out["mean_improvement"] == pytest.approx(1.0)
    assert out["band"] == pytest.approx(np.std([1.0, 0.9, 1.1, 1.0], ddof=1))
    assert out["verdict"] == "better"
    assert probes.seed_band_verdict([2.0, 2.1], [2.05, 2.05])["verdict"] == "within seed band"


# ---------------------------------------------------------------------------------------------
# MLP probes
# ---------------------------------------------------------------------------------------------


def test_mlp_capacity_matching_and_shuffling():
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
    nll_full = probes._binary_nll(full.predict(data), data.correct)
    nll_matched = probes._binary_nll(matched.predict(data), data.correct)
    assert nll_full < nll_matched - 0.02


# ---------------------------------------------------------------------------------------------
# ProbeData and the comparison
# ---------------------------------------------------------------------------------------------


def _predictions(n: int, s: int, seed: int) -> dict:
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


def test_from_predictions_and_standard_model(tmp_path):
    pred = _predictions(50, 3, 0)
    np.savez(tmp_path / "test.npz", **pred)
    data = probes.ProbeData.from_predictions(tmp_path / "test.npz")
    np.testing.assert_allclose(data.confidence, pred["probs"].max(axis=1))
    np.testing.assert_allclose(data.routing["depth_var"], pred["depth_var"].mean(axis=1))
    assert data.routing["H"].shape == (50, 3)
    np.testing.assert_allclose(data.entropy, -np.sum(pred["probs"] * np.log(pred["probs"]), axis=1))
    last = probes.ProbeData.from_predictions(pred, routing_summary="last")
    np.testing.assert_allclose(last.routing["depth_var"], pred["depth_var"][:, -1])
    std = probes.ProbeData.from_predictions(_predictions(50, 0, 1))
    assert std.routing == {}
    with pytest.raises(ValueError, match="S = 0"):
        probes.NadarayaWatsonProbe(("confidence", "depth_var")).fit(std)
    with pytest.raises(ValueError, match="S = 0"):
        probes.MLPProbe("full").fit(std)


def test_compare_probes_rows():
    # same sizes and MLP settings as the MLP test, so the jit caches are shared
    calib = probes.ProbeData.from_predictions(_predictions(400, 4, 2))
    test = probes.ProbeData.from_predictions(_predictions(400, 4, 3))
    rows = probes.compare_probes(
        calib, test, bandwidth_rules=("scott", "oracle_ece"), mlp_kwargs=MLP_KW
    )
    names = [r["probe"] for r in rows]
    assert names[:5] == ["uncalibrated", "temperature", "platt", "histogram", "isotonic"]
    nw = [r for r in rows if r["probe"] == "nadaraya_watson"]
    assert len(nw) == 3 * 2
    assert {r["features"] for r in nw} == {
        ("confidence",),
        ("confidence", "depth_var"),
        ("confidence", "entropy"),
    }
    for r in rows:
        assert r["optimistic"] == (r["bandwidth_rule"] == "oracle_ece")
        assert 0 <= r["ece"] <= 1 and np.isfinite(r["nll"]) and 0 <= r["brier"] <= 1
        assert r["worst_tertile_ece"] >= 0
    assert sum(r["probe"].startswith("mlp_") for r in rows) == 3
    uncal = rows[0]
    assert uncal["ece"] == pytest.approx(ece(test.confidence, test.correct))
    # the oracle's test ECE is the minimum over the grid: never worse than Scott's on the same features
    for feats in {r["features"] for r in nw}:
        by_rule = {r["bandwidth_rule"]: r for r in nw if r["features"] == feats}
        assert by_rule["oracle_ece"]["ece"] <= by_rule["scott"]["ece"] + 1e-6
    std_rows = probes.compare_probes(
        probes.ProbeData.from_predictions(_predictions(400, 0, 2)),
        probes.ProbeData.from_predictions(_predictions(400, 0, 3)),
        bandwidth_rules=("scott",),
    )
    assert all(r["worst_tertile_ece"] is None for r in std_rows)
    assert not any("depth_var" in r["features"] or r["probe"].startswith("mlp") for r in std_rows)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "probe",
    [
        probes.TemperatureScaling(),
        probes.PlattScaling(),
        probes.HistogramBinning(),
        probes.IsotonicCalibration(),
        probes.NadarayaWatsonProbe(),
        probes.MLPProbe(),
    ],
)
def test_predict_before_fit(probe):
    with pytest.raises(ValueError, match="before fit"):
        probe.predict(
            np.array([[0.5, 0.5]])
            if isinstance(probe, probes.TemperatureScaling)
            else np.array([0.5, 0.6])
        )


def test_bad_input():
    data = simulate(50, 0.0, 5)
    c, y = data.confidence, data.correct
    with pytest.raises(ValueError, match="confidence"):
        probes.PlattScaling().fit(np.where(c > 0.9, np.nan, c), y)
    with pytest.raises(ValueError, match="mismatched"):
        probes.IsotonicCalibration().fit(c, y[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        probes.HistogramBinning().fit(c[:1], y[:1])
    with pytest.raises(ValueError, match="at least 2"):
        probes.NadarayaWatsonProbe().fit(c[:1], y[:1])
    with pytest.raises(ValueError, match="constant"):
        probes.NadarayaWatsonProbe(("confidence", "depth_var")).fit(
            probes.ProbeData(c, y, data.entropy, routing={"depth_var": np.ones(50)})
        )
    with pytest.raises(ValueError, match="correct"):
        probes.ProbeData(c, y + 0.5, data.entropy)
    with pytest.raises(ValueError, match="mismatched"):
        probes.ProbeData(c, y, data.entropy[:-1])
    with pytest.raises(ValueError, match="confidence"):
        probes.ProbeData(c * 2, y, data.entropy)
    with pytest.raises(ValueError, match="inf"):
        probes.ProbeData(c, y, np.where(c > 0.9, np.inf, data.entropy))
    with pytest.raises(ValueError, match="hidden"):
        probes.MLPProbe(hidden=10)
    with pytest.raises(ValueError, match="variant"):
        probes.MLPProbe("wide")
    with pytest.raises(ValueError, match="labels"):
        probes.TemperatureScaling().fit(np.ones((5, 3)) / 3, [0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match="unknown feature"):
        probes.NadarayaWatsonProbe(("confidence", "depth")).fit(data)
    with pytest.raises(ValueError, match="routing_summary"):
        probes.ProbeData.from_predictions(_predictions(10, 2, 0), routing_summary="median")
    with pytest.raises(ValueError, match="missing key"):
        probes.ProbeData.from_predictions({"probs": np.ones((3, 2)) / 2})
