"""The study on 2 local processes (`routecal --distributed ... study`) equals the study on one.

Each study runs twice from a fresh workdir: once as one process with 2 CPU devices, once as 2
processes joined over 127.0.0.1 (gloo, one CPU device each), every process running the same
`routecal` command on the same workdir. Training is data-parallel over both processes; token
prediction, the analysis stages, the digits grid's cells and the VMoER routers are split between
them (each computed once, by one process alone: `Stages.run_all`, `parallel.share`), and each test
checks from the processes' stderr that each process computed its share. The global device count is
the same, so every training array has the same per-device shape (XLA:CPU rounds a matmul by its
shape: one device instead of two changes the predicted probabilities in the last float32 bit, which
moves tokens across bins downstream) and an all-reduce of 2 values is the same sum in any order; a
stage computed alone does not depend on the device count. Every process sees the same CPU cores (no
`taskset`): XLA:CPU's thread count also changes float32 rounding (pinned to one core each, the LM
study's MLP probe differed in the last bit). The two `results.json` are compared leaf by leaf with
`benchmarks/compare_results.py` (timing, host and version fields skipped). The quick variant (the
digits study, one architecture, one feature, the recommended test and its power, a one-layer model
trained 4 steps, no VMoER) runs in CI; the `multihost` (and `slow`) ones run the digits study with every test
and VMoER, and the LM study with a small VMoER section. The three processes of a test share one
persistent XLA compilation cache (a fresh one per test), so the 2-process run loads the programs
the reference run compiled instead of compiling them again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_multihost import _run_processes  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_results",
                                               ROOT / "benchmarks" / "compare_results.py")
compare_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_results)

STEPS = ("train.steps={0}", "train.eval_every={0}", "train.checkpoint_every={0}")
DIGITS = [
    "--config", "configs/study.py:quick,tiny",
    "--config.architectures=('full',)",
    "--config.diagnostics.features=('H_mean',)",
    "--config.probes.bandwidth_rules=('scott',)", "--config.probes.sweep_multiples=(1.0,)",
    f"--config.model_overrides={tuple(s.format(10) for s in STEPS)!r}",
]
LM = [
    "--config", "configs/study_lm.py:quick",
    "--config.architectures=('full',)", "--config.domains=('in:test',)",
    f"--config.model_overrides={(*(s.format(10) for s in STEPS), 'train.log_every=10')!r}",
    "--config.diagnostics.features=('H_mean',)", "--config.diagnostics.n_permutations=99",
    "--config.diagnostics.max_tokens=300", "--config.diagnostics.power_kwargs.n_datasets=10",
    "--config.diagnostics.paper_power_datasets=10",
    "--config.diagnostics.paper_power_permutations=19",
    "--config.probes.bandwidth_rules=('scott',)", "--config.probes.sweep_multiples=(1.0,)",
    "--config.probes.max_calib_tokens=1000", "--config.probes.max_test_tokens=1000",
]
# the LM study's VMoER section, small: det and two routers retrofitted on it (one per process)
LM_VMOER = "--config.vmoer.overrides=" + repr((
    "experiment.beta_grid=(0.01,)", "experiment.sigmas=(0.01,)", "experiment.stability_items=16",
    "data.n_eval_items=32", "data.n_train_items=64", "data.n_calib_items=16",
    "train.finetune_steps=5", "train.retrofit_steps=3", "train.member_steps=3",
    "train.member_max_steps=3", "experiment.routers=('det','mfvr_retrofit','vtsr_retrofit')"))


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTEST_XDIST_WORKER")}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _study(args: list[str], workdir: pathlib.Path, n: int) -> tuple[dict, list[str]]:
    """results.json of `routecal study args` in `workdir` and the processes' stderr: one process
    with 2 CPU devices (n = 1), or n processes (`routecal --distributed`) with one CPU device
    each."""
    cli = [sys.executable, "-m", "routecal.cli"]
    tail = ["study", *args, "--workdir", str(workdir), "--no-report"]
    if n == 1:
        p = subprocess.run([*cli, *tail], env=_env(2), cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
        assert p.returncode == 0, p.stderr[-3000:]
        stderr = [p.stderr]
    else:
        stderr = _run_processes(n, lambda port, i: [
            *cli, "--distributed", "--coordinator-address", f"127.0.0.1:{port}",
            "--num-processes", str(n), "--process-id", str(i), *tail], timeout=900)
    return json.loads((workdir / "results.json").read_text()), stderr


def _same(args: list[str], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    # one persistent XLA cache for the three processes: the programs the reference run compiled
    # are loaded, not compiled again, by the 2-process run (the same executable, the same numbers)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "xla_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    one, _ = _study(args, tmp_path / "one", 1)  # one process, 2 devices
    two, stderr = _study(args, tmp_path / "two", 2)  # 2 processes, one device each
    n, diffs = compare_results.compare(one, two)
    assert n > 50, f"only {n} leaves compared"
    assert not diffs, "\n".join(diffs[:40])
    assert not (tmp_path / "two" / ".routecal.lock").exists()  # process 0 released it
    for i, err in enumerate(stderr):  # each process computed its own share of the stages
        assert f"routecal: process {i} computed " in err, err[-2000:]
    assert not any((tmp_path / "two").rglob(".*.part-*"))  # the token parts were joined
    return two


def test_digits_study_two_processes_equal_one(tmp_path, monkeypatch):
    """CI-sized: the digits study (one architecture and feature, the recommended test, 4 steps of a
    one-layer model, no VMoER) on 2 processes."""
    small = (*(s.format(4) for s in STEPS), "train.log_every=4", "model.n_layers=1")
    two = _same([*DIGITS[:-1], f"--config.model_overrides={small!r}",
                 "--config.sections=('diagnostics','power','probes')",
                 "--config.diagnostics.tests=('conditional',)"], tmp_path, monkeypatch)
    assert two["diagnostics"]["tests"] and two["runs"][0]["arch"] == "full"
    assert [f.name for f in (tmp_path / "two" / "runs" / "full" / "seed0" / "predictions").iterdir()
            ] and not any((tmp_path / "two").rglob(".*.tmp"))  # no half-written file left


@pytest.mark.multihost
@pytest.mark.slow
def test_digits_study_with_vmoer_two_processes_equal_one(tmp_path, monkeypatch):
    two = _same(DIGITS, tmp_path, monkeypatch)
    assert two["vmoer"]


@pytest.mark.multihost
@pytest.mark.slow
def test_lm_study_two_processes_equal_one(tmp_path, monkeypatch):
    two = _same([*LM, LM_VMOER,
                 "--config.sections=('diagnostics','power','probes','temperature','vmoer')"],
                tmp_path, monkeypatch)
    assert two["diagnostics"]["tests"]
    assert sorted(two["vmoer"]["per_run"]) == ["det", "mfvr_retrofit", "vtsr_retrofit"]
