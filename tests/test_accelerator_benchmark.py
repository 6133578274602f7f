"""benchmarks/accelerator.py --smoke runs end to end on CPU (the full run needs a GPU/TPU)."""

import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_accelerator_benchmark_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["JAX_PLATFORMS"] = "cpu"
    out = tmp_path / "table.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--smoke", "--json", out]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads(out.read_text())
    names = [r[0] for r in table["rows"]]
    assert [n.split(" ")[0] for n in names] == ["permutation", "NW", "ECE", "LM", "token"]
    assert "| benchmark | time | comparison |" in proc.stdout
    # the device ECE and the numpy ECE of the same probabilities agree
    ece_dev, ece_np = map(float, re.search(r"values (\S+) / (\S+)", table["rows"][2][2]).groups())
    assert abs(ece_dev - ece_np) < 1e-5
