"""Matched-confidence diagnostics: subgroup gaps and within-bin permutation tests.

Shapes: `N` examples, `M` confidence bins, `G` routing groups per bin, `B` permutations,
`D` datasets (batched), `Bc` permutations per chunk (lanes), `L` examples per scan step.

Definitions (docs/ARCHITECTURE.md, "Statistics"):

* Confidence bins are equal-width: bin b holds confidence in (b/M, (b+1)/M]; confidence 0 goes to
  bin 0 and 1 to bin M - 1 (as in `routecal.calibration`).
* Within a bin, the members are sorted by routing value and split into G groups as
  `numpy.array_split` does (sizes differ by at most one, the larger groups first), except that tied
  routing values are never split: a tie block goes whole to the group of its mid-rank (the middle of
  its sorted positions). So groups are cut by value and the statistic does not depend on the row
  order; the null permutes routing values within the bin, which keeps the multiset of values and
  hence the group sizes, and cuts groups the same way. Constant routing puts a bin's members in the
  middle group; binary routing puts the 0s in the bottom and the 1s in the top group (when each value
  holds at least a third of the bin). Bins without a top or bottom member contribute nothing.
* Per-bin gap = (accuracy - confidence) of the top group (largest routing values) minus that of the
  bottom group; weighted gap = sum_b (n_b / N) |gap_b| (N counts every example).
* Permutation null: routing values are permuted uniformly at random among the examples of the same
  confidence bin; p = (1 + #{T_perm >= T_obs}) / (1 + B) (Phipson & Smyth 2010), where ">=" allows
  a relative tolerance of 1e-10 so that exact ties survive floating-point rounding.

How the null is computed. Per-bin group sizes never change under the null, so a permutation is a
uniformly random arrangement of the multiset of group labels over the bin's members; only the sums of
residuals (correct - confidence) in the top and bottom groups are needed. Each permutation (lane)
walks the examples bin by bin and draws every example's label sequentially with probability
proportional to the labels still unassigned (urn sampling without replacement, which yields exactly
the uniform arrangement). A draw is j = floor(U * remaining) with U = 32 random bits / 2^32, computed
exactly in integers as (bits * remaining) >> 32, so each label probability is rounded to a multiple
of 2^-32: the total-variation distance to the exact permutation law is at most n_b * 2^-32 per bin
(bins of up to 2^32 members). Lanes are independent and vectorise; there is no sort and no gather,
just O(N) streaming work per permutation (about 20 integer vector operations per example and
permutation, half of them the random word). Random bits come from a counter-based generator
(`random_bits._lane_bits`: one keyed round of a 32-bit integer hash over a per-lane Weyl sequence of
the example's (bin, routing) rank) whose two key words for permutation b are drawn with
`jax.random` (threefry) from `fold_in(key, b)`, so the result depends only on the key: never on the
chunk size, the scan step, the device or process count or the backend. (Issue 26 replaced a
two-round hash and float64 draws: the same key gives other nulls than before that change.)
Chunks of `Bc` lanes bound the working set (sizes by backend, `parallel.engine_sizes`);
chunks are sharded over the devices of a 1-D mesh with `jax.shard_map`, the null replicated so every
process of a multi-host mesh reads it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from routecal import _checks, parallel
from routecal.stats.binning import mass_bins, width_bins
from routecal.stats.multiple_testing import GridRow, adjust_pvalues
from routecal.stats.random_bits import (  # noqa: F401  (engine pieces re-exported)
    _CHUNK,
    _TIE_RTOL,
    _lane_bits,
    _resolve_chunk,
    _uniform_bits,
    chunk_seeds,
    default_chunk_size,
    engine_args,
)
from routecal.stats.subgroups import (
    _L,
    SubgroupGaps,
    _check_inputs,
    _Layout,
    _layout,
    _np_bins,
    subgroup_gaps,
)

__all__ = [
    "GridRow",
    "PermutationTestResult",
    "SubgroupGaps",
    "adjust_pvalues",
    "chunk_seeds",
    "permutation_grid",
    "permutation_test_batch",
    "subgroup_gaps",
    "within_bin_permutation_test",
]
# ------------------------------------------------------------------------------------------------
# Jittable cores (call under `jax.enable_x64(True)`: the null uses float64 lanes)
# ------------------------------------------------------------------------------------------------


def _null_chunk(seed: jax.Array, lay: _Layout) -> jax.Array:
    """Null statistics of one chunk of permutations.

    Args:
      seed: [2, Bc] uint32 per-lane keys of the counter-based generator.
      lay: the layout (float64 fields).
    Returns:
      [Bc] float64 weighted gaps under within-bin permutations.
    """
    f = lay.a_top.dtype
    bc = seed.shape[1]
    zeros = jnp.zeros((bc,), f)
    izeros = jnp.zeros((bc,), jnp.int32)

    def body(carry, xs):
        rt, s, acc, stat = carry
        ctr, a_top, a_bot, rem, first, kt, ks, w = xs
        # [L, Bc] draws j = floor(bits * remaining / 2^32), exact in uint64: uniform on
        # [0, remaining) up to 2^-32; materialised once so the three chains below share them. The
        # counter is the example's (bin, routing) rank, so draws do not depend on L.
        bits = _lane_bits(seed, ctr).astype(jnp.uint64)
        j = ((bits * rem.astype(jnp.uint64)[:, None]) >> 32).astype(jnp.int32)
        j = lax.optimization_barrier(j)
        keep = (first == 0).astype(jnp.int32)
        rt, s = rt * keep + kt.astype(jnp.int32), s * keep + ks.astype(jnp.int32)
        acc = acc * (1.0 - first)
        for l in range(a_top.shape[0]):
            top = j[l] < rt  # top group with prob rt / remaining
            topmid = j[l] < s  # top or middle group with prob s / remaining
            acc = acc + jnp.where(top, a_top[l], jnp.where(topmid, 0.0, -a_bot[l]))
            rt = rt - top.astype(jnp.int32)
            s = s - topmid.astype(jnp.int32)
        stat = stat + w * jnp.abs(acc)
        return (rt, s, acc, stat), None

    xs = (
        lay.ctr,
        lay.a_top, lay.a_bot, lay.rem, lay.first, lay.k_top, lay.k_topmid, lay.w_end,
    )
    (_, _, _, stat), _ = lax.scan(body, (izeros, izeros, zeros, zeros), xs)
    return stat


def _p_value(stat: jax.Array, null: jax.Array) -> jax.Array:
    """(1 + #{null >= stat}) / (1 + B) over the last axis, ties within a 1e-10 relative tolerance."""
    tol = _TIE_RTOL * jnp.abs(stat) + 1e-15
    hits = jnp.sum(null >= (stat - tol)[..., None], axis=-1)
    return (1.0 + hits) / (1.0 + null.shape[-1])


def permutation_test_core(
    bins: jax.Array,
    confidence: jax.Array,
    correct: jax.Array,
    routing: jax.Array,
    key: jax.Array,
    *,
    n_permutations: int,
    n_bins: int,
    n_groups: int,
    chunk_size: int | None = None,
    block: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Jittable, vmappable test on one device (no input checks; trace under `jax.enable_x64`).

    Args:
      bins: [N] int32 bin indices; confidence, correct, routing: [N] float64.
      key: PRNG key. chunk_size, block: lanes and scan step (default: by backend; same null).
    Returns:
      (statistic [], p_value [], null [B]).
    """
    block = parallel.engine_sizes().scan_block if block is None else block
    lay = _layout(bins, confidence, correct, routing, n_bins, n_groups, block)
    bc = _resolve_chunk(chunk_size, n_permutations)
    n_chunks = -(-n_permutations // bc)
    seeds = chunk_seeds(key, n_chunks, bc)
    null = lax.map(lambda sd: _null_chunk(sd, lay), seeds).reshape(-1)[:n_permutations]
    return lay.weighted_gap, _p_value(lay.weighted_gap, null), null


@functools.partial(
    jax.jit,
    static_argnames=("n_permutations", "n_bins", "n_groups", "chunk_size", "mesh", "block"),
)
def _sharded_test(bins, confidence, correct, routing, key, *, n_permutations, n_bins, n_groups,
                  chunk_size, mesh, block=_L):
    lay = _layout(bins, confidence, correct, routing, n_bins, n_groups, block)
    n_dev = mesh.size
    bc = _resolve_chunk(chunk_size, n_permutations)
    n_chunks = parallel.pad_to_multiple(-(-n_permutations // bc), n_dev)
    seeds = chunk_seeds(key, n_chunks, bc)
    axis = mesh.axis_names[0]
    null_fields = tuple(getattr(lay, name) for name in _NULL_FIELDS)

    def local(seeds_local, *fields):
        sub = lay._replace(**dict(zip(_NULL_FIELDS, fields, strict=True)))
        return lax.map(lambda sd: _null_chunk(sd, sub), seeds_local)

    null = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(axis),) + (P(),) * len(null_fields),
        out_specs=P(axis),
        check_vma=False,
    )(seeds, *null_fields)
    null = parallel.replicate(null.reshape(-1)[:n_permutations], mesh)  # readable on every host
    return lay.weighted_gap, _p_value(lay.weighted_gap, null), null


_NULL_FIELDS = ("a_top", "a_bot", "rem", "first", "k_top", "k_topmid", "w_end", "ctr")


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------


class PermutationTestResult(NamedTuple):
    """statistic: observed weighted gap; p_value: (1 + #{null >= statistic}) / (1 + B);
    null: [B] weighted gaps under within-bin permutations."""

    statistic: float
    p_value: float
    null: np.ndarray


def within_bin_permutation_test(
    confidence: Any,
    correct: Any,
    routing: Any,
    *,
    key: jax.Array,
    n_permutations: int = 10_000,
    n_bins: int = 15,
    n_groups: int = 3,
    mesh: Mesh | None = None,
    chunk_size: int | None = None,
    binning: str = "width",
) -> PermutationTestResult:
    """Within-bin permutation test of the weighted subgroup gap (the seed paper's test, kept).

    Known confounding (issue 11; prefer `conditional_calibration_test`, the recommended test):
      * Routing that tracks confidence. The null permutes routing inside a 1/M-wide bin, which is
        exchangeable only if the miscalibration P(correct | c) - c is constant inside the bin.
        With P(correct | c) = clip(0.75 + 2 (c - 0.8)), routing = c + N(0, 0.01^2), N = 2000,
        15 bins, the high-routing group has higher confidence and the test rejected 29%
        [23%, 36%] of 200 null datasets at alpha = 0.05 (19.5% [12.8%, 27.7%] with
        c ~ U(0.5, 1) in `benchmarks/validity.py`); a numpy re-implementation gives the same rate.
      * Tokens in sequences. 100 sequences x 30 tokens, routing with a per-sequence level and
        correctness with an independent per-sequence offset: the iid null rejected 17 of 60
        (28%) null datasets (21.5% [14.5%, 29.9%] of 200 in `benchmarks/validity.py`).
      * Ties (fixed here). Groups used to break tied routing values by row order while the null
        broke them at random: constant routing stored correct-first gave weighted gap 0.67 and
        p = 0.001 (B = 999), binary routing rejected 60 of 60 datasets (N = 1500), and reordering
        rows with routing in {0, 1, 2} moved the statistic by up to 0.05. Groups are now cut by
        value (module docstring), so the statistic ignores the row order and the null matches it.
      * Power: report `minimum_detectable_gap` beside a non-rejection.

    The B permutations run in chunks of `chunk_size` lanes (memory O(N + B) whatever B), sharded over
    the devices of `mesh` (default: a 1-D mesh over all local devices). The same key gives the same
    null and p-value whatever the number of devices.

    Args:
      confidence: [N] in [0, 1]. correct: [N] 0/1. routing: [N] finite.
      key: a jax PRNG key, or an integer seed (accepted as jax.random.key(seed)).
      n_permutations: B >= 1. n_bins: M. n_groups: G >= 2.
      mesh: optional 1-D mesh (`routecal.parallel.make_mesh`).
      chunk_size: permutations per chunk (default by the mesh's backend, `parallel.engine_sizes`);
        it bounds memory and never changes the null: the same key gives the same null.
      binning: confidence bins, "width" (default) or "mass" (see `subgroup_gaps`).
    Returns:
      PermutationTestResult(statistic, p_value, null [B]).
    """
    c, y, r, n_bins, n_groups = _check_inputs(confidence, correct, routing, n_bins, n_groups)
    key, n_permutations, chunk_size, mesh = engine_args(key, n_permutations, chunk_size, mesh)
    with jax.enable_x64(True):
        stat, p, null = _sharded_test(
            jnp.asarray(_np_bins(c, n_bins, binning)), jnp.asarray(c), jnp.asarray(y),
            jnp.asarray(r), key, n_permutations=n_permutations, n_bins=n_bins, n_groups=n_groups,
            chunk_size=chunk_size, mesh=mesh, block=parallel.engine_sizes(mesh).scan_block,
        )
        return PermutationTestResult(float(stat), float(p), np.asarray(null))


@functools.partial(
    jax.jit, static_argnames=("n_permutations", "n_bins", "n_groups", "chunk_size", "binning")
)
def _batched_test(confidence, correct, routing, keys, *, n_permutations, n_bins, n_groups,
                  chunk_size, binning):
    def one(c, y, r, k):
        bins = width_bins(c, n_bins) if binning == "width" else mass_bins(c, n_bins)
        return permutation_test_core(
            bins, c, y, r, k, n_permutations=n_permutations, n_bins=n_bins,
            n_groups=n_groups, chunk_size=chunk_size,
        )

    return jax.vmap(one)(confidence, correct, routing, keys)


def permutation_test_batch(
    confidence: Any,
    correct: Any,
    routing: Any,
    *,
    key: jax.Array,
    n_permutations: int = 1000,
    n_bins: int = 15,
    n_groups: int = 3,
    chunk_size: int | None = None,
    binning: str = "width",
) -> PermutationTestResult:
    """The permutation test on D datasets at once, as one vmapped computation.

    Dataset d uses key `fold_in(key, d)`. Bins are computed on device in float64
    (`calibration.width_bins` or `calibration.mass_bins`).

    Args:
      confidence, correct, routing: [D, N] arrays.
    Returns:
      PermutationTestResult with statistic [D], p_value [D] and null [D, B] numpy arrays.
    """
    c = _checks.check_unit_interval(
        _checks.as_array(confidence, "confidence", ndim=2), "confidence"
    )
    y = _checks.as_array(correct, "correct", ndim=2)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("correct: must hold only 0/1 (or booleans)")
    r = _checks.as_array(routing, "routing", ndim=2)
    if not (c.shape == y.shape == r.shape):
        raise ValueError(
            f"mismatched lengths: confidence={c.shape}, correct={y.shape}, routing={r.shape}"
        )
    _check_inputs(c[0], y[0], r[0], n_bins, n_groups)
    _np_bins(c[0, :1], 1, binning)  # validates `binning`
    key = _checks.check_key(key)
    n_permutations = _checks.check_positive_int(n_permutations, "n_permutations")
    chunk_size = _resolve_chunk(chunk_size, n_permutations)
    keys = jax.vmap(lambda d: jax.random.fold_in(key, d))(jnp.arange(c.shape[0]))
    with jax.enable_x64(True):
        stat, p, null = _batched_test(
            jnp.asarray(c), jnp.asarray(y), jnp.asarray(r), keys, n_permutations=n_permutations,
            n_bins=n_bins, n_groups=n_groups, chunk_size=chunk_size, binning=binning,
        )
        return PermutationTestResult(np.asarray(stat), np.asarray(p), np.asarray(null))


def permutation_grid(
    cells: Mapping[Any, Sequence[Any]],
    *,
    key: jax.Array,
    n_permutations: int = 10_000,
    n_bins: int = 15,
    n_groups: int = 3,
    mesh: Mesh | None = None,
    binning: str = "width",
) -> list[GridRow]:
    """Tests many (routing feature x seed x model) cells in one call, with Holm and BH adjustment.

    Args:
      cells: mapping name -> (confidence, correct, routing), each [N_cell]. Cell i (in mapping order)
        uses key `fold_in(key, i)`.
    Returns:
      a list of GridRow(name, statistic, p_value, p_holm, p_bh), one per cell, in mapping order.
    """
    if not isinstance(cells, Mapping) or not cells:
        raise ValueError("cells: must be a non-empty mapping name -> (confidence, correct, routing)")
    names, stats, ps = [], [], []
    for i, (name, arrays) in enumerate(cells.items()):
        if len(arrays) != 3:
            raise ValueError(f"cells[{name!r}]: expected (confidence, correct, routing)")
        res = within_bin_permutation_test(
            *arrays, key=jax.random.fold_in(key, i), n_permutations=n_permutations,
            n_bins=n_bins, n_groups=n_groups, mesh=mesh, binning=binning,
        )
        names.append(name)
        stats.append(res.statistic)
        ps.append(res.p_value)
    holm, bh = adjust_pvalues(ps, "holm"), adjust_pvalues(ps, "bh")
    return [
        GridRow(n, s, p, float(h), float(b))
        for n, s, p, h, b in zip(names, stats, ps, holm, bh, strict=True)
    ]


# stats.conditional and stats.power import this module's engine: their names re-exported lazily.
_LAZY = {
    "ConditionalTestResult": "routecal.stats.conditional",
    "conditional_calibration_test": "routecal.stats.conditional",
    "conditional_test_batch": "routecal.stats.conditional_batch",
    "NO_INFORMATION": "routecal.stats.conditional",
    "MinimumDetectableGap": "routecal.stats.power",
    "minimum_detectable_gap": "routecal.stats.power",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
