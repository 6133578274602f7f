"""Tests for routecal.probes.scaling: planted temperatures, sklearn references, bad input."""

import numpy as np
import pytest
import scipy.special
from sklearn.linear_model import LogisticRegression

from routecal import probes
from routecal.probes import scaling


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
    # the pure pair gives the class's numbers
    params = scaling.temperature_fit(z, labels)
    assert params.temperature == ts.temperature_
    np.testing.assert_array_equal(scaling.temperature_apply(params, z).max(axis=1), conf)


def test_platt_matches_unregularised_logistic_regression(simulate):
    data = simulate(600, 0.0, 1)
    platt = probes.PlattScaling().fit(data)
    u = scipy.special.logit(data.confidence)[:, None]
    lr = LogisticRegression(C=1e10, tol=1e-10, max_iter=10_000).fit(u, data.correct)
    np.testing.assert_allclose(platt.coef_, [lr.coef_[0, 0], lr.intercept_[0]], atol=1e-3)
    np.testing.assert_allclose(platt.predict(data), lr.predict_proba(u)[:, 1], atol=1e-4)
    # arrays in, same fit as ProbeData in
    assert probes.PlattScaling().fit(data.confidence, data.correct).coef_ == platt.coef_


def test_histogram_and_isotonic(simulate):
    data = simulate(500, 0.0, 2)
    hb = probes.HistogramBinning(n_bins=5, binning="width").fit(data)
    c, y = data.confidence, data.correct
    b = np.minimum((c * 5).astype(int), 4)
    expected = {i: y[b == i].mean() for i in np.unique(b)}
    np.testing.assert_allclose(hb.predict(c), [expected[i] for i in b])
    hm = probes.HistogramBinning(n_bins=4).fit(data)  # equal mass: ~125 per bin
    counts = np.bincount(scaling.histogram_bin(c, hm.edges_))
    assert counts.min() >= 120
    iso = probes.IsotonicCalibration().fit(data)
    pred = iso.predict(np.sort(c))
    assert np.all(np.diff(pred) >= 0)  # monotone
    np.testing.assert_allclose(iso.predict(data).mean(), y.mean(), atol=1e-9)  # keeps the mean


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


def test_bad_input(simulate):
    data = simulate(50, 0.0, 5)
    c, y = data.confidence, data.correct
    with pytest.raises(ValueError, match="confidence"):
        probes.PlattScaling().fit(np.where(c > 0.9, np.nan, c), y)
    with pytest.raises(ValueError, match="mismatched"):
        probes.IsotonicCalibration().fit(c, y[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        probes.HistogramBinning().fit(c[:1], y[:1])
    with pytest.raises(ValueError, match="correct: required"):
        probes.PlattScaling().fit(c)
    with pytest.raises(ValueError, match="labels"):
        probes.TemperatureScaling().fit(np.ones((5, 3)) / 3, [0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match="kind"):
        probes.TemperatureScaling(kind="odds")
    with pytest.raises(ValueError, match="binning"):
        probes.HistogramBinning(binning="quantile")


def test_temperature_refuses_invalid_probabilities_in_auto_mode():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=50)
    p[3] *= 0.5  # values in [0, 1], row 3 sums to 0.5: not silently read as logits
    with pytest.raises(ValueError, match="logits_or_probs.*row 3"):
        scaling.TemperatureScaling().fit(p, rng.integers(0, 4, 50))
    scaling.TemperatureScaling(kind="logits").fit(p, rng.integers(0, 4, 50))  # explicit: accepted


def test_temperature_reports_hitting_its_bound():
    rng = np.random.default_rng(1)
    z = 3 * rng.normal(size=(400, 5))
    y = rng.integers(0, 5, 400)  # independent of the logits: the NLL falls all the way to T -> inf
    with pytest.warns(RuntimeWarning, match="bound"):
        probe = scaling.TemperatureScaling(kind="logits").fit(z, y)
    assert probe.at_bound_ and probe.temperature_ == pytest.approx(np.exp(7.0))
    y_dep = np.argmax(z + rng.gumbel(size=z.shape), axis=1)  # informative logits: interior T
    assert not scaling.TemperatureScaling(kind="logits").fit(z, y_dep).at_bound_
