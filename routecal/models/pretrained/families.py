"""The Hugging Face MoE families routecal imports: one small table per family, no name branches.

Each `Family` says how its `config.json` maps onto `DecoderConfig`, which tensor of the checkpoint
fills each routecal parameter (with its layout change, `sources.KINDS`), and its gating convention.
Read from the reference PyTorch code (transformers 5.x `modeling_<family>.py`; DeepSeek-MoE v1:
its remote `modeling_deepseek.py`); checkpoint names are the on-disk ones (`save_pretrained` writes
the per-expert / fused-legacy hub layout below, which the published checkpoints hold).

* OLMoE (`OlmoeForCausalLM`): `q_norm` / `k_norm` are RMSNorms over the *full* q and k projections
  (H*K and G*K features, before the heads are split); router softmax over all E experts, then
  top-k with no renormalisation; every layer is MoE; `clip_qkv` is not supported (must be null).
* Qwen2-MoE (`Qwen2MoeForCausalLM`, e.g. Qwen/Qwen1.5-MoE-A2.7B): biases on q, k, v (`qkv_bias`,
  not on o); softmax then top-k, renormalised iff `norm_topk_prob`; a shared SwiGLU expert of width
  `shared_expert_intermediate_size` added to every MoE output, gated by sigmoid(w . x); layer i is
  MoE iff i not in `mlp_only_layers` and (i + 1) % `decoder_sparse_step` == 0, else a dense SwiGLU of
  width `intermediate_size`; sliding-window attention is not supported (`use_sliding_window` false).
* Granite-MoE (`GraniteMoeForCausalLM`, e.g. ibm-granite/granite-3.1-3b-a800m): embeddings times
  `embedding_multiplier`, each sublayer output times `residual_multiplier` before the residual add,
  attention logits times `attention_multiplier` (instead of 1/sqrt(K)), logits divided by
  `logits_scaling`; router top-k on the logits, then softmax over the k selected logits; experts
  stored fused: `input_linear` [E, 2F, D] (gate rows first, then up), `output_linear` [E, D, F].

* Mixtral (`MixtralForCausalLM`): softmax top-2 renormalised; experts `block_sparse_moe.experts.
  {j}.w1` (gate), `w3` (up), `w2` (down). Qwen3-MoE: Qwen2-MoE's layer rule, no shared expert,
  q/k RMSNorm per head (`head_dim` features), `num_experts` (or `num_local_experts`).
* DeepSeek-MoE v1 (`deepseek`, remote code) and DeepSeek-V2 (`deepseek_v2`): softmax top-k
  (greedy or group-limited), gates times `routed_scaling_factor` (V2), `n_shared_experts` ungated
  shared experts; layer i is MoE iff i >= `first_k_dense_replace` and i % `moe_layer_freq` == 0;
  V2 uses multi-head latent attention (`routecal.models.mla`) and optionally YaRN RoPE scaling.

All: pre-norm RMSNorm, RoPE in the rotate-half layout with `rope_theta` (no rope scaling),
SwiGLU experts with SiLU, untied output head unless `tie_word_embeddings`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from routecal.models import yarn
from routecal.models.pretrained.sources import Source

# --- tensor tables: (routecal parameter path, checkpoint name, kind); {i} layer, {p} a projection
#     name, {j} the expert index of per-expert tensors (stacked along a new leading axis).
COMMON_TENSORS = (
    ("embed.embedding", "model.embed_tokens.weight", "copy"),
    ("final_norm.scale", "model.norm.weight", "copy"),
    ("lm_head.kernel", "lm_head.weight", "T"),
    ("layers.{i}.attn_norm.scale", "model.layers.{i}.input_layernorm.weight", "copy"),
    ("layers.{i}.mlp_norm.scale", "model.layers.{i}.post_attention_layernorm.weight", "copy"),
    ("layers.{i}.attn.{p}_proj.kernel", "model.layers.{i}.self_attn.{p}_proj.weight", "T"),
    ("layers.{i}.attn.{p}_proj.bias", "model.layers.{i}.self_attn.{p}_proj.bias", "copy"),
    ("layers.{i}.attn.{p}_norm.scale", "model.layers.{i}.self_attn.{p}_norm.weight", "copy"),
    ("layers.{i}.mlp.{p}_proj.kernel", "model.layers.{i}.mlp.{p}_proj.weight", "T"),
)
PER_EXPERT_MOE_TENSORS = (
    ("layers.{i}.mlp.router.proj.kernel", "model.layers.{i}.mlp.gate.weight", "T"),
    ("layers.{i}.mlp.experts.w_gate_ExDxF", "model.layers.{i}.mlp.experts.{j}.gate_proj.weight",
     "stack_T"),
    ("layers.{i}.mlp.experts.w_in_ExDxF", "model.layers.{i}.mlp.experts.{j}.up_proj.weight",
     "stack_T"),
    ("layers.{i}.mlp.experts.w_out_ExFxD", "model.layers.{i}.mlp.experts.{j}.down_proj.weight",
     "stack_T"),
)
SHARED_EXPERT_TENSORS = (
    ("layers.{i}.mlp.shared_expert.{p}_proj.kernel",
     "model.layers.{i}.mlp.shared_expert.{p}_proj.weight", "T"),
    ("layers.{i}.mlp.shared_expert_gate.kernel", "model.layers.{i}.mlp.shared_expert_gate.weight",
     "T"),
)
GRANITE_MOE_TENSORS = (
    ("layers.{i}.mlp.router.proj.kernel", "model.layers.{i}.block_sparse_moe.router.layer.weight",
     "T"),
    ("layers.{i}.mlp.experts.w_gate_ExDxF", "model.layers.{i}.block_sparse_moe.input_linear.weight",
     "half0_T"),
    ("layers.{i}.mlp.experts.w_in_ExDxF", "model.layers.{i}.block_sparse_moe.input_linear.weight",
     "half1_T"),
    ("layers.{i}.mlp.experts.w_out_ExFxD",
     "model.layers.{i}.block_sparse_moe.output_linear.weight", "T"),
)
MIXTRAL_TENSORS = (
    ("layers.{i}.mlp.router.proj.kernel", "model.layers.{i}.block_sparse_moe.gate.weight", "T"),
    ("layers.{i}.mlp.experts.w_gate_ExDxF", "model.layers.{i}.block_sparse_moe.experts.{j}.w1.weight",
     "stack_T"),
    ("layers.{i}.mlp.experts.w_in_ExDxF", "model.layers.{i}.block_sparse_moe.experts.{j}.w3.weight",
     "stack_T"),
    ("layers.{i}.mlp.experts.w_out_ExFxD", "model.layers.{i}.block_sparse_moe.experts.{j}.w2.weight",
     "stack_T"),
)
# DeepSeek: ungated shared experts, stored as one SwiGLU of width n_shared_experts * F.
DEEPSEEK_SHARED_TENSORS = (
    ("layers.{i}.mlp.shared_expert.{p}_proj.kernel",
     "model.layers.{i}.mlp.shared_experts.{p}_proj.weight", "T"),
)
# Multi-head latent attention (`routecal.models.mla`); q_proj and o_proj come from COMMON_TENSORS.
MLA_TENSORS = (
    ("layers.{i}.attn.q_a_proj.kernel", "model.layers.{i}.self_attn.q_a_proj.weight", "T"),
    ("layers.{i}.attn.q_a_norm.scale", "model.layers.{i}.self_attn.q_a_layernorm.weight", "copy"),
    ("layers.{i}.attn.q_b_proj.kernel", "model.layers.{i}.self_attn.q_b_proj.weight", "T"),
    ("layers.{i}.attn.kv_a_proj.kernel", "model.layers.{i}.self_attn.kv_a_proj_with_mqa.weight",
     "T"),
    ("layers.{i}.attn.kv_a_norm.scale", "model.layers.{i}.self_attn.kv_a_layernorm.weight",
     "copy"),
    ("layers.{i}.attn.kv_b_proj.kernel", "model.layers.{i}.self_attn.kv_b_proj.weight", "T"),
)
# Checkpoint tensors that carry no parameter (old checkpoints saved RoPE's inverse frequencies).
IGNORED_TENSORS = (r".*\.rotary_emb\.inv_freq",)

# --- config.json keys shared by the three families: (DecoderConfig field, config.json key).
COMMON_KEYS = (
    ("vocab_size", "vocab_size"),
    ("max_len", "max_position_embeddings"),
    ("d_model", "hidden_size"),
    ("n_layers", "num_hidden_layers"),
    ("n_heads", "num_attention_heads"),
    ("n_kv_heads", "num_key_value_heads"),
    ("head_dim", "head_dim"),
    ("norm_eps", "rms_norm_eps"),
    ("tie_embeddings", "tie_word_embeddings"),
    ("top_k", "num_experts_per_tok"),
    ("norm_topk_prob", "norm_topk_prob"),
)
# Defaults of absent keys shared by the families (transformers 5.x class defaults).
COMMON_DEFAULTS = (("tie_word_embeddings", False), ("norm_topk_prob", False),
                   ("num_key_value_heads", None), ("head_dim", None), ("attention_bias", False))
# OLMoE and Granite: one `attention_bias` flag for q, k, v and o.
ATTENTION_BIAS_KEYS = (("qkv_bias", "attention_bias"), ("attention_out_bias", "attention_bias"))
# Every imported model: pre-norm residual, dropless MoE (as the HF code), no auxiliary losses
# (the retrofit objective is the task loss plus the posterior's own term, arXiv:2603.09453).
COMMON_FIXED = (
    ("residual", "standard"),
    ("mlp_type", "moe"),
    ("capacity_factor", 0.0),
    ("lb_coef", 0.0),
    ("z_coef", 0.0),
)


@dataclasses.dataclass(frozen=True)
class Family:
    """One Hugging Face MoE family.

    Attributes:
      model_type, architecture: `config.json`'s "model_type" and "architectures" entry.
      example: a published checkpoint of the family.
      keys: (DecoderConfig field, config.json key) pairs beyond `COMMON_KEYS`.
      defaults: config.json key -> value when absent (transformers' defaults; + COMMON_DEFAULTS).
      fixed: DecoderConfig fields the family fixes (its gating and attention conventions).
      unsupported: config.json key -> the only value routecal supports (others raise).
      tensors: the MoE tensor table (`PER_EXPERT_MOE_TENSORS`, ...), used after `COMMON_TENSORS`.
      tensor_dtypes: float safetensors dtypes a weight may have (cast); others refused, never cast.
      derived: config.json -> DecoderConfig fields computed from several keys (DeepSeek), or None.
    """

    model_type: str
    architecture: str
    example: str
    keys: tuple[tuple[str, str], ...]
    defaults: tuple[tuple[str, Any], ...]
    fixed: tuple[tuple[str, Any], ...]
    unsupported: tuple[tuple[str, Any], ...]
    tensors: tuple[tuple[str, str, str], ...]
    tensor_dtypes: tuple[str, ...] = ("BF16", "F16", "F32", "F64")
    derived: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    yarn: bool = False  # YaRN rope_scaling supported (`routecal.models.yarn`)

    def decoder_kwargs(self, hf: dict[str, Any]) -> dict[str, Any]:
        """DecoderConfig keyword arguments from a `config.json` dict (ValueError naming the key)."""
        defaults = {**dict(COMMON_DEFAULTS), **dict(self.defaults)}
        for key, allowed in self.unsupported:
            if hf.get(key, allowed) != allowed:
                raise ValueError(
                    f"config.json: {key}={hf[key]!r} is not supported for {self.model_type} "
                    f"(only {allowed!r})"
                )
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config.json: hidden_act={hf['hidden_act']!r} is not supported "
                             "(only 'silu', the SwiGLU experts)")
        out: dict[str, Any] = {}
        for field, keys in (*COMMON_KEYS, *self.keys):
            names = keys.split("|")  # alternative spellings, the first one present wins
            present = [k for k in names if hf.get(k) is not None]
            if present:
                out[field] = hf[present[0]]
            elif names[0] in defaults:
                out[field] = defaults[names[0]]
            else:
                raise ValueError(f"config.json: required key {names[0]!r} is missing")
        if out.get("n_kv_heads") is None:
            out["n_kv_heads"] = out["n_heads"]
        if "dense_layers" in out:
            out["dense_layers"] = tuple(int(i) for i in out["dense_layers"] or ())
        out["rope_theta"] = rope_theta(hf, yarn_ok=self.yarn)
        if self.yarn and yarn.from_hf_config(hf):
            out["rope_scaling"] = yarn.from_hf_config(hf)
        if self.derived is not None:
            out.update(self.derived(hf))
        return {**out, **dict(COMMON_FIXED), **dict(self.fixed)}

    def sources(self, paths: list[str], n_experts: int) -> dict[str, Source]:
        """The checkpoint `Source` of each routecal parameter path ("layers.3.attn.q_proj.kernel").

        Raises:
          ValueError: a path that no table entry maps (a model/family mismatch).
        """
        rules = [(_template_regex(t), hf, kind) for t, hf, kind in (*COMMON_TENSORS, *self.tensors)]
        out = {}
        for path in paths:
            for regex, hf, kind in rules:
                m = regex.fullmatch(path)
                if m is None:
                    continue
                if kind == "stack_T":
                    names = tuple(hf.format(**m.groupdict(), j=j) for j in range(n_experts))
                else:
                    names = (hf.format(**m.groupdict()),)
                out[path] = Source(names, kind)
                break
            else:
                raise ValueError(f"{self.model_type}: no checkpoint tensor maps to parameter {path}")
        return out


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>[a-z]+)")
    return re.compile(pattern)


def rope_theta(hf: dict[str, Any], yarn_ok: bool = False) -> float:
    """RoPE base from `rope_parameters` (transformers >= 5) or `rope_theta`; scaled RoPE raises
    (except YaRN where `yarn_ok`: `yarn.from_hf_config`)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    rope_type = params.get("rope_type", "default")
    if yarn_ok and yarn.from_hf_config(hf):
        scaling, rope_type = None, "default"
    if scaling or rope_type not in ("default", None):
        raise ValueError(
            f"config.json: RoPE scaling ({scaling or rope_type!r}) is not supported; only the "
            "default rotary embedding"
        )
    theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
    return float(theta)


FAMILIES: dict[str, Family] = {
    "olmoe": Family(
        model_type="olmoe",
        architecture="OlmoeForCausalLM",
        example="allenai/OLMoE-1B-7B-0924",
        keys=(
            ("mlp_dim", "intermediate_size"),
            ("moe_hidden", "intermediate_size"),
            ("n_experts", "num_experts"),
            *ATTENTION_BIAS_KEYS,
        ),
        defaults=(),
        fixed=(("qk_norm", True), ("router_order", "softmax_topk")),
        unsupported=(("clip_qkv", None),),
        tensors=PER_EXPERT_MOE_TENSORS,
    ),
    "qwen2_moe": Family(
        model_type="qwen2_moe",
        architecture="Qwen2MoeForCausalLM",
        example="Qwen/Qwen1.5-MoE-A2.7B",
        keys=(
            ("mlp_dim", "intermediate_size"),
            ("moe_hidden", "moe_intermediate_size"),
            ("shared_expert_hidden", "shared_expert_intermediate_size"),
            ("n_experts", "num_experts"),
            ("moe_every", "decoder_sparse_step"),
            ("dense_layers", "mlp_only_layers"),
            ("qkv_bias", "qkv_bias"),
        ),
        defaults=(("qkv_bias", True), ("decoder_sparse_step", 1), ("mlp_only_layers", ())),
        fixed=(("shared_expert_gate", True), ("attention_out_bias", False),
               ("router_order", "softmax_topk")),
        unsupported=(("use_sliding_window", False),),
        tensors=PER_EXPERT_MOE_TENSORS + SHARED_EXPERT_TENSORS,
    ),
    "granitemoe": Family(
        model_type="granitemoe",
        architecture="GraniteMoeForCausalLM",
        example="ibm-granite/granite-3.1-3b-a800m",
        keys=(
            ("mlp_dim", "intermediate_size"),
            ("moe_hidden", "intermediate_size"),
            ("n_experts", "num_local_experts"),
            *ATTENTION_BIAS_KEYS,
            ("embedding_multiplier", "embedding_multiplier"),
            ("residual_multiplier", "residual_multiplier"),
            ("attention_multiplier", "attention_multiplier"),
            ("logits_scaling", "logits_scaling"),
        ),
        defaults=(("embedding_multiplier", 1.0), ("residual_multiplier", 1.0),
                  ("attention_multiplier", 1.0), ("logits_scaling", 1.0)),
        fixed=(("router_order", "topk_softmax"),),
        unsupported=(),
        tensors=GRANITE_MOE_TENSORS,
    ),
}


def deepseek_moe(hf: dict[str, Any]) -> dict[str, Any]:
    """DeepSeek's MoE layout (remote `modeling_deepseek.py`): layer i is MoE iff
    i >= first_k_dense_replace and i % moe_layer_freq == 0; the n_shared_experts shared experts are
    one ungated SwiGLU of width n_shared_experts * moe_intermediate_size; `topk_method` "greedy"
    or "group_limited_greedy" (n_group, topk_group)."""
    n, first = hf["num_hidden_layers"], hf.get("first_k_dense_replace") or 0
    freq = hf.get("moe_layer_freq") or 1
    out: dict[str, Any] = {
        "dense_layers": tuple(i for i in range(n) if not (i >= first and i % freq == 0)),
        "shared_expert_hidden": hf["moe_intermediate_size"] * (hf.get("n_shared_experts") or 0),
    }
    method = hf.get("topk_method") or "greedy"
    if method == "group_limited_greedy":
        out.update(n_group=int(hf["n_group"]), topk_group=int(hf["topk_group"]))
    elif method != "greedy":
        raise ValueError(f"config.json: topk_method={method!r} is not supported (only 'greedy' "
                         "and 'group_limited_greedy')")
    return out


DEEPSEEK_KEYS = (("mlp_dim", "intermediate_size"), ("moe_hidden", "moe_intermediate_size"),
                 ("n_experts", "n_routed_experts"))
DEEPSEEK_UNSUPPORTED = (("scoring_func", "softmax"), ("attention_bias", False), ("mlp_bias", False))
FAMILIES.update({
    "mixtral": Family(
        model_type="mixtral",
        architecture="MixtralForCausalLM",
        example="mistralai/Mixtral-8x7B-v0.1",
        keys=(("mlp_dim", "intermediate_size"), ("moe_hidden", "intermediate_size"),
              ("n_experts", "num_local_experts")),
        defaults=(),
        fixed=(("router_order", "topk_softmax"),),
        unsupported=(("sliding_window", None),),
        tensors=MIXTRAL_TENSORS,
    ),
    "qwen3_moe": Family(
        model_type="qwen3_moe",
        architecture="Qwen3MoeForCausalLM",
        example="Qwen/Qwen3-30B-A3B",
        keys=(
            ("mlp_dim", "intermediate_size"),
            ("moe_hidden", "moe_intermediate_size"),
            ("n_experts", "num_experts|num_local_experts"),
            ("moe_every", "decoder_sparse_step"),
            ("dense_layers", "mlp_only_layers"),
            *ATTENTION_BIAS_KEYS,
        ),
        defaults=(("decoder_sparse_step", 1), ("mlp_only_layers", ())),
        fixed=(("qk_norm", True), ("qk_norm_per_head", True), ("router_order", "softmax_topk")),
        unsupported=(("use_sliding_window", False),),
        tensors=PER_EXPERT_MOE_TENSORS,
    ),
    "deepseek": Family(
        model_type="deepseek",
        architecture="DeepseekForCausalLM",
        example="deepseek-ai/deepseek-moe-16b-base",
        keys=DEEPSEEK_KEYS,
        defaults=(),
        fixed=(("router_order", "softmax_topk"),),
        unsupported=(*DEEPSEEK_UNSUPPORTED, ("topk_method", "greedy")),
        tensors=PER_EXPERT_MOE_TENSORS + DEEPSEEK_SHARED_TENSORS,
        derived=deepseek_moe,
    ),
    "deepseek_v2": Family(
        model_type="deepseek_v2",
        architecture="DeepseekV2ForCausalLM",
        example="deepseek-ai/DeepSeek-V2-Lite",
        keys=(
            *DEEPSEEK_KEYS,
            ("kv_lora_rank", "kv_lora_rank"),
            ("q_lora_rank", "q_lora_rank"),
            ("qk_nope_head_dim", "qk_nope_head_dim"),
            ("qk_rope_head_dim", "qk_rope_head_dim"),
            ("v_head_dim", "v_head_dim"),
            ("routed_scaling", "routed_scaling_factor"),
        ),
        defaults=(("q_lora_rank", 0), ("routed_scaling_factor", 1.0)),
        fixed=(("router_order", "softmax_topk"), ("attention", "mla")),
        unsupported=DEEPSEEK_UNSUPPORTED,
        tensors=PER_EXPERT_MOE_TENSORS + DEEPSEEK_SHARED_TENSORS + MLA_TENSORS,
        derived=deepseek_moe,
        yarn=True,
    ),
})


def family_for(hf: dict[str, Any]) -> Family:
    """The `Family` of a config.json dict; ValueError naming the unsupported `model_type`."""
    mt = hf.get("model_type")
    if mt not in FAMILIES:
        raise ValueError(
            f"config.json: unsupported model_type {mt!r}; supported: {sorted(FAMILIES)}"
        )
    return FAMILIES[mt]
