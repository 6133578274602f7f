"""The matched probe comparison: every probe x bandwidth rule, fitted on calib and scored on test.

Shapes: N test examples, M bins.

Metrics (one place: `routecal.stats.calibration` and `routecal.stats.binary`): top-label ECE, binary NLL (one clip,
`binary.PROB_CLIP`), binary Brier and the worst-routing-tertile ECE (`worst_group_ece`).
`compare_probes` returns one row per probe; `probe_comparison` adds a bandwidth sweep and
reliability data for the report; `token_comparison` does both per domain on token arrays (with
the sequence-level control); `summarise_probes` turns per-seed rows into seed bands
(`routecal.stats.seeds`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.files import predictions
from routecal.probes.data import PROFILE, ProbeData
from routecal.probes.mlp import VARIANTS, MLPProbe
from routecal.probes.nadaraya_watson import FEATURE_SETS, NadarayaWatsonProbe
from routecal.probes.scaling import (
    HistogramBinning,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
)
from routecal.stats import binary, calibration, kernels
from routecal.stats.seeds import seed_band

ROUTING_FEATURE = FEATURE_SETS["ar_condcal"][1]  # the tertiles' feature (mean depth variance)
METRICS = ("ece", "nll", "brier", "worst_tertile_ece")


def probe_metrics(
    conf: np.ndarray, test: ProbeData, routing: np.ndarray | None, n_bins: int
) -> dict[str, float | None]:
    """ECE, binary NLL, Brier and worst-routing-tertile ECE (None without routing) on `test`."""
    conf = np.clip(np.asarray(conf, np.float64), 0.0, 1.0)
    if not np.all(np.isfinite(conf)):
        raise ValueError("probe produced non-finite confidences")
    return {
        "ece": calibration.ece(conf, test.correct, n_bins=n_bins),
        "nll": binary.binary_nll(conf, test.correct),
        "brier": binary.binary_brier(conf, test.correct),
        "worst_tertile_ece": None
        if routing is None
        else binary.worst_group_ece(conf, test.correct, routing, n_bins=n_bins),
    }


def compare_probes(
    calib: ProbeData,
    test: ProbeData,
    *,
    bandwidth_rules: Sequence[str] = ("scott", "cv_nll", "oracle_ece"),
    seed: int = 0,
    n_bins: int = 15,
    routing_feature: str = ROUTING_FEATURE,
    profile: str = PROFILE,
    mlp_kwargs: Mapping[str, Any] | None = None,
    multiples: Any = kernels.DEFAULT_MULTIPLES,
    return_predictions: bool = False,
) -> list[dict]:
    """Runs every probe x bandwidth rule on one set of predictions (fit on calib, score on test).

    Probes: temperature (if probs/labels present), Platt, histogram, isotonic; NW on confidence,
    on (confidence, `routing_feature`) = AR-CondCal (if routing present) and on (confidence,
    entropy) = control, one row per bandwidth rule; MLP full / capacity_matched / shuffled (if the
    routing profile `profile` is present). Routing-based probes are skipped for a standard model.

    Returns:
      a list of rows {probe, features, bandwidth_rule, bandwidth, bandwidth_multiple, ece, nll,
      brier, worst_tertile_ece, optimistic}; `optimistic` is True for "oracle_ece" rows (test-set
      bandwidth choice: an optimistic bound). worst_tertile_ece groups the test set by
      `routing_feature` (None without routing). The uncalibrated model is the first row. With
      `return_predictions=True` every row also holds "predictions": the probe's calibrated test
      confidences [N] (for reliability diagrams).
    """
    if not isinstance(calib, ProbeData) or not isinstance(test, ProbeData):
        raise ValueError("calib, test: expected ProbeData (see ProbeData.from_predictions)")
    has_routing = routing_feature in calib.routing and routing_feature in test.routing
    routing = test.routing[routing_feature] if has_routing else None
    if routing is not None and routing.ndim != 1:
        raise ValueError(f"routing_feature: {routing_feature!r} must be a scalar summary [N]")
    rows: list[dict] = []

    def add(probe, features, conf, rule=None, selection=None):
        row = {
            "probe": probe,
            "features": tuple(features),
            "bandwidth_rule": rule,
            "bandwidth": None if selection is None else [float(v) for v in selection.bandwidth],
            "bandwidth_multiple": None if selection is None else selection.multiple,
        }
        row.update(probe_metrics(conf, test, routing, n_bins))
        row["optimistic"] = bool(selection is not None and selection.optimistic)
        if return_predictions:
            row["predictions"] = np.clip(np.asarray(conf, np.float64), 0.0, 1.0)
        rows.append(row)

    add("uncalibrated", ("confidence",), test.confidence)
    if calib.probs is not None and test.probs is not None and calib.labels is not None:
        add("temperature", ("probs",), TemperatureScaling().fit(calib).predict(test))
    add("platt", ("confidence",), PlattScaling().fit(calib).predict(test))
    add("histogram", ("confidence",), HistogramBinning(n_bins=n_bins).fit(calib).predict(test))
    add("isotonic", ("confidence",), IsotonicCalibration().fit(calib).predict(test))

    feature_sets = [("confidence",), ("confidence", "entropy")]
    if has_routing:
        feature_sets.insert(1, ("confidence", routing_feature))
    for feats in feature_sets:
        for rule in bandwidth_rules:
            probe = NadarayaWatsonProbe(feats, rule, multiples=multiples, n_bins=n_bins)
            probe.fit(calib, test=test if rule == "oracle_ece" else None)
            add("nadaraya_watson", feats, probe.predict(test), rule, probe.selection_)

    if profile in calib.routing and profile in test.routing:
        kw = {"seed": seed, **dict(mlp_kwargs or {})}
        for variant in VARIANTS:
            probe = MLPProbe(variant, profile=profile, **kw).fit(calib)
            feats = ("confidence",) if variant == "capacity_matched" else ("confidence", profile)
            add(f"mlp_{variant}", feats, probe.predict(test))
            rows[-1]["n_params"] = probe.n_params_
    return rows


def probe_label(row: Mapping[str, Any]) -> str:
    """Short probe name: NW probes by feature set (nw_confidence, nw_ar_condcal, ...)."""
    if row["probe"] != "nadaraya_watson":
        return row["probe"]
    feats = tuple(row["features"])
    for name, fs in FEATURE_SETS.items():
        if tuple(fs) == feats:
            return f"nw_{name}"
    return "nw_" + "+".join(feats)


def probe_comparison(
    calib: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], *, seed: int,
    bandwidth_rules: Sequence[str], sweep_multiples: Sequence[float], n_bins: int,
) -> dict[str, Any]:
    """The comparison for one (arch, seed) from predictions: rows, bandwidth sweep, reliability.

    The sweep refits the NW probes at each Scott multiple and records test ECE (the sensitivity
    figure); reliability curves are kept for the uncalibrated, classical and CV-NLL rows.
    """
    pc, pt = ProbeData.from_predictions(calib), ProbeData.from_predictions(test)
    rows, reliability = [], {}
    for r in compare_probes(
        pc, pt, bandwidth_rules=tuple(bandwidth_rules), seed=seed, n_bins=n_bins,
        return_predictions=True,
    ):
        label = probe_label(r)
        if r["bandwidth_rule"] in (None, "cv_nll"):
            curve = calibration.reliability_curve(r["predictions"], pt.correct, n_bins=n_bins)
            reliability[label] = {k: v.tolist() for k, v in curve._asdict().items()}
        rows.append({**{k: v for k, v in r.items() if k != "predictions"}, "probe": label})
    sweep: dict[str, list[float]] = {}
    for name, feats in FEATURE_SETS.items():
        if any(f not in ("confidence", "entropy") and f not in pt.routing for f in feats):
            continue  # a standard-residual model has no routing features
        sweep[f"nw_{name}"] = [
            calibration.ece(
                NadarayaWatsonProbe(feats, f"scott_x{m:g}", n_bins=n_bins).fit(pc).predict(pt),
                pt.correct, n_bins=n_bins,
            )
            for m in sweep_multiples
        ]
    return {"rows": rows, "sweep": sweep, "reliability": reliability}


def summarise_probes(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Seed band (`stats.seeds.seed_band`) of each metric per (arch, probe, bandwidth rule)."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["arch"], r["probe"], r.get("bandwidth_rule") or "-"), []).append(r)
    out = []
    for (arch, probe, rule), rs in groups.items():
        s = {"arch": arch, "probe": probe, "bandwidth_rule": rule,
             "optimistic": bool(rs[0].get("optimistic", False))}
        for m in METRICS:
            s[m] = seed_band([r.get(m) for r in rs])
        s["bandwidth"] = [r.get("bandwidth") for r in rs]
        out.append(s)
    return out


def token_comparison(
    calib: Mapping[str, np.ndarray], domains: Mapping[str, Mapping[str, np.ndarray]], *,
    seed: int, bandwidth_rules: Sequence[str], sweep_multiples: Sequence[float],
    multiples: Sequence[float], n_bins: int,
) -> dict[str, Any]:
    """The matched comparison on tokens: probes fitted on `calib` token arrays
    (`files.predictions.token_arrays`) and scored on each domain's token arrays.

    Rows: `compare_probes` (every probe x bandwidth rule, MLP full / capacity-matched /
    shuffled across tokens) plus `mlp_shuffled_sequences` (the full MLP with routing profiles
    shuffled across sequences at fit and at predict time), metrics per domain. Also the bandwidth
    sweep (test ECE per Scott multiple per domain) and reliability curves, and the seconds spent
    in the NW probes (`seconds_compare`, `seconds_sweep`).
    """
    names = list(domains)
    test = predictions.concat_tokens([domains[d] for d in names])
    which = np.concatenate([np.full(len(domains[d]["seq_id"]), i) for i, d in enumerate(names)])
    pc, pt = ProbeData.from_tokens(calib), ProbeData.from_tokens(test)
    routing = pt.routing.get(ROUTING_FEATURE)
    t0 = time.perf_counter()
    rows = compare_probes(pc, pt, bandwidth_rules=bandwidth_rules, seed=seed, n_bins=n_bins,
                          multiples=np.asarray(multiples), return_predictions=True)
    compare_seconds = time.perf_counter() - t0
    if PROFILE in pc.routing:
        mlp = MLPProbe("full", profile=PROFILE, seed=seed).fit(
            ProbeData.from_tokens(calib, shuffle_seed=seed))
        pred = mlp.predict(ProbeData.from_tokens(test, shuffle_seed=seed + 1))
        rows.append({"probe": "mlp_shuffled_sequences", "features": ("confidence", PROFILE),
                     "bandwidth_rule": None, "bandwidth": None, "optimistic": False,
                     "n_params": mlp.n_params_, "predictions": np.clip(pred, 0.0, 1.0)})
    out: dict[str, Any] = {"rows": [], "sweep": {}, "reliability": {},
                           "n_calib": len(pc), "n_test": {d: int(np.sum(which == i))
                                                          for i, d in enumerate(names)}}
    for i, d in enumerate(names):
        mask = which == i
        sub = pt.subset(mask)
        rel = out["reliability"].setdefault(d, {})
        for r in rows:
            label = probe_label(r)
            conf = r["predictions"][mask]
            metrics = probe_metrics(conf, sub, None if routing is None else
                                            routing[mask], n_bins)
            keep = {k: v for k, v in r.items() if k not in ("predictions", "ece", "nll", "brier",
                                                           "worst_tertile_ece")}
            out["rows"].append({**keep, **metrics, "probe": label, "domain": d})
            if r["bandwidth_rule"] in (None, "cv_nll"):
                curve = calibration.reliability_curve(conf, sub.correct, n_bins=n_bins)
                rel[label] = {k: np.asarray(v).tolist() for k, v in curve._asdict().items()}
    t1 = time.perf_counter()
    for name, feats in FEATURE_SETS.items():
        if any(f not in ("confidence", "entropy") and f not in pt.routing for f in feats):
            continue
        preds = [NadarayaWatsonProbe(feats, f"scott_x{m:g}", n_bins=n_bins).fit(pc).predict(pt)
                 for m in sweep_multiples]
        for i, d in enumerate(names):
            mask = which == i
            out["sweep"].setdefault(d, {})[f"nw_{name}"] = [
                calibration.ece(p[mask], pt.correct[mask], n_bins=n_bins) for p in preds]
    out["seconds_compare"] = compare_seconds
    out["seconds_sweep"] = time.perf_counter() - t1
    return out
