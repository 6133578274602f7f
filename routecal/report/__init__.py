"""The report: verdicts computed from numbers and their rendering (tables, figures, md/html)."""

from routecal.report.render import (  # noqa: F401
    ALPHA_DEFAULT,
    Table,
    _fmt,  # noqa: F401
    diagnostics_verdict,
    dumps,
    figures,
    probes_verdict,
    seed_band,
    tables,
    to_json,
    verdicts,
    vmoer_verdict,
    write_report,
)
