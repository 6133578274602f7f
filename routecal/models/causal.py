"""Causal-LM sublayers in Flax NNX: RoPE, causal (grouped-query) attention, SwiGLU, decoder MoE.

Letters: B batch, T tokens, D model width, H query heads, G key/value heads, K head width
(`head_dim`), F MLP hidden width, E experts.

Conventions follow the Hugging Face Llama / OLMoE / Qwen2-MoE / Granite-MoE code so their
checkpoints map onto these parameters one to one (`routecal.models.pretrained`):

* RoPE (Su et al. 2021, RoFormer eq. 34) in the "rotate half" layout: the first and second halves of
  each head's features form the (x, y) pairs rotated by angle p * theta^(-2i/K).
* q, k, v, o projections (`q_proj` D -> H K, `k_proj`/`v_proj` D -> G K, `o_proj` H K -> D), optional
  biases, optional `qk_norm` (OLMoE: RMSNorm over the whole q and k projections, before the heads
  are split), scale `attention_multiplier` or 1/sqrt(K).
* SwiGLU MLP (Shazeer 2020, eq. 6 "FFN_SwiGLU"): down(silu(gate(x)) * up(x)), no biases.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from routecal.models import dispatch as moe_dispatch
from routecal.models import moe

Array = jax.Array


def rope(
    x_BxTxNxK: Array,
    positions_T: Array,
    theta: float,
    *,
    interleaved: bool = False,
    inv_freq: Any = None,
    cos_scale: float = 1.0,
) -> Array:
    """Rotary position embedding, "rotate half" layout (RoFormer eq. 34; HF `apply_rotary_pos_emb`).

    Pairs feature i with feature i + K/2 (`interleaved`: feature 2i with 2i + 1, DeepSeek-V2's
    complex layout) and rotates the pair by angle p / theta^(2i/K) at position p. The interleaved
    output lists the rotated first members, then the second ones (a fixed permutation of the
    features, which leaves every q . k score unchanged). `inv_freq` [K/2] replaces the inverse
    frequencies and `cos_scale` multiplies cos and sin (YaRN, `routecal.models.yarn`). Computed in
    float32, returned in the input dtype.
    """
    k = x_BxTxNxK.shape[-1]
    if inv_freq is None:
        inv_freq = 1.0 / (theta ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k))  # [K/2]
    ang_TxK2 = positions_T.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq, jnp.float32)[None, :]
    cos = cos_scale * jnp.cos(ang_TxK2)[None, :, None, :]
    sin = cos_scale * jnp.sin(ang_TxK2)[None, :, None, :]
    x = x_BxTxNxK.astype(jnp.float32)
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x[..., : k // 2], x[..., k // 2 :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxNxK.dtype)


def linear(d_in: int, d_out: int, bias: bool, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(stddev=0.02),
        rngs=rngs,
    )


class CausalAttention(nnx.Module):
    """Causal multi-head self-attention with RoPE and grouped-query heads: [B, T, D] -> [B, T, D].

    `cfg` needs d_model, n_heads, kv_heads, head_width, qkv_bias, attention_out_bias, qk_norm,
    norm_eps, rope_theta, attention_scale and compute_dtype (see `DecoderConfig`).
    """

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        d, h, g, k = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_width
        dt = cfg.compute_dtype
        self.n_heads, self.kv_heads, self.head_width = h, g, k
        self.rope_theta = float(cfg.rope_theta)
        self.scale = float(cfg.attention_scale)
        self.q_proj = linear(d, h * k, cfg.qkv_bias, dt, rngs)
        self.k_proj = linear(d, g * k, cfg.qkv_bias, dt, rngs)
        self.v_proj = linear(d, g * k, cfg.qkv_bias, dt, rngs)
        self.o_proj = linear(h * k, d, cfg.attention_out_bias, dt, rngs)
        self.qk_norm_per_head = bool(getattr(cfg, "qk_norm_per_head", False))
        if cfg.qk_norm:  # over the whole projection (OLMoE) or each head (Qwen3-MoE)
            qn, kn = (k, k) if self.qk_norm_per_head else (h * k, g * k)
            self.q_norm = nnx.RMSNorm(qn, epsilon=cfg.norm_eps, dtype=dt, rngs=rngs)
            self.k_norm = nnx.RMSNorm(kn, epsilon=cfg.norm_eps, dtype=dt, rngs=rngs)
        else:
            self.q_norm = self.k_norm = None

    def __call__(self, x_BxTxD: Array) -> Array:
        b, t, _ = x_BxTxD.shape
        q, k, v = self.q_proj(x_BxTxD), self.k_proj(x_BxTxD), self.v_proj(x_BxTxD)
        if self.q_norm is not None and not self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q_BxTxHxK = q.reshape(b, t, self.n_heads, self.head_width)
        k_BxTxGxK = k.reshape(b, t, self.kv_heads, self.head_width)
        if self.q_norm is not None and self.qk_norm_per_head:
            q_BxTxHxK, k_BxTxGxK = self.q_norm(q_BxTxHxK), self.k_norm(k_BxTxGxK)
        v_BxTxGxK = v.reshape(b, t, self.kv_heads, self.head_width)
        pos_T = jnp.arange(t)
        q_BxTxHxK = rope(q_BxTxHxK, pos_T, self.rope_theta)
        k_BxTxGxK = rope(k_BxTxGxK, pos_T, self.rope_theta)
        # jax.nn.dot_product_attention handles G < H (grouped-query) by sharing each k/v head
        # among H / G consecutive query heads, as HF `repeat_kv` does.
        o_BxTxHxK = jax.nn.dot_product_attention(
            q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, scale=self.scale, is_causal=True
        )
        return self.o_proj(o_BxTxHxK.reshape(b, t, self.n_heads * self.head_width))


class SwiGLU(nnx.Module):
    """SwiGLU MLP (MLP sublayer protocol of `layers.py`): down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int, dtype: Any, *, rngs: nnx.Rngs):
        self.gate_proj = linear(d_model, hidden, False, dtype, rngs)
        self.up_proj = linear(d_model, hidden, False, dtype, rngs)
        self.down_proj = linear(hidden, d_model, False, dtype, rngs)

    def __call__(
        self, x_BxTxD: Array, *, train: bool = False
    ) -> tuple[Array, dict[str, Array], dict[str, Array]]:
        del train
        y = self.down_proj(jax.nn.silu(self.gate_proj(x_BxTxD)) * self.up_proj(x_BxTxD))
        return y, {}, {}


class DecoderMoE(moe.MoEMLP):
    """MoE MLP sublayer of the decoder: `moe.MoEMLP` (router, experts, aux losses) plus

    * a dropless path when `capacity_factor <= 0` (HF MoE LMs drop nothing), computed by
      `dispatch` (`routecal.models.dispatch`): "sparse_blocks" / "ragged" run only the selected
      (token, expert) pairs, "dense" every expert on every token (E / K times the FLOPs), "auto"
      picks by backend; all give the same outputs;
    * an optional shared expert (Qwen2-MoE): + sigmoid(w_g . x) * SwiGLU_shared(x) when
      `shared_expert_gate`, else + SwiGLU_shared(x);
    * the router logits in the trace (`router_logits` [B, T, E], for router-logit variance).

    Gates follow `router_order`: "softmax_topk" (softmax over E, then top-k, renormalised only if
    `norm_topk_prob`: OLMoE, Qwen2-MoE) or "topk_softmax" (softmax over the top-k logits: Granite,
    Mixtral), the latter equal to renormalised softmax-then-top-k, which is how it is computed.
    """

    def __init__(
        self,
        moe_cfg: Any,
        *,
        shared_hidden: int = 0,
        shared_gate: bool = False,
        router: nnx.Module | None = None,
        dispatch: str = "auto",
        rngs: nnx.Rngs,
    ):
        super().__init__(moe_cfg, router=router, rngs=rngs)
        self.dtype = moe_cfg.dtype
        self.dispatch = moe_dispatch.check_dispatch(dispatch)
        self.shared_expert = (
            SwiGLU(moe_cfg.d_model, shared_hidden, moe_cfg.dtype, rngs=rngs)
            if shared_hidden
            else None
        )
        self.shared_expert_gate = (
            linear(moe_cfg.d_model, 1, False, jnp.float32, rngs)
            if shared_hidden and shared_gate
            else None
        )

    def __call__(
        self, x_BxTxD: Array, *, train: bool = False
    ) -> tuple[Array, dict[str, Array], dict[str, Array]]:
        if self.capacity_factor > 0:
            y, aux, trace = super().__call__(x_BxTxD, train=train)
            logits = self.router.logits(x_BxTxD)
        else:
            if self.input_noise is not None:  # per-layer hidden-state noise (routing stability)
                x_BxTxD = self.input_noise(x_BxTxD)
            r = self.router(x_BxTxD, train=train)
            logits = r.logits_BxTxE
            b, t, d = x_BxTxD.shape
            y_NxD = moe_dispatch.dropless_moe(
                x_BxTxD.reshape(b * t, d).astype(self.dtype),
                r.experts_BxTxK.reshape(b * t, self.top_k),
                r.gates_BxTxK.reshape(b * t, self.top_k),
                self.experts.weights(),
                self.dispatch,
            )
            y = y_NxD.reshape(b, t, d).astype(x_BxTxD.dtype)
            aux = {
                "moe_lb": self.lb_coef * moe.load_balancing_loss(r.probs_BxTxE, r.experts_BxTxK),
                "moe_z": self.z_coef * moe.router_z_loss(r.logits_BxTxE),
                **r.aux,
            }
            trace = {
                "router_probs": r.probs_BxTxE,
                "experts": r.experts_BxTxK,
                "gates": r.gates_BxTxK,
                "dropped": jnp.zeros(r.gates_BxTxK.shape, jnp.float32),
                **r.trace,
            }
        if self.shared_expert is not None:
            s, _, _ = self.shared_expert(x_BxTxD)
            if self.shared_expert_gate is not None:
                g = jax.nn.sigmoid(self.shared_expert_gate(x_BxTxD.astype(jnp.float32)))
                s = s * g.astype(s.dtype)
            y = y + s.astype(y.dtype)
        trace["router_logits"] = logits
        return y, aux, trace
