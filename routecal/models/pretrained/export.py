"""Write a routecal decoder as a Hugging Face checkpoint directory (the inverse of `load_hf`).

    export.write_random_checkpoint("/tmp/tiny", export.TINY_CONFIGS["olmoe"])   # smoke runs

`save_hf(model, hf_config, directory)` inverts each family's tensor table (`families.Family`):
"copy" tensors as they are, "T" transposed back to PyTorch's [out, in], "stack_T" split into one
[out, in] tensor per expert. Written with `safetensors` as `model.safetensors` plus `config.json`:
the hub's per-expert layout that `load_hf` reads. Granite's fused experts are not written.
`write_random_checkpoint` gives a randomly initialised one (weights N(0, `scale`^2), norm scales 1)
for pipeline smoke runs such as `configs/study_pretrained.py:quick`: its numbers are not evidence.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from routecal.models.decoder import Decoder
from routecal.models.pretrained import families
from routecal.models.pretrained.loader import decoder_config

# A byte-vocabulary (259 ids: `data.text` ByteTokenizer) OLMoE-layout model of 2 layers.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "olmoe": {
        "model_type": "olmoe", "vocab_size": 259, "hidden_size": 32, "intermediate_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": False,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    },
}


def save_hf(model: Decoder, hf_config: dict[str, Any], directory: str | os.PathLike) -> str:
    """Writes `model` (built from `hf_config`) as config.json + model.safetensors; returns the
    directory. Raises ValueError for a layout it cannot invert (Granite's fused experts)."""
    family = families.family_for(hf_config)
    flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    values = {".".join(map(str, k)): np.asarray(jax.device_get(v), np.float32)
              for k, v in flat.items()}
    tensors: dict[str, np.ndarray] = {}
    for path, src in family.sources(sorted(values), model.cfg.n_experts).items():
        v = values[path]
        if src.kind == "copy":
            tensors[src.names[0]] = v
        elif src.kind == "T":
            tensors[src.names[0]] = np.ascontiguousarray(np.swapaxes(v, -1, -2))
        elif src.kind == "stack_T":
            for j, name in enumerate(src.names):
                tensors[name] = np.ascontiguousarray(v[j].T)
        else:
            raise ValueError(f"hf_config: {family.model_type} layout {src.kind!r} is not exported")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config, f)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    return os.fspath(directory)


def write_random_checkpoint(directory: str | os.PathLike, hf_config: dict[str, Any], *,
                            seed: int = 0, scale: float = 0.3) -> str:
    """A randomly initialised checkpoint of `hf_config` in `directory` (see the module doc)."""
    model = Decoder(decoder_config(hf_config, dtype="float32"), rngs=nnx.Rngs(seed))
    params = nnx.state(model, nnx.Param)
    flat = nnx.traversals.flatten_mapping(nnx.to_pure_dict(params))
    rng = np.random.default_rng(seed)
    new = {k: np.ones(v.shape, np.float32) if k[-1] == "scale"
           else (scale * rng.standard_normal(v.shape)).astype(np.float32)
           for k, v in flat.items()}
    nnx.replace_by_pure_dict(params, nnx.traversals.unflatten_mapping(new))
    nnx.update(model, params)
    return save_hf(model, hf_config, directory)
