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


def test_run_all_on_one_process_runs_pending_stages_in_order(tmp_path):
    st = stages.Stages(tmp_path)
    st.save("b", {"v": 0})  # stored before: skipped
    calls = []
    tasks = [(n, lambda n=n: calls.append(n) or {"v": n}) for n in ("c", "b", "a")]
    seen = []
    out = st.run_all(tasks, on_stage=seen.append)
    assert calls == ["c", "a"] == seen and out["b"] == {"v": 0} and out["a"]["v"] == "a"
    assert list(out) == ["c", "b", "a"]
    with pytest.raises(ValueError, match="repeat"):
        st.run_all([("a", dict), ("a", dict)])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("n_proc", [2, 3])
def test_run_all_gives_each_stage_to_one_process_alone(tmp_path, monkeypatch, n_proc):
    """Multi-host, simulated in one process (process 0 first; each but the last stops at the
    closing barrier): every pending stage is computed exactly once, by its owner (round-robin
    over the sorted names), alone (its own devices, primary inside its stage); an `spmd` stage by
    every process; every process reads every stage after one barrier."""
    import jax

    from routecal import parallel

    st = stages.Stages(tmp_path)
    st.save("s1", {"v": 1})  # stored: nobody computes it
    calls = []

    def thunk(name):
        def fn():
            calls.append((me, name, parallel.is_alone(), parallel.is_primary(),
                          parallel.make_mesh().size))
            return {"v": name}
        return fn

    tasks = [(n, thunk(n)) for n in ("s3", "s1", "s0", "s4", "s2")]  # owners by sorted name
    tasks.append(("together", stages.spmd(thunk("together"))))
    decided = [n == "s1" for n, _ in tasks]  # process 0's view, broadcast
    monkeypatch.setattr(parallel, "broadcast_flags",
                        lambda flags: decided if len(flags) == len(decided) else [False])
    monkeypatch.setattr(jax, "process_count", lambda: n_proc)
    barriers = []
    for me in range(n_proc):
        monkeypatch.setattr(jax, "process_index", lambda me=me: me)

        def barrier(name, me=me):
            if name.startswith("Stages.run_all"):
                barriers.append(me)
                if me < n_proc - 1:
                    raise _Stop  # a later process has not computed its stages yet
        monkeypatch.setattr(parallel, "barrier", barrier)
        if me < n_proc - 1:
            with pytest.raises(_Stop):
                st.run_all(tasks)
        else:
            out = st.run_all(tasks)
    pending = ["s0", "s2", "s3", "s4"]
    alone = sorted(c[:2] for c in calls if c[1] != "together")
    assert alone == sorted((k % n_proc, n) for k, n in enumerate(pending))
    assert all(c[2] and c[3] and c[4] == len(jax.local_devices()) for c in calls
               if c[1] != "together")
    assert sorted(c[0] for c in calls if c[1] == "together") == list(range(n_proc))
    assert barriers == list(range(n_proc))
    assert {n: v["v"] for n, v in out.items() if n != "together"} == {
        "s0": "s0", "s1": 1, "s2": "s2", "s3": "s3", "s4": "s4"}
