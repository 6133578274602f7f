"""The VMoER section on the digits classifier (`study.vmoer`, source "classifier"): table
aggregation (fast); retrofit and the section (slow)."""

import json
import pathlib

import numpy as np
import pytest

from routecal import config
from routecal.report import vmoer_lm
from routecal.stats import seeds
from routecal.training import vmoer_sources

METRICS = vmoer_sources.ClassifierSource.metrics
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_summarize_bands_and_relative_change():
    per_run = {
        "det": {0: {"ece": 0.10, "stability": 0.5}, 1: {"ece": 0.20, "stability": 0.7}},
        "mfvr": {0: {"ece": 0.05, "stability": 0.9}, 1: {"ece": 0.10, "stability": 0.9}},
    }
    t = seeds.band_table(per_run, METRICS)
    det, lo = t["det"]["ece"], t["mfvr"]["ece"]
    assert det["mean"] == pytest.approx(0.15) and det["min"] == 0.10 and det["max"] == 0.20
    assert det["std"] == pytest.approx(np.std([0.1, 0.2], ddof=1))
    assert lo["rel_change_pct"] == pytest.approx(-50.0)  # 0.075 / 0.15 - 1
    assert t["mfvr"]["stability"]["rel_change_pct"] == pytest.approx(50.0)  # 0.9 / 0.6 - 1
    assert "rel_change_pct" not in det
    t["vtsr"] = {}
    md = vmoer_lm.markdown(t, ["det", "mfvr", "vtsr"], ["ece", "accuracy"])
    assert "| ece |" in md and "(-50.0%, " in md and "| vtsr | n/a | n/a |" in md


def test_run_config_retrofit_and_bad_method():
    cfg = config.load_config("configs/vmoer_digits.py")
    rc = vmoer_sources.run_config(cfg, "vtsr_retrofit", 3, "/tmp/det")
    assert "experiment" not in rc
    assert rc.model.mlp_type == "vmoer_vtsr" and rc.seed == 3
    assert rc.train.trainable == "vrouter" and rc.train.init_from == "/tmp/det"
    assert rc.train.steps == cfg.experiment.retrofit_steps
    assert vmoer_sources.run_config(cfg, "det", 0, None).model.mlp_type == "moe"
    with pytest.raises(ValueError, match="experiment.routers"):
        vmoer_sources.run_config(cfg, "bayes", 0, None)
    # issue 21: one vocabulary; the old names raise naming the new ones
    with pytest.raises(ValueError, match="'mfvr'"):
        vmoer_sources.run_config(cfg, "logit", 0, None)
    with pytest.raises(ValueError, match="'vtsr'"):
        vmoer_sources.run_config(cfg, "temp_retrofit", 0, "/tmp/det")
    with pytest.raises(ValueError, match="'vtsr'"):
        config.load_config("configs/vmoer_digits.py:temp")
    assert vmoer_sources.run_config(cfg, "swag_retrofit", 0, "/tmp/det").train.trainable == (
        "router/proj"
    )


@pytest.mark.slow
def test_retrofit_trains_only_the_router_posterior(tmp_path):
    from flax import nnx

    from routecal.training import train

    cfg = config.load_config("configs/vmoer_digits.py:tiny")
    det_dir, rf_dir = tmp_path / "det", tmp_path / "rf"
    train.train_and_evaluate(vmoer_sources.run_config(cfg, "det", 0, None), det_dir)
    train.train_and_evaluate(vmoer_sources.run_config(cfg, "mfvr_retrofit", 0, str(det_dir)), rf_dir)
    det, _, _ = train.load_trained(det_dir)
    rf, _, _ = train.load_trained(rf_dir)
    d = dict(nnx.to_flat_state(nnx.state(det, nnx.Param)))
    n_frozen, n_moved = 0, 0
    for path, var in nnx.to_flat_state(nnx.state(rf, nnx.Param)):
        name = "/".join(map(str, path))
        if "vrouter" in name:
            # delta_mu kernels start at exactly zero; training moves them
            if "delta_mu" in name and "kernel" in name:
                n_moved += int(not np.allclose(var[...], 0.0))
        else:  # everything else is the deterministic model's parameter, untouched
            np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(d[path][...]), name)
            n_frozen += 1
    assert n_frozen == len(d) and n_moved == cfg.model.n_layers


@pytest.mark.slow
def test_quick_experiment_end_to_end(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # the script imports paper_setup
    import vmoer_table  # the section alone, run by the study

    out = vmoer_table.main(["--config", "configs/vmoer_digits.py:tiny", "--workdir", str(tmp_path),
                            "experiment.seeds=(0,)",
                            "experiment.routers=('det','mfvr','vtsr_retrofit')"])
    t = out["table"]
    assert set(t) == {"det", "mfvr", "vtsr_retrofit"}
    for m in ("det", "mfvr"):
        assert 0 <= t[m]["stability"]["mean"] <= 1 and 0 <= t[m]["ood_auroc"]["mean"] <= 1
    assert "ood_auroc_mi" not in t["det"]
    assert json.loads((tmp_path / "results.json").read_text())["vmoer"]["table"] == t
    rows = (tmp_path / "tables" / "vmoer.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["det", "mfvr", "vtsr_retrofit"]


@pytest.mark.parametrize(
    "spec",
    [
        "configs/moe_digits.py",
        "configs/moe_digits.py:full,tiny",
        "configs/vmoer_digits.py:vtsr",
        "configs/vmoer_digits.py:mfvr,retrofit",
        "configs/vmoer_digits.py:det,tiny",
    ],
)
def test_configs_build_valid_model_configs(spec):
    from routecal.models import vmoer
    from routecal.models.transformer import ModelConfig

    cfg = config.load_config(spec)
    mc = ModelConfig.from_config(cfg.model, seq_len=16, token_dim=4, num_classes=10)
    assert mc.mlp_type in ("moe", "vmoer_mfvr", "vmoer_vtsr")
    vmoer.check_vmoer_options(mc.vmoer_options)
    if "retrofit" in spec:
        assert cfg.train.trainable == vmoer.VROUTER_PATH


def test_bad_config_variant_raises():
    with pytest.raises(ValueError, match="variant"):
        config.load_config("configs/vmoer_digits.py:bayes")
    with pytest.raises(ValueError, match="retrofit"):
        config.load_config("configs/vmoer_digits.py:det,retrofit")
