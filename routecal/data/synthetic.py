"""A controllable synthetic sequence-classification task with a difficulty knob.

Each class c has a fixed mean sequence `mu_c` of shape [T, P], drawn once from the seed with entries
N(0, 2 / (T * P)), so that the expected squared distance between two class means is
E||mu_a - mu_b||^2 = 4 whatever T and P. An example of class y is

    x = mu_y + difficulty * eps,   eps ~ N(0, I)  (entries of [T, P]).

The Bayes classifier for equal priors is nearest-class-mean; for two classes at distance d = ||mu_a -
mu_b|| (about 2) its error is Phi(-d / (2 * difficulty)), about Phi(-1 / difficulty): difficulty 0 is
noise-free, 0.5 gives ~2 % pairwise error, 1 ~16 %, 2 ~31 %. Labels are balanced (counts differ by at
most one) and shuffled. Everything is a deterministic function of `seed`; the three splits use
independent streams, so changing `n_test` does not change the train split.

Letters: N examples, T tokens (seq_len), P features per token (token_dim), C classes.
"""

from __future__ import annotations

import numpy as np

from routecal._checks import check_nonnegative, check_positive_int
from routecal.data.splits import Dataset, Split

# Defaults used when a key is missing from the data config.
SYNTHETIC_DEFAULTS = dict(
    seed=0,
    n_train=2000,
    n_calib=1000,
    n_test=1000,
    seq_len=16,
    token_dim=8,
    num_classes=4,
    difficulty=0.5,
)


def class_means(seed: int, num_classes: int, seq_len: int, token_dim: int) -> np.ndarray:
    """The class mean sequences: [C, T, P] float64, entries N(0, 2 / (T * P)), fixed by `seed`."""
    rng = np.random.default_rng([seed, 0])
    scale = np.sqrt(2.0 / (seq_len * token_dim))
    return scale * rng.standard_normal((num_classes, seq_len, token_dim))


def sample_split(
    means_CxTxP: np.ndarray, n: int, difficulty: float, rng: np.random.Generator
) -> Split:
    """Draws `n` balanced, shuffled examples `mu_y + difficulty * N(0, I)`; tokens float32 [N, T, P]."""
    n = check_positive_int(n, "n")
    difficulty = check_nonnegative(difficulty, "difficulty")
    c = means_CxTxP.shape[0]
    labels = rng.permutation(np.arange(n) % c).astype(np.int32)
    noise = rng.standard_normal((n, *means_CxTxP.shape[1:]))
    tokens = means_CxTxP[labels] + difficulty * noise
    return Split(tokens.astype(np.float32), labels)


def load_synthetic(data_cfg) -> Dataset:
    """The synthetic task as a Dataset.

    Args:
      data_cfg: ConfigDict (or dict) with keys (missing keys take these defaults): seed (0),
        n_train (2000), n_calib (1000), n_test (1000), seq_len (16), token_dim (8),
        num_classes (4), difficulty (0.5; >= 0, the noise scale relative to the class-mean spread).

    Returns:
      Dataset "synthetic": tokens [N, seq_len, token_dim] float32, labels [N] int32 in
      [0, num_classes).
    """
    get = lambda k: data_cfg.get(k, SYNTHETIC_DEFAULTS[k])
    seed = check_positive_int(get("seed"), "seed", minimum=0)
    sizes = {k: check_positive_int(get(k), k) for k in ("n_train", "n_calib", "n_test")}
    seq_len = check_positive_int(get("seq_len"), "seq_len")
    token_dim = check_positive_int(get("token_dim"), "token_dim")
    num_classes = check_positive_int(get("num_classes"), "num_classes", minimum=2)
    difficulty = check_nonnegative(get("difficulty"), "difficulty")
    means = class_means(seed, num_classes, seq_len, token_dim)
    splits = [
        sample_split(means, sizes[k], difficulty, np.random.default_rng([seed, 1 + i]))
        for i, k in enumerate(("n_train", "n_calib", "n_test"))
    ]
    return Dataset("synthetic", *splits, num_classes=num_classes)
