"""FLOP counts from XLA's cost analysis (nothing allocated), checked against analytic counts.

    flops = xla_flops(fn, jax.ShapeDtypeStruct((m, k), jnp.float32), ...)
    table = vmoer_overhead(REALISTIC_LAYER)

`xla_flops` lowers and compiles `fn` for abstract arguments and reads `cost_analysis()["flops"]`
(the dict-or-list return of different jax versions is handled). Modules are built abstractly with
`nnx.eval_shape`, so even a realistic MoE layer (d_model 1536, 40 experts) costs no memory.

Conventions: a multiply-add is 2 FLOPs (a [m, k] x [k, n] matmul is 2 m n k, `matmul_flops`);
XLA also counts elementwise work (softmax, GELU, noise), which the analytic matmul counts omit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from routecal import _checks
from routecal.models import moe, vmoer
from routecal.models.routers.common import DEFAULTS as VMOER_DEFAULTS


def matmul_flops(m: int, n: int, k: int) -> int:
    """Analytic FLOPs of a [m, k] x [k, n] matmul: 2 m n k (one multiply and one add per term)."""
    return 2 * m * n * k


def _flops_of(cost: Any) -> float:
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        return float(sum(_flops_of(c) for c in cost))
    if cost is None or "flops" not in cost:
        raise ValueError("fn: XLA cost analysis reported no 'flops' for this computation")
    return float(cost["flops"])


def xla_flops(fn: Callable[..., Any], *args: Any) -> float:
    """FLOPs XLA counts for `jax.jit(fn)(*args)`; `args` may be `jax.ShapeDtypeStruct`s (or
    pytrees of them), so nothing is allocated or executed."""
    compiled = jax.jit(fn).lower(*args).compile()
    return _flops_of(compiled.cost_analysis())


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def module_flops(
    make_module: Callable[[], nnx.Module], *arg_structs: Any, **call_kwargs: Any
) -> float:
    """FLOPs of one call `module(*args, **call_kwargs)` of the module `make_module()` builds.

    The module is built abstractly (`nnx.eval_shape`): no parameter is allocated.
    """
    abstract_module = nnx.eval_shape(make_module)
    graphdef, state = nnx.split(abstract_module)

    def f(state, *args):
        return nnx.merge(graphdef, state)(*args, **call_kwargs)

    return xla_flops(f, _abstract(state), *arg_structs)


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """One MoE layer (and its model) for FLOP accounting.

    Attributes:
      name: label in tables.
      d_model, n_experts, top_k, expert_dim, expert_type: the MoE layer (expert_dim = F).
      n_layers: MoE layers in the model (the overhead ratio is per layer, so it does not change).
      n_tokens: tokens per measured call (a multiple of n_experts / top_k keeps capacity exact).
      vmoer_samples: S, logit samples averaged at inference.
      vmoer_rank: rank R of the "lowrank" router's covariance factor.
      vmoer_ensemble: members M of the ensemble router; vmoer_swag_rank: K of the SWAG router.
    """

    name: str
    d_model: int
    n_experts: int
    top_k: int
    expert_dim: int
    expert_type: str = "swiglu"
    n_layers: int = 1
    n_tokens: int = 640
    # the routers' own defaults (`VMoERConfig`), named here so a table can vary them
    vmoer_samples: int = VMOER_DEFAULTS["vmoer_samples"]
    vmoer_rank: int = VMOER_DEFAULTS["vmoer_rank"]
    vmoer_ensemble: int = VMOER_DEFAULTS["vmoer_ensemble"]
    vmoer_swag_rank: int = VMOER_DEFAULTS["vmoer_swag_rank"]

    def config(self) -> vmoer.VMoERConfig:
        return vmoer.VMoERConfig(
            d_model=self.d_model,
            mlp_dim=self.expert_dim,
            n_experts=self.n_experts,
            top_k=self.top_k,
            capacity_factor=1.0,
            expert_type=self.expert_type,
            vmoer_samples=self.vmoer_samples,
            vmoer_rank=self.vmoer_rank,
            vmoer_ensemble=self.vmoer_ensemble,
            vmoer_swag_rank=self.vmoer_swag_rank,
        )


# The realistic layer of the issue: d_model 1536, 40 experts, top-8, expert width 512, SwiGLU,
# 32 layers (the shape of e.g. IBM Granite-3.0-3B-A800M).
REALISTIC_LAYER = LayerShape("realistic", 1536, 40, 8, 512, "swiglu", n_layers=32)
SMALL_LAYER = LayerShape("small-default", 64, 4, 2, 128, "gelu", n_layers=4, n_tokens=64)


def router_flops(shape: LayerShape, router_type: str, *, train: bool) -> float:
    """XLA FLOPs of one router call (any `routecal.models.routers` name) on `shape.n_tokens`
    tokens."""
    cfg = shape.config()
    x = jax.ShapeDtypeStruct((1, shape.n_tokens, shape.d_model), jnp.float32)
    return module_flops(
        lambda: vmoer.make_router(cfg, router_type, rngs=nnx.Rngs(0)), x, train=train
    )


def expert_flops(shape: LayerShape) -> float:
    """XLA FLOPs of the experts on exactly n_tokens * top_k token-expert pairs (capacity 1.0).

    Dispatch/combine are excluded: sort/gather implementations (MaxText, megablocks) spend no
    matmul FLOPs on them, and they are identical for deterministic and variational routers.
    """
    cfg = shape.config()
    c = moe.expert_capacity(shape.n_tokens, shape.n_experts, shape.top_k, 1.0)
    x = jax.ShapeDtypeStruct((1, shape.n_experts, c, shape.d_model), jnp.float32)
    return module_flops(lambda: moe.Experts(cfg, rngs=nnx.Rngs(0)), x)


def analytic_expert_flops(shape: LayerShape) -> int:
    """Matmul FLOPs of the experts: n_tokens * K * (2 or 3 matmuls of D x F)."""
    n_mm = 3 if shape.expert_type == "swiglu" else 2
    c = moe.expert_capacity(shape.n_tokens, shape.n_experts, shape.top_k, 1.0)
    return n_mm * matmul_flops(shape.n_experts * c, shape.expert_dim, shape.d_model)


def vmoer_overhead(shape: LayerShape = REALISTIC_LAYER) -> dict[str, Any]:
    """FLOPs of the deterministic vs variational routers, relative to the MoE layer.

    Returns a dict with per-call FLOPs (`det_router`, `mfvr_router_train` (1 sample),
    `mfvr_router_infer` (S samples), `vtsr_router_train`, `vtsr_router_infer`, `experts`,
    `layer_det` = det_router + experts) and overheads in percent of the deterministic layer:
    `overhead_mfvr_infer_pct`, `overhead_mfvr_train_pct`, `overhead_vtsr_infer_pct`,
    `overhead_vtsr_train_pct`. Per-layer ratios equal whole-MoE-stack ratios (`n_layers` layers).
    Every router (ensemble and swag included): `router_overheads`.
    """
    out: dict[str, Any] = {"shape": dataclasses.asdict(shape)}
    out["det_router"] = router_flops(shape, "det", train=False)
    for r in ("mfvr", "vtsr"):
        for mode in ("train", "infer"):
            out[f"{r}_router_{mode}"] = router_flops(shape, r, train=mode == "train")
    out["experts"] = expert_flops(shape)
    out["experts_analytic"] = analytic_expert_flops(shape)
    out["layer_det"] = out["det_router"] + out["experts"]
    for r in ("mfvr", "vtsr"):
        for mode in ("train", "infer"):
            extra = out[f"{r}_router_{mode}"] - out["det_router"]
            out[f"overhead_{r}_{mode}_pct"] = 100.0 * extra / out["layer_det"]
    return out


def router_overheads(
    shape: LayerShape = REALISTIC_LAYER, names: tuple[str, ...] | None = None
) -> dict[str, dict[str, float]]:
    """Every router's FLOPs per call and overhead in percent of the deterministic MoE layer
    (deterministic router + experts), in training (one sample) and at inference (S samples).

    Returns: name -> {"train", "infer" (FLOPs), "train_pct", "infer_pct"}; "det" has 0 %.
    """
    from routecal.models import routers

    names = tuple(names or routers.ROUTERS)
    det = router_flops(shape, "det", train=False)
    layer = det + expert_flops(shape)
    out: dict[str, dict[str, float]] = {}
    for name in names:
        r = {m: router_flops(shape, name, train=m == "train") for m in ("train", "infer")}
        r.update({f"{m}_pct": 100.0 * (r[m] - det) / layer for m in ("train", "infer")})
        out[name] = r
    return out


def model_flops(model_cfg: Any, batch_size: int = 1, *, train: bool = False) -> float:
    """XLA FLOPs of one forward pass of the routecal Transformer for a `ModelConfig`."""
    from routecal.models.transformer import Transformer

    batch_size = _checks.check_positive_int(batch_size, "batch_size")
    x = jax.ShapeDtypeStruct((batch_size, model_cfg.seq_len, model_cfg.token_dim), jnp.float32)

    def make() -> nnx.Module:
        return Transformer(model_cfg, rngs=nnx.Rngs(params=0, dropout=1))

    abstract_module = nnx.eval_shape(make)
    graphdef, state = nnx.split(abstract_module)

    def f(state, x):
        return nnx.merge(graphdef, state)(x, train=train).logits

    return xla_flops(f, _abstract(state), x)


def model_overhead(
    model_cfg: Any, batch_size: int = 1, mlp_types: tuple[str, ...] = ("vmoer_mfvr", "vmoer_vtsr")
) -> dict[str, float]:
    """Whole-model forward FLOPs with deterministic MoE vs each VMoER router (inference)."""
    base = dataclasses.replace(model_cfg, mlp_type="moe")
    out = {"model_moe": model_flops(base, batch_size)}
    for t in mlp_types:
        out[f"model_{t}"] = model_flops(dataclasses.replace(model_cfg, mlp_type=t), batch_size)
        out[f"overhead_{t}_pct"] = 100.0 * (out[f"model_{t}"] / out["model_moe"] - 1.0)
    return out
