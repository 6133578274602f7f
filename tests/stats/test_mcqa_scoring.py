"""Tests for routecal.stats.mcqa: hand-computed scores, option-order invariance, bad input."""

import numpy as np
import pytest

from routecal.stats import calibration, mcqa


def test_letter_scoring_hand_computed():
    # vocabulary of 6 tokens; letters A..C are tokens 3, 4, 5
    logits = np.array([[9.0, -2.0, 0.0, 1.0, 2.0, 0.0]])
    p = mcqa.letter_option_probs(logits, np.array([3, 4, 5]))
    # softmax([1, 2, 0]) = e^[1,2,0] / (e + e^2 + 1); token 0's large logit is ignored
    z = np.e + np.e**2 + 1
    np.testing.assert_allclose(p, [[np.e / z, np.e**2 / z, 1 / z]], rtol=1e-12)


def test_loglik_scoring_hand_computed():
    sums = np.array([[-4.0, -3.0]])
    lens = np.array([[4.0, 1.0]])
    # normalised: scores -1, -3 -> softmax = [1/(1+e^-2), e^-2/(1+e^-2)]
    np.testing.assert_allclose(
        mcqa.loglik_option_probs(sums, lens),
        [[1 / (1 + np.exp(-2)), np.exp(-2) / (1 + np.exp(-2))]],
    )
    # unnormalised: -4 vs -3 -> option 1 wins
    assert mcqa.loglik_option_probs(sums, lens, normalize=False).argmax() == 1


def test_metrics_match_calibration_and_are_invariant_to_option_order():
    rng = np.random.default_rng(0)
    n, k, v = 200, 4, 10
    logits = rng.normal(size=(n, v)) * 2
    letters = np.array([6, 7, 8, 9])
    answers = rng.integers(0, k, n)
    p = mcqa.letter_option_probs(logits, letters)
    m = mcqa.mcqa_metrics(p, answers)
    conf, pred = p.max(1), p.argmax(1)
    assert m["accuracy"] == pytest.approx(np.mean(pred == answers))
    assert m["ece"] == pytest.approx(calibration.ece(conf, pred == answers))
    assert m["nll"] == pytest.approx(-np.mean(np.log(p[np.arange(n), answers])))
    onehot = np.eye(k)[answers]
    assert m["brier"] == pytest.approx(np.mean(np.sum((p - onehot) ** 2, 1)))
    # MCE from numpy: max over non-empty equal-width bins of |acc - conf|
    bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
    gaps = [
        abs(np.mean(pred[bins == b] == answers[bins == b]) - conf[bins == b].mean())
        for b in range(15)
        if np.any(bins == b)
    ]
    assert m["mce"] == pytest.approx(max(gaps), rel=1e-5)
    # permute the options of every item (letters follow their options): metrics unchanged
    perm = np.array([rng.permutation(k) for _ in range(n)])
    logits2 = logits.copy()
    logits2[np.arange(n)[:, None], letters[None, :]] = logits[np.arange(n)[:, None], letters[perm]]
    answers2 = np.argmax(perm == answers[:, None], axis=1)
    m2 = mcqa.mcqa_metrics(mcqa.letter_option_probs(logits2, letters), answers2)
    for key in m:
        assert m2[key] == pytest.approx(m[key], rel=1e-6, abs=1e-9)  # float32 engines
    lp = -rng.uniform(0.1, 5, size=(n, k))
    ln = rng.integers(1, 9, size=(n, k)).astype(float)
    a = mcqa.mcqa_metrics(mcqa.loglik_option_probs(lp, ln), answers)
    b = mcqa.mcqa_metrics(
        mcqa.loglik_option_probs(np.take_along_axis(lp, perm, 1), np.take_along_axis(ln, perm, 1)),
        answers2,
    )
    assert a == pytest.approx(b)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="letter_ids_K"):
        mcqa.letter_option_probs(np.zeros((2, 5)), np.array([1, 1]))
    with pytest.raises(ValueError, match="letter_ids_K"):
        mcqa.letter_option_probs(np.zeros((2, 5)), np.array([1, 7]))
    with pytest.raises(ValueError, match="logits_NxV"):
        mcqa.letter_option_probs(np.full((2, 5), np.nan), np.array([1, 2]))
    with pytest.raises(ValueError, match="lengths_NxK"):
        mcqa.loglik_option_probs(-np.ones((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="answers_N"):
        mcqa.mcqa_metrics(np.full((2, 3), 1 / 3), np.array([0, 3]))
    with pytest.raises(ValueError, match="answers_N"):
        mcqa.mcqa_metrics(np.full((2, 3), 1 / 3), np.array([0]))
    with pytest.raises(ValueError, match="probs_NxK"):
        mcqa.mcqa_metrics(np.full((2, 3), 0.5), np.array([0, 1]))
