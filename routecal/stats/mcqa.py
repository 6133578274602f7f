"""Multiple-choice QA scoring and calibration over options (pure functions of arrays).

Two ways to turn a language model into option probabilities p [N, K] (Li & Wicker,
arXiv:2603.09453, Sec. 5, score MCQA by the answer letter; the log-likelihood rule is the
lm-evaluation-harness "acc_norm" convention):
  letter   p = softmax over the K option letters of the next-token logits after the prompt
           (`letter_option_probs`: the logits restricted to the letter tokens);
  loglik   p = softmax_k( sum_t log p(option_k token t | question) / n_k ), the option
           log-likelihood normalised by its length n_k (`loglik_option_probs`; normalize=False
           uses the plain sum).
Calibration is over options: confidence = max_k p_k, correct = argmax_k p_k == answer
(`mcqa_metrics`: accuracy, ECE, MCE, NLL, Brier through `routecal.stats.calibration`).

Letters: N items, K options, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

from routecal import _checks
from routecal.stats import calibration


def letter_option_probs(logits_NxV: Any, letter_ids_K: Any) -> np.ndarray:
    """Option probabilities [N, K] = softmax(logits[:, letter_ids]) (the other tokens ignored).

    Raises:
      ValueError: logits not [N, V] finite; letter ids not distinct ints in [0, V).
    """
    logits = _checks.as_array(logits_NxV, "logits_NxV", ndim=2)
    ids = _checks.as_array(letter_ids_K, "letter_ids_K", ndim=1, dtype=None)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"letter_ids_K: expected integer token ids, got {ids.dtype}")
    if ids.min() < 0 or ids.max() >= logits.shape[1]:
        raise ValueError(f"letter_ids_K: ids must lie in [0, V={logits.shape[1]})")
    if len(set(ids.tolist())) != len(ids) or len(ids) < 2:
        raise ValueError(f"letter_ids_K: need >= 2 distinct ids, got {ids.tolist()}")
    return special.softmax(logits[:, ids], axis=1)


def mask_options(probs_NxK: Any, mask_NxK: Any | None) -> np.ndarray:
    """Option probabilities [N, K] with padding options (mask False) set to 0 and each row
    renormalised over its real options: p'_k = m_k p_k / sum_j m_j p_j. None: `probs_NxK` as is.

    Raises:
      ValueError: shapes differ, or a row has no real option.
    """
    p = _checks.as_array(probs_NxK, "probs_NxK", ndim=2)
    if mask_NxK is None:
        return p
    m = np.asarray(mask_NxK, bool)
    if m.shape != p.shape or not m.any(axis=1).all():
        raise ValueError(f"mask_NxK: expected {p.shape} with a real option per row, got {m.shape}")
    q = np.where(m, p, 0.0)
    return q / q.sum(axis=1, keepdims=True)


def loglik_option_probs(
    logprob_sums_NxK: Any, lengths_NxK: Any, *, normalize: bool = True
) -> np.ndarray:
    """Option probabilities [N, K] = softmax_k(sum log-likelihood / length) (or / 1).

    Args:
      logprob_sums_NxK: summed token log-probabilities of each option given its question (<= 0).
      lengths_NxK: option lengths (tokens, or bytes for a byte-normalised score), >= 1.
      normalize: divide by the length (True) or not.
    """
    s = _checks.as_array(logprob_sums_NxK, "logprob_sums_NxK", ndim=2)
    n = _checks.as_array(lengths_NxK, "lengths_NxK", ndim=2)
    if n.shape != s.shape:
        raise ValueError(f"lengths_NxK: shape {n.shape} does not match logprob sums {s.shape}")
    if np.any(n < 1):
        raise ValueError("lengths_NxK: every option needs length >= 1")
    if np.any(s > 1e-6):
        raise ValueError("logprob_sums_NxK: log-probabilities must be <= 0")
    return special.softmax(s / n if normalize else s, axis=1)


def check_option_probs(probs_NxK: Any, answers_N: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (probs [N, K] rows summing to 1, answers [N] ints in [0, K))."""
    p = _checks.check_probs(probs_NxK, "probs_NxK")
    a = _checks.as_array(answers_N, "answers_N", ndim=1, dtype=None)
    if len(a) != len(p):
        raise ValueError(f"answers_N: {len(a)} answers for {len(p)} items")
    _checks.check_labels(a, p.shape[1], "answers_N")
    return p, a.astype(np.int64)


def mcqa_metrics(probs_NxK: Any, answers_N: Any, *, n_bins: int = 15) -> dict[str, float]:
    """Accuracy and calibration over options: ECE and MCE (equal-width bins of max_k p_k), NLL
    and Brier score of the option distribution."""
    p, a = check_option_probs(probs_NxK, answers_N)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == a).astype(np.float64)
    return {
        "accuracy": float(correct.mean()),
        "ece": calibration.ece(conf, correct, n_bins=n_bins),
        "mce": calibration.ece(conf, correct, n_bins=n_bins, norm="max"),
        "nll": calibration.nll(p, a),
        "brier": calibration.brier(p, a),
        "confidence": float(conf.mean()),
    }
