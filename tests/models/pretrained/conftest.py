"""Fixture writing tiny Hugging Face-format checkpoints (`tiny_hf`) into a temporary directory."""

from __future__ import annotations

import os

import pytest
from tiny_hf import hf_config, hf_tensors, write_checkpoint


@pytest.fixture
def checkpoint(tmp_path):
    """checkpoint(model_type, n_shards=1, index=True, tensors=None, **config) -> (dir, cfg, tensors)."""
    def make(model_type, *, n_shards=1, index=True, tensors=None, seed=0, **extra):
        cfg = hf_config(model_type, **extra)
        t = hf_tensors(cfg, seed) if tensors is None else tensors
        d = tmp_path / f"{model_type}-{n_shards}-{index}-{len(os.listdir(tmp_path))}"
        return write_checkpoint(d, cfg, t, n_shards=n_shards, index=index), cfg, t

    return make
