"""The dataset types every loader returns: `Split` (tokens + labels) and `Dataset` (train / calib /
test splits of one task).

Letters: N examples, T tokens, P features per token.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
    """One split. tokens: [N, T, P] float32; labels: [N] int32."""

    tokens: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(f"tokens: expected [N, T, P], got shape {self.tokens.shape}")
        if self.labels.shape != (self.tokens.shape[0],):
            raise ValueError(
                f"labels: expected shape ({self.tokens.shape[0]},), got {self.labels.shape}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """train / calib / test splits of one task."""

    name: str
    train: Split
    calib: Split
    test: Split
    num_classes: int

    @property
    def seq_len(self) -> int:
        return int(self.train.tokens.shape[1])

    @property
    def token_dim(self) -> int:
        return int(self.train.tokens.shape[2])

    def split(self, name: str) -> Split:
        if name not in ("train", "calib", "test"):
            raise ValueError(f"split: unknown split {name!r}; expected train, calib or test")
        return getattr(self, name)
