"""The quick study end to end: resume after a kill, report tables against results.json, BYO traces."""

import csv
import json
import os
import pathlib
import shutil
import socket

import numpy as np
import pytest

from routecal import report
from routecal.config import load_config
from routecal.files import workdir
from routecal.study import example_unit
from routecal.study import plan as plan_lib
from routecal.study import run as study
from routecal.study.plan import Plan

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

        mp.setattr(example_unit, "probe_comparison", killed)
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
    assert any(n.startswith("run") for n in before), before
    assert not any(n.startswith("run:") for n in saved), saved
    assert not any(n.startswith("diag:") for n in saved), saved
    assert any(n.startswith("probes") for n in saved)
    after = {p.name: p.stat().st_mtime_ns for p in (w / "stages").glob("*.json")}
    assert all(after[k] == v for k, v in before.items())


def test_results_hold_every_cell_and_independent_numbers(quick):
    w, cfg, res, _, _ = quick
    feats = cfg.diagnostics.features
    routed = [a for a in cfg.architectures if cfg.models[a].routed]
    n_cells = len(feats) * len(cfg.seeds) * len(routed)
    rows = res["diagnostics"]["tests"]
    # every registered test per cell (cell by cell); the detectable gaps once per run, apart
    assert [t["test"] for t in rows] == ["within_bin", "conditional", "omnibus"] * n_cells
    assert all(t["domain"] == "all" for t in rows)
    power = res["power"]
    assert len(power) == 3 * len(cfg.seeds) * len(routed)
    assert all(p["mdg"] is None or 0 < p["mdg"] <= 1 for p in power)
    b = cfg.diagnostics.n_permutations
    for t in (t for t in rows if "p_value" in t):
        assert 1 / (1 + b) <= t["p_value"] <= 1
        assert t["p_value"] <= t["p_holm"] <= 1
    # the figure's nulls travel inside results: p = (1 + #{T* >= T}) / (1 + B) from the stored null
    # (|Z| against |Z*| for the two-sided conditional tests)
    shown = [t for t in rows if "null" in t]  # paper, conditional and omnibus (issue 22) tests
    assert len(shown) == 3 * min(cfg.diagnostics.n_null_figures, n_cells)
    for t in shown:
        null, stat = np.asarray(t["null"]), t["statistic"]
        if t["test"] != "within_bin":
            null, stat = np.abs(null), abs(stat)
        assert len(null) == b
        assert t["p_value"] == pytest.approx((1 + np.sum(null >= stat - 1e-6)) / (1 + b),
                                             abs=2 / (1 + b))
    assert not (w / "stages" / "nulls.npz").exists()
    for r in res["runs"]:
        with np.load(w / r["workdir"] / "predictions" / "test.npz") as z:
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
        assert (row["test"], row["arch"], row["feature"]) == (t["test"], t["arch"], t["feature"])
        assert float(row["p"]) == pytest.approx(t["p_value"], rel=1e-3, abs=1e-4)
        assert float(row["statistic"]) == pytest.approx(t["statistic"], rel=1e-3, abs=1e-4)
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
        ("source='files'", "source: expected one of"),
        ("unit='token'", "unit: the 'classifier' source gives 'example' rows"),
        ("sections=('diagnostics', 'temperature')", "sections: \\['temperature'\\] not available"),
        ("model_overrides=('model.residual=\"fulll\"',)", "model.residual: unknown 'fulll'"),
        ("model_overrides=('train.batch_size=5000',)", "train.batch_size: 5000 exceeds"),
    ],
)
def test_invalid_plan_writes_nothing(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        study.run(load_config(QUICK, [override]), tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_plan_lists_the_example_unit_stages(tmp_path):
    plan = plan_lib.Plan.from_config(load_config(QUICK))
    assert isinstance(plan, Plan) and study.UNITS[plan.unit].train_predict is example_unit.train_predict
    routed_runs = sum(m.routed for m in plan.models) * len(plan.seeds)
    # one run stage (train + predict) per run; per routed run a diagnostics cell per feature and a power cell,
    # probes; VMoER
    assert len(study.run_stage_names(plan)) == len(plan.runs)
    assert plan.source == "classifier" and plan.sections == (
        "diagnostics", "power", "probes", "vmoer")
    names = [n for n, _ in study._analysis(plan, example_unit, tmp_path, {})]
    m, s = plan.routed[0].name, plan.seeds[0]
    assert names[0] == f"diag:all:{m}:{s}:{plan.features[0]}"
    vmoer_seeds = plan.load_vmoer().experiment.seeds
    assert names[-len(vmoer_seeds):] == [f"vmoer:{v}" for v in vmoer_seeds]
    assert len(names) == routed_runs * (len(plan.features) + 2) + len(vmoer_seeds)
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




# ----------------------------------------------------------------------------------------------
# Workdirs: copied, moved, corrupt stages, a second process
# ----------------------------------------------------------------------------------------------


def _run_stages(w):
    return {p.name: json.loads(p.read_text()) for p in (w / "stages").glob("run_*.json")}


def test_copied_or_moved_workdir_reads_only_its_own_files(quick, tmp_path):
    w, cfg, res, _, _ = quick
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(w, a)
    shutil.copytree(a, b)
    stored = [p for s in _run_stages(b).values() for p in s["paths"].values()]
    assert stored and all(not pathlib.Path(p).is_absolute() for p in stored), stored
    for f in a.glob("runs/*/seed*/predictions/test.npz"):  # change every test file of the original
        with np.load(f) as z:
            d = {k: z[k] for k in z.files}
        d["labels"] = (d["labels"] + 1) % d["probs"].shape[1]
        np.savez(f, **d)
    res_b = study.run(cfg, b, write_report=False)
    assert res_b["runs"] == res["runs"]  # numbers from b's own (unchanged) files
    c = tmp_path / "c"
    b.rename(c)  # moved
    assert study.run(cfg, c, write_report=False)["runs"] == res["runs"]
    res_a = study.run(cfg, a, write_report=False)  # the changed original does see its change
    assert [r["test_accuracy"] for r in res_a["runs"]] != [r["test_accuracy"] for r in res["runs"]]


def test_worker_computes_only_the_pending_analysis_stages(quick, tmp_path):
    """The study worker (one driver for every unit) on the example unit: a stage it recomputes
    holds the same numbers, and it computes nothing else."""
    w, cfg, res, _, _ = quick
    b = tmp_path / "b"
    shutil.copytree(w, b)
    probes = b / "stages" / "probes_full_0.json"
    stored = json.loads(probes.read_text())
    probes.unlink()
    assert study.run(cfg, b, worker=True) == {"stages": ["probes:full:0"]}
    again = json.loads(probes.read_text())
    assert again.pop("seconds") >= 0 and stored.pop("seconds") >= 0
    assert again == stored
    assert study.run(cfg, b, worker=True) == {"stages": []}
    (b / "stages" / "run_full_0.json").unlink()
    with pytest.raises(ValueError, match="has not finished its runs"):
        study.run(cfg, b, worker=True)


def test_unreadable_or_foreign_stage_is_recomputed_with_a_message(quick, tmp_path, capsys):
    w, cfg, res, _, _ = quick
    b = tmp_path / "b"
    shutil.copytree(w, b)
    (name, stage), (torn, _) = sorted(_run_stages(b).items())[:2]
    train_stage = b / "stages" / torn
    train_stage.write_text(train_stage.read_text()[:40])  # a torn write
    stage["paths"] = {k: str(w / p) for k, p in stage["paths"].items()}  # an older routecal
    (b / "stages" / name).write_text(json.dumps(stage))
    capsys.readouterr()
    res_b = study.run(cfg, b, write_report=False)
    err = capsys.readouterr().err
    assert f"{train_stage.name}' is not valid JSON" in err
    assert "is not inside the workdir" in err and err.count("recomputing it") == 2
    assert all(not pathlib.Path(p).is_absolute() for p in _run_stages(b)[name]["paths"].values())
    assert res_b["runs"] == res["runs"]  # recomputed from the same runs: the same numbers


def test_a_second_study_on_the_workdir_is_refused(tmp_path):
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "what": "routecal study",
              "since": "2026-01-01T00:00:00+00:00"}  # pytest's parent process: alive
    (tmp_path / workdir.LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(workdir.WorkdirLocked, match=rf"\(pid {os.getppid()} on host"):
        study.run(load_config(QUICK), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [workdir.LOCK_NAME]
