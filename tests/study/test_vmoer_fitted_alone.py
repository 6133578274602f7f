"""The digits source's ensemble and SWAG retrofits (`training.vmoer_sources.ClassifierSource`): SWAG
collects moments and differs from det; every ensemble member is fitted alone with its losses."""

import json
import pathlib

import numpy as np
import pytest
from flax import nnx

from routecal import config
from routecal.files import workdir as workdir_io
from routecal.models.routers import baselines, swag
from routecal.study import vmoer
from routecal.training import classify, predict, vmoer_sources

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def det_run():
    """An (untrained) deterministic digits model: the retrofits' starting point."""
    cfg = config.load_config("configs/vmoer_digits.py:tiny", [
        "experiment.retrofit_steps=6", "experiment.member_steps=6",
        "experiment.member_max_steps=6"])  # fmt: skip
    task = classify.ClassifierTask(vmoer_sources.run_config(cfg, "det", 0, None))
    return cfg, task.build_model(), task.dataset


def _source(cfg, workdir="/nonexistent"):
    return vmoer_sources.ClassifierSource(cfg, pathlib.Path(workdir))


def _probs(model, tokens):
    return predict.predict_arrays(nnx.clone(model), tokens, batch_size=64)["probs"]


def test_swag_retrofit_collects_moments_and_differs_from_det(det_run):
    cfg, det, ds = det_run
    model, log = _source(cfg).fit_alone("swag_retrofit", 0, det)
    assert len(log["losses"]) == 6 and np.all(np.isfinite(log["losses"]))
    assert log["swag_n"] == 3  # steps 3..5 of 6 (vmoer_swag_start 0.5)
    rs = swag.swag_routers(model)
    assert len(rs) == cfg.model.n_layers
    assert all(float(r.vrouter.n[...]) == 3 for r in rs)
    tokens = ds.test.tokens[:64]
    gap = np.abs(_probs(model, tokens) - _probs(det, tokens)).max()
    assert gap > 1e-4, "SWAG acted as det"
    scratch = config.load_config("configs/vmoer_digits.py:tiny", ["experiment.routers=('det','swag')"])
    with pytest.raises(ValueError, match="swag_retrofit"):
        _source(scratch)  # from scratch: no moments, so it refuses


def test_ensemble_retrofit_members_fitted_alone_with_losses(det_run):
    cfg, det, ds = det_run
    model, log = _source(cfg).fit_alone("ensemble_retrofit", 0, det)
    members = log["members"]
    ens = baselines.router_list(model)
    assert len(members) == ens[0].n_members >= 2
    for m, mm in enumerate(members):
        assert mm["seed"] == [0, m] and mm["steps"] == 6
        assert len(mm["losses"]) == 6 and np.all(np.isfinite(mm["losses"]))
    w_det = [np.asarray(r.proj.kernel[...]) for r in baselines.router_list(det)]
    e = ens[0].n_experts
    for j, r in enumerate(ens):
        w = [np.asarray(r.proj.kernel[...])]
        rest = np.asarray(r.vrouter.proj.kernel[...])
        w += [rest[:, i * e : (i + 1) * e] for i in range(ens[0].n_members - 1)]
        for wm in w:  # every member moved away from det (perturbed, then fitted)
            assert np.abs(wm - w_det[j]).max() > 1e-4
        assert np.abs(w[0] - w[1]).max() > 1e-4  # and the members differ


def _member_kernels(model) -> list[list[np.ndarray]]:
    """[layer][member] router kernels [D, E] of every ensemble router of `model`."""
    out = []
    for r in baselines.router_list(model):
        rest, e = np.asarray(r.vrouter.proj.kernel[...]), r.n_experts
        out.append([np.asarray(r.proj.kernel[...])]
                   + [rest[:, i * e : (i + 1) * e] for i in range(r.n_members - 1)])
    return out


def test_scratch_ensemble_members_are_independent_and_stop_at_their_plateau(det_run):
    _, det, ds = det_run
    cfg = config.load_config("configs/vmoer_digits.py:tiny", [
        "experiment.retrofit_steps=6", "experiment.member_steps=6",
        "experiment.member_max_steps=40", "experiment.member_check_every=4"])  # fmt: skip
    model, log = _source(cfg).fit_alone("ensemble", 0, det)
    members, rule = log["members"], baselines.Plateau(6, 40, 4)
    for mm in members:  # each stopped at the first check where the rule held (or the cap)
        n = mm["steps"]
        assert 6 <= n <= 40 and (n - 6) % 4 == 0 and len(mm["losses"]) == n
        assert rule.stop(mm["losses"])
        assert not any(rule.stop(mm["losses"][:k]) for k in range(6, n, 4))
        assert mm["converged"] == baselines.converged(mm["losses"])
    assert len({round(mm["final_loss"], 6) for mm in members}) == len(members)  # own losses
    w_det = [np.asarray(r.proj.kernel[...]) for r in baselines.router_list(det)]
    for j, ws in enumerate(_member_kernels(model)):
        for a in range(len(ws)):
            # from the router's initialiser (std 0.02), not from det's router: each member is
            # as far from det as from its own random start
            assert np.abs(ws[a] - w_det[j]).max() > 1e-3
            for b in range(a):
                assert np.abs(ws[a] - ws[b]).max() > 1e-3  # independent members differ


def _save_untrained_det(cfg, det, det_dir):
    from routecal.files import records
    from routecal.training import checkpoints

    rc = vmoer_sources.run_config(cfg, "det", 0, None)
    records.record_workdir_config(det_dir, json.loads(rc.to_json_best_effort()), "config.json",
                                  "run")
    checkpoints.save_model(det_dir, 0, det)


@pytest.mark.parametrize("method", ["swag_retrofit", "ensemble_retrofit"])
def test_fitted_alone_models_are_checkpointed_and_reload(det_run, tmp_path, method, monkeypatch):
    from routecal.training import train

    cfg, det, ds = det_run
    _save_untrained_det(cfg, det, tmp_path / "seed0" / "det")
    tokens = ds.test.tokens[:32]
    source = _source(cfg, tmp_path)
    model, log = source.fit(method, 0, None)
    wd = tmp_path / "seed0" / method
    loaded, rc, _ = train.load_trained(wd)  # orbax checkpoint + config.json, like any run
    assert rc.model.mlp_type == f"vmoer_{method.removesuffix('_retrofit')}"
    np.testing.assert_allclose(_probs(loaded, tokens), _probs(model, tokens), rtol=1e-5, atol=1e-7)
    gap = np.abs(_probs(loaded, tokens) - _probs(det, tokens)).max()
    assert gap > 1e-5  # the fitted router, not det's
    if method == "swag_retrofit":
        assert all(float(r.vrouter.n[...]) == log["swag_n"] for r in swag.swag_routers(loaded))
    else:
        assert [len(k) for k in _member_kernels(loaded)] == [len(log["members"])] * len(
            baselines.router_list(loaded))

    def boom(*a, **k):
        raise AssertionError("refitted")

    # checkpoint + fit log kept: a rerun loads the saved model, it does not refit
    monkeypatch.setattr(source, "fit_alone", boom)
    again, log2 = source.fit(method, 0, None)
    np.testing.assert_allclose(_probs(again, tokens), _probs(model, tokens), rtol=1e-5, atol=1e-7)
    assert log2.get("members", log2.get("losses")) == log.get("members", log.get("losses"))


class _FakeSource:
    """Two routers whose "models" are their names; records what it fits."""

    names, seeds, metrics = ["det", "mfvr"], [0], ("ece",)
    lower_is_better = frozenset({"ece"})

    def __init__(self):
        self.fitted = []

    def fit(self, name, seed, det):
        self.fitted.append(name)
        return name, {"train_time_s": 1.0}

    def evaluate(self, model, seed):
        return {"ece": {"det": 0.2, "mfvr": 0.1}[model]}

    def overheads(self):
        return {n: {"flops_infer_pct": 0.0} for n in self.names}

    def extras(self):
        return {}


def test_the_section_skips_routers_found_in_the_seed_file(tmp_path):
    workdir_io.write_json(tmp_path / "seed0.json", {"det": {"ece": 0.4}})
    source = _FakeSource()
    stage = vmoer.seed_stage(source, 0, tmp_path)  # the study's `vmoer:0` stage
    assert source.fitted == ["mfvr"]  # det read back, not refitted
    out = vmoer.assemble(source, {n: {0: stage["runs"][n]} for n in source.names},
                         tmp_path / "tables" / "vmoer.csv")
    assert out["per_run"]["det"][0]["ece"] == 0.4 and out["per_run"]["mfvr"][0]["ece"] == 0.1
    assert out["table"]["mfvr"]["ece"]["rel_change_pct"] == pytest.approx(-75.0)
    assert json.loads((tmp_path / "seed0.json").read_text())["mfvr"]["ece"] == 0.1
    rerun = _FakeSource()
    again = vmoer.seed_stage(rerun, 0, tmp_path)
    assert rerun.fitted == [] and again["runs"] == json.loads((tmp_path / "seed0.json").read_text())
    rows = (tmp_path / "tables" / "vmoer.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["det", "mfvr"]


@pytest.mark.slow
def test_experiment_records_members_and_swag(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # the script imports paper_setup
    import vmoer_table  # the section alone, run by the study

    out = vmoer_table.main(["--config", "configs/vmoer_digits.py:tiny", "--workdir",
                            str(tmp_path), "train.steps=10", "experiment.retrofit_steps=6",
                            "experiment.seeds=(0,)", "experiment.member_steps=6",
                            "experiment.member_max_steps=6",
                            "experiment.routers=('det','swag_retrofit','ensemble_retrofit',"
                            "'ensemble')"])  # fmt: skip
    run = {n: {int(s): r for s, r in v.items()} for n, v in out["per_run"].items()}
    assert run["swag_retrofit"][0]["swag_n"] == 3
    assert [len(m["losses"]) for m in run["ensemble_retrofit"][0]["members"]] == [6] * 4
    assert [m["steps"] for m in run["ensemble"][0]["members"]] == [6] * 4  # alone, scratch
    for method in ("swag_retrofit", "ensemble_retrofit", "ensemble"):  # metrics + the model
        assert (tmp_path / "vmoer" / "seed0" / method / "fit_log.json").exists()
        assert (tmp_path / "vmoer" / "seed0" / method / "checkpoints").is_dir()
    assert set(out["table"]) == {"det", "swag_retrofit", "ensemble_retrofit", "ensemble"}
