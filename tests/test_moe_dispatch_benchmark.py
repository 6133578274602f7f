"""benchmarks/moe_dispatch.py --smoke runs end to end: both shapes, both modes, same outputs."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_moe_dispatch_benchmark_smoke():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "moe_dispatch.py"), "--smoke", "--repeats", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^(\w+)\s+(dense|sparse_blocks)\s+[\d.]+ ms\s+[\d.]+ tokens/s\s+max\|y - y_first\| (\S+)$",
                      proc.stdout, re.M)
    assert {(s, m) for s, m, _ in rows} == {
        (s, m) for s in ("olmoe", "deepseek_v2_lite") for m in ("dense", "sparse_blocks")
    }
    assert all(float(d) < 1e-4 for _, _, d in rows)  # the script also exits non-zero otherwise
    assert re.search(r"^olmoe_speedup=\d", proc.stdout, re.M)
