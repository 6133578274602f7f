"""Calibration metrics against independent numpy references (loops over bins, written separately)."""

import functools

import jax
import numpy as np
import pytest

from routecal.stats import calibration as cal


def _data(n=600, c_classes=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c_classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(c_classes, p=p) for p in probs])
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(float)
    return probs, labels, conf, correct


def _ref_bins_width(c, m):
    # loop definition: bin b holds (b/m, (b+1)/m]; 0 -> bin 0
    out = np.empty(len(c), int)
    for i, x in enumerate(c):
        b = 0
        while not (x <= (b + 1) / m) and b < m - 1:
            b += 1
        out[i] = b
    return out


def _ref_bins_mass(c, m):
    order = np.argsort(c, kind="stable")
    out = np.empty(len(c), int)
    for b, part in enumerate(np.array_split(order, m)):
        out[part] = b
    return out


def _ref_ece(c, y, m, binning="width", norm="l1"):
    bins = _ref_bins_width(c, m) if binning == "width" else _ref_bins_mass(c, m)
    gaps, ws = [], []
    for b in range(m):
        sel = bins == b
        if sel.sum() == 0:
            continue
        gaps.append(abs(y[sel].mean() - c[sel].mean()))
        ws.append(sel.mean())
    gaps, ws = np.array(gaps), np.array(ws)
    if norm == "l1":
        return float(np.sum(ws * gaps))
    if norm == "l2":
        return float(np.sqrt(np.sum(ws * gaps**2)))
    return float(gaps.max())


@pytest.mark.parametrize("binning", ["width", "mass"])
@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_ece_matches_reference(binning, norm):
    _, _, c, y = _data()
    got = cal.ece(c, y, n_bins=10, binning=binning, norm=norm)
    assert got == pytest.approx(_ref_ece(c, y, 10, binning, norm), abs=2e-6)


def test_ece_from_probs_and_classwise():
    p, lab, c, y = _data()
    assert cal.ece_from_probs(p, lab, n_bins=15) == pytest.approx(_ref_ece(c, y, 15), abs=2e-6)
    ref = np.mean(
        [_ref_ece(p[:, k], (lab == k).astype(float), 15) for k in range(p.shape[1])]
    )
    assert cal.classwise_ece(p, lab, n_bins=15) == pytest.approx(ref, abs=2e-6)


def test_zero_and_one_confidence_land_in_a_bin():
    # c = 0 -> bin 0, c = 1 -> last bin, c = 0.2 exactly -> bin 0 of 5 ((0, 0.2]).
    c = np.array([0.0, 1.0, 0.2, 1.0, 0.0])
    y = np.array([1, 1, 0, 0, 0])
    curve = cal.reliability_curve(c, y, n_bins=5)
    np.testing.assert_array_equal(curve.count, [3, 0, 0, 0, 2])
    np.testing.assert_allclose(curve.accuracy, [1 / 3, 0, 0, 0, 0.5])
    np.testing.assert_allclose(curve.mean_confidence, [0.2 / 3, 0, 0, 0, 1.0], atol=1e-7)
    # ECE = 3/5 * |1/3 - 0.0667| + 2/5 * |0.5 - 1|
    assert cal.ece(c, y, n_bins=5) == pytest.approx(0.6 * abs(1 / 3 - 0.2 / 3) + 0.4 * 0.5)
    np.testing.assert_array_equal(np.asarray(cal.width_bins(c, 5)), [0, 4, 0, 4, 0])


def test_reliability_curve_matches_reference():
    _, _, c, y = _data()
    curve = cal.reliability_curve(c, y, n_bins=8, binning="mass")
    bins = _ref_bins_mass(c, 8)
    for b in range(8):
        sel = bins == b
        assert curve.count[b] == sel.sum()
        assert curve.accuracy[b] == pytest.approx(y[sel].mean(), abs=1e-6)
        assert curve.mean_confidence[b] == pytest.approx(c[sel].mean(), abs=1e-6)


def test_debiased_ece_matches_kumar_reference():
    _, _, c, y = _data(n=2000)
    bins = _ref_bins_mass(c, 10)
    sq = 0.0
    for b in range(10):
        sel = bins == b
        nb = sel.sum()
        acc = y[sel].mean()
        sq += nb / len(c) * ((acc - c[sel].mean()) ** 2 - acc * (1 - acc) / (nb - 1))
    assert cal.debiased_ece(c, y, n_bins=10) == pytest.approx(np.sqrt(max(sq, 0)), abs=1e-5)
    # perfectly calibrated data: debiased estimate much closer to 0 than the plain l2 one
    rng = np.random.default_rng(1)
    c2 = rng.uniform(0.3, 1, 3000)
    y2 = (rng.random(3000) < c2).astype(float)
    assert cal.debiased_ece(c2, y2, 15) < cal.ece(c2, y2, 15, binning="mass", norm="l2")


def _ref_smece_sigma(c, y, sigma, n_t=2000):
    # direct kernel sum (no grid binning), reflected Gaussian, midpoint rule
    t = (np.arange(n_t) + 0.5) / n_t
    k = np.zeros((n_t, len(c)))
    for j in (-1, 0, 1):
        for d in (t[:, None] - c[None] - 2 * j, t[:, None] + c[None] - 2 * j):
            k += np.exp(-0.5 * (d / sigma) ** 2)
    k /= sigma * np.sqrt(2 * np.pi)
    return np.mean(np.abs(k @ (y - c) / len(c)))


def test_smooth_ece_fixed_point_matches_direct_kernel_sum():
    _, _, c, y = _data(n=400)
    s = cal.smooth_ece(c, y)
    # s is the fixed point: the direct (ungridded) smECE at sigma = s equals s
    assert _ref_smece_sigma(c, y, s) == pytest.approx(s, rel=2e-2)
    # monotone: a smaller bandwidth gives a larger value
    assert _ref_smece_sigma(c, y, s / 2) > s
    # miscalibrated data score higher than calibrated data
    rng = np.random.default_rng(0)
    c2 = rng.uniform(0.5, 1, 2000)
    y_cal = (rng.random(2000) < c2).astype(float)
    y_bad = (rng.random(2000) < c2 - 0.2).astype(float)
    assert cal.smooth_ece(c2, y_bad) > cal.smooth_ece(c2, y_cal) + 0.1


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.25])
def test_smooth_ece_matches_authors_relplot(shift):
    relplot = pytest.importorskip("relplot")  # Blasiok & Nakkiran's own package
    rng = np.random.default_rng(0)
    c = rng.uniform(0.2, 1, 2000)
    y = (rng.random(2000) < np.clip(c - shift, 0, 1)).astype(float)
    assert cal.smooth_ece(c, y) == pytest.approx(relplot.smECE(c, y), rel=0.03, abs=1e-3)


def test_nll_brier():
    p, lab, _, _ = _data()
    ref_nll = -np.mean([np.log(p[i, lab[i]]) for i in range(len(lab))])
    ref_brier = np.mean([np.sum((p[i] - np.eye(p.shape[1])[lab[i]]) ** 2) for i in range(len(lab))])
    assert cal.nll(p, lab) == pytest.approx(ref_nll, rel=1e-5)
    assert cal.brier(p, lab) == pytest.approx(ref_brier, rel=1e-5)


def test_bootstrap_ci_matches_numpy_bootstrap():
    _, _, c, y = _data(n=500)
    res = cal.bootstrap_ci(
        functools.partial(cal.ece_jax, n_bins=10), c, y, key=jax.random.key(0), n_resamples=400
    )
    assert res.samples.shape == (400,)
    assert res.estimate == pytest.approx(_ref_ece(c, y, 10), abs=2e-6)
    assert res.low < res.estimate < res.high
    rng = np.random.default_rng(0)

    def np_ece(ci, yi):  # vectorised numpy ECE (np.digitize on the right-closed edges)
        b = np.clip(np.digitize(ci, np.linspace(0, 1, 11)[1:-1], right=True), 0, 9)
        return np.sum(np.abs(np.bincount(b, yi - ci, minlength=10))) / len(ci)

    assert np_ece(c, y) == pytest.approx(_ref_ece(c, y, 10), abs=1e-12)
    ref = [np_ece(c[i], y[i]) for i in rng.integers(0, 500, (400, 500))]
    # same sampling distribution: means and spreads agree within Monte-Carlo error
    assert np.mean(res.samples) == pytest.approx(np.mean(ref), abs=4 * np.std(ref) / np.sqrt(200))
    assert np.std(res.samples) == pytest.approx(np.std(ref), rel=0.2)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: cal.ece([0.5, np.nan], [1, 0]), "confidence"),
        (lambda: cal.ece([0.5, np.inf], [1, 0]), "confidence"),
        (lambda: cal.ece([0.5, 1.2], [1, 0]), "confidence"),
        (lambda: cal.ece([0.5, -0.1], [1, 0]), "confidence"),
        (lambda: cal.ece([0.5, 0.7], [1, 2]), "correct"),
        (lambda: cal.ece([0.5, 0.7], [1, 0, 1]), "mismatched lengths"),
        (lambda: cal.ece([0.5, 0.7], [1, 0], binning="quantile"), "binning"),
        (lambda: cal.ece([0.5, 0.7], [1, 0], norm="l3"), "norm"),
        (lambda: cal.ece([0.5, 0.7], [1, 0], n_bins=0), "n_bins"),
        (lambda: cal.ece([0.5, 0.7], [1, 0], n_bins=3, binning="mass"), "n_bins"),
        (lambda: cal.ece_from_probs([[0.5, 0.6]], [0]), "probs"),
        (lambda: cal.ece_from_probs([[0.5, 0.5]], [2]), "labels"),
        (lambda: cal.nll([[0.5, 0.5]], [-1]), "labels"),
        (lambda: cal.brier([[0.5, 0.5], [0.2, 0.8]], [0]), "mismatched lengths"),
        (lambda: cal.bootstrap_ci(cal.ece_jax, [0.5], [1], key=jax.random.key(0), n_resamples=0), "n_resamples"),
    ],
)
def test_bad_input_raises_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
