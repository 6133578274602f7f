"""The one predictions schema: load, validate, derive confidence/correct and routing features.

Every stage after `predict` reads predictions through this module, whatever model made them.

Predictions files (`.npz`):

    probs      [N, C] float   predicted class probabilities (rows sum to 1)
    labels     [N]    int     true labels in [0, C)
    H          [N, S] float   per-sublayer routing entropy (natural log)          (optional)
    H_norm     [N, S] float   H / log(number of sources)                          (optional)
    depth_mean [N, S] float   routing depth D_l = sum_i i alpha_i                 (optional)
    depth_var  [N, S] float   routing-depth variance V_l = sum_i alpha_i (i-D_l)^2 (optional)
    routing_<name> [N] float  any other per-example routing scalar                (optional)

Token-level predictions of language models (`routecal.training.token_predict`) are a sharded directory
(`routecal.files.shards`: index.json + shard_*/<column>.npy) with one row per token: confidence,
correct, entropy, label, seq_id, position, domain, nll and the routing columns.

`load(path)` reads either kind and returns one mapping with at least `confidence`, `correct` and
`label` (and, for tokens, `entropy`, `seq_id`, `position`, `domain` and the routing summaries);
for shards the mapping is lazy (a column is read when first accessed).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal import _checks
from routecal.files import workdir
from routecal.stats import sequences

_PER_SUBLAYER = ("H", "H_norm", "depth_mean", "depth_var")


def load_predictions(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Loads and validates a predictions `.npz` (keys in the module docstring).

    Raises:
      ValueError: naming the file: missing, not an npz (a `.npy`, text, pickle), truncated or
        corrupt (bad zip, bad CRC), a required array missing, or an array failing its check.
    """
    p = pathlib.Path(path)
    d = workdir.load_npz(p, "predictions")
    for k in ("probs", "labels"):
        if k not in d:
            raise ValueError(f"predictions: {str(p)!r} has no {k!r} array (has {sorted(d)})")
    try:
        probs = _checks.check_probs(d["probs"], "probs")
        labels = _checks.check_labels(d["labels"], probs.shape[1], "labels")
        _checks.check_same_length(probs=probs, labels=labels)
        _check_routing(d, len(labels))
    except ValueError as e:
        raise ValueError(f"predictions: {str(p)!r}: {e}") from e
    d["probs"], d["labels"] = probs, labels
    return d


def _check_routing(d: Mapping[str, np.ndarray], n: int) -> None:
    """Per-sublayer summaries [N, S] and `routing_<name>` [N]: finite, N rows (ValueError naming
    the array; callers add the file)."""
    for k, v in d.items():
        if k in _PER_SUBLAYER and np.size(v):
            _checks.check_same_length(rows=np.zeros(n), **{k: _checks.as_array(v, k, ndim=2)})
        elif k.startswith("routing_"):
            _checks.check_same_length(rows=np.zeros(n), **{k: _checks.as_array(v, k, ndim=1)})


CLUSTER_KEYS = ("doc_id", "seq_id")  # the cluster column, first present wins


def load_traces(path: str | pathlib.Path) -> dict[str, Any]:
    """Confidence, correctness, routing and clusters of any traces file, for `routecal diagnose`.

    Reads a token-shard directory (`shards`), a predictions npz (probs, labels: the schema above)
    or any npz of per-token or per-example columns: `confidence` [N] in [0, 1], `correct` [N]
    0/1, routing as in the schema (H / H_norm / depth_mean / depth_var [N, S], `routing_<name>`
    [N]) and optionally `doc_id` / `seq_id` [N] integer cluster ids (`doc_id` is preferred:
    dependent rows share a document).

    Returns:
      {"confidence" [N] float64, "correct" [N] float64, "routing": the routing arrays (checked;
      with `seq_id` when present; `routing_features` of it gives the features), "clusters" [N] int64 or None, "cluster_key": the column used or None,
      "predictions": the validated predictions dict when the file has probs and labels, else
      None}.
    Raises:
      ValueError: one line naming the file: unreadable, no confidence/correct (nor probs/labels),
        values out of range, NaN/inf in any column, or columns of different lengths.
    """
    p = pathlib.Path(path)
    if p.is_dir():
        cols: Mapping[str, Any] = load(p)  # ShardedColumns: the index is checked on open
    else:
        cols = workdir.load_npz(p, "predictions")
        if "probs" in cols and "labels" in cols:
            preds = load_predictions(p)
            conf, correct = confidence_correct(preds)
            return {"confidence": conf, "correct": correct, "routing": preds, "clusters": None,
                    "cluster_key": None, "predictions": preds}
    if "confidence" not in cols or "correct" not in cols:
        raise ValueError(f"predictions: {str(p)!r} has neither confidence and correct nor probs "
                         f"and labels (has {sorted(cols)})")
    try:
        conf = _checks.check_unit_interval(
            _checks.as_array(cols["confidence"], "confidence", ndim=1), "confidence")
        correct = _checks.check_binary(np.asarray(cols["correct"]), "correct")
        _checks.check_same_length(confidence=conf, correct=correct)
        _check_routing({k: cols[k] for k in cols}, len(conf))
        key = next((k for k in CLUSTER_KEYS if k in cols), None)
        clusters = None
        if key is not None:
            ids = np.asarray(cols[key])
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"{key}: expected [N] integer ids, got {ids.dtype} {ids.shape}")
            _checks.check_same_length(confidence=conf, **{key: ids})
            clusters = ids.astype(np.int64)
        routing = {k: np.asarray(cols[k]) for k in cols
                   if k in _PER_SUBLAYER or k.startswith("routing_")}
        if "seq_id" in cols:
            routing["seq_id"] = _checks.as_array(cols["seq_id"], "seq_id", ndim=1, dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"predictions: {str(p)!r}: {e}") from e
    return {"confidence": conf, "correct": np.asarray(correct, np.float64), "routing": routing,
            "clusters": clusters, "cluster_key": key, "predictions": None}


def load(path: str | pathlib.Path) -> Mapping[str, np.ndarray]:
    """Predictions at `path` as a mapping of arrays: a sharded directory (lazy, token-level) or a
    per-example `.npz` (validated by `load_predictions`, plus `confidence`, `correct`, `label`).

    Raises:
      ValueError: missing path, a directory without index.json, or an invalid npz (named).
    """
    from routecal.files import shards

    p = pathlib.Path(path)
    if p.is_dir():
        return shards.ShardedColumns(p)
    d = load_predictions(p)
    conf, correct = confidence_correct(d)
    d.update(confidence=conf, correct=correct.astype(bool), label=d["labels"])
    return d


POSITION_AWARE = ("H_mean", "depth_var_mean", "depth_mean_mean")  # get a `<f>_vs_seq` twin
# Per-token MoE router summaries [N, M] (one column per MoE layer) written by `token_predict`.
ROUTER_SUMMARIES = ("router_entropy_norm", "top1_margin", "router_logit_spread")


def routing_features(preds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-example routing scalars [N] from a predictions dict.

    From per-sublayer summaries [N, S] (S >= 1): `H_mean` (mean normalised entropy over sublayers),
    `depth_var_mean`, `depth_mean_mean`, and two single sublayers: `H_mid` (sublayer S // 2) and
    `H_last` (the last sublayer, the depth-aggregating readout for AttnRes models). Sublayers whose
    entropy is constant (a single source) are skipped when picking single layers. From the MoE
    router summaries [N, M] of `ROUTER_SUMMARIES` (`token_predict`): `<k>_mean` over the M MoE
    layers and `<k>_l<m>` for MoE layer m (e.g. `router_entropy_norm_mean`, `top1_margin_l0`).
    Plus every `routing_<name>` array in the file, as `<name>`. Tokens (with `seq_id`): for
    each of `POSITION_AWARE` present, `<f>_vs_seq` = f minus its sequence mean (how the token's
    routing departs from the sequence it sits in).
    """
    out: dict[str, np.ndarray] = {}
    H = preds.get("H_norm", preds.get("H"))
    if H is not None and np.asarray(H).size:
        H = np.asarray(H, np.float64)
        out["H_mean"] = H.mean(axis=1)
        varying = [j for j in range(H.shape[1]) if np.ptp(H[:, j]) > 0]
        if varying:
            out["H_mid"] = H[:, varying[len(varying) // 2]]
            out["H_last"] = H[:, varying[-1]]
    for k in ("depth_var", "depth_mean"):
        v = preds.get(k)
        if v is not None and np.asarray(v).size:
            out[f"{k}_mean"] = np.asarray(v, np.float64).mean(axis=1)
    for k in ROUTER_SUMMARIES:  # MoE router summaries [N, M]: mean over layers, and per layer
        v = preds.get(k)
        if v is not None and np.asarray(v).size:
            v = np.asarray(v, np.float64)
            out[f"{k}_mean"] = v.mean(axis=1)
            for m in range(v.shape[1]):
                out[f"{k}_l{m}"] = v[:, m]
    for k, v in preds.items():
        if k.startswith("routing_"):
            out[k[len("routing_"):]] = _checks.as_array(v, k, ndim=1)
    if "seq_id" in preds:  # tokens: the departure from the sequence's mean
        for f in POSITION_AWARE:
            if f in out:
                out[f"{f}_vs_seq"] = out[f] - sequences.sequence_mean(out[f], preds["seq_id"])
    return out


def confidence_correct(preds: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(preds["probs"], np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(preds["labels"])).astype(np.float64)
    return conf, correct


def concat_predictions(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenates predictions dicts along examples (keys present in every part with N rows)."""
    n = [len(p["labels"]) for p in parts]
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    out = {}
    for k in keys:
        arrs = [np.asarray(p[k]) for p in parts]
        if all(a.ndim >= 1 and a.shape[0] == m for a, m in zip(arrs, n, strict=True)):
            out[k] = np.concatenate(arrs, axis=0)
        else:
            out[k] = arrs[0]
    return out


def check_compatible(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], names: tuple[str, str]
) -> None:
    """Raises ValueError unless two predictions dicts (e.g. calib and test) can be compared.

    They must have the same number of classes C (probs [N, C]) and the same routing arrays: the
    same per-sublayer summaries with the same number of sublayers S, and the same `routing_<name>`
    arrays. `names` names the two in the message (e.g. file paths).
    """
    ca, cb = np.shape(a["probs"])[1], np.shape(b["probs"])[1]
    if ca != cb:
        raise ValueError(
            f"predictions: {names[0]} has {ca} classes but {names[1]} has {cb}; calibration and "
            "test predictions must come from the same task"
        )

    def routing(p: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        return {k: tuple(np.shape(v)[1:]) for k, v in p.items()
                if (k in _PER_SUBLAYER and np.size(v)) or k.startswith("routing_")}

    ra, rb = routing(a), routing(b)
    if ra != rb:
        diff = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
        detail = ", ".join(f"{k}: {ra.get(k, 'missing')} vs {rb.get(k, 'missing')}" for k in diff)
        raise ValueError(
            f"predictions: {names[0]} and {names[1]} have different routing arrays ({detail}; "
            "per-example shapes after N); they must come from the same model"
        )


def constant_features(features: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the routing features [N] that do not vary over the examples (or are not finite).

    Such a feature can neither split a confidence bin nor feed a kernel probe; callers skip it with
    a note (`routing_predictions` keeps the rest).
    """
    return sorted(
        k for k, v in features.items()
        if not (np.all(np.isfinite(v)) and np.ptp(np.asarray(v, np.float64)) > 0)
    )


def routing_predictions(
    preds: Mapping[str, np.ndarray], features: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """probs and labels of `preds` with `features` as `routing_<name>` arrays (and nothing else).

    `routing_features` of the result returns exactly `features`, under the same names.
    """
    return {"probs": preds["probs"], "labels": preds["labels"],
            **{f"routing_{k}": np.asarray(v) for k, v in features.items()}}


# ----- token predictions: per-token arrays with sequence and document ids -------------------------
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


def per_token(tokens: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The [N, ...] arrays of `tokens` (N = number of tokens, from `seq_id`), without per-file
    extras such as the depth-attention means."""
    n = len(tokens["seq_id"])
    return {k: np.asarray(v) for k, v in tokens.items() if np.ndim(v) >= 1 and len(v) == n}


def subset(tokens: Mapping[str, Any], index: np.ndarray) -> dict[str, np.ndarray]:
    """Every per-token array of `tokens` at `index` (per-file extras dropped)."""
    return {k: v[index] for k, v in per_token(tokens).items()}


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
