"""Matched-confidence diagnostics: subgroup gaps and within-bin permutation tests.

Shapes: `N` examples, `M` confidence bins, `G` routing groups per bin, `B` permutations,
`D` datasets (batched), `Bc` permutations per chunk (lanes), `L` examples per scan step.

Definitions (DESIGN.md, "Statistics"):

* Confidence bins are equal-width: bin b holds confidence in (b/M, (b+1)/M]; confidence 0 goes to
  bin 0 and 1 to bin M - 1 (as in `routecal.calibration`).
* Within a bin, the members are sorted by routing value (stable: ties keep input order) and split
  into G groups as `numpy.array_split` does (sizes differ by at most one, the larger groups first).
  Bins with fewer than G members contribute nothing.
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
exactly in float64, so each label probability is rounded to a multiple of 2^-32: the total-variation
distance to the exact permutation law is at most n_b * 2^-32 per bin (exact arithmetic holds for bins
of up to 2^21 members; beyond that the float64 rounding adds < 2^-52 relative error). Lanes are
independent and vectorise; there is no sort and no gather, just O(N) streaming work per permutation
(about 15 vector operations per example and permutation). Random bits come from a counter-based
generator (two keyed rounds of a 32-bit integer hash over the example's position) whose per-lane keys
are drawn with `jax.random` (threefry) from `fold_in(key, chunk)`, so the result depends only on the
key and the chunk size, never on the device count. Chunks of `Bc` lanes bound the working set; chunks
are sharded over the devices of a 1-D mesh with `jax.shard_map`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from routecal import _checks, parallel
from routecal.stats.calibration import mass_bins, split_index, width_bins

_L = 16  # examples per scan step on CPU (unrolled; keeps loop overhead low)
_CHUNK = 128  # permutations per chunk (lanes) on CPU


def default_chunk_size(n_permutations: int) -> int:
    """Lanes per chunk for this backend (`parallel.engine_sizes`): 128 on CPU, 8192 on GPU/TPU.

    On CPU 128 keeps each scan step's fused kernels below XLA:CPU's cost threshold for splitting a
    kernel across the intra-op thread pool; split kernels pay a fork-join per step that costs more
    than it gains (measured: ~2x the CPU time at 256-1024 lanes on one device). Parallelism comes
    from sharding chunks over devices instead; B = 10,000 gives 79 chunks. The chunk size never
    changes the null: lane b's random stream depends only on (key, b).
    """
    del n_permutations
    return parallel.engine_sizes().permutation_lanes


def _resolve_chunk(chunk_size: int | None, n_permutations: int) -> int:
    if chunk_size is None:
        chunk_size = default_chunk_size(n_permutations)
    chunk_size = _checks.check_positive_int(chunk_size, "chunk_size")
    return min(chunk_size, n_permutations)


_TIE_RTOL = 1e-10

# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


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
    """Host (float64) confidence bins: `calibration.width_bins` / `calibration.mass_bins`."""
    if binning == "width":
        return np.clip(np.ceil(c * n_bins).astype(np.int64) - 1, 0, n_bins - 1).astype(np.int32)
    if binning == "mass":
        out = np.empty(len(c), np.int32)
        for b, part in enumerate(np.array_split(np.argsort(c, kind="stable"), n_bins)):
            out[part] = b
        return out
    raise ValueError(f"binning: must be 'width' or 'mass', got {binning!r}")


# ------------------------------------------------------------------------------------------------
# Jittable cores (call under `jax.enable_x64(True)`: the null uses float64 lanes)
# ------------------------------------------------------------------------------------------------


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
    rem: jax.Array  # [n_blocks, L] (examples of the bin not yet visited) * 2^-32
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
    sb, _, idx = lax.sort((bins, routing, iota), num_keys=2, is_stable=True)
    c_s, y_s = confidence[idx], correct[idx]
    res_s = y_s - c_s
    b_ids = jnp.arange(n_bins, dtype=sb.dtype)
    starts = jnp.searchsorted(sb, b_ids, side="left").astype(jnp.int32)
    nb = jnp.searchsorted(sb, b_ids, side="right").astype(jnp.int32) - starts
    rank = iota - starts[sb]
    nbe = nb[sb]
    grp = split_index(rank, nbe, n_groups)
    valid = nb >= n_groups
    q, r = nb // n_groups, nb % n_groups
    k_top = q
    k_bot = q + (r > 0).astype(jnp.int32)

    def per_bin(mask, v):
        return jnp.zeros((n_bins,), f).at[sb].add(jnp.where(mask, v, 0.0))

    top, bot = grp == n_groups - 1, grp == 0
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
    rem = scatter(2.0**-32, (nbe - rank).astype(f) * 2.0**-32)
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


def _mix32(x: jax.Array) -> jax.Array:
    """Bijective 32-bit integer hash "lowbias32" (C. Wellons, hash-prospector; murmur3-style)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _uniform_bits(seed: jax.Array, counter: jax.Array) -> jax.Array:
    """Counter-based random bits: [2, Bc] per-lane keys and [L] uint32 counters -> [L, Bc] uint32.

    Two keyed rounds of `_mix32` over (counter * golden ratio + k0): for a fixed lane the counters
    map to distinct, well-mixed words; lanes differ by their threefry-drawn keys.
    """
    x = counter[:, None] * jnp.uint32(0x9E3779B9) + seed[0][None, :]
    return _mix32(_mix32(x) ^ seed[1][None, :])


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
        # [L, Bc] draws j = floor(U * remaining), U = bits / 2^32: uniform on [0, remaining) up to
        # 2^-32 (exact in float64); materialised once so the three chains below share them. The
        # counter is the example's (bin, routing) rank, so draws do not depend on L.
        bits = _uniform_bits(seed, ctr)
        j = jnp.floor(bits.astype(f) * rem[:, None]).astype(jnp.int32)
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


def chunk_seeds(key: jax.Array, n_chunks: int, chunk_size: int) -> jax.Array:
    """[n_chunks, 2, Bc] uint32 lane keys; permutation b = c * Bc + i draws its two words from
    `fold_in(key, b)`, so the null depends on the key only (not on chunk size or device count)."""
    lanes = jnp.arange(n_chunks * chunk_size, dtype=jnp.uint32)
    words = jax.vmap(lambda b: jax.random.bits(jax.random.fold_in(key, b), (2,), jnp.uint32))(lanes)
    return words.reshape(n_chunks, chunk_size, 2).transpose(0, 2, 1)


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


class PermutationTestResult(NamedTuple):
    """statistic: observed weighted gap; p_value: (1 + #{null >= statistic}) / (1 + B);
    null: [B] weighted gaps under within-bin permutations."""

    statistic: float
    p_value: float
    null: np.ndarray


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
    """Within-bin permutation test of the weighted subgroup gap.

    The B permutations run in chunks of `chunk_size` lanes (memory O(N + B) whatever B), sharded over
    the devices of `mesh` (default: a 1-D mesh over all local devices). The same key gives the same
    null and p-value whatever the number of devices.

    Args:
      confidence: [N] in [0, 1]. correct: [N] 0/1. routing: [N] finite.
      key: a jax PRNG key. n_permutations: B >= 1. n_bins: M. n_groups: G >= 2.
      mesh: optional 1-D mesh (`routecal.parallel.make_mesh`).
      chunk_size: permutations per chunk (default by the mesh's backend, `parallel.engine_sizes`);
        it bounds memory and never changes the null: the same key gives the same null.
      binning: confidence bins, "width" (default) or "mass" (see `subgroup_gaps`).
    Returns:
      PermutationTestResult(statistic, p_value, null [B]).
    """
    c, y, r, n_bins, n_groups = _check_inputs(confidence, correct, routing, n_bins, n_groups)
    n_permutations = _checks.check_positive_int(n_permutations, "n_permutations")
    mesh = parallel.make_mesh() if mesh is None else mesh
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh: must be 1-D, got axes {mesh.axis_names}")
    sizes = parallel.engine_sizes(mesh)  # by the mesh's platform; never changes the null
    chunk_size = _resolve_chunk(
        sizes.permutation_lanes if chunk_size is None else chunk_size, n_permutations
    )
    with jax.enable_x64(True):
        stat, p, null = _sharded_test(
            jnp.asarray(_np_bins(c, n_bins, binning)), jnp.asarray(c), jnp.asarray(y),
            jnp.asarray(r), key, n_permutations=n_permutations, n_bins=n_bins, n_groups=n_groups,
            chunk_size=chunk_size, mesh=mesh, block=sizes.scan_block,
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
    n_permutations = _checks.check_positive_int(n_permutations, "n_permutations")
    chunk_size = _resolve_chunk(chunk_size, n_permutations)
    keys = jax.vmap(lambda d: jax.random.fold_in(key, d))(jnp.arange(c.shape[0]))
    with jax.enable_x64(True):
        stat, p, null = _batched_test(
            jnp.asarray(c), jnp.asarray(y), jnp.asarray(r), keys, n_permutations=n_permutations,
            n_bins=n_bins, n_groups=n_groups, chunk_size=chunk_size, binning=binning,
        )
        return PermutationTestResult(np.asarray(stat), np.asarray(p), np.asarray(null))


# ------------------------------------------------------------------------------------------------
# Multiple testing and the grid runner
# ------------------------------------------------------------------------------------------------


def adjust_pvalues(p: Any, method: str = "holm") -> np.ndarray:
    """Family-wise (Holm 1979) or false-discovery-rate (Benjamini & Hochberg 1995) adjusted p-values.

    holm: p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j)); bh: p_(i) -> min_{j >= i} min(1, m p_(j) / j),
    with p_(1) <= ... <= p_(m) the sorted p-values; returned in the input order.

    Args:
      p: [m] p-values in [0, 1]. method: "holm" or "bh".
    """
    pv = _checks.check_unit_interval(_checks.as_array(p, "p", ndim=1), "p")
    if method not in ("holm", "bh"):
        raise ValueError(f"method: must be 'holm' or 'bh', got {method!r}")
    m = len(pv)
    order = np.argsort(pv, kind="stable")
    ps = pv[order]
    i = np.arange(1, m + 1)
    if method == "holm":
        adj = np.maximum.accumulate(np.minimum(1.0, (m - i + 1) * ps))
    else:
        adj = np.minimum.accumulate(np.minimum(1.0, m * ps / i)[::-1])[::-1]
    out = np.empty(m)
    out[order] = adj
    return out


class GridRow(NamedTuple):
    """One cell of a permutation-test grid."""

    name: Any
    statistic: float
    p_value: float
    p_holm: float
    p_bh: float


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

