"""report.render and report.figures: tables, figures, md/html from a results dict (no model)."""

import json

import numpy as np
import pytest

from routecal import report
from routecal.report import table


def test_write_report_tables_and_figures(tmp_path, results):
    res = results(np.random.default_rng(1))
    (tmp_path / "results.json").write_text(report.dumps(res))
    out = report.write_report(tmp_path)
    md = out["markdown"].read_text()
    html = out["html"].read_text()
    for t in res["diagnostics"]["tests"]:
        assert table.fmt(t["p_value"]) in md
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


def test_disk_full_during_the_report_keeps_the_old_one_and_names_the_file(
    tmp_path, results, monkeypatch
):
    import errno

    from routecal.files import workdir

    (tmp_path / "results.json").write_text(report.dumps(results(np.random.default_rng(2))))
    out = report.write_report(tmp_path)
    before = {p: p.read_bytes() for p in (out["markdown"], out["html"])}
    real_fsync = workdir.os.fsync

    def fsync(fd):  # the disk fills up while report.html is written
        if "report.html" in str(workdir.os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(workdir.os, "fsync", fsync)
    (tmp_path / "results.json").write_text(report.dumps(results(np.random.default_rng(3))))
    with pytest.raises(OSError, match=r"cannot write report\.html: No space left") as e:
        report.write_report(tmp_path)
    assert e.value.filename == str(out["html"]) and e.value.errno == errno.ENOSPC
    assert out["html"].read_bytes() == before[out["html"]]  # the old report, whole
    assert not [p.name for p in tmp_path.rglob("*.tmp")]  # no temp file left behind
    (tmp_path / "results.json").write_text('{"meta": {"tit')
    with pytest.raises(ValueError, match=r"results: .*results\.json' is not valid JSON"):
        report.write_report(tmp_path)
