"""Temperature scaling in the LM study (`routecal.study.temperature`): the stage against a
brute-force reference (the decoder called on whole splits at once, numpy softmax, the shards'
own labels), on an untrained tiny decoder; then (slow) the real quick study resumed from a workdir
lacking the temperature stages."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import scipy.special
from flax import nnx

from routecal.config import load_config
from routecal.data.text import TextSplit, packing
from routecal.files import predictions
from routecal.models.decoder import Decoder, DecoderConfig
from routecal.probes.scaling import TemperatureParams, temperature_fit
from routecal.stats import calibration, sequences
from routecal.study import grid, temperature, token_stages
from routecal.study import run as study
from routecal.study.plan import Plan
from routecal.training import token_predict

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAD = 258
SPLITS = {"calib": 0, "test": 1, "far": 2}  # split -> rng offset (different documents)


def _model(seed=0):
    cfg = DecoderConfig(vocab_size=259, max_len=16, d_model=16, n_layers=2, n_heads=2,
                        mlp_dim=32, residual="full")
    model = Decoder(cfg, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for da in model.residual.depth:  # non-uniform depth attention: routing varies per token
        da.query[...] = rng.normal(size=da.query.shape).astype(np.float32) * 2
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny decoder, its packed splits (~40 rows each) and their token shards, thinned as the
    study may thin them (every 2nd position from 3 on, a token cap that cuts the split)."""
    tmp = tmp_path_factory.mktemp("lmtemp")
    model = _model()
    ids, toks, shards = {}, {}, {}
    for sp, k in SPLITS.items():
        rng = np.random.default_rng(100 + k)
        docs = [rng.integers(0, 256, rng.integers(5, 60)) for _ in range(25)]
        ids[sp] = packing.pack_documents(docs, 16, bos=256, eos=257, pad=PAD, vocab_size=259)
        split = TextSplit(ids[sp], "near", 100, int(np.sum(ids[sp][:, 1:] != PAD)))
        out = token_predict.predict_split(model, split, tmp / sp, pad=PAD, batch_size=8,
                                          every=2, min_position=3, max_tokens=200,
                                          shard_tokens=64)
        shards[sp] = predictions.load(out)
        toks[sp] = token_stages.load_tokens(out, sp)
    plan = Plan.from_config(load_config(f"{ROOT}/configs/study_lm.py:quick", [
        "domains=('in:test', 'far:far')", "probes.max_calib_tokens=120",
        "probes.max_test_tokens=90"]))
    return model, ids, toks, shards, plan


def _brute_logits(model, ids, seq_id, position):
    """Logits [n, V] float64 and labels [n] at (seq_id, position): the whole split in one call."""
    z = np.asarray(model(ids[:, :-1].astype(np.int32)).logits, np.float64)
    return z[seq_id, position], ids[seq_id, position + 1]


def test_streamed_tokens_are_the_shards_tokens(setup):
    """Every stored token is streamed once, with the shard's label, the logits of a whole-split
    call at its (seq_id, position), and the stored confidence / entropy / nll / correct at T=1."""
    model, ids, toks, shards, _ = setup
    for sp in SPLITS:
        s = shards[sp]
        seq, pos = np.asarray(s["seq_id"]), np.asarray(s["position"])
        seen = np.zeros(len(seq), int)
        z = np.zeros((len(seq), 259))
        y = np.zeros(len(seq), int)
        for idx, z_b, y_b in token_predict.token_logits(model, ids[sp], seq, pos, pad=PAD,
                                                         batch_rows=4):  # several batches
            seen[idx] += 1
            z[idx], y[idx] = z_b, y_b
        assert np.all(seen == 1)
        np.testing.assert_array_equal(y, s["label"])
        z_ref, y_ref = _brute_logits(model, ids[sp], seq, pos)
        np.testing.assert_array_equal(y_ref, s["label"])
        np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4)
        p = scipy.special.softmax(z, axis=1)
        np.testing.assert_allclose(p.max(1), s["confidence"], atol=1e-5)
        np.testing.assert_allclose(-np.sum(p * np.log(p), 1), s["entropy"], atol=1e-4)
        np.testing.assert_allclose(-np.log(p[np.arange(len(y)), y]), s["nll"], atol=1e-4)
        np.testing.assert_array_equal(p.argmax(1) == y, s["correct"])


def test_scaled_confidence_at_t1_is_the_stored_confidence(setup):
    model, ids, toks, shards, _ = setup
    for sp in SPLITS:
        conf, nll = temperature.scaled_confidence(model, ids[sp], toks[sp],
                                                     TemperatureParams(1.0), pad=PAD)
        np.testing.assert_allclose(conf, toks[sp]["confidence"], atol=1e-5)
        np.testing.assert_allclose(nll, shards[sp]["nll"], atol=1e-4)


def test_stage_fits_t_as_temperature_fit_on_brute_force_logits(setup):
    model, ids, toks, _, plan = setup
    doms = {"in": toks["test"], "far": toks["far"]}
    out = temperature.temperature_tokens(
        model, ids, toks["calib"], doms, calib_split="calib",
        splits={"in": "test", "far": "far"}, pad=PAD, seed=3, plan=plan)
    # The probes' calib tokens, selected here independently: whole sequences, seeded.
    cal = sequences.thin_sequences(toks["calib"]["seq_id"], 120, seed=3)
    assert 0 < len(cal) < len(toks["calib"]["seq_id"])  # the cap cuts sequences
    z, y = _brute_logits(model, ids["calib"], toks["calib"]["seq_id"][cal],
                         toks["calib"]["position"][cal])
    ref = temperature_fit(z, y)
    assert out["n_calib"] == len(cal)
    assert out["temperature"] == pytest.approx(ref.temperature, rel=1e-4)
    assert out["temperature"] != pytest.approx(1.0, abs=1e-2)  # a real fit, not the start
    nll = [np.mean(scipy.special.logsumexp(z / t, 1) - z[np.arange(len(y)), y] / t)
           for t in (1.0, ref.temperature)]
    assert out["calib_token_nll"]["before"] == pytest.approx(nll[0], rel=1e-5)
    assert out["calib_token_nll"]["after"] == pytest.approx(nll[1], rel=1e-5)
    assert nll[1] <= nll[0]
    # Per domain: the tokens probe_run scores, their scaled confidence and its metrics.
    probes = token_stages.probe_run(toks["calib"], doms, seed=3, plan=plan)
    assert out["n_test"] == probes["n_test"] and out["n_calib"] == probes["n_calib"]
    for row in out["rows"]:
        d = row["domain"]
        t = toks[{"in": "test", "far": "far"}[d]]
        idx = sequences.thin_sequences(t["seq_id"], 90, seed=3)
        zt, yt = _brute_logits(model, ids[{"in": "test", "far": "far"}[d]], t["seq_id"][idx],
                               t["position"][idx])
        p = scipy.special.softmax(zt / ref.temperature, axis=1)
        conf, correct = p.max(1), t["correct"][idx]
        assert row["probe"] == "temperature" and row["temperature"] == out["temperature"]
        assert row["ece"] == pytest.approx(calibration.ece(conf, correct, n_bins=15), abs=1e-6)
        c = np.clip(conf, 1e-7, 1 - 1e-7)
        bnll = -np.mean(correct * np.log(c) + (1 - correct) * np.log(1 - c))
        assert row["nll"] == pytest.approx(bnll, rel=1e-4)  # binary NLL, as every probe row
        assert row["brier"] == pytest.approx(np.mean((conf - correct) ** 2), rel=1e-5)
        assert row["token_nll"] == pytest.approx(
            -np.mean(np.log(p[np.arange(len(yt)), yt])), rel=1e-5)
        assert row["worst_tertile_ece"] is not None
        unc = next(r for r in probes["rows"] if r["probe"] == "uncalibrated" and r["domain"] == d)
        assert unc["ece"] == pytest.approx(calibration.ece(t["confidence"][idx], correct,
                                                           n_bins=15))


def test_mismatched_predictions_are_refused(setup):
    model, ids, toks, _, plan = setup
    t = toks["calib"]
    with pytest.raises(ValueError, match="calib: seq_id/position outside"):
        next(token_predict.token_logits(model, ids["calib"], t["seq_id"], t["position"] + 16,
                                         pad=PAD, name="calib"))
    with pytest.raises(ValueError, match="seq_id, position"):
        next(token_predict.token_logits(model, ids["calib"], t["seq_id"], t["position"][1:],
                                         pad=PAD))
    pad_at = np.argwhere(ids["calib"][:, 1:] == PAD)[0]
    with pytest.raises(ValueError, match="PAD target"):
        next(token_predict.token_logits(model, ids["calib"], pad_at[:1], pad_at[1:], pad=PAD))
    with pytest.raises(ValueError, match="no longer matches its predictions"):
        temperature.temperature_tokens(
            _model(seed=1), ids, t, {"in": toks["test"]}, calib_split="calib",
            splits={"in": "test"}, pad=PAD, seed=0, plan=plan)


def _numbers(obj):
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if k != "meta" and "seconds" not in k}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


@pytest.mark.slow
def test_quick_study_resumes_into_the_temperature_stage_only(tmp_path, monkeypatch):
    """A workdir without temperature stages (an older routecal's) resumes: every other stage is
    skipped, only temperature runs, numbers identical; T equals a brute-force fit on the
    reloaded decoder."""
    cfg = load_config(f"{ROOT}/configs/study_lm.py:quick", [
        "architectures=('full',)", "domains=('in:test', 'far:far')",
        "model_overrides=('train.steps=12', 'train.eval_every=12', 'train.checkpoint_every=12')",
        "diagnostics.features=('H_mean',)", "diagnostics.n_permutations=99",
        "diagnostics.power_kwargs.n_datasets=10", "diagnostics.paper_power_datasets=10",
        "diagnostics.paper_power_permutations=19", "probes.bandwidth_rules=('scott',)",
        "probes.sweep_multiples=(1.0,)", "probes.max_calib_tokens=600",
        "probes.max_test_tokens=500",
        "sections=('diagnostics', 'power', 'probes', 'temperature')"])
    w = tmp_path / "w"
    ref = study.run(cfg, w, write_report=False)
    stage = json.loads((w / "stages/temperature_full_0.json").read_text())
    assert len(list((w / "stages").glob("temperature*"))) == 1
    rows = [r for d in ref["probes"]["domains"].values() for r in d["rows"]
            if r["probe"] == "temperature"]
    assert {(r["arch"], r["domain"]) for r in rows} == {("full", "in"), ("full", "far")}
    summary = [s for s in ref["probes"]["domains"]["in"]["summary"] if s["probe"] == "temperature"]
    assert summary[0]["ece"]["mean"] == pytest.approx(stage["rows"][0]["ece"])

    from routecal.training import checkpoints
    from routecal.training.train import load_config_json, load_trained
    model, _, dataset = load_trained(w / "runs/full/seed0")
    # the shards record the run that wrote them (config hash, checkpoint step 12, split)
    step = checkpoints.manager(w / "runs/full/seed0").latest_step()
    fp = predictions.load(w / "runs/full/seed0/predictions/tokens/calib").fingerprint
    assert step == 12 and fp == {**token_predict.run_fingerprint(
        load_config_json(w / "runs/full/seed0"), step), "split": "calib"}
    calib = token_stages.load_tokens(w / "runs/full/seed0/predictions/tokens/calib", "calib")
    idx = sequences.thin_sequences(calib["seq_id"], 600, seed=0)
    z, y = _brute_logits(model, np.asarray(dataset.split("calib").ids), calib["seq_id"][idx],
                         calib["position"][idx])
    assert stage["temperature"] == pytest.approx(temperature_fit(z, y).temperature, rel=1e-4)

    # The workdir as an older routecal left it: no temperature stages, no results.
    (w / "stages/temperature_full_0.json").unlink()
    (w / "results.json").unlink()
    calls = {}

    def counting(mod, name):
        real = getattr(mod, name)

        def f(*a, **k):
            calls[name] = calls.get(name, 0) + 1
            return real(*a, **k)
        monkeypatch.setattr(mod, name, f)

    for name in ("train_predict", "probe_run"):
        counting(token_stages, name)
    for name in ("test_cell", "power_cell"):
        counting(grid, name)
    counting(temperature, "temperature_run")
    again = study.run(cfg, w, write_report=True)
    assert calls == {"temperature_run": 1}
    assert json.dumps(_numbers(again), sort_keys=True) == json.dumps(_numbers(ref),
                                                                     sort_keys=True)
    assert "Temperature scaling: T fitted" in (w / "report.md").read_text()
