"""Tests for routecal.uncertainty: entropy/MI against numpy, AUROC against sklearn, stability."""

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from sklearn.metrics import roc_auc_score

from routecal.models import moe
from routecal.stats import uncertainty as unc


def _random_probs(rng, shape):
    logits = rng.normal(size=shape) * 2
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_entropy_mi_maxprob_against_scipy():
    rng = np.random.default_rng(0)
    p = _random_probs(rng, (5, 7, 4))
    mean = p.mean(0)
    np.testing.assert_allclose(unc.predictive_entropy(p), stats.entropy(mean, axis=-1), rtol=1e-10)
    ref_mi = stats.entropy(mean, axis=-1) - stats.entropy(p, axis=-1).mean(0)
    np.testing.assert_allclose(unc.mutual_information(p), ref_mi, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(unc.max_prob(p), mean.max(-1))
    np.testing.assert_allclose(unc.ood_score(p, "max_prob"), 1 - mean.max(-1))
    # one-hot rows (0 log 0) have zero entropy; identical passes have zero MI
    onehot = np.eye(4)[[0, 1, 2]]
    np.testing.assert_allclose(unc.predictive_entropy(onehot), 0.0)
    np.testing.assert_allclose(unc.mutual_information(np.stack([p[0]] * 3)), 0.0, atol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_ood_auroc_matches_sklearn(ties):
    rng = np.random.default_rng(1)
    s_in = rng.normal(size=200)
    s_out = rng.normal(0.7, 1.0, size=150)
    if ties:  # heavy ties within and across groups
        s_in, s_out = np.round(s_in), np.round(s_out)
    labels = np.r_[np.zeros(200), np.ones(150)]
    ref = roc_auc_score(labels, np.r_[s_in, s_out])
    assert unc.ood_auroc(s_in, s_out) == pytest.approx(ref, abs=1e-12)
    assert unc.ood_auroc([1.0, 1.0], [1.0]) == 0.5
    assert unc.ood_auroc([0.0, 1.0], [2.0]) == 1.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="scores_out"):
        unc.ood_auroc([0.1, 0.2], [np.nan])
    with pytest.raises(ValueError, match="probs_SxNxC"):
        unc.mutual_information(np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="probs"):
        unc.predictive_entropy(np.full((3, 2), 0.7))
    with pytest.raises(ValueError, match="kind"):
        unc.ood_score(np.full((3, 2), 0.5), "energy")
    with pytest.raises(ValueError, match="experts_noisy"):
        unc.routing_stability([np.zeros((2, 3, 1), int)], [np.zeros((2, 3, 1), int)] * 2)


def test_jaccard_hand_computed():
    # {0,1} vs {1,2}: |{1}| / |{0,1,2}| = 1/3; {0,1} vs {1,0}: 1; {0,1} vs {2,3}: 0
    a = np.array([[[0, 1], [0, 1], [0, 1]]])
    b = np.array([[[1, 2], [1, 0], [2, 3]]])
    np.testing.assert_allclose(unc.jaccard(a, b), [[1 / 3, 1.0, 0.0]])
    res = unc.routing_stability([a, a], [b, a])
    np.testing.assert_allclose(res.per_layer, [4 / 9, 1.0])
    assert res.overall == pytest.approx((4 / 9 + 1.0) / 2)
    # [L, N, T, K] array input is the same as a list of layers
    assert unc.routing_stability(np.stack([a, a]), np.stack([b, a])).overall == res.overall


def test_routing_stability_is_one_at_zero_noise_and_drops_with_noise():
    cfg = moe.MoEConfig(d_model=8, mlp_dim=8, n_experts=8, top_k=2)
    routers = [moe.TopKRouter(cfg, rngs=nnx.Rngs(i)) for i in range(2)]
    for r in routers:
        r.proj.kernel[...] = r.proj.kernel[...] * 50

    @jax.jit
    def experts_fn_jit(x):
        return [nnx.merge(*nnx.split(r))(x).experts_BxTxK for r in routers]

    experts_fn = lambda x: [np.asarray(e) for e in experts_fn_jit(x)]
    # (tokens drawn with another seed than the noise: x + 3 * x would keep a linear routing)
    x = np.random.default_rng(123).normal(size=(16, 4, 8)).astype(np.float32)
    clean = unc.routing_stability_under_noise(experts_fn, x, 0.0)
    np.testing.assert_array_equal(clean.per_layer, [1.0, 1.0])
    assert clean.overall == 1.0
    noisy = unc.routing_stability_under_noise(experts_fn, x, 3.0)
    assert 0.0 <= noisy.overall < 0.9
    # matches a direct computation with the same noise
    noise = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    direct = unc.routing_stability(experts_fn(x), experts_fn(x + np.float32(3.0) * noise))
    assert direct.overall == noisy.overall


def test_model_routing_stability_logit_router_is_one_at_zero_noise():
    from routecal.models.transformer import ModelConfig, Transformer

    mc = ModelConfig(
        seq_len=4,
        token_dim=3,
        num_classes=3,
        d_model=8,
        n_layers=1,
        n_heads=2,
        mlp_dim=8,
        residual="standard",
        mlp_type="vmoer_mfvr",
        n_experts=4,
        top_k=2,
        vmoer=(("init_sigma", 2.0), ("samples", 2)),
    )
    model = Transformer(mc, rngs=nnx.Rngs(params=0, dropout=1))
    proj = model.blocks[0].mlp.router.proj
    proj.kernel[...] = proj.kernel[...] * 200  # logits dominate the routing noise
    x = np.random.default_rng(5).normal(size=(6, 4, 3)).astype(np.float32)
    # stochastic routing (sigma = 2), but common random numbers: exactly 1 without input noise
    assert unc.model_routing_stability(model, x, 0.0).overall == 1.0
    assert unc.model_routing_stability(model, x, 5.0).overall < 1.0


def test_router_ood_scores_match_numpy():
    rng = np.random.default_rng(0)
    p1 = rng.dirichlet(np.ones(4), size=(3, 5))
    p2 = rng.dirichlet(np.ones(4), size=(3, 5))
    mask = np.ones((3, 5))
    mask[:, :2] = 0  # only the last 3 tokens
    h = lambda p: -(p * np.log(p)).sum(-1)  # noqa: E731
    ref = (h(p1)[:, 2:].mean(1) + h(p2)[:, 2:].mean(1)) / 2
    np.testing.assert_allclose(unc.gating_entropy([p1, p2], mask), ref, rtol=1e-10)
    v1, v2 = rng.uniform(size=(3, 5)), rng.uniform(size=(3, 5))
    np.testing.assert_allclose(unc.router_logit_variance([v1, v2]), (v1.mean(1) + v2.mean(1)) / 2)
    with pytest.raises(ValueError, match="router_var"):
        unc.router_logit_variance([v1, v2[:, :4]])
    with pytest.raises(ValueError, match="mask_NxT"):
        unc.gating_entropy([p1], np.zeros((3, 5)))
