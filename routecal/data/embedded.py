"""Default offline dataset: scikit-learn's bundled digits (8x8) as patch-token sequences.

(Placeholder loader; the foundation issue turns this into a locally built TFDS dataset.)
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits as _sk_load_digits
from sklearn.model_selection import train_test_split

from routecal.data import Dataset, Split


def images_to_patches(images_NxHxW: np.ndarray, patch: int) -> np.ndarray:
    """[N, H, W] -> [N, (H/p)*(W/p), p*p] non-overlapping patches, row-major."""
    n, h, w = images_NxHxW.shape
    if h % patch or w % patch:
        raise ValueError(f"patch: {patch} does not divide image shape {(h, w)}")
    x = images_NxHxW.reshape(n, h // patch, patch, w // patch, patch)
    x = x.transpose(0, 1, 3, 2, 4).reshape(n, (h // patch) * (w // patch), patch * patch)
    return x


def load_digits(data_cfg) -> Dataset:
    d = _sk_load_digits()
    images = (d.images / 16.0).astype(np.float32)
    labels = d.target.astype(np.int32)
    tokens = images_to_patches(images, int(data_cfg.get("patch_size", 2)))
    seed = int(data_cfg.get("seed", 0))
    idx = np.arange(len(labels))
    tr, rest = train_test_split(idx, test_size=0.4, random_state=seed, stratify=labels)
    ca, te = train_test_split(rest, test_size=0.5, random_state=seed, stratify=labels[rest])
    mk = lambda i: Split(tokens[i], labels[i])
    return Dataset("digits", mk(tr), mk(ca), mk(te), num_classes=10)
