"""Transformer building blocks in Flax NNX: RMSNorm, attention, dense MLP, embeddings, head.

Letters: B batch, T tokens, P features per input token, D model width, F MLP hidden width,
C classes.

Every MLP-like sublayer (dense here; MoE / VMoER in `moe.py`, `vmoer.py`) follows one protocol::

    y_BxTxD, aux, trace = mlp(x_BxTxD, train=train)

where `aux` maps names to scalar losses *already multiplied by their coefficient* (they are summed
into the training loss) and `trace` maps names to per-token arrays (e.g. router probabilities) that
`predict` exports. A dense MLP returns empty dicts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

RMSNorm = nnx.RMSNorm  # y = x / sqrt(mean(x^2) + eps) * scale (learned scale, ones at init)


class Attention(nnx.Module):
    """Bidirectional multi-head self-attention over the token axis: [B, T, D] -> [B, T, D]."""

    def __init__(self, d_model: int, n_heads: int, *, rngs: nnx.Rngs):
        self.mha = nnx.MultiHeadAttention(
            num_heads=n_heads,
            in_features=d_model,
            qkv_features=d_model,
            out_features=d_model,
            decode=False,
            rngs=rngs,
        )

    def __call__(self, x_BxTxD: Array) -> Array:
        return self.mha(x_BxTxD, deterministic=True)


class DenseMLP(nnx.Module):
    """Position-wise MLP D -> F -> D with GELU; follows the MLP sublayer protocol."""

    def __init__(self, d_model: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(d_model, mlp_dim, rngs=rngs)
        self.fc2 = nnx.Linear(mlp_dim, d_model, rngs=rngs)

    def __call__(
        self, x_BxTxD: Array, *, train: bool = False
    ) -> tuple[Array, dict[str, Array], dict[str, Array]]:
        del train
        y = self.fc2(jax.nn.gelu(self.fc1(x_BxTxD)))
        return y, {}, {}


class TokenEmbedding(nnx.Module):
    """Linear patch embedding plus a learned positional embedding: [B, T, P] -> [B, T, D]."""

    def __init__(self, token_dim: int, seq_len: int, d_model: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(token_dim, d_model, rngs=rngs)
        self.pos_TxD = nnx.Param(
            nnx.initializers.normal(stddev=0.02)(rngs.params(), (seq_len, d_model))
        )

    def __call__(self, tokens_BxTxP: Array) -> Array:
        return self.proj(tokens_BxTxP) + self.pos_TxD[...][None, :, :]


class ClassifierHead(nnx.Module):
    """RMSNorm, mean-pool over tokens, linear to class logits: [B, T, D] -> [B, C]."""

    def __init__(self, d_model: int, num_classes: int, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(d_model, rngs=rngs)
        self.out = nnx.Linear(d_model, num_classes, rngs=rngs)

    def __call__(self, h_BxTxD: Array) -> Array:
        return self.out(jnp.mean(self.norm(h_BxTxD), axis=1))
