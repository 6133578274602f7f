"""Sharded column store for large prediction sets: stream rows to disk, read columns lazily.

Layout of a sharded predictions directory::

    <dir>/index.json                 {"format": "routecal-shards/1", "n": N, "columns": {name:
                                      {"dtype", "shape"}}, "shards": [{"name", "n"}], "meta": {...}}
    <dir>/shard_00000/<column>.npy   one .npy per column, rows = tokens (or examples)

`ShardWriter` buffers appended rows and writes a shard whenever `shard_rows` rows have gathered,
so memory stays bounded by one shard whatever N is; each shard directory is written under a
temporary name and renamed into place, and `index.json` is written last (atomically), so a reader
never sees a half-written set. `ShardedColumns` is a read-only mapping: `cols[name]` memory-maps
that column's .npy files and concatenates them (only that column is read), `iter_shards()` yields
one shard's columns at a time.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

FORMAT = "routecal-shards/1"


class ShardWriter:
    """Appends row blocks (dicts of arrays with equal first dimension) and writes shards.

    Args:
      path: the output directory (created; must not already hold an index.json unless
        `overwrite`).
      shard_rows: rows per shard (the memory bound).
      meta: JSON-serialisable metadata stored in index.json.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        shard_rows: int = 1 << 18,
        meta: dict | None = None,
        overwrite: bool = True,
    ):
        if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
            raise ValueError(f"shard_rows: must be a positive integer, got {shard_rows!r}")
        self.path = pathlib.Path(path)
        if (self.path / "index.json").exists():
            if not overwrite:
                raise ValueError(f"path: {self.path} already holds sharded predictions")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.shard_rows = shard_rows
        self.meta = dict(meta or {})
        self.columns: dict[str, dict[str, Any]] | None = None
        self.buffer: dict[str, list[np.ndarray]] = {}
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []

    def append(self, rows: Mapping[str, np.ndarray]) -> None:
        """Adds a block of rows; every column must have the same leading length and keep its
        dtype and trailing shape from block to block."""
        arrs = {k: np.asarray(v) for k, v in rows.items()}
        lens = {a.shape[0] if a.ndim else -1 for a in arrs.values()}
        if len(lens) != 1 or -1 in lens:
            raise ValueError(f"rows: columns need one common leading length, got {sorted(lens)}")
        spec = {k: {"dtype": a.dtype.str, "shape": list(a.shape[1:])} for k, a in arrs.items()}
        if self.columns is None:
            self.columns = spec
            self.buffer = {k: [] for k in spec}
        elif spec != self.columns:
            raise ValueError(f"rows: columns changed from {self.columns} to {spec}")
        n = lens.pop()
        start = 0
        while start < n:
            take = min(n - start, self.shard_rows - self.buffered)
            for k, a in arrs.items():
                self.buffer[k].append(a[start : start + take])
            self.buffered += take
            start += take
            if self.buffered == self.shard_rows:
                self._flush()

    def _flush(self) -> None:
        if not self.buffered:
            return
        name = f"shard_{len(self.shards):05d}"
        tmp = self.path / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        for k, parts in self.buffer.items():
            np.save(tmp / f"{k}.npy", np.concatenate(parts))
        os.replace(tmp, self.path / name)
        self.shards.append({"name": name, "n": self.buffered})
        self.buffer = {k: [] for k in self.buffer}
        self.buffered = 0

    def close(self) -> pathlib.Path:
        """Writes the last shard and index.json; returns the directory."""
        self._flush()
        index = {
            "format": FORMAT,
            "n": int(sum(s["n"] for s in self.shards)),
            "columns": self.columns or {},
            "shards": self.shards,
            "meta": self.meta,
        }
        tmp = self.path / ".index.json.tmp"
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, self.path / "index.json")
        return self.path


class ShardedColumns(Mapping):
    """Read-only lazy mapping over a sharded directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        index_path = self.path / "index.json"
        if not index_path.is_file():
            raise ValueError(f"path: no index.json in {str(self.path)!r} (not sharded predictions)")
        try:
            self.index = json.loads(index_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"path: {index_path} is not valid JSON ({e})") from e
        if self.index.get("format") != FORMAT:
            raise ValueError(f"path: {index_path} has format {self.index.get('format')!r}")
        for s in self.index["shards"]:
            if not (self.path / s["name"]).is_dir():
                raise ValueError(f"path: shard {s['name']} listed in {index_path} is missing")
        self._cache: dict[str, np.ndarray] = {}

    @property
    def meta(self) -> dict:
        return self.index.get("meta", {})

    def __len__(self) -> int:
        return len(self.index["columns"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.index["columns"])

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.index["columns"]:
            raise KeyError(key)
        if key not in self._cache:
            parts = [self._column(s["name"], key) for s in self.index["shards"]]
            spec = self.index["columns"][key]
            empty = np.zeros((0, *spec["shape"]), np.dtype(spec["dtype"]))
            self._cache[key] = np.concatenate(parts) if parts else empty
        return self._cache[key]

    def _column(self, shard: str, key: str) -> np.ndarray:
        return np.load(self.path / shard / f"{key}.npy", mmap_mode="r", allow_pickle=False)

    @property
    def n_rows(self) -> int:
        return int(self.index["n"])

    def iter_shards(self, keys: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yields one shard at a time as {column: memory-mapped array} (bounded memory)."""
        keys = list(self.index["columns"]) if keys is None else keys
        for s in self.index["shards"]:
            yield {k: self._column(s["name"], k) for k in keys}
