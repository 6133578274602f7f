"""Tests for routecal.models.moe: router losses, capacity accounting, dispatch/combine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from routecal.models import moe


def test_load_balancing_loss_hand_computed():
    # Switch eq. 4, one group, T=2, E=2, K=1: both tokens pick expert 0.
    # f = [2/2, 0/2] = [1, 0]; P = mean([.7,.3],[.6,.4]) = [.65, .35]
    # loss = E * sum_e f_e P_e = 2 * (1 * .65 + 0 * .35) = 1.3
    probs = jnp.array([[[0.7, 0.3], [0.6, 0.4]]])
    experts = jnp.array([[[0], [0]]])
    np.testing.assert_allclose(moe.load_balancing_loss(probs, experts), 1.3, rtol=1e-6)


def test_load_balancing_loss_top2_two_groups():
    # Group 1 (T=2, E=3, K=2): choices {0,1}, {0,2} -> counts [2,1,1] / (T*K=4) = [.5,.25,.25]
    #   P = mean([.5,.3,.2],[.4,.2,.4]) = [.45,.25,.3]
    #   loss_1 = 3 * (.5*.45 + .25*.25 + .25*.3) = 3 * .3625 = 1.0875
    # Group 2: uniform probs [1/3]*3, choices {1,2},{1,2} -> f = [0,.5,.5], loss_2 = 3*(1/3) = 1
    # mean over groups = 1.04375
    probs = jnp.array(
        [
            [[0.5, 0.3, 0.2], [0.4, 0.2, 0.4]],
            [[1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]],
        ]
    )
    experts = jnp.array([[[0, 1], [0, 2]], [[1, 2], [2, 1]]])
    np.testing.assert_allclose(moe.load_balancing_loss(probs, experts), 1.04375, rtol=1e-6)


def test_router_z_loss_hand_computed():
    # ST-MoE eq. 5: logits [0,0] -> lse = ln 2; [ln 3, 0] -> lse = ln 4
    # z = ((ln 2)^2 + (ln 4)^2) / 2 = (0.480453 + 1.921812) / 2 = 1.2011325
    logits = jnp.array([[[0.0, 0.0], [np.log(3.0), 0.0]]])
    np.testing.assert_allclose(moe.router_z_loss(logits), 1.2011325, rtol=1e-5)


def test_expert_capacity():
    assert moe.expert_capacity(16, 4, 2, 1.25) == 10  # ceil(1.25 * 2 * 16 / 4)
    assert moe.expert_capacity(4, 2, 1, 1.0) == 2
    assert moe.expert_capacity(4, 2, 1, 0.0) == 4  # dropping disabled
    assert moe.expert_capacity(4, 2, 1, 100.0) == 4  # clipped to T


def test_capacity_drops_top1():
    # T=4, E=2, K=1, C=2: all tokens choose expert 0 -> tokens 0,1 kept; 2,3 dropped.
    experts = jnp.zeros((1, 4, 1), jnp.int32)
    gates = jnp.ones((1, 4, 1))
    dispatch, combine, kept = moe.dispatch_and_combine(experts, gates, 2, 2)
    np.testing.assert_array_equal(kept[0, :, 0], [1, 1, 0, 0])
    assert float(jnp.mean(1 - kept)) == 0.5
    # token t sits in slot t of expert 0; each slot holds exactly one token
    np.testing.assert_array_equal(dispatch[0, :2, 0, :], np.eye(2))
    np.testing.assert_array_equal(dispatch[0, 2:], 0)
    np.testing.assert_array_equal(dispatch.sum(axis=1), [[[1, 1], [0, 0]]])


def test_capacity_drops_top2_priority():
    # E=3, T=3, K=2, C=1. Choices: t0 {0,1}, t1 {0,2}, t2 {0,1}.
    # First choices go first: expert 0 slot 0 <- t0; t1, t2 first choices dropped.
    # Second choices: expert 1 <- t0 (kept), expert 2 <- t1 (kept), expert 1 <- t2 (dropped).
    experts = jnp.array([[[0, 1], [0, 2], [0, 1]]])
    gates = jnp.array([[[0.6, 0.3], [0.5, 0.4], [0.7, 0.2]]])
    _, combine, kept = moe.dispatch_and_combine(experts, gates, 3, 1)
    np.testing.assert_array_equal(kept[0], [[1, 1], [0, 1], [0, 0]])
    # combine weights: t0 -> (e0, .6), (e1, .3); t1 -> (e2, .4); t2 -> nothing
    np.testing.assert_allclose(combine[0, :, :, 0], [[0.6, 0.3, 0], [0, 0, 0.4], [0, 0, 0]])


def _gelu_tanh(z):
    # jax.nn.gelu's default (approximate=True) form
    return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))


def _forward(model, x, train=False):
    return nnx.jit(lambda m, x: m(x, train=train))(model, x)


def _numpy_reference(model, x, experts, gates, kept):
    """Per-token loop: y_t = sum_k kept * gate_k * expert_{e_k}(x_t) (GELU experts)."""
    w_in = np.asarray(model.experts.w_in_ExDxF[...])
    b_in = np.asarray(model.experts.b_in_ExF[...])
    w_out = np.asarray(model.experts.w_out_ExFxD[...])
    x = np.asarray(x)
    y = np.zeros_like(x)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            for k in range(experts.shape[-1]):
                e = int(experts[b, t, k])
                h = _gelu_tanh(x[b, t] @ w_in[e] + b_in[e])
                y[b, t] += kept[b, t, k] * gates[b, t, k] * (h @ w_out[e])
    return y


@pytest.mark.parametrize("capacity_factor", [0.0, 0.5])
def test_moe_mlp_matches_per_token_reference(capacity_factor):
    cfg = moe.MoEConfig(
        d_model=8, mlp_dim=16, n_experts=4, top_k=2, capacity_factor=capacity_factor
    )
    model = moe.MoEMLP(cfg, rngs=nnx.Rngs(0))
    # larger router weights so the routing is not uniform
    model.router.proj.kernel[...] = model.router.proj.kernel[...] * 50
    x = jax.random.normal(jax.random.key(1), (2, 6, 8))
    y, aux, trace = _forward(model, x, train=True)
    assert y.shape == x.shape
    assert set(trace) >= {"router_probs", "experts", "gates", "dropped"}
    assert trace["router_probs"].shape == (2, 6, 4)
    assert trace["experts"].shape == trace["gates"].shape == (2, 6, 2)
    np.testing.assert_allclose(trace["router_probs"].sum(-1), 1.0, rtol=1e-5)
    ex = np.asarray(trace["experts"])
    assert np.all(ex[..., 0] != ex[..., 1])
    probs = np.asarray(trace["router_probs"])
    # top-k picks the largest probabilities, in order
    np.testing.assert_array_equal(ex[..., 0], probs.argmax(-1))
    kept = 1 - np.asarray(trace["dropped"])
    raw_gates = np.take_along_axis(probs, ex, axis=-1)
    np.testing.assert_allclose(np.asarray(trace["gates"]), raw_gates * kept, rtol=1e-6)
    if capacity_factor == 0.0:
        assert float(moe.dropped_fraction(trace)) == 0.0
    else:
        # C = ceil(.5 * 2 * 6 / 4) = 2 slots per expert per sequence: at most 8 of 12 kept
        cap = moe.expert_capacity(6, 4, 2, 0.5)
        assert cap == 2
        counts = np.zeros((2, 4))
        for b in range(2):
            for t in range(6):
                for k in range(2):
                    counts[b, ex[b, t, k]] += kept[b, t, k]
        assert counts.max() <= cap
        assert float(moe.dropped_fraction(trace)) == pytest.approx(1 - kept.mean())
        assert float(moe.dropped_fraction(trace)) >= 4 / 12
    ref = _numpy_reference(model, x, ex, raw_gates, kept)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        aux["moe_lb"], cfg.lb_coef * moe.load_balancing_loss(trace["router_probs"], ex), rtol=1e-6
    )
    assert float(aux["moe_z"]) > 0


def test_swiglu_experts_and_bf16_router_stays_float32():
    cfg = moe.MoEConfig(
        d_model=8, mlp_dim=4, n_experts=3, top_k=1, expert_type="swiglu", dtype=jnp.bfloat16
    )
    model = moe.MoEMLP(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 5, 8)).astype(jnp.bfloat16)
    y, _, trace = _forward(model, x)
    assert y.dtype == jnp.bfloat16
    assert trace["router_probs"].dtype == jnp.float32


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"top_k": 5}, "top_k"),
        ({"n_experts": 0}, "n_experts"),
        ({"lb_coef": -1.0}, "lb_coef"),
        ({"expert_type": "relu"}, "expert_type"),
    ],
)
def test_bad_config_raises(kwargs, name):
    with pytest.raises(ValueError, match=name):
        moe.MoEConfig(**kwargs)


def test_bad_input_rank_raises():
    model = moe.MoEMLP(moe.MoEConfig(d_model=4, mlp_dim=4), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="x_BxTxD"):
        model(jnp.zeros((3, 4)))


def _tiny_model(mlp_type, **kw):
    from routecal.models.transformer import ModelConfig, Transformer

    mc = ModelConfig(
        seq_len=4,
        token_dim=3,
        num_classes=3,
        d_model=8,
        n_layers=2,
        n_heads=2,
        mlp_dim=8,
        residual="standard",
        mlp_type=mlp_type,
        n_experts=4,
        top_k=2,
        moe_every=2,
        **kw,
    )
    return Transformer(mc, rngs=nnx.Rngs(params=0, dropout=1))


def test_moe_transformer_traces_flow_to_predictions():
    from routecal.data import Split
    from routecal.training import predict, traces

    model = _tiny_model("moe")
    x = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(np.float32)
    split = Split(x, np.array([0, 1, 2, 0, 1], np.int32))
    rec = predict.predictions_record(model, split, batch_size=8)
    # moe_every=2: layer 1 only is MoE -> one column
    assert rec["router_entropy"].shape == rec["top1_margin"].shape == (5, 1)
    p = rec["mlp/1/router_probs"]
    assert p.shape == (5, 4, 4) and rec["mlp/1/experts"].shape == (5, 4, 2)
    assert "mlp/0/router_probs" not in rec
    # numpy reference for the summaries
    h = -(p * np.log(p)).sum(-1).mean(1)
    np.testing.assert_allclose(rec["router_entropy"][:, 0], h, rtol=1e-5)
    ps = np.sort(p, -1)
    np.testing.assert_allclose(rec["top1_margin"][:, 0], (ps[..., -1] - ps[..., -2]).mean(1), 1e-5)
    np.testing.assert_allclose(
        rec["gate_mass"][:, 0], rec["mlp/1/gates"].sum(-1).mean(1), rtol=1e-5
    )
    assert traces.moe_summaries([{}, {}]) == {}


def test_vmoer_transformer_aux_and_trainable_filter():
    from routecal.models import vmoer
    from routecal.training import train

    model = _tiny_model("vmoer_mfvr", vmoer=(("beta", 0.5), ("rank", 1)))
    out = nnx.jit(lambda m, x: m(x, train=True))(model, jnp.ones((2, 4, 3)))
    assert set(out.aux) == {"moe_lb", "moe_z", "vmoer_kl"}
    np.testing.assert_allclose(out.aux_loss, sum(out.aux.values()), rtol=1e-6)
    # train.trainable="vrouter" selects exactly the router-posterior parameters
    names = vmoer.router_posterior_param_names(model)
    sel = nnx.state(model, train.trainable_filter(vmoer.VROUTER_PATH))
    got = sorted("/".join(map(str, p)) for p, _ in nnx.to_flat_state(sel))
    assert (
        got == names and len(names) == 6
    )  # MFVR, MLP heads: trunk, delta_mu, sigma (kernel + bias)


def test_group_limited_top_k_and_routed_scaling_by_hand():
    """DeepSeek-V2 group_limited_greedy: 6 experts in 3 groups {0,1}, {2,3}, {4,5}; group scores
    (max prob) 0.30, 0.25, 0.28 -> keep groups 0 and 2 (topk_group 2); the top-2 among experts
    0, 1, 4, 5 are 0 (0.30) and 4 (0.28), although expert 2 (0.25) beats 5 (0.02); gates x 2."""
    import jax.numpy as jnp
    import numpy as np

    from routecal.models import moe

    probs = jnp.asarray([[[0.30, 0.05, 0.25, 0.10, 0.28, 0.02]]], jnp.float32)
    experts, gates = moe.top_k_gates(probs, 2, n_group=3, topk_group=2, scale=2.0)
    np.testing.assert_array_equal(np.asarray(experts)[0, 0], [0, 4])
    np.testing.assert_allclose(np.asarray(gates)[0, 0], [0.60, 0.56], rtol=1e-6)
    plain, _ = moe.top_k_gates(probs, 3)
    np.testing.assert_array_equal(np.asarray(plain)[0, 0], [0, 4, 2])  # 2 is excluded above
    experts, gates = moe.top_k_gates(probs, 2, n_group=3, topk_group=1, normalize=True)
    np.testing.assert_array_equal(np.asarray(experts)[0, 0], [0, 1])  # group 0 alone
    np.testing.assert_allclose(np.asarray(gates)[0, 0], [0.30 / 0.35, 0.05 / 0.35], rtol=1e-6)
