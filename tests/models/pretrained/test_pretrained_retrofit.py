"""VMoER retrofit on a tiny imported checkpoint: only the posterior moves, checkpoints resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx
from tiny_hf import V

from routecal.models.pretrained import load_hf
from routecal.models.pretrained.retrofit import (
    POSTERIOR,
    RetrofitConfig,
    choice_logits,
    restore_posterior,
    retrofit,
)

LETTERS = np.array([3, 4, 5, 6])  # token ids of "A".."D" in the tiny vocabulary
OVERRIDES = {"mlp_type": "vmoer_mfvr", "vmoer": {"beta": 1e-3}}
CFG = RetrofitConfig(steps=6, lr=0.05, warmup=1, checkpoint_every=3)  # one config: one compile


def batches(step: int) -> dict:
    """A pure function of the step: 4 synthetic MCQA prompts of 8 tokens, 4 options each."""
    rng = np.random.default_rng(1000 + step % 2)
    return {
        "ids": rng.integers(0, V, (4, 8)).astype(np.int32),
        "position": np.full(4, 7, np.int32),
        "choice_ids": np.tile(LETTERS, (4, 1)).astype(np.int32),
        "label": rng.integers(0, 4, 4).astype(np.int32),
    }


def _flat(model, filt):
    f = nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, filt)))
    return {k: np.asarray(v) for k, v in f.items()}


def _metrics(workdir):
    return [json.loads(x) for x in (workdir / "retrofit_metrics.jsonl").read_text().splitlines()]


def _others(model):
    return _flat(model, nnx.All(nnx.Param, nnx.Not(POSTERIOR)))


def test_only_the_posterior_moves_and_the_loss_falls(checkpoint, tmp_path):
    d, _, _ = checkpoint("olmoe", num_hidden_layers=1)  # one layer: a quicker compile
    model, info = load_hf(d, dtype="float32", overrides=OVERRIDES)
    frozen_before, post_before = _others(model), _flat(model, POSTERIOR)
    fixed = batches(0)
    logits0, _ = choice_logits(model, fixed)
    summary = retrofit(model, lambda s: fixed, tmp_path / "w", CFG)
    frozen_after, post_after = _others(model), _flat(model, POSTERIOR)
    assert frozen_after.keys() == frozen_before.keys()
    for k in frozen_before:
        np.testing.assert_array_equal(frozen_after[k], frozen_before[k])
    assert any(np.abs(post_after[k] - post_before[k]).max() > 0 for k in post_before)
    assert summary["n_posterior_params"] == sum(v.size for v in post_before.values())
    lines = _metrics(tmp_path / "w")
    assert [r["step"] for r in lines] == list(range(1, CFG.steps + 1))
    assert lines[-1]["ce"] < lines[0]["ce"]  # the posterior alone fits the fixed batch a little
    assert info.fresh_params and logits0.shape == (4, 4)


class Killed(Exception):
    pass


def test_resume_after_a_kill_equals_the_uninterrupted_run(checkpoint, tmp_path):
    d, _, _ = checkpoint("olmoe", num_hidden_layers=1)
    straight, _ = load_hf(d, dtype="float32", overrides=OVERRIDES, seed=3)
    retrofit(straight, batches, tmp_path / "a", CFG)

    def dies_at_step_5(step):
        if step == 4:
            raise Killed  # after the step-3 checkpoint and the step-4 metrics line
        return batches(step)

    first, _ = load_hf(d, dtype="float32", overrides=OVERRIDES, seed=3)
    with pytest.raises(Killed):
        retrofit(first, dies_at_step_5, tmp_path / "b", CFG)
    assert len(_metrics(tmp_path / "b")) == 4
    resumed, _ = load_hf(d, dtype="float32", overrides=OVERRIDES, seed=3)  # a new process
    out = retrofit(resumed, batches, tmp_path / "b", CFG)
    assert out["start_step"] == 3
    a, b = _flat(straight, POSTERIOR), _flat(resumed, POSTERIOR)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-7)
    ma, mb = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [r["step"] for r in mb] == list(range(1, CFG.steps + 1))
    np.testing.assert_allclose([r["loss"] for r in mb], [r["loss"] for r in ma], rtol=1e-5)

    fresh, _ = load_hf(d, dtype="float32", overrides=OVERRIDES, seed=9)
    assert restore_posterior(fresh, tmp_path / "a") == CFG.steps
    c = _flat(fresh, POSTERIOR)
    for k in a:
        np.testing.assert_array_equal(c[k], a[k])


def test_errors(checkpoint, tmp_path):
    d, _, _ = checkpoint("olmoe")
    det, _ = load_hf(d, dtype="float32")
    with pytest.raises(ValueError, match="no routing posterior"):
        retrofit(det, batches, tmp_path, RetrofitConfig(steps=1))
    with pytest.raises(ValueError, match="retrofit.steps"):
        RetrofitConfig(steps=0)
    with pytest.raises(ValueError, match="no posterior checkpoint"):
        restore_posterior(det, tmp_path / "empty")


@pytest.mark.slow  # one import and eager forward pass per router (~1 min on a loaded CPU)
def test_every_router_imports_and_selects_its_retrofit_parameters(checkpoint):
    """Each registry router builds on the imported weights: the deterministic router kernel is the
    checkpoint's, fresh parameters are only posterior ones, and the retrofit selection is
    non-empty exactly when the registry says the router has something to fit."""
    from routecal.models import routers
    from routecal.training.optim import trainable_filter

    d, _, t = checkpoint("olmoe", num_hidden_layers=1)
    ids = np.random.default_rng(0).integers(0, V, (1, 5))
    for name in routers.ROUTERS:
        mlp_type = "moe" if name == "det" else f"vmoer_{name}"
        model, info = load_hf(d, dtype="float32", overrides={"mlp_type": mlp_type})
        np.testing.assert_array_equal(_flat(model, nnx.Param)[("layers", 0, "mlp", "router",
                                                               "proj", "kernel")],
                                      t["model.layers.0.mlp.gate.weight"].T, err_msg=name)
        assert all("vrouter" in p for p in info.fresh_params), name
        assert np.all(np.isfinite(np.asarray(model(ids).logits))), name
        pattern = routers.RETROFIT_TRAINABLE[name]
        n = 0 if pattern is None else len(_flat(model, trainable_filter(pattern)))
        assert (n > 0) == (pattern is not None), name


def test_metrics_truncate_drops_a_killed_append_and_rewrites_atomically(tmp_path):
    """A kill mid-append leaves a partial last line: the resume keeps the steps up to the
    checkpoint and rewrites the log whole (temp file + rename, no leftover)."""
    from routecal.models.pretrained import retrofit as retrofit_mod

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3))
                    + '{"step": 4, "lo')
    retrofit_mod._truncate(path, 2)
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_stop_ends_the_fit_checkpointed_and_a_resume_trains_no_further(checkpoint, tmp_path):
    """`stop` (e.g. the ensemble members' plateau rule) sees the per-step ce, resumed steps
    included; the fit ends at the first True, with a checkpoint there, and a rerun of the same
    cell trains nothing more."""
    d, _, _ = checkpoint("olmoe", num_hidden_layers=1)
    seen = []

    def after_four(losses):
        seen.append(list(losses))
        return len(losses) >= 4

    model, _ = load_hf(d, dtype="float32", overrides=OVERRIDES, seed=3)
    out = retrofit(model, batches, tmp_path / "w", CFG, stop=after_four)
    lines = _metrics(tmp_path / "w")
    assert out["step"] == 4 and [r["step"] for r in lines] == [1, 2, 3, 4]
    assert seen[-1] == [r["ce"] for r in lines]  # the recorded per-step ce, in order
    assert restore_posterior(load_hf(d, dtype="float32", overrides=OVERRIDES, seed=9)[0],
                             tmp_path / "w") == 4
    again, _ = load_hf(d, dtype="float32", overrides=OVERRIDES, seed=3)
    out = retrofit(again, batches, tmp_path / "w", CFG, stop=after_four)
    assert out["start_step"] == 4 and out["step"] == 4 and len(_metrics(tmp_path / "w")) == 4
