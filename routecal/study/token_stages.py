"""The language-model study's stages, each a function of the plan and token predictions.

Shapes: N tokens, S routed sublayers, B permutations.

    train_predict   one (model, seed): train (orbax resume) and write token predictions per split
    diagnose_cell   one (domain, model, seed, routing summary): the paper and recommended tests
                    (clusters: documents or rows, `diagnostics.cluster_unit`; with their number
                    and effective number)
    power_cell      one (domain, model, seed): each test's minimum detectable gap and power curve
    probe_run       one (model, seed): probes fitted on calib tokens, scored per domain
    temperature_run one (model, seed): temperature scaling on the same tokens, from the trained
                    decoder's logits recomputed in memory (`temperature`; token records keep
                    summaries, not the [N, V] logits)
Each returns a JSON-able dict; `study.run` stores it as a stage (`W/stages/<name>.json`) so a
killed study redoes nothing it finished. Permutation nulls go to `W/stages/nulls/<name>.npz`.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from routecal import parallel
from routecal.files import workdir as workdir_io
from routecal.probes import compare
from routecal.probes.data import PROFILE
from routecal.probes.mlp import MLPProbe
from routecal.probes.nadaraya_watson import FEATURE_SETS, NadarayaWatsonProbe
from routecal.stats import calibration
from routecal.study import token_tests, tokens
from routecal.study.plan import ModelSpec, TokenPlan

# (model, seed, run_dir) -> {"paths": {split: predictions path}, ...}: swapped in tests.
Producer = Callable[[ModelSpec, int, pathlib.Path], Mapping[str, Any]]


def load_tokens(path: str | pathlib.Path, name: str,
                fingerprint: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Token arrays of one split's predictions, validated by `tokens.token_arrays`: a shard
    directory (`routecal.files.predictions.load`, what `routecal predict` writes for LMs) or an `.npz`
    of token arrays (bring your own).

    Args:
      fingerprint: what the shards' index must record (`shards.check_fingerprint`: config hash,
        checkpoint step, split of the run the study expects); None checks nothing.
    Raises:
      ValueError: one line naming the file: missing, unreadable, written by another run, or
        arrays failing their checks.
    """
    from routecal.files import predictions, shards

    p = pathlib.Path(path)
    if p.is_dir():
        cols = predictions.load(p)
        if isinstance(cols, shards.ShardedColumns):
            shards.check_fingerprint(cols, fingerprint)
        return tokens.token_arrays(cols, f"{name} ({p})")
    return tokens.token_arrays(workdir_io.load_npz(p, "predictions"), f"{name} ({p})")


def fingerprints(paths: Mapping[str, str | pathlib.Path]) -> dict[str, Any]:
    """{split: fingerprint recorded in its shards' index.json} for the shard directories among
    `paths` (what a run stage stores, so every later load checks it reads the same run)."""
    from routecal.files import shards

    return {sp: shards.ShardedColumns(p).fingerprint for sp, p in paths.items()
            if (pathlib.Path(p) / "index.json").is_file()}


def train_predict(model: ModelSpec, seed: int, run_dir: pathlib.Path, *,
                  predict_options: Mapping[str, Any], depth_rows: int,
                  domains: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Trains `model` for `seed` in `run_dir` (resuming; an `hf`-source model is imported instead,
    `hf_source`), writes its token predictions
    (`predict.predict_workdir(..., lm_options=predict_options)`: thinning, token caps) and, for
    AttnRes models, the mean depth-attention weights per domain (`depth_attention`)."""
    from routecal.study import hf_source
    from routecal.training import predict, train

    cfg = model.load(seed)
    if hf_source.is_pretrained(cfg):  # an imported checkpoint: nothing to train
        return hf_source.import_predict(cfg, run_dir, predict_options=predict_options)
    t0 = time.perf_counter()
    metrics = train.train_and_evaluate(cfg, str(run_dir))
    t1 = time.perf_counter()
    paths = predict.predict_workdir(str(run_dir), lm_options=dict(predict_options))
    t2 = time.perf_counter()
    depth = depth_attention(run_dir, domains, depth_rows) if model.routed and depth_rows else {}
    return {"metrics": metrics, "train_seconds": t1 - t0, "predict_seconds": t2 - t1,
            "paths": {k: str(v) for k, v in paths.items()}, "fingerprints": fingerprints(paths),
            "depth_attention": depth}


def relative_paths(out: Mapping[str, Any], workdir: pathlib.Path) -> dict[str, Any]:
    """`out` with its prediction paths stored relative to the study's workdir (a moved or copied
    workdir still resolves them; `routecal.files.workdir.from_relative` reads them back)."""
    from routecal.files import workdir as workdir_io

    return {**out, "paths": {k: workdir_io.to_relative(v, workdir)
                             for k, v in out["paths"].items()}}


def depth_attention(run_dir: pathlib.Path, domains: Sequence[tuple[str, str]], rows: int
                    ) -> dict[str, Any]:
    """Mean depth-attention weights per domain: the trained decoder on the first `rows` packed
    rows of each domain's split, alpha averaged over rows and positions (PAD included).

    Returns:
      {domain: {"alpha_mean": [L + 1, S_max] (NaN past each site's sources), "n_sources":
      [L + 1], "sublayer_names": [L + 1]}} (sites: the L sublayers, then the readout).
    """
    from routecal.training.train import load_trained

    model, cfg, dataset = load_trained(run_dir)
    out = {}
    for domain, split in domains:
        ids = np.asarray(dataset.split(split).ids[:rows], np.int32)[:, :-1]
        alphas = model(ids, return_traces=True).traces["alpha"]
        if not alphas:
            return {}
        means = [np.asarray(a, np.float64).mean(axis=(0, 1)) for a in alphas]
        width = max(len(m) for m in means)
        table = np.full((len(means), width), np.nan)
        for i, m in enumerate(means):
            table[i, : len(m)] = m
        names = [f"site {i}" for i in range(len(means) - 1)] + ["readout"]
        out[domain] = {"alpha_mean": table, "n_sources": [len(m) for m in means],
                       "sublayer_names": names}
    return out


def run_summary(toks: Mapping[str, Mapping[str, np.ndarray]], n_bins: int) -> dict[str, Any]:
    """Per split: tokens, accuracy, ECE and mean predictive entropy (the runs table)."""
    out = {}
    for split, t in toks.items():
        out[split] = {
            "n_tokens": int(len(t["confidence"])),
            "accuracy": float(np.mean(t["correct"])),
            "ece": calibration.ece(t["confidence"], t["correct"], n_bins=n_bins),
            "mean_confidence": float(np.mean(t["confidence"])),
        }
    return out


def cell_tokens(t: Mapping[str, np.ndarray], plan: TokenPlan, name: str = "predictions"
                ) -> dict[str, np.ndarray]:
    """The diagnostics' tokens of one split: whole clusters (`diagnostics.cluster_unit`: documents
    or rows) up to `diag_max_tokens` (seeded), so a cluster is never cut.

    Raises:
      ValueError: document clusters on predictions without `doc_id` (`tokens.cluster_ids`), or
        fewer than 2 clusters.
    """
    unit = plan.tests.cluster_unit
    clusters = tokens.cluster_ids(t, unit, name)
    idx = tokens.thin_sequences(clusters, plan.diag_max_tokens, seed=plan.diag_seed)
    n_clusters = len(np.unique(clusters[idx]))
    if n_clusters < 2:
        raise ValueError(
            f"diagnostics.cluster_unit: the {name} tokens hold {n_clusters} {unit}; the "
            "recommended test needs at least 2 clusters (evaluate more documents: raise "
            "data.max_bytes in model_overrides, or set diagnostics.cluster_unit=row)")
    return tokens.subset(t, idx)


def diagnose_cell(
    t: Mapping[str, np.ndarray], feature: str, *, key: jax.Array, plan: TokenPlan,
    null_path: pathlib.Path,
) -> dict[str, Any]:
    """The configured tests on one cell; nulls written to `null_path` (npz, one array per test)."""
    feats = tokens.routing_table(t)
    if feature not in feats:
        raise ValueError(f"diagnostics.features: {feature!r} not available (have {sorted(feats)})")
    clusters = tokens.cluster_ids(t, plan.tests.cluster_unit)
    res = token_tests.run_cell(t["confidence"], t["correct"], feats[feature], clusters,
                               key=key, settings=plan.tests)
    nulls = {test: r.pop("null") for test, r in res.items() if "null" in r}
    # atomic, with a unique temp name (a study worker may write the same cell); multi-host:
    # process 0 writes (read only after the stage's own write_json barrier)
    if nulls and parallel.is_primary():
        with workdir_io.atomic_path(null_path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **nulls)
    return {"n": int(len(t["confidence"])), "n_sequences": int(len(np.unique(t["seq_id"]))),
            "cluster_unit": plan.tests.cluster_unit, **tokens.cluster_sizes(clusters),
            "tests": res}


def power_cell(t: Mapping[str, np.ndarray], *, key: jax.Array, plan: TokenPlan) -> dict[str, Any]:
    """Each configured test's minimum detectable gap (and power curve) on one cell's tokens, with
    the diagnostics' clusters (`diagnostics.cluster_unit`)."""
    clusters = tokens.cluster_ids(t, plan.tests.cluster_unit)
    return {"power": token_tests.power(t["confidence"], t["correct"], clusters, key=key,
                                       settings=plan.tests)}


def probe_selection(
    calib: Mapping[str, np.ndarray], domains: Mapping[str, Mapping[str, np.ndarray]], *,
    seed: int, plan: TokenPlan,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The token indices the probes use (`probe_run`, `temperature.temperature_run`): calib
    thinned to `probe_max_calib_tokens`, each domain to `probe_max_test_tokens`, whole sequences
    seeded by the run's seed (`tokens.thin_sequences`). Returns (calib index, {domain: index})."""
    return (tokens.thin_sequences(calib["seq_id"], plan.probe_max_calib_tokens, seed=seed),
            {d: tokens.thin_sequences(t["seq_id"], plan.probe_max_test_tokens, seed=seed)
             for d, t in domains.items()})


def _domain_tokens(domains: Mapping[str, Mapping[str, np.ndarray]],
                   index: Mapping[str, np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Concatenated test tokens of every domain (at `index[domain]`) and a domain index [N]."""
    names = list(domains)
    parts = [tokens.subset(domains[d], index[d]) for d in names]
    which = np.concatenate([np.full(len(p["seq_id"]), i) for i, p in enumerate(parts)])
    return tokens.concat_tokens(parts), which, names


def probe_run(
    calib: Mapping[str, np.ndarray], domains: Mapping[str, Mapping[str, np.ndarray]], *,
    seed: int, plan: TokenPlan,
) -> dict[str, Any]:
    """Probes fitted on calib tokens and scored on each domain's test tokens.

    Rows: `compare.compare_probes` (every probe x bandwidth rule, MLP full / capacity-matched /
    shuffled across tokens) plus `mlp_shuffled_sequences` (the full MLP with routing profiles
    shuffled across sequences at fit and at predict time), metrics per domain. Also the bandwidth
    sweep (test ECE per Scott multiple per domain) and reliability curves, and the seconds spent
    in the NW probes.
    """
    n_bins = plan.tests.n_bins
    cal_index, test_index = probe_selection(calib, domains, seed=seed, plan=plan)
    cal = tokens.subset(calib, cal_index)
    test, which, names = _domain_tokens(domains, test_index)
    pc, pt = tokens.probe_data(cal), tokens.probe_data(test)
    routing = pt.routing.get(compare.ROUTING_FEATURE)
    t0 = time.perf_counter()
    rows = compare.compare_probes(pc, pt, bandwidth_rules=plan.bandwidth_rules, seed=seed,
                                  n_bins=n_bins, multiples=np.asarray(plan.multiples),
                                  return_predictions=True)
    compare_seconds = time.perf_counter() - t0
    if PROFILE in pc.routing:
        mlp = MLPProbe("full", profile=PROFILE, seed=seed).fit(
            tokens.probe_data(cal, shuffle_seed=seed))
        pred = mlp.predict(tokens.probe_data(test, shuffle_seed=seed + 1))
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
            label = compare.probe_label(r)
            conf = r["predictions"][mask]
            metrics = compare.probe_metrics(conf, sub, None if routing is None else
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
                 for m in plan.sweep_multiples]
        for i, d in enumerate(names):
            mask = which == i
            out["sweep"].setdefault(d, {})[f"nw_{name}"] = [
                calibration.ece(p[mask], pt.correct[mask], n_bins=n_bins) for p in preds]
    out["seconds_compare"] = compare_seconds
    out["seconds_sweep"] = time.perf_counter() - t1
    return out
