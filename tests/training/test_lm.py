"""Tests for routecal.training.lm and the LM path of routecal.training.train (quick config: tiny decoder, 12 steps)."""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx
from scipy.special import logsumexp

from routecal.config import load_config
from routecal.data.text import TextSplit
from routecal.training import lm, train

CONFIG = str(pathlib.Path(__file__).parents[2] / "configs" / "lm_stdlib.py")


def _cfg(*overrides, variant="quick"):
    return load_config(f"{CONFIG}:{variant}", list(overrides))


def _params(workdir):
    model, _, _ = train.load_trained(workdir)
    return jax.tree.leaves(jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param))))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("lmref")
    return wd, train.train_and_evaluate(_cfg(variant="block,moe,quick"), wd)


def test_lm_run_writes_metrics_manifest_and_all_domains(reference_run):
    wd, final = reference_run
    assert final["step"] == 12
    for split in ("calib", "test", "near", "far"):
        assert 0 < final[f"{split}/accuracy"] < 1
        assert final[f"{split}/bits_per_byte"] > 0
    man = json.loads((wd / "corpus_manifest.json").read_text())
    assert man["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert {f["split"] for f in man["files"]} == {"train", "calib", "test", "near", "far"}
    assert all(len(f["sha256"]) == 64 for f in man["files"])


def test_evaluate_lm_matches_numpy_reference():
    cfg = _cfg()
    task = lm.LMTask(cfg)
    model = task.build_model()
    split = task.dataset.calib
    got = lm.evaluate_lm(model, split, pad=task.pad, batch_size=8)
    rows = split.ids.astype(np.int64)
    logits = np.asarray(model(rows[:, :-1]).logits, np.float64)
    logp = logits - logsumexp(logits, axis=-1, keepdims=True)
    tgt = rows[:, 1:]
    mask = tgt != task.pad
    nll = -np.take_along_axis(logp, tgt[..., None], -1)[..., 0][mask]
    acc = (logits.argmax(-1) == tgt)[mask].mean()
    np.testing.assert_allclose(got["nll"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], acc, rtol=1e-6)
    bpb = nll.sum() / math.log(2) / split.n_bytes
    np.testing.assert_allclose(got["bits_per_byte"], bpb, rtol=1e-5)
    assert got["n_tokens"] == mask.sum()


def test_interrupted_and_resumed_lm_run_matches_uninterrupted(reference_run, tmp_path):
    """Also "same config and seed, same numbers": every final metric and parameter is equal."""
    wd, ref = reference_run
    part = train.train_and_evaluate(_cfg(variant="block,moe,quick"), tmp_path, max_steps_this_run=5)
    assert part == {"step": 5, "finished": False}
    final = train.train_and_evaluate(_cfg(variant="block,moe,quick"), tmp_path)
    assert final == {**ref, "time_s": final["time_s"]}
    for a, b in zip(_params(wd), _params(tmp_path), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_parameters(reference_run, tmp_path):
    wd, _ = reference_run
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[2])}
    cmd = [
        sys.executable,
        "-m",
        "routecal.cli",
        "train",
        "--config",
        f"{CONFIG}:block,moe,quick",
        "--workdir",
        str(tmp_path),
        "--config.train.steps=12",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ckpt = tmp_path / "checkpoints" / "4"
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "final_metrics.json").exists()
    train.train_and_evaluate(_cfg(variant="block,moe,quick"), tmp_path)
    for a, b in zip(_params(wd), _params(tmp_path), strict=True):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_raises(tmp_path):
    with pytest.raises(FloatingPointError, match="step"):
        train.train_and_evaluate(_cfg("train.lr=1e30", "train.grad_clip=1e38"), tmp_path)


def test_bad_lm_config_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match="data.seq_len: 32 exceeds the model's maximum"):
        train.train_and_evaluate(_cfg("model.max_len=16"), tmp_path / "a")
    with pytest.raises(ValueError, match="data.name: unknown text dataset"):
        train.train_and_evaluate(_cfg("data.name='nope'"), tmp_path / "b")
    with pytest.raises(ValueError, match="data.tokenizer: no tokenizer.json"):
        train.train_and_evaluate(_cfg(f"data.tokenizer='{tmp_path}/x.json'"), tmp_path / "c")
    with pytest.raises(ValueError, match="config arg"):
        _cfg(variant="full,block")
    with pytest.raises(ValueError, match="split: no target token"):
        split = TextSplit(np.full((2, 5), 258, np.uint16), "in", 0, 0)
        lm.evaluate_lm(lm.LMTask(_cfg()).build_model(), split, pad=258, batch_size=2)
