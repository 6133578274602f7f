"""Tests for routecal.probes.compare: the rows, their metrics against references, seed bands."""

import numpy as np
import pytest

from routecal import probes
from routecal.stats.calibration import ece

MLP_KW = {"hidden": 12, "steps": 200, "seed": 0}  # as in test_mlp.py: shared jit caches


def test_compare_probes_rows(predictions):
    calib = probes.ProbeData.from_predictions(predictions(400, 4, 2))
    test = probes.ProbeData.from_predictions(predictions(400, 4, 3))
    rows = probes.compare_probes(
        calib, test, bandwidth_rules=("scott", "oracle_ece"), mlp_kwargs=MLP_KW
    )
    names = [r["probe"] for r in rows]
    assert names[:5] == ["uncalibrated", "temperature", "platt", "histogram", "isotonic"]
    nw = [r for r in rows if r["probe"] == "nadaraya_watson"]
    assert len(nw) == 3 * 2
    assert {r["features"] for r in nw} == {
        ("confidence",),
        ("confidence", "depth_var_mean"),
        ("confidence", "entropy"),
    }
    for r in rows:
        assert r["optimistic"] == (r["bandwidth_rule"] == "oracle_ece")
        assert 0 <= r["ece"] <= 1 and np.isfinite(r["nll"]) and 0 <= r["brier"] <= 1
        assert r["worst_tertile_ece"] >= 0
    assert sum(r["probe"].startswith("mlp_") for r in rows) == 3
    uncal = rows[0]
    c, y = test.confidence, test.correct
    assert uncal["ece"] == pytest.approx(ece(c, y))
    assert uncal["brier"] == pytest.approx(np.mean((c - y) ** 2))
    assert uncal["nll"] == pytest.approx(-np.mean(y * np.log(c) + (1 - y) * np.log(1 - c)))
    # worst tertile by hand: rank groups of the test set's mean depth variance
    order = np.argsort(test.routing["depth_var_mean"], kind="stable")
    by_hand = max(ece(c[g], y[g]) for g in (order[:134], order[134:267], order[267:]))
    assert uncal["worst_tertile_ece"] == pytest.approx(by_hand)
    # the oracle's test ECE is the minimum over the grid: never worse than Scott's on the same features
    for feats in {r["features"] for r in nw}:
        by_rule = {r["bandwidth_rule"]: r for r in nw if r["features"] == feats}
        assert by_rule["oracle_ece"]["ece"] <= by_rule["scott"]["ece"] + 1e-6
    std_rows = probes.compare_probes(
        probes.ProbeData.from_predictions(predictions(400, 0, 2)),
        probes.ProbeData.from_predictions(predictions(400, 0, 3)),
        bandwidth_rules=("scott",),
    )
    assert all(r["worst_tertile_ece"] is None for r in std_rows)
    assert not any("depth_var_mean" in r["features"] or r["probe"].startswith("mlp") for r in std_rows)


def test_summarise_probes_bands_match_numpy():
    rows = [
        {"arch": "full", "probe": "platt", "bandwidth_rule": None, "ece": e, "nll": 1.0,
         "brier": 0.1, "worst_tertile_ece": None}
        for e in (0.01, 0.03, 0.02)
    ]
    (s,) = probes.summarise_probes(rows)
    assert s["bandwidth_rule"] == "-"
    v = np.array([0.01, 0.03, 0.02])
    assert s["ece"]["mean"] == pytest.approx(v.mean())
    assert s["ece"]["std"] == pytest.approx(v.std(ddof=1))
    assert (s["ece"]["min"], s["ece"]["max"], s["ece"]["n"]) == (0.01, 0.03, 3)
    assert s["worst_tertile_ece"]["n"] == 0


def test_compare_probes_rejects_arrays():
    with pytest.raises(ValueError, match="ProbeData"):
        probes.compare_probes(np.ones(3), np.ones(3))
