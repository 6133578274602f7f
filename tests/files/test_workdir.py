"""Tests for routecal.files.workdir: atomic writes under failure, readers naming files, paths, the lock."""

import errno
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from routecal.files import workdir

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _leftovers(d: pathlib.Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------


def test_writes_round_trip(tmp_path):
    obj = {"b": [1, 2.5, None], "a": "x"}
    workdir.write_json(tmp_path / "r.json", obj)
    assert json.loads((tmp_path / "r.json").read_text()) == obj  # independent reader
    workdir.write_text(tmp_path / "t.md", "héllo\n")
    assert (tmp_path / "t.md").read_text(encoding="utf-8") == "héllo\n"
    arrays = {"probs": np.random.default_rng(0).random((5, 3)), "labels": np.arange(5)}
    for compressed in (False, True):
        workdir.save_npz(tmp_path / "p.npz", arrays, compressed=compressed)
        with np.load(tmp_path / "p.npz") as z:  # numpy's own reader
            assert sorted(z.files) == ["labels", "probs"]
            for k, v in arrays.items():
                np.testing.assert_array_equal(z[k], v)
        loaded = workdir.load_npz(tmp_path / "p.npz")
        assert all(np.array_equal(loaded[k], v) for k, v in arrays.items())
    workdir.save_npz(tmp_path / "noext", arrays)  # numpy would append ".npz"; the name is kept
    assert (tmp_path / "noext").exists() and not (tmp_path / "noext.npz").exists()
    assert _leftovers(tmp_path) == []


def test_figures_are_written_atomically_in_their_format(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    workdir.save_figure(fig, tmp_path / "f.png", dpi=50)
    workdir.save_figure(fig, tmp_path / "f.svg")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "f.svg").read_bytes()[:1000]
    assert _leftovers(tmp_path) == []


def test_disk_full_keeps_the_old_file_and_names_the_new_one(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    workdir.write_json(target, {"old": True})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(workdir.os, "fsync", full)
    with pytest.raises(OSError, match="results.json") as e:
        workdir.write_json(target, {"new": True})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert json.loads(target.read_text()) == {"old": True}
    assert _leftovers(tmp_path) == []


def test_a_writer_failing_midway_leaves_the_old_file(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old report")
    with pytest.raises(RuntimeError, match="boom"):
        with workdir.atomic_path(target) as tmp:
            tmp.write_text("half a rep")
            raise RuntimeError("boom")
    assert target.read_text() == "old report" and _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Readers name the file
# ----------------------------------------------------------------------------------------------


def test_read_json_names_missing_and_truncated_files(tmp_path):
    p = tmp_path / "stage.json"
    with pytest.raises(ValueError, match=r"stage: no such file .*stage\.json"):
        workdir.read_json(p, "stage")
    p.write_text('{"a": [1, 2')
    with pytest.raises(ValueError, match=r"stage: .*stage\.json' is not valid JSON"):
        workdir.read_json(p, "stage")


def test_read_jsonl_drops_only_a_partial_last_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert workdir.read_jsonl(p) == ([{"step": 1}, {"step": 2}], True)
    p.write_text('{"step": 1}\n{"step": 2}\n')
    assert workdir.read_jsonl(p) == ([{"step": 1}, {"step": 2}], False)
    p.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl' line 2"):
        workdir.read_jsonl(p, "metrics")


def _npz_bytes(tmp_path) -> bytes:
    np.savez(tmp_path / "good.npz", probs=np.full((50, 4), 0.25), labels=np.arange(50) % 4)
    return (tmp_path / "good.npz").read_bytes()


@pytest.mark.parametrize("kind", ["truncated", "bit_flip", "not_zip", "empty", "npy", "missing"])
def test_load_npz_names_the_file_for_each_corruption(tmp_path, kind):
    good = _npz_bytes(tmp_path)
    p = tmp_path / "preds.npz"
    if kind == "truncated":
        p.write_bytes(good[: len(good) // 2])
    elif kind == "bit_flip":  # a byte inside the probs data: the zip CRC catches it
        b = bytearray(good)
        b[len(good) // 4] ^= 0x01
        p.write_bytes(bytes(b))
    elif kind == "not_zip":
        p.write_text("probs,labels\n0.5,1\n")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "npy":
        np.save(p.with_suffix(".npy"), np.zeros(3))
        p.with_suffix(".npy").rename(p)
    with pytest.raises(ValueError, match=r"predictions: .*preds\.npz"):
        workdir.load_npz(p, "predictions")


# ----------------------------------------------------------------------------------------------
# Paths relative to the workdir
# ----------------------------------------------------------------------------------------------


def test_relative_paths_round_trip_and_never_leave_the_workdir(tmp_path):
    w = tmp_path / "w"
    inner = w / "runs" / "full" / "seed0" / "predictions" / "test.npz"
    stored = workdir.to_relative(inner, w)
    assert stored == "runs/full/seed0/predictions/test.npz"
    assert workdir.from_relative(stored, w) == inner
    assert workdir.from_relative(stored, tmp_path / "copy") == tmp_path / "copy" / stored
    with pytest.raises(ValueError, match="outside the workdir"):
        workdir.to_relative(tmp_path / "elsewhere.npz", w)
    for bad in (str(inner), "../other/test.npz", "runs/../../x.npz"):
        with pytest.raises(ValueError, match="not inside the workdir"):
            workdir.from_relative(bad, w)


# ----------------------------------------------------------------------------------------------
# The lock
# ----------------------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys
    from routecal.files import workdir
    with workdir.lock(sys.argv[1], "study"):
        print("locked", flush=True)
        sys.stdin.read()  # hold until the parent closes stdin
    """
)


def _python(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, text=True, **kwargs)


def test_second_process_is_refused_naming_the_holder(tmp_path):
    w = tmp_path / "w"
    child = _python("-c", _HOLDER, str(w), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(workdir.WorkdirLocked, match=rf"routecal study \(pid {child.pid} on "
                           rf"host {socket.gethostname()}"):
            with workdir.lock(w, "train"):
                pass
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    assert child.returncode == 0
    assert not (w / workdir.LOCK_NAME).exists()  # released at the end of the holder's run
    with workdir.lock(w, "train"):  # free now
        assert json.loads((w / workdir.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (w / workdir.LOCK_NAME).exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path, capsys):
    w = tmp_path / "w"
    w.mkdir()
    dead = _python("-c", "pass")
    dead.wait(timeout=60)
    holder = {"pid": dead.pid, "host": socket.gethostname(), "what": "routecal train",
              "since": "2026-01-01T00:00:00+00:00"}
    (w / workdir.LOCK_NAME).write_text(json.dumps(holder))
    with workdir.lock(w, "study"):
        assert json.loads((w / workdir.LOCK_NAME).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert "stale lock" in err and f"pid {dead.pid}" in err
    (w / workdir.LOCK_NAME).write_text('{"pid": 12')  # a lock file cut short is stale too
    with workdir.lock(w, "study"):
        pass
    assert "unreadable lock file" in capsys.readouterr().err


def test_lock_is_reentrant_in_one_process_and_refuses_other_hosts(tmp_path):
    w = tmp_path / "w"
    with workdir.lock(w):
        with workdir.lock(w):
            pass
        assert (w / workdir.LOCK_NAME).exists()  # still held by the outer block
    assert not (w / workdir.LOCK_NAME).exists()
    other = {"pid": os.getpid(), "host": "some-other-host", "since": "x"}
    (w / workdir.LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(workdir.WorkdirLocked, match="some-other-host"):
        with workdir.lock(w):
            pass
    with workdir.lock(w, enabled=False):  # a non-primary process of a multi-host job
        pass
    assert json.loads((w / workdir.LOCK_NAME).read_text()) == other
