"""Tests for routecal.data.mcqa: validation, prompt encoding, option counts of parsed items, the
embedded continuation MCQA."""

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


def test_from_parsed_pads_and_masks_only_when_asked():
    parsed = [("q1", ["a", "b", "c", "d"], 3, "line 1"), ("q2", ["a", "b", "c"], 2, "line 2"),
              ("q3", ["a", "b", "c", "d"], 0, "line 3")]
    with pytest.raises(ValueError, match=r"f.jsonl: .*4 options: 2 item\(s\), first at line 1; "
                                         r"3 options: 1 item\(s\), first at line 2"):
        mcqa.from_parsed(parsed, name="x", domain="in", where="f.jsonl")
    four = mcqa.from_parsed(parsed, 4, name="x", domain="in", where="f.jsonl")
    assert len(four) == 2 and four.n_dropped == 1 and four.option_mask is None
    padded = mcqa.from_parsed(parsed, pad=True, name="x", domain="in", where="f.jsonl")
    assert padded.n_padded == 1 and padded.n_dropped == 0 and padded.n_options == 4
    assert padded.options[1][3] == mcqa.PAD_OPTION
    np.testing.assert_array_equal(padded.option_mask[:, 3], [True, False, True])
    with pytest.raises(ValueError, match="f.jsonl line 2: empty question"):
        mcqa.from_parsed([parsed[0], ("", ["a", "b"], 0, "line 2")], name="x", domain="in",
                         where="f.jsonl")


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
