"""Tests for the VMoER LM experiment: the config's router names, the table and its CSV; the
whole quick run is slow (stability: tests/models/test_vmoer_stability.py)."""

import csv
import pathlib

import numpy as np
import pytest

from routecal import config
from routecal.data import mcqa as mcqa_data
from routecal.models import routers
from routecal.report import vmoer_lm as vmoer_report
from routecal.stats import seeds
from routecal.study import vmoer
from routecal.training import mcqa, router_fit, vmoer_sources

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ("model.d_model=8", "model.mlp_dim=8", "model.moe_hidden=8", "model.vmoer.head_hidden=8")


def _tiny_cfg():
    return config.load_config("configs/vmoer_lm.py:quick", TINY)


def test_config_names_every_router_and_its_retrofit():
    from routecal.models.routers import common

    cfg = config.load_config("configs/vmoer_lm.py:quick")
    names = set(cfg.experiment.routers)
    # default: det trained once, every router retrofitted on it; "scratch" adds the others
    assert {f"{r}_retrofit" for r in routers.ROUTERS if r != "det"} | {"det"} == names
    scratch = set(config.load_config("configs/vmoer_lm.py:scratch").experiment.routers)
    assert set(routers.ROUTERS) | names == scratch
    # every VMoER setting is in the config (issue 24 item 6)
    assert {f"vmoer_{k}" for k in cfg.model.vmoer} == set(common.DEFAULTS)
    assert "det_retrofit" not in names
    with pytest.raises(ValueError, match="variant"):
        config.load_config("configs/vmoer_lm.py:fast")
    for name in names:
        mcqa.model_config(cfg, name.removesuffix("_retrofit"), max_len=32)


def test_summary_bands_relative_change_and_csv(tmp_path):
    per_run = {
        "det": {0: {"ece": 0.2, "stability": 0.5}, 1: {"ece": 0.4, "stability": 0.7}},
        "mfvr": {0: {"ece": 0.1, "stability": 0.9}, 1: {"ece": 0.2, "stability": 0.7}},
        "fcvr": {0: {"ece": 0.01, "stability": 0.4}, 1: {"ece": 0.02, "stability": 0.45}},
    }
    table = seeds.band_table(per_run, vmoer_sources.MCQA_METRICS, vmoer_sources.MCQA_LOWER)
    b = table["mfvr"]["ece"]
    assert b["mean"] == pytest.approx(0.15) and b["std"] == pytest.approx(
        np.std([0.1, 0.2], ddof=1)
    )
    assert b["rel_change_pct"] == pytest.approx(100 * (0.15 / 0.3 - 1))
    assert "rel_change_pct" not in table["det"]["ece"]
    # bands [0.1, 0.2] vs [0.2, 0.4] touch: within the seed band; stability [0.7, 0.9] vs
    # [0.5, 0.7] touch too
    assert table["mfvr"]["ece"]["verdict"] == "within seed band"
    # disjoint bands: lower ECE is better, lower stability is worse
    assert table["fcvr"]["ece"]["verdict"] == "better"
    assert table["fcvr"]["stability"]["verdict"] == "worse"
    path = tmp_path / "vmoer.csv"
    vmoer.write_csv(table, ["det", "mfvr"], vmoer_sources.MCQA_METRICS, path)
    rows = list(csv.DictReader(open(path)))
    assert [r["router"] for r in rows] == ["det", "mfvr"]
    assert float(rows[1]["stability_mean"]) == pytest.approx(0.8)
    assert rows[1]["paper_ece"] == "-94%" and rows[1]["ece_verdict"] == "within seed band"
    assert "mfvr" in vmoer_report.markdown(table, ["det", "mfvr"], ["stability", "ece"])


@pytest.mark.slow
def test_quick_experiment_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # the script imports paper_setup
    import vmoer_lm  # the section alone, run by the study

    routers = ("det", "fcvr", "vtsr", "ensemble", "fcvr_retrofit", "fixed_temp_retrofit",
               "ensemble_retrofit", "swag_retrofit")
    out = vmoer_lm.main(["--config", "configs/vmoer_lm.py:quick", "--workdir", str(tmp_path),
                         *TINY, "experiment.seeds=(0,)", f"experiment.routers={routers}",
                         *[f"train.{k}=3" for k in ("pretrain_steps", "finetune_steps",
                                                    "retrofit_steps", "member_steps",
                                                    "member_max_steps")],
                         "data.n_train_items=32", "data.n_eval_items=32",
                         "data.n_calib_items=16"])  # fmt: skip
    cfg = _tiny_cfg()
    assert (tmp_path / "tables" / "vmoer.csv").exists()
    out["per_run"] = {n: {int(s): r for s, r in v.items()} for n, v in out["per_run"].items()}
    for name in routers:
        r = out["per_run"][name][0]
        assert 0 <= r["ece"] <= 1 and 0 <= r["stability"] <= 1 and 0 <= r["ood_auroc_far"] <= 1
    assert "ood_auroc_far_router_logit_variance" in out["per_run"]["fcvr"][0]
    fc = out["per_run"]["fcvr_retrofit"][0]  # beta chosen on the calib split, recorded
    assert fc["beta"] in fc["beta_grid"] and len(fc["beta_calib_nll"]) == len(fc["beta_grid"])
    assert fc["beta_calib_nll"][fc["beta_grid"].index(fc["beta"])] == min(fc["beta_calib_nll"])
    members = out["per_run"]["ensemble_retrofit"][0]["members"]
    assert len(members) == cfg.model.vmoer.ensemble and all(len(m["losses"]) == 3 for m in members)
    assert len(out["per_run"]["ensemble"][0]["members"]) == cfg.model.vmoer.ensemble
    assert out["per_run"]["swag_retrofit"][0]["swag_n"] > 0


# ----------------------------------------------------------------------------------------------
# Option log-likelihood scoring (experiment.scoring = "loglik")
# ----------------------------------------------------------------------------------------------

_CONTEXTS = ["def f(x):\n    return", "import os\nimport", "for i in range(10):\n   "]
_OPTIONS = [
    [" x + 1", " None", " self.value", "pass"],
    [" sys", " re\n", " collections", " json"],
    [" print(i)", " break", "x = 1", " continue"],
]  # different lengths: the padding and the length normalisation both matter


def _loglik_items():
    from routecal.data.text import ByteTokenizer
    tok = ByteTokenizer()
    ids, mask = mcqa_data.encode_continuations(_CONTEXTS, _OPTIONS, tok, max_len=40)
    return tok, {"ids": ids, "mask": mask}


def _numpy_loglik_probs(model, tok):
    """Reference: every context + option in one batch filled on the right with random bytes
    (a causal model cannot see them), numpy log-softmax, the option tokens' log-probabilities
    summed by hand and divided by the option length, softmax over options."""
    from scipy import special

    seqs = [
        (tok.encode(c.encode()), tok.encode(o.encode()))
        for c, opts in zip(_CONTEXTS, _OPTIONS, strict=True)
        for o in opts
    ]
    t = max(len(c) + len(e) for c, e in seqs)
    batch = np.random.default_rng(0).integers(0, 256, (len(seqs), t)).astype(np.int32)
    for i, (c, e) in enumerate(seqs):
        batch[i, : len(c) + len(e)] = np.concatenate([c, e])
    logits = np.asarray(model(batch).logits, np.float64)
    logp = logits - special.logsumexp(logits, axis=-1, keepdims=True)
    scores = [
        np.mean([logp[i, len(c) - 1 + j, e[j]] for j in range(len(e))])
        for i, (c, e) in enumerate(seqs)
    ]
    return special.softmax(np.reshape(scores, (len(_CONTEXTS), -1)), axis=1)


def test_loglik_option_probs_match_a_numpy_reference_from_the_models_logits():
    cfg = _tiny_cfg()
    model = mcqa.make_model(cfg, "det", seed=0, max_len=40)
    tok, items = _loglik_items()
    pred = mcqa.predict(model, items, batch_size=2)  # 3 items: a padded last batch
    probs = mcqa.option_probs(pred, letters=None)
    np.testing.assert_allclose(probs, _numpy_loglik_probs(model, tok), rtol=1e-4, atol=1e-6)
    assert pred["outs"]["lengths"].tolist() == [
        [len(o.encode()) for o in opts] for opts in _OPTIONS
    ]
    # the traces of an item cover its K option sequences: [N, K * T, ...]
    n, k, t = items["ids"].shape
    assert pred["layers"][0]["experts"].shape[:2] == (n, k * t)


def test_loglik_option_probs_follow_the_options_when_reordered():
    cfg = _tiny_cfg()
    model = mcqa.make_model(cfg, "det", seed=1, max_len=40)  # a deterministic router
    tok, items = _loglik_items()
    perm = [[2, 0, 3, 1], [1, 3, 0, 2], [3, 2, 1, 0]]
    shuffled = [[opts[j] for j in p] for opts, p in zip(_OPTIONS, perm, strict=True)]
    ids, mask = mcqa_data.encode_continuations(_CONTEXTS, shuffled, tok, max_len=40)
    p0 = mcqa.option_probs(mcqa.predict(model, items, 4), None)
    p1 = mcqa.option_probs(
        mcqa.predict(model, {"ids": ids, "mask": mask}, 4), None
    )
    np.testing.assert_allclose(p1, np.take_along_axis(p0, np.asarray(perm), axis=1), atol=1e-6)


@pytest.mark.parametrize("scoring", ["loglik", "letter"])
def test_one_finetune_step_lowers_the_option_cross_entropy_on_a_fixed_batch(scoring):
    import jax.numpy as jnp
    import optax
    from flax import nnx

    cfg = _tiny_cfg()
    model = mcqa.make_model(cfg, "det", seed=0, max_len=64)
    tok, batch = _loglik_items()
    if scoring == "letter":
        prompts = [mcqa_data.format_prompt(c, o) for c, o in zip(_CONTEXTS, _OPTIONS, strict=True)]
        batch = {"ids": mcqa_data.encode_prompts(prompts, tok, 64)}
    batch["answers"] = np.asarray([0, 2, 3], np.int32)
    letters = mcqa_data.letter_ids(tok, 4)

    def option_ce():
        outs, _ = mcqa.option_outputs(model, batch)
        scores = mcqa.option_scores(outs, jnp.asarray(letters))
        ce = optax.softmax_cross_entropy_with_integer_labels(scores, batch["answers"])
        return float(ce.mean())

    _, mcqa_step = mcqa._steps("all", tok.pad)
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    before = option_ce()
    mcqa_step(model, optimizer, batch, letters)
    assert option_ce() < before


def test_unknown_scoring_is_a_value_error_naming_it(tmp_path):
    cfg = config.load_config("configs/vmoer_lm.py:quick", ["experiment.scoring=logprob"])
    with pytest.raises(ValueError, match="experiment.scoring.*'logprob'"):
        vmoer.make_source(cfg, tmp_path)
    with pytest.raises(ValueError, match="experiment.scoring"):
        mcqa_data.build_data(cfg.data, "acc_norm")
    assert set(mcqa_data.SCORINGS) == {"letter", "loglik"}


def test_accuracy_interval_is_statsmodels_wilson_and_the_report_prints_it():
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = vmoer_report.accuracy_interval(0.375, 512)
    ref = proportion_confint(192, 512, alpha=0.05, method="wilson")
    np.testing.assert_allclose((lo, hi), ref, rtol=1e-9)
    per_run = {
        "det": {"0": {"accuracy": 0.375, "ece": 0.2, "wall_s": 10.0, "cpu_s": 18.0}},
        "mfvr": {"0": {"accuracy": 0.4, "ece": 0.1, "wall_s": 12.0, "cpu_s": 20.0}},
    }
    out = {
        "per_run": per_run,
        "table": seeds.band_table(per_run, vmoer_sources.MCQA_METRICS, vmoer_sources.MCQA_LOWER),
        "markdown": "TABLE",
        "config": {"data": {"n_eval_items": 512}},
        "scoring": "loglik",
        "runs_wall_s": 22.0,
        "runs_cpu_s": 38.0,
    }
    text = vmoer_report.report(out)
    assert f"seed 0: 0.375 [{ref[0]:.3f}, {ref[1]:.3f}]" in text
    assert "| mfvr | 12 | 20 |" in text and "TABLE" in text
    assert "mfvr -50.0% (one seed: no band)" in text  # ECE 0.1 vs 0.2


def test_default_beta_grid_reaches_1e6_and_the_report_shows_edges_and_member_steps():
    from routecal.report import vmoer_lm as report

    cfg = config.load_config("configs/vmoer_lm.py")
    assert min(cfg.experiment.beta_grid) <= 1e-6
    run = {"beta": 1e-6, "beta_grid": [1e-6, 1e-5], "beta_calib_nll": [1.0, 1.1],
           "beta_at_edge": "lowest", "warnings": ["beta 1e-06 is the grid's lowest value"]}
    ens = {"members": [{"final_loss": 0.9, "steps": 350, "converged": True},
                       {"final_loss": 1.0, "steps": 1000, "converged": False}]}
    out = {"config": {"experiment": {"stability_sigma": 0.01}},
           "per_run": {"mfvr_retrofit": {"0": run}, "ensemble_retrofit": {"0": ens}}}
    text = "\n".join(report._settings_lines(out, ["mfvr_retrofit", "ensemble_retrofit"]))
    assert "beta 1e-06 **at the grid's lowest value**" in text
    assert "- mfvr_retrofit, seed 0: beta 1e-06 is the grid's lowest value" in text
    assert "0.9000 (350), 1.0000 (1000, not converged)" in text
    assert report.fitted_cell(out["per_run"]["mfvr_retrofit"]) == "beta 1e-06 (grid's lowest)"
    assert report.fitted_cell(out["per_run"]["ensemble_retrofit"]) == (
        "members plateaued 1/2, steps 350-1000")


def test_scratch_ensemble_fits_members_alone_on_det(monkeypatch):
    calls = []

    def fake(copy, fit, *, scratch=False, seed, **kw):
        calls.append((seed, scratch))
        return "model", {"members": []}

    monkeypatch.setattr(router_fit, "fit_ensemble", fake)
    det = mcqa.make_model(_tiny_cfg(), "det", seed=0, max_len=32)
    source = vmoer_sources.DecoderSource(_tiny_cfg(), data={})
    model, log = source.fit("ensemble", 3, lambda: det)
    assert model == "model" and calls == [(3, True)]  # members alone, from the initialiser
    assert log["final_task_loss"] is None and "members" in log
