"""Bring your own traces: `routecal.study.diagnose` on planted npz files."""

import json

import numpy as np
import pytest

from routecal.study import diagnose


def _planted_npz(path, rng, n=1500, effect=0.35):
    conf = rng.uniform(0.4, 0.99, n)
    routing = rng.normal(size=n)
    p = np.clip(conf + effect * np.sign(routing) * (1 - conf) * 2 - 0.0, 0, 1)
    correct = rng.uniform(size=n) < p
    probs = np.zeros((n, 2))
    probs[:, 0] = conf
    probs[:, 1] = 1 - conf
    labels = np.where(correct, 0, 1)
    np.savez(path, probs=probs, labels=labels, routing_planted=routing,
             routing_noise=rng.normal(size=n))


def test_diagnose_bring_your_own_traces(tmp_path):
    rng = np.random.default_rng(0)
    _planted_npz(tmp_path / "calib.npz", rng)
    _planted_npz(tmp_path / "test.npz", rng)
    res = diagnose.diagnose_predictions(tmp_path / "calib.npz", test_path=tmp_path / "test.npz",
                                     out_dir=tmp_path / "out", n_permutations=500)
    by = {(t["test"], t["feature"]): t for t in res["diagnostics"]["tests"]}
    assert by["within_bin_permutation", "planted"]["p_value"] < 0.01
    assert by["conditional", "planted"]["p_value"] < 0.01  # the recommended test, side by side
    assert 0 < by["minimum_detectable_gap", "planted"]["minimum_detectable_gap"] < 0.5
    assert (tmp_path / "out" / "report.html").exists()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["diagnostics"]


def test_diagnose_rejects_files_without_routing(tmp_path):
    np.savez(tmp_path / "p.npz", probs=np.full((10, 2), 0.5), labels=np.zeros(10, int))
    with pytest.raises(ValueError, match="no routing summaries"):
        diagnose.diagnose_predictions(tmp_path / "p.npz")
    assert not (tmp_path / "p_routecal").exists()


def test_diagnose_single_file_splits_it_for_the_probes(tmp_path):
    rng = np.random.default_rng(1)
    _planted_npz(tmp_path / "all.npz", rng, n=800)
    res = diagnose.diagnose_predictions(tmp_path / "all.npz", n_permutations=200)
    probes = {r["probe"] for r in res["probes"]["rows"]}
    assert {"uncalibrated", "temperature", "isotonic", "nw_confidence"} <= probes
    with np.load(tmp_path / "all.npz") as z:
        a, b = diagnose.split_predictions({k: z[k] for k in z.files}, seed=0)
    assert len(a["labels"]) + len(b["labels"]) == 800 and len(a["labels"]) == 400


def test_calib_and_test_that_disagree_are_refused_before_any_write(tmp_path):
    rng = np.random.default_rng(3)
    _planted_npz(tmp_path / "calib.npz", rng, n=300)
    n = 300
    probs5 = rng.dirichlet(np.ones(5), size=n)
    np.savez(tmp_path / "test5.npz", probs=probs5, labels=rng.integers(0, 5, n),
             routing_planted=rng.normal(size=n), routing_noise=rng.normal(size=n))
    with pytest.raises(ValueError, match=r"calib\.npz has 2 classes but .*test5\.npz has 5"):
        diagnose.diagnose_predictions(tmp_path / "calib.npz", test_path=tmp_path / "test5.npz",
                                      out_dir=tmp_path / "out")
    with np.load(tmp_path / "calib.npz") as z:
        d = {k: z[k] for k in z.files if k != "routing_noise"}
    np.savez(tmp_path / "test_fewer.npz", **d)  # same task, one routing array missing
    with pytest.raises(ValueError, match=r"routing_noise: \(\) vs missing"):
        diagnose.diagnose_predictions(tmp_path / "calib.npz", test_path=tmp_path / "test_fewer.npz",
                                      out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_constant_routing_features_are_skipped_with_a_note(tmp_path, capsys):
    rng = np.random.default_rng(4)
    n = 400
    conf = rng.uniform(0.4, 0.99, n)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = (rng.uniform(size=n) > conf).astype(int)
    # every summary constant (a model whose routing never changes), and one varying extra feature
    np.savez(tmp_path / "p.npz", probs=probs, labels=labels, H=np.full((n, 3), 0.5),
             depth_var=np.ones((n, 3)), depth_mean=np.ones((n, 3)), routing_gate=rng.normal(size=n))
    res = diagnose.diagnose_predictions(tmp_path / "p.npz", n_permutations=100)
    err = capsys.readouterr().err
    # every test spec of the grid ran on the one varying feature only
    assert {t["feature"] for t in res["diagnostics"]["tests"]} == {"gate"}
    specs = {t["test"] for t in res["diagnostics"]["tests"]}
    assert len(res["diagnostics"]["tests"]) == len(specs) and "within_bin_permutation" in specs
    skipped = ["H_mean", "depth_mean_mean", "depth_var_mean"]
    assert len(res["meta"]["notes"]) == len(skipped)
    for f, note in zip(skipped, res["meta"]["notes"], strict=True):
        assert f"'{f}' does not vary" in note and note in err
    probes = {r["probe"] for r in res["probes"]["rows"]}
    assert {"uncalibrated", "temperature", "nw_confidence"} <= probes
    assert (tmp_path / "p_routecal" / "report.html").exists()  # the run is not lost
