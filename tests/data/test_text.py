"""Tests for routecal.data.text: tokenizers, packing, the stdlib corpus and user text sources."""

import hashlib
import json
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routecal.data.text import load_text_dataset, load_tokenizer, packing, stdlib
from routecal.data.text.tokenizer import ByteTokenizer, HFTokenizer


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_byte_tokenizer_round_trips_arbitrary_bytes(data):
    tok = ByteTokenizer()
    ids = tok.encode(data)
    assert ids.dtype == np.int32 and len(ids) == len(data)
    assert tok.decode(ids) == data
    with_specials = np.concatenate([[tok.bos], ids, [tok.eos, tok.pad]]).astype(np.int32)
    assert tok.decode(with_specials) == data


def test_byte_tokenizer_rejects_out_of_vocab_ids():
    with pytest.raises(ValueError, match="ids: token id 259 out of the vocabulary"):
        ByteTokenizer().decode(np.array([1, 259]))
    with pytest.raises(ValueError, match="data: expected bytes"):
        ByteTokenizer().encode("text")


@pytest.mark.parametrize("seq_len", [1, 3, 7, 50])
def test_pack_documents_matches_the_stream_definition(seq_len):
    rng = np.random.default_rng(seq_len)
    docs = [rng.integers(0, 256, rng.integers(0, 20)) for _ in range(6)]
    rows = packing.pack_documents(docs, seq_len, bos=256, eos=257, pad=258, vocab_size=259)
    stream = np.concatenate([np.r_[256, d, 257] for d in docs])
    assert rows.dtype == np.uint16 and rows.shape[1] == seq_len + 1
    assert rows.shape[0] == int(np.ceil((len(stream) - 1) / seq_len))
    targets = rows[:, 1:].reshape(-1)
    targets = targets[targets != 258]
    np.testing.assert_array_equal(targets, stream[1:])  # every token after the first, once
    for i, r in enumerate(rows):  # inputs are the stream shifted by one
        seg = stream[i * seq_len : i * seq_len + seq_len + 1]
        np.testing.assert_array_equal(r[: len(seg)], seg)


@pytest.mark.parametrize("seq_len", [1, 4, 9])
def test_document_ids_follow_every_token_to_its_document(seq_len):
    rng = np.random.default_rng(seq_len)
    docs = [rng.integers(0, 256, rng.integers(0, 15)) for _ in range(7)]
    rows = packing.pack_documents(docs, seq_len, bos=256, eos=257, pad=258, vocab_size=259)
    doc = packing.document_ids([len(d) for d in docs], seq_len)
    assert doc.shape == rows.shape and doc.dtype == np.int32
    np.testing.assert_array_equal(doc == -1, rows == 258)  # PAD and only PAD has no document
    # independent: the targets of document k, in order, are its tokens framed by BOS/EOS (the
    # first document's BOS is never a target)
    tgt, tdoc = rows[:, 1:].reshape(-1), doc[:, 1:].reshape(-1)
    for k, d in enumerate(docs):
        want = np.r_[256, d, 257][1 if k == 0 else 0:]
        np.testing.assert_array_equal(tgt[tdoc == k], want)
    with pytest.raises(ValueError, match="lengths: must be >= 0"):
        packing.document_ids([3, -1], seq_len)
    with pytest.raises(ValueError, match="docs: the corpus is empty"):
        packing.document_ids([], seq_len)


def test_pack_documents_bad_input():
    kw = dict(bos=256, eos=257, pad=258, vocab_size=259)
    with pytest.raises(ValueError, match="docs: the corpus is empty"):
        packing.pack_documents([], 8, **kw)
    with pytest.raises(ValueError, match=r"docs\[1\]: token id 300 out of the vocabulary"):
        packing.pack_documents([np.array([1]), np.array([300])], 8, **kw)
    with pytest.raises(ValueError, match="data.seq_len"):
        packing.pack_documents([np.array([1])], 0, **kw)


def test_stdlib_splits_deterministic_disjoint_by_file_and_identical_across_processes():
    files = stdlib.corpus_files(seed=0)
    by = {s: {f.path for f in files if f.split == s} for s in ("train", "calib", "test")}
    assert all(by.values())
    assert not (by["train"] & by["calib"]) and not (by["train"] & by["test"])
    assert not (by["calib"] & by["test"])
    in_paths = {f.path for f in files if f.domain == "in"}
    assert by["train"] | by["calib"] | by["test"] == in_paths
    assert stdlib.corpus_files(seed=0) == files
    other = stdlib.corpus_files(seed=1)
    assert {f.path for f in other if f.split == "test"} != by["test"]
    code = (
        "import json; from routecal.data.text import stdlib; "
        "print(json.dumps([[f.path, f.domain, f.split] for f in stdlib.corpus_files(seed=0)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout
    assert json.loads(out) == [[f.path, f.domain, f.split] for f in files]


def test_stdlib_domains_and_manifest_against_the_files_on_disk():
    files = stdlib.corpus_files()
    root = stdlib.stdlib_root()
    for f in files:
        parts = f.path.split("/")
        if f.domain == "in":
            assert f.path.endswith(".py") and parts[0] != "test"
            assert not {"test", "tests", "idle_test", "site-packages"} & set(parts)
        elif f.domain == "near":
            assert parts[0] == "test" and f.path.endswith(".py")
    assert any(f.path.startswith("pydoc_data.topics/") for f in files if f.domain == "far")
    m = stdlib.manifest()
    assert m["python_version"] == ".".join(map(str, sys.version_info[:3]))
    rng = np.random.default_rng(0)
    disk = [e for e in m["files"] if not e["path"].startswith("pydoc_data")]
    for e in rng.choice(disk, 20, replace=False):
        raw = (root / e["path"]).read_bytes()
        assert e["sha256"] == hashlib.sha256(raw).hexdigest() and e["n_bytes"] == len(raw)
    texts = dict(stdlib.corpus_texts("in", "calib"))
    assert set(texts) == {f.path for f in files if f.split == "calib"}
    with pytest.raises(ValueError, match="domain: unknown"):
        stdlib.corpus_texts("mid")
    with pytest.raises(ValueError, match="split: unknown"):
        stdlib.corpus_texts("in", "val")


def test_load_stdlib_dataset_splits_domains_and_bits_per_byte_denominator():
    ds = load_text_dataset(
        {"name": "stdlib", "seq_len": 32, "max_bytes": 3000, "max_train_bytes": 5000}
    )
    assert set(ds.splits) == {"train", "calib", "test", "near", "far"}
    assert ds.vocab_size == 259 and ds.train.ids.shape[1] == 33
    assert ds.split("far").domain == "far" and ds.test.domain == "in"
    assert ds.calib.n_bytes == 3000 and ds.train.n_bytes == 5000
    # byte tokenizer: targets = bytes + one EOS per document (+ BOS of later documents)
    assert ds.train.n_targets >= ds.train.n_bytes
    assert ds.manifest["python_version"] and ds.manifest["seq_len"] == 32
    # documents: the split's doc index against the corpus files, read independently
    far = [b for _, b in stdlib.corpus_texts("far")]
    _assert_documents(ds.split("far"), far, 3000)
    with pytest.raises(ValueError, match="split: unknown split"):
        ds.split("val")


def _assert_documents(split, files, max_bytes):
    """The text bytes of the targets of document k are file k's (up to the split's byte cap)."""
    tgt, tdoc = split.ids[:, 1:].reshape(-1), split.doc[:, 1:].reshape(-1)
    assert np.all(split.doc[split.ids != 258] >= 0) and np.all(split.doc[split.ids == 258] == -1)
    left = max_bytes if max_bytes is not None else sum(len(f) for f in files)
    for k in range(int(split.doc.max()) + 1):
        assert tgt[(tdoc == k) & (tgt < 256)].astype(np.uint8).tobytes() == files[k][:left]
        left -= len(files[k][:left])
    assert left == 0


def test_eval_documents_seeded_sample_capped_per_document():
    cfg = {"name": "stdlib", "seq_len": 32, "max_bytes": 6000, "max_train_bytes": 5000,
           "max_doc_bytes": 500, "eval_doc_order": "shuffle"}
    ds = load_text_dataset(cfg)
    far = [b for _, b in stdlib.corpus_texts("far")]
    order = ds.manifest["eval_documents"]["far"]
    # each kept document is its first 500 bytes, in the sampled order; many documents, not 2
    kept = [far[i][:500] for i in order]
    assert len(order) == len(set(order)) and len(order) >= 6000 // 500
    _assert_documents(ds.split("far"), kept, 6000)
    assert ds.split("far").n_bytes == 6000 and int(ds.split("far").doc.max()) + 1 == len(order)
    # an independent draw of the same permutation: numpy seeded by (data.seed, crc32 of the name)
    perm = np.random.default_rng([0, zlib.crc32(b"far")]).permutation(len(far))
    assert order == [int(i) for i in perm if len(far[i])][: len(order)]
    # the same config gives the same split; another seed another sample; train is untouched
    again = load_text_dataset(cfg)
    assert np.array_equal(again.split("far").ids, ds.split("far").ids)
    other = load_text_dataset({**cfg, "seed": 1})
    assert other.manifest["eval_documents"]["far"] != order
    first = load_text_dataset({k: v for k, v in cfg.items() if k != "eval_doc_order"})
    assert first.manifest["eval_documents"]["far"] == list(range(len(first.manifest[
        "eval_documents"]["far"])))
    with pytest.raises(ValueError, match="eval_doc_order"):
        load_text_dataset({**cfg, "eval_doc_order": "random"})
    with pytest.raises(ValueError, match="max_doc_bytes"):
        load_text_dataset({**cfg, "max_doc_bytes": 0})


def test_user_sources_text_dir_and_jsonl(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(10):
        (d / f"f{i}.txt").write_bytes(f"document {i} ".encode() * (i + 1))
    (d / ".hidden").write_text("skip me")
    ds = load_text_dataset({"name": "text_dir", "path": str(d), "seq_len": 8})
    assert ds.manifest["n_documents"] == 10
    train_files = stdlib.split_by_file([f"f{i}.txt" for i in range(10)], 0, 0.1, 0.1)["train"]
    _assert_documents(ds.train, [(d / f).read_bytes() for f in train_files], None)
    assert ds.train.doc.max() + 1 == len(train_files) == 8
    total = sum(ds.split(s).n_bytes for s in ("train", "calib", "test"))
    assert total == sum((d / f"f{i}.txt").stat().st_size for i in range(10))
    j = tmp_path / "docs.jsonl"
    j.write_text("\n".join(json.dumps({"text": f"line {i} \u00e9"}) for i in range(20)))
    ds = load_text_dataset({"name": "jsonl", "path": str(j), "seq_len": 8, "seed": 3})
    assert sum(len(ds.split(s)) for s in ("train", "calib", "test")) >= 3


def test_bad_input_raises_value_error_naming_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for i in range(5):
        (empty / f"{i}.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_text_dataset({"name": "text_dir", "path": str(empty)})
    with pytest.raises(ValueError, match="data.name: unknown text dataset 'wikipedia'"):
        load_text_dataset({"name": "wikipedia"})
    with pytest.raises(ValueError, match="data.tokenizer: no tokenizer.json"):
        load_tokenizer(str(tmp_path / "tok"))
    with pytest.raises(ValueError, match="data: unknown key"):
        load_text_dataset({"name": "stdlib", "seqlen": 8})
    with pytest.raises(ValueError, match="tiny_shakespeare"):
        load_text_dataset({"name": "tfds:tiny_shakespeare", "data_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="data.path: no such directory"):
        load_text_dataset({"name": "text_dir", "path": str(tmp_path / "nope")})


def test_hf_tokenizer_json_round_trip(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["[UNK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["def f(x):\n    return x + 1\n"] * 50, trainer=trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    t = load_tokenizer(str(tmp_path))
    assert isinstance(t, HFTokenizer) and t.vocab_size == tok.get_vocab_size() + 3
    text = b"def g(y):\n    return y * 2\n"
    ids = t.encode(text)
    assert len(ids) < len(text) and t.decode(ids) == text
    assert {t.bos, t.eos, t.pad} == set(range(t.vocab_size - 3, t.vocab_size))
