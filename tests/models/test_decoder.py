"""Tests for routecal.models.decoder: causality, AttnRes bookkeeping against a hand-written loop,
RoPE and grouped-query attention against references, MoE paths, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from routecal.models import causal
from routecal.models.decoder import Decoder, DecoderConfig

V, T = 37, 12


def _cfg(**kw):
    base = dict(vocab_size=V, max_len=16, d_model=16, n_layers=2, n_heads=4, mlp_dim=32)
    base.update(kw)
    return DecoderConfig(**base)


def _model(seed=0, **kw):
    m = Decoder(_cfg(**kw), rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed + 100)
    for da in m.residual.depth:  # non-uniform depth routing
        da.query[...] = jnp.asarray(rng.normal(size=da.query.shape) * 2.0, jnp.float32)
        da.key_norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, da.key_norm.scale.shape))
    return m


def _ids(b=2, t=T, seed=0):
    return np.random.default_rng(seed).integers(0, V, (b, t)).astype(np.int32)


VARIANTS = {
    "standard": dict(),
    "full": dict(residual="full"),
    "block_1layer": dict(residual="block", n_blocks=2, n_layers=2),
    "block_2layers": dict(residual="block", n_blocks=2, n_layers=4),
    "moe_top2_dropless": dict(mlp_type="moe", top_k=2, n_experts=4),
    "moe_top1_capacity": dict(mlp_type="moe", top_k=1, capacity_factor=1.0, residual="block"),
    "moe_shared_every2": dict(
        mlp_type="moe", top_k=2, moe_every=2, shared_expert_hidden=8, shared_expert_gate=True
    ),
    # VTSR samples experts at inference by default; "mean" makes two passes comparable
    "vmoer_temp_full": dict(
        mlp_type="vmoer_vtsr", top_k=2, residual="full", vmoer=(("vtsr_inference", "mean"),)
    ),
    "gqa_qknorm_untied": dict(n_kv_heads=2, qk_norm=True, qkv_bias=True, tie_embeddings=False),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_causality_future_tokens_leave_past_outputs_unchanged(name):
    m = _model(**VARIANTS[name])
    ids = _ids()
    for t in (0, 5, T - 2):
        ids2 = ids.copy()
        ids2[:, t + 1 :] = (ids2[:, t + 1 :] + 1 + np.arange(T - t - 1)) % V
        a, b = m(ids, return_traces=True), m(ids2, return_traces=True)
        np.testing.assert_allclose(a.logits[:, : t + 1], b.logits[:, : t + 1], atol=1e-5)
        assert not np.allclose(a.logits[:, t + 1 :], b.logits[:, t + 1 :])
        for x, y in zip(a.traces["alpha"], b.traces["alpha"], strict=True):
            np.testing.assert_allclose(x[:, : t + 1], y[:, : t + 1], atol=1e-5)
        for x, y in zip(a.traces["mlp"], b.traces["mlp"], strict=True):
            np.testing.assert_allclose(
                x["router_logits"][:, : t + 1], y["router_logits"][:, : t + 1], atol=1e-5
            )


def _reference_logits(m, ids, n_blocks):
    """AttnRes forward written from the paper's definition with the model's own sublayers:
    sublayer l of block b attends over [v0, sums of completed blocks, partial sum of block b]."""
    cfg = m.cfg
    fs = []
    for layer in m.layers:
        fs.append(lambda h, ly=layer: ly.attn(ly.attn_norm(h)))
        fs.append(lambda h, ly=layer: ly.mlp(ly.mlp_norm(h))[0])
    size = cfg.n_sublayers // n_blocks
    eps = m.residual.depth[0].key_norm.epsilon

    def mix(da, sources):
        w = np.asarray(da.query[...]) * np.asarray(da.key_norm.scale[...])
        keys = [
            np.asarray(v) / np.sqrt(np.mean(np.asarray(v) ** 2, -1, keepdims=True) + eps)
            for v in sources
        ]
        lg = np.stack([k @ w for k in keys], -1)
        a = np.exp(lg - lg.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        return sum(a[..., i : i + 1] * np.asarray(v) for i, v in enumerate(sources)), a

    v0 = np.asarray(m.embed(jnp.asarray(ids)))
    outs, alphas = [], []
    for l, f in enumerate(fs):
        b, j = divmod(l, size)
        srcs = [v0] + [sum(outs[k * size : (k + 1) * size]) for k in range(b)]
        if j:
            srcs.append(sum(outs[b * size : l]))
        h, a = mix(m.residual.depth[l], srcs)
        alphas.append(a)
        outs.append(np.asarray(f(jnp.asarray(h, jnp.float32))))
    srcs = [v0] + [sum(outs[k * size : (k + 1) * size]) for k in range(n_blocks)]
    h, a = mix(m.residual.depth[cfg.n_sublayers], srcs)
    alphas.append(a)
    logits = np.asarray(m.embed.attend(m.final_norm(jnp.asarray(h, jnp.float32))))
    return logits, alphas


@pytest.mark.parametrize(
    "residual,n_layers,n_blocks",
    [("full", 2, 4), ("block", 2, 2), ("block", 4, 2), ("block", 4, 1), ("block", 3, 6)],
)
def test_attnres_matches_definition_with_block_boundaries_at_layer_starts(
    residual, n_layers, n_blocks
):
    m = _model(residual=residual, n_layers=n_layers, n_blocks=n_blocks)
    ids = _ids()
    out = m(ids, return_traces=True)
    ref_logits, ref_alphas = _reference_logits(m, ids, n_blocks)
    np.testing.assert_allclose(out.logits, ref_logits, rtol=1e-4, atol=1e-4)
    for x, y in zip(out.traces["alpha"], ref_alphas, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_block_with_one_sublayer_per_block_equals_full_and_one_layer_per_block_differs():
    ids = _ids()
    full = _model(residual="full", n_layers=3)
    block_l = _model(residual="block", n_layers=3, n_blocks=6)
    np.testing.assert_allclose(full(ids).logits, block_l(ids).logits, rtol=1e-5, atol=1e-6)
    block_layer = _model(residual="block", n_layers=3, n_blocks=3)  # 2 sublayers per block
    assert not np.allclose(full(ids).logits, block_layer(ids).logits, atol=1e-4)


@pytest.mark.parametrize("name", ["full", "block_2layers", "moe_top2_dropless"])
def test_depth_weights_and_gates_are_distributions_per_token(name):
    out = _model(**VARIANTS[name])(_ids(), return_traces=True)
    for a in out.traces["alpha"]:
        assert a.shape[:2] == (2, T)
        assert np.all(np.asarray(a) >= 0)
        np.testing.assert_allclose(np.sum(a, axis=-1), 1.0, atol=1e-5)
    for tr in out.traces["mlp"]:
        np.testing.assert_allclose(np.sum(tr["router_probs"], -1), 1.0, atol=1e-5)


def test_rope_matches_pairwise_rotation_and_is_relative():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 5, 2, 8)).astype(np.float32)
    pos = np.arange(5)
    got = np.asarray(causal.rope(jnp.asarray(x), jnp.asarray(pos), 100.0))
    ref = np.empty_like(x)
    for i in range(4):  # pair (i, i + 4) rotated by pos * 100^(-2i/8)
        ang = pos * 100.0 ** (-2 * i / 8)
        c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
        ref[..., i] = x[..., i] * c - x[..., i + 4] * s
        ref[..., i + 4] = x[..., i + 4] * c + x[..., i] * s
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # <rope(q, p), rope(k, p')> depends on p - p' only
    q, k = rng.normal(size=(2, 8)).astype(np.float32)

    def dot(p1, p2):
        rq = causal.rope(jnp.asarray(q)[None, None, None], jnp.asarray([p1]), 100.0)
        rk = causal.rope(jnp.asarray(k)[None, None, None], jnp.asarray([p2]), 100.0)
        return float(jnp.sum(rq * rk))

    assert dot(3, 1) == pytest.approx(dot(7, 5), rel=1e-4)


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
    gqa = _model(n_kv_heads=2)
    mha = _model(n_kv_heads=None)
    hw = gqa.cfg.head_width
    kv = nnx.Any(nnx.PathContains("k_proj"), nnx.PathContains("v_proj"))
    nnx.update(mha, nnx.state(gqa, nnx.All(nnx.Param, nnx.Not(kv))))
    for lg, lm in zip(gqa.layers, mha.layers, strict=True):
        for name in ("k_proj", "v_proj"):
            w = np.asarray(getattr(lg.attn, name).kernel[...]).reshape(16, 2, hw)
            rep = np.repeat(w, 2, axis=1).reshape(16, -1)  # query head i reads kv head i // 2
            getattr(lm.attn, name).kernel[...] = jnp.asarray(rep)
    ids = _ids()
    np.testing.assert_allclose(gqa(ids).logits, mha(ids).logits, rtol=1e-5, atol=1e-5)


def test_dropless_moe_equals_capacity_path_without_drops_and_topk_softmax_gates():
    ids = _ids()
    a = _model(mlp_type="moe", top_k=1, capacity_factor=0.0)
    b = _model(mlp_type="moe", top_k=1, capacity_factor=100.0)
    np.testing.assert_allclose(a(ids).logits, b(ids).logits, rtol=1e-5, atol=1e-5)
    m = _model(mlp_type="moe", top_k=2, router_order="topk_softmax")
    tr = m(ids, return_traces=True).traces["mlp"][0]
    lg = np.asarray(tr["router_logits"], np.float64)
    top = np.sort(lg, -1)[..., ::-1][..., :2]
    ref = np.exp(top - top.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(tr["gates"], ref, atol=1e-5)


def test_bf16_compute_close_to_f32_and_same_seed_same_numbers():
    ids = _ids()
    f32 = _model(residual="block")(ids).logits
    np.testing.assert_array_equal(f32, _model(residual="block")(ids).logits)
    bf = _model(residual="block", dtype="bfloat16")(ids).logits
    assert bf.dtype == jnp.float32
    assert np.max(np.abs(np.asarray(bf) - np.asarray(f32))) < 0.05


def test_jit_and_grad_run():
    m = _model(residual="block", mlp_type="moe", top_k=2)

    @nnx.jit
    def loss(m, ids):
        out = m(ids)
        return jnp.mean(jax.nn.logsumexp(out.logits, -1)) + out.aux_loss

    assert np.isfinite(float(loss(m, jnp.asarray(_ids()))))


def test_bad_input_and_config_raise_naming_the_problem():
    m = _model()
    with pytest.raises(ValueError, match="ids: token id 37 out of the vocabulary"):
        m(np.full((1, 4), V, np.int32))
    with pytest.raises(ValueError, match="ids: token id -1"):
        m(np.full((1, 4), -1, np.int32))
    with pytest.raises(ValueError, match="exceeds the model's maximum max_len=16"):
        m(np.zeros((1, 17), np.int32))
    with pytest.raises(ValueError, match="expected integer"):
        m(np.zeros((1, 4), np.float32))
    bad = [
        (dict(residual="block", n_blocks=3, n_layers=4), "n_blocks"),
        (dict(n_kv_heads=3), "n_kv_heads"),
        (dict(mlp_type="moe", top_k=2, capacity_factor=1.0), "capacity_factor"),
        (dict(router_order="x"), "router_order"),
        (dict(dtype="float16"), "dtype"),
        (dict(logits_scaling=0.0), "logits_scaling"),
        (dict(vmoer=(("nope", 1),)), "nope"),
    ]
    for kw, word in bad:
        with pytest.raises(ValueError, match=word):
            _cfg(**kw)
    with pytest.raises(ValueError, match="unknown key"):
        DecoderConfig.from_config({"d_modle": 3})
