"""Report-test fixtures: a synthetic results dict (no model needed) and experiments/ scripts
loaded as modules."""

import importlib.util
import pathlib

import numpy as np
import pytest

from routecal import report


def results_dict(rng, n_reject_holm=0):
    tests = []
    for arch in ("full", "block"):
        for seed in range(3):
            for f in ("H_mean", "depth_var_mean"):
                p = float(rng.uniform(0.06, 1.0))
                tests.append({"arch": arch, "seed": seed, "feature": f, "n": 500,
                              "statistic": float(rng.uniform(0, 0.1)), "p_value": p,
                              "p_holm": min(1.0, 12 * p), "p_bh": min(1.0, 2 * p)})
    tests[0]["null"] = np.linspace(0, 0.1, 50).tolist()  # nulls travel inside the results
    for t in tests[:n_reject_holm]:
        t["p_value"], t["p_holm"], t["p_bh"] = 1e-4, 1e-3, 1e-3
    summary = []
    for probe in ("nw_confidence", "nw_ar_condcal", "nw_entropy"):
        vals = rng.uniform(0.01, 0.05, size=3)
        summary.append({"arch": "full", "probe": probe, "bandwidth_rule": "cv_nll",
                        "optimistic": False,
                        **{m: report.seed_band(vals) for m in
                           ("ece", "nll", "brier", "worst_tertile_ece")}})
    return {
        "meta": {"title": "t", "versions": {"jax": "x"}},
        "runs": [{"arch": "full", "seed": 0, "test_accuracy": 0.97, "test_ece": 0.02,
                  "test_nll": 0.1, "train_seconds": 3.0}],
        "diagnostics": {"alpha": 0.05, "n_permutations": 100, "tests": tests,
                        "summary": [{"arch": "full", "feature": "H_mean", "n_seeds": 3,
                                        "n_reject_raw": 0, "n_reject_holm": 0,
                                        "n_reject_bh": 0, "mean_statistic": 0.01,
                                        "min_p": 0.2}]},
        "probes": {"summary": summary,
                   "reliability": {"nw_confidence": {"count": [0, 5, 10],
                                                     "mean_confidence": [0.0, 0.5, 0.9],
                                                     "accuracy": [0.0, 0.4, 0.95]}},
                   "bandwidth_sweep": {"full": {"multiples": [0.5, 1, 2],
                                                "ece": {"nw_confidence": [[0.03, 0.02, 0.025]] * 2}}}},
        "depth_attention": {"full": {"alpha_mean": [[1, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]],
                                     "n_sources": [1, 2, 3], "sublayer_names": ["a0", "m0", "r"]}},
        "vmoer": {"table": {  # the section's seed-band table (`study.vmoer.assemble`)
            "det": {m: report.seed_band([0.5, 0.6]) for m in
                    ("accuracy", "stability", "ece", "ood_auroc")},
            "mfvr": {**{m: report.seed_band([0.7, 0.8]) for m in
                        ("accuracy", "stability", "ece", "ood_auroc")},
                     "flops_overhead_pct": report.seed_band([0.5, 0.5])}}},
    }


@pytest.fixture
def results():
    return results_dict


ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def experiment_script():
    """Returns load(name) -> the module experiments/<name>.py."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
