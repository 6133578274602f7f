"""The report: verdicts computed from numbers (`verdicts`), the one page renderer (`render`), figures
(`figures`), the token unit's sections (`lm`). It draws only from a results dict
(`W/results.json`); `write_report` takes the sections the results' unit holds."""

import pathlib

from routecal.files.records import dumps, to_json
from routecal.report import lm, render
from routecal.report.figures import figures
from routecal.report.render import tables
from routecal.report.table import Table
from routecal.report.verdicts import (
    ALPHA_DEFAULT,
    diagnostics_verdict,
    probes_verdict,
    verdicts,
    vmoer_verdict,
)
from routecal.stats.seeds import seed_band

__all__ = [
    "ALPHA_DEFAULT",
    "Table",
    "diagnostics_verdict",
    "dumps",
    "figures",
    "probes_verdict",
    "seed_band",
    "tables",
    "to_json",
    "verdicts",
    "vmoer_verdict",
    "write_report",
]


def write_report(workdir: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes report.md, report.html, tables/*.csv and figures/*.png from W/results.json: the
    sections of its unit (`meta.unit`: tokens `lm.sections`, else `render.example_sections`)
    through the one renderer (`render.write_page`). Returns the paths ("markdown", "html",
    "figures", "tables")."""
    w = pathlib.Path(workdir)
    results = render.read_results(w)
    unit = results.get("meta", {}).get("unit")
    parts = (lm.sections if unit == "token" else render.example_sections)(results, w)
    return render.write_page(w, results, **parts)
