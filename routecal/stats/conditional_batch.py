"""The recommended conditional test on D datasets at once, as one vmapped computation.

Shapes: `D` datasets, `N` examples, `K` units, `B` sign flips. Used by `stats.validity` (level and
power tables; re-exported by `stats.diagnostics`); dataset d equals `conditional_calibration_test`
with key `fold_in(key, d)` (same K). Moved out of `conditional` (issue 22, the 400-line limit).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from routecal import _checks
from routecal.stats import cluster_inference as ci
from routecal.stats import conditional_omnibus as omnibus
from routecal.stats import restudentised as rs
from routecal.stats.conditional import (
    ConditionalTestResult,
    _units,
    check_inputs,
    conditional_test_core,
)
from routecal.stats.random_bits import _resolve_chunk


@functools.partial(
    jax.jit, static_argnames=("n_permutations", "n_strata", "n_units", "chunk_size",
                              "stratum_size", "alternative", "p_value", "reference"),
    compiler_options=ci.COMPILER_OPTIONS,
)
def _batched(c, y, r, units, keys, *, n_permutations, n_strata, n_units, chunk_size,
             stratum_size, alternative, p_value, reference):
    core = functools.partial(
        conditional_test_core, n_permutations=n_permutations, n_strata=n_strata, n_units=n_units,
        chunk_size=chunk_size, stratum_size=stratum_size, alternative=alternative, p_value=p_value,
        reference=reference,
    )
    return jax.vmap(core)(c, y, r, units, keys)


def conditional_test_batch(
    confidence: Any,
    correct: Any,
    routing: Any,
    *,
    key: Any,
    clusters: Any = None,
    n_permutations: int = 1000,
    stratum_size: int = 50,
    chunk_size: int | None = None,
    alternative: str = "monotone",
    alpha: float = 0.05,
    few_clusters: str = "raise",
    p_value: str = "conservative",
    reference: str = "auto",
) -> ConditionalTestResult:
    """The conditional test on D datasets at once, as one vmapped computation.

    Dataset d uses key `fold_in(key, d)` (so it equals the single call with that key).

    Args:
      confidence, correct, routing: [D, N]. clusters: optional [D, N] integer ids.
      alternative, alpha, few_clusters, p_value, reference: as in `conditional_calibration_test`
        (K: the fewest for `few_clusters`, the largest for `reference`; with "within" each
        dataset's t reference has its own K - 1 df).
    Returns:
      ConditionalTestResult whose fields are [D] (null [D, B]; n_units the largest K).
    """
    c = _checks.as_array(confidence, "confidence", ndim=2)
    y = _checks.as_array(correct, "correct", ndim=2)
    r = _checks.as_array(routing, "routing", ndim=2)
    if not (c.shape == y.shape == r.shape):
        raise ValueError(
            f"mismatched lengths: confidence={c.shape}, correct={y.shape}, routing={r.shape}"
        )
    alternative, p_value = omnibus.check_alternative(alternative), ci.check_p_value(p_value)
    n_strata = 0
    for d in range(c.shape[0]):
        n_strata = check_inputs(c[d], y[d], r[d], stratum_size)[3]
    if clusters is None:
        units, n_units = np.broadcast_to(np.arange(c.shape[1], dtype=np.int32), c.shape), c.shape[1]
        fewest = n_units
    else:
        cl = _checks.as_array(clusters, "clusters", ndim=2, dtype=None)
        if cl.shape != c.shape:
            raise ValueError(f"clusters: shape {cl.shape} does not match confidence {c.shape}")
        per = [_units(cl[d], c.shape[1]) for d in range(c.shape[0])]
        units, n_units = np.stack([u for u, _ in per]), max(k for _, k in per)
        fewest = min(k for _, k in per)
    reference = rs.resolve(reference, n_units, alternative, c.shape[1])
    warning = ci.check_feasible(fewest, alpha, few_clusters, reference)
    key = _checks.check_key(key)
    n_permutations = _checks.check_positive_int(n_permutations, "n_permutations")
    chunk_size = _resolve_chunk(chunk_size, n_permutations)
    keys = jax.vmap(lambda d: jax.random.fold_in(key, d))(jnp.arange(c.shape[0]))
    with jax.enable_x64(True):
        z, p, null, slope = _batched(
            jnp.asarray(c), jnp.asarray(y), jnp.asarray(r), jnp.asarray(units), keys,
            n_permutations=n_permutations, n_strata=n_strata, n_units=n_units,
            chunk_size=chunk_size, stratum_size=stratum_size, alternative=alternative,
            p_value=p_value, reference=reference,
        )
        return ConditionalTestResult(
            np.asarray(z), np.asarray(p), np.asarray(null), np.asarray(slope), n_units, n_strata,
            alternative, warning, reference,
        )
