"""Tests for routecal.models.vmoer: KL closed form, Gumbel-top-k, temperature guard, reductions."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from routecal.models import moe, vmoer

CFG = dict(d_model=8, mlp_dim=8, n_experts=4, top_k=2, capacity_factor=0.0)


def _fwd(model, x, train=False):
    return nnx.jit(lambda m, x: m(x, train=train))(model, x)


def _kl_full_cov_numpy(delta, sigma, v, prior_sigma):
    """Textbook KL(N(d, Sq) || N(0, sp^2 I)) with dense matrices and slogdet."""
    e = len(delta)
    sq = np.diag(sigma**2) + (v @ v.T if v is not None else 0)
    sp = prior_sigma**2 * np.eye(e)
    sp_inv = np.linalg.inv(sp)
    return 0.5 * (
        np.trace(sp_inv @ sq)
        + delta @ sp_inv @ delta
        - e
        + np.linalg.slogdet(sp)[1]
        - np.linalg.slogdet(sq)[1]
    )


@pytest.mark.parametrize("rank", [0, 2])
def test_gaussian_kl_matches_closed_form(rank):
    rng = np.random.default_rng(0)
    b, t, e = 2, 3, 5
    delta = rng.normal(size=(b, t, e))
    sigma = rng.uniform(0.1, 2.0, size=(b, t, e))
    v = rng.normal(size=(b, t, e, rank)) * 0.5 if rank else None
    got = vmoer.gaussian_kl(
        jnp.asarray(delta, jnp.float32),
        jnp.asarray(sigma, jnp.float32),
        1.7,
        None if v is None else jnp.asarray(v, jnp.float32),
    )
    ref = np.array(
        [
            [
                _kl_full_cov_numpy(delta[i, j], sigma[i, j], None if v is None else v[i, j], 1.7)
                for j in range(t)
            ]
            for i in range(b)
        ]
    )
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-5)


def test_kl_is_zero_at_the_prior():
    kl = vmoer.gaussian_kl(jnp.zeros((1, 1, 3)), jnp.full((1, 1, 3), 0.5), 0.5)
    np.testing.assert_allclose(kl, 0.0, atol=1e-6)


def _plackett_luce_inclusion(p, k):
    """Exact P(e in sample) for sequential sampling of k items without replacement."""
    incl = np.zeros(len(p))
    for seq in itertools.permutations(range(len(p)), k):
        prob, rest = 1.0, 1.0
        for i in seq:
            prob *= p[i] / rest
            rest -= p[i]
        incl[list(seq)] += prob
    return incl


def test_gumbel_top_k_inclusion_frequencies():
    p = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    k, n = 3, 20000
    idx = np.asarray(
        vmoer.gumbel_top_k(jax.random.key(3), jnp.log(jnp.tile(jnp.asarray(p), (n, 1))), k)
    )
    assert idx.shape == (n, k)
    # k distinct experts per draw
    assert all(len(set(row)) == k for row in idx[:2000])
    assert np.all(np.sort(idx, axis=1)[:, 1:] != np.sort(idx, axis=1)[:, :-1])
    freq = np.bincount(idx.ravel(), minlength=5) / n
    exact = _plackett_luce_inclusion(p, k)
    # numpy simulation of sequential sampling without replacement
    rng = np.random.default_rng(0)
    sim = np.zeros(5)
    for _ in range(5000):
        sim[rng.choice(5, size=k, replace=False, p=p)] += 1
    sim /= 5000
    np.testing.assert_allclose(sim, exact, atol=0.03)
    # sd of a frequency <= sqrt(.25 / 20000) = .0035; 0.015 is > 4 sd
    np.testing.assert_allclose(freq, exact, atol=0.015)
    # the first draw is categorical(p): chi-square goodness of fit
    first = np.bincount(idx[:, 0], minlength=5)
    assert stats.chisquare(first, n * p).pvalue > 1e-3


def test_temperature_initialised_at_one_and_stays_positive():
    cfg = vmoer.VMoERConfig(**CFG, vmoer_min_temperature=0.05)
    router = vmoer.TemperatureRouter(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 3, 8)) * 10
    np.testing.assert_allclose(router.temperature(x), 1.0, rtol=1e-6)
    # adversarial head: huge negative weights drive softplus to 0; the floor keeps T > 0
    router.vrouter.temp.kernel[...] = jnp.full((8, 1), -1e6)
    router.vrouter.temp.bias[...] = jnp.full((1,), -1e6)
    xs = jnp.abs(x) + 1.0
    temp = router.temperature(xs)
    assert float(temp.min()) >= 0.05 and np.all(np.isfinite(temp))

    @nnx.jit
    def run(r):
        out = r(xs, train=True)
        g = nnx.grad(lambda r: jnp.sum(r(xs, train=False).gates_BxTxK))(r)
        return out, g

    out, g = run(router)
    assert np.all(np.isfinite(out.probs_BxTxE)) and np.all(np.isfinite(out.gates_BxTxK))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(g))


def _det_and_vmoer(router_type, **extra):
    det = moe.MoEMLP(moe.MoEConfig(**CFG), rngs=nnx.Rngs(0))
    det.router.proj.kernel[...] = det.router.proj.kernel[...] * 50
    vm = vmoer.VMoEMLP(vmoer.VMoERConfig(**CFG, **extra), router_type=router_type, rngs=nnx.Rngs(1))
    vmoer.retrofit_from(vm, det)
    return det, vm


def test_logit_router_reduces_to_deterministic_as_sigma_to_zero():
    det, vm = _det_and_vmoer("logit", vmoer_sigma_min=0.0, vmoer_init_sigma=1e-12)
    x = jax.random.normal(jax.random.key(2), (2, 5, 8))
    y_d, aux_d, tr_d = _fwd(det, x)
    # inference (S-sample average) and training (one reparameterised sample) in one compile
    outs = nnx.jit(lambda m, x: (m(x, train=False), m(x, train=True)))(vm, x)
    for y_v, aux_v, tr_v in outs:
        np.testing.assert_array_equal(tr_v["experts"], tr_d["experts"])
        np.testing.assert_allclose(tr_v["router_probs"], tr_d["router_probs"], atol=1e-6)
        np.testing.assert_allclose(y_v, y_d, atol=1e-5)
        np.testing.assert_allclose(aux_v["moe_z"], aux_d["moe_z"], rtol=1e-6)
        assert "vmoer_kl" in aux_v


@pytest.mark.parametrize("sample", [False, True])
def test_temperature_router_at_t1_reduces_to_deterministic(sample):
    det, vm = _det_and_vmoer("temp")
    x = jax.random.normal(jax.random.key(2), (2, 5, 8))
    y_d, _, tr_d = _fwd(det, x)
    vmoer.set_router_sampling(vm, sample)
    y_v, aux_v, tr_v = _fwd(vm, x)
    np.testing.assert_allclose(tr_v["router_probs"], tr_d["router_probs"], atol=1e-6)
    np.testing.assert_allclose(tr_v["temperature"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(aux_v["vmoer_temp_prior"], 0.0, atol=1e-10)
    if not sample:
        np.testing.assert_array_equal(tr_v["experts"], tr_d["experts"])
        np.testing.assert_allclose(y_v, y_d, atol=1e-5)
    else:
        # sampled experts are distinct and gates are the probabilities of the sampled experts
        ex = np.asarray(tr_v["experts"])
        assert np.all(ex[..., 0] != ex[..., 1])
        np.testing.assert_allclose(
            tr_v["gates"], np.take_along_axis(np.asarray(tr_d["router_probs"]), ex, -1), atol=1e-6
        )


def test_logit_router_kl_and_inference_averaging():
    det, vm = _det_and_vmoer("logit", vmoer_init_sigma=0.5, vmoer_beta=0.1, vmoer_samples=64)
    x = jax.random.normal(jax.random.key(2), (1, 3, 8))
    _, aux, tr = _fwd(vm, x)
    # delta_mu = 0 at init and sigma = .5 everywhere: KL per token = .5 * E * (s^2 - 1 - log s^2)
    kl = 0.5 * 4 * (0.25 - 1 - np.log(0.25))
    np.testing.assert_allclose(aux["vmoer_kl"], 0.1 * kl, rtol=1e-4)
    # inference probs = mean over S samples of softmax(mu + sigma eps): a Monte-Carlo check
    mu = np.asarray(det.router.logits(x))
    eps = np.random.default_rng(0).normal(size=(20000, *mu.shape))
    l = mu + 0.5 * eps
    ref = np.mean(np.exp(l) / np.exp(l).sum(-1, keepdims=True), axis=0)
    np.testing.assert_allclose(tr["router_probs"], ref, atol=0.06)
    assert not np.allclose(tr["router_probs"], tr["router_probs"] * 0 + 0.25)


def test_retrofit_param_names_and_bad_retrofit():
    _, vm = _det_and_vmoer("logit", vmoer_rank=2)
    names = vmoer.router_posterior_param_names(vm)
    assert names and all("vrouter" in n for n in names)
    assert any("lowrank" in n for n in names) and any("delta_mu" in n for n in names)
    assert not any("proj" in n or "experts" in n for n in names)
    other = moe.MoEMLP(moe.MoEConfig(**{**CFG, "n_experts": 3}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shape mismatch"):
        vmoer.retrofit_from(vm, other)


def test_bad_router_options_raise():
    with pytest.raises(ValueError, match="vmoer_min_temperature"):
        vmoer.TemperatureRouter(
            vmoer.VMoERConfig(**CFG, vmoer_min_temperature=0.0), rngs=nnx.Rngs(0)
        )
    with pytest.raises(ValueError, match="router_type"):
        vmoer.VMoEMLP(vmoer.VMoERConfig(**CFG), router_type="full", rngs=nnx.Rngs(0))
