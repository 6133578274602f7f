"""Tokenizers for the LM data: raw bytes (256 + BOS/EOS/PAD) or a user's `tokenizer.json`.

Both share one interface: `encode(data: bytes) -> int32 ids`, `decode(ids) -> bytes`,
`vocab_size`, and the special ids `bos`, `eos`, `pad` (appended after the base vocabulary, so a
base id is never reinterpreted). `ByteTokenizer` round-trips arbitrary bytes exactly.
`HFTokenizer` wraps the Hugging Face `tokenizers` package (Rust; nothing is downloaded) and decodes
the bytes as UTF-8 with replacement before encoding.
"""

from __future__ import annotations

import os
import pathlib
from typing import Protocol

import numpy as np


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos: int
    eos: int
    pad: int

    def encode(self, data: bytes) -> np.ndarray: ...

    def decode(self, ids: np.ndarray) -> bytes: ...


def _check_ids(ids: np.ndarray, vocab_size: int, name: str = "ids") -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected a 1-D integer array, got {a.dtype} shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() >= vocab_size):
        bad = int(a.min()) if a.min() < 0 else int(a.max())
        raise ValueError(f"{name}: token id {bad} out of the vocabulary [0, {vocab_size})")
    return a


class ByteTokenizer:
    """Bytes 0..255 are ids 0..255; BOS = 256, EOS = 257, PAD = 258 (vocab_size 259)."""

    name = "bytes"
    vocab_size = 259
    bos, eos, pad = 256, 257, 258

    def encode(self, data: bytes) -> np.ndarray:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError(f"data: expected bytes, got {type(data).__name__}")
        return np.frombuffer(bytes(data), np.uint8).astype(np.int32)

    def decode(self, ids: np.ndarray) -> bytes:
        """Bytes of the ids < 256 (special ids are skipped); raises on ids out of vocabulary."""
        a = _check_ids(ids, self.vocab_size)
        return a[a < 256].astype(np.uint8).tobytes()

    def n_bytes(self, ids: np.ndarray) -> int:
        """Number of text bytes the ids stand for."""
        return int(np.sum(np.asarray(ids) < 256))


class HFTokenizer:
    """A `tokenizer.json` (Hugging Face `tokenizers`), plus BOS/EOS/PAD ids after its vocabulary."""

    def __init__(self, path: str | os.PathLike):
        p = pathlib.Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"data.tokenizer: no tokenizer.json at {str(p)!r}")
        from tokenizers import Tokenizer as _Tok

        try:
            self._tok = _Tok.from_file(os.fspath(p))
        except Exception as e:  # the Rust side raises plain Exceptions
            raise ValueError(
                f"data.tokenizer: cannot read {str(p)!r} as tokenizer.json ({e})"
            ) from e
        base = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.name = f"tokenizer.json:{p}"
        self.bos, self.eos, self.pad = base, base + 1, base + 2
        self.vocab_size = base + 3

    def encode(self, data: bytes) -> np.ndarray:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError(f"data: expected bytes, got {type(data).__name__}")
        text = bytes(data).decode("utf-8", errors="replace")
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids: np.ndarray) -> bytes:
        a = _check_ids(ids, self.vocab_size)
        return self._tok.decode([int(i) for i in a if i < self.bos]).encode("utf-8")


def load_tokenizer(spec: str | None) -> ByteTokenizer | HFTokenizer:
    """ "bytes" (or None) -> `ByteTokenizer`; a path to a tokenizer.json (or a directory holding
    one) -> `HFTokenizer`.

    Raises:
      ValueError: naming data.tokenizer when the file is missing or unreadable.
    """
    if spec is None or spec == "bytes":
        return ByteTokenizer()
    if not isinstance(spec, str | os.PathLike):
        raise ValueError(f"data.tokenizer: expected 'bytes' or a path, got {spec!r}")
    p = pathlib.Path(spec).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    return HFTokenizer(p)
