"""Routing stability (`routecal.models.vmoer.stability`): the paper's protocol (noise at one
layer's input hidden state, that layer's Jaccard) and the all-MoE-inputs option."""

import numpy as np
import pytest
from flax import nnx

from routecal import config
from routecal.models import vmoer
from routecal.training import mcqa

N_LAYERS = 3


def _model(router: str):
    cfg = config.load_config("configs/vmoer_lm.py:quick")
    cfg.model.update(d_model=8, mlp_dim=8, moe_hidden=8, n_layers=N_LAYERS)
    cfg.model.vmoer.head_hidden = 8
    model = mcqa.make_model(cfg, router, seed=0, max_len=24)
    for layer in model.layers:  # sharp routers: the logits dominate the routing noise
        p = layer.mlp.router.proj
        p.kernel[...] = p.kernel[...] * 100
    return model


IDS = np.random.default_rng(0).integers(0, 256, size=(6, 24)).astype(np.int32)


def _experts(m):
    out = m(IDS, return_traces=True)
    return [np.asarray(t["experts"]) for t in out.traces["mlp"]]


@pytest.mark.parametrize("router", ["det", "mfvr"])
@pytest.mark.parametrize("protocol", ["layer_input", "all_moe_inputs"])
def test_stability_is_one_at_every_layer_at_zero_noise(router, protocol):
    out = vmoer.stability(_model(router), _experts, (0.0, 2.0), protocol=protocol)
    assert out["stability_layers_0"] == [1.0] * N_LAYERS and out["stability_0"] == 1.0
    assert len(out["stability_layers_2"]) == N_LAYERS
    assert out["stability_2"] == pytest.approx(np.mean(out["stability_layers_2"]))
    assert 0.0 < out["stability_2"] < 1.0  # noise moves some top-K sets
    assert out["stability_protocol"] == protocol


@pytest.mark.parametrize("router", ["det", "mfvr"])
def test_noise_at_layer_l_leaves_layers_before_l_unchanged(router):
    model = _model(router)
    clean_model = nnx.clone(model)
    vmoer.set_layer_noise(clean_model, 0.0, 0)
    clean = _experts(clean_model)
    for layer in range(N_LAYERS):
        m = nnx.clone(model)
        vmoer.set_layer_noise(m, 5.0, layer, seed=3)
        noisy = _experts(m)
        for j in range(layer):  # layers before the perturbed one: bit-identical routing
            np.testing.assert_array_equal(noisy[j], clean[j])
        assert np.any(noisy[layer] != clean[layer])  # the perturbed layer moves
    # std 0 at every layer is the exact identity: the same experts as no noise module at all
    bare = _experts(nnx.clone(model))
    for a, b in zip(bare, clean, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_protocol_and_layer_raise():
    model = _model("det")
    with pytest.raises(ValueError, match="stability_protocol"):
        vmoer.stability(model, _experts, (0.0,), protocol="every_layer")
    with pytest.raises(ValueError, match="layer"):
        vmoer.set_layer_noise(model, 1.0, N_LAYERS)
