"""Bring your own traces: the diagnostic grid and the probe comparison on any model's traces.

    routecal diagnose --predictions calib.npz [--test-predictions test.npz] [--out DIR]
    routecal diagnose --predictions W/predictions/tokens/test/        # token shards
    routecal diagnose --predictions traces.npz    # confidence, correct, routing_*, doc_id

From Python: `routecal.study.diagnose.diagnose_predictions(path, test_path=None)`. Inputs
(`routecal.files.predictions.load_traces`): a predictions npz (probs, labels and routing
summaries: the grid and the probes), or per-token / per-example traces, a token-shard directory or
an npz with `confidence`, `correct`, routing columns and optional `doc_id` / `seq_id` cluster ids
(the grid, with the recommended test and the detectable gap clustered by `doc_id`, else `seq_id`;
the probes need probabilities and are skipped with a note).
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from routecal import report
from routecal.files.predictions import (
    check_compatible,
    constant_features,
    load_traces,
    routing_features,
    routing_predictions,
)
from routecal.probes.compare import probe_comparison
from routecal.probes.data import PROFILE
from routecal.study import example_unit, grid, registry
from routecal.study.stages import to_json, versions, write_json

BANDWIDTH_RULES = ("scott", "cv_nll", "oracle_ece")
SWEEP_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0)


def split_predictions(
    preds: Mapping[str, np.ndarray], *, seed: int, fraction: float = 0.5
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Splits a predictions dict into (first, second) parts of the examples, at random (seeded).

    Arrays with N rows are split; everything else is copied to both parts.
    """
    n = len(preds["labels"])
    idx = np.random.default_rng(seed).permutation(n)
    cut = int(round(fraction * n))
    parts = []
    for sel in (np.sort(idx[:cut]), np.sort(idx[cut:])):
        parts.append({
            k: (np.asarray(v)[sel] if np.ndim(v) >= 1 and np.shape(v)[0] == n else v)
            for k, v in preds.items()
        })
    return parts[0], parts[1]


def _without(preds: Mapping[str, np.ndarray], skip: list[str]) -> dict[str, np.ndarray]:
    """`preds` reduced to probs, labels and its routing features not in `skip` (see
    `predictions.routing_predictions`), keeping the H profile when none of its features is skipped."""
    keep = {f: v for f, v in routing_features(preds).items() if f not in skip}
    out = routing_predictions(preds, keep)
    if PROFILE in preds and not {"H_mean", "H_mid", "H_last"} & set(skip):
        out[PROFILE] = preds[PROFILE]
    return out


def diagnose_predictions(
    path: str | pathlib.Path, test_path: str | pathlib.Path | None = None,
    out_dir: str | pathlib.Path | None = None, n_permutations: int = 2000, seed: int = 0,
    n_bins: int = 15, n_groups: int = 3, alpha: float = 0.05,
) -> dict[str, Any]:
    """The diagnostic grid on every routing feature of `path`, then the probe comparison.

    Args:
      path: a predictions npz, a traces npz or a token-shard directory (module docstring); the
        diagnostics run on all of it.
      test_path: optional held-out predictions npz: the probes are fitted on `path` and scored on
        it. Without it, `path` is split in two halves at random (seeded): probes are fitted on one
        and scored on the other. (Traces without probabilities: no probes.)
      out_dir: where results.json and the report go (default: `<path stem>_routecal/` beside it).
    Returns:
      the results dict (also written to `out_dir/results.json`, with report.md / report.html).
      A routing feature that does not vary is skipped, with a note in `meta.notes`.

    Raises:
      ValueError: one line naming the file: not readable traces (missing, corrupt, NaN in a
        column, lengths that differ), no routing summaries, or calib and test predictions that
        disagree (classes, routing arrays).
    """
    p = pathlib.Path(path)
    out = pathlib.Path(out_dir) if out_dir else p.with_name(p.stem + "_routecal")
    traces = load_traces(p)
    held = None if test_path is None else load_traces(test_path)
    preds = traces["predictions"]
    held_out = None if held is None else held["predictions"]
    if preds is not None and held_out is not None:  # same task and routing arrays, or no probes
        check_compatible(preds, held_out, (str(p), str(test_path)))
    conf, correct = traces["confidence"], traces["correct"]
    routing = traces["routing"]
    rf = routing_features(routing)  # tokens (seq_id): with the position-aware features
    if not rf:
        raise ValueError(
            f"predictions: {p.name} has no routing summaries (H, H_norm, depth_var, depth_mean or "
            "routing_<name> arrays)"
        )
    const = set(constant_features(rf))
    notes = []
    fit = test = None
    if preds is not None and (test_path is None or held_out is not None):
        fit, test = (preds, held_out) if held_out is not None else split_predictions(preds,
                                                                                     seed=seed)
        const |= {f for d in (fit, test) for f in constant_features(routing_features(d))}
    else:
        notes.append("probes skipped: they need probabilities (probs and labels) in "
                     + ("both files" if test_path is not None else "the file"))
    const = sorted(const)
    notes = [f"routing feature {f!r} does not vary over the examples (or is not finite): skipped"
             for f in const] + notes
    if traces["cluster_key"] is not None:
        notes.append(f"clusters: {traces['cluster_key']} ({len(np.unique(traces['clusters']))} "
                     "clusters; the recommended test and the detectable gap flip signs per cluster)")
    for note in notes:
        print(f"routecal diagnose: {p.name}: {note}", file=sys.stderr)
    if const and fit is not None:  # the probes see only the varying features (and the profile)
        fit, test = (_without(d, const) for d in (fit, test))
    out.mkdir(parents=True, exist_ok=True)
    features = sorted(f for f in rf if f not in const)  # a feature's key: by name, not column
    rows = grid.Rows(conf, correct, rf, traces["clusters"], traces["cluster_key"])
    settings = registry.TestSettings(n_permutations=n_permutations, n_bins=n_bins,
                                     n_groups=n_groups, alpha=alpha, seed=seed,
                                     paper_power_datasets=40, paper_power_permutations=100)
    cell = [("all", "model", 0)]
    diag = grid.run(cell, features, cell, lambda c: rows, settings)
    probes_out: dict[str, Any] = {}
    if fit is not None and min(len(fit["labels"]), len(test["labels"])) >= 2 * n_bins:
        pc = probe_comparison(fit, test, seed=seed, bandwidth_rules=BANDWIDTH_RULES,
                              sweep_multiples=SWEEP_MULTIPLES, n_bins=n_bins)
        probes_out = example_unit.probes_section(SWEEP_MULTIPLES, {("model", 0): pc})
    results = {
        "meta": {"title": f"routecal diagnose: {p.name}", "versions": versions(),
                 "source": str(p), "n_examples": int(len(conf)), "notes": notes,
                 "clusters": traces["cluster_key"]},
        **diag,
        "probes": probes_out,
    }
    results["verdicts"] = report.verdicts(to_json(results))
    results = write_json(out / "results.json", results)
    report.write_report(out)
    return results
