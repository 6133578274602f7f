"""Distribution shifts and out-of-distribution (OOD) sets, as pure functions of splits.

Every function returns new arrays and leaves its input untouched. Token arrays are [N, T, P]
(N examples, T tokens, P features per token); image tokens from `routecal.data` lie in [0, 1], so
`pixel_noise` and `invert` clip to [0, 1] by default (pass `clip=False` for unbounded tokens such as
the synthetic task's).

    pixel_noise(split, std, seed)        x + N(0, std^2), clipped         -> Split
    invert(split)                        1 - x                            -> Split
    held_out_classes(dataset, classes)   drop classes, relabel the rest   -> (Dataset, ood Split)
    make_ood(dataset, kind, **kw)        any of the above                 -> (Dataset, ood Split)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from routecal._checks import check_nonnegative
from routecal.data.splits import Dataset, Split

OOD_KINDS = ("pixel_noise", "invert", "held_out_classes")


def pixel_noise(split: Split, std: float, seed: int = 0, *, clip: bool = True) -> Split:
    """Adds i.i.d. Gaussian noise N(0, std^2) to every token feature.

    Args:
      split: tokens [N, T, P].
      std: noise standard deviation, >= 0 (0 returns a copy).
      seed: noise seed; the same seed gives the same noise.
      clip: clip the result to [0, 1] (for image tokens).

    Returns:
      Split with tokens [N, T, P] float32 (same labels).
    """
    std = check_nonnegative(std, "std")
    rng = np.random.default_rng(seed)
    noisy = split.tokens + std * rng.standard_normal(split.tokens.shape)
    if clip:
        noisy = np.clip(noisy, 0.0, 1.0)
    return Split(noisy.astype(np.float32), split.labels.copy())


def invert(split: Split, *, clip: bool = True) -> Split:
    """Inverts intensities: tokens -> 1 - tokens ([N, T, P]; labels unchanged)."""
    out = 1.0 - split.tokens
    if clip:
        out = np.clip(out, 0.0, 1.0)
    return Split(out.astype(np.float32), split.labels.copy())


def held_out_classes(dataset: Dataset, classes: Sequence[int]) -> tuple[Dataset, Split]:
    """Holds classes out: an in-distribution dataset without them, and the OOD set made of them.

    Args:
      dataset: the full dataset.
      classes: the class ids to hold out (distinct, in [0, num_classes), at most num_classes - 2 so
        that at least two classes remain).

    Returns:
      in_dataset: every split with the held-out classes' examples removed and the remaining classes
        relabelled 0..K-1 in increasing order of their old id (K = num_classes - len(classes));
        named "<name>-holdout<ids>".
      ood: the test split's examples of the held-out classes, [M, T, P], keeping their original
        labels (in [0, num_classes)); only the test split is used so in- and out-of-distribution
        evaluation sets are disjoint from the training data.
    """
    held = np.unique(np.asarray(list(classes)))
    if held.size == 0:
        raise ValueError("classes: must name at least one class to hold out")
    if held.dtype.kind not in "iu":
        raise ValueError(f"classes: must be integers, got {list(classes)!r}")
    if len(held) != len(list(classes)):
        raise ValueError(f"classes: contains duplicates: {list(classes)!r}")
    if held.min() < 0 or held.max() >= dataset.num_classes:
        raise ValueError(f"classes: must lie in [0, {dataset.num_classes}), got {held.tolist()}")
    if dataset.num_classes - len(held) < 2:
        raise ValueError(
            f"classes: holding out {len(held)} of {dataset.num_classes} classes leaves fewer than 2"
        )
    kept = np.setdiff1d(np.arange(dataset.num_classes), held)
    new_label = np.full(dataset.num_classes, -1, dtype=np.int32)
    new_label[kept] = np.arange(len(kept), dtype=np.int32)

    def keep(split: Split) -> Split:
        mask = ~np.isin(split.labels, held)
        return Split(split.tokens[mask], new_label[split.labels[mask]])

    in_dataset = Dataset(
        f"{dataset.name}-holdout{'_'.join(map(str, held.tolist()))}",
        keep(dataset.train),
        keep(dataset.calib),
        keep(dataset.test),
        num_classes=len(kept),
    )
    ood_mask = np.isin(dataset.test.labels, held)
    if not ood_mask.any():
        raise ValueError(f"classes: the test split holds no example of {held.tolist()}")
    ood = Split(dataset.test.tokens[ood_mask], dataset.test.labels[ood_mask].copy())
    return in_dataset, ood


def make_ood(dataset: Dataset, kind: str, **kwargs) -> tuple[Dataset, Split]:
    """Builds an (in-distribution dataset, OOD split) pair.

    Args:
      dataset: the dataset.
      kind: "pixel_noise" (kwargs: std, seed=0, clip=True; the test split plus noise),
        "invert" (kwargs: clip=True; the inverted test split) or "held_out_classes"
        (kwargs: classes).

    Returns:
      (in_dataset, ood): for the corruptions in_dataset is `dataset` itself and ood is the corrupted
      test split [N_test, T, P]; for held-out classes see `held_out_classes`.
    """
    if kind == "pixel_noise":
        return dataset, pixel_noise(dataset.test, **kwargs)
    if kind == "invert":
        return dataset, invert(dataset.test, **kwargs)
    if kind == "held_out_classes":
        return held_out_classes(dataset, **kwargs)
    raise ValueError(f"kind: unknown OOD kind {kind!r}; expected one of {OOD_KINDS}")
