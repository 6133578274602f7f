"""`DecoderConfig`: the typed, validated configuration of the causal decoder (`decoder.py`).

Defaults give a plain pre-norm Llama-style byte LM; the convention fields let imported Hugging Face
MoE checkpoints (OLMoE, Qwen2-MoE, Granite-MoE) run unchanged in the same module.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from routecal import _checks
from routecal.models import dispatch, yarn
from routecal.models.transformer import StackConfig

ROUTER_ORDERS = ("softmax_topk", "topk_softmax")
ATTENTIONS = ("standard", "mla")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig(StackConfig):
    """Causal decoder configuration (validated in `__post_init__`; frozen and hashable).

    The width, depth, residual and MoE fields are `StackConfig`'s (all fields keyword-only);
    what the decoder adds or reads differently:

    Attributes:
      vocab_size: V. max_len: the longest sequence the model accepts. n_heads: query heads H.
      n_kv_heads: key/value heads G (grouped-query attention; must divide n_heads); None = H.
      head_dim: per-head width; None = d_model // n_heads.
      mlp_dim: SwiGLU hidden width of the dense MLPs.
      n_blocks: blocks of Block AttnRes, a divisor of n_layers (boundaries at layer starts) or
        2 * n_layers (one sublayer per block = Full).
      dtype: compute dtype, "float32" or "bfloat16" (parameters, router and logits stay float32).
      rope_theta: RoPE base. norm_eps: epsilon of every RMSNorm.
      qk_norm: RMSNorm over the full q and k projections (OLMoE). qkv_bias: biases on q, k, v.
      attention_out_bias: bias on the output projection.
      embedding_multiplier: scales the token embedding (Granite).
      residual_multiplier: scales every sublayer output before it joins the residual (Granite).
      attention_multiplier: attention logit scale; None = 1 / sqrt(head_dim) (Granite sets it).
      logits_scaling: logits are divided by it (Granite).
      tie_embeddings: output head = embedding matrix transposed.
      dense_layers: layers that keep the dense MLP whatever mlp_type and moe_every say
        (Qwen2-MoE's `mlp_only_layers`).
      moe_hidden: expert SwiGLU width (0 = mlp_dim). capacity_factor: <= 0 dropless, as in HF
        MoE LMs; > 0 needs top_k = 1, because with top_k > 1 the capacity priority puts every
        first choice before any second choice and a token's second choice would depend on
        later tokens.
      norm_topk_prob: renormalise the top-k gates to sum to 1.
      router_order: "softmax_topk" (softmax over experts, then top-k: OLMoE, Qwen2-MoE) or
        "topk_softmax" (softmax over the top-k logits: Granite, Mixtral).
      shared_expert_hidden: width of an always-on shared SwiGLU expert (0 = none; Qwen2-MoE);
        shared_expert_gate: multiply it by a sigmoid scalar gate sigmoid(w . x).
      qk_norm_per_head: the q / k RMSNorms act on each head's K features (Qwen3-MoE).
      attention: "standard" (RoPE, grouped-query) or "mla" (multi-head latent attention,
        DeepSeek-V2, `mla.py`) with kv_lora_rank, q_lora_rank (0: queries straight from x),
        qk_nope_head_dim, qk_rope_head_dim (even) and v_head_dim.
      rope_scaling: YaRN parameters as sorted (key, value) pairs (`yarn.KEYS`; "mla" only).
      n_group, topk_group, routed_scaling: DeepSeek-V2 group-limited top-k and gate scale
        (`moe.top_k_gates`; 1, 1, 1.0: plain top-k).
      dispatch: how dropless MoE layers compute their experts (`routecal.models.dispatch`):
        "auto" (by backend), "dense" (all experts), "sparse_blocks" (CPU) or "ragged" (GPU/TPU).
    """

    # the `StackConfig` fields whose defaults differ from the classifier's
    d_model: int = 128
    mlp_dim: int = 384
    residual: str = "standard"
    capacity_factor: float = 0.0

    vocab_size: int = 259
    max_len: int = 256
    n_kv_heads: int | None = None
    head_dim: int | None = None
    dtype: str = "float32"
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    qk_norm: bool = False
    qkv_bias: bool = False
    attention_out_bias: bool = False
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0
    tie_embeddings: bool = True
    moe_hidden: int = 0
    dense_layers: tuple[int, ...] = ()
    norm_topk_prob: bool = False
    router_order: str = "softmax_topk"
    shared_expert_hidden: int = 0
    shared_expert_gate: bool = False
    dispatch: str = "auto"
    qk_norm_per_head: bool = False
    attention: str = "standard"
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    n_group: int = 1
    topk_group: int = 1
    routed_scaling: float = 1.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len"):
            _positive_int(getattr(self, name), name)
        super().__post_init__()
        for name in ("n_kv_heads", "head_dim"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), name)
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"model.n_kv_heads: must divide n_heads={self.n_heads}, got {self.n_kv_heads}"
            )
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"model.n_heads: must divide d_model={self.d_model} (or set head_dim), got "
                f"{self.n_heads}"
            )
        if self.head_width % 2:
            raise ValueError(
                f"model.head_dim: RoPE needs an even head width, got {self.head_width}"
            )
        if self.residual == "block":
            nb = self.n_blocks
            ok = (
                isinstance(nb, int)
                and nb >= 1
                and (self.n_layers % nb == 0 or nb == self.n_sublayers)
            )
            if not ok:
                raise ValueError(
                    f"model.n_blocks: must divide n_layers={self.n_layers} (block boundaries at "
                    f"layer starts) or equal 2 * n_layers = {self.n_sublayers}, got {nb!r}"
                )
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype: unknown {self.dtype!r}; expected one of {list(DTYPES)}")
        for name in (
            "rope_theta",
            "norm_eps",
            "embedding_multiplier",
            "residual_multiplier",
            "logits_scaling",
        ):
            _positive_float(getattr(self, name), name)
        if self.attention_multiplier is not None:
            _positive_float(self.attention_multiplier, "attention_multiplier")
        if not isinstance(self.dense_layers, tuple) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_layers
            for i in self.dense_layers
        ):
            raise ValueError(
                f"model.dense_layers: must be a tuple of layer indices in [0, {self.n_layers}), "
                f"got {self.dense_layers!r}"
            )
        for name in ("moe_hidden", "shared_expert_hidden"):
            _positive_int(getattr(self, name), name, minimum=0)
        if not math.isfinite(self.capacity_factor):
            raise ValueError(f"model.capacity_factor: must be finite, got {self.capacity_factor}")
        if self.capacity_factor > 0 and self.top_k > 1:
            raise ValueError(
                f"model.capacity_factor: capacity dropping with top_k={self.top_k} > 1 is not "
                "causal (second choices are slotted after every token's first choice); use "
                "capacity_factor <= 0 (dropless) or top_k = 1"
            )
        if self.router_order not in ROUTER_ORDERS:
            raise ValueError(
                f"model.router_order: unknown {self.router_order!r}; expected one of "
                f"{ROUTER_ORDERS}"
            )
        dispatch.check_dispatch(self.dispatch, "model.dispatch")
        if self.attention not in ATTENTIONS:
            raise ValueError(
                f"model.attention: unknown {self.attention!r}; expected one of {ATTENTIONS}"
            )
        if self.attention == "mla":
            for name in ("kv_lora_rank", "qk_rope_head_dim", "v_head_dim"):
                _positive_int(getattr(self, name), name)
            for name in ("q_lora_rank", "qk_nope_head_dim"):
                _positive_int(getattr(self, name), name, minimum=0)
            if self.qk_rope_head_dim % 2:
                raise ValueError(f"model.qk_rope_head_dim: RoPE needs an even width, got "
                                 f"{self.qk_rope_head_dim}")
        _positive_float(self.routed_scaling, "routed_scaling")
        if self.mlp_type.startswith("vmoer") and (self.n_group > 1 or self.routed_scaling != 1):
            raise ValueError(
                f"model.mlp_type: {self.mlp_type} routers select plain top-k; group-limited "
                f"top-k (n_group={self.n_group}) and routed_scaling={self.routed_scaling} are "
                "supported by the deterministic router only"
            )
        if self.rope_scaling:
            if self.attention != "mla":
                raise ValueError("model.rope_scaling: YaRN is supported with attention='mla' only")
            yarn.check_params(dict(self.rope_scaling), "model.rope_scaling")

    # Derived values ------------------------------------------------------------------------------

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_width(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def attention_scale(self) -> float:
        if self.attention_multiplier is not None:
            return float(self.attention_multiplier)
        if self.attention == "mla":
            return 1.0 / math.sqrt(self.qk_nope_head_dim + self.qk_rope_head_dim)
        return 1.0 / math.sqrt(self.head_width)

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[self.dtype]

    @property
    def expert_hidden(self) -> int:
        return self.moe_hidden or self.mlp_dim

    @property
    def normalize_gates(self) -> bool:
        """topk_softmax = softmax over the top-k logits = renormalised softmax-then-top-k."""
        return bool(self.norm_topk_prob or self.router_order == "topk_softmax")

    @property
    def moe_layers(self) -> tuple[int, ...]:
        """0-based indices of the layers whose MLP is an MoE / VMoER sublayer."""
        return tuple(i for i in range(self.n_layers) if self.uses_moe(i))

    def uses_moe(self, layer: int) -> bool:
        """Whether layer `layer` (0-based) gets the MoE-type MLP."""
        return (
            self.mlp_type != "dense"
            and layer % self.moe_every == self.moe_every - 1
            and layer not in self.dense_layers
        )

    @classmethod
    def from_config(cls, model_cfg: Any, **fixed: Any) -> DecoderConfig:
        """Builds the typed config from a `ConfigDict` (or mapping) plus `fixed` values (e.g.
        vocab_size from the tokenizer); unknown keys are an error naming them."""
        d = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
        d.update(fixed)
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"model: unknown key(s) {unknown}; valid: {sorted(valid)}")
        if "dense_layers" in d:
            d["dense_layers"] = tuple(d["dense_layers"] or ())
        if "rope_scaling" in d:
            d["rope_scaling"] = tuple(sorted(dict(d["rope_scaling"] or {}).items()))
        if "vmoer" in d:
            d["vmoer"] = tuple(sorted(dict(d["vmoer"] or {}).items()))
        return cls(**d)


def _positive_int(v: Any, name: str, minimum: int = 1) -> None:
    _checks.check_positive_int(v, f"model.{name}", minimum=minimum)


def _positive_float(v: Any, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
        raise ValueError(f"model.{name}: must be a finite number > 0, got {v!r}")
