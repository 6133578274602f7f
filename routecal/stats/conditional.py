"""The recommended test: does routing carry calibration information beyond confidence?

Shapes: `N` examples, `S` confidence strata, `K` units (clusters, or examples), `B` sign flips,
`D` datasets (batched), `Bc` flips per chunk (lanes).

Null hypothesis: correct is independent of routing given confidence (P(correct | c, routing) =
P(correct | c)). The paper test (`within_bin_permutation_test`) is not valid under three nulls real
traces have (issue 11): routing that tracks confidence while the miscalibration varies inside a bin
(29% rejections at alpha = 0.05), tied routing stored in a data-dependent order, and tokens in
sequences (28%). This test is built for them.

Method: a generalised covariance measure (Shah & Peters 2020, "The hardness of conditional
independence testing and the generalised covariance measure", Ann. Statist. 48(3), Sec. 3) with a
cluster sign-flip (Rademacher wild) randomisation null (Cameron, Gelbach & Miller 2008, "Bootstrap-
based improvements for inference with clustered errors", REStat; Canay, Romano & Shaikh 2017,
"Randomization tests under an approximate symmetry assumption", Econometrica):

1. s = mid-rank of routing (ties share their mean rank: invariant to the row order; robust to the
   feature's scale and tails; binary routing stays binary).
2. Confidence strata (`cluster_inference.strata`): equal-mass bins of ~`stratum_size` examples,
   except that a confidence value tied >= `stratum_size` times, or every value when confidence
   takes at most max(S, 32) distinct values, is its own stratum (a level fixed effect; issue 22).
   Inside each stratum, s and correct are residualised on (1, c) by least squares (a local-linear
   fit of E[s | c] and P(correct | c), Fan & Gijbels 1996; the mean in a level stratum), each
   example's fit using the *other* units of its stratum only (cross-fitting over clusters). The
   fit removes what confidence explains, including a miscalibration that varies with c inside the
   stratum: under the null the bias of T is second order (curvature x stratum width^2), which is
   why GCM residualises *both* variables (its double robustness).
3. T = sum_i y~_i s~_i = sum_i w_i y_i, linear in the labels with weights w = (I - L)^T s~ (L the
   cross-fitted smoother); unit scores U_k: CR2-style leverage-corrected cluster sums of w_i times
   the label residuals (`cluster_inference.studentised`). Z = T / sqrt(sum_k U_k^2).
4. Null: Z*_b = sum_k eps_bk U_k / sqrt(sum_k U_k^2) with independent signs eps = +-1 (on
   request, Z*_b recomputed on the restricted wild sample yhat + eps_bk r, `restudentised`: the
   monotone test over-rejects with it, 8.2% at 6, the omnibus one 7.0% at 10 Pareto). Two-
   sided p = max((1 + #{|Z*| >= |Z|}) / (1 + B), 2^(1-K)) (Phipson & Smyth 2010; ties within 1e-10
   relative; the floor is the exact randomisation test's smallest p). Hence fewer clusters than
   reach `alpha` raise a ValueError (or, with `few_clusters="warn"`, a warning in the result).
   With 2 <= K <= 12 clusters (`reference="auto"`) both alternatives use `within_clusters`
   instead: fits inside each cluster, independent cluster scores, a t_{K-1} reference (1.9% at 6
   clusters with the fixed scores above; Ibragimov & Mueller 2010; the omnibus test: Bonferroni
   over its columns); it tests association within clusters.
   Opt-in `p_value="randomized"`: (#{|Z*| > |Z|} + U (1 + #{|Z*| = |Z|})) / (1 + B), U ~ U(0, 1)
   from the key, no floor (`cluster_inference.randomized_p`; exact where Z ties its null).
5. `alternative="omnibus"` (`conditional_omnibus`): a basis of 4 transforms of the routing rank
   and their interactions with the confidence rank, T = max_j |Z_j|, the same signs for all columns.

Why this and not a finer within-bin permutation or the conditional permutation test of Berrett,
Wang, Barber & Samworth (JRSS-B 2020): CPT needs a model of routing given confidence (its validity
rests on it) and permutes examples, so it cannot respect sequences; permuting within fine strata
still needs strata narrow enough that the miscalibration is constant inside (power falls as strata
shrink) and is invalid with clusters. Sign flips of cluster scores need neither: units are
exchangeable in sign under the null when the U_k are independent and centred (asymptotically), so
`clusters` (sequence ids) make it valid for dependent tokens while keeping every token (no thinning).
With `clusters=None` every example is its own unit. Level and power on each null: benchmarks/
validity.py and tests/stats/test_validity.py. The default tests a monotone (rank-linear)
association, pooled over confidence; the omnibus alternative also sees V-shaped effects and effects
whose sign flips with confidence.

Degenerate inputs: constant routing (or routing constant within every stratum) leaves s~ = 0
(residuals below 1e-12, i.e. rounding, are set to 0): Z = 0, p = 1, `warning` = `NO_INFORMATION`
(e.g. routing a function of few tied confidence levels: no test can separate the two).

Engine: the scores are computed once, on one device (`_sharded_conditional`; on the CPU backend
their sorts run in numpy on two threads, `conditional_orders`); then, like the paper
test's engine (`diagnostics`), chunks of `Bc` lanes, counter-based random bits (`random_bits`; one
32-bit word signs 32 units), lanes vectorised, chunks sharded over a 1-D mesh with `jax.shard_map`;
flip b's signs depend on (key, b) only, so the result never depends on the chunk size or the device
count.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from routecal import _checks, parallel
from routecal.stats import cluster_inference as ci
from routecal.stats import conditional_omnibus as omnibus
from routecal.stats import restudentised as rs
from routecal.stats import within_clusters as wc
from routecal.stats.conditional_orders import Orders, host_orders, orders
from routecal.stats.random_bits import _resolve_chunk, chunk_seeds, engine_args

_units = ci.cluster_units  # [N] cluster ids -> ([N] units in [0, K), K)

NO_INFORMATION = "routing is constant within every confidence stratum or tied level: no information"


class ConditionalTestResult(NamedTuple):
    """statistic: Z = T / sqrt(sum_k U_k^2); p_value: two-sided sign-flip p; null: [B] Z*;
    slope: T / sum_i s~_i^2 with s the routing rank scaled to [0, 1] (the accuracy change from the
    lowest- to the highest-routing example at equal confidence, linear in rank);
    n_units: K; n_strata: S; alternative: "monotone" (statistic = signed Z) or "omnibus"
    (statistic = max_j |Z_j|, null = [B] max_j |Z*_j|); warning: "" or why the test cannot reach
    alpha (only with `few_clusters="warn"`); reference: the null used, "restudentised" (few
    clusters, `restudentised`), "fixed" (the unit scores computed once) or "within" (few clusters:
    `within_clusters`; statistic = the normal score of the t p (omnibus: max_j of the columns'),
    null = the same score of B sign flips of the within-cluster scores, p_value from t_{K-1}
    (omnibus: Bonferroni over the columns), slope from its residuals)."""

    statistic: float
    p_value: float
    null: np.ndarray
    slope: float
    n_units: int
    n_strata: int
    alternative: str = "monotone"
    warning: str = ""
    reference: str = "fixed"


# ------------------------------------------------------------------------------------------------
# Jittable cores (trace under `jax.enable_x64(True)`)
# ------------------------------------------------------------------------------------------------


def score_matrix(confidence, correct, routing, units, *, n_strata: int, n_units: int,
                 stratum_size: int, alternative: str = "monotone", reference: str = "fixed",
                 order: Orders | None = None):
    """Per-column statistics and normalised unit scores of one dataset (no input checks).

    Args:
      confidence, correct, routing: [N] float64. units: [N] int32 in [0, K).
      reference: "fixed", "restudentised" (then w is the re-studentised null's `rs.Parts`) or
        "within" (the within-cluster scores, `within_clusters`; `order` unused).
      order: the `Orders` of the inputs when computed already (e.g. `host_orders`).
    Returns:
      (z [J], w [K, J] = U / sqrt(sum_k U^2) (0 when degenerate), slope [] of the first column).
    """
    if reference == "within":
        return wc.score_matrix(confidence, correct, routing, units, n_units=n_units,
                               stratum_size=stratum_size, alternative=alternative)
    n = confidence.shape[0]
    o = orders(confidence, routing) if order is None else order
    strat = ci.strata_from_levels(o.c_first, o.c_last, o.c_level, o.c_levels, n_strata,
                                  stratum_size)
    scale = 2.0 * max(n - 1, 1)
    s = (o.r_first + o.r_last).astype(jnp.float64) / scale  # rank in [0, 1]
    feats = omnibus.features(s, (o.c_first + o.c_last).astype(jnp.float64) / scale, alternative)
    n_seg = n_strata + n
    fit = ci.crossfit(strat, units, confidence, n_seg=n_seg, n_units=n_units, groups=o.groups)
    s_res = ci.residuals(fit, feats, n_seg)
    # rounding of the stratum means (XLA may divide by multiplying with 1/n) leaves ~1e-16 where
    # routing is constant in a stratum; ranks differ by >= 1 / (2 (N - 1)), far above 1e-12
    s_res = jnp.where(jnp.abs(s_res) < 1e-12, 0.0, s_res)
    y_res = ci.residuals(fit, correct[:, None], n_seg)[:, 0]
    pooled = ci.crossfit(strat, units, confidence, n_seg=n_seg, n_units=None)
    y_pool = ci.residuals(pooled, correct[:, None], n_seg)[:, 0]
    infl = ci.influence(fit, s_res, n_seg)
    z, w = ci.studentised(correct, y_res, y_pool, infl, units, n_units)
    s0 = s_res[:, 0] if alternative == "monotone" else 0.5 * s_res[:, 0]  # u = 2 s - 1
    ss = jnp.sum(s0 * s0)
    slope = jnp.where(ss > 0, jnp.sum(y_res * s0) / jnp.where(ss > 0, ss, 1.0), 0.0)
    if reference == "restudentised":
        w = rs.parts(fit, pooled, infl, correct, y_pool, units, n_units, n_seg)
    return z, w, slope


def scores(confidence, correct, routing, units, *, n_strata: int, n_units: int,
           stratum_size: int = 50):
    """The monotone test's statistic, normalised unit scores [K] and slope (`score_matrix`)."""
    z, w, slope = score_matrix(confidence, correct, routing, units, n_strata=n_strata,
                               n_units=n_units, stratum_size=stratum_size)
    return z[0], w[:, 0], slope


def _flips(w, reference):
    """(flip function of (lane keys, *operands) -> [Bc, J], operands) of the reference's null."""
    if reference == "restudentised":
        return rs.flip_chunk, (rs.barrier(w),)
    wb = ci.blocks(w)
    return ci.flip_chunk, (wb, ci.block_total(wb))


def _combine(z, null, alternative):
    """(statistic, null [B]) of the alternative from per-column z [J] and null [B, J]."""
    if alternative == "monotone":
        return z[0], null[:, 0]
    return jnp.max(jnp.abs(z)), jnp.max(jnp.abs(null), axis=1)


def _null_and_p(stat, null, w, units, n_units, key, p_value, reference):
    """(null [B], p []): the sign-flip p, or with "within" the t reference's p and the flips'
    sums as normal scores (`within_clusters`)."""
    if reference == "within":
        return wc.null_scores(null, units, n_units), wc.p_value(w, units, n_units)
    return null, ci.sign_flip_p(stat, null, units, n_units, key, p_value)


def conditional_test_core(confidence, correct, routing, units, key, *, n_permutations: int,
                          n_strata: int, n_units: int, chunk_size: int | None = None,
                          stratum_size: int = 50, alternative: str = "monotone",
                          p_value: str = "conservative", reference: str = "fixed"):
    """Jittable, vmappable test on one device. Returns (statistic, p, null [B], slope)."""
    z, w, slope = score_matrix(confidence, correct, routing, units, n_strata=n_strata,
                               n_units=n_units, stratum_size=stratum_size, alternative=alternative,
                               reference=reference)
    bc = _resolve_chunk(chunk_size, n_permutations)
    seeds = chunk_seeds(key, -(-n_permutations // bc), bc)
    flip, ops = _flips(w, reference)
    null = lax.map(lambda sd: flip(sd, *ops), seeds)
    null = null.reshape(-1, null.shape[-1])[:n_permutations]
    stat, null = _combine(z, null, alternative)
    null, p = _null_and_p(stat, null, w, units, n_units, key, p_value, reference)
    return stat, p, null, slope


@functools.partial(
    jax.jit, static_argnames=("n_strata", "n_units", "stratum_size", "alternative", "reference"),
    compiler_options=ci.COMPILER_OPTIONS,
)
def _scores_one_device(confidence, correct, routing, units, order, *, n_strata, n_units,
                       stratum_size, alternative, reference="fixed"):
    return score_matrix(confidence, correct, routing, units, n_strata=n_strata, n_units=n_units,
                        stratum_size=stratum_size, alternative=alternative, reference=reference,
                        order=order)


@functools.partial(
    jax.jit, static_argnames=("n_permutations", "n_units", "chunk_size", "mesh", "alternative",
                              "p_value", "reference"),
    compiler_options=ci.FLIP_COMPILER_OPTIONS,
)
def _sharded_flips(z, w, units, key, *, n_permutations, n_units, chunk_size, mesh, alternative,
                   p_value, reference):
    bc = _resolve_chunk(chunk_size, n_permutations)
    n_chunks = parallel.pad_to_multiple(-(-n_permutations // bc), mesh.size)
    seeds = chunk_seeds(key, n_chunks, bc)
    axis = mesh.axis_names[0]
    flip, ops = _flips(w, reference)
    null = jax.shard_map(
        lambda sd, *ops: lax.map(lambda s: flip(s, *ops), sd),
        mesh=mesh,
        in_specs=(P(axis),) + (P(),) * len(ops),
        out_specs=P(axis),
        check_vma=False,
    )(seeds, *ops)
    null = null.reshape(-1, null.shape[-1])[:n_permutations]
    stat, null = _combine(z, null, alternative)
    null = parallel.replicate(null, mesh)  # readable on every host
    null, p = _null_and_p(stat, null, w, units, n_units, key, p_value, reference)
    return stat, p, null


def _local_device(mesh: Mesh) -> jax.Device:
    """The first device of `mesh` that this process can address."""
    return next(d for d in mesh.devices.flat if d.process_index == jax.process_index())


def _sharded_conditional(confidence, correct, routing, units, key, *, n_permutations, n_strata,
                         n_units, chunk_size, mesh, stratum_size, alternative, p_value,
                         reference="fixed"):
    """The test on a 1-D mesh: (statistic, p, null [B], slope).

    Scores once on one local device per process, only the flips sharded (in one jit over the mesh
    XLA computed the replicated scores on every device: issue 26, 0.5 of 2.1 CPU s at N = 1M).
    """
    dev = _local_device(mesh)
    order = None  # sorted by XLA inside the jit
    if dev.platform == "cpu" and reference != "within":  # numpy sorts on the host: the same integers, faster (`host_orders`)
        order = host_orders(np.asarray(confidence), np.asarray(routing), np.asarray(units),
                            n_strata=n_strata, n_units=n_units, stratum_size=stratum_size)
    inputs = jax.device_put((confidence, correct, routing, units, order), dev)
    z, w, slope = _scores_one_device(*inputs, n_strata=n_strata, n_units=n_units,
                                     stratum_size=stratum_size, alternative=alternative,
                                     reference=reference)
    # host copies: plain replicated inputs of the mesh's jit on every process (as the data are)
    z, w = np.asarray(z), jax.tree.map(np.asarray, w)
    stat, p, null = _sharded_flips(z, w, units, key, n_permutations=n_permutations,
                                   n_units=n_units, chunk_size=chunk_size, mesh=mesh,
                                   alternative=alternative, p_value=p_value, reference=reference)
    return stat, p, null, slope


# ------------------------------------------------------------------------------------------------
# Validation and public API
# ------------------------------------------------------------------------------------------------


def check_inputs(confidence, correct, routing, stratum_size):
    """Validated float64 (c, y, r) and the number of strata."""
    c = _checks.check_unit_interval(
        _checks.as_array(confidence, "confidence", ndim=1), "confidence"
    )
    y = _checks.check_binary(correct, "correct")
    r = _checks.as_array(routing, "routing", ndim=1)
    n = _checks.check_same_length(confidence=c, correct=y, routing=r)
    stratum_size = _checks.check_positive_int(stratum_size, "stratum_size", minimum=3)
    if n < 2 * stratum_size:
        raise ValueError(
            f"confidence: {n} examples, need at least 2 x stratum_size = {2 * stratum_size}"
        )
    return c, y, r, n // stratum_size


def conditional_calibration_test(
    confidence: Any,
    correct: Any,
    routing: Any,
    *,
    key: Any,
    clusters: Any = None,
    n_permutations: int = 10_000,
    stratum_size: int = 50,
    mesh: Mesh | None = None,
    chunk_size: int | None = None,
    alternative: str = "monotone",
    alpha: float = 0.05,
    few_clusters: str = "raise",
    p_value: str = "conservative",
    reference: str = "auto",
) -> ConditionalTestResult:
    """Tests whether routing carries calibration information beyond confidence (module docstring).

    Valid when routing tracks confidence and the miscalibration varies with confidence, with tied
    or constant routing in any row order, with tied confidence levels of any sizes, and with
    dependent tokens when `clusters` is given (few and unbalanced clusters included:
    `cluster_inference`).

    Args:
      confidence: [N] in [0, 1]. correct: [N] 0/1. routing: [N] finite routing feature.
      key: a jax PRNG key or an integer seed.
      clusters: optional [N] integer cluster ids (e.g. sequence ids); signs are flipped per cluster.
      n_permutations: B sign flips. stratum_size: examples per confidence stratum (>= 3).
      mesh: optional 1-D mesh (default: all devices). chunk_size: flips per chunk (default by the
        mesh's backend, `parallel.engine_sizes`); it never changes the null for a key.
      alternative: "monotone" (rank-linear association) or "omnibus" (max over a basis that also
        sees V-shaped and confidence-dependent effects; `conditional_omnibus`).
      alpha: the level the p-value will be read at; only used to check that K clusters can reach
        it with a sign-flip null (the smallest exact sign-flip p is 2^(1-K); "within" reaches any
        alpha with K >= 2).
      few_clusters: "raise" (ValueError when a sign-flip null has 2^(1-K) > alpha) or "warn" (run,
        record the reason in `result.warning`).
      p_value: "conservative" (default, floored at 2^(1-K)) or "randomized" (ties broken by U from
        `key`, exact where Z ties its null; with no information, p = U: it rejects with probability
        alpha by a coin flip, and the warning stays). Sign-flip nulls only ("within": the t p).
      reference: the null, "auto" (with 2 to 12 clusters: "within"; 12 or fewer units without
        clusters: "restudentised" for the omnibus test; else "fixed"), "fixed" (the unit scores
        computed once), "restudentised" (K <= 32; recomputed on every flip's wild sample; the
        monotone test over-rejects with it) or "within" (clusters only: nuisance fits inside each
        cluster, the t-test of the K independent cluster scores with K - 1 df, Bonferroni over the
        omnibus columns; it tests the association *within* clusters, `within_clusters`).
    Returns:
      ConditionalTestResult(statistic, p_value, null [B], slope, n_units, n_strata, alternative,
      warning, reference).
    """
    c, y, r, n_strata = check_inputs(confidence, correct, routing, stratum_size)
    alternative, p_value = omnibus.check_alternative(alternative), ci.check_p_value(p_value)
    units, n_units = _units(clusters, len(c))
    reference = rs.resolve(reference, n_units, alternative, len(c))
    warning = ci.check_feasible(n_units, alpha, few_clusters, reference)
    key, n_permutations, chunk_size, mesh = engine_args(key, n_permutations, chunk_size, mesh)
    with jax.enable_x64(True):
        z, p, null, slope = _sharded_conditional(
            c, y, r, units, key,
            n_permutations=n_permutations, n_strata=n_strata, n_units=n_units,
            chunk_size=chunk_size, mesh=mesh, stratum_size=stratum_size, alternative=alternative,
            p_value=p_value, reference=reference,
        )
        if float(z) == 0.0 and not np.any(np.asarray(null)):
            warning = "; ".join(w for w in (warning, NO_INFORMATION) if w)
        return ConditionalTestResult(
            float(z), float(p), np.asarray(null), float(slope), n_units, n_strata, alternative,
            warning, reference,
        )
