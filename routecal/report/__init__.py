"""The report: verdicts computed from numbers (`verdicts`), tables and md/html (`render`), figures
(`figures`). It draws only from a results dict (`W/results.json`)."""

from routecal.files.records import dumps, to_json
from routecal.report.figures import figures
from routecal.report.render import Table, _fmt, tables, write_report  # noqa: F401
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
