"""experiments/quick_study.ipynb executes end to end (nbclient, a fresh ipykernel) on the tiny variant.

The notebook runs in a temporary folder that holds only a link to `configs/`, with this checkout on
the kernel's PYTHONPATH, so nothing is installed and nothing is written into the repository. Its
config line is swapped for the test-size variant (`quick,tiny`, one architecture, no VMoER stage):
the notebook itself stays the user's quick study. About a minute on an idle 2-core CPU; the cell
timeout is generous so a loaded machine does not fail it.
"""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "quick_study.ipynb"
CONFIG_LINE = "load_config('configs/study.py:quick')"
# Test-size models, one routed architecture, two features, one bandwidth rule, no VMoER stage.
TINY = (
    "sections=('diagnostics', 'power', 'probes')",
    "architectures=('full',)",
    "diagnostics.features=('H_mean','depth_var_mean')",
    "probes.bandwidth_rules=('scott',)",
    "probes.sweep_multiples=(1.0,)",
)
TINY_LINE = f"load_config('configs/study.py:quick,tiny', {list(TINY)!r})"


def test_quick_study_notebook_executes(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    sources = [c.source for c in code]
    assert sum(CONFIG_LINE in s for s in sources) == 1, f"the notebook lost its line {CONFIG_LINE}"
    for c in code:
        c.source = c.source.replace(CONFIG_LINE, TINY_LINE)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, as a user's laptop
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError (with the cell's traceback) on any failure
    printed = "".join(o.get("text", "") for o in code[1].outputs if o.output_type == "stream")
    assert "diagnostics" in printed, printed[-2000:]  # the verdicts dict, printed
    html = code[2].outputs[0]["data"]["text/html"]
    assert html == (tmp_path / "runs" / "quick" / "report.html").read_text()
    assert (tmp_path / "runs" / "quick" / "results.json").is_file()
