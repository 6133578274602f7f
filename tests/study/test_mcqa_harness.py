"""Tests for routecal.study.mcqa with a stub LM whose logits are known in closed form."""

import types

import numpy as np
import pytest
from scipy import special

from routecal.data import mcqa as mcqa_data
from routecal.data.text.tokenizer import ByteTokenizer
from routecal.study import mcqa


class StubLM:
    """logits[b, t, v] = W[ids[b, t], v]: the next-token law depends on the current token only."""

    def __init__(self, seed=0):
        self.w = np.random.default_rng(seed).normal(size=(259, 259))

    def __call__(self, ids):
        return types.SimpleNamespace(logits=self.w[np.asarray(ids)])


def test_letter_probs_hand_computed():
    lm, tok = StubLM(), ByteTokenizer()
    ds = mcqa_data.make_mcqa(["q?"], [["x", "y", "z"]], [1])
    p = mcqa.letter_probs(lm, ds, tok)
    last = ord(" ")  # every prompt ends with "Answer: "
    np.testing.assert_allclose(p[0], special.softmax(lm.w[last, [65, 66, 67]]), rtol=1e-10)


def test_loglik_probs_hand_computed_and_order_invariant():
    lm, tok = StubLM(1), ByteTokenizer()
    ds = mcqa_data.make_mcqa(["ab"], [["cd", "e", "fgh"]], [0])
    lsm = special.log_softmax(lm.w, axis=1)

    def ll(prev, opt):  # log p(opt | "... " + prev context) under the bigram stub
        s, last = 0.0, prev
        for ch in opt.encode():
            s += lsm[last, ch]
            last = ch
        return s

    sums = np.array([ll(ord(" "), o) for o in ("cd", "e", "fgh")])
    lens = np.array([2.0, 1.0, 3.0])
    np.testing.assert_allclose(mcqa.loglik_probs(lm, ds, tok)[0], special.softmax(sums / lens))
    np.testing.assert_allclose(
        mcqa.loglik_probs(lm, ds, tok, normalize=False)[0], special.softmax(sums)
    )
    rev = mcqa_data.make_mcqa(["ab"], [["fgh", "e", "cd"]], [2])
    np.testing.assert_allclose(
        mcqa.loglik_probs(lm, rev, tok)[0], mcqa.loglik_probs(lm, ds, tok)[0][::-1]
    )


def test_harness_with_the_decoder_runs():
    from flax import nnx

    from routecal.models import decoder
    from routecal.models.decoder_config import DecoderConfig

    cfg = DecoderConfig(d_model=8, n_layers=1, n_heads=2, mlp_dim=8, mlp_type="vmoer_fcvr",
                        n_experts=4, top_k=2, max_len=64)  # fmt: skip
    model = decoder.Decoder(cfg, rngs=nnx.Rngs(0))
    ds = mcqa_data.make_mcqa(["1+1?", "2+2?"], [["2", "3"], ["4", "5"]], [0, 0])
    p = mcqa.letter_probs(model, ds, ByteTokenizer())
    assert p.shape == (2, 2) and np.allclose(p.sum(1), 1)
    with pytest.raises(ValueError, match="answers"):
        mcqa_data.make_mcqa(["q"], [["a", "b"]], [5])
