"""Multi-head latent attention (MLA, DeepSeek-V2: DeepSeek-AI 2024, arXiv:2405.04434, sec. 2.1).

Keys and values come from a low-rank latent c_t = RMSNorm(W_DKV x_t) of width `kv_lora_rank`
(eq. 9): [k^C; v] = W_UKV c_t (eqs. 10-11, `kv_b_proj`), split per head into a "nope" key part of
width `qk_nope_head_dim` and a value of width `v_head_dim`. Position enters through decoupled RoPE
dimensions (eqs. 14-19): a query part q^R of width `qk_rope_head_dim` per head and ONE shared key
part k^R = RoPE(W_KR x_t) (computed by the same `kv_a_proj_with_mqa` matmul as the latent),
concatenated after the nope parts. Queries come from x directly (`q_proj`) or, with `q_lora_rank`,
through their own latent: q = W_UQ RMSNorm(W_DQ x) (eqs. 12-13). Scale 1 / sqrt(nope + rope width)
unless `attention_multiplier` is set. RoPE here pairs features (2i, 2i + 1) (HF `apply_rotary_emb`
on complex views; the remote-code permutation gives the same scores). The two latent RMSNorms use
epsilon 1e-6, as `DeepseekV2RMSNorm`'s default in the reference code (not `rms_norm_eps`). With
`rope_scaling` (YaRN, `routecal.models.yarn`) the rope frequencies, cos / sin and the softmax
scale change as in the reference.

Parameter names follow the checkpoint's (`q_a_proj` -> q_a_proj, `q_a_layernorm` -> q_a_norm,
`kv_a_proj_with_mqa` -> kv_a_proj, `kv_a_layernorm` -> kv_a_norm, `kv_b_proj`, `o_proj`).

Letters: B batch, T tokens (S keys), D width, H heads, N nope width, R rope width, V value width,
C kv_lora_rank, Q q_lora_rank.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from routecal.models import yarn
from routecal.models.causal import linear, rope

Array = jax.Array
LATENT_NORM_EPS = 1e-6


class MultiHeadLatentAttention(nnx.Module):
    """Causal MLA: [B, T, D] -> [B, T, D]. `cfg` needs d_model, n_heads, kv_lora_rank,
    q_lora_rank (0: none), qk_nope_head_dim, qk_rope_head_dim, v_head_dim, rope_theta,
    attention_scale and compute_dtype (see `DecoderConfig`)."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        d, h, dt = cfg.d_model, cfg.n_heads, cfg.compute_dtype
        self.n_heads = h
        self.nope, self.rope_dim, self.v_dim = (
            cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        )
        self.kv_rank = cfg.kv_lora_rank
        self.rope_theta = float(cfg.rope_theta)
        self.scale = float(cfg.attention_scale)
        self.inv_freq, self.cos_scale = None, 1.0
        scaling = dict(getattr(cfg, "rope_scaling", ()) or ())
        if scaling:  # YaRN (DeepSeek-V2-Lite / V2): `routecal.models.yarn`
            self.inv_freq = tuple(yarn.inv_freq(self.rope_dim, self.rope_theta, scaling).tolist())
            self.cos_scale = yarn.cos_sin_scale(scaling)
            if cfg.attention_multiplier is None:
                self.scale *= yarn.softmax_scale_factor(scaling)
        qk = self.nope + self.rope_dim
        if cfg.q_lora_rank:
            self.q_proj = None
            self.q_a_proj = linear(d, cfg.q_lora_rank, False, dt, rngs)
            self.q_a_norm = nnx.RMSNorm(cfg.q_lora_rank, epsilon=LATENT_NORM_EPS, dtype=dt,
                                        rngs=rngs)
            self.q_b_proj = linear(cfg.q_lora_rank, h * qk, False, dt, rngs)
        else:
            self.q_proj = linear(d, h * qk, False, dt, rngs)
            self.q_a_proj = self.q_a_norm = self.q_b_proj = None
        self.kv_a_proj = linear(d, self.kv_rank + self.rope_dim, False, dt, rngs)
        self.kv_a_norm = nnx.RMSNorm(self.kv_rank, epsilon=LATENT_NORM_EPS, dtype=dt, rngs=rngs)
        self.kv_b_proj = linear(self.kv_rank, h * (self.nope + self.v_dim), False, dt, rngs)
        self.o_proj = linear(h * self.v_dim, d, False, dt, rngs)

    def __call__(self, x_BxTxD: Array) -> Array:
        b, t, _ = x_BxTxD.shape
        h, n, r = self.n_heads, self.nope, self.rope_dim
        if self.q_proj is not None:
            q = self.q_proj(x_BxTxD)
        else:
            q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x_BxTxD)))
        q_BxTxHxNR = q.reshape(b, t, h, n + r)
        latent = self.kv_a_proj(x_BxTxD)
        c_BxTxC = self.kv_a_norm(latent[..., : self.kv_rank])
        k_rope_BxTx1xR = latent[..., self.kv_rank :].reshape(b, t, 1, r)
        kv_BxTxHxNV = self.kv_b_proj(c_BxTxC).reshape(b, t, h, n + self.v_dim)
        pos_T = jnp.arange(t)
        kw = dict(interleaved=True, inv_freq=self.inv_freq, cos_scale=self.cos_scale)
        q_rope = rope(q_BxTxHxNR[..., n:], pos_T, self.rope_theta, **kw)
        k_rope = rope(k_rope_BxTx1xR, pos_T, self.rope_theta, **kw)
        q_BxTxHxNR = jnp.concatenate([q_BxTxHxNR[..., :n], q_rope], axis=-1)
        k_BxSxHxNR = jnp.concatenate(
            [kv_BxTxHxNV[..., :n], jnp.broadcast_to(k_rope, (b, t, h, r))], axis=-1
        )
        v_BxSxHxV = kv_BxTxHxNV[..., n:]
        scores_BxHxTxS = jnp.einsum(
            "bthk,bshk->bhts", q_BxTxHxNR.astype(jnp.float32), k_BxSxHxNR.astype(jnp.float32)
        ) * self.scale
        causal_TxS = jnp.tril(jnp.ones((t, t), jnp.bool_))
        scores_BxHxTxS = jnp.where(causal_TxS, scores_BxHxTxS, jnp.finfo(jnp.float32).min)
        p_BxHxTxS = jax.nn.softmax(scores_BxHxTxS, axis=-1).astype(v_BxSxHxV.dtype)
        o_BxTxHxV = jnp.einsum("bhts,bshv->bthv", p_BxHxTxS, v_BxSxHxV)
        return self.o_proj(o_BxTxHxV.reshape(b, t, h * self.v_dim))
