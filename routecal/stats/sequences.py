"""Per-token arrays grouped in sequences (or documents): cluster counts, sequence means, thinning
by whole sequences and the across-sequence shuffle control. Pure numpy functions of arrays.

Shapes: N tokens, K values per token, Q sequences (clusters).

Tokens of one sequence are dependent, so everything here works on whole sequences:

  * `cluster_sizes`: the number of clusters Q and their effective number (sum n)^2 / sum n^2.
  * `sequence_mean`: each token's sequence mean of a value (the position-aware routing features).
  * `thin_sequences`: keep whole sequences (seeded) until `max_tokens`, so a cluster is never cut.
  * `shuffle_across_sequences`: each token takes the values of the token at the same rank in
    another sequence (a seeded cyclic derangement of sequences), the control that breaks the
    sequence <-> correctness link while keeping within-sequence structure.
"""

from __future__ import annotations

import numpy as np


def dense_ids(seq_id_N: np.ndarray) -> tuple[np.ndarray, int]:
    """Sequence ids [N] -> (dense ids in [0, Q), Q)."""
    uniq, dense = np.unique(seq_id_N, return_inverse=True)
    return dense.reshape(-1), len(uniq)


def cluster_sizes(clusters_N: np.ndarray) -> dict[str, float]:
    """Number of clusters Q and their effective number (sum_q n_q)^2 / sum_q n_q^2 (Kish's
    effective sample size of cluster sizes n_q: Q when balanced, near 1 when one dominates)."""
    dense, q = dense_ids(np.asarray(clusters_N))
    n = np.bincount(dense, minlength=q).astype(np.float64)
    return {"n_clusters": int(q),
            "n_eff_clusters": float(n.sum() ** 2 / np.sum(n**2)) if q else 0.0}


def sequence_mean(values_N: np.ndarray, seq_id_N: np.ndarray) -> np.ndarray:
    """[N] mean of `values_N` over each token's sequence (float64, via bincount)."""
    dense, q = dense_ids(seq_id_N)
    sums = np.bincount(dense, weights=np.asarray(values_N, np.float64), minlength=q)
    counts = np.bincount(dense, minlength=q)
    return (sums / counts)[dense]


def thin_sequences(seq_id_N: np.ndarray, max_tokens: int | None, *, seed: int) -> np.ndarray:
    """Sorted token indices of whole sequences, drawn in a seeded random order until adding the
    next would exceed `max_tokens` (all tokens when None or when N <= max_tokens).

    Raises:
      ValueError: `max_tokens` < 1, or no single sequence fits in it.
    """
    n = len(seq_id_N)
    if max_tokens is None or n <= max_tokens:
        return np.arange(n)
    if max_tokens < 1:
        raise ValueError(f"max_tokens: expected >= 1, got {max_tokens}")
    dense, q = dense_ids(seq_id_N)
    counts = np.bincount(dense, minlength=q)
    order = np.random.default_rng(seed).permutation(q)
    keep = order[np.cumsum(counts[order]) <= max_tokens]
    if keep.size == 0:
        raise ValueError(
            f"max_tokens: {max_tokens} is smaller than every sequence (shortest {counts.min()})"
        )
    return np.flatnonzero(np.isin(dense, keep))


def shuffle_across_sequences(
    values_NxK: np.ndarray, seq_id_N: np.ndarray, position_N: np.ndarray, *, seed: int
) -> np.ndarray:
    """`values_NxK` with each token's row replaced by the row of the token at the same rank (by
    position) in another sequence: sequences are mapped by a seeded cyclic derangement (no sequence
    keeps its own), ranks wrap modulo the target sequence's length.

    Args:
      values_NxK: [N] or [N, K] per-token values (a routing profile).
      seq_id_N, position_N: [N] sequence id and position of each token.
    Raises:
      ValueError: fewer than two sequences (nothing to shuffle across).
    """
    v = np.asarray(values_NxK)
    dense, q = dense_ids(seq_id_N)
    if q < 2:
        raise ValueError("seq_id: shuffling across sequences needs at least two sequences")
    order = np.lexsort((np.asarray(position_N), dense))  # tokens sorted by (sequence, position)
    counts = np.bincount(dense, minlength=q)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(dense), np.int64)
    rank[order] = np.arange(len(dense)) - starts[dense[order]]
    cycle = np.random.default_rng(seed).permutation(q)
    target = np.empty(q, np.int64)
    target[cycle] = np.roll(cycle, -1)  # sequence cycle[i] borrows from cycle[i + 1]
    t = target[dense]
    source = order[starts[t] + rank % counts[t]]
    return v[source]
