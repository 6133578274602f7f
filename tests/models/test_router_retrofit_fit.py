"""The retrofit pieces the LM study, the digits study and imported checkpoints share:
`routers.baselines.fit_members` / `install_members` (deep-ensemble members fitted alone) and
`routers.swag.collect_from` (SWAG moments over a fitting loop)."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from routecal.models import moe, routers, vmoer
from routecal.models.routers import baselines, swag

CFG = dict(d_model=4, mlp_dim=8, n_experts=3, top_k=2, vmoer_ensemble=3, vmoer_swag_rank=3,
           vmoer_samples=4, vmoer_swag_start=0.5)
X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 4)), jnp.float32)


def _layer(name: str, seed: int = 0) -> moe.MoEMLP:
    cfg = vmoer.VMoERConfig(**CFG)
    return moe.MoEMLP(cfg, router=routers.make(cfg, name, rngs=nnx.Rngs(seed)),
                      rngs=nnx.Rngs(seed + 1))


PROJ = nnx.PathContains("proj")


@nnx.jit
def _step(model, opt, target):
    def loss(m):
        y, aux, _ = m(X, train=True)
        return jnp.mean(jnp.square(y - target)) + sum(aux.values())

    value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, PROJ))(model)
    opt.update(model, grads)
    return value


def _sgd(model: moe.MoEMLP, steps: int, target: float, on_step=None) -> list[float]:
    """`steps` SGD steps of `router/proj` on a toy regression; returns the losses."""
    opt = nnx.Optimizer(model, optax.sgd(0.5), wrt=PROJ)
    losses = []
    for i in range(steps):
        losses.append(float(_step(model, opt, jnp.float32(target))))
        if on_step is not None:
            on_step(i)
    return losses


def test_members_are_fitted_alone_from_perturbed_det_and_installed():
    det = _layer("det")
    w_det = np.asarray(det.router.proj.kernel[...], np.float64)
    starts, seen = [], []

    def make_member():
        return nnx.clone(det)

    def fit_member(member, m):
        starts.append(np.asarray(member.router.proj.kernel[...], np.float64))
        seen.append(id(member))
        return _sgd(member, 4 + m, target=1.0 + m)  # its own objective's run, own length

    kernels, logs = baselines.fit_members(make_member, fit_member, 3, 0.1, seed=7)
    assert len(set(seen)) == 3  # a fresh model per member: fitted alone
    for m in range(3):  # start = det + N(0, 0.1^2) from numpy seed (7, m)
        want = w_det + 0.1 * np.random.default_rng([7, m]).standard_normal(w_det.shape)
        np.testing.assert_allclose(starts[m], want, rtol=1e-5, atol=1e-6)
        assert logs[m]["seed"] == [7, m] and logs[m]["steps"] == 4 + m
        assert len(logs[m]["losses"]) == 4 + m and np.all(np.isfinite(logs[m]["losses"]))
        assert logs[m]["final_loss"] == pytest.approx(np.mean(logs[m]["losses"][-10:]))
        assert not np.allclose(np.asarray(kernels[m][0]), starts[m])  # it trained
    assert np.abs(np.asarray(kernels[0][0]) - np.asarray(kernels[1][0])).max() > 1e-3

    ens = _layer("ensemble")
    baselines.install_members(ens, kernels)
    u = np.asarray(X, np.float64)
    got = np.asarray(ens.router.member_logits(X), np.float64)  # [M, B, T, E]
    for m in range(3):  # numpy reference: member m's logits are u @ W_m
        np.testing.assert_allclose(got[m], u @ np.asarray(kernels[m][0]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="kernels"):
        baselines.install_members(ens, kernels[:2])
    with pytest.raises(ValueError, match="ensemble router"):
        baselines.install_members(det, kernels)
    with pytest.raises(ValueError, match="vmoer_ensemble"):
        baselines.fit_members(make_member, fit_member, 1, 0.1, seed=0)


def test_converged_flags_a_plateau_only():
    assert baselines.converged([5.0] * 10 + [1.0] * 20)
    assert not baselines.converged(list(np.linspace(5.0, 1.0, 30)))
    assert not baselines.converged([1.0])


def test_collect_from_starts_at_swag_start_and_makes_swag_differ_from_det():
    layer = _layer("swag")
    det = moe.TopKRouter(vmoer.VMoERConfig(**CFG), rngs=nnx.Rngs(0))
    det.proj.kernel[...] = layer.router.proj.kernel[...]
    # before moments the SWAG router is the deterministic one
    np.testing.assert_allclose(layer.router(X).probs_BxTxE, det(X).probs_BxTxE, rtol=1e-6)
    collector = swag.collect_from(layer, 8)
    with pytest.raises(ValueError, match="no iterate"):
        collector.install()  # nothing collected yet: it would act as det
    traj = []
    _sgd(layer, 8, 1.0, on_step=lambda i: (collector.hook(i),
                                            traj.append(np.asarray(layer.router.proj.kernel[...]))))
    assert collector.states[0].n == 4  # steps 4..7 of 8 (vmoer_swag_start 0.5)
    np.testing.assert_allclose(collector.states[0].mean, np.mean(traj[4:], 0), rtol=1e-5)
    collector.install()
    det.proj.kernel[...] = layer.router.proj.kernel[...]  # the last iterate
    out = layer.router(X)
    assert float(jnp.min(out.trace["router_logit_var"])) > 0
    assert np.abs(np.asarray(out.probs_BxTxE) - np.asarray(det(X).probs_BxTxE)).max() > 1e-4
