"""Bring your own traces: `routecal.study.diagnose` on planted npz files."""

import json

import numpy as np
import pytest

from routecal.study import diagnose, registry


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
    assert by["within_bin", "planted"]["p_value"] < 0.01
    assert by["conditional", "planted"]["p_value"] < 0.01  # the recommended test, side by side
    gaps = {p["test"]: p["mdg"] for p in res["power"]}  # one per test (routing is planted)
    assert 0 < gaps["conditional"] < 0.5
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
    # every registered test ran on the one varying feature only
    assert {t["feature"] for t in res["diagnostics"]["tests"]} == {"gate"}
    specs = {t["test"] for t in res["diagnostics"]["tests"]}
    assert len(res["diagnostics"]["tests"]) == len(specs) and "within_bin" in specs
    skipped = ["H_mean", "depth_mean_mean", "depth_var_mean"]
    assert len(res["meta"]["notes"]) == len(skipped)
    for f, note in zip(skipped, res["meta"]["notes"], strict=True):
        assert f"'{f}' does not vary" in note and note in err
    probes = {r["probe"] for r in res["probes"]["rows"]}
    assert {"uncalibrated", "temperature", "nw_confidence"} <= probes
    assert (tmp_path / "p_routecal" / "report.html").exists()  # the run is not lost


def _token_traces(rng, n_docs=40, per_doc=15, effect=0.3):
    """Per-token traces as a user writes them from any framework: confidence, correct, routing
    columns, doc_id (and seq_id, a finer split of each document)."""
    n = n_docs * per_doc
    doc = np.repeat(np.arange(n_docs), per_doc)
    conf = rng.uniform(0.3, 0.95, n)
    routing = rng.normal(size=n_docs)[doc] + 0.5 * rng.normal(size=n)
    correct = rng.uniform(size=n) < np.clip(conf + effect * np.tanh(routing) * (1 - conf), 0, 1)
    return {"confidence": conf.astype(np.float32), "correct": correct,
            "routing_planted": routing, "routing_noise": rng.normal(size=n),
            "doc_id": doc, "seq_id": np.arange(n) // 5}


def test_token_traces_round_trip_matches_the_diagnostic_functions(tmp_path):
    """`routecal diagnose` on a user's npz of (confidence, correct, routing, doc_id) gives the
    statistics and p-values of `routecal.stats.diagnostics` called directly on the same numbers
    (clusters = doc_id, preferred over seq_id), and a token-shard directory of them gives the same."""
    import jax

    from routecal import cli
    from routecal.files import shards
    from routecal.stats import diagnostics

    t = _token_traces(np.random.default_rng(5))
    np.savez(tmp_path / "traces.npz", **t)
    assert cli.main(["diagnose", "--predictions", str(tmp_path / "traces.npz"), "--out",
                     str(tmp_path / "out"), "--n-permutations", "199", "--seed", "3"]) in (0, None)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["meta"]["clusters"] == "doc_id" and res["probes"] == {}
    rows = {(r["test"], r["feature"]): r for r in res["diagnostics"]["tests"]}
    conf, correct = t["confidence"].astype(np.float64), t["correct"].astype(np.float64)
    cells = [r["feature"] for r in res["diagnostics"]["tests"] if r["test"] == "conditional"]
    assert cells == ["noise", "planted"]  # sorted by name, whatever the file's column order
    for j, f in enumerate(cells):  # one cell; feature j, test t: fold_in(cell, j), then t
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), 0), j)
        paper = diagnostics.within_bin_permutation_test(
            conf, correct, t[f"routing_{f}"], key=jax.random.fold_in(key, 0), n_permutations=199,
            n_bins=15, n_groups=3)
        rec = diagnostics.conditional_calibration_test(
            conf, correct, t[f"routing_{f}"], key=jax.random.fold_in(key, 1), n_permutations=199,
            stratum_size=registry.stratum_size(len(conf)), clusters=t["doc_id"])
        got_paper, got_rec = rows["within_bin", f], rows["conditional", f]
        assert got_paper["statistic"] == pytest.approx(float(paper.statistic), rel=1e-6)
        assert got_paper["p_value"] == float(paper.p_value)
        assert got_rec["statistic"] == pytest.approx(float(rec.statistic), rel=1e-6)
        assert got_rec["p_value"] == float(rec.p_value)
        assert got_rec["n_clusters"] == 40 and got_rec["n"] == len(conf)
    assert rows["conditional", "planted"]["p_value"] < 0.05
    w = shards.ShardWriter(tmp_path / "shards", shard_rows=256)
    w.append(t)
    via_shards = diagnose.diagnose_predictions(w.close(), out_dir=tmp_path / "out2",
                                               n_permutations=199, seed=3)
    for r in via_shards["diagnostics"]["tests"]:
        if "p_value" in r:
            assert r["p_value"] == rows[r["test"], r["feature"]]["p_value"]


def test_diagnose_reads_a_token_shard_directory_not_no_such_file(tmp_path):
    from routecal.files import shards

    t = _token_traces(np.random.default_rng(6), n_docs=20)
    del t["doc_id"]
    w = shards.ShardWriter(tmp_path / "tokens" / "test", shard_rows=100)
    w.append(t)
    w.close()
    res = diagnose.diagnose_predictions(tmp_path / "tokens" / "test", n_permutations=49)
    assert res["meta"]["clusters"] == "seq_id" and (tmp_path / "tokens" / "test_routecal").is_dir()
    assert {r["feature"] for r in res["diagnostics"]["tests"]} == {"planted", "noise"}


@pytest.mark.parametrize("which", ["calib", "test"])
def test_nan_in_a_routing_feature_names_the_file(tmp_path, which):
    rng = np.random.default_rng(7)
    _planted_npz(tmp_path / "calib.npz", rng, n=200)
    _planted_npz(tmp_path / "test.npz", rng, n=200)
    with np.load(tmp_path / f"{which}.npz") as z:
        d = {k: z[k] for k in z.files}
    d["routing_noise"][5] = np.nan
    np.savez(tmp_path / f"{which}.npz", **d)
    with pytest.raises(ValueError, match=rf"{which}\.npz'.*routing_noise: contains 1 NaN"):
        diagnose.diagnose_predictions(tmp_path / "calib.npz", test_path=tmp_path / "test.npz",
                                      out_dir=tmp_path / "out")


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.pop("correct"), "neither confidence and correct nor probs"),
    (lambda t: t.update(confidence=t["confidence"] * 2), "confidence"),
    (lambda t: t.update(doc_id=t["doc_id"].astype(float)), "doc_id: expected .N. integer ids"),
    (lambda t: t.update(doc_id=t["doc_id"][:-1]), "doc_id"),
    (lambda t: t.update(routing_noise=t["routing_noise"][:-3]), "routing_noise"),
])
def test_bad_traces_name_the_file(tmp_path, edit, match):
    t = _token_traces(np.random.default_rng(8), n_docs=10)
    edit(t)
    np.savez(tmp_path / "traces.npz", **t)
    with pytest.raises(ValueError, match=match) as e:
        diagnose.diagnose_predictions(tmp_path / "traces.npz", n_permutations=9)
    assert str(tmp_path / "traces.npz") in str(e.value)
