"""Bring your own traces: `routecal.pipeline.diagnose` on planted npz files."""

import json

import numpy as np
import pytest

from routecal.pipeline import diagnose


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
