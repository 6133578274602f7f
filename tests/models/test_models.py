"""Tests for routecal.models: AttnRes depth attention against a numpy reference of DESIGN.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from routecal.models import attnres
from routecal.models.transformer import ModelConfig, Transformer, make_mlp

T, P, C = 6, 4, 5


def _cfg(**kw):
    base = dict(seq_len=T, token_dim=P, num_classes=C, d_model=8, n_layers=2, n_heads=2, mlp_dim=16)
    base.update(kw)
    return ModelConfig(**base)


def _randomize_queries(model, seed=1):
    """Gives every pseudo-query (and key-norm scale) random values so routing is non-uniform."""
    rng = np.random.default_rng(seed)
    for da in model.residual.depth:
        da.query[...] = jnp.asarray(rng.normal(size=da.query.shape) * 2.0, jnp.float32)
        da.key_norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, da.key_norm.scale.shape))


def _tokens(n=3, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, T, P)), jnp.float32)


# ---------------------------------------------------------------------------------------------
# numpy reference of DESIGN.md's equations
# ---------------------------------------------------------------------------------------------


def _np_rmsnorm(x, scale, eps):
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * scale


def _np_depth_attn(sources, w, scale, eps):
    keys = [_np_rmsnorm(v, scale, eps) for v in sources]
    logits = np.stack([k @ w for k in keys], axis=-1)  # [B, T, S], no 1/sqrt(D)
    logits = logits - logits.max(-1, keepdims=True)
    a = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    h = sum(a[..., i : i + 1] * v for i, v in enumerate(sources))
    return h, a


def _np_attnres(v0, fs, ws, scales, n_blocks, eps):
    """Block AttnRes written from the definition: sources = [v0, completed block sums, partial]."""
    L = len(fs)
    size = L // n_blocks
    outs, alphas = [], []
    for l in range(L):
        b, j = divmod(l, size)
        completed = [sum(outs[k * size : (k + 1) * size]) for k in range(b)]
        partial = [sum(outs[b * size : l])] if j > 0 else []
        h, a = _np_depth_attn([v0, *completed, *partial], ws[l], scales[l], eps)
        alphas.append(a)
        outs.append(fs[l](h))
    blocks = [sum(outs[k * size : (k + 1) * size]) for k in range(n_blocks)]
    h, a = _np_depth_attn([v0, *blocks], ws[L], scales[L], eps)
    alphas.append(a)
    return h, alphas


@pytest.mark.parametrize("residual,n_blocks", [("full", 4), ("block", 2), ("block", 1)])
def test_residual_path_matches_numpy_reference(residual, n_blocks):
    L, D = 4, 8
    rng = np.random.default_rng(0)
    path = attnres.ResidualPath(residual, L, n_blocks, D, rngs=nnx.Rngs(0))
    ws = [rng.normal(size=D).astype(np.float32) for _ in range(L + 1)]
    scales = [rng.uniform(0.5, 1.5, D).astype(np.float32) for _ in range(L + 1)]
    for da, w, s in zip(path.depth, ws, scales, strict=True):
        da.query[...] = jnp.asarray(w)
        da.key_norm.scale[...] = jnp.asarray(s)
    mats = [rng.normal(size=(D, D)).astype(np.float32) / np.sqrt(D) for _ in range(L)]
    v0 = rng.normal(size=(2, 3, D)).astype(np.float32)
    jax_fs = [lambda h, m=m: jnp.tanh(h @ jnp.asarray(m)) for m in mats]
    np_fs = [lambda h, m=m: np.tanh(h @ m) for m in mats]
    h, alphas = path(jnp.asarray(v0), jax_fs)
    eps = path.depth[0].key_norm.epsilon
    h_ref, alphas_ref = _np_attnres(
        v0, np_fs, ws, scales, 4 if residual == "full" else n_blocks, eps
    )
    np.testing.assert_allclose(np.asarray(h), h_ref, rtol=1e-4, atol=1e-5)
    assert [a.shape[-1] for a in alphas] == attnres.num_sources(residual, L, n_blocks)
    for a, ar in zip(alphas, alphas_ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), ar, rtol=1e-4, atol=1e-6)


def test_standard_residual_is_a_running_sum():
    path = attnres.ResidualPath("standard", 3, 1, 4, rngs=nnx.Rngs(0))
    v0 = jnp.ones((1, 2, 4))
    # h1 = v0; h2 = h1 + 2 h1 = 3 v0; h3 = 9 v0; out = 27 v0
    h, alphas = path(v0, [lambda h: 2.0 * h] * 3)
    np.testing.assert_allclose(np.asarray(h), 27.0 * np.ones((1, 2, 4)))
    assert alphas == []


@pytest.mark.parametrize("residual", ["full", "block"])
def test_zero_initialised_queries_give_uniform_depth_weights(residual):
    model = Transformer(_cfg(residual=residual, n_blocks=2), rngs=nnx.Rngs(0))
    for da in model.residual.depth:
        np.testing.assert_array_equal(np.asarray(da.query[...]), 0.0)
    out = model(_tokens(), return_traces=True)
    alphas = out.traces["alpha"]
    assert len(alphas) == 2 * 2 + 1  # L sublayers + readout
    for a in alphas:
        np.testing.assert_allclose(np.asarray(a), 1.0 / a.shape[-1], rtol=1e-6)


def test_block_with_one_sublayer_per_block_equals_full():
    full = Transformer(_cfg(residual="full"), rngs=nnx.Rngs(0))
    _randomize_queries(full)
    block = Transformer(_cfg(residual="block", n_blocks=4), rngs=nnx.Rngs(7))
    nnx.update(block, nnx.state(full))
    x = _tokens()
    of = full(x, return_traces=True)
    ob = block(x, return_traces=True)
    np.testing.assert_allclose(np.asarray(ob.logits), np.asarray(of.logits), rtol=1e-6, atol=1e-6)
    for a, b in zip(of.traces["alpha"], ob.traces["alpha"], strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
    # and block with fewer blocks is a different model
    b2 = Transformer(_cfg(residual="block", n_blocks=2), rngs=nnx.Rngs(0))
    nnx.update(b2, nnx.state(full))
    assert not np.allclose(np.asarray(b2(x).logits), np.asarray(of.logits), atol=1e-4)


@pytest.mark.parametrize("residual", ["full", "block"])
def test_trace_weights_are_distributions(residual):
    model = Transformer(_cfg(residual=residual, n_blocks=2), rngs=nnx.Rngs(0))
    _randomize_queries(model)
    alphas = model(_tokens(), return_traces=True).traces["alpha"]
    assert [a.shape[-1] for a in alphas] == attnres.num_sources(residual, 4, 2)
    for a in alphas:
        a = np.asarray(a)
        assert a.shape[:2] == (3, T) and np.all(a >= 0)
        np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-6)
    # random queries really route non-uniformly
    assert np.abs(np.asarray(alphas[-1]) - 1 / alphas[-1].shape[-1]).max() > 0.05


def test_forward_shapes_traces_flag_and_dropout():
    model = Transformer(_cfg(residual="standard", dropout=0.5), rngs=nnx.Rngs(0))
    x = _tokens()
    out = model(x)
    assert out.logits.shape == (3, C) and out.traces is None
    assert float(out.aux_loss) == 0.0 and out.aux == {}
    out_t = model(x, return_traces=True)
    assert out_t.traces == {"alpha": [], "mlp": [{}, {}]}
    np.testing.assert_array_equal(
        np.asarray(model(x).logits), np.asarray(out.logits)
    )  # eval: no dropout
    a, b = model(x, train=True).logits, model(x, train=True).logits  # fresh dropout masks
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_model_is_jittable_and_has_expected_params():
    model = Transformer(_cfg(residual="block", n_blocks=2), rngs=nnx.Rngs(0))
    f = nnx.jit(lambda m, x: m(x, return_traces=True))
    out = f(model, _tokens())
    assert len(out.traces["alpha"]) == 5
    n_depth = len(jax.tree.leaves(nnx.state(model.residual, nnx.Param)))
    assert n_depth == 2 * 5  # query + key scale per site


def test_bad_input_raises():
    model = Transformer(_cfg(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="tokens"):
        model(jnp.ones((2, T + 1, P)))
    with pytest.raises(ValueError, match="tokens"):
        model(jnp.ones((T, P)))
    with pytest.raises(ValueError, match="n_blocks"):
        _cfg(residual="block", n_blocks=3)
    with pytest.raises(ValueError, match="residual"):
        _cfg(residual="fancy")
    with pytest.raises(ValueError, match="n_heads"):
        _cfg(n_heads=3)
    with pytest.raises(ValueError, match="mlp_type"):
        _cfg(mlp_type="sparse")
    with pytest.raises(ValueError, match="unknown key"):
        ModelConfig.from_config({"d_modle": 8}, seq_len=T, token_dim=P, num_classes=C)
    with pytest.raises(ValueError, match="model.vmoer"):
        make_mlp(_cfg(mlp_type="vmoer_mfvr", vmoer=(("betta", 1.0),)), rngs=nnx.Rngs(0))


def test_from_config_is_hashable_and_reads_vmoer():
    import ml_collections

    mc = ml_collections.ConfigDict({"d_model": 8, "n_heads": 2, "vmoer": {"beta": 0.1}})
    cfg = ModelConfig.from_config(mc, seq_len=T, token_dim=P, num_classes=C)
    hash(cfg)
    assert cfg.vmoer_options == {"beta": 0.1} and cfg.d_model == 8
