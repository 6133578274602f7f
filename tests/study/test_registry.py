"""routecal.study.registry: the tests on one cell, adjustment and power plumbing."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from routecal.stats import diagnostics
from routecal.stats.power import crossing_gap
from routecal.study import grid, registry


def _cell(n=600, seed=0):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.2, 0.95, n)
    return conf, (rng.random(n) < conf).astype(float), rng.normal(size=n), np.repeat(
        np.arange(n // 20), 20)


def test_paper_test_is_the_stats_engine_on_the_cells_key():
    conf, y, r, cl = _cell()
    s = registry.TestSettings(tests=("within_bin",), n_permutations=199)
    key = jax.random.key(3)
    out = registry.run_cell(conf, y, r, cl, key=key, s=s)["within_bin"]
    ref = diagnostics.within_bin_permutation_test(conf, y, r, key=jax.random.fold_in(key, 0),
                                                  n_permutations=199)
    assert out["statistic"] == pytest.approx(float(ref.statistic))
    assert out["p_value"] == pytest.approx(float(ref.p_value))
    np.testing.assert_allclose(out["null"], np.asarray(ref.null, np.float32))
    assert out["null_mean"] == pytest.approx(float(np.mean(out["null"])))


def test_recommended_test_is_the_conditional_engine_with_clusters():
    conf, y, r, cl = _cell()
    s = registry.TestSettings(tests=("conditional",), n_permutations=99)
    key = jax.random.key(1)
    out = registry.run_cell(conf, y, r, cl, key=key, s=s)["conditional"]
    ref = diagnostics.conditional_calibration_test(conf, y, r, key=jax.random.fold_in(key, 1),
                                                   clusters=cl, n_permutations=99)
    assert out["p_value"] == pytest.approx(ref.p_value) and out["n_units"] == len(set(cl))
    assert out["statistic"] == pytest.approx(ref.statistic)


@pytest.mark.parametrize("old, new", [("paper", "within_bin"), ("recommended", "conditional"),
                                      ("within_bin_permutation", "within_bin"),
                                      ("conditional_omnibus", "omnibus")])
def test_old_test_names_raise_naming_the_new_ones(old, new):
    with pytest.raises(ValueError, match=f"diagnostics.tests.*{old}.*{new}"):
        registry.TestSettings(tests=(old,))


def test_adjust_matches_statsmodels_per_family():
    rng = np.random.default_rng(0)
    rows = [{"test": t, "domain": d, "arch": a, "seed": s, "feature": f,
             "statistic": float(rng.random()), "p_value": float(rng.random() ** 3)}
            for t in ("within_bin", "conditional") for d in ("in", "far") for a in ("full", "block")
            for s in (0, 1, 2) for f in ("H_mean", "depth_var_mean")]
    summary = grid.adjust(rows, 0.05)
    for t in ("within_bin", "conditional"):
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


def test_detectable_gap_interpolates_the_running_maximum():
    gaps = np.array([0.01, 0.02, 0.04, 0.08])
    # power 0.5 at 0.02 and 0.9 at 0.04 (the dip at 0.08 is ignored): 0.8 is 3/4 of the way in log.
    got = crossing_gap(gaps, np.array([0.1, 0.5, 0.9, 0.7]), 0.8)
    assert got == pytest.approx(np.exp(np.log(0.02) + 0.75 * (np.log(0.04) - np.log(0.02))))
    assert crossing_gap(gaps, np.array([0.1, 0.2, 0.3, 0.4]), 0.8) == np.inf
    assert crossing_gap(gaps, np.array([0.85, 0.9, 1, 1]), 0.8) == 0.01


def test_power_of_both_tests_on_one_grid():
    pytest.importorskip("routecal.stats.power")
    conf, y, _, cl = _cell(n=400)
    s = registry.TestSettings(tests=("within_bin", "conditional"), n_permutations=99, paper_power_datasets=10,
                                 paper_power_permutations=49,
                                 power_kwargs=(("n_datasets", 20),))
    out = registry.power(conf, y, cl, key=jax.random.key(0), s=s)
    grid = out["conditional"]["curve"]["gap"]
    wb = out["within_bin"]["curve"]
    assert wb["gap"] == grid and len(wb["power"]) == len(grid)
    # Planted gaps the size of the grid's top are detected by both tests (power rises with gap).
    for test in ("within_bin", "conditional"):
        pw = out[test]["curve"]["power"]
        assert pw[-1] >= 0.8 and pw[-1] >= pw[0]
        assert out[test]["mdg"] == crossing_gap(np.array(grid), np.array(pw), 0.8)


@pytest.mark.parametrize("kw, match", [
    ({"tests": ("within_bin", "bogus")}, "diagnostics.tests"), ({"tests": ()}, "diagnostics.tests"),
    ({"n_permutations": 0}, "n_permutations"), ({"alpha": 1.5}, "alpha"),
])
def test_bad_settings_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        registry.TestSettings(**kw)


def test_documents_as_clusters_hold_the_level_where_rows_do_not():
    """Issue 22 in miniature: 24 documents of 6 rows, a per-document calibration offset (sd 0.15)
    and a routing feature constant per document, drawn independently (H0 true). With documents as
    clusters the recommended test rejects about alpha of 40 draws; with rows (which split each
    document into 6 'independent' units) far more. benchmarks/token_clusters.py does this on
    real token predictions."""
    rng = np.random.default_rng(0)
    n_draws, n_docs, rows, t = 40, 24, 6, 40
    doc = np.repeat(np.arange(n_docs), rows * t)
    row = np.repeat(np.arange(n_docs * rows), t)
    conf = rng.uniform(0.2, 0.9, (n_draws, len(doc)))
    offset = rng.normal(0, 0.15, (n_draws, n_docs))[:, doc]
    y = (rng.random(conf.shape) < np.clip(conf + offset, 0, 1)).astype(float)
    r = rng.normal(size=(n_draws, n_docs))[:, doc]
    rejections = {}
    for unit, cl in (("document", doc), ("row", row)):
        res = diagnostics.conditional_test_batch(conf, y, r, key=0, n_permutations=199,
                                                 clusters=np.broadcast_to(cl, conf.shape))
        rejections[unit] = int(np.sum(np.asarray(res.p_value) < 0.05))
    # nominal 2 of 40; P(Binomial(40, 0.05) >= 7) < 0.005, and rows reject at a rate > 0.25
    assert rejections["document"] <= 6 < 10 <= rejections["row"], rejections
