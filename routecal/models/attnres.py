"""Depth attention: standard residual, Full AttnRes and Block AttnRes.

Attention Residuals (Kimi Team, arXiv:2603.15031). Each sublayer l (attention or MLP; L = 2 *
n_layers of them) takes as input a softmax mixture over depth of earlier outputs instead of a
running residual sum::

    h_l = sum_i alpha_{i->l} v_i,     alpha_{i->l} = softmax_i( w_l . RMSNorm_l(v_i) )

with v_0 the token embedding, v_i the output of sublayer i, w_l in R^D a per-sublayer pseudo-query
initialised to **zero** (so mixing is uniform at the start), no 1/sqrt(D) scale, keys normalised by a
learned-scale RMSNorm and values left unnormalised. The final readout aggregates over depth the same
way with its own pseudo-query.

*Block AttnRes* partitions the L sublayers into N contiguous blocks of L/N sublayers. Inside a block
outputs are summed; sublayer l attends over [v_0, completed block sums B_1..B_{b-1}, the current
partial block sum] (the partial sum is absent for the first sublayer of a block). The readout attends
over [v_0, B_1..B_N]. With N = L every block holds one sublayer and this is Full AttnRes exactly.

*Standard* is the pre-norm residual control: h_{l+1} = h_l + v_l, no depth weights.

Letters: B batch, T tokens, D width, S number of depth sources of one sublayer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from routecal.models.layers import RMSNorm

Array = jax.Array
RESIDUAL_MODES = ("standard", "full", "block")


def num_sources(residual: str, n_sublayers: int, n_blocks: int) -> list[int]:
    """Number of depth sources S_l of each sublayer, then of the readout (length L + 1).

    Standard residual has no depth attention: returns [].
    """
    if residual == "standard":
        return []
    if residual == "full":
        n_blocks = n_sublayers
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual: unknown mode {residual!r}; expected one of {RESIDUAL_MODES}")
    size = n_sublayers // n_blocks
    out = []
    for l in range(n_sublayers):
        b, j = divmod(l, size)
        out.append(1 + b + (1 if j > 0 else 0))
    out.append(1 + n_blocks)
    return out


def sublayer_names(residual: str, n_layers: int) -> tuple[str, ...]:
    """Names of the depth-attention sites: "layer<i>.attn", "layer<i>.mlp" for each layer, then
    "readout"; () for the standard residual (no depth attention)."""
    if residual == "standard":
        return ()
    names = [f"layer{i}.{kind}" for i in range(n_layers) for kind in ("attn", "mlp")]
    return (*names, "readout")


class DepthAttention(nnx.Module):
    """One pseudo-query attending over depth sources (AttnRes eq. for alpha_{i->l}).

    Parameters: `query` w_l [D] (zeros at init) and `key_norm`, an RMSNorm with learned scale.
    """

    def __init__(self, d_model: int, *, rngs: nnx.Rngs):
        self.query = nnx.Param(jnp.zeros((d_model,), jnp.float32))
        self.key_norm = RMSNorm(d_model, rngs=rngs)

    def __call__(self, values: Sequence[Array], unit_keys: Sequence[Array]) -> tuple[Array, Array]:
        """Mixes `values` by softmax over depth.

        Args:
          values: S arrays [B, T, D], the unnormalised sources v_i.
          unit_keys: S arrays [B, T, D], `rms_normalize(v_i)` (RMS-normalised without scale; the
            learned scale is folded into the query: w . (s * u) = (w * s) . u, so each source is
            normalised once however many sublayers read it).

        Returns:
          h [B, T, D] and alpha [B, T, S] (softmax over the last axis).
        """
        if len(values) != len(unit_keys) or not values:
            raise ValueError(
                f"values/unit_keys: need equal, non-zero counts, got {len(values)}, {len(unit_keys)}"
            )
        q_D = self.query[...] * self.key_norm.scale[...]  # no 1/sqrt(D): AttnRes uses raw logits
        # Per-source products instead of stacking the sources into an [S, B, T, D] copy.
        logits_BxTxS = jnp.stack([jnp.einsum("btd,d->bt", k, q_D) for k in unit_keys], axis=-1)
        alpha_BxTxS = jax.nn.softmax(logits_BxTxS.astype(jnp.float32), axis=-1)
        a = alpha_BxTxS.astype(values[0].dtype)
        h_BxTxD = sum(a[:, :, i, None] * v for i, v in enumerate(values))
        return h_BxTxD, alpha_BxTxS


def rms_normalize(x: Array, eps: float) -> Array:
    """x / sqrt(mean(x^2, axis=-1) + eps): RMSNorm without its learned scale."""
    ms = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    return (x * jax.lax.rsqrt(ms + eps)).astype(x.dtype)


class ResidualPath(nnx.Module):
    """Routes the outputs of L sublayers through the residual chosen by `residual`.

    Holds the depth-attention modules (L + 1 of them, the last for the readout) for "full" and
    "block"; nothing for "standard".
    """

    def __init__(
        self, residual: str, n_sublayers: int, n_blocks: int, d_model: int, *, rngs: nnx.Rngs
    ):
        if residual not in RESIDUAL_MODES:
            raise ValueError(
                f"residual: unknown mode {residual!r}; expected one of {RESIDUAL_MODES}"
            )
        if residual == "full":
            n_blocks = n_sublayers
        if residual == "block" and (n_blocks < 1 or n_sublayers % n_blocks):
            raise ValueError(
                f"n_blocks: must divide the number of sublayers {n_sublayers}, got {n_blocks}"
            )
        self.residual = residual
        self.n_sublayers = n_sublayers
        self.n_blocks = n_blocks
        if residual == "standard":
            self.depth = nnx.List([])
        else:
            self.depth = nnx.List(
                [DepthAttention(d_model, rngs=rngs) for _ in range(n_sublayers + 1)]
            )

    def __call__(
        self, v0_BxTxD: Array, sublayers: Sequence[Callable[[Array], Array]]
    ) -> tuple[Array, list[Array]]:
        """Runs the sublayers in order and returns the readout input and the depth weights.

        Args:
          v0_BxTxD: the token embedding v_0.
          sublayers: L callables, each mapping its input h_l [B, T, D] to its output v_l [B, T, D]
            (the sublayer applies its own pre-norm).

        Returns:
          h_out [B, T, D] (readout input; the classifier head normalises it) and a list of L + 1
          alpha arrays [B, T, S_l] (empty for standard residual).
        """
        if len(sublayers) != self.n_sublayers:
            raise ValueError(f"sublayers: expected {self.n_sublayers}, got {len(sublayers)}")
        if self.residual == "standard":
            h = v0_BxTxD
            for f in sublayers:
                h = h + f(h)
            return h, []

        eps = self.depth[0].key_norm.epsilon
        size = self.n_sublayers // self.n_blocks
        # Completed sources: v_0 then the completed block sums B_1, B_2, ... (values and unit keys).
        done_v = [v0_BxTxD]
        done_k = [rms_normalize(v0_BxTxD, eps)]
        partial = None
        alphas = []
        for l, f in enumerate(sublayers):
            j = l % size
            if j == 0:
                vs, ks = done_v, done_k
            else:
                vs, ks = [*done_v, partial], [*done_k, rms_normalize(partial, eps)]
            h, alpha = self.depth[l](vs, ks)
            alphas.append(alpha)
            v = f(h)
            partial = v if j == 0 else partial + v
            if j == size - 1:
                done_v.append(partial)
                done_k.append(rms_normalize(partial, eps))
                partial = None
        h_out, alpha = self.depth[self.n_sublayers](done_v, done_k)
        alphas.append(alpha)
        return h_out, alphas
