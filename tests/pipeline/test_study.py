"""The quick study end to end: resume after a kill, report tables against results.json, BYO traces."""

import csv
import pathlib

import numpy as np
import pytest

from routecal import report
from routecal.config import load_config
from routecal.pipeline import study
from routecal.pipeline.plan import Plan

ROOT = pathlib.Path(__file__).resolve().parents[2]
QUICK = str(ROOT / "configs" / "study.py") + ":quick,tiny"  # test-size models


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
    feats = cfg.diagnostics.features
    routed = [a for a in cfg.architectures if cfg.models[a].routed]
    assert len(res["diagnostics"]["tests"]) == len(feats) * len(cfg.seeds) * len(routed)
    b = cfg.diagnostics.n_permutations
    for t in res["diagnostics"]["tests"]:
        assert 1 / (1 + b) <= t["p_value"] <= 1
        assert t["p_value"] <= t["p_holm"] <= 1
    # the figure's nulls travel inside results: p = (1 + #{T* >= T}) / (1 + B) from the stored null
    shown = [t for t in res["diagnostics"]["tests"] if "null" in t]
    assert len(shown) == min(cfg.diagnostics.n_null_figures, len(res["diagnostics"]["tests"]))
    for t in shown:
        null = np.asarray(t["null"])
        assert len(null) == b
        assert t["p_value"] == pytest.approx((1 + np.sum(null >= t["statistic"] - 1e-6)) / (1 + b),
                                             abs=2 / (1 + b))
    assert not (w / "stages" / "nulls.npz").exists()
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


@pytest.mark.parametrize(
    "override, match",
    [
        ("architectures=('full', 'blok')", "architectures: unknown"),
        ("model_overrides=('model.nope=1',)", "unknown key 'model.nope'"),
        ("vmoer.overrides=('experiment.nope=1',)", "unknown key 'experiment.nope'"),
        ("seeds=()", "at least one seed"),
    ],
)
def test_invalid_plan_writes_nothing(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        study.run(load_config(QUICK, [override]), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_plan_counts_the_progress_bar_stages():
    plan = Plan.from_config(load_config(QUICK))
    routed_runs = sum(m.routed for m in plan.models) * len(plan.seeds)
    # train + predict per run, diagnostics, probes per routed run, VMoER, results
    assert plan.n_stages == 2 * len(plan.runs) + 1 + routed_runs + 1 + 1
    assert [m.name for m in plan.models] == list(load_config(QUICK).architectures)


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


