"""The paper test's measured inflation, cited by the verdicts from the benchmark's own output.

`benchmarks/validity.py --json routecal/report/validity.json` writes the level and power table of
`stats.validity` (rates, 99% Clopper-Pearson intervals, datasets, the command); the verdicts quote
the rows on which routing tracks confidence non-linearly (issue 22) so no number is typed by hand.
With no file (e.g. a fresh checkout before the benchmark ran) the caveat names the benchmark only.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

PATH = pathlib.Path(__file__).with_name("validity.json")
_TRACKING = ("tracking null", "piled near 1")


@functools.lru_cache(maxsize=4)
def load(path: str | None = None) -> dict[str, Any] | None:
    """The benchmark's JSON ({"command", "rows": [...]}), or None when absent or unreadable."""
    p = pathlib.Path(path) if path else PATH
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def paper_test_caveat(path: str | None = None) -> str:
    """One sentence: how often the paper's within-bin test rejects true nulls on which routing
    tracks confidence non-linearly (each such row of the benchmark: rate [99% CI], datasets)."""
    data = load(path)
    head = ("Caveat on the paper's within-bin test: it is not valid when routing tracks confidence "
            "non-linearly")
    rows = [r for r in (data or {}).get("rows", [])
            if r["scenario"].startswith(_TRACKING) and "paper" in r]
    if not rows:
        return head + " (level measured by `python benchmarks/validity.py`; not run here)."
    cells = [f"{r['paper']['rate']:.1%} [{r['paper']['ci99'][0]:.1%}, {r['paper']['ci99'][1]:.1%}] "
             f"({r['scenario']})" for r in rows]
    rec = [r["conditional"]["rate"] for r in rows if "conditional" in r]
    tail = (f"; the recommended test rejected {min(rec):.1%}-{max(rec):.1%} of the same nulls"
            if rec else "")
    return (f"{head}: at alpha = {rows[0]['alpha']} it rejected " + ", ".join(cells)
            + f" of {rows[0]['n_datasets']} true-null datasets each (99% Clopper-Pearson "
            f"intervals; `{data.get('command', 'python benchmarks/validity.py')}`){tail}.")
