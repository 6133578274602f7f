"""The quick study end to end: resume after a kill, report tables against results.json, BYO traces."""

import csv
import json
import pathlib

import numpy as np
import pytest

from routecal import report
from routecal.config import load_config
from routecal.pipeline import study

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "study.py") + ":quick"


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Runs the quick study twice: killed in the probe stage, then resumed to the end."""
    w = tmp_path_factory.mktemp("quick_study")
    cfg = load_config(QUICK)
    with pytest.MonkeyPatch.context() as mp:

        def killed(*args, **kwargs):
            raise _Killed("simulated kill during the probes stage")

        mp.setattr(study, "probe_comparison", killed)
        with pytest.raises(_Killed):
            study.run(cfg, w)
    before = {p.name: p.stat().st_mtime_ns for p in (w / "stages").glob("*.json")}
    saved: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        orig = study.Stages.save

        def save(self, name, value):
            saved.append(name)
            return orig(self, name, value)

        mp.setattr(study.Stages, "save", save)
        results = study.run(cfg, w)
    return w, cfg, results, before, saved


def test_resume_does_not_redo_finished_stages(quick):
    w, cfg, _, before, saved = quick
    assert any(n.startswith("train") for n in before), before
    assert not any(n.startswith(("train", "predict")) for n in saved), saved
    assert "diagnostics" not in saved
    assert any(n.startswith("probes") for n in saved)
    after = {p.name: p.stat().st_mtime_ns for p in (w / "stages").glob("*.json")}
    assert all(after[k] == v for k, v in before.items())


def test_results_hold_every_cell_and_independent_numbers(quick):
    w, cfg, res, _, _ = quick
    feats = cfg.diagnostics.features.split(",")
    routed = [a for a in cfg.architectures.split(",") if cfg.models[a].routed]
    assert len(res["diagnostics"]["tests"]) == len(feats) * len(cfg.seeds) * len(routed)
    for t in res["diagnostics"]["tests"]:
        assert 1 / (1 + cfg.diagnostics.n_permutations) <= t["p_value"] <= 1
        assert t["p_value"] <= t["p_holm"] <= 1
    for r in res["runs"]:
        with np.load(pathlib.Path(r["workdir"]) / "predictions" / "test.npz") as z:
            acc = float(np.mean(z["probs"].argmax(1) == z["labels"]))
        assert r["test_accuracy"] == pytest.approx(acc)
    assert res["meta"]["versions"]["jax"]
    assert res["meta"]["config"]["seeds"] == list(cfg.seeds)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_report_tables_match_results(quick):
    w, _, res, _, _ = quick
    rows = _csv(w / "tables" / "diagnostics_tests.csv")
    assert len(rows) == len(res["diagnostics"]["tests"])
    for row, t in zip(rows, res["diagnostics"]["tests"], strict=True):
        assert (row["arch"], row["feature"]) == (t["arch"], t["feature"])
        assert float(row["p"]) == pytest.approx(t["p_value"], rel=1e-3, abs=1e-4)
        assert float(row["weighted gap"]) == pytest.approx(t["statistic"], rel=1e-3, abs=1e-4)
    probes = _csv(w / "tables" / "probes.csv")
    assert len(probes) == len(res["probes"]["summary"]) > 0
    for row, s in zip(probes, res["probes"]["summary"], strict=True):
        if s["ece"]["mean"] is not None:
            assert float(row["ECE"].split(" ")[0]) == pytest.approx(s["ece"]["mean"], abs=1e-4)
    md = (w / "report.md").read_text()
    for v in res["verdicts"].values():
        assert v in md
    assert res["verdicts"] == report.verdicts(res)


def test_report_html_is_self_contained(quick):
    w, _, res, _, _ = quick
    html = (w / "report.html").read_text()
    n_fig = html.count("data:image/png;base64,")
    assert n_fig >= 4
    assert n_fig == (w / "report.md").read_text().count("![")


def test_other_config_in_same_workdir_is_an_error(quick):
    w, _, _, _, _ = quick
    cfg = load_config(QUICK, ["diagnostics.n_permutations=123"])
    with pytest.raises(ValueError, match="different config"):
        study.run(cfg, w)


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
    res = study.diagnose_predictions(tmp_path / "calib.npz", test_path=tmp_path / "test.npz",
                                     out_dir=tmp_path / "out", n_permutations=500)
    by = {t["feature"]: t for t in res["diagnostics"]["tests"]}
    assert by["planted"]["p_value"] < 0.01
    assert (tmp_path / "out" / "report.html").exists()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["diagnostics"]


def test_diagnose_rejects_files_without_routing(tmp_path):
    np.savez(tmp_path / "p.npz", probs=np.full((10, 2), 0.5), labels=np.zeros(10, int))
    with pytest.raises(ValueError, match="no routing summaries"):
        study.diagnose_predictions(tmp_path / "p.npz")


def test_reliability_data_per_probe_agrees_with_its_ece(quick):
    w, _, res, _, _ = quick
    rel = res["probes"]["reliability"]
    arch, seed = res["probes"]["rows"][0]["arch"], res["probes"]["rows"][0]["seed"]
    rows = {r["probe"]: r for r in res["probes"]["rows"]
            if (r["arch"], r["seed"]) == (arch, seed) and r["bandwidth_rule"] in (None, "cv_nll")}
    assert {"uncalibrated", "temperature", "isotonic", "nw_ar_condcal"} <= set(rel)
    for name, r in rel.items():
        cnt = np.asarray(r["count"], float)
        gap = np.abs(np.asarray(r["accuracy"]) - np.asarray(r["mean_confidence"]))
        # ECE from the reliability curve, sum_b (n_b / N) |acc_b - conf_b|, equals the row's ECE.
        assert float((cnt * gap).sum() / cnt.sum()) == pytest.approx(rows[name]["ece"], abs=1e-5)


def test_diagnose_single_file_splits_it_for_the_probes(tmp_path):
    rng = np.random.default_rng(1)
    _planted_npz(tmp_path / "all.npz", rng, n=800)
    res = study.diagnose_predictions(tmp_path / "all.npz", n_permutations=200)
    probes = {r["probe"] for r in res["probes"]["rows"]}
    assert {"uncalibrated", "temperature", "isotonic", "nw_confidence"} <= probes
    with np.load(tmp_path / "all.npz") as z:
        a, b = study.split_predictions({k: z[k] for k in z.files}, seed=0)
    assert len(a["labels"]) + len(b["labels"]) == 800 and len(a["labels"]) == 400
