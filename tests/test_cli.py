"""Tests for the `routecal` command: bad input ends in one line, and never poisons a workdir."""

import json
import os
import pathlib
import socket

import numpy as np
import pytest

from routecal import cli
from routecal.files import workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "configs" / "attnres_digits.py") + ":block,tiny"


def _train(w, *overrides):
    return cli.main(["train", "--config", QUICK, "--workdir", str(w), *overrides])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.train.steps=abc", "routecal train: config: train.steps='abc' has type str"),
        ("--config.train.lr=fast", "routecal train: config: train.lr='fast' has type str"),
        ("--config.train.stpes=3", "routecal train: config: unknown key 'train.stpes'"),
        ("--bogus", "routecal train: unrecognised argument '--bogus'"),
    ],
)
def test_bad_overrides_end_in_one_line_before_any_write(tmp_path, override, message):
    w = tmp_path / "w"
    with pytest.raises(SystemExit) as e:
        _train(w, override)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert not w.exists()


def test_invalid_override_then_valid_one_on_the_same_workdir(tmp_path, monkeypatch):
    from routecal.training import train

    # The training loop itself is not under test here (tests/training/test_train.py runs it after a
    # rejected config): stop where it would start, after every check and the config.json write.
    monkeypatch.setattr(train, "_loop", lambda *a, **k: {"step": 0, "finished": False})
    w = tmp_path / "w"
    with pytest.raises(SystemExit, match=r"^routecal train: model\.residual"):
        _train(w, "--config.model.residual=fulll")
    assert not (w / "config.json").exists()
    assert _train(w, "--config.train.steps=4") == 0
    assert json.loads((w / "config.json").read_text())["train"]["steps"] == 4
    with pytest.raises(SystemExit, match=r"^routecal train: workdir: .* different config"):
        _train(w, "--config.train.steps=5")


def test_a_workdir_in_use_is_refused_naming_the_holder(tmp_path):
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "what": "routecal study",
              "since": "2026-01-01T00:00:00+00:00"}  # pytest's parent process: alive
    (tmp_path / workdir.LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(SystemExit, match=rf"^routecal train: workdir: .* \(pid {os.getppid()} on"):
        _train(tmp_path)


def test_diagnose_names_a_file_that_is_not_an_npz(tmp_path):
    np.save(tmp_path / "preds.npy", np.full((10, 2), 0.5))
    with pytest.raises(SystemExit, match=r"^routecal diagnose: predictions: .*preds\.npy' is a "
                                         r"single \.npy array"):
        cli.main(["diagnose", "--predictions", str(tmp_path / "preds.npy")])
