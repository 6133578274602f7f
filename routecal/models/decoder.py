"""Causal decoder LM: token ids [B, T] -> next-token logits [B, T, V] (+ per-token routing traces).

    cfg = DecoderConfig(vocab_size=259, max_len=256, residual="block", n_blocks=2)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    out = model(ids_BxT, return_traces=True)   # out.logits [B, T, V], out.traces

Each of the `n_layers` layers has two sublayers, causal attention (RoPE, optional grouped-query
heads) then an MLP (SwiGLU, or MoE / VMoER every `moe_every`-th layer), each with its own pre-norm
RMSNorm: v = residual_multiplier * Sublayer(RMSNorm(h)). The sublayer inputs h come from the
residual path of `attnres.py`: "standard" (pre-norm residual sum), "full" (Full AttnRes) or "block"
(Block AttnRes, Kimi Team arXiv:2603.15031, with block boundaries at layer starts: each block holds
n_layers / n_blocks whole layers, both sublayers of each; `n_blocks = 2 * n_layers`, one sublayer
per block, is allowed too and is Full AttnRes exactly). The readout (depth-aggregated per position
for AttnRes) goes through a final RMSNorm and the tied or untied output head, then / logits_scaling.

Letters: B batch, T tokens, V vocabulary, D width, S depth sources, E experts, K experts per token.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from routecal.models import attnres, causal, mla
from routecal.models.decoder_config import DecoderConfig

Array = jax.Array
__all__ = ["Decoder", "DecoderConfig", "DecoderOutput", "check_ids"]


# DecoderConfig.attention -> the attention sublayer class.
ATTENTIONS = {"standard": causal.CausalAttention, "mla": mla.MultiHeadLatentAttention}


def check_ids(ids: Any, vocab_size: int, max_len: int, name: str = "ids") -> None:
    """Raises ValueError naming `name` if token ids [B, T] are not integers in [0, vocab_size) or
    T exceeds `max_len`. Traced arrays (inside jit) are only shape-checked."""
    shape = tuple(np.shape(ids))
    if len(shape) != 2:
        raise ValueError(f"{name}: expected token ids [B, T], got shape {list(shape)}")
    if shape[1] > max_len:
        raise ValueError(
            f"{name}: sequence length {shape[1]} exceeds the model's maximum max_len={max_len}"
        )
    if isinstance(ids, jax.core.Tracer):
        return
    a = np.asarray(ids)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected integer token ids, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= vocab_size):
        bad = int(a.min()) if a.min() < 0 else int(a.max())
        raise ValueError(f"{name}: token id {bad} out of the vocabulary [0, {vocab_size})")


@struct.dataclass
class DecoderOutput:
    """Forward-pass result.

    Attributes:
      logits: [B, T, V] float32, next-token logits at every position.
      aux_loss: scalar, the sum of the (already weighted) MoE / VMoER auxiliary losses.
      aux: name -> scalar, each auxiliary loss summed over layers.
      traces: None unless `return_traces`; else {"alpha": list of [B, T, S_l] depth weights per
        depth-attention site (L sublayers then the readout; [] for standard residual),
        "mlp": list of per-MoE-layer dicts (router_logits / router_probs [B, T, E], experts,
        gates, dropped [B, T, K], plus VMoER extras), in the order of `cfg.moe_layers`}.
    """

    logits: Array
    aux_loss: Array
    aux: dict[str, Array]
    traces: dict[str, Any] | None = None


def _moe_config(cfg: DecoderConfig) -> Any:
    """The MoE / VMoER config of the decoder's expert layers (the `moe.py` attribute protocol)."""
    from routecal.models import vmoer

    opts = {
        (k if k.startswith("vmoer_") else f"vmoer_{k}"): v for k, v in cfg.vmoer_options.items()
    }
    return vmoer.VMoERConfig(
        d_model=cfg.d_model,
        mlp_dim=cfg.expert_hidden,
        n_experts=cfg.n_experts,
        top_k=cfg.top_k,
        capacity_factor=cfg.capacity_factor,
        lb_coef=cfg.lb_coef,
        z_coef=cfg.z_coef,
        dtype=cfg.compute_dtype,
        expert_type="swiglu",
        normalize_gates=cfg.normalize_gates,
        n_group=cfg.n_group,
        topk_group=cfg.topk_group,
        routed_scaling=cfg.routed_scaling,
        **opts,
    )


def make_decoder_mlp(cfg: DecoderConfig, layer: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The MLP sublayer of layer `layer`: SwiGLU, or a `DecoderMoE` with the router of mlp_type."""
    if not cfg.uses_moe(layer):
        return causal.SwiGLU(cfg.d_model, cfg.mlp_dim, cfg.compute_dtype, rngs=rngs)
    from routecal.models import vmoer

    mcfg = _moe_config(cfg)
    router_type = "det" if cfg.mlp_type == "moe" else cfg.mlp_type.removeprefix("vmoer_")
    router = vmoer.make_router(mcfg, router_type, rngs=rngs)
    return causal.DecoderMoE(
        mcfg,
        shared_hidden=cfg.shared_expert_hidden,
        shared_gate=cfg.shared_expert_gate,
        router=router,
        dispatch=cfg.dispatch,
        rngs=rngs,
    )


class DecoderLayer(nnx.Module):
    """One layer's two sublayers (each with its pre-norm): causal attention and MLP."""

    def __init__(self, cfg: DecoderConfig, layer: int, *, rngs: nnx.Rngs):
        dt = cfg.compute_dtype
        self.attn_norm = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=dt, rngs=rngs)
        self.attn = ATTENTIONS[cfg.attention](cfg, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=dt, rngs=rngs)
        self.mlp = make_decoder_mlp(cfg, layer, rngs=rngs)
        # Optional perturbation of the hidden state entering this layer, before attention
        # ([B, T, D] -> [B, T, D]; `vmoer.set_layer_noise`, routing stability).
        self.input_noise: nnx.Module | None = nnx.data(None)


class Decoder(nnx.Module):
    """Causal decoder LM over token ids [B, T] -> `DecoderOutput` (logits [B, T, V], traces)."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        if not isinstance(cfg, DecoderConfig):
            raise ValueError(f"cfg: expected a DecoderConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=cfg.compute_dtype,
            embedding_init=nnx.initializers.normal(stddev=0.02),
            rngs=rngs,
        )
        self.layers = nnx.List([DecoderLayer(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.residual = attnres.ResidualPath(
            cfg.residual, cfg.n_sublayers, cfg.n_blocks, cfg.d_model, rngs=rngs
        )
        self.final_norm = nnx.RMSNorm(
            cfg.d_model, epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, rngs=rngs
        )
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else nnx.Linear(
                cfg.d_model,
                cfg.vocab_size,
                use_bias=False,
                dtype=cfg.compute_dtype,
                kernel_init=nnx.initializers.normal(stddev=0.02),
                rngs=rngs,
            )
        )
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)  # rate 0: the identity

    def __call__(
        self, ids_BxT: Array, *, train: bool = False, return_traces: bool = False
    ) -> DecoderOutput:
        """Forward pass.

        Args:
          ids_BxT: integer token ids in [0, vocab_size), T <= max_len.
          train: enables dropout (and stochastic routing in VMoER MLPs).
          return_traces: also return depth weights and MoE traces (a static Python flag).

        Raises:
          ValueError: ids not [B, T], T > max_len, or (for concrete arrays) ids out of vocabulary.
        """
        cfg = self.cfg
        check_ids(ids_BxT, cfg.vocab_size, cfg.max_len)
        rm = cfg.residual_multiplier
        mlp_out: list[tuple[dict[str, Array], dict[str, Array]]] = []  # (aux, trace) per layer

        def attn_fn(layer: DecoderLayer) -> Any:
            def f(h: Array) -> Array:
                eps = 0.0
                if layer.input_noise is not None:  # h + eps enters the layer; the returned
                    eps = layer.input_noise(h) - h  # eps joins the residual stream, so the
                    h = h + eps  # standard-residual stream is h + eps from here on
                y = self.dropout(rm * layer.attn(layer.attn_norm(h)), deterministic=not train)
                return y + eps

            return f

        def mlp_fn(layer: DecoderLayer) -> Any:
            def f(h: Array) -> Array:
                y, a, tr = layer.mlp(layer.mlp_norm(h), train=train)
                mlp_out.append((a, tr))
                return self.dropout(rm * y, deterministic=not train)

            return f

        sublayers = [f for layer in self.layers for f in (attn_fn(layer), mlp_fn(layer))]
        v0 = self.embed(jnp.asarray(ids_BxT, jnp.int32)) * cfg.embedding_multiplier
        h_out, alphas = self.residual(v0.astype(cfg.compute_dtype), sublayers)
        h = self.final_norm(h_out)
        if self.lm_head is None:
            logits = self.embed.attend(h)
        else:
            logits = self.lm_head(h)
        logits = logits.astype(jnp.float32) / cfg.logits_scaling
        aux = {k: sum(a[k] for a, _ in mlp_out if k in a) for a, _ in mlp_out for k in a}
        aux_loss = sum(aux.values()) if aux else jnp.zeros((), jnp.float32)
        traces = None
        if return_traces:
            mlp_traces = [tr for i, (_, tr) in enumerate(mlp_out) if cfg.uses_moe(i)]
            traces = {"alpha": alphas, "mlp": mlp_traces}
        return DecoderOutput(logits=logits, aux_loss=jnp.asarray(aux_loss), aux=aux, traces=traces)


def num_params(model: nnx.Module) -> int:
    """Number of trainable parameters (`nnx.Param` leaves) of `model`."""
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def replace(cfg: DecoderConfig, **changes: Any) -> DecoderConfig:
    """`dataclasses.replace` for DecoderConfig (re-runs the checks)."""
    return dataclasses.replace(cfg, **changes)
