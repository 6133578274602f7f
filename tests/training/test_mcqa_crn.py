"""Common random numbers across an MCQA item's options (`vmoer.set_common_noise`): a stochastic
router scores a question whose options are identical as uniform."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from routecal import config
from routecal.models import routers, vmoer
from routecal.models.routers import swag
from routecal.training import mcqa

K, T = 4, 12


def _model(router: str):
    cfg = config.load_config("configs/vmoer_lm.py:quick")
    cfg.model.update(d_model=8, mlp_dim=8, moe_hidden=8)
    cfg.model.vmoer.update(head_hidden=8, init_sigma=3.0, dropout=0.5, swag_rank=2)
    model = mcqa.make_model(cfg, router, seed=0, max_len=T)
    for r in swag.swag_routers(model):  # SWAG is stochastic only once it has moments
        r.vrouter.sq_mean[...] = jnp.ones_like(r.vrouter.sq_mean[...])
        r.vrouter.n[...] = jnp.asarray(1.0)
    return model


def _identical_options_batch():
    """2 items; each item's K options are the same sequence (a different one per item)."""
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 256, size=(2, 1, T)).astype(np.int32)
    mask = np.zeros((2, K, T - 1), np.float32)
    mask[..., T // 2 :] = 1.0
    return {"ids": jnp.asarray(np.repeat(seq, K, axis=1)), "mask": jnp.asarray(mask)}


def _option_probs(model) -> np.ndarray:
    outs, _ = mcqa.option_outputs(model, _identical_options_batch())
    return np.asarray(jax.nn.softmax(mcqa.option_scores(outs, None), axis=-1))


@pytest.mark.parametrize("router", [n for n in routers.ROUTERS if n != "det"])
def test_identical_options_are_scored_uniform_under_common_random_numbers(router):
    model = _model(router)
    assert vmoer.set_common_noise(model, K) > 0
    for sample in (False, True):  # S-sample inference and one draw per pass
        vmoer.set_router_sampling(model, sample)
        np.testing.assert_allclose(_option_probs(model), 1.0 / K, rtol=1e-5)


@pytest.mark.slow  # the control of the test above (one compile per router)
@pytest.mark.parametrize("router", ["mfvr", "vtsr", "mc_dropout", "ensemble"])
def test_independent_draws_do_not_score_identical_options_uniform(router):
    """The control: without common random numbers each option gets its own routing draw."""
    model = _model(router)
    vmoer.set_common_noise(model, 1)
    vmoer.set_router_sampling(model, True)
    assert np.abs(_option_probs(model) - 1.0 / K).max() > 1e-4


def test_bad_group_raises():
    with pytest.raises(ValueError, match="group"):
        vmoer.set_common_noise(_model("mfvr"), 0)
