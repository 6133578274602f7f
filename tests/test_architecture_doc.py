"""docs/ARCHITECTURE.md's module map names every module under routecal/, and only those.

The map is the code block that starts with `routecal/` under "## Module map": one name a line,
indented two spaces per level (`stats/` a folder, described by its `__init__.py`; `kernels.py` a
module), then a description. The failure message gives the exact line to add and where.
"""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
NAME = re.compile(r"^( *)([A-Za-z_][A-Za-z0-9_]*(?:\.py|/))(?:\s|$)")


def documented(text: str) -> dict[str, tuple[int, int]]:
    """Module path (relative to the repository, e.g. "routecal/stats/kernels.py") -> (line number,
    indentation) of every name in the module map; a folder `x/` stands for `x/__init__.py`."""
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("## Module map"))
    first = next(i for i in range(start, len(lines)) if lines[i].startswith("routecal/"))
    out: dict[str, tuple[int, int]] = {}
    folders: dict[int, str] = {}  # indentation -> the open folder's path
    for i in range(first, len(lines)):
        line = lines[i]
        if line.startswith("```"):
            break
        m = NAME.match(line)
        if m is None:
            continue  # a description's continuation
        indent, name = len(m.group(1)), m.group(2)
        if indent == 0 and name != "routecal/":
            break  # configs/, experiments/, ...: outside the package
        if indent % 2:
            raise AssertionError(f"docs/ARCHITECTURE.md line {i + 1}: odd indentation {line!r}")
        parent = folders.get(indent - 2, "") if indent else ""
        if indent and not parent:
            raise AssertionError(f"docs/ARCHITECTURE.md line {i + 1}: no folder above {line!r}")
        path = parent + name
        folders = {k: v for k, v in folders.items() if k < indent}
        if name.endswith("/"):
            folders[indent] = path
            out[path + "__init__.py"] = (i + 1, indent)
        else:
            out[path] = (i + 1, indent)
    return out


def modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / "routecal").rglob("*.py")}


def missing_line(path: str, doc: dict[str, tuple[int, int]]) -> str:
    """What to add for an undocumented module: the exact line and the folder line it goes under."""
    parts = path.split("/")
    if parts[-1] == "__init__.py":
        parts = parts[:-1]
        name = parts[-1] + "/"
    else:
        name = parts[-1]
    parent = "/".join(parts[:-1]) + "/__init__.py"
    indent = 2 * (len(parts) - 1)
    line = f"{' ' * indent}{name.ljust(16)} <its job in one line>"
    if parent in doc:
        where = f'under the folder line {doc[parent][0]} ("{parts[-2]}/")'
    else:
        where = f"after adding its folder {'/'.join(parts[:-1])}/ first"
    return f"{path}: add the line {line!r} {where}"


def test_every_module_is_in_the_map():
    doc = documented(DOC.read_text())
    missing = sorted(modules() - doc.keys())
    assert not missing, "docs/ARCHITECTURE.md, module map:\n" + "\n".join(
        missing_line(p, doc) for p in missing
    )


def test_the_map_names_no_missing_module():
    doc = documented(DOC.read_text())
    stale = sorted(doc.keys() - modules())
    assert not stale, "docs/ARCHITECTURE.md, module map:\n" + "\n".join(
        f"line {doc[p][0]} names {p}, which does not exist: remove or rename it" for p in stale
    )


def test_the_checker_reads_nesting_and_names_the_line_to_add():
    text = "## Module map\n\n```\nroutecal/    root\n  a.py    job\n  sub/    pkg\n    b.py    job\n"
    text += "            continued description.py\n  c.py    job\nconfigs/    not a module\n```\n"
    doc = documented(text)
    assert doc == {
        "routecal/__init__.py": (4, 0),
        "routecal/a.py": (5, 2),
        "routecal/sub/__init__.py": (6, 2),
        "routecal/sub/b.py": (7, 4),
        "routecal/c.py": (9, 2),
    }
    msg = missing_line("routecal/sub/new.py", doc)
    assert msg == (
        "routecal/sub/new.py: add the line '    new.py           <its job in one line>' under the "
        'folder line 6 ("sub/")'
    )
    assert "after adding its folder routecal/other/ first" in missing_line(
        "routecal/other/x.py", doc
    )


def test_recipes_name_code_that_exists():
    """Every `path.py:NAME` the document cites (the recipes' exact places) is defined there."""
    refs = re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py):([A-Za-z_][A-Za-z0-9_]*)`", DOC.read_text())
    assert len(refs) >= 5  # the recipes cite their registries
    missing = []
    for path, name in refs:
        file = next((f for f in (ROOT / path, ROOT / "routecal" / path) if f.is_file()), None)
        text = file.read_text() if file else ""
        if not re.search(rf"^\s*(def |class )?{name}\b\s*[(:=]", text, re.M):
            missing.append(f"{path} (under the repository or routecal/) defines no {name}")
    assert not missing, "docs/ARCHITECTURE.md cites:\n" + "\n".join(missing)
