"""The diagnostics of every unit (`study.grid`) against the stats engines, statsmodels'
adjustments and the documented key derivation (cell -> feature -> test)."""

import jax
import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from routecal.stats import diagnostics
from routecal.study import grid, registry

CELLS = [("all", "m", seed) for seed in range(3)]


def _rows(rng, n=300):
    """Per seed: a planted routing feature (accuracy moves with its sign) and pure noise."""
    out = {}
    for c in CELLS:
        conf = rng.uniform(0.3, 1.0, n)
        planted, noise = rng.normal(size=n), rng.normal(size=n)
        correct = (rng.uniform(size=n) < np.clip(conf + 0.3 * np.sign(planted), 0, 1))
        out[c] = grid.Rows(conf, correct.astype(float), {"planted": planted, "noise": noise})
    return out


def test_cells_are_the_engines_on_the_documented_keys_and_keep_nulls():
    rows = _rows(np.random.default_rng(0))
    s = registry.TestSettings(tests=("within_bin",), n_permutations=200, n_bins=10, n_groups=3,
                              seed=3, n_null_figures=2)
    features = ("planted", "noise")
    out = grid.run(CELLS, features, [], rows.__getitem__, s)["diagnostics"]
    key = jax.random.key(3)
    for t in out["tests"]:
        i, j = CELLS.index((t["domain"], t["arch"], t["seed"])), features.index(t["feature"])
        r = rows[t["domain"], t["arch"], t["seed"]]
        ref = diagnostics.within_bin_permutation_test(
            r.confidence, r.correct, r.features[t["feature"]], n_permutations=200, n_bins=10,
            n_groups=3, key=jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, i), j),
                                               0))
        assert (t["statistic"], t["p_value"]) == (float(ref.statistic), float(ref.p_value))
    ps = [t["p_value"] for t in out["tests"]]
    np.testing.assert_allclose([t["p_holm"] for t in out["tests"]],
                               multipletests(ps, method="holm")[1])
    np.testing.assert_allclose([t["p_bh"] for t in out["tests"]],
                               multipletests(ps, method="fdr_bh")[1])
    shown = [t for t in out["tests"] if "null" in t]
    assert len(shown) == 2 and all(len(t["null"]) == 200 for t in shown)
    assert max(t["p_value"] for t in shown) <= min(t["p_value"] for t in out["tests"]
                                                   if "null" not in t)
    by = {r["feature"]: r for r in out["summary"]}
    assert by["planted"]["n_reject_raw"] == 3 and by["planted"]["vs_null"] == "better"
    assert by["noise"]["statistic_band"]["n"] == 3 and out["clusters"] == {}


def test_signed_tests_keep_z_and_power_runs_once_per_cell(tmp_path):
    rows = _rows(np.random.default_rng(3), n=400)
    s = registry.TestSettings(tests=("within_bin", "conditional"), n_permutations=99, n_bins=10,
                              seed=4, paper_power_datasets=5,
                              paper_power_permutations=19, power_kwargs=(("n_datasets", 10),))
    cells = CELLS[:1]
    tasks = grid.tasks(cells, ("planted",), cells, rows.__getitem__, s, tmp_path)
    assert [n for n, _ in tasks] == ["diag:all:m:0:planted", "power:all:m:0"]
    stored = {n: fn() for n, fn in tasks}
    assert "null" not in stored["diag:all:m:0:planted"]["tests"]["within_bin"]
    out = grid.results(cells, ("planted",), stored.__getitem__, s, tmp_path)
    cond = next(t for t in out["tests"] if t["test"] == "conditional")
    r = rows[cells[0]]
    ref = diagnostics.conditional_calibration_test(
        r.confidence, r.correct, r.features["planted"], n_permutations=99,
        stratum_size=registry.stratum_size(400), key=jax.random.fold_in(jax.random.fold_in(
            jax.random.fold_in(jax.random.key(4), 0), 0), 1))
    assert cond["statistic"] == ref.statistic and cond["p_value"] == ref.p_value < 0.05
    assert len(cond["null"]) == 99  # read back from the stage's npz (the figure's nulls)
    summ = {x["test"]: x for x in out["summary"]}
    assert "vs_null" in summ["within_bin"] and "vs_null" not in summ["conditional"]
    power = grid.power_rows(cells, stored.__getitem__)
    assert sorted(p["test"] for p in power) == ["conditional", "within_bin"]
    assert all(p["domain"] == "all" and len(p["curve"]["gap"]) == len(p["curve"]["power"])
               for p in power)


def test_clustered_rows_record_their_clusters():
    rng = np.random.default_rng(5)
    conf = rng.uniform(0.3, 1.0, 240)
    rows = grid.Rows(conf, (rng.random(240) < conf).astype(float), {"f": rng.normal(size=240)},
                     np.repeat(np.arange(12), 20), "document", {"n_sequences": 12})
    s = registry.TestSettings(tests=("conditional",), n_permutations=49)
    cell = grid.test_cell(rows, "f", key=jax.random.key(0), s=s)
    assert (cell["cluster_unit"], cell["n_clusters"], cell["n_sequences"]) == ("document", 12, 12)
    assert cell["n_eff_clusters"] == pytest.approx(12.0)
    with pytest.raises(ValueError, match="diagnostics.features: 'g' not available"):
        grid.test_cell(rows, "g", key=jax.random.key(0), s=s)
