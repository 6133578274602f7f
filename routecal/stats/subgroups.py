"""Matched-confidence subgroup gaps: the paper test's observed table (`subgroup_gaps`).

Shapes: `N` examples, `M` confidence bins, `G` routing groups per bin, `L` examples per scan step.
Definitions: `routecal.stats.diagnostics` (module docstring). `_layout` also builds the padded arrays
the permutation engine (`diagnostics._null_chunk`) streams over.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from routecal import _checks
from routecal.stats import ranks
from routecal.stats.binning import bin_index, split_index

_L = 16  # examples per scan step of the permutation engine (unrolled; keeps loop overhead low)

def _check_inputs(
    confidence: Any, correct: Any, routing: Any, n_bins: Any, n_groups: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    c = _checks.check_unit_interval(
        _checks.as_array(confidence, "confidence", ndim=1), "confidence"
    )
    y = _checks.check_binary(correct, "correct")
    r = _checks.as_array(routing, "routing", ndim=1)
    n = _checks.check_same_length(confidence=c, correct=y, routing=r)
    n_bins = _checks.check_positive_int(n_bins, "n_bins")
    n_groups = _checks.check_positive_int(n_groups, "n_groups", minimum=2)
    if n < n_bins * n_groups:
        raise ValueError(
            f"confidence: {n} examples, fewer examples than bins x groups "
            f"(n_bins={n_bins} x n_groups={n_groups} = {n_bins * n_groups})"
        )
    return c, y, r, n_bins, n_groups


def _np_bins(c: np.ndarray, n_bins: int, binning: str = "width") -> np.ndarray:
    """Host (float64) confidence bins: the one binning, `routecal.stats.binning.bin_index`."""
    return bin_index(np.asarray(c, np.float64), n_bins, binning)




class _Layout(NamedTuple):
    """Per-bin table of the observed data plus the padded, blocked arrays the null streams over."""

    count: jax.Array  # [M] n_b
    n_top: jax.Array  # [M]
    n_bottom: jax.Array  # [M]
    acc_top: jax.Array  # [M]
    conf_top: jax.Array  # [M]
    acc_bottom: jax.Array  # [M]
    conf_bottom: jax.Array  # [M]
    gap: jax.Array  # [M], 0 for bins with fewer than G members
    weighted_gap: jax.Array  # scalar
    a_top: jax.Array  # [n_blocks, L] residual / n_top of the example's bin (0 on padding)
    a_bot: jax.Array  # [n_blocks, L] residual / n_bottom
    rem: jax.Array  # [n_blocks, L] uint32 examples of the bin not yet visited (1 on padding)
    first: jax.Array  # [n_blocks] 1 on a bin's first block
    k_top: jax.Array  # [n_blocks] n_top on a bin's first block, else 0
    k_topmid: jax.Array  # [n_blocks] n_b - n_bottom on a bin's first block, else 0
    w_end: jax.Array  # [n_blocks] n_b / N on a bin's last block, else 0
    ctr: jax.Array  # [n_blocks, L] uint32 position in (bin, routing) order: the draw's counter


def _layout(
    bins: jax.Array,
    confidence: jax.Array,
    correct: jax.Array,
    routing: jax.Array,
    n_bins: int,
    n_groups: int,
    block: int = _L,
) -> _Layout:
    """Sorts by (bin, routing), forms the within-bin groups and the observed per-bin table.

    Args:
      bins: [N] int32 in [0, M). confidence, correct, routing: [N] float.
      block: L, examples per scan step of the null (the padded layout's row length).
    """
    n = bins.shape[0]
    f = confidence.dtype
    iota = jnp.arange(n, dtype=jnp.int32)
    idx = ranks.stable_order(bins, routing, n_bins)
    sb = bins[idx]
    c_s, y_s = confidence[idx], correct[idx]
    res_s = y_s - c_s
    b_ids = jnp.arange(n_bins, dtype=sb.dtype)
    starts = jnp.searchsorted(sb, b_ids, side="left").astype(jnp.int32)
    nb = jnp.searchsorted(sb, b_ids, side="right").astype(jnp.int32) - starts
    rank = iota - starts[sb]
    nbe = nb[sb]
    # Groups are cut by value: a tie block of routing values goes, whole, to the group of its middle
    # sorted position (its mid-rank), so the groups (and the statistic) do not depend on the row order.
    sr = routing[idx]
    new = jnp.ones((n,), bool).at[1:].set((sb[1:] != sb[:-1]) | (sr[1:] != sr[:-1]))
    end = jnp.ones((n,), bool).at[:-1].set(new[1:])
    first_pos = lax.cummax(jnp.where(new, iota, 0))
    last_pos = lax.cummin(jnp.where(end, iota, n - 1), reverse=True)
    grp = split_index((first_pos + last_pos) // 2 - starts[sb], nbe, n_groups)
    top, bot = grp == n_groups - 1, grp == 0
    k_top = jnp.zeros((n_bins,), jnp.int32).at[sb].add(top.astype(jnp.int32))
    k_bot = jnp.zeros((n_bins,), jnp.int32).at[sb].add(bot.astype(jnp.int32))
    valid = (k_top > 0) & (k_bot > 0)

    def per_bin(mask, v):
        return jnp.zeros((n_bins,), f).at[sb].add(jnp.where(mask, v, 0.0))

    kt_f = jnp.maximum(k_top, 1).astype(f)
    kb_f = jnp.maximum(k_bot, 1).astype(f)
    acc_top, conf_top = per_bin(top, y_s) / kt_f, per_bin(top, c_s) / kt_f
    acc_bot, conf_bot = per_bin(bot, y_s) / kb_f, per_bin(bot, c_s) / kb_f
    gap = jnp.where(valid, (acc_top - conf_top) - (acc_bot - conf_bot), 0.0)
    weighted = jnp.sum(nb.astype(f) / n * jnp.abs(gap))

    # Padded layout: each valid bin starts on a block boundary, so resets happen per block.
    n_blocks = -(-n // block) + n_bins
    nblk = jnp.where(valid, -(-nb // block), 0)
    blk_start = jnp.cumsum(nblk) - nblk
    pos = jnp.where(valid[sb], blk_start[sb] * block + rank, n_blocks * block)
    size = n_blocks * block

    def scatter(fill, v, dtype=f):
        return jnp.full((size,), fill, dtype).at[pos].set(v, mode="drop").reshape(n_blocks, block)

    a_top = scatter(0.0, res_s / kt_f[sb])
    a_bot = scatter(0.0, res_s / kb_f[sb])
    rem = scatter(1, (nbe - rank).astype(jnp.uint32), jnp.uint32)
    first_idx = jnp.where(valid, blk_start, n_blocks)
    last_idx = jnp.where(valid, blk_start + nblk - 1, n_blocks)

    def blk(idx_, v):
        return jnp.zeros((n_blocks,), f).at[idx_].set(v, mode="drop")

    return _Layout(
        count=nb,
        n_top=jnp.where(valid, k_top, 0),
        n_bottom=jnp.where(valid, k_bot, 0),
        acc_top=jnp.where(valid, acc_top, 0.0),
        conf_top=jnp.where(valid, conf_top, 0.0),
        acc_bottom=jnp.where(valid, acc_bot, 0.0),
        conf_bottom=jnp.where(valid, conf_bot, 0.0),
        gap=gap,
        weighted_gap=weighted,
        a_top=a_top,
        a_bot=a_bot,
        rem=rem,
        first=blk(first_idx, 1.0),
        k_top=blk(first_idx, k_top.astype(f)),
        k_topmid=blk(first_idx, (nb - k_bot).astype(f)),
        w_end=blk(last_idx, nb.astype(f) / n),
        ctr=scatter(0, iota.astype(jnp.uint32), jnp.uint32),
    )


class SubgroupGaps(NamedTuple):
    """Per-bin table ([M] numpy arrays) and the weighted gap.

    count: n_b; n_top / n_bottom: sizes of the top / bottom routing groups (0 if the bin has fewer
    than G members); acc_* / conf_*: accuracy and mean confidence of those groups; gap: per-bin gap
    (acc - conf of top) - (acc - conf of bottom), 0 for bins that contribute nothing;
    weighted_gap: sum_b (n_b / N) |gap_b|.
    """

    count: np.ndarray
    n_top: np.ndarray
    n_bottom: np.ndarray
    acc_top: np.ndarray
    conf_top: np.ndarray
    acc_bottom: np.ndarray
    conf_bottom: np.ndarray
    gap: np.ndarray
    weighted_gap: float


@functools.partial(jax.jit, static_argnames=("n_bins", "n_groups"))
def _table(bins, confidence, correct, routing, n_bins, n_groups):
    lay = _layout(bins, confidence, correct, routing, n_bins, n_groups)
    return lay[:9]


def subgroup_gaps(
    confidence: Any,
    correct: Any,
    routing: Any,
    n_bins: int = 15,
    n_groups: int = 3,
    *,
    binning: str = "width",
) -> SubgroupGaps:
    """Matched-confidence subgroup gaps (see the module docstring for the exact definitions).

    Args:
      confidence: [N] in [0, 1]. correct: [N] 0/1. routing: [N] finite routing feature.
      n_bins: M confidence bins. n_groups: G routing groups per bin (>= 2).
      binning: "width" (default, the definition above) or "mass" (equal-mass confidence bins as in
        `calibration`: stable sort by confidence, split as numpy.array_split).
    Returns:
      SubgroupGaps with [M] per-bin arrays and `.weighted_gap`.
    Raises:
      ValueError: naming the argument on NaN/inf, confidence outside [0, 1], non-binary correct,
        mismatched lengths, or fewer examples than bins x groups.
    """
    c, y, r, n_bins, n_groups = _check_inputs(confidence, correct, routing, n_bins, n_groups)
    with jax.enable_x64(True):
        out = _table(
            jnp.asarray(_np_bins(c, n_bins, binning)), jnp.asarray(c), jnp.asarray(y),
            jnp.asarray(r), n_bins, n_groups,
        )
        out = [np.asarray(o) for o in out]
    return SubgroupGaps(*out[:8], weighted_gap=float(out[8]))


