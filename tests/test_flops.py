"""Tests for routecal.flops: XLA cost analysis against analytic matmul counts."""

import jax
import jax.numpy as jnp
import pytest

from routecal import flops

SHAPE = flops.LayerShape("test", d_model=64, n_experts=4, top_k=2, expert_dim=256, n_tokens=32)


def test_matmul_flops_match_xla_exactly():
    a = jax.ShapeDtypeStruct((8, 16), jnp.float32)
    b = jax.ShapeDtypeStruct((16, 12), jnp.float32)
    assert flops.xla_flops(jnp.dot, a, b) == flops.matmul_flops(8, 12, 16) == 2 * 8 * 12 * 16
    # batched einsum: 3 independent [5, 7] x [7, 2] matmuls
    x = jax.ShapeDtypeStruct((3, 5, 7), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 7, 2), jnp.float32)
    f = lambda x, w: jnp.einsum("bmk,bkn->bmn", x, w)
    assert flops.xla_flops(f, x, w) == 3 * flops.matmul_flops(5, 2, 7)


def test_cost_analysis_dict_or_list():
    assert flops._flops_of({"flops": 4.0}) == 4.0
    assert flops._flops_of([{"flops": 1.0}, {"flops": 2.0}]) == 3.0
    with pytest.raises(ValueError, match="flops"):
        flops._flops_of({})


def test_expert_and_router_flops_near_analytic():
    # SwiGLU experts: 3 matmuls on n_tokens * K = 64 token-expert pairs of D=64 x F=256
    analytic = 3 * flops.matmul_flops(64, 256, 64)
    assert flops.analytic_expert_flops(SHAPE) == analytic
    got = flops.expert_flops(SHAPE)
    # XLA adds the SiLU and the gating product (a few FLOPs per hidden unit): < 2% here
    assert analytic <= got <= 1.02 * analytic
    det = flops.router_flops(SHAPE, "det", train=False)
    mm = flops.matmul_flops(32, 4, 64)  # [N, D] x [D, E]
    assert mm <= det <= 1.3 * mm
    # logit router (train), MLP heads of width H = 64: + trunk [N, D] x [D, H] and the delta_mu
    # and log-sigma heads (two [N, H] x [H, E]), plus O(1) work per hidden unit / logit (GELU,
    # threefry normal noise, exp, KL terms): < 250 FLOPs per logit and 30 per hidden unit
    logit = flops.router_flops(SHAPE, "mfvr", train=True)
    heads = flops.matmul_flops(32, 64, 64) + 2 * flops.matmul_flops(32, 4, 64)
    assert heads <= logit - det <= heads + 250 * 32 * 4 + 30 * 32 * 64


def test_vmoer_overhead_realistic_under_one_percent():
    out = flops.vmoer_overhead(flops.REALISTIC_LAYER)
    # deterministic layer ~ experts: 3 * 2 * (640 * 8) * 1536 * 512 FLOPs
    assert out["experts_analytic"] == 3 * 2 * 640 * 8 * 1536 * 512
    assert out["experts"] == pytest.approx(out["experts_analytic"], rel=0.01)
    # analytic extra: trunk 2 N D H + two heads 2 * 2 N H E (H = 64) over the layer ~ 0.5 %
    extra = flops.matmul_flops(640, 64, 1536) + 2 * flops.matmul_flops(640, 40, 64)
    analytic_pct = 100 * extra / out["layer_det"]
    assert out["overhead_mfvr_train_pct"] == pytest.approx(analytic_pct, rel=0.15)
    assert 0 < out["overhead_mfvr_infer_pct"] < 1.0
    assert 0 <= out["overhead_vtsr_infer_pct"] < out["overhead_mfvr_infer_pct"]


def test_every_router_overhead_at_the_realistic_layer():
    out = flops.router_overheads(flops.REALISTIC_LAYER, ("det", "fcvr", "mfvr", "fixed_temp"))
    assert out["det"]["infer_pct"] == 0.0
    # FCVR adds E (E - 1) / 2 = 780 Cholesky outputs per token (2 N H P) and S = 8 products
    # L eps (2 S N E^2) over MFVR; both well under 1 % of the layer
    extra = flops.matmul_flops(640, 780, 64) + 8 * flops.matmul_flops(640, 40, 40)
    got = out["fcvr"]["infer"] - out["mfvr"]["infer"]
    assert extra <= got <= 3 * extra, (got, extra)
    assert out["mfvr"]["infer_pct"] < out["fcvr"]["infer_pct"] < 1.0
    assert 0 <= out["fixed_temp"]["infer_pct"] < 0.05  # softmax(l / T0) and Gumbel noise only


def test_ensemble_and_swag_are_in_the_flop_table():
    """Issue 24: both baselines are counted. At inference the ensemble adds M - 1 router matmuls
    and SWAG S weight samples (2 D E K each for D_hat z2) and S router matmuls, both per call."""
    out = flops.router_overheads(SHAPE, ("det", "ensemble", "swag"))
    n, d, e = SHAPE.n_tokens, SHAPE.d_model, SHAPE.n_experts
    mm = flops.matmul_flops(n, e, d)
    ens = out["ensemble"]["infer"] - out["det"]["infer"]
    assert (SHAPE.vmoer_ensemble - 1) * mm <= ens <= 3 * SHAPE.vmoer_ensemble * mm
    s, k = SHAPE.vmoer_samples, SHAPE.vmoer_swag_rank
    swag = out["swag"]["infer"] - out["det"]["infer"]
    low = (s - 1) * mm + s * flops.matmul_flops(1, d * e, k)
    assert low <= swag <= 3 * (low + mm) + 50 * s * d * e, (swag, low)
    assert out["swag"]["train"] == pytest.approx(out["det"]["infer"], rel=0.01)  # det in training
