"""Parameter memory per device of the published checkpoints, *computed* from their configs.

Nothing here is measured: the numbers are parameter counts of routecal's Decoder built abstractly
(`nnx.eval_shape`) from each checkpoint's config.json values (recorded below, since nothing is
downloaded here) times the bytes of the dtype, divided along the axes the `sharding` rules shard.
Activations, the KV cache, optimizer state and XLA's temporaries come on top.

    python -m routecal.models.pretrained.memory        # the README table (markdown)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from routecal.models.pretrained import sharding
from routecal.models.pretrained.loader import DTYPES, abstract_params, decoder_config

# The architecture keys of each checkpoint's config.json (values as published on its model page).
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "allenai/OLMoE-1B-7B-0924": {
        "model_type": "olmoe", "vocab_size": 50304, "hidden_size": 2048,
        "intermediate_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
        "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
        "norm_topk_prob": False, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "attention_bias": False,
    },
    "Qwen/Qwen1.5-MoE-A2.7B": {
        "model_type": "qwen2_moe", "vocab_size": 151936, "hidden_size": 2048,
        "intermediate_size": 5632, "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24,
        "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 60,
        "num_experts_per_tok": 4, "decoder_sparse_step": 1, "norm_topk_prob": False,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    },
    "ibm-granite/granite-3.1-3b-a800m": {
        "model_type": "granitemoe", "vocab_size": 49155, "hidden_size": 1536,
        "intermediate_size": 512, "num_hidden_layers": 32, "num_attention_heads": 24,
        "num_key_value_heads": 8, "num_local_experts": 40, "num_experts_per_tok": 8,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-6, "rope_theta": 10000000.0,
        "tie_word_embeddings": True, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
        "attention_multiplier": 0.015625, "logits_scaling": 6.0,
    },
    "mistralai/Mixtral-8x7B-v0.1": {
        "model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "sliding_window": None,
    },
    "Qwen/Qwen3-30B-A3B": {
        "model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 2048,
        "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
        "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True,
        "decoder_sparse_step": 1, "mlp_only_layers": [], "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
        "attention_bias": False,
    },
    "deepseek-ai/deepseek-moe-16b-base": {
        "model_type": "deepseek", "vocab_size": 102400, "hidden_size": 2048,
        "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 16, "n_routed_experts": 64,
        "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
        "moe_layer_freq": 1, "norm_topk_prob": False, "scoring_func": "softmax",
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
    "deepseek-ai/DeepSeek-V2-Lite": {
        "model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048,
        "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
        "num_attention_heads": 16, "num_key_value_heads": 16, "n_routed_experts": 64,
        "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
        "moe_layer_freq": 1, "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128, "v_head_dim": 128, "routed_scaling_factor": 1.0,
        "topk_method": "greedy", "norm_topk_prob": False, "scoring_func": "softmax",
        "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "rope_scaling": {
            "type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
            "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707},
    },
}
# Published totals (model cards / papers), in billions: (total, active per token).
PUBLISHED_SIZES = {
    "allenai/OLMoE-1B-7B-0924": (6.9, 1.3),
    "Qwen/Qwen1.5-MoE-A2.7B": (14.3, 2.7),
    "ibm-granite/granite-3.1-3b-a800m": (3.3, 0.8),
    "mistralai/Mixtral-8x7B-v0.1": (46.7, 12.9),
    "Qwen/Qwen3-30B-A3B": (30.5, 3.3),
    "deepseek-ai/deepseek-moe-16b-base": (16.4, 2.8),
    "deepseek-ai/DeepSeek-V2-Lite": (15.7, 2.4),
}
# Meshes of the table: name -> (axis sizes, expert axis or None).
MESHES: dict[str, tuple[dict[str, int], str | None]] = {
    "1 device": ({"fsdp": 1}, None),
    "8 (fsdp=8)": ({"fsdp": 8}, None),
    "8 (fsdp=2, expert=4)": ({"fsdp": 2, "expert": 4}, "expert"),
    "16 (fsdp=16)": ({"fsdp": 16}, None),
}


def param_shapes(hf_config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter path -> shape of the Decoder that `load_hf` builds for `hf_config`."""
    _, _, flat = abstract_params(decoder_config(hf_config, dtype="float32"))
    return {".".join(map(str, k)): tuple(v.shape) for k, v in flat.items()}


def active_params(shapes: Mapping[str, tuple[int, ...]], top_k: int) -> int:
    """Parameters a token touches: all, minus the (E - K) unselected experts of each MoE layer."""
    total = 0
    for p, s in shapes.items():
        n = int(np.prod(s))
        if sharding.EXPERT_MARK in p and len(s) == 3:
            n = n // s[0] * top_k
        total += n
    return total


def memory_rows(dtype: str = "bfloat16") -> list[dict[str, Any]]:
    """One row per published checkpoint: params, active params, GiB per device for each mesh."""
    itemsize = np.dtype(DTYPES[dtype]).itemsize
    rows = []
    for name, hf in PUBLISHED_CONFIGS.items():
        shapes = param_shapes(hf)
        row: dict[str, Any] = {
            "checkpoint": name,
            "params": sum(int(np.prod(s)) for s in shapes.values()),
            "active": active_params(shapes, hf["num_experts_per_tok"]),
        }
        for label, (mesh_shape, expert_axis) in MESHES.items():
            specs = {
                p: sharding.partition_spec(p, s, mesh_shape, expert_axis=expert_axis)
                for p, s in shapes.items()
            }
            row[label] = sharding.bytes_per_device(shapes, itemsize, specs, mesh_shape) / 2**30
        rows.append(row)
    return rows


def markdown_table(dtype: str = "bfloat16") -> str:
    """The README table: parameters and computed GiB of parameters per device at `dtype`."""
    head = ["checkpoint", "params (B)", "active (B)", *(f"GiB/dev, {m}" for m in MESHES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in memory_rows(dtype):
        cells = [r["checkpoint"], f"{r['params'] / 1e9:.2f}", f"{r['active'] / 1e9:.2f}"]
        cells += [f"{r[m]:.2f}" for m in MESHES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
