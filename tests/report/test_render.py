"""report: tables, figures and verdicts from a results dict (no model needed)."""

import json

import numpy as np
import pytest

from routecal import report


def _results(rng, n_reject_holm=0):
    tests = []
    for arch in ("full", "block"):
        for seed in range(3):
            for f in ("H_mean", "depth_var_mean"):
                p = float(rng.uniform(0.06, 1.0))
                tests.append({"arch": arch, "seed": seed, "feature": f, "n": 500,
                              "statistic": float(rng.uniform(0, 0.1)), "p_value": p,
                              "p_holm": min(1.0, 12 * p), "p_bh": min(1.0, 2 * p)})
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
                        "rejections": [{"arch": "full", "feature": "H_mean", "n_seeds": 3,
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
        "vmoer": {"rows": [
            {"router": "deterministic", **{m: report.seed_band([0.5, 0.6]) for m in
                                            ("accuracy", "stability", "ece", "ood_auroc")}},
            {"router": "vmoer_logit", **{m: report.seed_band([0.7, 0.8]) for m in
                                          ("accuracy", "stability", "ece", "ood_auroc")},
             "flops_overhead_percent": 0.5}]},
    }


def test_seed_band_matches_numpy():
    v = [0.1, 0.3, 0.2, 0.7]
    b = report.seed_band(v)
    assert b["mean"] == pytest.approx(np.mean(v))
    assert b["std"] == pytest.approx(np.std(v, ddof=1))
    assert (b["min"], b["max"], b["n"]) == (0.1, 0.7, 4)
    assert report.seed_band([0.4])["std"] == 0.0


@pytest.mark.parametrize("n_holm", [0, 2])
def test_diagnostics_verdict_counts_rejections(n_holm):
    res = _results(np.random.default_rng(0), n_reject_holm=n_holm)
    tests = res["diagnostics"]["tests"]
    v = report.diagnostics_verdict(res["diagnostics"])
    raw = sum(t["p_value"] < 0.05 for t in tests)
    assert f"{raw} of {len(tests)}" in v
    assert f"{n_holm} after Holm" in v
    assert ("no calibration evidence" in v) == (n_holm == 0)


def test_vmoer_verdict_relative_change():
    res = _results(np.random.default_rng(0))
    v = report.vmoer_verdict(res["vmoer"])
    # stability mean 0.75 vs 0.55: +36.4%, bands [0.7, 0.8] and [0.5, 0.6] separate.
    assert "stability +36.4% (better, seed bands separate)" in v
    assert "ece +36.4% (worse" in v


def test_write_report_tables_and_figures(tmp_path):
    res = _results(np.random.default_rng(1))
    (tmp_path / "results.json").write_text(report.dumps(res))
    (tmp_path / "stages").mkdir()
    t0 = res["diagnostics"]["tests"][0]
    np.savez(tmp_path / "stages" / "nulls.npz",
             **{f"{t0['arch']}|{t0['seed']}|{t0['feature']}": np.linspace(0, 0.1, 50)})
    out = report.write_report(tmp_path)
    md = out["markdown"].read_text()
    html = out["html"].read_text()
    for t in res["diagnostics"]["tests"]:
        assert report._fmt(t["p_value"]) in md
    assert md.count("![") == 5  # reliability, nulls, bandwidth, depth, vmoer
    assert html.count("data:image/png;base64,") == 5
    assert "src='figures/" not in html  # self-contained
    for f in ("reliability", "permutation_nulls", "bandwidth_sensitivity", "depth_attention",
              "vmoer"):
        assert (tmp_path / "figures" / f"{f}.png").stat().st_size > 1000
    csv_rows = (tmp_path / "tables" / "diagnostics_tests.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + len(res["diagnostics"]["tests"])


def test_write_report_without_results_is_clear(tmp_path):
    with pytest.raises(ValueError, match="results.json"):
        report.write_report(tmp_path)


def test_to_json_handles_numpy_and_nan():
    out = json.loads(report.dumps({"a": np.float32(1.5), "b": np.arange(3), "c": float("nan")}))
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": None}
