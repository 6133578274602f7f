"""YaRN scaling (`routecal.models.yarn`) against closed forms of the paper (arXiv:2309.00071)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routecal.models import yarn

P = {"factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1,
     "mscale": 0.707, "mscale_all_dim": 0.707}


def test_inv_freq_keeps_fast_pairs_and_divides_slow_pairs_by_the_factor():
    dim, theta = 64, 10000.0
    got = yarn.inv_freq(dim, theta, P)
    base = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    # a pair rotating more than beta_fast times over the original context is extrapolated as is,
    # one rotating fewer than beta_slow times is interpolated (frequency / factor)
    rotations = 4096 * base / (2 * math.pi)
    fast, slow = rotations > 32 * 1.2, rotations < 1 / 1.2
    assert fast.any() and slow.any()
    np.testing.assert_allclose(got[fast], base[fast], rtol=1e-6)
    np.testing.assert_allclose(got[slow], base[slow] / 40.0, rtol=1e-6)
    assert np.all((got <= base * (1 + 1e-6)) & (got >= base / 40.0 * (1 - 1e-6)))


def test_mscales_follow_equation_21():
    m = 0.1 * 0.707 * math.log(40.0) + 1.0
    assert yarn.cos_sin_scale(P) == pytest.approx(1.0)  # mscale == mscale_all_dim
    assert yarn.softmax_scale_factor(P) == pytest.approx(m * m)
    assert yarn.cos_sin_scale({"factor": 4.0, "original_max_position_embeddings": 8}) == (
        pytest.approx(0.1 * math.log(4.0) + 1.0))
    assert yarn.from_hf_config({"rope_scaling": {"type": "yarn", **P}})["factor"] == 40.0
    assert yarn.from_hf_config({"rope_theta": 1e4}) == {}
    with pytest.raises(ValueError, match="factor"):
        yarn.check_params({"original_max_position_embeddings": 8})
