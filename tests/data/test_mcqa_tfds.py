"""Published MCQA through TFDS (`routecal.data.mcqa_tfds`): records decoded by TFDS's own mock
data source (`tfds.testing.mock_data`, offline) parsed into `MCQA`, and clear errors."""

from __future__ import annotations

import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from routecal.data import mcqa_tfds


def _prepared(monkeypatch, splits=("test",)):
    """`open_builder` returning TFDS's (mocked) builder as if prepared with `splits`."""
    def open_builder(name, data_dir):
        real = tfds.builder(name, data_dir=str(data_dir))
        info = types.SimpleNamespace(splits={s: None for s in splits})
        return types.SimpleNamespace(info=info, as_data_source=real.as_data_source)

    monkeypatch.setattr(mcqa_tfds.tfds_io, "open_builder", open_builder)


def test_openbookqa_records_from_tfds_mock(monkeypatch, tmp_path):
    _prepared(monkeypatch)
    with tfds.testing.mock_data(num_examples=7):
        ds = mcqa_tfds.load_mcqa_tfds("openbookqa", "test", data_dir=tmp_path, domain="in")
        src = tfds.builder("openbookqa", data_dir=str(tmp_path)).as_data_source(split="test")
        rows = [src[i] for i in range(len(src))]
    assert len(ds) == 7 and ds.n_options == 4 and ds.name == "openbookqa"
    for i, r in enumerate(rows):
        assert ds.questions[i] == str(r["question"]["stem"])
        assert ds.options[i] == tuple(str(r["question"][f"choice_{c}"]) for c in "ABCD")
        assert ds.answers[i] == int(r["answerKey"])


def _arc_rows():
    return [  # ClassLabel ints as TFDS decodes them; labels need not start at 0
        {"question": b"Which is a gas?", "id": b"a",
         "choices": {"label": np.array([0, 1, 2, 3]),
                     "text": np.array([b"ice", b"steam", b"rock", b"wood"], dtype=object)},
         "answerKey": np.array(1)},
        {"question": "Which is wet?", "id": "b",
         "choices": {"label": np.array([1, 2, 3, 4]),
                     "text": np.array(["sand", "salt", "dust", "water"], dtype=object)},
         "answerKey": np.array(4)},
        {"question": "Three options?", "id": "c",
         "choices": {"label": np.array([0, 1, 2]), "text": np.array(["x", "y", "z"], object)},
         "answerKey": np.array(0)},
    ]


def test_arc_answer_is_the_keys_position_among_labels(monkeypatch, tmp_path):
    _prepared(monkeypatch)
    rows = _arc_rows()
    with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **_: rows):
        with pytest.raises(ValueError, match=r"ARC-Easy\[test\]: .*3 options: 1 item\(s\), "
                                             "first at record 3"):
            mcqa_tfds.load_mcqa_tfds("ai2_arc/ARC-Easy", "test", data_dir=tmp_path)
        ds = mcqa_tfds.load_mcqa_tfds("ai2_arc/ARC-Easy", "test", data_dir=tmp_path, n_options=4)
        three = mcqa_tfds.load_mcqa_tfds("ai2_arc/ARC-Easy", data_dir=tmp_path, n_options=3)
        padded = mcqa_tfds.load_mcqa_tfds("ai2_arc/ARC-Easy", data_dir=tmp_path, pad=True)
    assert ds.questions == ("Which is a gas?", "Which is wet?") and ds.n_dropped == 1
    assert len(padded) == 3 and padded.n_padded == 1 and padded.option_mask[2].tolist() == [
        True, True, True, False]
    assert ds.options[1] == ("sand", "salt", "dust", "water")
    np.testing.assert_array_equal(ds.answers, [1, 3])
    assert three.questions == ("Three options?",) and three.answers.tolist() == [0]


def test_errors_name_the_problem(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="load_mcqa_file"):
        mcqa_tfds.load_mcqa_tfds("sciq", data_dir=tmp_path)
    with pytest.raises(ValueError, match=str(tmp_path)):  # not prepared: names the directory
        mcqa_tfds.load_mcqa_tfds("openbookqa", data_dir=tmp_path)
    _prepared(monkeypatch, splits=("train",))
    with pytest.raises(ValueError, match="no split 'test'"):
        mcqa_tfds.load_mcqa_tfds("openbookqa", "test", data_dir=tmp_path)
    _prepared(monkeypatch)
    bad = _arc_rows()[:1]
    bad[0]["answerKey"] = np.array(4)
    with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **_: bad):
        with pytest.raises(ValueError, match="ARC-Challenge.test. record 1: .*not among the item"):
            mcqa_tfds.load_mcqa_tfds("ai2_arc/ARC-Challenge", data_dir=tmp_path)


def test_load_split_reads_tfds_specs(monkeypatch, tmp_path):
    from routecal.data import mcqa_formats

    _prepared(monkeypatch)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    rows = _arc_rows()[:2]
    with tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **_: rows):
        ds = mcqa_formats.load_split("tfds:ai2_arc/ARC-Easy:test,tfds:ai2_arc/ARC-Challenge", "near",
                            None, 0)
    assert len(ds) == 4 and ds.domain == "near"
    np.testing.assert_array_equal(ds.answers, [1, 3, 1, 3])
