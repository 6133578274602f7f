"""SWAG router (`routecal.models.routers.swag`): moments against numpy on a recorded trajectory,
the sampler's covariance against its closed form, inference before / after moments."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from routecal.models import moe, routers, vmoer
from routecal.models.routers import swag

CFG = dict(d_model=4, mlp_dim=8, n_experts=3, top_k=2, vmoer_swag_rank=3, vmoer_samples=4)


def test_moments_match_numpy_on_a_recorded_sgd_trajectory():
    cfg = vmoer.VMoERConfig(**CFG)
    model = moe.MoEMLP(cfg, router=routers.make(cfg, "swag", rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 4)), jnp.float32)
    opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss(m):
            y, aux, _ = m(x, train=True)
            return jnp.mean(jnp.square(y - 1.0)) + sum(aux.values())

        opt.update(model, nnx.grad(loss)(model))

    collector = swag.SwagCollector(model)
    traj = []
    for _ in range(7):
        step(model, opt)
        collector()
        traj.append(np.asarray(model.router.proj.kernel[...], np.float64))
    traj = np.stack(traj)  # [n, D, E]
    assert np.ptp(traj, axis=0).max() > 1e-4  # the weights did move
    s = collector.states[0]
    assert s.n == 7
    np.testing.assert_allclose(s.mean, traj.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s.sq_mean, np.mean(traj**2, 0), rtol=1e-10, atol=1e-12)
    # D_hat: theta_i - running mean at i, the last K = 3 iterates, oldest first (Maddox Alg. 1)
    want = np.stack([traj[i] - traj[: i + 1].mean(0) for i in range(4, 7)])
    np.testing.assert_allclose(s.dev, want, rtol=1e-10, atol=1e-12)
    collector.install()
    np.testing.assert_allclose(model.router.vrouter.mean[...], traj.mean(0), rtol=1e-5)
    assert float(model.router.vrouter.n[...]) == 7


def test_weight_samples_have_the_swag_covariance():
    cfg = vmoer.VMoERConfig(**{**CFG, "d_model": 2, "n_experts": 2})
    r = routers.make(cfg, "swag", rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    mean, var = rng.normal(size=(2, 2)), rng.uniform(0.5, 2.0, size=(2, 2))
    dev = rng.normal(size=(3, 2, 2))
    r.vrouter.mean[...] = jnp.asarray(mean, jnp.float32)
    r.vrouter.sq_mean[...] = jnp.asarray(var + mean**2, jnp.float32)
    r.vrouter.dev[...] = jnp.asarray(dev, jnp.float32)
    r.vrouter.n[...] = jnp.asarray(5.0)
    w = np.asarray(r.weight_samples(40_000), np.float64).reshape(40_000, -1)
    # closed form: Sigma = diag(var) / 2 + D D^T / (2 (K - 1)), D [P, K]
    d = dev.reshape(3, -1).T
    sigma = np.diag(var.ravel()) / 2 + d @ d.T / (2 * (3 - 1))
    np.testing.assert_allclose(w.mean(0), mean.ravel(), atol=0.03)
    np.testing.assert_allclose(np.cov(w.T), sigma, atol=0.05 * np.abs(sigma).max())


def test_router_is_deterministic_before_moments_and_stochastic_after():
    cfg = vmoer.VMoERConfig(**CFG)
    r = routers.make(cfg, "swag", rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 4)), jnp.float32)
    det = moe.TopKRouter(cfg, rngs=nnx.Rngs(0))
    det.proj.kernel[...] = r.proj.kernel[...]
    out = r(x)
    np.testing.assert_allclose(out.probs_BxTxE, det(x).probs_BxTxE, rtol=1e-6)
    np.testing.assert_allclose(out.trace["router_logit_var"], 0.0, atol=1e-12)
    r.vrouter.sq_mean[...] = jnp.ones((4, 3))
    r.vrouter.n[...] = jnp.asarray(1.0)
    assert float(jnp.min(r(x).trace["router_logit_var"])) > 0
    with pytest.raises(ValueError, match="vmoer_swag_rank"):
        routers.make(vmoer.VMoERConfig(**{**CFG, "vmoer_swag_rank": 1}), "swag", rngs=nnx.Rngs(0))
