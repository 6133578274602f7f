"""load_hf on tiny checkpoints written with safetensors alone: layouts, shards, dtypes, errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import numpy_ref
import pytest
from flax import nnx
from tiny_hf import D, E, F, H, K, L, V, hf_config, hf_tensors, write_checkpoint

import routecal as rc
from routecal.models.pretrained import load_hf


def _params(model) -> dict[str, np.ndarray]:
    flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {".".join(map(str, k)): np.asarray(v, np.float32) for k, v in flat.items()}


def test_rc_pretrained_resolves():
    assert rc.pretrained.load_hf is load_hf


def test_olmoe_round_trip_layouts(checkpoint):
    d, cfg, t = checkpoint("olmoe")
    model, info = load_hf(d, dtype="float32")
    p = _params(model)
    # Expected values from the [out, in] PyTorch layout, transposed by hand.
    np.testing.assert_array_equal(p["embed.embedding"], t["model.embed_tokens.weight"])
    np.testing.assert_array_equal(p["lm_head.kernel"], t["lm_head.weight"].T)
    np.testing.assert_array_equal(p["final_norm.scale"], t["model.norm.weight"])
    for i in range(L):
        pre = f"model.layers.{i}."
        np.testing.assert_array_equal(p[f"layers.{i}.attn.q_proj.kernel"],
                                      t[pre + "self_attn.q_proj.weight"].T)
        np.testing.assert_array_equal(p[f"layers.{i}.attn.k_norm.scale"],
                                      t[pre + "self_attn.k_norm.weight"])
        np.testing.assert_array_equal(p[f"layers.{i}.mlp.router.proj.kernel"],
                                      t[pre + "mlp.gate.weight"].T)
        for j in range(E):
            e = pre + f"mlp.experts.{j}."
            np.testing.assert_array_equal(p[f"layers.{i}.mlp.experts.w_gate_ExDxF"][j],
                                          t[e + "gate_proj.weight"].T)
            np.testing.assert_array_equal(p[f"layers.{i}.mlp.experts.w_in_ExDxF"][j],
                                          t[e + "up_proj.weight"].T)
            np.testing.assert_array_equal(p[f"layers.{i}.mlp.experts.w_out_ExFxD"][j],
                                          t[e + "down_proj.weight"].T)
    assert info.family.model_type == "olmoe"
    assert info.config.qk_norm and info.config.router_order == "softmax_topk"
    assert not info.config.norm_topk_prob
    assert info.n_params == sum(a.size for a in t.values())
    assert info.param_bytes_per_device == 4 * info.n_params


def test_granite_fused_experts_and_tied_head(checkpoint):
    d, cfg, t = checkpoint("granitemoe", tie_word_embeddings=True)
    model, info = load_hf(d, dtype="float32")
    p = _params(model)
    assert "lm_head.kernel" not in p and info.config.tie_embeddings
    fused = t["model.layers.1.block_sparse_moe.input_linear.weight"]  # [E, 2F, D]
    np.testing.assert_array_equal(p["layers.1.mlp.experts.w_gate_ExDxF"],
                                  fused[:, :F, :].transpose(0, 2, 1))
    np.testing.assert_array_equal(p["layers.1.mlp.experts.w_in_ExDxF"],
                                  fused[:, F:, :].transpose(0, 2, 1))
    np.testing.assert_array_equal(p["layers.1.mlp.experts.w_out_ExFxD"],
                                  t["model.layers.1.block_sparse_moe.output_linear.weight"]
                                  .transpose(0, 2, 1))
    c = info.config
    assert (c.embedding_multiplier, c.residual_multiplier, c.attention_multiplier,
            c.logits_scaling, c.router_order) == (4.0, 0.5, 0.3, 2.0, "topk_softmax")


def test_qwen_biases_and_shared_expert(checkpoint):
    d, cfg, t = checkpoint("qwen2_moe")
    model, info = load_hf(d, dtype="float32")
    p = _params(model)
    pre = "model.layers.0."
    np.testing.assert_array_equal(p["layers.0.attn.k_proj.bias"], t[pre + "self_attn.k_proj.bias"])
    assert "layers.0.attn.o_proj.bias" not in p
    np.testing.assert_array_equal(p["layers.0.mlp.shared_expert.down_proj.kernel"],
                                  t[pre + "mlp.shared_expert.down_proj.weight"].T)
    np.testing.assert_array_equal(p["layers.0.mlp.shared_expert_gate.kernel"],
                                  t[pre + "mlp.shared_expert_gate.weight"].T)
    assert info.config.shared_expert_gate and info.config.norm_topk_prob


def test_forward_shapes_and_traces(checkpoint):
    d, _, _ = checkpoint("olmoe")
    model, _ = load_hf(d, dtype="float32")
    ids = np.random.default_rng(0).integers(0, V, (2, 5))
    out = model(ids, return_traces=True)
    assert out.logits.shape == (2, 5, V) and out.logits.dtype == jnp.float32
    assert len(out.traces["mlp"]) == L
    tr = out.traces["mlp"][0]
    assert tr["router_logits"].shape == (2, 5, E)
    assert tr["experts"].shape == tr["gates"].shape == (2, 5, 2)
    # OLMoE gates: softmax over all E logits, then top-k, not renormalised (checked by numpy).
    probs = np.exp(tr["router_logits"]) / np.exp(tr["router_logits"]).sum(-1, keepdims=True)
    top = -np.sort(-probs, axis=-1)[..., :2]
    np.testing.assert_allclose(tr["gates"], top, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_shards,index", [(3, True), (2, False)])
def test_sharded_files_match_single_file(checkpoint, n_shards, index):
    d1, _, t = checkpoint("qwen2_moe")
    d2, _, _ = checkpoint("qwen2_moe", n_shards=n_shards, index=index, tensors=t)
    assert len([n for n in os.listdir(d2) if n.endswith(".safetensors")]) == n_shards
    p1, p2 = _params(load_hf(d1, dtype="float32")[0]), _params(load_hf(d2, dtype="float32")[0])
    assert p1.keys() == p2.keys()
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])


def test_bfloat16_checkpoint_and_cast(checkpoint):
    cfg = hf_config("olmoe")
    t32 = hf_tensors(cfg)
    t16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in t32.items()}
    d, _, _ = checkpoint("olmoe", tensors=t16)
    model, info = load_hf(d)  # default dtype bfloat16
    q = nnx.state(model, nnx.Param)["layers"][0]["attn"]["q_proj"]["kernel"][...]
    assert q.dtype == jnp.bfloat16 and info.dtype == "bfloat16"
    np.testing.assert_array_equal(np.asarray(q), t16["model.layers.0.self_attn.q_proj.weight"].T)
    assert info.param_bytes_per_device == 2 * info.n_params
    # float32 tensors cast on the way in equal numpy's own bfloat16 rounding.
    d32, _, _ = checkpoint("olmoe", tensors=t32)
    q2 = nnx.state(load_hf(d32)[0], nnx.Param)["layers"][0]["attn"]["q_proj"]["kernel"][...]
    np.testing.assert_array_equal(np.asarray(q2), t16["model.layers.0.self_attn.q_proj.weight"].T)
    out = model(np.array([[1, 2, 3]]))
    assert out.logits.dtype == jnp.float32 and np.all(np.isfinite(out.logits))


def test_missing_tensor_is_named(checkpoint):
    t = hf_tensors(hf_config("olmoe"))
    del t["model.layers.1.mlp.experts.2.up_proj.weight"]
    d, _, _ = checkpoint("olmoe", tensors=t)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.experts\.2\.up_proj\.weight"):
        load_hf(d)


def test_wrong_shape_is_named(checkpoint):
    t = hf_tensors(hf_config("granitemoe"))
    t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((H * K, D), np.float32)  # not G * K
    d, _, _ = checkpoint("granitemoe", tensors=t)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*shape"):
        load_hf(d)


def test_unused_tensor_and_nan_raise(checkpoint):
    t = hf_tensors(hf_config("olmoe"))
    t["model.layers.0.self_attn.q_proj.bias"] = np.zeros(H * K, np.float32)  # config: no bias
    d, _, _ = checkpoint("olmoe", tensors=t)
    with pytest.raises(ValueError, match="q_proj.bias"):
        load_hf(d)
    t = hf_tensors(hf_config("olmoe"))
    t["model.norm.weight"][3] = np.nan
    d, _, _ = checkpoint("olmoe", tensors=t)
    with pytest.raises(ValueError, match=r"model\.norm\.weight.*NaN"):
        load_hf(d)


def test_config_errors(checkpoint, tmp_path):
    d, cfg, t = checkpoint("olmoe")
    for change, pattern in (
        ({"model_type": "dbrx"}, "unsupported model_type 'dbrx'"),
        ({"rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8}},
         "RoPE scaling"),  # YaRN only where the family supports it (deepseek_v2)
        ({"clip_qkv": 8.0}, "clip_qkv"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE scaling"),
        ({"hidden_act": "gelu"}, "hidden_act"),
    ):
        bad = write_checkpoint(tmp_path / pattern[:6].replace(" ", "_"), {**cfg, **change}, t)
        with pytest.raises(ValueError, match=pattern):
            load_hf(bad)
    with pytest.raises(ValueError, match="dtype"):
        load_hf(d, dtype="float16")
    with pytest.raises(ValueError, match="not a directory"):
        load_hf(tmp_path / "nowhere")
    os.remove(os.path.join(d, "config.json"))
    with pytest.raises(ValueError, match="no config.json"):
        load_hf(d)


def test_missing_shard_is_named(checkpoint):
    d, _, _ = checkpoint("olmoe", n_shards=2)
    os.remove(os.path.join(d, "model-00002-of-00002.safetensors"))
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors"):
        load_hf(d)


def test_new_style_rope_parameters(checkpoint):
    d, cfg, t = checkpoint("olmoe")
    cfg = {k: v for k, v in cfg.items() if k != "rope_theta"}
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 500.0}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    assert load_hf(d)[1].config.rope_theta == 500.0


def test_tokenizer_from_tokenizer_json(checkpoint):
    from tokenizers import Tokenizer, models, pre_tokenizers

    d, _, _ = checkpoint("olmoe")
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(d, "tokenizer.json"))
    _, info = load_hf(d)
    assert info.tokenizer.encode("hello world moe").ids == [1, 2, 0]


def test_mesh_sharding_matches_single_device(checkpoint):
    d, _, _ = checkpoint("olmoe")
    ref, _ = load_hf(d, dtype="float32")
    mesh = jax.make_mesh((2, 4), ("fsdp", "expert"))  # Explicit axes: load_hf makes them Auto
    model, info = load_hf(d, dtype="float32", mesh=mesh, expert_axis="expert")
    specs = info.partition_specs
    assert specs["embed.embedding"] == jax.sharding.PartitionSpec(("fsdp", "expert"), None)
    assert specs["layers.0.mlp.experts.w_in_ExDxF"] == jax.sharding.PartitionSpec(
        "expert", "fsdp", None)
    w = nnx.state(model, nnx.Param)["layers"][0]["mlp"]["experts"]["w_in_ExDxF"][...]
    assert len(w.addressable_shards) == 8 and w.addressable_shards[0].data.shape == (1, D // 2, F)
    ids = np.random.default_rng(1).integers(0, V, (2, 6))
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x).logits)(model, ids),
                               ref(ids).logits, rtol=1e-5, atol=1e-5)
    total = 4 * info.n_params
    assert info.param_bytes_per_device < total / 2


def test_posterior_is_fresh_rest_is_imported(checkpoint):
    d, _, t = checkpoint("olmoe")
    model, info = load_hf(d, dtype="float32", overrides={"mlp_type": "vmoer_mfvr"})
    assert info.fresh_params and all("vrouter" in p for p in info.fresh_params)
    p = _params(model)
    np.testing.assert_array_equal(p["layers.0.mlp.router.proj.kernel"],
                                  t["model.layers.0.mlp.gate.weight"].T)
    out = model(np.array([[1, 2, 3, 4]]), return_traces=True)
    assert np.all(np.isfinite(out.logits))
    _, info16 = load_hf(d, overrides={"mlp_type": "vmoer_mfvr"})  # bf16 weights, f32 posterior
    n_fresh = sum(p[k].size for k in info.fresh_params)
    assert info16.param_bytes_per_device == 2 * (info16.n_params - n_fresh) + 4 * n_fresh


def test_qwen_mlp_only_layers_become_dense(checkpoint):
    d, _, t = checkpoint("qwen2_moe", mlp_only_layers=[1])
    model, info = load_hf(d, dtype="float32")
    assert info.config.dense_layers == (1,) and info.config.moe_layers == (0,)
    p = _params(model)
    np.testing.assert_array_equal(p["layers.1.mlp.up_proj.kernel"],
                                  t["model.layers.1.mlp.up_proj.weight"].T)
    assert len(model(np.array([[3, 1, 4]]), return_traces=True).traces["mlp"]) == 1
    with pytest.raises(ValueError, match="dense_layers"):
        rc.models.DecoderConfig(n_layers=2, mlp_type="moe", dense_layers=(2,))


@pytest.mark.parametrize("model_type,extra", [
    ("olmoe", {}),
    ("qwen2_moe", {"mlp_only_layers": [1], "norm_topk_prob": True}),
    ("granitemoe", {"tie_word_embeddings": True}),
    ("mixtral", {}),
    ("qwen3_moe", {"mlp_only_layers": [1], "norm_topk_prob": False}),
    ("deepseek", {"norm_topk_prob": True}),
])
def test_logits_match_a_numpy_reference(checkpoint, model_type, extra):
    """CI parity without torch: an independent numpy forward pass on the checkpoint tensors."""
    d, cfg, t = checkpoint(model_type, **extra)
    model, _ = load_hf(d, dtype="float32")
    ids = np.random.default_rng(2).integers(0, V, (2, 7))
    out = model(ids, return_traces=True)
    for b in range(2):
        ref_logits, ref_router = numpy_ref.forward(cfg, t, ids[b])
        np.testing.assert_allclose(np.asarray(out.logits[b]), ref_logits, atol=1e-4, rtol=1e-4)
        for tr, r in zip(out.traces["mlp"], ref_router, strict=True):
            np.testing.assert_allclose(np.asarray(tr["router_logits"][b]), r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("how", ["truncated", "random_bytes", "empty"])
def test_unreadable_safetensors_names_file(checkpoint, how):
    d, _, _ = checkpoint("olmoe", n_shards=2)
    f = os.path.join(d, "model-00002-of-00002.safetensors")
    data = open(f, "rb").read()
    bad = {"truncated": data[: len(data) // 2],
           "random_bytes": np.random.default_rng(0).bytes(len(data)), "empty": b""}[how]
    with open(f, "wb") as fh:
        fh.write(bad)
    with pytest.raises(ValueError, match="not a readable safetensors file") as e:
        load_hf(d)
    assert f in str(e.value) and "\n" not in str(e.value)


def test_safetensors_cut_inside_data_names_file_and_tensor(checkpoint):
    """Header intact, data cut short: safetensors checks the size at open, named either way."""
    d, _, _ = checkpoint("olmoe", index=False)
    f = os.path.join(d, "model.safetensors")
    data = open(f, "rb").read()
    with open(f, "wb") as fh:
        fh.write(data[:-64])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_hf(d)


def test_corrupt_index_json_names_file(checkpoint):
    d, _, _ = checkpoint("olmoe", n_shards=2)
    f = os.path.join(d, "model.safetensors.index.json")
    with open(f, "wb") as fh:
        fh.write(b'{"weight_map": {"a": \xff')
    with pytest.raises(ValueError, match="model.safetensors.index.json is not valid JSON"):
        load_hf(d)


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.int8])
def test_non_float_tensor_refused_not_cast(checkpoint, dtype):
    t = hf_tensors(hf_config("olmoe"))
    name = "model.layers.0.mlp.gate.weight"
    t[name] = np.ones_like(t[name]).astype(dtype)
    d, _, _ = checkpoint("olmoe", tensors=t)
    with pytest.raises(ValueError, match=rf"{name}' in .*model.safetensors is (I32|BOOL|I8).*"
                                         "refused, not cast"):
        load_hf(d)
