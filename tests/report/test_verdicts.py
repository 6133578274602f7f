"""report.verdicts: decisions from numbers, each naming the seed-band rule it uses."""

import numpy as np
import pytest

from routecal import report
from routecal.stats import seeds


@pytest.mark.parametrize("n_holm", [0, 2])
def test_diagnostics_verdict_counts_rejections(n_holm, results):
    res = results(np.random.default_rng(0), n_reject_holm=n_holm)
    tests = res["diagnostics"]["tests"]
    v = report.diagnostics_verdict(res["diagnostics"])
    raw = sum(t["p_value"] < 0.05 for t in tests)
    assert f"{raw} of {len(tests)}" in v
    assert f"{n_holm} after Holm" in v
    assert ("no calibration evidence" in v) == (n_holm == 0)


def test_vmoer_verdict_relative_change(results):
    res = results(np.random.default_rng(0))
    v = report.vmoer_verdict(res["vmoer"])
    # stability mean 0.75 vs 0.55: +36.4%, bands [0.7, 0.8] and [0.5, 0.6] separate.
    assert "stability +36.4% (better mean; better)" in v
    assert "ece +36.4% (worse mean; worse)" in v
    assert seeds.RULE in v


def test_probes_verdict_applies_the_rule(results):
    res = results(np.random.default_rng(0))
    look = {s["probe"]: s for s in res["probes"]["summary"]}
    rule = seeds.compare_bands(look["nw_ar_condcal"]["ece"], look["nw_confidence"]["ece"],
                               higher_is_better=False)
    v = report.probes_verdict(res["probes"])
    assert seeds.RULE in v
    expected = "within the confidence-only seed band" if rule == "within seed band" else rule
    assert expected in v
    # separate bands: AR-CondCal lower ECE everywhere -> "better"
    look["nw_ar_condcal"]["ece"] = seeds.seed_band([0.001, 0.002, 0.003])
    look["nw_confidence"]["ece"] = seeds.seed_band([0.02, 0.03, 0.04])
    assert "AR-CondCal is better than confidence-only" in report.probes_verdict(res["probes"])


def test_diagnostics_verdict_across_seeds_names_the_rule(results):
    res = results(np.random.default_rng(0))
    rej = res["diagnostics"]["summary"][0]
    rej["statistic_band"] = seeds.seed_band([0.05, 0.06, 0.07])
    rej["null_mean_band"] = seeds.seed_band([0.01, 0.02, 0.02])
    rej["vs_null"] = seeds.compare_bands(rej["statistic_band"], rej["null_mean_band"],
                                         higher_is_better=True)
    v = report.diagnostics_verdict(res["diagnostics"])
    assert "1 of 1 (model, feature) cells" in v and seeds.RULE in v





def test_no_evidence_verdict_states_the_detectable_gap_and_both_tests(results):
    res = results(np.random.default_rng(0), n_reject_holm=0)
    diag = res["diagnostics"]
    base = [dict(t, test="within_bin") for t in diag["tests"]]
    cond = [dict(t, test="conditional", p_value=0.5, p_holm=1.0, p_bh=1.0) for t in base]
    gaps = [{"test": "conditional", "domain": "all", "arch": t["arch"], "seed": t["seed"],
             "mdg": g} for t, g in zip(base, np.linspace(0.1, 0.3, len(base)), strict=True)]
    diag["tests"] = base + cond
    v = report.diagnostics_verdict(diag, gaps, 0.8)
    assert "no calibration evidence" in v
    assert v.index("conditional (recommended)") < v.index("within-bin permutation (paper)")
    assert f"0 of {len(cond)} conditional (recommended) tests" in v
    assert f"{np.median(np.linspace(0.1, 0.3, len(base))):.3f} (median over {len(base)} cells" in v
    assert "power 0.8" in v


def test_example_diagnostics_verdict_is_a_table_row_per_test(tmp_path, results):
    """Build 5: the example report's diagnostics verdict is one row per (domain, test) with the
    rejection counts recomputed here and the full sentence in a <details> under its word."""
    import json

    res = results(np.random.default_rng(5), n_reject_holm=2)
    for t in res["diagnostics"]["tests"]:
        t["test"] = "within_bin"
    res["power"] = [{"test": "conditional", "domain": "all", "arch": "full", "seed": 0,
                     "mdg": 0.07}]
    from routecal.report.verdicts import diagnostics_rows

    rows = diagnostics_rows(res)
    tests = [t for t in res["diagnostics"]["tests"] if "p_value" in t]
    raw = sum(t["p_value"] < 0.05 for t in tests)
    holm = sum(t["p_holm"] < 0.05 for t in tests)
    assert [(r["domain"], r["test"]) for r in rows] == [("all", "within_bin")]
    assert rows[0]["rejections"].startswith(f"{raw} / {holm} / ")
    assert rows[0]["verdict"] == "evidence" and holm == 2
    res["verdicts"] = report.verdicts(res)
    (tmp_path / "results.json").write_text(json.dumps(res))
    page = report.write_report(tmp_path)["html"].read_text()
    assert f"<details><summary>evidence</summary>{rows[0]['sentence'][:40]}" in page
