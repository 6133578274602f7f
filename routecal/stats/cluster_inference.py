"""Cluster inference for the conditional tests: strata, cross-fitted residuals, sign-flip engine.

Shapes: `N` examples, `J` score columns (1 for the monotone test, `omnibus.N_BASIS` for the
omnibus one), `K` units (clusters, or examples), `Bc` flips per chunk (lanes), `G` = N + S
stratum slots.

Issue 22 found three ways the first version of the test lost its level; each is answered here.

1. *Few or unbalanced clusters* (8.2% at 60 Pareto-sized clusters, 6.8% at 10): the within-stratum
   fits pooled every cluster's data, so each cluster's residuals used its own labels and the unit
   scores were correlated (+0.06 at 6 clusters) and shrunk. Now the nuisance fits are *cross-fitted
   over clusters*: the residual of an example in cluster k uses the stratum fit on the other
   clusters only (leave-one-cluster-out, the K-fold limit of Chernozhukov et al. 2018, "Double/
   debiased machine learning", Econometrics J. 21, Sec. 3, with folds = clusters, as recommended
   for clustered data by Chiang, Kato, Ma & Sasaki 2022, JBES 40(3)); without clusters this is
   leave-one-out. Cross-fitting alone still correlates the scores (a cluster's residual subtracts
   the others' mean: +1/(K-1) on Var Z, measured 1.13 at K = 10), so the statistic is written as
   what it is, a linear form in the labels, T = sum_i w_i y_i with w = (I - L)^T s~ (`influence`):
   given routing and confidence its randomness is a sum of independent cluster terms, whatever
   the fits share. Those terms are estimated by CR2-style leverage-corrected cluster scores
   (`studentised`), and Z = T / sqrt(sum_k U_k^2) is referred to the sign flips of the U_k.
   Reference: a Rademacher sign-flip randomisation null of the studentised statistic (Canay,
   Romano & Shaikh 2017, Econometrica 85(3), Thm 3.1: exact for independent symmetric scores, and
   asymptotically valid for a *fixed* number of clusters of growing size, the few-clusters
   regime). Measured (benchmarks/RESULTS.md, issue 22): 5.0% at 10 equal clusters, 5.1% at 60,
   6.3% [4.5%, 8.5%] with 60 Pareto(1.1)-sized clusters (CR2 is only approximately unbiased when a
   few clusters dominate), but 1.9% at 6: Z is not one of these flips. Not fixed: recomputing Z
   on every flip's wild sample (`restudentised`; the omnibus test 4.7% at 6, 7.0% at 10 Pareto)
   over-rejects for the monotone test (8.2%); Webb's weights: 1.1%, 7.7% re-studentised. The
   default for K <= 12 is `within_clusters` (fits inside clusters, t with K - 1 df).
2. *K <= 5 clusters cannot reject*: the observed sign pattern and its negation are always in the
   orbit, so the smallest two-sided p of the exact test is 2^(1 - K) (> 0.05 for K <= 5); with B
   random flips the p-value is floored there (`floored_p`). `min_p_value` states it and
   `check_feasible` raises a `ValueError` (or, on request, returns a warning string that the
   result records; not with `within_clusters`' t reference, which reaches alpha at any K >= 2). `p_value="randomized"` (`sign_flip_p`) replaces that p by the randomised one,
   without the floor: exact level where Z ties its null (no information: p = U). Against the
   fixed scores Z is not one of its flips (sum_k +-U_k) and ties none; the re-studentised null
   (both signs of every flip, so the same 2^(1 - K) floor) has Z as its identity flip.
3. *Tied confidence levels of different sizes* (99% rejections of a true null with confidence in
   5 values of counts 20/20/320/320/320): an equal-mass stratum could hold three tied levels, and a
   line in c through three level means leaves each level's departure in both residuals. Now
   `strata` gives a confidence value its own stratum (a level fixed effect, fitted by its mean) when
   it is tied at least `stratum_size` times, and gives *every* level its own stratum when
   confidence takes at most max(S, 32) distinct values (then levels are no finer than strata).
   Only confidence values tied fewer than `stratum_size` times share equal-mass strata (local-
   linear fits, Fan & Gijbels 1996), where the between-level departures are of the fit's own order.

Engine: chunks of `Bc` lanes, counter-based random bits (`random_bits`; one 32-bit word signs 32
units for all J columns at once, so the columns share their flips: the multiplier null of a max
statistic, Chernozhukov, Chetverikov & Kato 2013, Ann. Statist. 41(6), Sec. 3).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from routecal import _checks, parallel
from routecal.stats import ranks
from routecal.stats.binning import split_index
from routecal.stats.random_bits import _TIE_RTOL, _uniform_bits

_W = 32  # units signed by one random word
_PARTS = 4  # partial sums per word in `flip_chunk`
_UNROLL = 2  # words per loop iteration in `flip_chunk` (issue 26: 1.15x less CPU than 1; 4 is slower)
# XLA:CPU emits 256-bit vectors by default; the sign-flip kernel is instruction-bound and runs
# ~1.4x faster with 512-bit ones where the CPU has them (measured on AMD EPYC, issue 26); other
# CPUs and backends ignore the option. It changes no result: the kernel is elementwise per lane.
# Off for the scores and the batched test (`COMPILER_OPTIONS`): with it on every jit, a fresh-clone
# CI run segfaulted inside XLA's compile of `minimum_detectable_gap` (the batched test; pytest -n 2,
# tests/study/test_run.py, twice; suspected, not proven). On for the single test's flips only
# (`FLIP_COMPILER_OPTIONS`, issue 26, stop 31: N = 1M, B = 10k, 2 devices 0.73 -> 0.66 s, same p).
COMPILER_OPTIONS: dict[str, int] = {}
FLIP_COMPILER_OPTIONS: dict[str, int] = {"xla_cpu_prefer_vector_width": 512}
MIN_LEVELS = 32  # confidence with at most max(S, 32) distinct values: one stratum per level
P_VALUES = ("conservative", "randomized")
_U_LANE = 0xFFFFFFFF  # fold_in data of the randomised p's uniform; flip b uses b < B < 2^32 - 1


def cluster_units(clusters: Any, n: int, name: str = "clusters") -> tuple[np.ndarray, int]:
    """[N] cluster ids -> ([N] int32 units in [0, K), K); None -> one unit per example."""
    if clusters is None:
        return np.arange(n, dtype=np.int32), n
    ids = _checks.as_array(clusters, name, ndim=1, dtype=None)
    if ids.dtype.kind == "f" and np.all(ids == np.round(ids)):
        ids = ids.astype(np.int64)
    if ids.dtype.kind not in "iub":
        raise ValueError(f"{name}: must be integer cluster (sequence) ids, got dtype {ids.dtype}")
    if len(ids) != n:
        raise ValueError(f"mismatched lengths: confidence={n}, {name}={len(ids)}")
    uniq, inv = np.unique(ids, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError(f"{name}: needs at least 2 distinct clusters, got {len(uniq)}")
    return inv.astype(np.int32), len(uniq)


def check_p_value(p_value: str) -> str:
    """`p_value` if it names one of `P_VALUES`, else a ValueError naming the argument."""
    if p_value not in P_VALUES:
        raise ValueError(f"p_value: must be one of {P_VALUES}, got {p_value!r}")
    return p_value


def min_p_value(n_units: int) -> float:
    """Smallest two-sided p-value the exact K-unit sign-flip test can give: 2^(1 - K)."""
    return 2.0 ** (1 - n_units)


def check_feasible(n_units: int, alpha: float, few_clusters: str, reference: str = "fixed") -> str:
    """'' when K units can reach `alpha`; else raise ValueError or return a warning string.

    Args:
      n_units: K. alpha: the level the caller will read the p-value at.
      few_clusters: "raise" (a ValueError naming `clusters`) or "warn" (return the message).
      reference: the resolved null; "within" (a t reference, `within_clusters`) reaches any
        alpha with K >= 2, the sign-flip nulls need 2^(1-K) <= alpha.
    """
    if few_clusters not in ("raise", "warn"):
        raise ValueError(f"few_clusters: must be 'raise' or 'warn', got {few_clusters!r}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha: must lie in (0, 1), got {alpha!r}")
    p_min = min_p_value(n_units)
    if p_min <= alpha or reference == "within":
        return ""
    msg = (f"clusters: {n_units} clusters give a smallest sign-flip p-value of 2^(1-K) = "
           f"{p_min:.3g} > alpha = {alpha}; the test cannot reject at this level (need K >= "
           f"{1 + math.ceil(math.log2(1.0 / alpha) - 1e-12)} clusters)")
    if few_clusters == "raise":
        raise ValueError(msg)
    return msg


# ------------------------------------------------------------------------------------------------
# Jittable cores (trace under `jax.enable_x64(True)`)
# ------------------------------------------------------------------------------------------------


def strata(c: jax.Array, n_strata: int, stratum_size: int) -> jax.Array:
    """Stratum of each example in [0, S + N) (module docstring, point 3). [N] -> [N] int32.

    Ids below S are equal-mass bins of the (rarely tied) confidences; id S + l is level l.
    """
    return strata_from_levels(*ranks.tie_levels(c), n_strata, stratum_size)


def strata_from_levels(first, last, level, n_levels, n_strata, stratum_size: int, n=None):
    """`strata` from confidence's `ranks.tie_levels` (jax) or `ranks.host_tie_levels` (numpy);
    n_levels, n_strata, n (default N) may be [N]: the rule per group (`within_clusters`)."""
    xp = np if isinstance(first, np.ndarray) else jnp
    count = last + 1 - first
    own = (n_levels <= xp.maximum(n_strata, MIN_LEVELS)) | (count >= stratum_size)
    n = first.shape[0] if n is None else n
    return xp.where(own, n_strata + level, split_index(first, n, n_strata)).astype(xp.int32)


def _groups(strat: jax.Array, units: jax.Array, n_units: int) -> jax.Array:
    """Dense id in [0, N) of each example's (stratum, unit) pair. [N] -> [N] int32."""
    return ranks.tie_levels(strat.astype(jnp.int64) * n_units + units.astype(jnp.int64))[2]


class _Fit(NamedTuple):
    """The leave-unit-out stratum fit of each example: [N] ids and sums over the others."""

    strat: jax.Array  # stratum id
    grp: jax.Array | str | None  # (stratum, unit) id; None: pooled; "own": every example its own
    dc: jax.Array  # confidence centred by its stratum mean
    m: jax.Array  # points in the fit
    mc: jax.Array  # their mean (centred) confidence
    scc: jax.Array  # their sum of squares about mc
    ok: jax.Array  # the fit has a slope (>= 3 points, confidence variance > 1e-12)


def _sums(fit: _Fit, cols: jax.Array, n_seg: int) -> jax.Array:
    """Sum of cols [N, M] over each example's fit set (its stratum without its unit)."""
    tot = jax.ops.segment_sum(cols, fit.strat, num_segments=n_seg)[fit.strat]
    if isinstance(fit.grp, str):  # each (stratum, unit) pair is one example: leave it out
        tot = tot - cols
    elif fit.grp is not None:
        tot = tot - jax.ops.segment_sum(cols, fit.grp, num_segments=cols.shape[0])[fit.grp]
    return tot


def crossfit(strat, units, c, *, n_seg: int, n_units: int | None, groups=None) -> _Fit:
    """The fit sets of the within-stratum regressions on (1, c), each without the example's unit.

    Args:
      strat: [N] stratum ids in [0, n_seg). units: [N] ids in [0, K). c: [N].
      n_units: K, or None for the pooled fit (every example's own unit included).
      groups: optional [N] dense (stratum, unit) ids when K < N, as `_groups` computes them.
    """
    seg = functools.partial(jax.ops.segment_sum, segment_ids=strat, num_segments=n_seg)
    one = jnp.ones_like(c)
    dc = c - (seg(c) / jnp.maximum(seg(one), 1.0))[strat]  # centred per stratum: stable sums
    if n_units is None:
        grp = None
    elif n_units == c.shape[0]:  # K = N: every example is its own unit (no segment sums)
        grp = "own"
    else:
        grp = _groups(strat, units, n_units) if groups is None else groups
    fit = _Fit(strat, grp, dc, one, one, one, one > 0)
    tot = _sums(fit, jnp.stack([one, dc, dc * dc], 1), n_seg)
    m = tot[:, 0]
    ms = jnp.maximum(m, 1.0)
    mc = tot[:, 1] / ms
    scc = tot[:, 2] - ms * mc * mc
    return fit._replace(m=m, mc=mc, scc=scc, ok=(m > 2.5) & (scc > 1e-12 * ms))


def residuals(fit: _Fit, v: jax.Array, n_seg: int) -> jax.Array:
    """v [N, J] minus its fit-set regression on (1, c) at the example's c (0 with an empty set)."""
    dc = fit.dc[:, None]
    tot = _sums(fit, jnp.concatenate([v, dc * v], 1), n_seg)
    j = v.shape[1]
    has = fit.m > 0.5
    ms = jnp.maximum(fit.m, 1.0)[:, None]
    mv = tot[:, :j] / ms
    scv = tot[:, j:] - ms * fit.mc[:, None] * mv
    beta = jnp.where(fit.ok[:, None], scv / jnp.where(fit.ok, fit.scc, 1.0)[:, None], 0.0)
    return jnp.where(has[:, None], v - mv - beta * (dc - fit.mc[:, None]), 0.0)


def influence(fit: _Fit, a: jax.Array, n_seg: int) -> jax.Array:
    """w = (I - L)^T a [N, J]: T = sum_i a_i (y - L y)_i = sum_i w_i y_i, L the fit's smoother.

    The fit at example l is sum_{i in O(l)} y_i (1/m_l + (dc_l - mc_l)(dc_i - mc_l) / scc_l) over
    its fit set O(l), and i in O(l) iff l in O(i), so (L^T a)_i = sum_{l in O(i)} (al_l + be_l dc_i)
    with al = a (1/m - (dc - mc) mc / scc), be = a (dc - mc) / scc.
    """
    has = (fit.m > 0.5)[:, None]
    ms = jnp.maximum(fit.m, 1.0)[:, None]
    ok = fit.ok[:, None]
    lever = jnp.where(ok, ((fit.dc - fit.mc) / jnp.where(fit.ok, fit.scc, 1.0))[:, None], 0.0)
    al = jnp.where(has, a / ms - a * lever * fit.mc[:, None], 0.0)
    be = jnp.where(has, a * lever, 0.0)
    j = a.shape[1]
    tot = _sums(fit, jnp.concatenate([al, be], 1), n_seg)
    return a - tot[:, :j] - tot[:, j:] * fit.dc[:, None]


def studentised(y, y_loco, y_pool, w, units, n_units: int):
    """Per-column Z_j = sum_i w_ij y_i / sqrt(sum_k U_kj^2) and normalised unit scores.

    T_j is linear in the labels with weights w (`influence`); given routing and confidence its
    randomness is V_kj = sum_{i in k} w_ij (y_i - P(correct | c_i)) summed over clusters, a sum of
    independent cluster terms whatever the fits share. V_k is estimated by U_k = sign(A_k)
    sqrt(max(A_k B_k, 0)) with A_k, B_k the weighted sums of the cross-fitted and the pooled
    residuals: the pooled residual of a cluster is (I - H_kk) times its leave-cluster-out one, so
    A_k B_k has the (I - H_kk)^{-1/2}-scaled residuals of CR2 (Bell & McCaffrey 2002, "Bias
    reduction in standard errors for linear regression with multi-stage samples", Survey Methodology
    28(2); MacKinnon, Nielsen & Webb 2023, J. Econometrics 232(2), Sec. 3): E[A_k B_k] = Var V_k
    when the fit is a stratum mean, where A_k^2 alone overstates it by K / (K - 1) and B_k^2
    understates it by (K - 1) / K.

    Args:
      y, y_loco, y_pool: [N] labels and their cross-fitted and pooled residuals. w: [N, J].
      units: [N] in [0, K).
    Returns:
      (z [J], normalised scores [K, J] = U / sqrt(sum_k U^2); both 0 for a degenerate column).
    """
    t = jnp.sum(w * y[:, None], axis=0)
    seg = functools.partial(jax.ops.segment_sum, segment_ids=units, num_segments=n_units)
    a, b = seg(y_loco[:, None] * w), seg(y_pool[:, None] * w)  # [K, J]
    u = jnp.sign(a) * jnp.sqrt(jnp.maximum(a * b, 0.0))
    v = jnp.sum(u * u, axis=0)
    ok = v > 0
    root = jnp.sqrt(jnp.where(ok, v, 1.0))
    return jnp.where(ok, t / root, 0.0), jnp.where(ok[None, :], u / root[None, :], 0.0)


def flip_chunk(seed: jax.Array, w_blocks: jax.Array, total: jax.Array) -> jax.Array:
    """Sign-flip statistics of one chunk: [2, Bc] lane keys, [K/32, 32, J] scores and their
    `block_total` [J] -> [Bc, J].

    Unit k of flip b takes bit k % 32 of word k // 32 of lane b (set: eps = -1); all J columns
    share the signs. Computed as sum_k eps_k w_k = sum_k w_k - 2 sum_{k: bit set} w_k; the 32 units
    of a word go to `_PARTS` interleaved partial sums (shorter add chains), each updated as
    `where(bit set, part + w_k, part)` with the bit tested by the sign of the word shifted left:
    XLA:CPU then emits one masked vector add per unit (shift, compare, masked add) where the earlier
    `part + where(bit, w_k, 0)` needed a zeroing load and a separate add (issue 26: ~1.25x less CPU
    time at N = 1M). Two words per loop iteration (`_UNROLL`) halve the per-iteration overhead; the
    total sum_k w_k is computed once for all chunks (`block_total`). With several columns the
    accumulators are [J, Bc], lanes minor: with [Bc, J] XLA:CPU emitted scalar code for the J = 4
    omnibus columns (~5x slower); with one column [Bc, 1] is ~1.2x faster than [1, Bc]. The same
    additions in the same order: the null is bit-for-bit unchanged.
    """
    bc, n_cols = seed.shape[1], w_blocks.shape[2]
    lanes_minor = n_cols > 1  # [J, Bc] accumulators; [Bc, 1] for one column (measured faster)

    def body(acc, xs):
        blk, w = xs
        bits = _uniform_bits(seed, blk.astype(jnp.uint32)[None])[0]  # [Bc]: 32 signs per word
        parts: list = [None] * _PARTS
        for i in range(_W):
            q = i % _PARTS
            set_ = (bits << jnp.uint32(_W - 1 - i)).view(jnp.int32) < 0  # bit i
            set_, wi = (set_[None, :], w[i][:, None]) if lanes_minor else (set_[:, None], w[i][None])
            parts[q] = (jnp.where(set_, wi, 0.0) if parts[q] is None
                        else jnp.where(set_, parts[q] + wi, parts[q]))
        return acc + _pairwise(parts), None

    blocks = jnp.arange(w_blocks.shape[0])
    init = jnp.zeros((n_cols, bc) if lanes_minor else (bc, n_cols), w_blocks.dtype)
    flipped, _ = lax.scan(body, init, (blocks, w_blocks), unroll=_UNROLL)
    # sums in a fixed order, no multiply (so no FMA contraction): the same for any lane count
    if lanes_minor:
        return (total[:, None] - (flipped + flipped)).T
    return total[None, :] - (flipped + flipped)


def block_total(w_blocks: jax.Array) -> jax.Array:
    """sum_k w_k [J] of [K/32, 32, J] scores, block by block in `flip_chunk`'s order (computed once
    for all chunks; it was a second accumulator in every chunk's scan)."""

    def body(tot, w):
        return tot + _pairwise(_interleaved(w)), None

    return lax.scan(body, jnp.zeros(w_blocks.shape[2:], w_blocks.dtype), w_blocks)[0]


def _interleaved(w: jax.Array) -> list:
    """[32, J] -> `_PARTS` partial sums of rows i, i + _PARTS, ... (each in row order)."""
    parts: list = [None] * _PARTS
    for i in range(_W):
        q = i % _PARTS
        parts[q] = w[i] if parts[q] is None else parts[q] + w[i]
    return parts


def _pairwise(parts: list) -> jax.Array:
    """Sum of `_PARTS` partial sums by pairs ((p0 + p1) + (p2 + p3))."""
    while len(parts) > 1:
        parts = [parts[q] + parts[q + 1] for q in range(0, len(parts), 2)]
    return parts[0]


def blocks(w: jax.Array) -> jax.Array:
    """[K, J] -> [K/32, 32, J] zero-padded, behind an optimization barrier: XLA may compute the
    scores' divisions differently when they fuse with the flips (e.g. when the chunk loop has one
    trip), and the null must see the same scores for every chunk size and device count."""
    k = w.shape[0]
    w = jnp.pad(w, ((0, parallel.pad_to_multiple(k, _W) - k), (0, 0)))
    return lax.optimization_barrier(w.reshape(-1, _W, w.shape[1]))


def two_sided_p(z: jax.Array, null: jax.Array) -> jax.Array:
    """(1 + #{|null| >= |z|}) / (1 + B) over the last axis, ties within a relative 1e-10."""
    a = jnp.abs(z)
    hits = jnp.sum(jnp.abs(null) >= (a - _TIE_RTOL * a - 1e-15)[..., None], axis=-1)
    return (1.0 + hits) / (1.0 + null.shape[-1])


def floored_p(p: jax.Array, units: jax.Array, n_units: int) -> jax.Array:
    """max(p, 2^(1 - K)), K the units present: the randomisation test's smallest p.

    The exact sign-flip p-value counts the observed sign pattern and its negation, so it is never
    below 2^(1 - K); B random flips could fall below it by chance (a few +-1 patterns drawn), and
    the leverage-corrected scores make the observed Z differ slightly from the identity flip's.
    """
    present = jax.ops.segment_sum(jnp.ones_like(units), units, num_segments=n_units) > 0
    k = jnp.sum(present).astype(jnp.float64)
    return jnp.maximum(p, 2.0 ** (1.0 - k))


def randomized_p(z: jax.Array, null: jax.Array, u: jax.Array) -> jax.Array:
    """(#{|null| > |z|} + u (1 + #{|null| = |z|})) / (1 + B) over the last axis; u ~ U(0, 1).

    The randomised test of a discrete null (Lehmann & Romano, "Testing Statistical Hypotheses",
    3rd ed., Sec. 3.2 and Thm 15.2.1; for B random transformations plus the identity, Hemerik &
    Goeman 2018, "Exact testing with random permutations", TEST 27, Sec. 3): the observed value's
    ties, itself included, are broken by u, so when the statistic is exchangeable with its null
    P(p <= alpha) = alpha exactly, where `two_sided_p` (u = 1) may lie far below alpha. Ties are
    `two_sided_p`'s (relative 1e-10). It is never above `two_sided_p`. When the statistic and its
    whole null are 0 (no information) p = u: the test then rejects with probability alpha by a
    coin flip.
    """
    a = jnp.abs(z)[..., None]
    nul = jnp.abs(null)
    above = jnp.sum(nul > a + _TIE_RTOL * a + 1e-15, axis=-1)
    ties = jnp.sum(nul >= a - _TIE_RTOL * a - 1e-15, axis=-1) - above
    return (above + u * (1.0 + ties)) / (1.0 + null.shape[-1])


def tie_uniform(key: jax.Array) -> jax.Array:
    """The randomised p's U(0, 1) [] from the test's key (`fold_in` data no flip lane uses)."""
    return jax.random.uniform(jax.random.fold_in(key, _U_LANE), (), jnp.float64)


def sign_flip_p(stat, null, units, n_units: int, key, p_value: str) -> jax.Array:
    """The test's p of `stat` [] against `null` [B]: "conservative", `floored_p` of `two_sided_p`
    (the default; never below the exact test's p floor 2^(1 - K)), or "randomized", `randomized_p`
    with U from `key` (no floor: the randomised exact test can go below 2^(1 - K))."""
    if p_value == "randomized":
        return randomized_p(stat, null, tie_uniform(key))
    return floored_p(two_sided_p(stat, null), units, n_units)
