"""The LM study's VMoER section (`vmoer.*` in configs/study_lm.py): a tiny MoE decoder, det and
every router retrofitted on it, one stage per seed, `W/tables/vmoer.csv` with one row per router,
results.json's `vmoer` and the report's table; a rerun retrains nothing."""

from __future__ import annotations

import csv
import json
import math
import pathlib

import pytest

from routecal.config import load_config
from routecal.models import routers
from routecal.study import run as study
from routecal.study import vmoer
from tests.study.test_token_study import produce

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = (  # the section on a decoder of width 8, two steps per fit: it checks the wiring only
    "model.d_model=8", "model.mlp_dim=8", "model.moe_hidden=8", "model.vmoer.head_hidden=8",
    "model.n_layers=1", "model.vmoer.ensemble=2", "data.lm_max_bytes=20000",
    "data.n_train_items=32",
    "data.n_eval_items=32", "data.n_calib_items=16", "train.finetune_steps=2",
    "train.retrofit_steps=2", "train.member_steps=2", "experiment.beta_grid=(0.01,)",
    "experiment.sigmas=(0.01,)", "experiment.stability_items=16", "experiment.eval_batch_size=32",
)


@pytest.fixture
def cfg():
    return load_config(f"{ROOT}/configs/study_lm.py:quick", [
        "architectures=('full',)", "domains=('in:test',)", "diagnostics.features=('H_mean',)",
        "diagnostics.n_permutations=19", "diagnostics.max_tokens=200",
        "diagnostics.power_kwargs.n_datasets=10", "diagnostics.paper_power_datasets=5",
        "diagnostics.paper_power_permutations=9", "probes.bandwidth_rules=('scott',)",
        "probes.sweep_multiples=(1.0,)", "diagnostics.cluster_unit=document",
        f"vmoer.overrides={TINY!r}",
    ])


def test_quick_study_names_every_router_retrofitted():
    from routecal.study.plan import Plan

    plan = Plan.from_config(load_config(f"{ROOT}/configs/study_lm.py:quick"))
    names = plan.load_vmoer().experiment.routers
    assert set(names) == {"det"} | {f"{r}_retrofit" for r in routers.ROUTERS if r != "det"}
    with pytest.raises(ValueError, match="mfvr"):  # an old router name, caught by the plan
        old = ("experiment.routers=('det', 'logit_retrofit')",)
        Plan.from_config(load_config(f"{ROOT}/configs/study_lm.py:quick",
                                       [f"vmoer.overrides={old!r}"]))


def test_study_writes_one_vmoer_row_per_router_and_resumes(cfg, tmp_path, monkeypatch):
    w = tmp_path / "w"
    res = study.run(cfg, w, producer=produce)
    names = list(load_config(f"{ROOT}/configs/vmoer_lm.py:quick").experiment.routers)
    for base in ("det", "mfvr", "fcvr", "lowrank", "vtsr", "fixed_temp", "mc_dropout",
                 "ensemble", "swag"):
        assert base in names or f"{base}_retrofit" in names
    rows = list(csv.DictReader(open(w / "tables" / "vmoer.csv")))
    assert [r["router"] for r in rows] == names
    for r in rows:  # every metric finite, in its range
        for m in ("accuracy", "ece", "nll", "stability", "ood_auroc_near", "ood_auroc_far"):
            v = float(r[f"{m}_mean"])
            assert math.isfinite(v) and (m == "nll" or 0.0 <= v <= 1.0), (r["router"], m, v)
        assert r["n_seeds"] == "1"
    v = res["vmoer"]
    assert set(v["per_run"]) == set(names) and v["seeds"] == [0]
    fc = v["per_run"]["fcvr_retrofit"]["0"]
    assert fc["beta"] == 0.01 and len(fc["members"] if "members" in fc else []) == 0
    assert len(v["per_run"]["ensemble_retrofit"]["0"]["members"]) == 2
    assert v["per_run"]["swag_retrofit"]["0"]["swag_n"] > 0
    # det's row against itself has no relative change; every router's has one (vs det)
    assert "rel_change_pct" not in v["table"]["det"]["ece"]
    assert all("rel_change_pct" in v["table"][n]["ece"] for n in names if n != "det")
    report = (w / "report.md").read_text()
    assert "VMoER: det vs every router" in report and "swag_retrofit" in report
    # a rerun reads the stored stage: nothing retrained, the same numbers
    monkeypatch.setattr(vmoer, "run_seed", lambda *a, **k: pytest.fail("retrained"))
    again = study.run(cfg, w, producer=lambda *a: pytest.fail("retrained"),
                         write_report=False)
    assert json.dumps(again["vmoer"]["table"], sort_keys=True) == json.dumps(
        v["table"], sort_keys=True)
