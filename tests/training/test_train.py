"""Tests for routecal.training.train on the tiny digits config (test-size model, 12 steps, 8 fake devices)."""

import json
import os
import pathlib
import shutil
import socket
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from routecal import parallel
from routecal.config import load_config
from routecal.data import Dataset, Split
from routecal.files import workdir
from routecal.training import checkpoints, train

CONFIG = str(pathlib.Path(__file__).parents[2] / "configs" / "attnres_digits.py")


def _cfg(*overrides, variant="tiny"):
    return load_config(f"{CONFIG}:{variant}", list(overrides))


def _params(workdir):
    model, _, _ = train.load_trained(workdir)
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _assert_trees_close(a, b, **tol):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(x, y, **tol)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted quick run (Block AttnRes, so depth routing is exercised)."""
    wd = tmp_path_factory.mktemp("ref")
    final = train.train_and_evaluate(_cfg(variant="block,tiny"), wd)
    return wd, final


def test_run_writes_outputs_and_learns_something(reference_run):
    wd, final = reference_run
    assert final["step"] == 12
    for k in ("train/loss", "calib/accuracy", "calib/nll", "test/accuracy", "test/nll"):
        assert np.isfinite(final[k])
    assert (wd / "config.json").exists() and (wd / "final_metrics.json").exists()
    lines = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "train/loss" in r] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in lines if "test/accuracy" in r] == [6, 12]
    # 12 steps of a tiny model are too few to assert learning (the slow default-config test asserts
    # >= 95% accuracy); here every logged loss is a finite cross-entropy.
    losses = [r["train/loss"] for r in lines if "train/loss" in r]
    assert all(np.isfinite(x) and x > 0 for x in losses)


def test_interrupted_and_resumed_run_matches_uninterrupted(reference_run, tmp_path):
    wd_ref, final_ref = reference_run
    cfg = _cfg(variant="block,tiny")
    part = train.train_and_evaluate(
        cfg, tmp_path, max_steps_this_run=6
    )  # checkpoint at 4; 5-6 lost
    assert part == {"step": 6, "finished": False}
    assert not (tmp_path / "final_metrics.json").exists()
    final = train.train_and_evaluate(cfg, tmp_path)  # resumes from step 4
    _assert_trees_close(_params(tmp_path), _params(wd_ref), rtol=1e-6, atol=1e-7)
    for k in ("train/loss", "test/accuracy", "test/nll", "calib/nll"):
        np.testing.assert_allclose(final[k], final_ref[k], rtol=1e-6)
    # metrics logged once per step even though steps 5-6 ran twice
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(6) == 2  # one train line, one eval line


def test_same_config_and_seed_same_numbers_and_finished_run_returns(reference_run, tmp_path):
    wd_ref, final_ref = reference_run
    final = train.train_and_evaluate(_cfg(variant="block,tiny"), tmp_path)
    for k in final_ref:
        if k != "time_s":
            assert final[k] == final_ref[k], k
    _assert_trees_close(_params(tmp_path), _params(wd_ref), rtol=0, atol=0)
    again = train.train_and_evaluate(_cfg(variant="block,tiny"), tmp_path)
    assert again == final  # finished: read back, not retrained
    with pytest.raises(ValueError, match="different config"):
        train.train_and_evaluate(_cfg("train.lr=0.5", variant="block,tiny"), tmp_path)


def test_one_device_matches_eight_devices(reference_run, tmp_path):
    wd_ref, final_ref = reference_run
    assert jax.device_count() == 8  # tests/conftest.py
    final = train.train_and_evaluate(
        _cfg(variant="block,tiny"), tmp_path, mesh=parallel.make_mesh(1)
    )
    assert np.isfinite(final["train/loss"])
    # Adam normalises tiny gradients, so near-zero parameters may differ by about one step size
    # (lr = 2e-3) between reduction orders; the loss agrees closely.
    _assert_trees_close(_params(tmp_path), _params(wd_ref), rtol=1e-3, atol=2e-3)
    np.testing.assert_allclose(final["train/loss"], final_ref["train/loss"], rtol=1e-4)


def test_trainable_filter_and_init_from(reference_run, tmp_path):
    """init_from relative to the run's workdir (as a study stores it): a copied study still
    reads its own source run, and the copy's config.json is unchanged."""
    wd_ref, _ = reference_run
    shutil.copytree(wd_ref, tmp_path / "study" / "ref")
    cfg = _cfg("train.trainable='head'", "train.init_from='../ref'", variant="block,tiny")
    run = tmp_path / "study" / "run"
    train.train_and_evaluate(cfg, run)
    assert json.loads((run / "config.json").read_text())["train"]["init_from"] == "../ref"
    shutil.copytree(tmp_path / "study", tmp_path / "copy")
    assert train.init_from_dir("../ref", tmp_path / "copy" / "run") == tmp_path / "copy/run/../ref"
    train.train_and_evaluate(cfg, tmp_path / "copy" / "run")  # finished: same config, no error
    with pytest.raises(ValueError, match=r"init_from: '../ref' \(.*elsewhere/../ref\) is not"):
        train.train_and_evaluate(cfg, tmp_path / "elsewhere")
    new, ref = (nnx.traversals.flatten_mapping(p) for p in (_params(run), _params(wd_ref)))
    assert new.keys() == ref.keys()
    changed = {"/".join(map(str, k)) for k in new if not np.array_equal(new[k], ref[k])}
    assert changed and all(name.startswith("head/") for name in changed)


def test_trainable_filter_presets():
    model = train.build_model(_cfg(variant="block,tiny"), _digits_like())
    n_all = len(jax.tree.leaves(nnx.state(model, train.trainable_filter("all"))))
    assert n_all == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert jax.tree.leaves(nnx.state(model, train.trainable_filter("router-only"))) == []
    n_q = len(jax.tree.leaves(nnx.state(model, train.trainable_filter(r"residual/.*/query"))))
    assert n_q == 2 * 2 + 1
    with pytest.raises(ValueError, match="trainable"):
        train.trainable_filter("(")


def _digits_like(labels_hi=10, scale=1.0, n=64):
    rng = np.random.default_rng(0)

    def split(m):
        return Split(
            (rng.uniform(size=(m, 16, 4)) * scale).astype(np.float32),
            rng.integers(0, labels_hi, size=m).astype(np.int32),
        )

    return Dataset("fake", split(n), split(16), split(16), num_classes=10)


def test_nan_loss_raises_with_step(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "load_dataset", lambda _: _digits_like(scale=3e38))
    with pytest.raises(FloatingPointError, match="step"):
        train.train_and_evaluate(_cfg(variant="block,tiny"), tmp_path)


def test_bad_input_raises(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown key"):
        _cfg("train.stepz=3")
    with pytest.raises(ValueError, match="batch_size"):
        train.train_and_evaluate(_cfg("train.batch_size=12"), tmp_path / "a")
    with pytest.raises(ValueError, match="selects no parameter"):
        train.train_and_evaluate(_cfg("train.trainable='router-only'"), tmp_path / "b")
    monkeypatch.setattr(train, "load_dataset", lambda _: _digits_like(labels_hi=11, n=400))
    with pytest.raises(ValueError, match="labels"):
        train.train_and_evaluate(_cfg(), tmp_path / "c")
    with pytest.raises(ValueError, match="config.json"):
        train.load_trained(tmp_path / "nothing")


# ----------------------------------------------------------------------------------------------
# Workdirs that survive kills, corrupt files, bad configs and a second process
# ----------------------------------------------------------------------------------------------


def _metrics(wd):
    return [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]


def _corrupt_checkpoint(wd, step):
    """Cuts every array data file of checkpoint `step` to 100 bytes (a torn write)."""
    files = list((wd / "checkpoints" / str(step) / "model").rglob("d/*"))
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:100])


def test_resume_skips_a_corrupt_checkpoint_and_a_partial_metrics_line(
    reference_run, tmp_path, capsys
):
    wd_ref, final_ref = reference_run
    cfg = _cfg(variant="block,tiny")
    train.train_and_evaluate(cfg, tmp_path, max_steps_this_run=10)  # checkpoints 4 and 8 kept
    _corrupt_checkpoint(tmp_path, 8)
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 11, "train/lo')  # a kill in the middle of an append
    capsys.readouterr()
    final = train.train_and_evaluate(cfg, tmp_path)
    err = capsys.readouterr().err
    assert f"{tmp_path / 'checkpoints' / '8'} is unreadable" in err
    assert "resuming from step 4" in err and "partial last line" in err
    assert len([ln for ln in err.splitlines() if "routecal train:" in ln]) == 3  # one line each
    _assert_trees_close(_params(tmp_path), _params(wd_ref), rtol=1e-6, atol=1e-7)
    for k in ("train/loss", "test/accuracy", "test/nll", "calib/nll"):
        np.testing.assert_allclose(final[k], final_ref[k], rtol=1e-6)
    got, ref = _metrics(tmp_path), _metrics(wd_ref)
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    for a, b in zip(got, ref, strict=True):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-5)


def test_unreadable_checkpoints_and_config_are_named_in_one_line(reference_run, tmp_path):
    wd_ref, _ = reference_run
    wd = tmp_path / "copy"
    shutil.copytree(wd_ref, wd)
    _corrupt_checkpoint(wd, 12)
    with pytest.raises(ValueError, match=r"checkpoints/12 is unreadable") as e:
        train.load_trained(wd)
    assert "\n" not in str(e.value) and e.value.__cause__ is not None  # orbax's error kept as cause
    _corrupt_checkpoint(wd, 8)
    (wd / "final_metrics.json").unlink()
    with pytest.raises(ValueError, match=r"no readable checkpoint in .*checkpoints"):
        train.train_and_evaluate(_cfg(variant="block,tiny"), wd)
    (wd / "config.json").write_text('{"data": {"name": "dig')
    for call in (train.load_trained, lambda w: train.train_and_evaluate(_cfg(), w)):
        with pytest.raises(ValueError, match=r"config\.json' is not valid JSON"):
            call(wd)


def _checkpoint_time(wd, step):
    mngr = checkpoints.manager(wd)
    try:
        args = ocp.args.Composite(position=ocp.args.JsonRestore())
        return mngr.restore(step, args=args)["position"]["train_time_s"]
    finally:
        mngr.close()


def test_training_time_adds_up_across_resumes(reference_run, tmp_path):
    wd_ref, final_ref = reference_run
    wd = tmp_path / "copy"
    shutil.copytree(wd_ref, wd)
    t8, t12 = _checkpoint_time(wd, 8), _checkpoint_time(wd, 12)
    assert 0 < t8 < t12 <= final_ref["time_s"]
    (wd / "final_metrics.json").unlink()  # killed after the last checkpoint: resume at the end
    t0 = time.perf_counter()
    final = train.train_and_evaluate(_cfg(variant="block,tiny"), wd)
    this_call = time.perf_counter() - t0
    # the earlier call's 12 steps count, plus at most this call's own time (the final evaluation)
    assert t12 <= final["time_s"] <= t12 + this_call
    assert final["train/loss"] == final_ref["train/loss"]


def test_invalid_config_writes_nothing_and_a_corrected_one_runs(reference_run, tmp_path):
    _, final_ref = reference_run
    bads = ("model.residual='fulll'", "train.trainable='router-only'", "seed=None",
            f"train.init_from='{tmp_path / 'nowhere'}'")
    for bad in bads:
        with pytest.raises(ValueError, match=bad.split("=")[0].split(".")[-1]):
            train.train_and_evaluate(_cfg(bad, variant="block,tiny"), tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # no config.json, lock released
    final = train.train_and_evaluate(_cfg(variant="block,tiny"), tmp_path)
    assert final["test/nll"] == final_ref["test/nll"]


def test_a_second_process_on_the_workdir_is_refused(tmp_path):
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "what": "routecal study",
              "since": "2026-01-01T00:00:00+00:00"}  # pytest's parent process: alive
    (tmp_path / workdir.LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(workdir.WorkdirLocked, match=rf"in use by routecal study \(pid {os.getppid()}"):
        train.train_and_evaluate(_cfg(variant="block,tiny"), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [workdir.LOCK_NAME]  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["full", "block", "standard"])
def test_default_config_reaches_95_percent_on_digits(variant, tmp_path):
    final = train.train_and_evaluate(_cfg(variant=variant), tmp_path, mesh=parallel.make_mesh(1))
    assert final["test/accuracy"] >= 0.95, final
