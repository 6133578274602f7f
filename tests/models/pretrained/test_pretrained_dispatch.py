"""Sparse dropless dispatch equals the dense path on every imported family (f32, 1e-5): logits,
router logits / probabilities, selected experts and gates."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_hf import V

from routecal.models.pretrained import FAMILIES, load_hf

EXTRA = {"deepseek_v2": {"topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 1}}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_sparse_dispatch_equals_dense_on_every_family(checkpoint, model_type):
    d, _, _ = checkpoint(model_type, **EXTRA.get(model_type, {}))
    ids = np.random.default_rng(4).integers(0, V, (2, 9))
    outs = {}
    for mode in ("dense", "sparse_blocks", "ragged"):
        model, info = load_hf(d, dtype="float32", overrides={"dispatch": mode})
        outs[mode] = model(ids, return_traces=True)
    assert info.config.dispatch == "ragged" and len(info.config.moe_layers) >= 1
    ref = outs["dense"]
    for mode in ("sparse_blocks", "ragged"):
        got = outs[mode]
        np.testing.assert_allclose(got.logits, ref.logits, atol=1e-5, rtol=1e-5, err_msg=mode)
        for a, b in zip(got.traces["mlp"], ref.traces["mlp"], strict=True):
            for key in ("router_logits", "router_probs", "experts", "gates"):
                np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=1e-5, err_msg=key)
