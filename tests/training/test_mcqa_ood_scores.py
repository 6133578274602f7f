"""Issue 24 item 1: every OOD score the config names is in the output for every source (a
decoder trained here, its left-padded prompts, and an imported checkpoint, right-padded prompts
read at their own last token with a token mask; both scored by `training.mcqa.evaluate`), the
router-logit variance is read from the key the routers emit (`router_logit_var`), and an
unknown trace key raises."""

import numpy as np
import pytest

from routecal import config
from routecal.stats import uncertainty
from routecal.training import mcqa

N, T = 8, 16
LETTERS = np.array([65, 66, 67, 68], np.int32)


def _cfg():
    cfg = config.load_config("configs/vmoer_lm.py:quick")
    cfg.model.update(d_model=8, mlp_dim=8, moe_hidden=8)
    cfg.model.vmoer.head_hidden = 8
    cfg.experiment.update(sigmas=(0.01,), stability_sigma=0.01, stability_items=4,
                          mc_samples=2, eval_batch_size=4)  # fmt: skip
    return cfg


def _prompts(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(N, T)).astype(np.int32)


def _own_source(model, cfg):
    splits = {s: {"ids": _prompts(i), "answers": np.arange(N) % 4}
              for i, s in enumerate(("train", "in", "near", "far"))}  # fmt: skip
    return mcqa.evaluate(model, splits, LETTERS, cfg.experiment, seed=0)


def _imported_source(model, cfg):
    splits = {s: {"ids": _prompts(i), "position": np.full(N, T - 1, np.int32),
                  "token_mask": np.ones((N, T), np.float32), "answers": np.arange(N) % 4}
              for i, s in enumerate(("in", "near", "far"))}  # fmt: skip
    pred = mcqa.predict(model, splits["in"], 4)
    e = config.load_config("configs/vmoer_pretrained.py").experiment
    e.update(sigmas=(0.01,), mc_samples=2, eval_batch_size=4)
    return mcqa.evaluate(model, splits, LETTERS, e, seed=0), pred


@pytest.mark.parametrize("router", ["det", "mfvr"])
def test_every_configured_ood_score_is_in_the_output_of_every_source(router):
    cfg = _cfg()
    names = tuple(cfg.experiment.ood_scores)
    assert "router_logit_variance" in names
    model = mcqa.make_model(cfg, router, seed=0, max_len=T)
    own = _own_source(model, cfg)
    imported, pred = _imported_source(model, cfg)
    for res in (own, imported):
        for dom in ("near", "far"):
            for name in names:
                assert 0.0 <= res[f"ood_auroc_{dom}_{name}"] <= 1.0, (dom, name)
        assert res["stability_protocol"] == "layer_input"
        assert len(res["stability_layers_0.01"]) == cfg.model.n_layers
    # the imported path reads the variance its routers emit (the bug read "router_var")
    emitted = all("router_logit_var" in t for t in pred["layers"])
    assert emitted == (router == "mfvr")
    if router == "mfvr":
        var = [t["router_logit_var"] for t in pred["layers"]]
        assert min(float(np.min(v)) for v in var) > 0


def test_unknown_trace_key_and_ood_score_raise():
    with pytest.raises(ValueError, match="router_var"):
        mcqa.keep_traces([{"experts": np.zeros((1, 1, 1))}], ("router_var",))
    with pytest.raises(ValueError, match="ood_scores"):
        uncertainty.moe_ood_scores(("router_var",), np.full((2, 4), 0.25), [], None)
