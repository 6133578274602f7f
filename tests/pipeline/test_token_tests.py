"""routecal.pipeline.token_tests: the token grid's tests, adjustment and power plumbing."""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from routecal.pipeline import token_tests
from routecal.stats import diagnostics


def _cell(n=600, seed=0):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.2, 0.95, n)
    return conf, (rng.random(n) < conf).astype(float), rng.normal(size=n), np.repeat(
        np.arange(n // 20), 20)


def test_paper_test_is_the_stats_engine_on_the_cells_key():
    conf, y, r, cl = _cell()
    s = token_tests.TestSettings(tests=("paper",), n_permutations=199)
    key = jax.random.key(3)
    out = token_tests.run_cell(conf, y, r, cl, key=key, settings=s)["paper"]
    ref = diagnostics.within_bin_permutation_test(conf, y, r, key=jax.random.fold_in(key, 0),
                                                  n_permutations=199)
    assert out["statistic"] == pytest.approx(float(ref.statistic))
    assert out["p_value"] == pytest.approx(float(ref.p_value))
    np.testing.assert_allclose(out["null"], np.asarray(ref.null, np.float32))
    assert out["null_mean"] == pytest.approx(float(np.mean(out["null"])))


def test_recommended_test_gets_the_clusters(monkeypatch):
    seen = {}
    Result = collections.namedtuple("Result", "statistic p_value")

    def fake(confidence, correct, routing, *, key, clusters=None, n_permutations=10):
        seen["clusters"], seen["n"] = clusters, n_permutations
        return Result(0.5, 0.25)

    monkeypatch.setattr(diagnostics, "conditional_calibration_test", fake, raising=False)
    conf, y, r, cl = _cell()
    s = token_tests.TestSettings(n_permutations=99)
    out = token_tests.run_cell(conf, y, r, cl, key=jax.random.key(0), settings=s)
    np.testing.assert_array_equal(seen["clusters"], cl)
    assert seen["n"] == 99 and out["recommended"] == {"statistic": 0.5, "p_value": 0.25}
    monkeypatch.delattr(diagnostics, "conditional_calibration_test")
    with pytest.raises(ValueError, match="conditional_calibration_test"):
        token_tests.run_cell(conf, y, r, cl, key=jax.random.key(0), settings=s)
    assert "conditional_calibration_test" in token_tests.missing_engines(("recommended",))


def test_adjust_matches_statsmodels_per_family():
    rng = np.random.default_rng(0)
    rows = [{"test": t, "domain": d, "arch": a, "seed": s, "feature": f,
             "statistic": float(rng.random()), "p_value": float(rng.random() ** 3)}
            for t in ("paper", "recommended") for d in ("in", "far") for a in ("full", "block")
            for s in (0, 1, 2) for f in ("H_mean", "depth_var_mean")]
    summary = token_tests.adjust(rows, 0.05)
    for t in ("paper", "recommended"):
        for d in ("in", "far"):
            fam = [r for r in rows if r["test"] == t and r["domain"] == d]
            ps = [r["p_value"] for r in fam]
            np.testing.assert_allclose([r["p_holm"] for r in fam],
                                       multipletests(ps, method="holm")[1], atol=1e-12)
            np.testing.assert_allclose([r["p_bh"] for r in fam],
                                       multipletests(ps, method="fdr_bh")[1], atol=1e-12)
    assert len(summary) == 2 * 2 * 2 * 2
    s = summary[0]
    ts = [r for r in rows if (r["test"], r["domain"], r["arch"], r["feature"])
          == (s["test"], s["domain"], s["arch"], s["feature"])]
    assert s["n_seeds"] == 3 and s["n_reject_raw"] == sum(r["p_value"] < 0.05 for r in ts)
    assert s["min_p"] == min(r["p_value"] for r in ts) and "vs_null" not in s


def test_power_reads_a_float_or_a_curve(monkeypatch):
    Curve = collections.namedtuple("Curve", "gap gaps power")
    calls = []

    def fake(confidence, correct, *, key, alpha, power, test="within_bin", clusters=None):
        calls.append((test, clusters is not None))
        return 0.07 if test == "within_bin" else Curve(0.12, [0.0, 0.1, 0.2], [0.05, 0.7, 0.95])

    monkeypatch.setattr(diagnostics, "minimum_detectable_gap", fake, raising=False)
    conf, y, _, cl = _cell()
    out = token_tests.power(conf, y, cl, key=jax.random.key(0),
                            settings=token_tests.TestSettings())
    assert calls == [("within_bin", False), ("conditional", True)]
    assert out["paper"] == {"mdg": 0.07, "curve": None}
    assert out["recommended"] == {"mdg": 0.12, "curve": {"gap": [0.0, 0.1, 0.2],
                                                         "power": [0.05, 0.7, 0.95]}}


@pytest.mark.parametrize("kw, match", [
    ({"tests": ("paper", "bogus")}, "diagnostics.tests"), ({"tests": ()}, "diagnostics.tests"),
    ({"n_permutations": 0}, "n_permutations"), ({"alpha": 1.5}, "alpha"),
])
def test_bad_settings_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        token_tests.TestSettings(**kw)
