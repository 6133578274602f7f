"""Tiny Hugging Face-format MoE checkpoints written with `safetensors` alone (no torch).

Tensor names and layouts are written out by hand here, independently of routecal's family tables,
from the PyTorch reference code: `nn.Linear.weight` is [out, in]; OLMoE / Qwen2-MoE store one
gate/up/down projection per expert; Granite-MoE stores fused `input_linear` [E, 2F, D] (gate rows,
then up rows) and `output_linear` [E, D, F].
"""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

D, H, G, K, E, TOPK, F, V, L = 16, 4, 2, 4, 4, 2, 8, 32, 2
SHARED_F, DENSE_F = 12, 10


def hf_config(model_type: str, **extra) -> dict:
    base = {
        "vocab_size": V, "hidden_size": D, "num_hidden_layers": L, "num_attention_heads": H,
        "num_key_value_heads": G, "max_position_embeddings": 64, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "hidden_act": "silu", "num_experts_per_tok": TOPK,
        "tie_word_embeddings": False, "model_type": model_type,
    }
    if model_type == "olmoe":
        base.update(intermediate_size=F, num_experts=E, norm_topk_prob=False)
    elif model_type == "qwen2_moe":
        base.update(intermediate_size=DENSE_F, moe_intermediate_size=F, num_experts=E,
                    shared_expert_intermediate_size=SHARED_F, decoder_sparse_step=1,
                    mlp_only_layers=[], norm_topk_prob=True, qkv_bias=True)
    elif model_type == "granitemoe":
        base.update(intermediate_size=F, num_local_experts=E, embedding_multiplier=4.0,
                    residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=2.0)
    base.update(extra)
    return base


def hf_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors under the checkpoint's own names and [out, in] layouts."""
    rng = np.random.default_rng(seed)
    mt = cfg["model_type"]

    def w(*shape):
        return (0.3 * rng.standard_normal(shape)).astype(np.float32)

    def ones_ish(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    t = {"model.embed_tokens.weight": w(V, D), "model.norm.weight": ones_ish(D)}
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = w(V, D)
    dense = set(cfg.get("mlp_only_layers", []))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = ones_ish(D)
        t[p + "post_attention_layernorm.weight"] = ones_ish(D)
        for name, n_out in (("q", H * K), ("k", G * K), ("v", G * K)):
            t[p + f"self_attn.{name}_proj.weight"] = w(n_out, D)
            if mt == "qwen2_moe":
                t[p + f"self_attn.{name}_proj.bias"] = w(n_out)
        t[p + "self_attn.o_proj.weight"] = w(D, H * K)
        if mt == "olmoe":
            t[p + "self_attn.q_norm.weight"] = ones_ish(H * K)
            t[p + "self_attn.k_norm.weight"] = ones_ish(G * K)
        if mt == "granitemoe":
            t[p + "block_sparse_moe.router.layer.weight"] = w(E, D)
            t[p + "block_sparse_moe.input_linear.weight"] = w(E, 2 * F, D)
            t[p + "block_sparse_moe.output_linear.weight"] = w(E, D, F)
            continue
        if i in dense:
            for name, shape in (("gate", (DENSE_F, D)), ("up", (DENSE_F, D)),
                                ("down", (D, DENSE_F))):
                t[p + f"mlp.{name}_proj.weight"] = w(*shape)
            continue
        t[p + "mlp.gate.weight"] = w(E, D)
        for j in range(E):
            t[p + f"mlp.experts.{j}.gate_proj.weight"] = w(F, D)
            t[p + f"mlp.experts.{j}.up_proj.weight"] = w(F, D)
            t[p + f"mlp.experts.{j}.down_proj.weight"] = w(D, F)
        if mt == "qwen2_moe":
            for name, shape in (("gate", (SHARED_F, D)), ("up", (SHARED_F, D)),
                                ("down", (D, SHARED_F))):
                t[p + f"mlp.shared_expert.{name}_proj.weight"] = w(*shape)
            t[p + "mlp.shared_expert_gate.weight"] = w(1, D)
    return t


def write_checkpoint(directory, cfg: dict, tensors: dict, *, n_shards: int = 1,
                     index: bool = True) -> str:
    """Writes config.json and the tensors (one file, or `n_shards` files with an index)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f)
    names = sorted(tensors)
    if n_shards == 1:
        save_file(tensors, os.path.join(directory, "model.safetensors"))
        return str(directory)
    weight_map = {}
    for s in range(n_shards):
        shard = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::n_shards]}
        save_file(part, os.path.join(directory, shard))
        weight_map.update({n: shard for n in part})
    if index:
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return str(directory)
