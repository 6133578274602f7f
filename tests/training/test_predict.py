"""Tests for routecal.training.predict: npz contents against direct model calls and routecal.training.traces."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from routecal.config import load_config
from routecal.data import Split
from routecal.models.transformer import ModelConfig, Transformer
from routecal.training import predict, traces, train

CONFIG = str(pathlib.Path(__file__).parents[2] / "configs" / "attnres_digits.py")


def _small_model(residual="full"):
    cfg = ModelConfig(
        seq_len=16,
        token_dim=4,
        num_classes=10,
        d_model=8,
        n_layers=1,
        n_heads=2,
        mlp_dim=8,
        residual=residual,
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for da in model.residual.depth:  # non-uniform routing
        da.query[...] = rng.normal(size=da.query.shape).astype(np.float32)
    return model


def _tokens(n, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, 16, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pred")
    train.train_and_evaluate(load_config(f"{CONFIG}:block,tiny"), wd)
    return wd


def test_predict_workdir_writes_consistent_npz(trained_workdir):
    model, _, dataset = train.load_trained(trained_workdir)
    shifted = Split(1.0 - dataset.test.tokens[:20], dataset.test.labels[:20])
    paths = predict.predict_workdir(trained_workdir, extra_splits={"inverted": shifted})
    assert set(paths) == {"calib", "test", "inverted"}
    for name, split in (("test", dataset.test), ("inverted", shifted)):
        d = np.load(paths[name])
        n, s = len(split), 2 * 2 + 1
        assert d["probs"].shape == (n, 10) and d["probs"].dtype == np.float32
        np.testing.assert_allclose(d["probs"].sum(1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(d["labels"], split.labels)
        ref_probs = np.asarray(jax.nn.softmax(model(split.tokens).logits, axis=-1))
        np.testing.assert_allclose(d["probs"], ref_probs, rtol=1e-5, atol=1e-6)
        alphas = model(split.tokens, return_traces=True).traces["alpha"]
        summ = traces.summarize(alphas)
        for k in ("H", "H_norm", "depth_mean", "depth_var"):
            assert d[k].shape == (n, s)
            np.testing.assert_allclose(d[k], summ[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(d["n_sources"], [1, 2, 2, 3, 3])  # Block AttnRes, N = 2
        for l, k in enumerate(d["n_sources"]):
            np.testing.assert_allclose(d["alpha_mean"][l, :k].sum(), 1.0, rtol=1e-5)
            np.testing.assert_array_equal(d["alpha_mean"][l, k:], 0.0)
        assert list(d["sublayer_names"]) == [
            "layer0.attn",
            "layer0.mlp",
            "layer1.attn",
            "layer1.mlp",
            "readout",
        ]
    with pytest.raises(ValueError, match="clashes"):
        predict.predict_workdir(trained_workdir, extra_splits={"test": shifted})


def test_fixed_batch_padding_does_not_change_results():
    model = _small_model()
    x = _tokens(13)
    a = predict.predict_arrays(model, x, batch_size=5)  # 3 batches, last padded
    b = predict.predict_arrays(model, x, batch_size=16)
    np.testing.assert_allclose(a["probs"], b["probs"], rtol=1e-5, atol=1e-7)
    assert len(a["alpha"]) == 3
    for u, v in zip(a["alpha"], b["alpha"], strict=True):
        assert u.shape[0] == 13
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(u.sum(-1), 1.0, rtol=1e-5)


def test_standard_residual_has_no_routing_columns():
    model = _small_model("standard")
    rec = predict.predictions_record(model, Split(_tokens(6), np.arange(6, dtype=np.int32)))
    assert rec["probs"].shape == (6, 10)
    for k in ("H", "H_norm", "depth_mean", "depth_var"):
        assert rec[k].shape == (6, 0)
    assert rec["alpha_mean"].shape == (0, 0) and rec["n_sources"].shape == (0,)
    assert rec["sublayer_names"].shape == (0,)


def test_bad_input_raises():
    model = _small_model()
    with pytest.raises(ValueError, match="tokens"):
        predict.predict_arrays(model, _tokens(4)[:, :8], batch_size=4)
    with pytest.raises(ValueError, match="tokens"):
        predict.predict_arrays(model, np.full((2, 16, 4), np.nan), batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        predict.predict_arrays(model, _tokens(4), batch_size=0)
    with pytest.raises(ValueError, match="config.json"):
        predict.predict_workdir("/nonexistent/routecal_workdir")


def test_cli_train_then_predict(tmp_path, trained_workdir):
    from routecal import cli

    wd = tmp_path / "cli"
    assert cli.main(["train", "--config", f"{CONFIG}:block,tiny", "--workdir", str(wd)]) == 0
    assert cli.main(["predict", "--workdir", str(wd)]) == 0
    d = np.load(wd / "predictions" / "test.npz")
    ref = np.load(predict.predict_workdir(trained_workdir, splits=("test",))["test"])  # same cfg
    np.testing.assert_allclose(d["probs"], ref["probs"], rtol=1e-6)
    with pytest.raises(SystemExit, match="unknown key"):
        cli.main(
            ["train", "--config", f"{CONFIG}:tiny", "--workdir", str(wd), "--config.train.stpes=3"]
        )
