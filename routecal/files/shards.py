"""Sharded column store for large prediction sets: stream rows to disk, read columns lazily.

Layout of a sharded predictions directory::

    <dir>/index.json                 {"format": "routecal-shards/2", "n": N, "columns": {name:
                                      {"dtype", "shape"}}, "shards": [{"name", "n"}],
                                      "fingerprint": {...} | null, "meta": {...}}
    <dir>/shard_00000/<column>.npy   one .npy per column, rows = tokens (or examples)

The index is the schema: each column's dtype (numpy `dtype.str`, or an ml_dtypes name such as
"bfloat16") and trailing shape, each shard's row count (they sum to N), and a `fingerprint` of the
run that wrote it (e.g. {"config_hash", "step", "split"}, `token_predict`), which a reader compares
with the run it expects (`check_fingerprint`).

`ShardWriter` buffers appended rows and writes a shard whenever `shard_rows` rows have gathered,
so memory stays bounded by one shard whatever N is; each shard directory is written under a
temporary name and renamed into place, and `index.json` is written last (atomically), so a reader
never sees a half-written set. `ShardedColumns` is a read-only mapping: `cols[name]` memory-maps
that column's .npy files and concatenates them (only that column is read), `iter_shards()` yields
one shard's columns at a time. Opening checks every column file against the index from its .npy
header (present, dtype, shape [shard rows, *trailing], file size), so a truncated, cut, reshaped or
foreign column is a one-line ValueError naming the file, never a raw numpy error or a silent
misalignment. The older "routecal-shards/1" index (no fingerprint) is still read. `join_parts` joins
sets written in parts (one per process of a multi-host job) into one.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from routecal.files import workdir as workdir_io

FORMAT = "routecal-shards/2"
READABLE = ("routecal-shards/1", FORMAT)


class ShardWriter:
    """Appends row blocks (dicts of arrays with equal first dimension) and writes shards.

    Args:
      path: the output directory (created; must not already hold an index.json unless
        `overwrite`).
      shard_rows: rows per shard (the memory bound).
      meta: JSON-serialisable metadata stored in index.json.
      fingerprint: JSON-serialisable identity of the producing run (config hash, checkpoint step,
        split), checked by readers with `check_fingerprint`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        shard_rows: int = 1 << 18,
        meta: dict | None = None,
        overwrite: bool = True,
        fingerprint: Mapping[str, Any] | None = None,
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
        self.fingerprint = None if fingerprint is None else dict(fingerprint)
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
        for k, a in arrs.items():
            if a.dtype.hasobject:
                raise ValueError(f"rows: column {k!r} holds Python objects; store numbers")
        spec = {k: {"dtype": dtype_name(a.dtype), "shape": list(a.shape[1:])}
                for k, a in arrs.items()}
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
            "fingerprint": self.fingerprint,
            "meta": self.meta,
        }
        workdir_io.write_json(self.path / "index.json", index, indent=1)
        return self.path


def join_parts(parts: list[pathlib.Path], path: str | os.PathLike) -> pathlib.Path:
    """Joins sharded directories written in parts (multi-host: one per process, in process order)
    into one at `path`, read as if one `ShardWriter` had written the parts' rows in order.

    The parts' shard directories are renamed into `path` (replaced if it holds sharded
    predictions) and numbered on, `index.json` is written last (the parts' meta and fingerprint,
    which must agree) and the emptied parts are removed. A part with no rows has no columns.

    Raises:
      ValueError: naming the part whose columns, meta or fingerprint differ from the first's.
    """
    path = pathlib.Path(path)
    indexes = [read_index(pathlib.Path(p) / "index.json") for p in parts]
    first = next((ix for ix in indexes if ix["n"]), indexes[0])
    for p, ix in zip(parts, indexes, strict=True):
        same = [ix[k] == first[k] for k in ("meta", "fingerprint")]
        if not all(same) or (ix["n"] and ix["columns"] != first["columns"]):
            raise ValueError(f"parts: {str(p)!r} differs from {str(parts[0])!r} in columns, meta "
                             "or fingerprint")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    shards = []
    for p, ix in zip(parts, indexes, strict=True):
        for s in ix["shards"]:
            name = f"shard_{len(shards):05d}"
            os.replace(pathlib.Path(p) / s["name"], path / name)
            shards.append({"name": name, "n": s["n"]})
    index = {**first, "n": int(sum(s["n"] for s in shards)), "shards": shards}
    workdir_io.write_json(path / "index.json", index, indent=1)
    for p in parts:
        shutil.rmtree(p)
    return path


class ShardedColumns(Mapping):
    """Read-only lazy mapping over a sharded directory (see the module docstring).

    Raises:
      ValueError: one line naming the file: no or unreadable index.json, an index of the wrong
        shape, or a column file missing, truncated or disagreeing with the index.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        index_path = self.path / "index.json"
        if not index_path.is_file():
            raise ValueError(f"path: no index.json in {str(self.path)!r} (not sharded predictions)")
        self.index = read_index(index_path)
        for s in self.index["shards"]:
            if not (self.path / s["name"]).is_dir():
                raise ValueError(f"path: shard {s['name']} listed in {index_path} is missing")
            for key, spec in self.index["columns"].items():
                check_column_file(self.path / s["name"] / f"{key}.npy", spec, s["n"])
        self._cache: dict[str, np.ndarray] = {}

    @property
    def fingerprint(self) -> dict[str, Any] | None:
        """The producing run's identity recorded by the writer (None for an older index)."""
        return self.index.get("fingerprint")

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
            empty = np.zeros((0, *spec["shape"]), parse_dtype(spec["dtype"]))
            self._cache[key] = np.concatenate(parts) if parts else empty
        return self._cache[key]

    def _column(self, shard: str, key: str) -> np.ndarray:
        path = self.path / shard / f"{key}.npy"
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:  # changed since opening
            raise ValueError(f"shards: {str(path)!r} cannot be read ({_one_line(e)})") from e
        want = parse_dtype(self.index["columns"][key]["dtype"])
        return arr.view(want) if arr.dtype != want else arr

    @property
    def n_rows(self) -> int:
        return int(self.index["n"])

    def iter_shards(self, keys: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yields one shard at a time as {column: memory-mapped array} (bounded memory)."""
        keys = list(self.index["columns"]) if keys is None else keys
        for s in self.index["shards"]:
            yield {k: self._column(s["name"], k) for k in keys}


# ----------------------------------------------------------------------------------------------
# The index and the column files, checked
# ----------------------------------------------------------------------------------------------


def dtype_name(dtype: np.dtype) -> str:
    """How index.json spells `dtype`: `dtype.str` ("<f4"), or the ml_dtypes name ("bfloat16"),
    since np.save stores those as raw void ("<V2")."""
    return dtype.name if dtype.kind == "V" and hasattr(ml_dtypes, dtype.name) else dtype.str


def parse_dtype(name: str) -> np.dtype:
    """Inverse of `dtype_name`; ValueError for anything that is not a plain numeric dtype."""
    try:
        dt = np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)
    except TypeError as e:
        raise ValueError(f"unknown dtype {name!r}") from e
    if dt.hasobject or dt.kind in "OSUM" or (dt.kind == "V" and not hasattr(ml_dtypes, dt.name)):
        raise ValueError(f"dtype {name!r} is not numeric")
    return dt


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_index(index_path: pathlib.Path) -> dict[str, Any]:
    """Parses and checks index.json: format, N, column specs, shards whose rows sum to N.

    Raises:
      ValueError: naming `index_path` (not UTF-8, not JSON, duplicate keys, or a field of the
        wrong type).
    """
    def bad(why: str) -> ValueError:
        return ValueError(f"shards: {str(index_path)!r} {why}")

    try:
        text = index_path.read_bytes().decode("utf-8")
        index = json.loads(text, object_pairs_hook=workdir_io.reject_duplicate_keys)
    except UnicodeDecodeError as e:
        raise bad(f"is not UTF-8 text ({_one_line(e)})") from e
    except ValueError as e:  # JSONDecodeError, duplicate keys
        raise bad(f"is not a valid index ({_one_line(e)})") from e
    except OSError as e:
        raise bad(f"cannot be read ({_one_line(e)})") from e
    if not isinstance(index, dict):
        raise bad(f"must hold a JSON object, got {type(index).__name__}")
    if index.get("format") not in READABLE:
        raise bad(f"has format {index.get('format')!r} (expected one of {READABLE})")
    cols, shard_list = index.get("columns"), index.get("shards")
    if not _is_count(index.get("n")):
        raise bad(f"has n = {index.get('n')!r}; expected a row count >= 0")
    if not isinstance(cols, dict):
        raise bad(f"has columns = {type(cols).__name__}; expected {{name: {{dtype, shape}}}}")
    for k, spec in cols.items():
        if pathlib.PurePath(k).name != k or k.startswith("."):
            raise bad(f"names a column {k!r} that is not a plain file name")
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not isinstance(shape, list) or not all(_is_count(x) for x in shape):
            raise bad(f"column {k!r}: spec {spec!r} needs a dtype and a shape list")
        try:
            parse_dtype(spec.get("dtype"))
        except (ValueError, TypeError) as e:
            raise bad(f"column {k!r}: {_one_line(e)}") from e
    if not isinstance(shard_list, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and _is_count(s.get("n"))
            and pathlib.PurePath(s["name"]).name == s["name"] for s in shard_list):
        raise bad("has shards that are not a list of {name, n} (n a row count)")
    total = sum(s["n"] for s in shard_list)
    if total != index["n"]:
        raise bad(f"says n = {index['n']} but its shards hold {total} rows")
    fp = index.get("fingerprint")
    if fp is not None and not isinstance(fp, dict):
        raise bad(f"has fingerprint {fp!r}; expected an object or null")
    return index


def check_column_file(path: pathlib.Path, spec: Mapping[str, Any], n: int) -> None:
    """Checks one column's .npy against its index spec from the header alone (no data read):
    present, not empty, a numpy file, dtype and shape [n, *spec shape], and as long as the header
    says (a truncated file is caught here, not as a short memory map later).

    Raises:
      ValueError: naming `path` and what disagrees.
    """
    want_dtype = parse_dtype(spec["dtype"])
    want_shape = (n, *spec["shape"])
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f, max_header_size=1 << 16)
            offset = f.tell()
    except FileNotFoundError as e:
        raise ValueError(f"shards: column file {str(path)!r} is missing (listed in index.json)"
                         ) from e
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        what = "is empty" if path.exists() and path.stat().st_size == 0 else "is not a .npy file"
        raise ValueError(f"shards: {str(path)!r} {what} ({_one_line(e)})") from e
    if dtype.hasobject:
        raise ValueError(f"shards: {str(path)!r} holds Python objects (dtype {dtype}); refused")
    if dtype != want_dtype and not (dtype.kind == "V" and dtype.itemsize == want_dtype.itemsize
                                    and want_dtype.kind == "V"):
        raise ValueError(f"shards: {str(path)!r} has dtype {dtype_name(dtype)} but index.json "
                         f"says {spec['dtype']}")
    if tuple(shape) != want_shape:
        raise ValueError(f"shards: {str(path)!r} has shape {list(shape)} but index.json says "
                         f"{list(want_shape)} (rows of this shard, then the column's shape)")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise ValueError(f"shards: {str(path)!r} is {size} bytes but its header needs {expected} "
                         f"({'truncated' if size < expected else 'trailing bytes'})")


def check_fingerprint(cols: ShardedColumns, expected: Mapping[str, Any] | None) -> None:
    """Raises unless the shards' fingerprint agrees with `expected` on every key it names.

    None expects nothing. An index without a fingerprint (written by an older routecal) cannot be
    checked and is refused when something is expected.

    Raises:
      ValueError: naming index.json and the differing fields.
    """
    if not expected:
        return
    index_path = cols.path / "index.json"
    got = cols.fingerprint
    if got is None:
        raise ValueError(f"shards: {str(index_path)!r} records no fingerprint of the run that "
                         f"wrote it (older routecal?); expected {dict(expected)}; predict again")
    diff = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: {a!r} (expected {b!r})" for k, (a, b) in diff.items())
        raise ValueError(f"shards: {str(index_path)!r} was written by another run ({detail})")
