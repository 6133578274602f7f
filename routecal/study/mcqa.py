"""The MCQA harness: option probabilities of a causal LM for an `MCQA` set, by either rule of
`routecal.stats.mcqa` (answer letter restricted to the option letters, or length-normalised option
log-likelihood), then calibration over options.

    p = letter_probs(model, ds, tokenizer)                 # [N, K]
    p = loglik_probs(model, ds, tokenizer, normalize=True) # [N, K]
    metrics = routecal.stats.mcqa.mcqa_metrics(p, ds.answers)

`model(ids_BxT).logits` is [B, T, V] (routecal's `Decoder`, or any callable with that output).
Letters: N items, K options, T tokens, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

from routecal.data import mcqa as mcqa_data
from routecal.stats import mcqa as mcqa_stats


def _logits(model: Any, ids_BxT: np.ndarray) -> np.ndarray:
    return np.asarray(model(ids_BxT).logits, np.float64)


def letter_probs(model: Any, ds: mcqa_data.MCQA, tokenizer: Any, *, max_len: int = 512,
                 batch_size: int = 32) -> np.ndarray:  # fmt: skip
    """p [N, K] = softmax of the next-token logits after `format_prompt`, restricted to A, B, ...
    (and, for a padded set, to each item's real options: `stats.mcqa.mask_options`)."""
    prompts = [mcqa_data.format_prompt(q, o) for q, o in ds.items()]
    ids = mcqa_data.encode_prompts(prompts, tokenizer, max_len)
    last = np.concatenate(
        [_logits(model, ids[i : i + batch_size])[:, -1] for i in range(0, len(ids), batch_size)]
    )
    p = mcqa_stats.letter_option_probs(last, mcqa_data.letter_ids(tokenizer, ds.n_options))
    return mcqa_stats.mask_options(p, ds.option_mask)  # padded items: real options only


def option_loglik(
    model: Any, question: str, options: tuple[str, ...], tokenizer: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log p(option tokens | question + " ") [K] and option lengths in tokens [K].

    The K sequences "question option" are scored in one batch, right-padded with the pad id
    (causal attention: padding after a token never changes its log-probability).
    """
    q = np.asarray(tokenizer.encode((question + " ").encode()), np.int32)
    opts = [np.asarray(tokenizer.encode(o.encode()), np.int32) for o in options]
    t = len(q) + max(len(o) for o in opts)
    ids = np.full((len(opts), t), tokenizer.pad, np.int32)
    for k, o in enumerate(opts):
        ids[k, : len(q) + len(o)] = np.concatenate([q, o])
    logp = special.log_softmax(_logits(model, ids), axis=-1)
    sums = np.array(
        [sum(logp[k, len(q) + j - 1, tok] for j, tok in enumerate(o)) for k, o in enumerate(opts)]
    )
    return sums, np.array([len(o) for o in opts], np.float64)


def loglik_probs(
    model: Any, ds: mcqa_data.MCQA, tokenizer: Any, *, normalize: bool = True
) -> np.ndarray:
    """p [N, K] from (length-normalised) option log-likelihoods (`loglik_option_probs`)."""
    pairs = [option_loglik(model, q, o, tokenizer) for q, o in ds.items()]
    sums = np.stack([s for s, _ in pairs])
    lens = np.stack([n for _, n in pairs])
    p = mcqa_stats.loglik_option_probs(np.minimum(sums, 0.0), lens, normalize=normalize)
    return mcqa_stats.mask_options(p, ds.option_mask)
