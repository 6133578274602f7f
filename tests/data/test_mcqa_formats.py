"""Tests for routecal.data.mcqa_formats: the published formats, their answer conventions, and one
ValueError naming the file and the 1-based line / item for every way a file can be wrong."""

import json

import numpy as np
import pytest

from routecal.data.mcqa_formats import load_mcqa_file
from routecal.stats import mcqa as mcqa_stats


def _write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


OBQA = {"id": "1", "question": {"stem": "Sun is a?", "choices": [
    {"text": t, "label": lab} for t, lab in zip(["star", "moon", "rock", "gas"], "ABCD",
                                                 strict=True)]}, "answerKey": "A"}


def _arc(n, key, stem="x?"):
    return {"question": {"stem": stem, "choices": [{"text": t, "label": str(i + 1)}
                                                   for i, t in enumerate("abcde"[:n])]},
            "answerKey": str(key)}


def _med(cop, q="m?"):
    return {"question": q, "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": cop}


def _raises(path, match, *args, **kw):
    """load_mcqa_file raises one line naming `path` and matching `match`."""
    with pytest.raises(ValueError, match=match) as e:
        load_mcqa_file(path, *args, **kw)
    assert str(path) in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_loaders_parse_the_published_formats(tmp_path):
    ds = load_mcqa_file(_write(tmp_path, "obqa.jsonl", [OBQA]), "openbookqa")
    assert ds.questions == ("Sun is a?",) and ds.options[0][0] == "star" and ds.answers[0] == 0
    ds = load_mcqa_file(_write(tmp_path, "arc.jsonl", [_arc(5, 3), _arc(4, 4), _arc(4, 4)]),
                        "arc", n_options=4)
    assert len(ds) == 2 and list(ds.answers) == [3, 3] and ds.n_dropped == 1
    ds5 = load_mcqa_file(tmp_path / "arc.jsonl", "arc", n_options=5)
    assert len(ds5) == 1 and ds5.answers[0] == 2 and ds5.n_dropped == 2
    sciq = [{"question": f"q{i}", "correct_answer": "right", "distractor1": "w1",
             "distractor2": "w2", "distractor3": "w3", "support": ""} for i in range(20)]
    ds = load_mcqa_file(_write(tmp_path, "sciq.jsonl", sciq), "sciq", seed=1)
    assert all(o[a] == "right" for o, a in zip(ds.options, ds.answers, strict=True))
    assert len(set(ds.answers.tolist())) > 1  # shuffled, not always position 0
    ds = load_mcqa_file(_write(tmp_path, "med.json", [_med(c) for c in (1, 4, 2)]), "medmcqa")
    assert list(ds.answers) == [0, 3, 1]  # 1-based cop in the original JSON
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    hf = [{"question_stem": "Sun?", "answerKey": "C",
           "choices": {"text": ["a", "b", "c", "d"], "label": ["A", "B", "C", "D"]}}]
    pq.write_table(pa.Table.from_pylist(hf), tmp_path / "obqa.parquet")
    ds = load_mcqa_file(tmp_path / "obqa.parquet", "openbookqa")
    assert ds.answers[0] == 2 and ds.questions[0] == "Sun?"
    pq.write_table(pa.Table.from_pylist([_med(c) for c in (0, 3)]), tmp_path / "med.parquet")
    assert list(load_mcqa_file(tmp_path / "med.parquet", "medmcqa").answers) == [0, 3]  # 0-based


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not found.*missing.jsonl"):
        load_mcqa_file(tmp_path / "missing.jsonl", "arc")
    with pytest.raises(ValueError, match="fmt"):
        load_mcqa_file(tmp_path / "missing.jsonl", "mmlu")
    _raises(_write(tmp_path, "x.jsonl", [{"a": 1}]), r"line 1: no 'correct_answer' field .a sciq record has question, correct_answer",
            "sciq")


def test_mixed_option_counts_name_file_lines_and_counts(tmp_path):
    rows = [_arc(4, 1, "a?"), _arc(3, 1, "b?"), _arc(4, 2, "c?")]
    p = _write(tmp_path, "arc.jsonl", rows)
    _raises(p, r"4 options: 2 item\(s\), first at line 1; 3 options: 1 item\(s\), first at line 2",
            "arc")


def test_mostly_three_options_never_drops_the_four_option_items(tmp_path):
    rows = [_arc(3, 1, f"q{i}") for i in range(5)] + [_arc(4, 4, "four?")]
    p = _write(tmp_path, "arc.jsonl", rows)
    _raises(p, r"3 options: 5 item\(s\).*4 options: 1 item\(s\), first at line 6", "arc")
    padded = load_mcqa_file(p, "arc", pad=True)  # asked for: every item kept, padded, counted
    assert len(padded) == 6 and padded.n_padded == 5 and padded.n_options == 4
    assert padded.answers[-1] == 3 and not padded.option_mask[:5, 3].any()
    p_nxk = np.full((6, 4), 0.25)
    masked = mcqa_stats.mask_options(p_nxk, padded.option_mask)
    np.testing.assert_allclose(masked[0], [1 / 3, 1 / 3, 1 / 3, 0.0])  # renormalised over 3
    np.testing.assert_allclose(masked[5], p_nxk[5])


def test_medmcqa_stray_cop_zero_in_one_based_file_names_line(tmp_path):
    p = _write(tmp_path, "med.json", [_med(1), _med(4), _med(0), _med(2)])
    _raises(p, r"line 3: .*cop = 0 is outside 1..4 .*1-based", "medmcqa")
    ok = _write(tmp_path, "med0.jsonl", [_med(0), _med(3)])
    assert list(load_mcqa_file(ok, "medmcqa", answer_base=0).answers) == [0, 3]


@pytest.mark.parametrize("cop, match", [(7, "cop = 7 is outside 1..4"),
                                        ("b", "cop = 'b' is not an integer"),
                                        (True, "cop = True is not an integer")])
def test_medmcqa_bad_cop_names_line(tmp_path, cop, match):
    _raises(_write(tmp_path, "med.jsonl", [_med(1), _med(cop)]), f"line 2: .*{match}", "medmcqa")


def test_medmcqa_missing_cop_names_line(tmp_path):
    row = _med(1)
    del row["cop"]
    _raises(_write(tmp_path, "med.jsonl", [_med(2), row]), r"line 2: no 'cop' field", "medmcqa")


def test_empty_question_names_file_and_line_before_filtering(tmp_path):
    rows = [_arc(5, 1, "five?"), _arc(4, 1, "a?"), _arc(4, 2, "  ")]
    _raises(_write(tmp_path, "arc.jsonl", rows), r"line 3: empty question", "arc", n_options=4)


def test_empty_option_names_line(tmp_path):
    row = _arc(4, 1)
    row["question"]["choices"][2]["text"] = ""
    _raises(_write(tmp_path, "arc.jsonl", [_arc(4, 1), row]), r"line 2: empty option.*'C'", "arc")


def test_answer_key_not_among_labels_names_line(tmp_path):
    _raises(_write(tmp_path, "arc.jsonl", [_arc(4, 9)]), r"line 1: .*answerKey '9' is not one",
            "arc")


def test_non_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "obqa.jsonl"
    p.write_bytes(json.dumps(OBQA).encode() + b"\n" + b'{"question": "\xff"}\n')
    _raises(p, r"line 2 is not UTF-8 text \(byte 0xff", "openbookqa")


def test_json_array_in_jsonl_names_file(tmp_path):
    p = tmp_path / "obqa.jsonl"
    p.write_text(json.dumps([OBQA, OBQA]))
    _raises(p, r"line 1 is a JSON array, not one JSON object per item.*\.json file", "openbookqa")


def test_truncated_line_reports_its_own_line(tmp_path):
    text = "\n".join(json.dumps(r) for r in [OBQA, OBQA, OBQA])
    p = tmp_path / "obqa.jsonl"
    p.write_text(text[:-20])
    _raises(p, r"line 3 is not a valid JSON record \(truncated", "openbookqa")
    q = tmp_path / "obqa.json"  # a JSON array cut short: the line where it breaks
    q.write_text(json.dumps([OBQA, OBQA], indent=1)[:-30])
    with pytest.raises(ValueError, match=r"obqa.json line (\d+) is not valid JSON") as e:
        load_mcqa_file(q, "openbookqa")
    assert "line 1 " not in str(e.value)


def test_duplicate_keys_name_line(tmp_path):
    p = tmp_path / "med.jsonl"
    p.write_text(json.dumps(_med(1)) + "\n" + json.dumps(_med(2))[:-1] + ', "cop": 3}\n')
    _raises(p, r"line 2 .*duplicate key\(s\) \['cop'\]", "medmcqa")


def test_bom_and_windows_line_endings_are_read(tmp_path):
    p = tmp_path / "med.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(_med(c)).encode() for c in (2, 3))
                  + b"\r\n")
    ds = load_mcqa_file(p, "medmcqa")
    assert list(ds.answers) == [1, 2] and len(ds) == 2


def test_json_item_numbers_in_arrays(tmp_path):
    p = tmp_path / "med.json"
    p.write_text(json.dumps({"data": [_med(1), _med(2), _med(9)]}))
    _raises(p, r"item 3: .*cop = 9", "medmcqa")
    p.write_text(json.dumps([_med(1), "oops"]))
    _raises(p, r"item 2 is str, not one JSON object", "medmcqa")
