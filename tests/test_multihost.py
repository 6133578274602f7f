"""Multi-process runs on one machine: 2 and 4 local processes joined over 127.0.0.1.

Each process (tests/multihost_worker.py) has 2 fake CPU devices and CPU collectives through gloo;
the mesh spans every device of every process. Each result is compared with one process: the
permutation null bit for bit (it never depends on the device count), the NW sweep bit for bit
against one process with the same number of devices, training to float32 reduction order (gloo
all-reduces in another order than XLA:CPU in one process) and predict shards, concatenated, with
one-process predict on the same model.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from routecal import parallel
from routecal.data import load_dataset
from routecal.files.predictions import concat_predictions
from routecal.stats import diagnostics, kernels
from routecal.training import predict, train

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import multihost_worker as worker  # noqa: E402

pytestmark = pytest.mark.multihost
ROOT = pathlib.Path(__file__).resolve().parents[1]
ALL_TASKS = ("perm", "nw", "train", "predict")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(n: int, out: pathlib.Path, data_dir: str, tasks) -> pathlib.Path:
    """Runs tests/multihost_worker.py as n processes; returns the folder of their results."""
    out.mkdir(parents=True, exist_ok=True)
    script = [sys.executable, str(ROOT / "tests" / "multihost_worker.py")]
    _run_processes(n, lambda port, i: [*script, port, str(n), str(i), str(out), data_dir,
                                       ",".join(tasks)])
    return out


def _run_processes(n: int, command, timeout: float = 600) -> list[str]:
    """Starts `command(port, i)` for i < n (one free 127.0.0.1 port), waits for all, fails with
    their stderr if any fails; returns their stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTEST_XDIST_WORKER")}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["JAX_PLATFORMS"] = "cpu"
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            command(port, i), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )
        for i in range(n)
    ]
    errors, stderr = [], []
    for i, p in enumerate(procs):
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        stderr.append(err)
        if p.returncode != 0:
            errors.append(f"process {i} exited {p.returncode}:\n{err[-3000:]}")
    assert not errors, "\n".join(errors)
    return stderr


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """The digits dataset, built once here; the workers only read it."""
    d = str(tmp_path_factory.mktemp("tfds"))
    load_dataset(worker.train_config(d).data)
    return d


def _per_process(out: pathlib.Path, task: str, n: int) -> list[dict]:
    files = [out / f"{task}-{i}.npz" for i in range(n)]
    return [dict(np.load(f)) for f in files]


def _check_perm(out: pathlib.Path, n: int) -> None:
    (c, y, r), kw = worker.perm_case()
    one = diagnostics.within_bin_permutation_test(
        c, y, r, key=jax.random.key(3), mesh=parallel.make_mesh(1), **kw
    )
    for got in _per_process(out, "perm", n):  # every process reads the whole result
        np.testing.assert_array_equal(got["null"], one.null)
        assert float(got["p_value"]) == one.p_value
        assert float(got["statistic"]) == one.statistic
        n_dev = n * worker.DEVICES_PER_PROCESS  # parallel.to_host of a batch-sharded array
        np.testing.assert_array_equal(got["gathered"], np.arange(4.0 * n_dev))


def _check_nw(out: pathlib.Path, n: int) -> None:
    x, y, mult = worker.nw_case()
    grid = kernels.scott_multiples(x, mult)
    n_dev = n * worker.DEVICES_PER_PROCESS
    same = kernels.loo_nll(x, y, grid, mesh=parallel.make_mesh(n_dev), row_tile=16)
    one_device = kernels.loo_nll(x, y, grid, row_tile=16)
    for got in _per_process(out, "nw", n):
        np.testing.assert_array_equal(got["nll"], same)
        np.testing.assert_allclose(got["nll"], one_device, rtol=1e-5)


def _check_train(out: pathlib.Path, n: int, data_dir: str, ref_dir: pathlib.Path) -> None:
    n_dev = n * worker.DEVICES_PER_PROCESS
    cfg = worker.train_config(data_dir)
    final = train.train_and_evaluate(cfg, ref_dir, mesh=parallel.make_mesh(n_dev))
    ref = worker.flat_params(train.load_trained(ref_dir)[0])
    for g in _per_process(out, "train", n):
        assert float(g["loss"]) == pytest.approx(final["train/loss"], rel=1e-6)
        assert set(g) - {"loss"} == set(ref)
        for k, v in ref.items():
            if k.endswith("key/bias"):
                # softmax(q.(k + b)) does not depend on the key bias: its gradient is zero up to
                # rounding, which Adam scales to +-lr steps whose sign depends on the reduction
                # order. Both runs keep it within steps x peak lr of its zero init.
                bound = cfg.train.steps * cfg.train.lr
                assert np.abs(g[k]).max() <= bound and np.abs(v).max() <= bound
                continue
            np.testing.assert_allclose(g[k], v, rtol=1e-5, atol=1e-7, err_msg=k)
    # process 0 alone wrote the workdir's files: one log line per event, not one per process
    logged = _read_jsonl(out / "train" / "metrics.jsonl")
    expected = _read_jsonl(ref_dir / "metrics.jsonl")
    assert [sorted(r) for r in logged] == [sorted(r) for r in expected]
    for r, e in zip(logged, expected, strict=True):
        assert r == pytest.approx(e, rel=1e-6)


def _read_jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _check_predict(out: pathlib.Path, n: int) -> None:
    workdir = out / "train"
    shards = [workdir / "predictions" / f"test-{i:05d}-of-{n:05d}.npz" for i in range(n)]
    parts = [dict(np.load(s)) for s in shards]
    model, _, dataset = train.load_trained(workdir)
    one = predict.predictions_record(model, dataset.split("test"), batch_size=64)
    sizes = [len(p["labels"]) for p in parts]
    assert sizes == [len(a) for a in np.array_split(np.arange(len(one["labels"])), n)]
    joined = concat_predictions(parts)
    np.testing.assert_array_equal(joined["labels"], one["labels"])
    np.testing.assert_allclose(joined["probs"], one["probs"], rtol=1e-5, atol=1e-7)


# One test per launch: under pytest-xdist a module fixture would be rebuilt on every worker.


def test_two_processes(tmp_path, data_dir):
    out = _launch(2, tmp_path / "mh2", data_dir, ALL_TASKS)
    _check_perm(out, 2)
    _check_nw(out, 2)
    _check_train(out, 2, data_dir, tmp_path / "ref")
    _check_predict(out, 2)
    _check_cli(out / "train", 2)


def _check_cli(workdir: pathlib.Path, n: int) -> None:
    """`routecal --distributed ... predict` joins n processes; process 0 alone writes."""
    cli = [sys.executable, "-m", "routecal.cli", "--distributed", "--num-processes", str(n)]
    stderr = _run_processes(n, lambda port, i: [
        *cli, "--coordinator-address", f"127.0.0.1:{port}", "--process-id", str(i),
        "predict", "--workdir", str(workdir),
    ])
    for i, err in enumerate(stderr):
        assert f"routecal: process {i} of {n}, 1 local of {n} cpu devices" in err
    model, _, dataset = train.load_trained(workdir)
    one = predict.predictions_record(model, dataset.split("test"))
    got = dict(np.load(workdir / "predictions" / "test.npz"))
    np.testing.assert_allclose(got["probs"], one["probs"], rtol=1e-5, atol=1e-7)


def test_four_processes_statistics(tmp_path, data_dir):
    out = _launch(4, tmp_path / "mh4", data_dir, ("perm", "nw"))
    _check_perm(out, 4)
    _check_nw(out, 4)


@pytest.mark.slow
def test_four_processes_train_and_predict(tmp_path, data_dir):
    out = _launch(4, tmp_path / "mh4", data_dir, ("train", "predict"))
    _check_train(out, 4, data_dir, tmp_path / "ref")
    _check_predict(out, 4)
