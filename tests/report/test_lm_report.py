"""The LM report's verdicts and tables from a synthetic LM results dict (no model, no engine)."""

from __future__ import annotations

import importlib
import json

import numpy as np

from routecal import report
from routecal.report import lm
from routecal.stats import seeds

lm_verdicts = importlib.import_module("routecal.report.verdicts")  # the module, not the function


def _results(rng):
    tests, power = [], []
    for test in ("within_bin", "conditional"):
        for d in ("in", "far"):
            for a in ("full", "block"):
                for s in (0, 1, 2):
                    for f in ("H_mean", "depth_var_mean_vs_seq"):
                        p = float(rng.uniform(0, 0.2))
                        tests.append({"test": test, "domain": d, "arch": a, "seed": s,
                                      "feature": f, "statistic": float(rng.normal()),
                                      "p_value": p, "p_holm": min(1.0, 12 * p),
                                      "p_bh": min(1.0, 3 * p)})
                    power.append({"test": test, "domain": d, "arch": a, "seed": s,
                                  "mdg": float(rng.uniform(0.02, 0.1)),
                                  "curve": {"gap": [0.01, 0.1], "power": [0.05, 0.9]}})
    ece = {"ar": [0.030, 0.031, 0.032], "conf": [0.040, 0.041, 0.042],
           "full": [0.02, 0.05, 0.03], "cap": [0.03, 0.04, 0.035], "shuf": [0.03, 0.04, 0.035]}
    names = {"ar": ("nw_ar_condcal", "cv_nll"), "conf": ("nw_confidence", "cv_nll"),
             "full": ("mlp_full", "-"), "cap": ("mlp_capacity_matched", "-"),
             "shuf": ("mlp_shuffled_sequences", "-")}
    summary = [{"arch": "full", "probe": names[k][0], "bandwidth_rule": names[k][1],
                **{m: seeds.seed_band(v) for m in ("ece", "nll", "brier", "worst_tertile_ece")}}
               for k, v in ece.items()]
    runs = [{"arch": a, "seed": s, "splits": {sp: {"accuracy": acc, "ece": 0.05, "n_tokens": 100}
                                              for sp, acc in (("test", 0.5), ("far", 0.3))}}
            for a in ("full", "block") for s in (0, 1, 2)]
    return {"meta": {"title": "t", "domains": {"in": "test", "far": "far"}, "seeds": [0, 1, 2],
                     "config": {"diagnostics": {"power": 0.8}}},
            "runs": runs,
            "diagnostics": {"alpha": 0.05, "tests": tests, "summary": []},
            "power": power,
            "probes": {"domains": {"in": {"summary": summary, "n_test": 100}}}}


def test_diagnostics_verdict_counts_and_names_control_and_power():
    res = _results(np.random.default_rng(0))
    items = lm_verdicts.diagnostics_items(res)
    # (domain x test) + the paper test's measured inflation (issue 22) + the rule
    assert len(items) == 2 * 2 + 2
    assert items[-2].startswith("Caveat on the paper's within-bin test")
    for item in items[:-2]:
        domain, test = item.split(" domain, ")[0], item.split(", ")[1].split(" test")[0]
        rows = [r for r in res["diagnostics"]["tests"] if r["domain"] == domain
                and r["test"] == test]
        raw = sum(r["p_value"] < 0.05 for r in rows)
        holm = sum(r["p_holm"] < 0.05 for r in rows)
        assert f"{raw} of {len(rows)} reject" in item and f"{holm} after Holm" in item
        mdg = [p["mdg"] for p in res["power"] if p["domain"] == domain and p["test"] == test]
        assert f">= {np.median(mdg):.3f}" in item and "control:" in item
    assert items[-1].startswith("Seed-band rule")


def test_probe_verdicts_apply_the_seed_band_rule():
    items = lm_verdicts.token_probes_items(_results(np.random.default_rng(1)))
    text = items[0]
    # AR-CondCal's band [0.030, 0.032] lies below the confidence-only band [0.040, 0.042]: better.
    assert "AR-CondCal ECE 0.0310 vs control NW on confidence 0.0410" in text
    assert "[0.0400, 0.0420]: better" in text
    # The full MLP's band [0.02, 0.05] overlaps both MLP controls: within seed band.
    assert text.count("within seed band") == 2 and "shuffled across sequences" in text
    assert items[-1].startswith("Seed-band rule")


def test_report_files_and_glance_first(tmp_path):
    res = _results(np.random.default_rng(2))
    res["meta"]["unit"] = "token"  # the token unit's sections
    res["verdicts"] = lm_verdicts.verdicts(res)
    assert set(res["verdicts"]) == {"diagnostics", "probes", "domains"}
    (tmp_path / "results.json").write_text(json.dumps(res))
    paths = report.write_report(tmp_path)
    html = paths["html"].read_text()
    assert html.index("At a glance") < html.index("Verdicts") < html.index("Trained decoders")
    assert (tmp_path / "figures" / "power.png").exists()
    glance = lm.glance(res)
    assert [r[0] for r in glance.rows] == ["in", "far"] and glance.rows[0][-1] == "full: better"
    assert glance.rows[0][3] == "-"  # results of an older routecal: no cluster counts
    res["diagnostics"]["clusters"] = {"in": {"cluster_unit": "document", "n_clusters": [12, 12],
                                             "n_eff_clusters": [8.25, 9.0]}}
    glance = lm.glance(res)
    assert glance.header[3].startswith("clusters") and glance.rows[1][3] == "-"
    assert glance.rows[0][3] == "document: 12 (effective 8.2-9.0)"
    assert "clusters: documents, 12 (effective 8.2)" in lm_verdicts.diagnostics_items(res)[1]


def test_diagnostics_verdicts_are_table_rows_with_the_sentence_in_details(tmp_path):
    res = _results(np.random.default_rng(3))
    res["meta"]["unit"] = "token"
    rows = lm_verdicts.diagnostics_rows(res)
    items = lm_verdicts.diagnostics_items(res)
    assert [r["sentence"] for r in rows] == items[:len(rows)]  # one computation, two views
    for r in rows:
        ts = [t for t in res["diagnostics"]["tests"] if (t["domain"], t["test"]) ==
              (r["domain"], r["test"])]
        raw, holm, bh = (sum(t[k] < 0.05 for t in ts) for k in ("p_value", "p_holm", "p_bh"))
        assert r["rejections"] == f"{raw} / {holm} / {bh} of {len(ts)}"
        assert r["verdict"] == ("evidence" if holm else "weak (BH only)" if bh else "no evidence")
        mdg = [p["mdg"] for p in res["power"] if (p["domain"], p["test"]) ==
               (r["domain"], r["test"])]
        assert r["detectable_gap"] == f"{np.median(mdg):.3f}"
    (tmp_path / "results.json").write_text(json.dumps(res))
    paths = report.write_report(tmp_path)
    for text in (paths["markdown"].read_text(), paths["html"].read_text()):
        assert text.count("<details><summary>") == len(rows)
        assert "rejections (raw / Holm / BH of cells)" in text
        assert "- " + rows[0]["sentence"] not in text  # the sentence is no longer a bullet
