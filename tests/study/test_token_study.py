"""The LM study end to end on synthetic token predictions (a stand-in producer replaces training):
stages, results, report, and a kill during diagnostics followed by a rerun."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest

from routecal.config import load_config
from routecal.files import predictions
from routecal.stats import diagnostics, sequences
from routecal.study import grid, token_stages, token_unit
from routecal.study import run as study

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPLITS = ("calib", "test", "far")


def _write(path, *, seed, routed, n_seq=16, seq_len=24, n_sub=3, doc_id=True):
    rng = np.random.default_rng(seed)
    n = n_seq * seq_len
    conf = rng.uniform(0.1, 0.95, n)
    d = {"confidence": conf, "correct": (rng.random(n) < conf).astype(np.int8),
         "entropy": rng.gamma(2, 1, n), "seq_id": np.repeat(np.arange(n_seq), seq_len),
         "position": np.tile(np.arange(seq_len), n_seq)}
    if doc_id:  # documents of 1, 2 or 3 rows, cut at row 5 mid-row (rows span documents)
        d["doc_id"] = np.minimum(np.repeat(np.arange(n_seq), seq_len) * 2 // 3, n_seq)
        d["doc_id"][5 * seq_len + seq_len // 2:] += 1
    if routed:
        d |= {"H_norm": rng.uniform(0, 1, (n, n_sub)), "depth_var": rng.gamma(2, 1, (n, n_sub)),
              "depth_mean": rng.uniform(0, 2, (n, n_sub))}
    np.savez(path, **d)


def produce(model, seed, run_dir):
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, split in enumerate(SPLITS):
        paths[split] = str(run_dir / f"{split}.npz")
        _write(paths[split], seed=10 * seed + k + 3 * model.routed, routed=model.routed)
    alpha = np.tril(np.full((3, 3), 1 / 3))  # 3 sites over up to 3 sources
    depth = {d: {"alpha_mean": alpha.tolist(), "n_sources": [1, 2, 3],
                 "sublayer_names": ["a", "b", "readout"]} for d in ("in", "far")}
    return {"paths": paths, "metrics": {"test_bits_per_byte": 2.5}, "train_seconds": 0.0,
            "depth_attention": depth if model.routed else {}}


@pytest.fixture
def cfg():
    return load_config(f"{ROOT}/configs/study_lm.py:quick", [
        "seeds=(0, 1)", "domains=('in:test', 'far:far')", "diagnostics.features=('H_mean', 'depth_var_mean_vs_seq')",
        "diagnostics.n_permutations=99", "diagnostics.max_tokens=300",
        "diagnostics.power_kwargs.n_datasets=10", "diagnostics.paper_power_datasets=10",
        "diagnostics.paper_power_permutations=19",
        "probes.bandwidth_rules=('scott', 'cv_nll')", "probes.sweep_multiples=(1.0,)",
        "diagnostics.cluster_unit=document",  # quick's 2 kB splits cluster by rows
        "diagnostics.tests=('within_bin', 'conditional')",  # omnibus: tests/stats, tokens
        "sections=('diagnostics', 'power', 'probes', 'temperature')",  # VMoER: test_lm_vmoer_section.py
    ])


def _numbers(obj):
    """Everything but meta and timings (wall-clock seconds differ between runs)."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()
                if k != "meta" and "seconds" not in k}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


@pytest.mark.slow
def test_study_kill_during_diagnostics_then_rerun(cfg, tmp_path, monkeypatch):
    ref = study.run(cfg, tmp_path / "ref", producer=produce)
    # Every cell's numbers: an independent call of the engine on the same thinned tokens.
    row = ref["diagnostics"]["tests"][0]
    t = token_stages.load_tokens(tmp_path / "ref/runs/full/seed0/test.npz", "t")
    t = predictions.subset(t, sequences.thin_sequences(t["doc_id"], 300, seed=0))  # whole documents
    cell_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 0)  # cell 0, feat 0
    direct = diagnostics.within_bin_permutation_test(
        t["confidence"], t["correct"], predictions.routing_features(t)["H_mean"],
        key=jax.random.fold_in(cell_key, 0), n_permutations=99)
    assert (row["domain"], row["arch"], row["seed"], row["feature"]) == ("in", "full", 0,
                                                                         "H_mean")
    assert row["p_value"] == pytest.approx(float(direct.p_value))
    assert row["statistic"] == pytest.approx(float(direct.statistic))
    # tests x domains x models x seeds x features
    assert len(ref["diagnostics"]["tests"]) == 2 * 2 * 2 * 2 * 2
    rec = [r for r in ref["diagnostics"]["tests"] if r["test"] == "conditional"][0]
    direct = diagnostics.conditional_calibration_test(
        t["confidence"], t["correct"], predictions.routing_features(t)["H_mean"], clusters=t["doc_id"],
        key=jax.random.fold_in(cell_key, 1), n_permutations=99)
    assert rec["p_value"] == pytest.approx(direct.p_value)
    sizes = np.unique(t["doc_id"], return_counts=True)[1]
    assert rec["cluster_unit"] == "document" and rec["n_clusters"] == len(sizes)
    assert rec["n_eff_clusters"] == pytest.approx(sizes.sum() ** 2 / np.sum(sizes**2.0))
    assert ref["diagnostics"]["clusters"]["in"]["n_clusters"] == [len(sizes)] * 2
    assert {p["test"] for p in ref["power"]} == {"within_bin", "conditional"}
    assert set(ref["probes"]["domains"]) == {"in", "far"}
    assert ref["meta"]["wall_seconds"] > 0 and ref["meta"]["peak_rss_mb"] > 0
    v = ref["verdicts"]
    assert "control:" in v["diagnostics"] and "power:" in v["diagnostics"]
    assert "Seed-band rule" in v["diagnostics"] and "Seed-band rule" in v["probes"]
    html = (tmp_path / "ref/report.html").read_text()
    assert html.index("At a glance") < html.index("Verdicts") and "data:image/png" in html
    assert set(ref["depth_attention"]) == {"in", "far"}
    assert {p.name for p in (tmp_path / "ref/figures").iterdir()} >= {
        "power.png", "nulls_within_bin.png", "reliability_in.png", "bandwidth_far.png", "depth_far.png"}

    calls = {"n": 0}
    real = grid.test_cell

    def dies_after_five(*a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("killed during diagnostics")
        return real(*a, **k)

    monkeypatch.setattr(grid, "test_cell", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        study.run(cfg, tmp_path / "w", producer=produce)
    assert not (tmp_path / "w/results.json").exists()
    calls["n"] = 0
    monkeypatch.setattr(grid, "test_cell", lambda *a, **k: (
        calls.__setitem__("n", calls["n"] + 1), real(*a, **k))[1])
    again = study.run(cfg, tmp_path / "w", producer=produce)
    assert calls["n"] == 16 - 5  # only the unfinished cells ran (each runs both tests)
    assert again["meta"]["wall_seconds"] is None  # a resumed run has no fresh wall time
    assert json.dumps(_numbers(again), sort_keys=True) == json.dumps(_numbers(ref),
                                                                     sort_keys=True)


def test_power_seeds_selects_the_first_seeds_cells(cfg):
    from routecal.study.plan import Plan

    cfg.diagnostics.power_seeds = 1
    plan = Plan.from_config(cfg)
    assert plan.tokens.power_seeds == (0,)
    assert plan.power_cells() == [c for c in plan.cells() if c[2] == 0]
    assert len(plan.power_cells()) == len(plan.cells()) // 2
    cfg.diagnostics.power_seeds = 2
    assert Plan.from_config(cfg).power_cells() == plan.cells()
    for bad in (0, 3, 1.5, True):
        with cfg.ignore_type():
            cfg.diagnostics.power_seeds = bad
        with pytest.raises(ValueError, match="diagnostics.power_seeds"):
            Plan.from_config(cfg)


@pytest.mark.slow
def test_worker_computes_pending_stages_in_reverse_with_the_same_numbers(cfg, tmp_path):
    ref = study.run(cfg, tmp_path / "ref", producer=produce, write_report=False)
    w = tmp_path / "w"
    with pytest.raises(ValueError, match="has not finished its runs"):
        study.run(cfg, w, worker=True)  # nothing trained yet (and no config recorded)
    study.run(cfg, w, producer=produce, write_report=False)
    stages = w / "stages"
    analysis = sorted(p for p in stages.glob("*.json")
                      if p.name.startswith(("diag_", "power_", "probes_")))
    removed = analysis[::2]  # every other analysis stage, as if the study had not reached it
    for p in removed:
        p.unlink()
    (w / "results.json").unlink()
    out = study.run(cfg, w, worker=True)
    assert {n.replace(":", "_") for n in out["stages"]} == {p.stem for p in removed}
    assert not (w / "results.json").exists()  # the worker writes no results
    again = study.run(cfg, w, producer=lambda *a: pytest.fail("retrained"),
                         write_report=False)
    assert _numbers(again) == _numbers(ref)


def test_load_tokens_refuses_calib_shards_of_another_run(cfg, tmp_path):
    """A calib shard from another seed (same length, other values) is refused by the fingerprint
    the run stage recorded; the one it recorded loads."""
    from routecal.files import shards
    from routecal.training.token_predict import run_fingerprint

    def write(path, seed):
        with np.load(tmp_path / f"src{seed}.npz") as z:
            w = shards.ShardWriter(path, fingerprint={
                **run_fingerprint({"seed": seed, "model": "full"}, 100), "split": "calib"})
            w.append({k: z[k] for k in z.files})
            return w.close()

    for seed in (0, 1):
        _write(tmp_path / f"src{seed}.npz", seed=seed, routed=True)
    mine, theirs = write(tmp_path / "mine", 0), write(tmp_path / "theirs", 1)
    recorded = study._stored({"paths": {"calib": mine}}, tmp_path)["fingerprints"]
    assert recorded["calib"]["config_hash"] != shards.ShardedColumns(theirs).fingerprint[
        "config_hash"]
    assert len(token_stages.load_tokens(mine, "calib", recorded["calib"])["confidence"]) == 16 * 24
    with pytest.raises(ValueError, match="written by another run .config_hash") as e:
        token_stages.load_tokens(theirs, "calib", recorded["calib"])
    assert str(theirs / "index.json") in str(e.value)
    with pytest.raises(ValueError, match=r"split: 'calib' \(expected 'test'\)"):
        token_stages.load_tokens(mine, "test", {**recorded["calib"], "split": "test"})


def test_cluster_unit_is_validated_and_documents_need_doc_id(cfg, tmp_path):
    from routecal.study.plan import Plan

    assert load_config(f"{ROOT}/configs/study_lm.py").diagnostics.cluster_unit == "document"
    assert Plan.from_config(cfg).tests.cluster_unit == "document"
    cfg.diagnostics.cluster_unit = "file"
    with pytest.raises(ValueError, match=r"diagnostics.cluster_unit.*'file'"):
        Plan.from_config(cfg)
    cfg.diagnostics.cluster_unit = "row"
    rows_plan = Plan.from_config(cfg)
    cfg.diagnostics.cluster_unit = "document"
    doc_plan = Plan.from_config(cfg)
    _write(tmp_path / "old.npz", seed=0, routed=True, doc_id=False)  # predictions before doc_id
    old = token_stages.load_tokens(tmp_path / "old.npz", "old")
    with pytest.raises(ValueError, match=r"old.*no 'doc_id'.*routecal predict.*cluster_unit=row"):
        token_stages.cell_tokens(old, doc_plan, "old")
    one = {k: v[:24] for k, v in old.items()}  # one row (and one document)
    with pytest.raises(ValueError, match=r"cluster_unit: the one tokens hold 1 row.*at least 2"):
        token_stages.cell_tokens(one, rows_plan, "one")
    rows = token_unit.cell_rows(rows_plan, {("full", 0): {"test": old}}, ("in", "full", 0))
    cell = grid.test_cell(rows, "H_mean", key=jax.random.key(0), s=rows_plan.tests,
                          nulls=tmp_path / "n.npz")
    assert (cell["cluster_unit"], cell["n_clusters"]) == ("row", 12)  # 300 tokens: 12 rows of 24
    assert cell["n_eff_clusters"] == pytest.approx(12.0)


def test_a_workdir_from_before_cluster_unit_does_not_resume(cfg, tmp_path):
    from routecal.study.plan import Plan
    from routecal.study.stages import record_workdir_config

    old = Plan.from_config(cfg).config
    del old["diagnostics"]["cluster_unit"]
    record_workdir_config(tmp_path, old, "study_config.json", "study")
    with pytest.raises(ValueError, match=r"different config \(differs in \['diagnostics'\]"):
        study.run(cfg, tmp_path, producer=produce)
