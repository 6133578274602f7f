"""Parity with the reference PyTorch implementations (Hugging Face transformers), float32.

Each test builds a tiny random model of one family with transformers from a config (no download),
re-draws its weights at a scale where every convention matters (std 0.3; norm scales 1 +- 0.1),
saves it with `save_pretrained`, imports it with `load_hf`, and compares logits, router logits and
the selected experts on random ids. Needs torch and transformers (the optional `hf` extra):
`python -m pytest -m hf tests/models/pretrained -s` prints the measured max differences.
"""

from __future__ import annotations

import numpy as np
import pytest

from routecal.models.pretrained import load_hf

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.hf
TOL = 1e-4
COMMON = dict(vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, num_experts_per_tok=2)
CASES = {
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              dict(intermediate_size=16, num_hidden_layers=3, num_experts=8, norm_topk_prob=False)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(intermediate_size=24, moe_intermediate_size=16, num_hidden_layers=3,
                       shared_expert_intermediate_size=20, num_experts=8, norm_topk_prob=True,
                       decoder_sparse_step=1, mlp_only_layers=[1])),
    "qwen2_moe_step2": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                        dict(intermediate_size=24, moe_intermediate_size=16, num_hidden_layers=4,
                             shared_expert_intermediate_size=20, num_experts=6,
                             norm_topk_prob=False, decoder_sparse_step=2, rope_theta=500.0)),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM",
                   dict(intermediate_size=16, num_hidden_layers=3, num_local_experts=8,
                        embedding_multiplier=6.0, residual_multiplier=0.4,
                        attention_multiplier=0.2, logits_scaling=3.0, tie_word_embeddings=True)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(intermediate_size=16, num_hidden_layers=2, num_local_experts=6)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(intermediate_size=24, moe_intermediate_size=16, num_hidden_layers=3,
                       num_experts=8, head_dim=12, norm_topk_prob=True, mlp_only_layers=[1],
                       decoder_sparse_step=1)),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                    dict(intermediate_size=24, moe_intermediate_size=16, num_hidden_layers=3,
                         n_routed_experts=8, n_shared_experts=2, kv_lora_rank=12, q_lora_rank=10,
                         qk_rope_head_dim=4, qk_nope_head_dim=6, v_head_dim=5,
                         first_k_dense_replace=1, routed_scaling_factor=1.5,
                         num_key_value_heads=4)),
    "deepseek_v2_group": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                          dict(intermediate_size=24, moe_intermediate_size=16,
                               num_hidden_layers=2, n_routed_experts=8, n_shared_experts=1,
                               kv_lora_rank=12, q_lora_rank=None, qk_rope_head_dim=4,
                               qk_nope_head_dim=8, v_head_dim=6, first_k_dense_replace=0,
                               topk_method="group_limited_greedy", n_group=4, topk_group=2,
                               num_key_value_heads=4)),
    "deepseek_v2_yarn": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                         dict(intermediate_size=24, moe_intermediate_size=16,
                              num_hidden_layers=2, n_routed_experts=8, n_shared_experts=2,
                              kv_lora_rank=12, q_lora_rank=None, qk_rope_head_dim=8,
                              qk_nope_head_dim=6, v_head_dim=5, first_k_dense_replace=1,
                              num_key_value_heads=4, rope_parameters={
                                  "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                  "original_max_position_embeddings": 8, "beta_fast": 32,
                                  "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707})),
}


def _reference(name: str, tmp_path):
    cfg_cls, model_cls, extra = CASES[name]
    kwargs = {**COMMON, **extra}
    theta = kwargs.pop("rope_theta", None)
    rope_parameters = kwargs.pop("rope_parameters", None)
    config = getattr(transformers, cfg_cls)(**kwargs)
    if theta is not None:
        config.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    if rope_parameters is not None:
        config.rope_parameters = rope_parameters
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    return model, config


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_and_router_match_transformers(name, tmp_path):
    ref, config = _reference(name, tmp_path)
    ids = np.random.default_rng(0).integers(0, COMMON["vocab_size"], (2, 12))
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids), output_router_logits=True)
    ref_logits = out.logits.numpy()
    ref_router = [r.reshape(2, 12, -1).numpy() for r in out.router_logits or ()]

    model, info = load_hf(tmp_path, dtype="float32")
    got = model(ids, return_traces=True)
    mlp = got.traces["mlp"]
    assert len(mlp) == len(info.config.moe_layers) >= 1
    assert len(ref_router) in (0, len(mlp))  # DeepSeek-V2 returns no router logits
    d_logits = float(np.max(np.abs(np.asarray(got.logits) - ref_logits)))
    d_router = max(
        (float(np.max(np.abs(np.asarray(t["router_logits"]) - r)))
         for t, r in zip(mlp, ref_router, strict=False)), default=0.0
    )
    print(f"\nPARITY {name}: max|logits diff| = {d_logits:.3g} (|logits| up to "
          f"{np.abs(ref_logits).max():.3g}), max|router logits diff| = {d_router:.3g}")
    assert d_logits <= TOL and d_router <= TOL
    if info.config.n_group > 1:
        return  # group-limited choices are not the plain top-k of the logits
    for t, r in zip(mlp, ref_router, strict=False):  # the same experts, in the same order
        top = torch.topk(torch.tensor(r), info.config.top_k, dim=-1).indices.numpy()
        np.testing.assert_array_equal(np.asarray(t["experts"]), top)


def test_a_wrong_convention_is_detected(tmp_path):
    """The comparison has teeth: Granite imported with OLMoE's gating (no top-k renormalisation)
    moves the logits far beyond the tolerance."""
    ref, _ = _reference("granitemoe", tmp_path)
    ids = np.random.default_rng(0).integers(0, COMMON["vocab_size"], (2, 12))
    with torch.no_grad():
        ref_logits = ref(input_ids=torch.tensor(ids)).logits.numpy()
    model, _ = load_hf(tmp_path, dtype="float32", overrides={"router_order": "softmax_topk"})
    assert float(np.max(np.abs(np.asarray(model(ids).logits) - ref_logits))) > 100 * TOL
