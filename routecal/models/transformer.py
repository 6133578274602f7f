"""The transformer classifier, assembled from a typed `ModelConfig`; returns logits and traces.

Letters: B batch, T tokens, P features per input token, D width, C classes, S depth sources.

Each of the `n_layers` layers has two sublayers, attention then MLP, each with its own pre-norm:
v = Dropout(Sublayer(RMSNorm(h))). Their inputs h come from the residual path chosen by
`ModelConfig.residual` (see `attnres.py`): "standard" (pre-norm residual sum), "full" (Full AttnRes)
or "block" (Block AttnRes with `n_blocks` blocks). The readout is RMSNorm + mean over tokens +
linear.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from routecal import _checks
from routecal.models import attnres, layers, routers
from routecal.models.routers.common import check_options as check_vmoer_options

Array = jax.Array
# "vmoer_<router>" for every stochastic router of the registry (`routecal.models.routers`).
MLP_TYPES = ("dense", "moe", *(f"vmoer_{r}" for r in routers.ROUTERS if r != "det"))
RENAMED_MLP_TYPES = {f"vmoer_{old}": f"vmoer_{new}" for old, new in routers.RENAMED.items()}


def check_mlp_type(mlp_type: str) -> str:
    """`mlp_type` if it is one of MLP_TYPES; ValueError naming the new name of an old one."""
    if mlp_type in RENAMED_MLP_TYPES:
        raise ValueError(
            f"model.mlp_type: {mlp_type!r} was renamed; use {RENAMED_MLP_TYPES[mlp_type]!r}"
        )
    if mlp_type not in MLP_TYPES:
        raise ValueError(f"model.mlp_type: unknown {mlp_type!r}; expected one of {MLP_TYPES}")
    return mlp_type


@dataclasses.dataclass(frozen=True, kw_only=True)
class StackConfig:
    """What the classifier's `ModelConfig` and the decoder's `DecoderConfig` share: a stack of
    `n_layers` pre-norm layers (attention then MLP), its residual path and its MoE options, with
    their checks. Defaults are the classifier's; `DecoderConfig` overrides some.

    Attributes:
      d_model, n_layers, n_heads, mlp_dim: width D, layers (2 sublayers each), heads, MLP width F.
      residual: "standard", "full" or "block" (`attnres.RESIDUAL_MODES`).
      n_blocks: N for Block AttnRes (each config checks which N it accepts).
      dropout: dropout rate on every sublayer output.
      mlp_type: "dense", "moe" or "vmoer_<router>" (`MLP_TYPES`).
      n_experts, top_k, capacity_factor, moe_every, lb_coef, z_coef: MoE options; layer i uses the
        MoE MLP when i % moe_every == moe_every - 1.
      vmoer: extra VMoER options as sorted (key, value) pairs (`vmoer_options` gives a dict).
    """

    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    mlp_dim: int = 128
    residual: str = "full"
    n_blocks: int = 2
    dropout: float = 0.0
    mlp_type: str = "dense"
    n_experts: int = 4
    top_k: int = 1
    capacity_factor: float = 1.25
    moe_every: int = 1
    lb_coef: float = 0.01
    z_coef: float = 0.001
    vmoer: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "mlp_dim", "n_experts", "moe_every"):
            _checks.check_positive_int(getattr(self, name), f"model.{name}")
        if self.residual not in attnres.RESIDUAL_MODES:
            raise ValueError(
                f"model.residual: unknown {self.residual!r}; expected one of "
                f"{attnres.RESIDUAL_MODES}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout: must lie in [0, 1), got {self.dropout}")
        check_mlp_type(self.mlp_type)
        if not isinstance(self.top_k, int) or not 1 <= self.top_k <= self.n_experts:
            raise ValueError(
                f"model.top_k: must lie in [1, n_experts={self.n_experts}], got {self.top_k!r}"
            )
        for name in ("lb_coef", "z_coef"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"model.{name}: must be a finite number >= 0, got {v!r}")
        if self.vmoer:
            check_vmoer_options(dict(self.vmoer))

    @property
    def n_sublayers(self) -> int:
        """L = 2 * n_layers (attention and MLP of each layer)."""
        return 2 * self.n_layers

    @property
    def vmoer_options(self) -> dict[str, Any]:
        return dict(self.vmoer)

    @property
    def sublayer_names(self) -> tuple[str, ...]:
        """Names of the depth-attention sites: L sublayers then the readout ("" for standard)."""
        return attnres.sublayer_names(self.residual, self.n_layers)


@dataclasses.dataclass(frozen=True)
class ModelConfig(StackConfig):
    """Typed model configuration of the classifier (validated in `__post_init__`; hashable, so
    NNX can treat it as static).

    Attributes:
      seq_len, token_dim, num_classes: T, P and C of the data.
      the `StackConfig` fields (keyword-only); n_blocks must divide 2 * n_layers (ignored unless
      residual is "block"); capacity_factor > 0.
    """

    seq_len: int
    token_dim: int
    num_classes: int

    def __post_init__(self) -> None:
        for name in ("seq_len", "token_dim"):
            _checks.check_positive_int(getattr(self, name), f"model.{name}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(
                f"model.num_classes: must be an integer >= 2, got {self.num_classes!r}"
            )
        super().__post_init__()
        if self.residual == "block" and (
            not isinstance(self.n_blocks, int)
            or self.n_blocks < 1
            or self.n_sublayers % self.n_blocks
        ):
            raise ValueError(
                f"model.n_blocks: must be a positive divisor of the number of sublayers "
                f"2 * n_layers = {self.n_sublayers}, got {self.n_blocks!r}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.n_heads: must divide d_model={self.d_model}, got {self.n_heads}"
            )
        if self.capacity_factor <= 0:
            raise ValueError(f"model.capacity_factor: must be > 0, got {self.capacity_factor}")

    def uses_moe(self, layer: int) -> bool:
        """Whether layer `layer` (0-based) gets the MoE-type MLP."""
        return self.mlp_type != "dense" and layer % self.moe_every == self.moe_every - 1

    @classmethod
    def from_config(
        cls, model_cfg: Any, *, seq_len: int, token_dim: int, num_classes: int
    ) -> ModelConfig:
        """Builds the typed config from a `ConfigDict` (or mapping); unknown keys are an error."""
        d = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
        valid = {f.name for f in dataclasses.fields(cls)} - {"seq_len", "token_dim", "num_classes"}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"model: unknown key(s) {unknown}; valid: {sorted(valid)}")
        if "vmoer" in d:
            v = d["vmoer"] or {}
            d["vmoer"] = tuple(sorted(dict(v).items()))
        return cls(
            seq_len=int(seq_len), token_dim=int(token_dim), num_classes=int(num_classes), **d
        )


def make_mlp(cfg: ModelConfig, *, layer: int = 0, rngs: nnx.Rngs) -> nnx.Module:
    """The MLP sublayer of layer `layer` (0-based): dense, or the MoE type of `cfg.mlp_type`.

    All returned modules follow the MLP sublayer protocol of `layers.py`.
    """
    if not cfg.uses_moe(layer):
        return layers.DenseMLP(cfg.d_model, cfg.mlp_dim, rngs=rngs)
    from routecal.models import moe, vmoer

    if cfg.mlp_type == "moe":
        return moe.MoEMLP(cfg, rngs=rngs)
    router_type = cfg.mlp_type.removeprefix("vmoer_")
    return vmoer.VMoEMLP(cfg, router_type=router_type, rngs=rngs)


@struct.dataclass
class ModelOutput:
    """Forward-pass result.

    Attributes:
      logits: [B, C].
      aux_loss: scalar, the sum of all (already weighted) auxiliary losses.
      aux: name -> scalar, each auxiliary loss summed over layers.
      traces: None unless `return_traces`; else {"alpha": list of [B, T, S_l] per depth-attention
        site (L sublayers then the readout; [] for standard residual), "mlp": list of per-MLP trace
        dicts}.
    """

    logits: Array
    aux_loss: Array
    aux: dict[str, Array]
    traces: dict[str, Any] | None = None


class Block(nnx.Module):
    """One layer's two sublayers (each with its pre-norm): attention and MLP."""

    def __init__(self, cfg: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        self.attn_norm = layers.RMSNorm(cfg.d_model, rngs=rngs)
        self.attn = layers.Attention(cfg.d_model, cfg.n_heads, rngs=rngs)
        self.mlp_norm = layers.RMSNorm(cfg.d_model, rngs=rngs)
        self.mlp = make_mlp(cfg, layer=layer, rngs=rngs)


class Transformer(nnx.Module):
    """Transformer classifier over token sequences [B, T, P] -> logits [B, C] (+ traces)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = layers.TokenEmbedding(cfg.token_dim, cfg.seq_len, cfg.d_model, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, i, rngs=rngs) for i in range(cfg.n_layers)])
        self.residual = attnres.ResidualPath(
            cfg.residual, cfg.n_sublayers, cfg.n_blocks, cfg.d_model, rngs=rngs
        )
        self.head = layers.ClassifierHead(cfg.d_model, cfg.num_classes, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs) if cfg.dropout > 0 else None

    def _drop(self, x: Array, train: bool) -> Array:
        if self.dropout is None:
            return x
        return self.dropout(x, deterministic=not train)

    def __call__(
        self, tokens_BxTxP: Array, *, train: bool = False, return_traces: bool = False
    ) -> ModelOutput:
        """Forward pass.

        Args:
          tokens_BxTxP: input tokens, T = cfg.seq_len, P = cfg.token_dim.
          train: enables dropout (and stochastic routing in VMoER MLPs).
          return_traces: also return depth weights and MLP traces (static Python flag: no extra
            work when False).
        """
        cfg = self.cfg
        shape = tuple(tokens_BxTxP.shape)
        if len(shape) != 3 or shape[1:] != (cfg.seq_len, cfg.token_dim):
            raise ValueError(
                f"tokens: expected shape [B, {cfg.seq_len}, {cfg.token_dim}], got {list(shape)}"
            )
        aux: dict[str, Array] = {}
        mlp_traces: list[dict[str, Array]] = []

        def attn_fn(block: Block) -> Any:
            return lambda h: self._drop(block.attn(block.attn_norm(h)), train)

        def mlp_fn(block: Block) -> Any:
            def f(h: Array) -> Array:
                y, a, tr = block.mlp(block.mlp_norm(h), train=train)
                for k, val in a.items():
                    aux[k] = aux[k] + val if k in aux else val
                if return_traces:
                    mlp_traces.append(tr)
                return self._drop(y, train)

            return f

        sublayers = []
        for block in self.blocks:
            sublayers += [attn_fn(block), mlp_fn(block)]
        v0 = self.embed(tokens_BxTxP.astype(jnp.float32))
        h_out, alphas = self.residual(v0, sublayers)
        logits = self.head(h_out)
        aux_loss = sum(aux.values()) if aux else jnp.zeros((), jnp.float32)
        traces = {"alpha": alphas, "mlp": mlp_traces} if return_traces else None
        return ModelOutput(logits=logits, aux_loss=jnp.asarray(aux_loss), aux=aux, traces=traces)
