"""Tests for routecal.models.vmoer (the model-level front): reductions to the deterministic MoE
after a retrofit, S-sample averaging, hidden-state noise, retrofit parameter selection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from routecal.models import moe, routers, vmoer

CFG = dict(d_model=8, mlp_dim=8, n_experts=4, top_k=2, capacity_factor=0.0)


def _det_and_vmoer(router_type, **extra):
    det = moe.MoEMLP(moe.MoEConfig(**CFG), rngs=nnx.Rngs(0))
    det.router.proj.kernel[...] = det.router.proj.kernel[...] * 50
    vm = vmoer.VMoEMLP(vmoer.VMoERConfig(**CFG, **extra), router_type=router_type, rngs=nnx.Rngs(1))
    vmoer.retrofit_from(vm, det)
    return det, vm


@pytest.mark.parametrize("name", ["mfvr", "fcvr", "lowrank"])
def test_logit_routers_reduce_to_deterministic_as_sigma_to_zero(name):
    det, vm = _det_and_vmoer(name, vmoer_init_sigma=1e-12, vmoer_sigma_min=0.0)
    x = jax.random.normal(jax.random.key(2), (2, 5, 8))
    y_d, aux_d, tr_d = det(x)
    if name == "lowrank":  # V starts small but non-zero: zero it for the limit
        vm.router.vrouter.lowrank.kernel[...] = jnp.zeros_like(
            vm.router.vrouter.lowrank.kernel[...]
        )
    for train in (False, True):
        y_v, aux_v, tr_v = vm(x, train=train)
        np.testing.assert_array_equal(tr_v["experts"], tr_d["experts"])
        np.testing.assert_allclose(tr_v["router_probs"], tr_d["router_probs"], atol=1e-6)
        np.testing.assert_allclose(y_v, y_d, atol=1e-5)
        np.testing.assert_allclose(aux_v["moe_z"], aux_d["moe_z"], rtol=1e-6)


def test_vtsr_mean_inference_at_t1_reduces_to_deterministic():
    det, vm = _det_and_vmoer("vtsr", vmoer_vtsr_inference="mean")
    x = jax.random.normal(jax.random.key(2), (2, 5, 8))
    y_d, _, tr_d = det(x)
    y_v, _, tr_v = vm(x)
    np.testing.assert_array_equal(tr_v["experts"], tr_d["experts"])
    np.testing.assert_allclose(y_v, y_d, atol=1e-5)
    # with sampling on, the gates are the probabilities of the sampled experts
    vmoer.set_router_sampling(vm, True)
    _, _, tr_s = vm(x)
    ex = np.asarray(tr_s["experts"])
    np.testing.assert_allclose(
        tr_s["gates"], np.take_along_axis(np.asarray(tr_d["router_probs"]), ex, -1), atol=1e-6
    )


def test_mfvr_kl_at_init_and_inference_averaging():
    det, vm = _det_and_vmoer("mfvr", vmoer_init_sigma=0.5, vmoer_beta=0.1, vmoer_samples=64)
    x = jax.random.normal(jax.random.key(2), (1, 3, 8))
    _, aux, tr = vm(x)
    # delta_mu = 0 and sigma = .5 at init: KL per token = .5 * E * (s^2 - 1 - log s^2)
    kl = 0.5 * 4 * (0.25 - 1 - np.log(0.25))
    np.testing.assert_allclose(aux["vmoer_kl"], 0.1 * kl, rtol=1e-4)
    np.testing.assert_allclose(tr["router_logit_var"], 0.25, rtol=1e-5)
    # inference probs = mean over S samples of softmax(mu + sigma eps): a Monte-Carlo check
    mu = np.asarray(det.router.logits(x))
    eps = np.random.default_rng(0).normal(size=(20000, *mu.shape))
    l = mu + 0.5 * eps
    ref = np.mean(np.exp(l) / np.exp(l).sum(-1, keepdims=True), axis=0)
    np.testing.assert_allclose(tr["router_probs"], ref, atol=0.06)


def test_hidden_noise_is_off_at_zero_and_changes_routing_when_on():
    det, _ = _det_and_vmoer("mfvr")
    x = jax.random.normal(jax.random.key(3), (2, 6, 8))
    _, _, clean = det(x)
    assert vmoer.set_hidden_noise(det, 0.0) == 1 and det.input_noise is None
    np.testing.assert_array_equal(det(x)[2]["experts"], clean["experts"])
    vmoer.set_hidden_noise(det, 5.0, seed=1)
    assert not np.array_equal(det(x)[2]["experts"], clean["experts"])
    vmoer.set_hidden_noise(det, None)
    np.testing.assert_array_equal(det(x)[2]["experts"], clean["experts"])
    with pytest.raises(ValueError, match="std"):
        vmoer.set_hidden_noise(det, -1.0)


@pytest.mark.parametrize("name", ["mfvr", "fcvr", "lowrank", "vtsr", "ensemble", "mc_dropout"])
def test_retrofit_param_names(name):
    _, vm = _det_and_vmoer(name)
    names = vmoer.router_posterior_param_names(vm, name)
    assert names and not any("experts" in n for n in names)
    if name == "mc_dropout":
        assert names == ["router/proj/kernel"]
    else:
        assert all(n.split("/")[1] == "vrouter" for n in names)
    assert vmoer.router_posterior_param_names(vm, "fixed_temp") == []


def test_bad_retrofit_and_router_names():
    _, vm = _det_and_vmoer("mfvr")
    other = moe.MoEMLP(moe.MoEConfig(**{**CFG, "n_experts": 3}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shape mismatch"):
        vmoer.retrofit_from(vm, other)
    with pytest.raises(ValueError, match="router_type"):
        vmoer.VMoEMLP(vmoer.VMoERConfig(**CFG), router_type="det", rngs=nnx.Rngs(0))
    # issue 21: one vocabulary; an old name raises naming its new one
    for old, new in (("logit", "mfvr"), ("temp", "vtsr")):
        with pytest.raises(ValueError, match=f"use '{new}'"):
            routers.canonical(old)
        with pytest.raises(ValueError, match=f"use '{new}'"):
            routers.split_method(f"{old}_retrofit")
    assert routers.split_method("swag_retrofit") == ("swag", True)
    from routecal.models.transformer import ModelConfig

    with pytest.raises(ValueError, match="'vmoer_mfvr'"):
        ModelConfig(seq_len=4, token_dim=2, num_classes=2, mlp_type="vmoer_logit")


def test_transformer_mlp_types_cover_the_registry():
    from routecal.models import transformer

    types = {t.removeprefix("vmoer_") for t in transformer.MLP_TYPES if t.startswith("vmoer_")}
    assert types == set(routers.ROUTERS) - {"det"}
