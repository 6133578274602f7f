"""report.vmoer_lm.band_cell: one seed-band cell of the VMoER tables, written out by hand."""

from routecal.report.vmoer_lm import band_cell


def test_band_cell_formats_band_change_and_verdict():
    b = {"mean": 0.5, "std": 0.01, "min": 0.49, "max": 0.51}
    assert band_cell(b) == "0.5000 ± 0.0100 [0.4900, 0.5100]"
    b |= {"rel_change_pct": -12.34, "verdict": "better"}
    assert band_cell(b) == "0.5000 ± 0.0100 [0.4900, 0.5100] (-12.3%)"
    assert band_cell(b, verdict=True) == "0.5000 ± 0.0100 [0.4900, 0.5100] (-12.3%, better)"
    assert band_cell(None) == band_cell({}) == "n/a"
