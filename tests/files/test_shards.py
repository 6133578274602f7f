"""Tests for routecal.files.shards: every way a token-shard directory can disagree with its index
is a one-line ValueError naming the file (never a raw numpy error or a silent misalignment)."""

import json

import ml_dtypes
import numpy as np
import pytest

from routecal.files import predictions, shards

N = 2001


def _write(path, n=N, shard_rows=1000, fingerprint=None, seed=0, **extra):
    rng = np.random.default_rng(seed)
    w = shards.ShardWriter(path, shard_rows=shard_rows, fingerprint=fingerprint)
    w.append({"confidence": rng.uniform(0.1, 1, n).astype(np.float32),
              "correct": rng.uniform(size=n) < 0.5, "seq_id": np.arange(n) // 10, **extra})
    return w.close()


def _index(path):
    return json.loads((path / "index.json").read_text())


def _set_index(path, index):
    (path / "index.json").write_text(json.dumps(index))


def _raises_naming(path, fname, match=None):
    with pytest.raises(ValueError, match=match) as e:
        predictions.load(path)
    msg = str(e.value)
    assert str(path / fname) in msg and "\n" not in msg, msg
    return msg


def test_round_trip_records_schema_rows_and_fingerprint(tmp_path):
    fp = {"config_hash": "abc", "step": 3, "split": "calib"}
    p = _write(tmp_path / "s", fingerprint=fp)
    idx = _index(p)
    assert idx["format"] == shards.FORMAT and idx["n"] == N
    assert [s["n"] for s in idx["shards"]] == [1000, 1000, 1]
    assert idx["columns"]["confidence"] == {"dtype": "<f4", "shape": []}
    cols = predictions.load(p)
    assert cols.fingerprint == fp and cols.n_rows == N == len(cols["confidence"])
    shards.check_fingerprint(cols, {"split": "calib", "step": 3})  # agreeing keys pass


def test_index_row_count_mismatch_names_file(tmp_path):
    p = _write(tmp_path / "s")
    _set_index(p, {**_index(p), "n": 999})
    _raises_naming(p, "index.json", "n = 999 but its shards hold 2001")


def test_shard_row_count_mismatch_names_column_file(tmp_path):
    p = _write(tmp_path / "s")
    idx = _index(p)
    idx["shards"][0]["n"], idx["n"] = 900, N - 100
    _set_index(p, idx)
    _raises_naming(p, "shard_00000/confidence.npy", r"shape \[1000\] but index.json says \[900\]")


def test_column_cut_short_beside_full_ones_names_file(tmp_path):
    p = _write(tmp_path / "s", shard_rows=N)
    f = p / "shard_00000" / "confidence.npy"
    np.save(f, np.load(f)[:1000])
    _raises_naming(p, "shard_00000/confidence.npy", r"shape \[1000\]")


def test_column_with_extra_trailing_dim_names_file(tmp_path):
    p = _write(tmp_path / "s", shard_rows=N)
    f = p / "shard_00000" / "confidence.npy"
    np.save(f, np.stack([np.load(f)] * 2, axis=1))
    _raises_naming(p, "shard_00000/confidence.npy", r"shape \[2001, 2\] but index.json says \[2001\]")


def test_column_dtype_mismatch_names_file(tmp_path):
    p = _write(tmp_path / "s", shard_rows=N)
    f = p / "shard_00000" / "confidence.npy"
    np.save(f, np.load(f).astype(np.float64))
    _raises_naming(p, "shard_00000/confidence.npy", "dtype <f8 but index.json says <f4")


def test_truncated_column_names_file(tmp_path):
    p = _write(tmp_path / "s")
    f = p / "shard_00001" / "seq_id.npy"
    f.write_bytes(f.read_bytes()[:-40])
    _raises_naming(p, "shard_00001/seq_id.npy", "truncated")


def test_column_with_trailing_bytes_names_file(tmp_path):
    p = _write(tmp_path / "s")
    f = p / "shard_00001" / "seq_id.npy"
    f.write_bytes(f.read_bytes() + b"\0" * 8)
    _raises_naming(p, "shard_00001/seq_id.npy", "trailing bytes")


def test_empty_column_file_names_file(tmp_path):
    p = _write(tmp_path / "s")
    (p / "shard_00002" / "correct.npy").write_bytes(b"")
    _raises_naming(p, "shard_00002/correct.npy", "is empty")


def test_column_file_not_npy_names_file(tmp_path):
    p = _write(tmp_path / "s")
    (p / "shard_00002" / "correct.npy").write_text("hello")
    _raises_naming(p, "shard_00002/correct.npy", "not a .npy file")


def test_missing_column_file_names_file(tmp_path):
    p = _write(tmp_path / "s")
    (p / "shard_00001" / "correct.npy").unlink()
    _raises_naming(p, "shard_00001/correct.npy", "missing")


def test_object_column_refused_by_writer_and_reader(tmp_path):
    with pytest.raises(ValueError, match="'bad' holds Python objects"):
        shards.ShardWriter(tmp_path / "w").append({"bad": np.array([{}, 1], dtype=object)})
    p = _write(tmp_path / "s", shard_rows=N)
    idx = _index(p)
    idx["columns"]["confidence"]["dtype"] = "|O"
    _set_index(p, idx)
    _raises_naming(p, "index.json", "column 'confidence'.*not numeric")
    idx["columns"]["confidence"]["dtype"] = "<f4"
    _set_index(p, idx)
    np.save(p / "shard_00000" / "confidence.npy", np.array([None] * N), allow_pickle=True)
    _raises_naming(p, "shard_00000/confidence.npy", "Python objects")


def test_index_not_utf8_names_file(tmp_path):
    p = _write(tmp_path / "s")
    (p / "index.json").write_bytes(b'{"format": "\xff\xfe"}')
    _raises_naming(p, "index.json", "not UTF-8")


def test_index_with_bom_names_file(tmp_path):
    p = _write(tmp_path / "s")
    (p / "index.json").write_bytes(b"\xef\xbb\xbf" + (p / "index.json").read_bytes())
    _raises_naming(p, "index.json", "not a valid index")


@pytest.mark.parametrize("edit, match", [
    (lambda i: [i], "must hold a JSON object"),
    (lambda i: {k: v for k, v in i.items() if k != "shards"}, "shards that are not a list"),
    (lambda i: {**i, "columns": [1]}, "expected {name"),
    (lambda i: {**i, "n": "2001"}, "expected a row count"),
    (lambda i: {**i, "format": "other"}, "has format 'other'"),
    (lambda i: {**i, "shards": [{"name": "../x", "n": N}]}, "shards that are not a list"),
    (lambda i: {**i, "fingerprint": "run1"}, "expected an object or null"),
    (lambda i: {**i, "columns": {"../x": {"dtype": "<f4", "shape": []}}}, "not a plain file name"),
])
def test_index_wrong_shape_names_file(tmp_path, edit, match):
    p = _write(tmp_path / "s")
    _set_index(p, edit(_index(p)))
    _raises_naming(p, "index.json", match)


def test_index_truncated_or_duplicate_keys_names_file(tmp_path):
    p = _write(tmp_path / "s")
    text = (p / "index.json").read_text()
    (p / "index.json").write_text(text[: len(text) // 2])
    _raises_naming(p, "index.json", "not a valid index")
    (p / "index.json").write_text('{"n": 1, "n": 2}')
    _raises_naming(p, "index.json", r"duplicate key\(s\) \['n'\]")


def test_fingerprint_of_another_run_refused(tmp_path):
    mine = {"config_hash": "aaaa", "step": 100, "split": "calib"}
    other = _write(tmp_path / "other", seed=1, fingerprint={**mine, "config_hash": "bbbb"})
    cols = predictions.load(other)  # same length, other values: only the fingerprint tells
    with pytest.raises(ValueError, match="another run.*config_hash: 'bbbb' .expected 'aaaa'") as e:
        shards.check_fingerprint(cols, mine)
    assert str(other / "index.json") in str(e.value)
    old = _write(tmp_path / "old")  # no fingerprint recorded: cannot be checked, so refused
    with pytest.raises(ValueError, match="records no fingerprint"):
        shards.check_fingerprint(predictions.load(old), mine)
    shards.check_fingerprint(predictions.load(old), None)


def test_bfloat16_column_round_trips_and_nan_is_named(tmp_path):
    from routecal.study import token_stages

    n = 40
    conf = np.linspace(0.1, 0.9, n).astype(ml_dtypes.bfloat16)
    w = shards.ShardWriter(tmp_path / "s", shard_rows=16)
    w.append({"confidence": conf, "correct": np.arange(n) % 2 == 0,
              "entropy": np.ones(n, np.float32), "seq_id": np.arange(n) // 8,
              "position": np.arange(n) % 8})
    p = w.close()
    assert _index(p)["columns"]["confidence"]["dtype"] == "bfloat16"
    cols = predictions.load(p)
    assert cols["confidence"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(cols["confidence"], conf)
    bad = np.load(p / "shard_00001" / "confidence.npy").view(ml_dtypes.bfloat16).copy()
    bad[3] = np.nan
    np.save(p / "shard_00001" / "confidence.npy", bad)
    with pytest.raises(ValueError, match=r"calib \(.*s\)\['confidence'\]: contains 1 NaN"):
        token_stages.load_tokens(p, "calib")
