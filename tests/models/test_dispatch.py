"""Sparse dropless dispatch (`routecal.models.dispatch`) against an independent numpy reference
(y_n = sum_k g_nk FFN_{e_nk}(x_n), one token at a time) and against the dense path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from routecal.models import dispatch
from routecal.models.decoder import Decoder, DecoderConfig

N, D, F, E, K = 23, 8, 6, 5, 2


def _weights(expert_type: str, seed: int = 0) -> dispatch.ExpertWeights:
    rng = np.random.default_rng(seed)
    w = lambda *s: jnp.asarray(0.5 * rng.standard_normal(s), jnp.float32)  # noqa: E731
    if expert_type == "swiglu":
        return dispatch.ExpertWeights(w(E, D, F), w(E, F, D), w(E, D, F), None)
    return dispatch.ExpertWeights(w(E, D, F), w(E, F, D), None, w(E, F))


def _numpy_reference(x, experts, gates, w: dispatch.ExpertWeights) -> np.ndarray:
    x = np.asarray(x, np.float64)
    wi, wo = np.asarray(w.w_in_ExDxF, np.float64), np.asarray(w.w_out_ExFxD, np.float64)
    out = np.zeros_like(x)
    for n in range(x.shape[0]):
        for k in range(experts.shape[1]):
            e = int(experts[n, k])
            h = x[n] @ wi[e]
            if w.w_gate_ExDxF is not None:
                g = x[n] @ np.asarray(w.w_gate_ExDxF, np.float64)[e]
                h = g / (1 + np.exp(-g)) * h
            else:  # jax.nn.gelu's default is the tanh approximation
                z = h + np.asarray(w.b_in_ExF, np.float64)[e]
                h = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
            out[n] += float(gates[n, k]) * (h @ wo[e])
    return out


def _routing(seed: int, skew: bool):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((N, D)), jnp.float32)
    logits = rng.standard_normal((N, E)) + (np.array([3.0, 2.0, 0, -9, 0]) if skew else 0)
    experts = np.argsort(-logits, axis=1)[:, :K].astype(np.int32)  # expert 3 never chosen if skew
    gates = rng.uniform(0.1, 1.0, (N, K)).astype(np.float32)
    return x, jnp.asarray(experts), jnp.asarray(gates)


@pytest.mark.parametrize("expert_type", ["swiglu", "gelu"])
@pytest.mark.parametrize("skew", [False, True])
def test_every_dispatch_equals_the_token_by_token_reference(expert_type, skew):
    w = _weights(expert_type)
    x, experts, gates = _routing(1, skew)
    ref = _numpy_reference(x, np.asarray(experts), np.asarray(gates), w)
    for mode in ("dense", "sparse_blocks", "ragged"):
        got = np.asarray(dispatch.dropless_moe(x, experts, gates, w, mode))
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5, err_msg=mode)
    for m in (1, 3, 8, 64):  # any block size, including one larger than every expert's rows
        got = np.asarray(dispatch.sparse_blocks(x, experts, gates, w, block_rows=m))
        np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5, err_msg=f"M={m}")


def test_block_layout_one_expert_per_block_and_static_bound():
    _, experts, _ = _routing(2, True)
    s = dispatch.sort_assignments(experts, E)
    counts = np.bincount(np.asarray(experts).ravel(), minlength=E)
    np.testing.assert_array_equal(np.asarray(s.counts_E), counts)
    assert np.all(np.diff(np.asarray(s.expert_A)) >= 0)  # sorted by expert
    m = 4
    row_A, block_expert_G, used_G, g = dispatch.block_layout(s, m)
    row_A, block_expert_G, used_G = map(np.asarray, (row_A, block_expert_G, used_G))
    assert g == (N * K + E * (m - 1)) // m
    assert len(set(row_A.tolist())) == N * K and row_A.max() < g * m  # rows distinct, in range
    np.testing.assert_array_equal(block_expert_G[row_A // m], np.asarray(s.expert_A))
    assert used_G.sum() == sum(-(-c // m) for c in counts)  # exactly the needed blocks


def test_auto_picks_ragged_on_accelerators_and_blocks_on_cpu():
    assert dispatch.resolve_dispatch("auto", "cpu") == "sparse_blocks"
    assert dispatch.resolve_dispatch("auto", "gpu") == "ragged"
    assert dispatch.resolve_dispatch("auto", "tpu") == "ragged"
    assert dispatch.resolve_dispatch("dense", "tpu") == "dense"
    with pytest.raises(ValueError, match="dispatch"):
        dispatch.resolve_dispatch("sparse")
    with pytest.raises(ValueError, match="model.dispatch"):
        DecoderConfig(dispatch="blocks")


@pytest.mark.parametrize("mlp_type", ["vmoer_mfvr"])  # a variational router: its extra traces too
def test_decoder_sparse_equals_dense_on_logits_gates_and_traces(mlp_type):
    base = dict(vocab_size=40, max_len=16, d_model=16, n_layers=2, n_heads=2, mlp_dim=12,
                mlp_type=mlp_type, n_experts=6, top_k=3, norm_topk_prob=True,
                shared_expert_hidden=8, shared_expert_gate=True)
    ids = np.random.default_rng(0).integers(0, 40, (2, 11))
    outs = {}
    for mode in ("dense", "sparse_blocks", "ragged"):
        model = Decoder(DecoderConfig(**base, dispatch=mode), rngs=nnx.Rngs(3))
        outs[mode] = jax.jit(lambda m, i: m(i, return_traces=True))(model, ids)
    ref = outs["dense"]
    for mode in ("sparse_blocks", "ragged"):
        got = outs[mode]
        np.testing.assert_allclose(got.logits, ref.logits, atol=1e-5, rtol=1e-5)
        for a, b in zip(got.traces["mlp"], ref.traces["mlp"], strict=True):
            assert set(a) == set(b)
            for key in a:
                np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=1e-5, err_msg=key)


def test_vmoer_routers_refuse_deepseek_group_limited_routing():
    base = dict(mlp_type="vmoer_mfvr", n_experts=4, top_k=2)
    with pytest.raises(ValueError, match="n_group"):
        DecoderConfig(**base, n_group=2, topk_group=1)
    with pytest.raises(ValueError, match="routed_scaling"):
        DecoderConfig(**base, routed_scaling=16.0)
    assert DecoderConfig(mlp_type="moe", n_experts=4, top_k=2, n_group=2).n_group == 2
