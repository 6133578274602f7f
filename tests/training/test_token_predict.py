"""Tests for routecal.files.shards, routecal.training.token_predict and routecal.files.predictions.load."""

import numpy as np
import pytest
from flax import nnx

from routecal.data.text import TextSplit, packing
from routecal.files import predictions, shards
from routecal.models.decoder import Decoder, DecoderConfig
from routecal.training import token_predict

PAD = 258


def test_shard_writer_round_trips_blocks_and_bounds_shard_size(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [
        {"x": rng.normal(size=(n, 3)).astype(np.float32), "y": rng.integers(0, 9, n)}
        for n in (5, 0, 11, 2, 9)
    ]
    w = shards.ShardWriter(tmp_path / "s", shard_rows=7, meta={"a": 1})
    for b in blocks:
        w.append(b)
    w.close()
    cols = predictions.load(tmp_path / "s")
    assert isinstance(cols, shards.ShardedColumns) and cols.meta == {"a": 1}
    n = sum(len(b["y"]) for b in blocks)
    assert cols.n_rows == n and len(cols.index["shards"]) == -(-n // 7)
    assert all(s["n"] <= 7 for s in cols.index["shards"])
    np.testing.assert_array_equal(cols["x"], np.concatenate([b["x"] for b in blocks]))
    np.testing.assert_array_equal(cols["y"], np.concatenate([b["y"] for b in blocks]))
    assert sum(len(s["y"]) for s in cols.iter_shards(["y"])) == n
    with pytest.raises(ValueError, match="columns changed"):
        w2 = shards.ShardWriter(tmp_path / "t", shard_rows=4)
        w2.append({"x": np.zeros((2, 3))})
        w2.append({"x": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="common leading length"):
        shards.ShardWriter(tmp_path / "u").append({"a": np.zeros(2), "b": np.zeros(3)})
    (tmp_path / "s" / "shard_00001" / "x.npy").unlink()
    (tmp_path / "s" / "shard_00001" / "y.npy").unlink()
    (tmp_path / "s" / "shard_00001").rmdir()
    with pytest.raises(ValueError, match="shard_00001 listed in"):
        predictions.load(tmp_path / "s")
    with pytest.raises(ValueError, match="no index.json"):
        predictions.load(tmp_path)


def _setup(seed=0, **kw):
    cfg = DecoderConfig(
        vocab_size=259, max_len=16, d_model=16, n_layers=2, n_heads=2, mlp_dim=32, **kw
    )
    model = Decoder(cfg, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    for da in model.residual.depth:
        da.query[...] = rng.normal(size=da.query.shape).astype(np.float32) * 2
    docs = [rng.integers(0, 256, rng.integers(5, 40)) for _ in range(9)]
    ids = packing.pack_documents(docs, 16, bos=256, eos=257, pad=PAD, vocab_size=259)
    return model, TextSplit(ids, "near", 100, int(np.sum(ids[:, 1:] != PAD)))


def _reference(model, split, every, min_position):
    """The records computed on the whole split at once with numpy, then selected."""
    rows = split.ids.astype(np.int64)
    out = model(rows[:, :-1], return_traces=True)
    logits = np.asarray(out.logits, np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    tgt = rows[:, 1:]
    t = np.arange(tgt.shape[1])[None, :]
    keep = (tgt != PAD) & (t % every == 0) & (t >= min_position)
    bi, ti = np.nonzero(keep)
    ref = {
        "confidence": p.max(-1)[bi, ti],
        "correct": (p.argmax(-1) == tgt)[bi, ti],
        "entropy": -(p * np.log(p)).sum(-1)[bi, ti],
        "label": tgt[bi, ti],
        "seq_id": bi,
        "position": ti,
        "nll": -np.log(p[bi, ti, tgt[bi, ti]]),
    }
    alphas = [np.asarray(a, np.float64) for a in out.traces["alpha"]]
    if alphas:
        ref["H"] = np.stack([-(a * np.log(a)).sum(-1)[bi, ti] for a in alphas], -1)
        ref["depth_mean"] = np.stack(
            [(a * np.arange(a.shape[-1])).sum(-1)[bi, ti] for a in alphas], -1
        )
    for tr in out.traces["mlp"]:
        q = np.asarray(tr["router_probs"], np.float64)[bi, ti]
        ref.setdefault("router_entropy", []).append(-(q * np.log(q)).sum(-1))
        srt = np.sort(q, -1)
        ref.setdefault("top1_margin", []).append(srt[:, -1] - srt[:, -2])
        ref.setdefault("router_logit_spread", []).append(
            np.var(np.asarray(tr["router_logits"], np.float64)[bi, ti], -1)
        )
        ref.setdefault("experts", []).append(np.asarray(tr["experts"])[bi, ti])
    for k in ("router_entropy", "top1_margin", "router_logit_spread"):
        if k in ref:
            ref[k] = np.stack(ref[k], -1)
    if "experts" in ref:
        ref["experts"] = np.stack(ref["experts"], 1)
    return ref


@pytest.mark.parametrize(
    "kw,every,min_position",
    [(dict(residual="block"), 1, 0), (dict(residual="full", mlp_type="moe", top_k=2), 3, 2)],
)
def test_token_records_match_a_whole_split_reference(tmp_path, kw, every, min_position):
    model, split = _setup(**kw)
    out = token_predict.predict_split(
        model,
        split,
        tmp_path / "p",
        pad=PAD,
        batch_size=4,
        every=every,
        min_position=min_position,
        shard_tokens=50,
    )
    got = predictions.load(out)
    ref = _reference(model, split, every, min_position)
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, rtol=2e-4, atol=2e-5, err_msg=k)
    assert np.all(got["domain"] == 1) and got.meta["domain"] == "near"
    assert len(got.index["shards"]) == -(-len(got["label"]) // 50)
    if "H" in ref:  # H_norm = H / log S_l (S_l sources; 0 for the one-source first sublayer)
        n_src = [
            a.shape[-1]
            for a in model(split.ids[:1, :-1].astype(np.int32), return_traces=True).traces["alpha"]
        ]
        for l, s_l in enumerate(n_src):
            want = got["H"][:, l] / np.log(s_l) if s_l > 1 else 0 * got["H"][:, l]
            np.testing.assert_allclose(got["H_norm"][:, l], want, rtol=1e-5, atol=1e-7)


def test_records_do_not_depend_on_batch_or_shard_size_and_max_tokens_truncates(tmp_path):
    model, split = _setup(residual="block", mlp_type="moe")
    a = predictions.load(
        token_predict.predict_split(
            model, split, tmp_path / "a", pad=PAD, batch_size=2, shard_tokens=7
        )
    )
    b = predictions.load(
        token_predict.predict_split(
            model, split, tmp_path / "b", pad=PAD, batch_size=5, shard_tokens=1000
        )
    )
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    c = predictions.load(
        token_predict.predict_split(
            model, split, tmp_path / "c", pad=PAD, batch_size=2, max_tokens=20
        )
    )
    assert len(c["label"]) == 20
    np.testing.assert_array_equal(c["label"], a["label"][:20])


def test_thinning_bad_values_raise(tmp_path):
    model, split = _setup()
    for kw, word in (
        (dict(every=0), "every"),
        (dict(min_position=-1), "min_position"),
        (dict(min_position=16), "min_position"),
        (dict(max_tokens=0), "max_tokens"),
    ):
        with pytest.raises(ValueError, match=word):
            token_predict.predict_split(model, split, tmp_path / "x", pad=PAD, **kw)


def test_load_image_npz_gives_confidence_correct_label(tmp_path):
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]], np.float32)
    labels = np.array([0, 0, 1], np.int32)
    np.savez(tmp_path / "p.npz", probs=probs, labels=labels)
    d = predictions.load(tmp_path / "p.npz")
    np.testing.assert_allclose(d["confidence"], [0.7, 0.8, 0.6], rtol=1e-6)
    np.testing.assert_array_equal(d["correct"], [True, False, False])
    np.testing.assert_array_equal(d["label"], labels)
    assert set(predictions.load_predictions(tmp_path / "p.npz")) == {"probs", "labels"}
    with pytest.raises(ValueError, match="no such file"):
        predictions.load(tmp_path / "missing.npz")


def test_vmoer_logit_router_gives_router_logit_variance(tmp_path):
    model, split = _setup(mlp_type="vmoer_mfvr", top_k=2)
    got = predictions.load(token_predict.predict_split(model, split, tmp_path / "v", pad=PAD))
    var = got["router_logit_var"]
    assert var.shape == (len(got["label"]), 2) and np.all(var > 0)
    # at initialisation every posterior std is vmoer_init_sigma = 0.3 (zero-initialised heads)
    np.testing.assert_allclose(var, 0.3**2, rtol=1e-3)


def test_doc_id_is_the_document_of_each_target_token_from_the_files(tmp_path):
    from routecal.data.text import load_text_dataset, stdlib

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):  # documents shorter and longer than a row, so rows span documents
        (corpus / f"f{i:02d}.txt").write_bytes(bytes(rng.integers(97, 123, 3 + 9 * i).tolist()))
    ds = load_text_dataset({"name": "text_dir", "path": str(corpus), "seq_len": 16})
    model, _ = _setup()
    out = token_predict.predict_split(model, ds.train, tmp_path / "p", pad=PAD, batch_size=4,
                                      every=3, min_position=1)
    cols = predictions.load(out)
    # independent: the stream [BOS, file bytes, EOS] per training file, in split_by_file order
    names = stdlib.split_by_file(sorted(p.name for p in corpus.iterdir()), 0, 0.1, 0.1)["train"]
    stream, owner = [], []
    for k, name in enumerate(names):
        data = list((corpus / name).read_bytes())
        stream += [256, *data, 257]
        owner += [k] * (len(data) + 2)
    at = np.asarray(cols["seq_id"]) * 16 + np.asarray(cols["position"]) + 1  # target's index
    np.testing.assert_array_equal(np.asarray(stream)[at], cols["label"])
    np.testing.assert_array_equal(np.asarray(owner)[at], cols["doc_id"])
    assert cols["doc_id"].dtype == np.int64 and cols.meta["n_documents"] == len(names)
    pairs = np.unique(np.stack([cols["seq_id"], cols["doc_id"]]), axis=1)
    assert len(np.unique(pairs[1])) == len(names) and len(np.unique(pairs[0])) < pairs.shape[1]


@pytest.mark.parametrize("n_proc,max_tokens", [(2, None), (3, 23), (2, 1)])
def test_split_over_processes_equals_one_process(tmp_path, monkeypatch, n_proc, max_tokens):
    """Multi-host predict, simulated in one process: process i of n predicts its whole batches into
    its own part (the last process first, process 0 last: it joins the parts); the joined shards
    equal one process's records bit for bit, `max_tokens` included (cut inside a later part)."""
    from routecal import parallel

    model, split = _setup(residual="block", mlp_type="moe")
    kw = dict(pad=PAD, batch_size=2, shard_tokens=5, max_tokens=max_tokens,
              fingerprint={"step": 1})
    one = predictions.load(token_predict.predict_split(model, split, tmp_path / "one", **kw))
    monkeypatch.setattr(parallel, "barrier", lambda name: None)
    monkeypatch.setattr(parallel, "process_count", lambda: n_proc)
    for i in reversed(range(n_proc)):
        monkeypatch.setattr(parallel, "process_index", lambda i=i: i)
        token_predict.predict_split(model, split, tmp_path / "many", **kw)
    many = predictions.load(tmp_path / "many")
    assert sorted(many) == sorted(one) and many.fingerprint == {"step": 1}
    assert many.meta == one.meta and many.n_rows == one.n_rows > 0
    for k in one:
        np.testing.assert_array_equal(many[k], one[k], err_msg=k)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many", "one"]  # the parts are gone


def test_join_parts_refuses_parts_of_different_runs(tmp_path):
    for i, step in enumerate((1, 2)):
        w = shards.ShardWriter(tmp_path / f"p{i}", fingerprint={"step": step})
        w.append({"x": np.arange(3)})
        w.close()
    with pytest.raises(ValueError, match="p1.*differs"):
        shards.join_parts([tmp_path / "p0", tmp_path / "p1"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
