"""Lazy reading of a Hugging Face checkpoint directory: `config.json` and `*.safetensors` shards.

A directory holds either one `model.safetensors`, or shards listed by `model.safetensors.index.json`
(`{"weight_map": {tensor name: shard file}}`), or (without an index) several `*.safetensors` files
whose headers are scanned. Tensors are read one at a time, and only the requested slice of each,
through `safetensors.safe_open(..., framework="numpy")` (bfloat16 arrives as `ml_dtypes.bfloat16`),
so a checkpoint larger than host memory can be placed shard by shard onto a device mesh.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
Index = tuple[slice, ...]


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """`config.json` of a checkpoint directory as a dict; ValueError naming what is missing."""
    d = os.fspath(directory)
    if not os.path.isdir(d):
        raise ValueError(f"checkpoint_dir: {d!r} is not a directory")
    path = os.path.join(d, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint_dir: no config.json in {d!r}")
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ValueError(f"checkpoint_dir: {path} is not valid JSON ({_one_line(e)})") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"checkpoint_dir: {path} must hold a JSON object")
    return cfg


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _normalise(index: Index | None, shape: Sequence[int]) -> tuple[slice, ...]:
    """Full-form slices (start, stop, step 1) for `index` over `shape` (None = everything)."""
    index = () if index is None else tuple(index)
    if len(index) > len(shape):
        raise ValueError(f"index: {len(index)} slices for a tensor of rank {len(shape)}")
    out = []
    for i, n in enumerate(shape):
        s = index[i] if i < len(index) else slice(None)
        if not isinstance(s, slice):
            raise ValueError(f"index: expected slices, got {s!r}")
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"index: only unit-step slices are supported, got {s!r}")
        out.append(slice(start, stop))
    return tuple(out)


class Checkpoint:
    """The tensors of a safetensors checkpoint directory, read lazily by name and slice.

    Args:
      directory: the checkpoint directory (holding config.json and the safetensors shard(s)).

    Raises:
      ValueError: no safetensors file, an index naming a missing shard, or a corrupt index.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self.config = read_config(self.directory)
        self._files: dict[str, str] = {}  # tensor name -> absolute shard path
        self._handles: dict[str, Any] = {}
        index_path = os.path.join(self.directory, INDEX_FILE)
        if os.path.isfile(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    index = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
                raise ValueError(f"checkpoint_dir: {index_path} is not valid JSON "
                                 f"({_one_line(e)})") from e
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"checkpoint_dir: {index_path} has no weight_map")
            for shard in sorted(set(weight_map.values())):
                if not os.path.isfile(os.path.join(self.directory, shard)):
                    raise ValueError(
                        f"checkpoint_dir: shard {shard!r} listed in {INDEX_FILE} is missing "
                        f"from {self.directory!r}"
                    )
            self._files = {k: os.path.join(self.directory, v) for k, v in weight_map.items()}
        else:
            shards = sorted(n for n in os.listdir(self.directory) if n.endswith(".safetensors"))
            if not shards:
                raise ValueError(f"checkpoint_dir: no *.safetensors file in {self.directory!r}")
            for shard in shards:
                path = os.path.join(self.directory, shard)
                for name in self._handle(path).keys():
                    if name in self._files:
                        raise ValueError(
                            f"checkpoint_dir: tensor {name!r} appears in two shards "
                            f"({os.path.basename(self._files[name])}, {shard})"
                        )
                    self._files[name] = path

    # ------------------------------------------------------------------------------------------

    def _handle(self, path: str) -> Any:
        if path not in self._handles:
            try:
                self._handles[path] = safe_open(path, framework="numpy")
            except Exception as e:  # safetensors raises its own SafetensorError for bad headers
                raise ValueError(f"checkpoint: {path} is not a readable safetensors file "
                                 f"(truncated or corrupt: {_one_line(e)})") from e
        return self._handles[path]

    def close(self) -> None:
        """Drops the open file handles (reading again reopens them)."""
        self._handles.clear()

    def __contains__(self, name: str) -> bool:
        return name in self._files

    @property
    def names(self) -> list[str]:
        """All tensor names in the checkpoint, sorted."""
        return sorted(self._files)

    def _slice(self, name: str) -> Any:
        if name not in self._files:
            raise ValueError(f"checkpoint: tensor {name!r} is missing from {self.directory!r}")
        handle = self._handle(self._files[name])
        if name not in handle.keys():
            raise ValueError(
                f"checkpoint: tensor {name!r} is missing from shard "
                f"{os.path.basename(self._files[name])} (listed in {INDEX_FILE})"
            )
        return handle.get_slice(name)

    def file_of(self, name: str) -> str:
        """The shard file holding tensor `name`."""
        return self._files[name]

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor `name` (from the shard header; no data is read)."""
        return tuple(int(n) for n in self._slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """safetensors dtype string of tensor `name` ("F32", "BF16", ...)."""
        return str(self._slice(name).get_dtype())

    def read(self, name: str, index: Index | None = None) -> np.ndarray:
        """Reads tensor `name`, or only `index` (a tuple of unit-step slices) of it, as numpy."""
        sl = self._slice(name)
        full = _normalise(index, self.shape(name))
        try:
            return np.asarray(sl[full])
        except Exception as e:  # a shard cut after its header: safetensors' own error type
            raise ValueError(f"checkpoint: tensor {name!r} cannot be read from "
                             f"{self._files[name]} (truncated or corrupt: {_one_line(e)})") from e
