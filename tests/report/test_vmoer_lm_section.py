"""report.vmoer_lm: one seed-band cell of the VMoER tables, written out by hand; the section's
table as the example report's rows."""

import numpy as np
import pytest

from routecal.report.vmoer_lm import band_cell, rows
from routecal.stats import seeds


def test_band_cell_formats_band_change_and_verdict():
    b = {"mean": 0.5, "std": 0.01, "min": 0.49, "max": 0.51}
    assert band_cell(b) == "0.5000 ± 0.0100 [0.4900, 0.5100]"
    b |= {"rel_change_pct": -12.34, "verdict": "better"}
    assert band_cell(b) == "0.5000 ± 0.0100 [0.4900, 0.5100] (-12.3%)"
    assert band_cell(b, verdict=True) == "0.5000 ± 0.0100 [0.4900, 0.5100] (-12.3%, better)"
    assert band_cell(None) == band_cell({}) == "n/a"


def test_rows_of_the_section_table_name_det_and_give_changes_against_it():
    per_run = {"det": {0: {"ece": 0.20, "accuracy": 0.9, "flops_overhead_pct": 0.0},
                       1: {"ece": 0.30, "accuracy": 0.8, "flops_overhead_pct": 0.0}},
               "mfvr_retrofit": {0: {"ece": 0.10, "accuracy": 0.9, "flops_overhead_pct": 1.5},
                                 1: {"ece": 0.15, "accuracy": 0.9, "flops_overhead_pct": 1.5}}}
    table = seeds.band_table(per_run, ("ece", "accuracy", "nll", "flops_overhead_pct"), {"ece"})
    det, mfvr = rows({"table": table})
    assert det["router"] == "deterministic" and det["rel_change"] == {}
    assert det["ece"] == {"mean": 0.25, "std": pytest.approx(np.std([0.2, 0.3], ddof=1)),
                          "min": 0.2, "max": 0.3, "n": 2}
    assert "nll" not in det and "flops_overhead_percent" in det  # only the metrics it has
    assert mfvr["router"] == "mfvr_retrofit" and mfvr["flops_overhead_percent"] == 1.5
    assert mfvr["rel_change"]["ece"] == pytest.approx(100 * (0.125 / 0.25 - 1))  # -50%
    assert mfvr["rel_change"]["accuracy"] == pytest.approx(100 * (0.9 / 0.85 - 1))
    assert rows({}) == []  # no section
