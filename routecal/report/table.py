"""The report's `Table` (titled header + formatted rows; markdown, HTML, CSV) and the number
formats every section shares (`fmt`, `fmt_band`: a seed band as mean [min, max])."""

from __future__ import annotations

import csv
import html
import io
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.files import workdir as workdir_io


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        if not np.isfinite(x):
            return "-"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
            return f"{x:.2e}"
        return f"{x:.{digits}f}"
    return str(x)


def fmt_band(b: Mapping[str, float] | None, digits: int = 4) -> str:
    if not b or b.get("mean") is None or not np.isfinite(b["mean"]):
        return "-"
    if b.get("n", 1) <= 1:
        return fmt(b["mean"], digits)
    return f"{fmt(b['mean'], digits)} [{fmt(b['min'], digits)}, {fmt(b['max'], digits)}]"


class Table:
    """A titled table: header + rows of already formatted cells."""

    def __init__(self, name: str, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]):
        self.name, self.title, self.header = name, title, list(header)
        self.rows = [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def write_csv(self, path: pathlib.Path) -> None:
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(self.header)
        w.writerows(self.rows)
        workdir_io.write_text(path, buf.getvalue())  # atomic: temp file + rename
