"""pipeline.stages: the stage cache, the workdir-config guard shared with train, JSON I/O."""

import json

import numpy as np
import pytest

from routecal.study import stages


def test_stage_runs_once_and_is_timed(tmp_path):
    st = stages.Stages(tmp_path)
    calls = []

    def fn():
        calls.append(1)
        return {"x": np.float32(1.5), "a": np.arange(2)}

    first = st.run("probes:full:0", fn)
    again = st.run("probes:full:0", fn)
    assert calls == [1]
    assert first == again and first["x"] == 1.5 and first["a"] == [0, 1] and first["seconds"] >= 0
    assert st.path("probes:full:0").name == "probes_full_0.json"
    assert not list((tmp_path / "stages").glob("*.tmp"))


def test_workdir_config_guard(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    stages.check_workdir_config(w, {"a": 1}, "config.json", "run")  # nothing recorded: no check
    assert not (w / "config.json").exists()
    stages.record_workdir_config(w, {"a": 1, "b": 2}, "config.json", "run")
    stages.record_workdir_config(w, {"b": 2, "a": 1}, "config.json", "run")
    assert json.loads((w / "config.json").read_text()) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match=r"holds a run with a different config \(differs in \['b'\]"):
        stages.check_workdir_config(w, {"a": 1, "b": 3}, "config.json", "run")
    (w / "config.json").write_text('{"a": ')  # truncated by a kill: named, not a bare JSON error
    with pytest.raises(ValueError, match="config.json"):
        stages.check_workdir_config(w, {"a": 1}, "config.json", "run")


def test_to_json_handles_numpy_and_nan():
    out = json.loads(stages.dumps({"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"),
                                   "d": np.bool_(True), "e": (np.int64(2),)}))
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": True, "e": [2]}


def test_an_unreadable_or_rejected_stage_is_recomputed_with_a_message(tmp_path, capsys):
    st = stages.Stages(tmp_path)
    calls = []

    def fn():
        calls.append(1)
        return {"paths": {"test": "runs/a/test.npz"}}

    first = st.run("predict:a:0", fn)
    assert st.run("predict:a:0", fn) == first and len(calls) == 1  # done: skipped
    st.path("predict:a:0").write_text('{"paths": {"te')  # a torn write
    assert st.run("predict:a:0", fn)["paths"] == first["paths"] and len(calls) == 2
    assert "predict_a_0.json' is not valid JSON" in capsys.readouterr().err

    def inside(value):
        if value["paths"]["test"].startswith("/"):
            raise ValueError("path outside the workdir")

    st.save("predict:a:0", {"paths": {"test": "/elsewhere/test.npz"}})  # an older routecal's
    assert st.run("predict:a:0", fn, check=inside)["paths"] == first["paths"] and len(calls) == 3
    assert "path outside the workdir; recomputing it" in capsys.readouterr().err
