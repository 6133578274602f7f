"""Token-level predictions for the LM study: features, sequence-level thinning and shuffles, probes.

Shapes: N tokens, S routed sublayers, Q sequences.

Token predictions (`routecal.files.predictions.load` of the LM predict shards) hold per token at least
`confidence`, `correct`, `entropy`, `seq_id`, `position` and the routing summaries `H` / `H_norm` /
`depth_mean` / `depth_var` [N, S] (AttnRes models; S = 0 for the standard residual), and `doc_id`
(the document of each token, `routecal.training.token_predict`; predictions written before it
existed lack it). Tokens of one sequence are dependent, so everything here works on whole sequences;
rows of one document share its style and difficulty, so the diagnostics' clusters are documents by
default (`cluster_ids`, `CLUSTER_UNITS`):

  * `routing_table`: the paper's scalar routing summaries (`predictions.routing_features`) plus the
    position-aware ones: `<f>_vs_seq` = the token's summary minus its sequence's mean of it (how
    the token's routing departs from the sequence it sits in).
  * `thin_sequences`: keep whole sequences (seeded) until `max_tokens`, so a cluster is never cut.
  * `shuffle_across_sequences`: each token takes the routing profile of the token at the same
    rank in another sequence (a seeded cyclic derangement of sequences), the control that breaks
    the sequence <-> correctness link while keeping within-sequence routing structure.
  * `probe_data`: a `routecal.probes.ProbeData` from token arrays (no [N, V] probabilities needed).
  * `cluster_ids`, `cluster_sizes`: the independent units of the tests ("document": `doc_id`;
    "row": `seq_id`, the packed row) and their number Q and effective number (sum n)^2 / sum n^2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal import _checks
from routecal.files.predictions import ROUTER_SUMMARIES, routing_features
from routecal.probes.data import PROFILE, ProbeData

POSITION_AWARE = ("H_mean", "depth_var_mean", "depth_mean_mean")  # get a `<f>_vs_seq` twin
TOKEN_KEYS = ("confidence", "correct", "entropy", "seq_id", "position")
ID_KEYS = ("seq_id", "doc_id")  # integer ids >= 0, validated alike; doc_id optional
CLUSTER_UNITS = {"document": "doc_id", "row": "seq_id"}  # diagnostics.cluster_unit -> id column


def _check_ids(x: Any, name: str) -> np.ndarray:
    """[N] int64 ids from integer-valued, non-negative values (a ValueError naming `name`)."""
    a = np.asarray(x).reshape(-1)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(
            a.dtype, np.floating)):
        raise ValueError(f"{name}: expected integer ids, got dtype {a.dtype}")
    if a.size and (not np.all(np.isfinite(a)) or np.any(a != np.round(a)) or a.min() < 0):
        raise ValueError(f"{name}: expected integer ids >= 0 (finite, whole numbers)")
    return a.astype(np.int64)


def cluster_ids(tokens: Mapping[str, np.ndarray], unit: str, name: str = "predictions"
                ) -> np.ndarray:
    """[N] cluster ids of the tokens for `unit` ("document" -> `doc_id`, "row" -> `seq_id`).

    Raises:
      ValueError: an unknown unit (naming `diagnostics.cluster_unit`), or "document" on token
        predictions without `doc_id` (written before routecal tracked documents: re-run
        `routecal predict --workdir RUN` on the run, or choose `diagnostics.cluster_unit=row`).
    """
    if unit not in CLUSTER_UNITS:
        raise ValueError(f"diagnostics.cluster_unit: unknown {unit!r}; expected one of "
                         f"{sorted(CLUSTER_UNITS)}")
    key = CLUSTER_UNITS[unit]
    if key not in tokens:
        raise ValueError(
            f"{name}: token predictions have no {key!r} column, needed for "
            f"diagnostics.cluster_unit={unit!r} (predictions written before routecal tracked "
            "documents): re-run `routecal predict --workdir RUN` on that run, or set "
            "diagnostics.cluster_unit=row")
    return np.asarray(tokens[key], np.int64)


def cluster_sizes(clusters_N: np.ndarray) -> dict[str, float]:
    """Number of clusters Q and their effective number (sum_q n_q)^2 / sum_q n_q^2 (Kish's
    effective sample size of cluster sizes n_q: Q when balanced, near 1 when one dominates)."""
    dense, q = _dense_ids(np.asarray(clusters_N))
    n = np.bincount(dense, minlength=q).astype(np.float64)
    return {"n_clusters": int(q),
            "n_eff_clusters": float(n.sum() ** 2 / np.sum(n**2)) if q else 0.0}


def _dense_ids(seq_id: np.ndarray) -> tuple[np.ndarray, int]:
    """Sequence ids [N] -> (dense ids in [0, Q), Q)."""
    uniq, dense = np.unique(seq_id, return_inverse=True)
    return dense.reshape(-1), len(uniq)


def sequence_mean(values_N: np.ndarray, seq_id_N: np.ndarray) -> np.ndarray:
    """[N] mean of `values_N` over each token's sequence (float64, via bincount)."""
    dense, q = _dense_ids(seq_id_N)
    sums = np.bincount(dense, weights=np.asarray(values_N, np.float64), minlength=q)
    counts = np.bincount(dense, minlength=q)
    return (sums / counts)[dense]


def token_arrays(preds: Mapping[str, Any], name: str = "predictions") -> dict[str, np.ndarray]:
    """The per-token arrays of a token predictions mapping, read once and validated.

    Returns:
      {confidence [N] float64, correct [N] float64, entropy [N] float64, seq_id [N] int64,
       position [N] int64, doc_id [N] int64 (when present)} plus the routing summaries [N, S]
       present (H, H_norm, depth_mean, depth_var; MoE router summaries [N, M]) and any
       routing_<name> [N].
    Raises:
      ValueError: a missing key (named), ids that are not integers >= 0, or arrays of different
        lengths.
    """
    missing = [k for k in TOKEN_KEYS if k not in preds]
    if missing:
        raise ValueError(f"{name}: token predictions lack {missing} (have {sorted(preds)})")
    out = {
        "confidence": _checks.check_unit_interval(
            _checks.as_array(preds["confidence"], f"{name}['confidence']", ndim=1),
            f"{name}['confidence']"),
        "correct": _checks.check_binary(preds["correct"], f"{name}['correct']"),
        "entropy": _checks.as_array(preds["entropy"], f"{name}['entropy']", ndim=1),
        "position": np.asarray(preds["position"], np.int64).reshape(-1),
    }
    for k in ID_KEYS:
        if k in preds:
            out[k] = _check_ids(preds[k], f"{name}[{k!r}]")
    for k in ("H", "H_norm", "depth_mean", "depth_var", *ROUTER_SUMMARIES):
        if k in preds and np.size(preds[k]):
            out[k] = _checks.as_array(preds[k], f"{name}[{k!r}]", ndim=2)
    for k in preds:
        if k.startswith("routing_"):
            out[k] = _checks.as_array(preds[k], f"{name}[{k!r}]", ndim=1)
    _checks.check_same_length(**{f"{name}[{k!r}]": v for k, v in out.items()})
    return out


def routing_table(tokens: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scalar routing summaries [N]: the paper's (`predictions.routing_features`) and, for each of
    `POSITION_AWARE` present, `<f>_vs_seq` = f minus its sequence mean. Empty for a standard
    model."""
    feats = routing_features(tokens)
    for f in POSITION_AWARE:
        if f in feats:
            feats[f"{f}_vs_seq"] = feats[f] - sequence_mean(feats[f], tokens["seq_id"])
    return feats


def per_token(tokens: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The [N, ...] arrays of `tokens` (N = number of tokens, from `seq_id`), without per-file
    extras such as the depth-attention means."""
    n = len(tokens["seq_id"])
    return {k: np.asarray(v) for k, v in tokens.items() if np.ndim(v) >= 1 and len(v) == n}


def subset(tokens: Mapping[str, Any], index: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-token array of `tokens` at `index` (per-file extras dropped)."""
    return {k: v[index] for k, v in per_token(tokens).items()}


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
    dense, q = _dense_ids(seq_id_N)
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
    dense, q = _dense_ids(seq_id_N)
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


def probe_data(tokens: Mapping[str, np.ndarray], *, shuffle_seed: int | None = None) -> ProbeData:
    """ProbeData over tokens: confidence, correct, predictive entropy, scalar routing summaries
    (`routing_table`) and the per-sublayer profile `H` (normalised entropy when present).

    Args:
      shuffle_seed: if set, the profile is shuffled across sequences (`shuffle_across_sequences`).
    """
    routing = routing_table(tokens)
    prof = tokens.get("H_norm", tokens.get("H"))
    if prof is not None and np.ndim(prof) == 2 and np.shape(prof)[1] > 0:
        if shuffle_seed is not None:
            prof = shuffle_across_sequences(prof, tokens["seq_id"], tokens["position"],
                                            seed=shuffle_seed)
        routing[PROFILE] = np.asarray(prof, np.float64)
    return ProbeData(tokens["confidence"], tokens["correct"], tokens["entropy"], routing)


def concat_tokens(parts: Sequence[Mapping[str, np.ndarray]], *, offset_ids: bool = True
                  ) -> dict[str, np.ndarray]:
    """Concatenates token dicts (keys common to all); sequence and document ids are offset per
    part so that sequences (documents) from different parts never share an id."""
    parts = [per_token(p) for p in parts]
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    out = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    for key in ID_KEYS if offset_ids else ():
        if key not in out:
            continue
        ids, base = [], 0
        for p in parts:
            s = np.asarray(p[key], np.int64)
            ids.append(s - (s.min() if s.size else 0) + base)
            base = int(ids[-1].max()) + 1 if s.size else base
        out[key] = np.concatenate(ids)
    return out
