"""Tests for routecal.data.mcqa: validation, prompt encoding, published-format loaders, the
embedded continuation MCQA."""

import json

import numpy as np
import pytest

from routecal.data import mcqa
from routecal.data.text.tokenizer import ByteTokenizer


def test_bad_items_raise_value_error():
    with pytest.raises(ValueError, match="different option counts"):
        mcqa.make_mcqa(["q1", "q2"], [["a", "b"], ["a", "b", "c"]], [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        mcqa.make_mcqa(["q1"], [["a", "b"]], [2])
    with pytest.raises(ValueError, match="out of range"):
        mcqa.make_mcqa(["q1"], [["a", "b"]], [-1])
    with pytest.raises(ValueError, match="empty question"):
        mcqa.make_mcqa(["  "], [["a", "b"]], [0])
    with pytest.raises(ValueError, match="empty option"):
        mcqa.make_mcqa(["q"], [["a", ""]], [0])
    with pytest.raises(ValueError, match="questions"):
        mcqa.make_mcqa([], [], [])


def test_prompt_and_encoding():
    tok = ByteTokenizer()
    assert mcqa.format_prompt("2+2?", ["3", "4"]) == "2+2?\nA. 3\nB. 4\nAnswer: "
    np.testing.assert_array_equal(mcqa.letter_ids(tok, 3), [65, 66, 67])
    ids = mcqa.encode_prompts(["ab", "abcd"], tok, max_len=3)
    np.testing.assert_array_equal(ids, [[tok.pad, 97, 98], [98, 99, 100]])


def _write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in rows))
    return p


def test_loaders_parse_the_published_formats(tmp_path):
    obqa = {
        "id": "1",
        "question": {
            "stem": "Sun is a?",
            "choices": [
                {"text": "star", "label": "A"},
                {"text": "moon", "label": "B"},
                {"text": "rock", "label": "C"},
                {"text": "gas", "label": "D"},
            ],
        },
        "answerKey": "A",
    }
    arc5 = {
        "question": {
            "stem": "x?",
            "choices": [{"text": t, "label": str(i + 1)} for i, t in enumerate("abcde")],
        },
        "answerKey": "3",
    }
    arc4 = {
        "question": {
            "stem": "y?",
            "choices": [{"text": t, "label": str(i + 1)} for i, t in enumerate("abcd")],
        },
        "answerKey": "4",
    }
    ds = mcqa.load_mcqa_file(_write(tmp_path, "obqa.jsonl", [obqa]), "openbookqa")
    assert ds.questions == ("Sun is a?",) and ds.options[0][0] == "star" and ds.answers[0] == 0
    ds = mcqa.load_mcqa_file(_write(tmp_path, "arc.jsonl", [arc5, arc4, arc4]), "arc")
    assert len(ds) == 2 and ds.n_options == 4 and list(ds.answers) == [3, 3]
    ds5 = mcqa.load_mcqa_file(tmp_path / "arc.jsonl", "arc", n_options=5)
    assert len(ds5) == 1 and ds5.answers[0] == 2
    sciq = [
        {
            "question": f"q{i}",
            "correct_answer": "right",
            "distractor1": "w1",
            "distractor2": "w2",
            "distractor3": "w3",
            "support": "",
        }
        for i in range(20)
    ]
    ds = mcqa.load_mcqa_file(_write(tmp_path, "sciq.jsonl", sciq), "sciq", seed=1)
    assert all(o[a] == "right" for o, a in zip(ds.options, ds.answers, strict=True))
    assert len(set(ds.answers.tolist())) > 1  # shuffled, not always position 0
    med = [
        {"question": "m?", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": c}
        for c in (1, 4, 2)
    ]
    ds = mcqa.load_mcqa_file(_write(tmp_path, "med.json", med), "medmcqa")
    assert list(ds.answers) == [0, 3, 1]  # 1-based cop in the original JSON
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    hf = [
        {
            "question_stem": "Sun?",
            "choices": {"text": ["a", "b", "c", "d"], "label": ["A", "B", "C", "D"]},
            "answerKey": "C",
        }
    ]
    pq.write_table(pa.Table.from_pylist(hf), tmp_path / "obqa.parquet")
    ds = mcqa.load_mcqa_file(tmp_path / "obqa.parquet", "openbookqa")
    assert ds.answers[0] == 2 and ds.questions[0] == "Sun?"


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not found.*missing.jsonl"):
        mcqa.load_mcqa_file(tmp_path / "missing.jsonl", "arc")
    with pytest.raises(ValueError, match="fmt"):
        mcqa.load_mcqa_file(tmp_path / "missing.jsonl", "mmlu")
    with pytest.raises(ValueError, match="does not look like sciq"):
        mcqa.load_mcqa_file(_write(tmp_path, "x.jsonl", [{"a": 1}]), "sciq")


def test_continuation_mcqa_is_deterministic_and_well_formed():
    rng = np.random.default_rng(0)
    docs = [bytes(rng.choice(list(b"abcdefgh ij\n"), size=400)) for _ in range(5)]
    a = mcqa.continuation_mcqa(docs, n_items=40, seed=3, context_len=32, option_len=8)
    b = mcqa.continuation_mcqa(docs, n_items=40, seed=3, context_len=32, option_len=8)
    assert a.questions == b.questions and a.options == b.options
    np.testing.assert_array_equal(a.answers, b.answers)
    assert a.n_options == 4 and {len(q) for q in a.questions} == {32}
    assert {len(o) for opts in a.options for o in opts} == {8}
    for q, opts, ans in zip(a.questions, a.options, a.answers, strict=True):
        src = [d.decode() for d in docs if (q + opts[ans]) in d.decode()]
        assert src  # the true option continues the context in its document
        assert len(set(opts)) == 4
    # the answer slot is uniform: a chi-square check over 40 items would be weak, just all used
    assert set(a.answers.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="docs"):
        mcqa.continuation_mcqa(docs[:1], n_items=1, seed=0)
