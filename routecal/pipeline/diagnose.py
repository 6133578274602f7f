"""Bring your own traces: the diagnostic grid and the probe comparison on any model's npz.

    routecal diagnose --predictions calib.npz [--test-predictions test.npz] [--out DIR]

From Python: `routecal.pipeline.diagnose.diagnose_predictions(path, test_path=None)`. The files
follow the one schema in `routecal.predictions` (probs, labels and any routing summaries).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from routecal import report
from routecal.pipeline import grid
from routecal.pipeline.stages import to_json, versions, write_json
from routecal.predictions import confidence_correct, load_predictions, routing_features
from routecal.probes.compare import probe_comparison, summarise_probes

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


def diagnose_predictions(
    path: str | pathlib.Path, test_path: str | pathlib.Path | None = None,
    out_dir: str | pathlib.Path | None = None, n_permutations: int = 2000, seed: int = 0,
    n_bins: int = 15, n_groups: int = 3, alpha: float = 0.05,
) -> dict[str, Any]:
    """The diagnostic grid on every routing feature of `path`, then the probe comparison.

    Args:
      path: predictions npz; the diagnostics run on all of it.
      test_path: optional held-out predictions npz: the probes are fitted on `path` and scored on
        it. Without it, `path` is split in two halves at random (seeded): probes are fitted on one
        and scored on the other.
      out_dir: where results.json and the report go (default: `<path stem>_routecal/` beside it).
    Returns:
      the results dict (also written to `out_dir/results.json`, with report.md / report.html).
    """
    p = pathlib.Path(path)
    out = pathlib.Path(out_dir) if out_dir else p.with_name(p.stem + "_routecal")
    preds = load_predictions(p)
    conf, correct = confidence_correct(preds)
    rf = routing_features(preds)
    if not rf:
        raise ValueError(
            f"predictions: {p.name} has no routing summaries (H, H_norm, depth_var, depth_mean or "
            "routing_<name> arrays)"
        )
    out.mkdir(parents=True, exist_ok=True)
    cells = [grid.Cell("model", 0, f, conf, correct, v) for f, v in rf.items()]
    settings = grid.GridSettings(n_permutations, n_bins, n_groups, alpha, seed)
    diag = grid.diagnostic_grid(cells, settings)
    if test_path is not None:
        fit, test = preds, load_predictions(test_path)
    else:
        fit, test = split_predictions(preds, seed=seed)
    probes_out: dict[str, Any] = {}
    if len(fit["labels"]) >= 2 * n_bins and len(test["labels"]) >= 2 * n_bins:
        pc = probe_comparison(fit, test, seed=seed, bandwidth_rules=BANDWIDTH_RULES,
                              sweep_multiples=SWEEP_MULTIPLES, n_bins=n_bins)
        rows = [{**r, "arch": "model", "seed": 0} for r in pc["rows"]]
        sweep = {"multiples": list(SWEEP_MULTIPLES), "ece": {k: [v] for k, v in pc["sweep"].items()}}
        probes_out = {"rows": rows, "summary": summarise_probes(rows),
                      "reliability": pc["reliability"], "bandwidth_sweep": {"model": sweep}}
    results = {
        "meta": {"title": f"routecal diagnose: {p.name}", "versions": versions(),
                 "source": str(p), "n_examples": int(len(conf))},
        "diagnostics": diag,
        "probes": probes_out,
    }
    results["verdicts"] = report.verdicts(to_json(results))
    results = write_json(out / "results.json", results)
    report.write_report(out)
    return results
