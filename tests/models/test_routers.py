"""Tests for routecal.models.routers: FCVR KL (numpy closed form and Monte Carlo), FCVR = MFVR at
zero off-diagonals, Sample-K vs the Plackett-Luce law, VTSR as T -> 0, the baselines."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from routecal.models import moe, routers, vmoer
from routecal.models.routers import gaussian, selection

CFG = dict(d_model=8, mlp_dim=8, n_experts=4, top_k=2, capacity_factor=0.0)


def _kl_numpy(delta, cov, prior_sigma):
    """Textbook KL(N(d, S) || N(0, s^2 I)) from dense matrices (inverse, trace, slogdet)."""
    e = len(delta)
    sp = prior_sigma**2 * np.eye(e)
    sp_inv = np.linalg.inv(sp)
    return 0.5 * (
        np.trace(sp_inv @ cov)
        + delta @ sp_inv @ delta
        - e
        + np.linalg.slogdet(sp)[1]
        - np.linalg.slogdet(cov)[1]
    )


def _random_cholesky(rng, b, t, e):
    sigma = rng.uniform(0.2, 1.5, size=(b, t, e))
    off = rng.normal(size=(b, t, e * (e - 1) // 2)) * 0.4
    chol = np.asarray(gaussian.cholesky_factor(jnp.asarray(sigma), jnp.asarray(off)))
    return sigma, off, chol


def test_cholesky_factor_layout():
    sigma = np.array([[[1.0, 2.0, 3.0]]])
    off = np.array([[[4.0, 5.0, 6.0]]])
    chol = np.asarray(gaussian.cholesky_factor(jnp.asarray(sigma), jnp.asarray(off)))[0, 0]
    np.testing.assert_array_equal(chol, [[1, 0, 0], [4, 2, 0], [5, 6, 3]])


@pytest.mark.parametrize("prior_sigma", [1.0, 1.7])
def test_fcvr_kl_matches_numpy_closed_form(prior_sigma):
    rng = np.random.default_rng(0)
    b, t, e = 2, 3, 5
    delta = rng.normal(size=(b, t, e))
    _, _, chol = _random_cholesky(rng, b, t, e)
    got = np.asarray(gaussian.kl_cholesky(jnp.asarray(delta), jnp.asarray(chol), prior_sigma))
    ref = np.array(
        [
            [_kl_numpy(delta[i, j], chol[i, j] @ chol[i, j].T, prior_sigma) for j in range(t)]
            for i in range(b)
        ]
    )
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_fcvr_kl_matches_monte_carlo():
    """KL = E_q[log q(l) - log p(l)], estimated with scipy densities from 200k samples of q."""
    rng = np.random.default_rng(1)
    e = 4
    delta = rng.normal(size=e) * 0.7
    _, _, chol = _random_cholesky(rng, 1, 1, e)
    cov = chol[0, 0] @ chol[0, 0].T
    kl = float(gaussian.kl_cholesky(jnp.asarray(delta)[None, None], jnp.asarray(chol))[0, 0])
    q = stats.multivariate_normal(delta, cov)
    p = stats.multivariate_normal(np.zeros(e), np.eye(e))
    x = q.rvs(size=200_000, random_state=rng)
    terms = q.logpdf(x) - p.logpdf(x)
    se = terms.std() / np.sqrt(len(terms))
    assert abs(terms.mean() - kl) < 4 * se, (terms.mean(), kl, se)


@pytest.mark.parametrize("rank", [1, 3])
def test_lowrank_kl_matches_numpy_closed_form(rank):
    rng = np.random.default_rng(2)
    b, t, e = 2, 2, 5
    delta = rng.normal(size=(b, t, e))
    sigma = rng.uniform(0.1, 2.0, size=(b, t, e))
    v = rng.normal(size=(b, t, e, rank)) * 0.5
    got = np.asarray(gaussian.kl_lowrank(*map(jnp.asarray, (delta, sigma, v)), 1.3))
    ref = [
        [
            _kl_numpy(delta[i, j], np.diag(sigma[i, j] ** 2) + v[i, j] @ v[i, j].T, 1.3)
            for j in range(t)
        ]
        for i in range(b)
    ]
    np.testing.assert_allclose(got, np.array(ref), rtol=1e-4, atol=1e-5)


def _router_pair(name_a, name_b, **extra):
    cfg = vmoer.VMoERConfig(**CFG, **extra)
    a = routers.make(cfg, name_a, rngs=nnx.Rngs(0))
    b = routers.make(cfg, name_b, rngs=nnx.Rngs(0))
    return a, b


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_fcvr_with_zero_offdiagonals_equals_mfvr(head):
    mf, fc = _router_pair("mfvr", "fcvr", vmoer_head=head)
    # same deterministic router and shared heads; random (non-zero) posterior heads
    rng = np.random.default_rng(3)
    for r in (mf, fc):
        r.proj.kernel[...] = jnp.asarray(rng.normal(size=(8, 4)) * 0 + 1.0) * 0.3
    for name in ("delta_mu", "sigma"):
        k = jnp.asarray(rng.normal(size=getattr(mf.vrouter, name).kernel.shape) * 0.3)
        getattr(mf.vrouter, name).kernel[...] = k
        getattr(fc.vrouter, name).kernel[...] = k
    if head == "mlp":
        fc.vrouter.trunk.hidden.kernel[...] = mf.vrouter.trunk.hidden.kernel[...]
    assert np.all(np.asarray(fc.vrouter.offdiag.kernel[...]) == 0)
    x = jax.random.normal(jax.random.key(4), (2, 5, 8))
    for train in (False, True):
        oa = mf(x, train=train)
        ob = fc(x, train=train)
        np.testing.assert_allclose(ob.probs_BxTxE, oa.probs_BxTxE, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ob.experts_BxTxK, oa.experts_BxTxK)
        np.testing.assert_allclose(ob.aux["vmoer_kl"], oa.aux["vmoer_kl"], rtol=1e-5)
        np.testing.assert_allclose(
            ob.trace["router_logit_var"], oa.trace["router_logit_var"], rtol=1e-5
        )


def _plackett_luce_inclusion(p, k):
    """Exact P(e in sample) under sequential sampling of k items without replacement."""
    incl = np.zeros(len(p))
    for seq in itertools.permutations(range(len(p)), k):
        prob, rest = 1.0, 1.0
        for i in seq:
            prob *= p[i] / rest
            rest -= p[i]
        incl[list(seq)] += prob
    return incl


def test_sample_k_distinct_and_plackett_luce_inclusion():
    p = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    k, n = 3, 20_000
    logp = jnp.log(jnp.tile(jnp.asarray(p), (n, 1)))
    idx = np.asarray(selection.gumbel_top_k(jax.random.key(3), logp, k))
    assert idx.shape == (n, k)
    s = np.sort(idx, axis=1)
    assert np.all(s[:, 1:] != s[:, :-1])  # K distinct experts in every draw
    exact = _plackett_luce_inclusion(p, k)
    counts = np.bincount(idx.ravel(), minlength=5)
    # per expert: a binomial test of its inclusion count (Bonferroni over 5 experts)
    pvals = [stats.binomtest(int(c), n, q).pvalue for c, q in zip(counts, exact, strict=True)]
    assert min(pvals) > 0.01 / 5, pvals
    # the ordered first draw is categorical(p): chi-square goodness of fit
    assert stats.chisquare(np.bincount(idx[:, 0], minlength=5), n * p).pvalue > 1e-3
    # power: the same tests reject a wrong law (sampling k from uniform probabilities)
    wrong = np.asarray(selection.gumbel_top_k(jax.random.key(4), jnp.zeros((n, 5)), k))
    wc = np.bincount(wrong.ravel(), minlength=5)
    assert min(stats.binomtest(int(c), n, q).pvalue for c, q in zip(wc, exact, strict=True)) < 1e-6


def test_vtsr_router_samples_k_distinct_at_inference_and_t_to_zero_selects_top_k():
    cfg = vmoer.VMoERConfig(**CFG, vmoer_min_temperature=1e-3)
    r = routers.make(cfg, "vtsr", rngs=nnx.Rngs(0))
    r.proj.kernel[...] = r.proj.kernel[...] * 50
    x = jax.random.normal(jax.random.key(1), (4, 16, 8))
    det_top = np.asarray(jax.lax.top_k(r.logits(x), 2)[1])
    # the k-th vs (k+1)-th logit gap, over T = 1e-3, dwarfs any Gumbel difference in 128 tokens
    srt = np.sort(np.asarray(r.logits(x)), -1)
    assert (srt[..., -2] - srt[..., -3]).min() / 1e-3 > 50
    out = r(x)  # inference: Sample-K by default
    ex = np.asarray(out.experts_BxTxK)
    assert np.all(ex[..., 0] != ex[..., 1])
    np.testing.assert_allclose(out.trace["temperature"], 1.0, rtol=1e-6)
    assert not np.array_equal(np.sort(ex, -1), np.sort(det_top, -1))  # T = 1 really samples
    # drive T to its floor 1e-3: s = softmax(l / T) is one-hot and Sample-K returns the top-k
    r.vrouter.temp.bias[...] = jnp.full((1,), -1e4)
    for train in (False, True):
        o = r(x, train=train)
        np.testing.assert_allclose(o.trace["temperature"], 1e-3, rtol=1e-4)
        np.testing.assert_array_equal(np.sort(o.experts_BxTxK, -1), np.sort(det_top, -1))


def test_vtsr_mean_inference_and_regularisers():
    x = jax.random.normal(jax.random.key(2), (2, 3, 8))
    cfg = vmoer.VMoERConfig(**CFG, vmoer_vtsr_inference="mean", vmoer_beta=0.5)
    r = routers.make(cfg, "vtsr", rngs=nnx.Rngs(0))
    out = r(x)
    np.testing.assert_array_equal(out.experts_BxTxK, jax.lax.top_k(r.logits(x), 2)[1])
    # "entropy" regulariser at T = 1: -H(softmax(l_det)), hand-computed with numpy
    p = np.asarray(jax.nn.softmax(r.logits(x)))
    np.testing.assert_allclose(
        out.aux["vmoer_vtsr_reg"], 0.5 * np.mean((p * np.log(p)).sum(-1)), rtol=1e-5
    )
    cfg2 = vmoer.VMoERConfig(**CFG, vmoer_vtsr_reg="lognormal")
    r2 = routers.make(cfg2, "vtsr", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(r2(x).aux["vmoer_vtsr_reg"], 0.0, atol=1e-10)


def test_temperature_stays_positive_and_finite_under_an_adversarial_head():
    cfg = vmoer.VMoERConfig(**CFG, vmoer_min_temperature=0.05, vmoer_head="linear")
    router = routers.make(cfg, "vtsr", rngs=nnx.Rngs(0))
    router.vrouter.temp.kernel[...] = jnp.full((8, 1), -1e6)
    xs = jnp.abs(jax.random.normal(jax.random.key(0), (2, 3, 8))) + 1.0
    assert float(router.temperature(xs).min()) >= 0.05

    @nnx.jit
    def run(r):
        return nnx.grad(lambda r: jnp.sum(r(xs, train=True).gates_BxTxK))(r)

    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(run(router)))


def test_fixed_temperature_router_inclusion_matches_plackett_luce():
    cfg = vmoer.VMoERConfig(**CFG, vmoer_fixed_temperature=2.0)
    r = routers.make(cfg, "fixed_temp", rngs=nnx.Rngs(0))
    r.proj.kernel[...] = jnp.asarray(np.random.default_rng(0).normal(size=(8, 4)))
    x = jnp.tile(jax.random.normal(jax.random.key(0), (1, 1, 8)), (1, 4000, 1))
    ex = np.asarray(r(x).experts_BxTxK)[0]
    p = np.asarray(jax.nn.softmax(r.logits(x)[0, 0] / 2.0))
    exact = _plackett_luce_inclusion(p, 2)
    counts = np.bincount(ex.ravel(), minlength=4)
    pv = [stats.binomtest(int(c), 4000, q).pvalue for c, q in zip(counts, exact, strict=True)]
    assert min(pv) > 0.01 / 4, pv
    assert not nnx.state(r, nnx.All(nnx.Param, nnx.PathContains("vrouter")))


def test_mc_dropout_and_ensemble_average_inside_the_router():
    x = jax.random.normal(jax.random.key(5), (2, 3, 8))
    cfg = vmoer.VMoERConfig(**CFG, vmoer_dropout=0.5, vmoer_samples=4000)
    r = routers.make(cfg, "mc_dropout", rngs=nnx.Rngs(0))
    out = r(x)
    # Monte Carlo reference with numpy masks: mean over masks of softmax(W (m * u / (1 - p)))
    w = np.asarray(r.proj.kernel[...])
    m = np.random.default_rng(0).random((4000, 2, 3, 8)) < 0.5
    l = (np.where(m, np.asarray(x)[None] / 0.5, 0.0)) @ w
    ref = np.mean(np.exp(l) / np.exp(l).sum(-1, keepdims=True), axis=0)
    np.testing.assert_allclose(out.probs_BxTxE, ref, atol=0.02)
    assert np.all(np.asarray(out.trace["router_logit_var"]) > 0)

    cfg = vmoer.VMoERConfig(**CFG, vmoer_ensemble=3)
    r = routers.make(cfg, "ensemble", rngs=nnx.Rngs(0))
    out = r(x)
    l_m = np.asarray(r.member_logits(x))
    np.testing.assert_allclose(l_m[0], r.logits(x), rtol=1e-6)
    ref = np.mean(np.exp(l_m) / np.exp(l_m).sum(-1, keepdims=True), axis=0)
    np.testing.assert_allclose(out.probs_BxTxE, ref, rtol=1e-5)
    np.testing.assert_allclose(
        out.trace["router_logit_var"], l_m.var(0).mean(-1), rtol=1e-4, atol=1e-7
    )
    tr = nnx.jit(lambda r, x: r(x, train=True))(r, x)  # one member per token
    assert tr.experts_BxTxK.shape == (2, 3, 2)


@pytest.mark.parametrize("name", sorted(routers.ROUTERS))
def test_every_router_in_a_moe_layer_trains_and_reduces(name):
    cfg = vmoer.VMoERConfig(**CFG)
    layer = moe.MoEMLP(cfg, router=routers.make(cfg, name, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(6), (2, 5, 8))

    @nnx.jit
    def step(m):
        def loss(m):
            y, aux, _ = m(x, train=True)
            return jnp.mean(y**2) + sum(aux.values())

        return nnx.value_and_grad(loss)(m)

    val, grads = step(layer)
    assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    y, _, tr = layer(x)
    assert y.shape == x.shape and tr["experts"].shape == (2, 5, 2)


def test_aux_gradient_reaches_posterior_only_when_asked():
    x = jax.random.normal(jax.random.key(7), (2, 5, 8))
    for to_post in (False, True):
        cfg = vmoer.VMoERConfig(**CFG, vmoer_aux_to_posterior=to_post, vmoer_head="linear")
        layer = vmoer.VMoEMLP(cfg, router_type="mfvr", rngs=nnx.Rngs(0))
        layer.router.vrouter.delta_mu.kernel[...] = jnp.full((8, 4), 0.3)

        @nnx.jit
        def g(m):
            return nnx.grad(lambda m: m(x, train=True)[1]["moe_lb"] + m(x)[1]["moe_z"])(m)

        gd = np.asarray(g(layer).router.vrouter.delta_mu.kernel[...])
        assert (np.abs(gd).max() > 0) == to_post


def test_unknown_router_and_options_raise():
    with pytest.raises(ValueError, match="router"):
        routers.make(vmoer.VMoERConfig(**CFG), "laplace", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="vmoer_head"):
        routers.make(vmoer.VMoERConfig(**CFG, vmoer_head="deep"), "mfvr", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="vmoer_vtsr_reg"):
        routers.make(vmoer.VMoERConfig(**CFG, vmoer_vtsr_reg="x"), "vtsr", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="vmoer_ensemble"):
        routers.make(vmoer.VMoERConfig(**CFG, vmoer_ensemble=1), "ensemble", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.vmoer"):
        vmoer.check_vmoer_options({"betta": 1.0})
