"""Documents -> fixed-length packed LM sequences (pure numpy).

Each document becomes [BOS, tokens..., EOS]; the documents are concatenated in order into one
stream, which is cut into rows of T + 1 tokens with stride T, so row i holds stream[iT : iT + T + 1]:
inputs row[:-1], targets row[1:], and every stream token after the first is a target exactly once.
The last row is right-padded with PAD (targets equal to PAD are masked out of losses and metrics).

`document_ids` gives the same layout of document indices: entry [i, j] is the index (in `docs`
order) of the document that token row[i, j] belongs to (BOS and EOS belong to their document), -1
on PAD. A row that spans two documents therefore has both ids, token by token: a token record's
document is the document of its *target* token (so the record predicting document k + 1's BOS
from document k's EOS belongs to k + 1).

Letters: N sequences, T tokens per sequence (the model's input length).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def storage_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (the byte tokenizer), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def pack_documents(
    docs: Iterable[np.ndarray], seq_len: int, *, bos: int, eos: int, pad: int, vocab_size: int
) -> np.ndarray:
    """Packs tokenised documents into rows [N, seq_len + 1] (see the module docstring).

    Args:
      docs: 1-D integer token arrays (one per document; empty documents still give BOS, EOS).
      seq_len: T >= 1.
      bos, eos, pad: special ids; vocab_size: ids must lie in [0, vocab_size).

    Returns:
      [N, T + 1] array of dtype `storage_dtype(vocab_size)`, N = ceil((len(stream) - 1) / T).

    Raises:
      ValueError: seq_len < 1, ids out of the vocabulary, or no document at all.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer) or seq_len < 1:
        raise ValueError(f"data.seq_len: must be a positive integer, got {seq_len!r}")
    dt = storage_dtype(vocab_size)
    parts = []
    for i, d in enumerate(docs):
        d = np.asarray(d)
        if d.ndim != 1 or (d.size and not np.issubdtype(d.dtype, np.integer)):
            raise ValueError(f"docs[{i}]: expected a 1-D integer array, got shape {d.shape}")
        if d.size and (d.min() < 0 or d.max() >= vocab_size):
            bad = int(d.min()) if d.min() < 0 else int(d.max())
            raise ValueError(f"docs[{i}]: token id {bad} out of the vocabulary [0, {vocab_size})")
        parts += [np.array([bos], dt), d.astype(dt), np.array([eos], dt)]
    if not parts:
        raise ValueError("docs: the corpus is empty (no document to pack)")
    return _cut(np.concatenate(parts), seq_len, pad)


def document_ids(lengths: Iterable[int], seq_len: int) -> np.ndarray:
    """Document index of every packed token: [N, T + 1] int32, -1 on PAD (module docstring).

    Args:
      lengths: each document's token count (without BOS/EOS), in packing order.
      seq_len: T >= 1, as given to `pack_documents`.
    Returns:
      [N, T + 1] int32 aligned with `pack_documents`' rows for the same documents.
    Raises:
      ValueError: seq_len < 1, a negative length, or no document.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer) or seq_len < 1:
        raise ValueError(f"data.seq_len: must be a positive integer, got {seq_len!r}")
    n_tok = np.asarray(list(lengths), np.int64).reshape(-1)
    if n_tok.size == 0:
        raise ValueError("docs: the corpus is empty (no document to pack)")
    if np.any(n_tok < 0):
        raise ValueError(f"lengths: must be >= 0, got {int(n_tok.min())}")
    stream = np.repeat(np.arange(len(n_tok), dtype=np.int32), n_tok + 2)  # + BOS and EOS
    return _cut(stream, seq_len, -1)


def _cut(stream: np.ndarray, seq_len: int, pad: int) -> np.ndarray:
    """Rows [N, T + 1] of `stream` with stride T (row i = stream[iT : iT + T + 1]), PAD-filled."""
    n = -(-(len(stream) - 1) // seq_len)
    out = np.full((n, seq_len + 1), pad, stream.dtype)
    for i in range(n):
        chunk = stream[i * seq_len : i * seq_len + seq_len + 1]
        out[i, : len(chunk)] = chunk
    return out
