"""Temperature scaling in the LM study: T fitted on the probes' calib tokens, scored per domain.

Shapes: N tokens, R packed rows, T positions per row, V vocabulary.

Token predictions (`routecal.training.token_predict`) keep per-token summaries, not the [N, V] logits that
temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 9) needs,
and storing 259 logits per token for every split and model is too much disk. So this stage
reloads the trained decoder (`routecal.training.train.load_trained`) and recomputes the logits of exactly
the tokens the other probes use (`token_stages.probe_selection` of the stored predictions):

  * `token_predict.token_logits`: the rows are the tokens' `seq_id` (row index of the packed
    split, as `predict_split` writes it) and each token's logits are read at its stored
    `position`; its label is `ids[seq_id, position + 1]` (`predict_split`'s target). Only the
    rows holding selected tokens are run, in fixed batches (PAD-filled: one compile), so the thinning
    (`predict.every`, `min_position`, `max_tokens`) is the one the shards recorded, not re-derived;
  * the calib tokens' logits [N_cal, V] are kept in memory and T is fitted by
    `probes.scaling.temperature_fit` (multiclass NLL over log T); each domain's test tokens are
    streamed and only their scaled confidence max_v softmax(z / T)_v and token NLL
    (`probes.scaling.temperature_nll`) are kept;
  * each domain gets the metrics row of every other probe (`compare.probe_metrics`: ECE, binary
    NLL of correctness given the confidence, Brier, worst-routing-tertile ECE), plus T and the
    token NLL -log softmax(z / T)_label (the multiclass quantity T minimises, for reference).

At T = 1 the recomputed confidence must equal the stored one (a decoder or dataset that no longer
matches its predictions raises ValueError rather than scoring other tokens).
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from routecal.files import predictions
from routecal.probes import compare
from routecal.probes.data import ProbeData
from routecal.probes.scaling import (
    TemperatureParams,
    temperature_apply,
    temperature_fit,
    temperature_nll,
)
from routecal.stats import calibration
from routecal.study import token_stages
from routecal.study.plan import Plan
from routecal.training import token_predict

CONFIDENCE_TOLERANCE = 1e-3  # |recomputed - stored| confidence at T = 1 before refusing


def has_trained_model(run_dir: str | pathlib.Path) -> bool:
    """True when `run_dir` holds a training run (config.json and checkpoints); a stand-in
    producer's run directory (tests) has none, and the stage is then not run."""
    d = pathlib.Path(run_dir)
    return (d / "config.json").exists() and (d / "checkpoints").is_dir()


def scaled_confidence(model: nnx.Module, ids_RxT1: np.ndarray, toks: Mapping[str, np.ndarray],
                      params: TemperatureParams, *, pad: int, name: str = "tokens"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per token of `toks`: (max_v softmax(z / T)_v [N], -log softmax(z / T)_label [N]),
    streamed (no [N, V] array is held)."""
    conf, nll = np.zeros(len(toks["seq_id"])), np.zeros(len(toks["seq_id"]))
    for idx, z_b, y_b in token_predict.token_logits(model, ids_RxT1, toks["seq_id"], toks["position"],
                                      pad=pad, name=name):
        z = z_b.astype(np.float64)
        conf[idx] = temperature_apply(params, z).max(axis=1)
        nll[idx] = temperature_nll(params, z, y_b)
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
    splits: Mapping[str, str], pad: int, seed: int, plan: Plan,
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
    cal = predictions.subset(calib, cal_index)
    z, y = token_predict.calib_logits(model, ids[calib_split], cal, pad=pad, name=calib_split)
    z64 = z.astype(np.float64)
    del z
    one = TemperatureParams(1.0)
    gap = _check_matches(temperature_apply(one, z64).max(axis=1), cal["confidence"], calib_split)
    params = temperature_fit(z64, y)
    nll_cal = {k: float(np.mean(temperature_nll(p, z64, y))) for k, p in (("before", one),
                                                                           ("after", params))}
    del z64
    out: dict[str, Any] = {
        "temperature": params.temperature, "at_bound": params.at_bound, "n_calib": len(y),
        "calib_token_nll": nll_cal, "max_confidence_gap": gap, "rows": [], "reliability": {},
        "n_test": {},
    }
    for d, t in domains.items():
        sub = predictions.subset(t, test_index[d])
        conf, nll = scaled_confidence(model, ids[splits[d]], sub, params, pad=pad,
                                      name=splits[d])
        pd = ProbeData.from_tokens(sub)
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
    plan: Plan,
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
