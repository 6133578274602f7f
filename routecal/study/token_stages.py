"""The language-model study's stages, each a function of the plan and token predictions.

Shapes: N tokens, S routed sublayers, B permutations.

    train_predict   one (model, seed): train (orbax resume) and write token predictions per split
    cell_tokens     one (domain, model, seed)'s diagnostics tokens: whole clusters, thinned
    probe_run       one (model, seed): probes fitted on calib tokens, scored per domain
    temperature_run one (model, seed): temperature scaling on the same tokens, from the trained
                    decoder's logits recomputed in memory (`temperature`; token records keep
                    summaries, not the [N, V] logits)
Each returns a JSON-able dict; `study.run` stores it as a stage (`W/stages/<name>.json`) so a
killed study redoes nothing it finished. The diagnostics stages are `study.grid`'s.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.files import predictions
from routecal.files import workdir as workdir_io
from routecal.probes import compare
from routecal.stats import calibration, sequences
from routecal.study.plan import ModelSpec, Plan


def load_tokens(path: str | pathlib.Path, name: str,
                fingerprint: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Token arrays of one split's predictions, validated by `predictions.token_arrays`: a shard
    directory (`routecal.files.predictions.load`, what `routecal predict` writes for LMs) or an `.npz`
    of token arrays (bring your own).

    Args:
      fingerprint: what the shards' index must record (`shards.check_fingerprint`: config hash,
        checkpoint step, split of the run the study expects); None checks nothing.
    Raises:
      ValueError: one line naming the file: missing, unreadable, written by another run, or
        arrays failing their checks.
    """
    from routecal.files import shards

    p = pathlib.Path(path)
    if p.is_dir():
        cols = predictions.load(p)
        if isinstance(cols, shards.ShardedColumns):
            shards.check_fingerprint(cols, fingerprint)
        return predictions.token_arrays(cols, f"{name} ({p})")
    return predictions.token_arrays(workdir_io.load_npz(p, "predictions"), f"{name} ({p})")


def train_predict(model: ModelSpec, seed: int, run_dir: pathlib.Path, *, source: str,
                  predict_options: Mapping[str, Any], depth_rows: int,
                  domains: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Trains `model` for `seed` in `run_dir` (resuming; the plan's `hf` source is imported
    instead, `token_predict.predict_pretrained`), writes its token predictions
    (`predict.predict_workdir(..., lm_options=predict_options)`: thinning, token caps) and, for
    AttnRes models, the mean depth-attention weights per domain (`predict.decoder_depth_attention`)."""
    from routecal.training import predict, token_predict, train

    cfg = model.load(seed)
    if source == "hf":  # an imported checkpoint: nothing to train
        return token_predict.predict_pretrained(cfg, run_dir, predict_options=predict_options)
    t0 = time.perf_counter()
    metrics = train.train_and_evaluate(cfg, str(run_dir))
    t1 = time.perf_counter()
    paths = predict.predict_workdir(str(run_dir), lm_options=dict(predict_options))
    t2 = time.perf_counter()
    depth = (predict.decoder_depth_attention(run_dir, domains, depth_rows)
             if model.routed and depth_rows else {})
    return {"metrics": metrics, "train_seconds": t1 - t0, "predict_seconds": t2 - t1,
            "paths": {k: str(v) for k, v in paths.items()},
            "depth_attention": depth}


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


def cell_tokens(t: Mapping[str, np.ndarray], plan: Plan, name: str = "predictions"
                ) -> dict[str, np.ndarray]:
    """The diagnostics' tokens of one split: whole clusters (`diagnostics.cluster_unit`: documents
    or rows) up to `diag_max_tokens` (seeded), so a cluster is never cut.

    Raises:
      ValueError: document clusters on predictions without `doc_id` (`predictions.cluster_ids`), or
        fewer than 2 clusters.
    """
    unit = plan.tests.cluster_unit
    clusters = predictions.cluster_ids(t, unit, name)
    idx = sequences.thin_sequences(clusters, plan.tokens.max_tokens, seed=plan.tests.seed)
    n_clusters = len(np.unique(clusters[idx]))
    if n_clusters < 2:
        raise ValueError(
            f"diagnostics.cluster_unit: the {name} tokens hold {n_clusters} {unit}; the "
            "recommended test needs at least 2 clusters (evaluate more documents: raise "
            "data.max_bytes in model_overrides, or set diagnostics.cluster_unit=row)")
    return predictions.subset(t, idx)


def probe_selection(
    calib: Mapping[str, np.ndarray], domains: Mapping[str, Mapping[str, np.ndarray]], *,
    seed: int, plan: Plan,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The token indices the probes use (`probe_run`, `temperature.temperature_run`): calib
    thinned to `probe_max_calib_tokens`, each domain to `probe_max_test_tokens`, whole sequences
    seeded by the run's seed (`sequences.thin_sequences`). Returns (calib index, {domain: index})."""
    return (sequences.thin_sequences(calib["seq_id"], plan.tokens.probe_max_calib_tokens, seed=seed),
            {d: sequences.thin_sequences(t["seq_id"], plan.tokens.probe_max_test_tokens, seed=seed)
             for d, t in domains.items()})


def probe_run(
    calib: Mapping[str, np.ndarray], domains: Mapping[str, Mapping[str, np.ndarray]], *,
    seed: int, plan: Plan,
) -> dict[str, Any]:
    """Probes fitted on the selected calib tokens and scored on each domain's selected tokens
    (`probe_selection`; `compare.token_comparison`)."""
    cal_index, test_index = probe_selection(calib, domains, seed=seed, plan=plan)
    return compare.token_comparison(
        predictions.subset(calib, cal_index),
        {d: predictions.subset(t, test_index[d]) for d, t in domains.items()}, seed=seed,
        bandwidth_rules=plan.bandwidth_rules, sweep_multiples=plan.sweep_multiples,
        multiples=plan.tokens.multiples, n_bins=plan.tests.n_bins)
