"""`load_hf`: a Hugging Face MoE checkpoint directory -> routecal's NNX `Decoder` (+ import info).

    model, info = load_hf("/ckpt/OLMoE-1B-7B-0924", dtype="bfloat16", mesh=mesh)
    out = model(ids_BxT, return_traces=True)  # out.logits [B, T, V]; out.traces["mlp"][l]:
                                              # router_logits [B, T, E], experts / gates [B, T, K]

The model is built abstractly (`nnx.eval_shape`, no memory), then every parameter is read from the
safetensors shards tensor by tensor and placed straight onto its devices: with a mesh, each device's
shard is read alone (`jax.make_array_from_callback` asks for exactly the slices it holds), so no
host ever holds a whole 16B-parameter model. Parameters that no checkpoint holds (the VMoER routing
posterior, `overrides={"mlp_type": "vmoer_mfvr"}`) get their fresh initialisation from one jitted
init whose unused branches XLA removes.

Letters: B batch, T tokens, V vocabulary, E experts, K experts per token.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from routecal.models.decoder import Decoder, DecoderConfig
from routecal.models.pretrained import families, sharding
from routecal.models.pretrained.checkpoint import Checkpoint
from routecal.models.pretrained.sources import Source
from routecal.models.vmoer import VROUTER_PATH

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


@dataclasses.dataclass(frozen=True)
class ImportInfo:
    """What `load_hf` imported.

    Attributes:
      family: the `families.Family` (model_type, conventions, tensor table).
      config: the `DecoderConfig` the model was built from.
      hf_config: the checkpoint's `config.json` as a dict.
      dtype: parameter and compute dtype name.
      n_params: number of parameters.
      param_bytes_per_device: parameter bytes on the most loaded device (computed from shapes).
      partition_specs: parameter path -> `PartitionSpec` (None without a mesh).
      fresh_params: parameter paths initialised fresh, not read (the routing posterior, if any).
      ignored_tensors: checkpoint tensors deliberately not read (e.g. RoPE buffers, a tied head).
      tokenizer: `tokenizers.Tokenizer` from tokenizer.json, or None when the directory has none.
      checkpoint_dir: where it came from.
    """

    family: families.Family
    config: DecoderConfig
    hf_config: dict[str, Any]
    dtype: str
    n_params: int
    param_bytes_per_device: int
    partition_specs: dict[str, PartitionSpec] | None
    fresh_params: tuple[str, ...]
    ignored_tensors: tuple[str, ...]
    tokenizer: Any
    checkpoint_dir: str


def load_tokenizer(checkpoint_dir: str | os.PathLike) -> Any:
    """`tokenizers.Tokenizer` from `<checkpoint_dir>/tokenizer.json`, or None if there is none."""
    path = os.path.join(os.fspath(checkpoint_dir), "tokenizer.json")
    if not os.path.isfile(path):
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def decoder_config(
    hf_config: dict[str, Any], *, dtype: str = "bfloat16", overrides: dict[str, Any] | None = None
) -> DecoderConfig:
    """The `DecoderConfig` of a `config.json` dict, with `overrides` (e.g. a VMoER mlp_type)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown {dtype!r}; expected one of {sorted(DTYPES)}")
    kwargs = families.family_for(hf_config).decoder_kwargs(hf_config)
    kwargs.update(dtype=dtype, **dict(overrides or {}))
    try:
        return DecoderConfig.from_config(kwargs)
    except TypeError as e:  # pragma: no cover - from_config names unknown keys itself
        raise ValueError(f"overrides: {e}") from e


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def abstract_params(cfg: DecoderConfig, seed: int = 0) -> tuple[Any, nnx.State, dict]:
    """(graphdef, abstract Param state, {path tuple: ShapeDtypeStruct}) of the Decoder of `cfg`,
    without allocating anything (`nnx.eval_shape`)."""
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(seed)))
    graphdef, params, _ = nnx.split(abstract, nnx.Param, ...)
    return graphdef, params, nnx.traversals.flatten_mapping(nnx.to_pure_dict(params))


def _fresh_state(cfg: DecoderConfig, seed: int, keep: set[str]) -> tuple[dict, nnx.State]:
    """Freshly initialised params in `keep` and every non-parameter variable (RNG streams), from
    one jitted init; XLA drops the initialisers of everything else, so this costs ~nothing."""

    @jax.jit
    def init() -> tuple[dict, nnx.State]:
        m = Decoder(cfg, rngs=nnx.Rngs(seed))
        _, params, rest = nnx.split(m, nnx.Param, ...)
        flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(params))
        return {k: v for k, v in flat.items() if _dotted(k) in keep}, rest

    return init()


def _auto_axes(mesh: Mesh) -> Mesh:
    """The same devices and axis names with Auto axis types: the imported model runs under XLA's
    SPMD partitioner (FSDP gathers inserted per use), which Explicit axes would refuse."""
    n = len(mesh.axis_names)
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * n)


def _check_finite(a: np.ndarray, name: str) -> np.ndarray:
    if not np.all(np.isfinite(a)):  # ml_dtypes registers isfinite for bfloat16: no f32 copy
        raise ValueError(f"checkpoint: tensor {name!r} contains NaN or inf")
    return a


def load_hf(
    checkpoint_dir: str | os.PathLike,
    *,
    dtype: str = "bfloat16",
    mesh: Mesh | None = None,
    fsdp_axis: str = "fsdp",
    expert_axis: str | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[Decoder, ImportInfo]:
    """Imports a Hugging Face MoE checkpoint (any family of `families.FAMILIES`) as a routecal Decoder.

    Args:
      checkpoint_dir: directory with config.json, model.safetensors or its shards (with or without
        model.safetensors.index.json), and optionally tokenizer.json.
      dtype: "bfloat16" (parameters and compute; router and logits stay float32) or "float32".
      mesh: place the parameters on this mesh (`sharding` rules; FSDP over `fsdp_axis`, experts
        over `expert_axis` if given); None = the default device.
      overrides: DecoderConfig fields to change, e.g. {"mlp_type": "vmoer_mfvr", "vmoer":
        {"beta": 1e-2}} for a VMoER retrofit (the posterior is initialised fresh from `seed`).
      seed: PRNG seed of the fresh (non-checkpoint) parameters and RNG streams.

    Returns:
      (model, info): the `Decoder` (call it on ids [B, T]: `.logits` [B, T, V]; with
      `return_traces=True`, `.traces["mlp"]` holds per MoE layer router_logits / router_probs
      [B, T, E], experts and gates [B, T, K]) and an `ImportInfo`.

    Raises:
      ValueError: unsupported model_type or convention, a missing config.json / shard / tensor, a
        tensor whose shape does not match (named), NaN/inf weights, unused checkpoint tensors.
    """
    ckpt = Checkpoint(checkpoint_dir)
    try:
        family = families.family_for(ckpt.config)
        cfg = decoder_config(ckpt.config, dtype=dtype, overrides=overrides)
        graphdef, params, flat = abstract_params(cfg, seed)
        shapes = {_dotted(k): tuple(v.shape) for k, v in flat.items()}
        fresh = {p for p in shapes if VROUTER_PATH in p.split(".")}
        sources = family.sources([p for p in shapes if p not in fresh], cfg.n_experts)
        ignored = _check_tensors(ckpt, sources, shapes, cfg, family.tensor_dtypes)
        shardings = specs = None
        if mesh is not None:
            mesh = _auto_axes(mesh)
            shardings = sharding.plan(shapes, mesh, fsdp_axis=fsdp_axis, expert_axis=expert_axis)
            specs = {p: s.spec for p, s in shardings.items()}
        np_dtype = DTYPES[dtype]
        fresh_flat, rest = _fresh_state(cfg, seed, fresh)
        values = {}
        for key in flat:
            path = _dotted(key)
            if path in fresh:
                v = fresh_flat[key]
                values[key] = v if shardings is None else jax.device_put(v, shardings[path])
                continue
            values[key] = _place(ckpt, path, sources[path], shapes[path], np_dtype, shardings)
        nnx.replace_by_pure_dict(params, nnx.traversals.unflatten_mapping(values))
        model = nnx.merge(graphdef, params, rest)
        itemsize = np.dtype(np_dtype).itemsize
        mesh_shape = None if mesh is None else mesh.shape
        read = {p: s for p, s in shapes.items() if p not in fresh}
        fresh_shapes = {p: s for p, s in shapes.items() if p in fresh}  # float32 at init
        info = ImportInfo(
            family=family,
            config=cfg,
            hf_config=dict(ckpt.config),
            dtype=dtype,
            n_params=int(sum(int(np.prod(s)) for s in shapes.values())),
            param_bytes_per_device=sharding.bytes_per_device(read, itemsize, specs, mesh_shape)
            + sharding.bytes_per_device(fresh_shapes, 4, specs, mesh_shape),
            partition_specs=specs,
            fresh_params=tuple(sorted(fresh)),
            ignored_tensors=tuple(ignored),
            tokenizer=load_tokenizer(checkpoint_dir),
            checkpoint_dir=os.fspath(checkpoint_dir),
        )
        return model, info
    finally:
        ckpt.close()


def _check_tensors(
    ckpt: Checkpoint, sources: dict[str, Source], shapes: dict[str, tuple], cfg: DecoderConfig,
    dtypes: tuple[str, ...],
) -> list[str]:
    """Every mapped tensor exists with the right shape and one of the family's `dtypes`, and every
    checkpoint tensor is used (or deliberately ignored); returns the ignored ones."""
    used: set[str] = set()
    for path, src in sources.items():
        for n in src.names:
            if n not in ckpt:
                raise ValueError(
                    f"checkpoint: tensor {n!r} (for parameter {path}) is missing from "
                    f"{ckpt.directory!r}"
                )
            if ckpt.dtype(n) not in dtypes:
                raise ValueError(
                    f"checkpoint: tensor {n!r} in {ckpt.file_of(n)} is {ckpt.dtype(n)}, but "
                    f"parameter {path} expects one of {list(dtypes)} (refused, not cast)"
                )
        got = src.shape(ckpt)
        if tuple(got) != tuple(shapes[path]):
            raise ValueError(
                f"checkpoint: tensor {src.names[0]!r} gives shape {list(got)} for parameter "
                f"{path}, but config.json implies {list(shapes[path])}"
            )
        used.update(src.names)
    ignored, unused = [], []
    for n in ckpt.names:
        if n in used:
            continue
        tied_head = n == "lm_head.weight" and cfg.tie_embeddings
        if tied_head or any(re.fullmatch(p, n) for p in families.IGNORED_TENSORS):
            ignored.append(n)
        else:
            unused.append(n)
    if unused:
        raise ValueError(
            f"checkpoint: {len(unused)} tensor(s) match no parameter of the {cfg.mlp_type} model "
            f"built from config.json (a convention mismatch?): {unused[:5]}"
        )
    return ignored


def _place(
    ckpt: Checkpoint,
    path: str,
    src: Source,
    shape: tuple[int, ...],
    np_dtype: Any,
    shardings: dict[str, NamedSharding] | None,
) -> jax.Array:
    """Reads parameter `path` (cast to `np_dtype`) onto its devices, shard by shard."""

    def read(index: tuple[slice, ...] | None) -> np.ndarray:
        return _check_finite(src.read(ckpt, index), src.names[0]).astype(np_dtype, copy=False)

    if shardings is None:
        return jnp.asarray(read(None))
    return jax.make_array_from_callback(shape, shardings[path], read)
