"""Temperature scaling in the LM study: T fitted on the probes' calib tokens, scored per domain.

Shapes: N tokens, R packed rows, T positions per row, V vocabulary.

Token predictions (`routecal.training.token_predict`) keep per-token summaries, not the [N, V] logits that
temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 9) needs,
and storing 259 logits per token for every split and model is too much disk. So this stage
reloads the trained decoder (`routecal.training.train.load_trained`) and recomputes the logits of exactly
the tokens the other probes use (`token_stages.probe_selection` of the stored predictions):

  * the rows are the tokens' `seq_id` (row index of the packed split, as `predict_split` writes
    it) and each token's logits are read at its stored `position`; its label is
    `ids[seq_id, position + 1]` (`predict_split`'s target). Only the rows holding selected tokens
    are run, in fixed batches of `BATCH_ROWS` (PAD-filled: one compile), so the thinning
    (`predict.every`, `min_position`, `max_tokens`) is the one the shards recorded, not re-derived;
  * the calib tokens' logits [N_cal, V] are kept in memory and T is fitted by
    `probes.scaling.temperature_fit` (multiclass NLL over log T); each domain's test tokens are
    streamed and only their scaled confidence max_v softmax(z / T)_v is kept;
  * each domain gets the metrics row of every other probe (`compare.probe_metrics`: ECE, binary
    NLL of correctness given the confidence, Brier, worst-routing-tertile ECE), plus T and the
    token NLL -log softmax(z / T)_label (the multiclass quantity T minimises, for reference).

At T = 1 the recomputed confidence must equal the stored one (a decoder or dataset that no longer
matches its predictions raises ValueError rather than scoring other tokens).
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from flax import nnx

from routecal.probes import compare
from routecal.probes.scaling import TemperatureParams, temperature_apply, temperature_fit
from routecal.stats import calibration
from routecal.study import token_stages, tokens
from routecal.study.plan import TokenPlan

BATCH_ROWS = 32  # packed rows per forward pass (fixed: one compile per model)
CONFIDENCE_TOLERANCE = 1e-3  # |recomputed - stored| confidence at T = 1 before refusing


@nnx.jit
def _logits(model: nnx.Module, inputs_BxT: jax.Array) -> jax.Array:
    """[B, T, V] float32 next-token logits of one batch of packed rows (inputs only)."""
    return model(inputs_BxT.astype(jnp.int32)).logits.astype(jnp.float32)


def has_trained_model(run_dir: str | pathlib.Path) -> bool:
    """True when `run_dir` holds a training run (config.json and checkpoints); a stand-in
    producer's run directory (tests) has none, and the stage is then not run."""
    d = pathlib.Path(run_dir)
    return (d / "config.json").exists() and (d / "checkpoints").is_dir()


def token_logits(
    model: nnx.Module, ids_RxT1: np.ndarray, seq_id_N: np.ndarray, position_N: np.ndarray, *,
    pad: int, name: str = "tokens", batch_rows: int = BATCH_ROWS,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The logits of the given tokens, streamed batch by batch (memory: one batch).

    Args:
      ids_RxT1: the packed split [R, T + 1] the predictions were made on.
      seq_id_N, position_N: [N] each token's row and position (as stored by `predict_split`).
      pad: PAD id (a token whose target is PAD was never recorded: a mismatch).
    Yields:
      (index [n] into the N tokens, logits [n, V] float32, labels [n]); every token once.
    Raises:
      ValueError: a token outside the split (row or position) or with a PAD target, named.
    """
    ids = np.asarray(ids_RxT1)
    seq = np.asarray(seq_id_N, np.int64)
    pos = np.asarray(position_N, np.int64)
    n_rows, t = ids.shape[0], ids.shape[1] - 1
    if ids.ndim != 2 or seq.ndim != 1 or seq.shape != pos.shape:
        raise ValueError(f"{name}: expected ids [R, T + 1] and seq_id, position [N] alike, got "
                         f"{ids.shape}, {seq.shape}, {pos.shape}")
    if seq.size and (seq.min() < 0 or seq.max() >= n_rows or pos.min() < 0 or pos.max() >= t):
        raise ValueError(f"{name}: seq_id/position outside the split's {n_rows} rows x {t} "
                         "positions (predictions of another dataset?)")
    labels = ids[seq, pos + 1].astype(np.int64)
    if np.any(labels == pad):
        raise ValueError(f"{name}: {int(np.sum(labels == pad))} tokens have a PAD target in the "
                         "split (predictions of another dataset?)")
    order = np.argsort(seq, kind="stable")
    seq_sorted, rows = seq[order], np.unique(seq)
    for b0 in range(0, len(rows), batch_rows):
        rows_b = rows[b0 : b0 + batch_rows]
        chunk = ids[rows_b, :-1]
        if len(rows_b) < batch_rows:  # PAD-filled to the fixed batch shape
            chunk = np.concatenate([chunk, np.full((batch_rows - len(rows_b), t), pad,
                                                   ids.dtype)])
        z = np.asarray(jax.device_get(_logits(model, jnp.asarray(chunk))))
        idx = order[np.searchsorted(seq_sorted, rows_b[0], side="left"):
                    np.searchsorted(seq_sorted, rows_b[-1], side="right")]
        yield idx, z[np.searchsorted(rows_b, seq[idx]), pos[idx]], labels[idx]


def calib_logits(model: nnx.Module, ids_RxT1: np.ndarray, toks: Mapping[str, np.ndarray], *,
                 pad: int, name: str = "calib") -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, V] float32, labels [N]) of every token of `toks` (its seq_id/position)."""
    z, y = None, np.zeros(len(toks["seq_id"]), np.int64)
    for idx, z_b, y_b in token_logits(model, ids_RxT1, toks["seq_id"], toks["position"],
                                      pad=pad, name=name):
        if z is None:
            z = np.zeros((len(y), z_b.shape[1]), np.float32)
        z[idx], y[idx] = z_b, y_b
    if z is None:
        raise ValueError(f"{name}: no tokens to compute logits for")
    return z, y


def scaled_confidence(model: nnx.Module, ids_RxT1: np.ndarray, toks: Mapping[str, np.ndarray],
                      params: TemperatureParams, *, pad: int, name: str = "tokens"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per token of `toks`: (max_v softmax(z / T)_v [N], -log softmax(z / T)_label [N]),
    streamed (no [N, V] array is held)."""
    conf, nll = np.zeros(len(toks["seq_id"])), np.zeros(len(toks["seq_id"]))
    for idx, z_b, y_b in token_logits(model, ids_RxT1, toks["seq_id"], toks["position"],
                                      pad=pad, name=name):
        z = z_b.astype(np.float64)
        conf[idx] = temperature_apply(params, z).max(axis=1)
        logp = z / params.temperature
        logp = logp - scipy.special.logsumexp(logp, axis=1, keepdims=True)
        nll[idx] = -logp[np.arange(len(y_b)), y_b]
    return conf, nll


def _check_matches(conf: np.ndarray, stored: np.ndarray, name: str) -> float:
    """Largest |recomputed - stored| confidence at T = 1; ValueError past the tolerance."""
    gap = float(np.max(np.abs(conf - stored))) if conf.size else 0.0
    if not gap <= CONFIDENCE_TOLERANCE:
        raise ValueError(f"{name}: the decoder's recomputed confidence differs from the stored "
                         f"predictions by up to {gap:.3g} (> {CONFIDENCE_TOLERANCE}): the run's "
                         "checkpoint or dataset no longer matches its predictions")
    return gap


def temperature_tokens(
    model: nnx.Module, ids: Mapping[str, np.ndarray], calib: Mapping[str, np.ndarray],
    domains: Mapping[str, Mapping[str, np.ndarray]], *, calib_split: str,
    splits: Mapping[str, str], pad: int, seed: int, plan: TokenPlan,
) -> dict[str, Any]:
    """Temperature scaling of `model` on the probes' tokens (the stage without loading).

    Args:
      ids: {split: packed rows [R, T + 1]} of the calib split and every domain's split.
      calib, domains: token arrays of the stored predictions (`token_stages.load_tokens`).
      calib_split, splits: the calib split's name and {domain: split name}.
    Returns:
      {temperature, at_bound, n_calib, calib_token_nll {before, after}, max_confidence_gap,
       rows: one per domain (probe "temperature", `compare.probe_metrics`, token_nll,
       temperature), reliability {domain: curve}, n_test {domain: N}}.
    """
    n_bins = plan.tests.n_bins
    cal_index, test_index = token_stages.probe_selection(calib, domains, seed=seed, plan=plan)
    cal = tokens.subset(calib, cal_index)
    z, y = calib_logits(model, ids[calib_split], cal, pad=pad, name=calib_split)
    z64 = z.astype(np.float64)
    del z
    one = TemperatureParams(1.0)
    gap = _check_matches(temperature_apply(one, z64).max(axis=1), cal["confidence"], calib_split)
    params = temperature_fit(z64, y)
    nll_cal = {k: float(np.mean(scipy.special.logsumexp(z64 / t, axis=1) - z64[np.arange(len(y)),
                                                                             y] / t))
               for k, t in (("before", 1.0), ("after", params.temperature))}
    del z64
    out: dict[str, Any] = {
        "temperature": params.temperature, "at_bound": params.at_bound, "n_calib": len(y),
        "calib_token_nll": nll_cal, "max_confidence_gap": gap, "rows": [], "reliability": {},
        "n_test": {},
    }
    for d, t in domains.items():
        sub = tokens.subset(t, test_index[d])
        conf, nll = scaled_confidence(model, ids[splits[d]], sub, params, pad=pad,
                                      name=splits[d])
        pd = tokens.probe_data(sub)
        metrics = compare.probe_metrics(conf, pd, pd.routing.get(compare.ROUTING_FEATURE),
                                        n_bins)
        out["rows"].append({
            "probe": "temperature", "features": ("logits",), "bandwidth_rule": None,
            "bandwidth": None, "bandwidth_multiple": None, "optimistic": False, **metrics,
            "token_nll": float(np.mean(nll)), "temperature": params.temperature, "domain": d})
        curve = calibration.reliability_curve(conf, pd.correct, n_bins=n_bins)
        out["reliability"][d] = {k: np.asarray(v).tolist() for k, v in curve._asdict().items()}
        out["n_test"][d] = len(conf)
    return out


def temperature_run(
    run_dir: str | pathlib.Path, calib: Mapping[str, np.ndarray],
    domains: Mapping[str, Mapping[str, np.ndarray]], *, splits: Mapping[str, str], seed: int,
    plan: TokenPlan,
) -> dict[str, Any]:
    """The `temperature:<model>:<seed>` stage: the trained decoder of `run_dir` reloaded, then
    `temperature_tokens` on the calib split and every domain's split (see module doc)."""
    from routecal.training.train import load_trained

    t0 = time.perf_counter()
    model, _, dataset = load_trained(run_dir)
    names = {plan.calib_split, *splits.values()}
    ids = {sp: np.asarray(dataset.split(sp).ids) for sp in names}
    load_seconds = time.perf_counter() - t0
    out = temperature_tokens(model, ids, calib, domains, calib_split=plan.calib_split,
                             splits=splits, pad=int(dataset.tokenizer.pad), seed=seed, plan=plan)
    return {**out, "load_seconds": load_seconds}
