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
    elif model_type == "mixtral":
        base.update(intermediate_size=F, num_local_experts=E, sliding_window=None)
    elif model_type == "qwen3_moe":
        base.update(intermediate_size=DENSE_F, moe_intermediate_size=F, num_experts=E,
                    decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True, head_dim=6)
    elif model_type in ("deepseek", "deepseek_v2"):
        base.update(intermediate_size=DENSE_F, moe_intermediate_size=F, n_routed_experts=E,
                    n_shared_experts=2, first_k_dense_replace=1, moe_layer_freq=1,
                    norm_topk_prob=False, num_hidden_layers=3, num_key_value_heads=H)
        if model_type == "deepseek_v2":
            base.update(kv_lora_rank=6, q_lora_rank=5, qk_rope_head_dim=4, qk_nope_head_dim=3,
                        v_head_dim=5, routed_scaling_factor=1.5, topk_method="greedy")
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

    v = cfg["vocab_size"]
    t = {"model.embed_tokens.weight": w(v, D), "model.norm.weight": ones_ish(D)}
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = w(v, D)
    dense = set(cfg.get("mlp_only_layers", []))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = ones_ish(D)
        t[p + "post_attention_layernorm.weight"] = ones_ish(D)
        kh = cfg.get("head_dim") or K
        g = cfg["num_key_value_heads"]
        if mt == "deepseek_v2":  # multi-head latent attention: [out, in] like every Linear
            qk = cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
            c, r, q = cfg["kv_lora_rank"], cfg["qk_rope_head_dim"], cfg["q_lora_rank"]
            t[p + "self_attn.q_a_proj.weight"] = w(q, D)
            t[p + "self_attn.q_a_layernorm.weight"] = ones_ish(q)
            t[p + "self_attn.q_b_proj.weight"] = w(H * qk, q)
            t[p + "self_attn.kv_a_proj_with_mqa.weight"] = w(c + r, D)
            t[p + "self_attn.kv_a_layernorm.weight"] = ones_ish(c)
            t[p + "self_attn.kv_b_proj.weight"] = w(H * (cfg["qk_nope_head_dim"] +
                                                         cfg["v_head_dim"]), c)
            t[p + "self_attn.o_proj.weight"] = w(D, H * cfg["v_head_dim"])
        else:
            for name, n_out in (("q", H * kh), ("k", g * kh), ("v", g * kh)):
                t[p + f"self_attn.{name}_proj.weight"] = w(n_out, D)
                if mt == "qwen2_moe":
                    t[p + f"self_attn.{name}_proj.bias"] = w(n_out)
            t[p + "self_attn.o_proj.weight"] = w(D, H * kh)
        if mt == "olmoe":
            t[p + "self_attn.q_norm.weight"] = ones_ish(H * K)
            t[p + "self_attn.k_norm.weight"] = ones_ish(G * K)
        if mt == "qwen3_moe":  # per-head norms
            t[p + "self_attn.q_norm.weight"] = ones_ish(kh)
            t[p + "self_attn.k_norm.weight"] = ones_ish(kh)
        if mt == "mixtral":
            t[p + "block_sparse_moe.gate.weight"] = w(E, D)
            for j in range(E):
                t[p + f"block_sparse_moe.experts.{j}.w1.weight"] = w(F, D)
                t[p + f"block_sparse_moe.experts.{j}.w3.weight"] = w(F, D)
                t[p + f"block_sparse_moe.experts.{j}.w2.weight"] = w(D, F)
            continue
        if mt.startswith("deepseek") and i < cfg["first_k_dense_replace"]:
            dense.add(i)
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
        if mt.startswith("deepseek"):  # ungated shared experts, one MLP of n_shared * F
            sf = F * cfg["n_shared_experts"]
            for name, shape in (("gate", (sf, D)), ("up", (sf, D)), ("down", (D, sf))):
                t[p + f"mlp.shared_experts.{name}_proj.weight"] = w(*shape)
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
