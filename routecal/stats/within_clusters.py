"""Few clusters: within-cluster scores and a t reference with K - 1 df (omnibus: Bonferroni).

Shapes: `N` examples, `K` units (clusters), `B` sign flips.

Why (issue 22): with K = 6 equal clusters the monotone `conditional_calibration_test` rejected
1.9% [1.0%, 3.3%] of 1,000 true nulls. Its cross-cluster fits make the K cluster scores dependent;
a sign-flip null over K = 6 clusters cannot give p below 2^(1-K) = 3.1% (and none below alpha at
K <= 5); a t_{K-1} reference on those (dependent) scores gave 1.75%, the re-studentised null 8.2%
(`restudentised`). Here the nuisance fits never cross clusters, so the scores are independent and
a t reference is exact in the limit of large clusters for any K >= 2.

Method (`reference="within"`, the default for 2 <= K <= `restudentised.SMALL_K` clusters):

1. Inside each cluster k: confidence strata by the rule of `cluster_inference.strata` applied to
   the cluster alone (equal-mass bins of ~`stratum_size` of its examples, a confidence value tied
   >= `stratum_size` times in the cluster, or every value when the cluster has at most
   max(S_k, 32) distinct values, its own stratum; a cluster with fewer than `stratum_size`
   examples is one stratum), formed by ordering on (cluster, confidence), never across clusters.
2. s = mid-rank of routing *within the cluster*, scaled to [0, 1]; s and correct residualised
   inside each stratum on (1, c) (the local-linear fit of `cluster_inference.residuals`, the mean
   in a level stratum), every example's own cluster only.
3. U_k = sum_{i in k} y~_i s~_i: a function of cluster k's data alone, so U_1, ..., U_K are
   independent, each a sum of many terms (asymptotically normal, mean ~0 under the null).
4. t = mean(U) / (sd(U) / sqrt(K)) (sd with ddof = 1; K = the clusters present), two-sided
   p = P(|t_{K-1}| >= |t|) = I_{nu / (nu + t^2)}(nu / 2, 1 / 2), nu = K - 1 (the regularised
   incomplete beta function, `jax.scipy.special.betainc`: jittable and vmappable).
5. The omnibus alternative (`conditional_omnibus.features`): its J = 4 columns u = 2 s - 1,
   q = u^2 - 1/3, u v, q v with s and v = 2 rank(c) - 1 the *within-cluster* ranks of routing and
   confidence, each residualised as in step 2 (the same strata), U_kj and t_j as in steps 3-4,
   p = min(1, J min_j p_j) (Bonferroni: P(min_j p_j <= alpha / J) <= sum_j alpha / J under the
   null, whatever the columns' correlation; each p_j is the valid t p of step 4).

Source: Ibragimov & Mueller (2010), "t-statistic based correlation and heterogeneity robust
inference", J. Business & Economic Statistics 28(4): the t-test on K independent, asymptotically
normal group estimates is valid for any K >= 2 when their variances are equal and conservative
when they differ, for alpha <= 0.083 and 2 <= K <= 14 (Bakirov & Szekely 2006, "Student's t-test
for Gaussian scale mixtures", J. Math. Sciences 139(3)); Bester, Conley & Hansen (2011), "Inference
with dependent data using cluster covariance estimators", J. Econometrics 165(2): fixed-K cluster
asymptotics with t_{K-1} critical values. Measured (benchmarks/RESULTS.md, issue 22, 1,000 true
nulls per row, 3,000 tokens in K equal clusters, 99% intervals all containing 0.05): 4.3% at
K = 4, 5.4% at 5, 4.8% at 6, 5.1% at 8, 4.6% at 10; power 0.92 at K = 5 against c + 0.05 sign of
the routing's within-cluster deviation (200 datasets). Omnibus (Bonferroni; same rows): 4.8% at
K = 4, 4.5% at 5, 3.9% at 6, 4.6% at 8, 5.2% at 10, conservative with Pareto(1.1) sizes (3.1% at 6,
2.6% at 10 nominal clusters; the re-studentised null: 4.3%, 7.0%); power 0.64 against the same
planted effect at K = 5 (the monotone column alone: 0.92; the re-studentised null: 0, no sign-flip
p reaches 0.05 at K = 5), 0.855 against a V-shape inside clusters at K = 5 (monotone: 0.06).

What it tests: association of correct with routing *within* clusters (the clusters' fixed
effects are removed), i.e. whether, inside a document, higher-routing tokens of equal confidence
are more or less often right. An effect that lives only between clusters (routing a per-document
level, accuracy a per-document offset) is not identifiable from K cluster offsets when the null
allows them, and this test has power ~alpha against it by construction.

Result fields (`conditional.ConditionalTestResult`): `statistic` is the signed standard-normal
score with the same two-sided p (sign(t) Phi^-1(1 - p / 2)), on the scale of the other references'
Z (omnibus: max_j |Z_j| of the columns' scores, i.e. the score of min_j p_j, not of the Bonferroni
p); `null` the same score of B random sign flips of the U_k (t of sum_k eps_k U_k; omnibus: max_j
over the columns with the same signs: the sign-flip orbit, for plots; the p-value is the t
reference's, not a count in it); `slope` as for the other references, from the within-cluster
residuals. The p-value options ("conservative",
"randomized") do not apply: the t p-value is continuous.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.special import betainc, ndtri

from routecal.stats import cluster_inference as ci
from routecal.stats import conditional_omnibus as omnibus
from routecal.stats import ranks

_TINY = 1e-200  # floor of K - S^2 (all U_k equal) and of p / 2 (t beyond ~1e100)


def _in_cluster(x, units, n_units, n):
    """Tie blocks of x ordered within clusters: (first, last, level, start, size) [N]: first/last
    the sorted positions of (cluster, x) (first - start: the position in the cluster), level the
    dense (cluster, value) id, start the cluster's first position, size its examples."""
    key = units.astype(jnp.int64) * n + ranks.tie_levels(x)[2].astype(jnp.int64)
    first, last, level, _ = ranks.tie_levels(key)
    count = jax.ops.segment_sum(jnp.ones_like(units), units, num_segments=n_units)
    start = (jnp.cumsum(count) - count)[units]
    return first, last, level, start, count[units]


def strata_and_ranks(confidence, routing, units, *, n_units: int, stratum_size: int):
    """Within-cluster strata (ids in [0, 2N)), within-cluster ranks of routing and of confidence
    in [0, 1] (mid-ranks / (n_k - 1)). [N] each.

    Stratum ids: N + the (cluster, level) id for a level stratum, start_k + bin for a bin.
    """
    n = confidence.shape[0]
    first, last, level, start, size = _in_cluster(confidence, units, n_units, n)
    seg = functools.partial(jax.ops.segment_max, segment_ids=units, num_segments=n_units)
    n_levels = (seg(level) + seg(-level) + 1)[units]  # levels are contiguous within a cluster
    n_strata = jnp.maximum(size // stratum_size, 1)
    res = ci.strata_from_levels(first - start, last - start, level, n_levels, n_strata,
                                stratum_size, n=size)
    strat = jnp.where(res >= n_strata, n + res - n_strata, start + res).astype(jnp.int32)
    r_first, r_last, _, r_start, _ = _in_cluster(routing, units, n_units, n)

    def rank01(lo, hi, st):  # mid-rank in the cluster, scaled to [0, 1]
        mid = 0.5 * (lo + hi).astype(jnp.float64) - st
        return mid / jnp.maximum(size - 1, 1).astype(jnp.float64)

    return strat, rank01(r_first, r_last, r_start), rank01(first, last, start)


def cluster_scores(confidence, correct, routing, units, *, n_units: int, stratum_size: int,
                   alternative: str = "monotone"):
    """(U [K, J] = sum_{i in k} y~_i x~_ij, slope []) of the within-cluster residuals (steps 1-3)
    of the alternative's columns x (`conditional_omnibus.features` of the within-cluster ranks;
    slope: of s, the first column)."""
    n = confidence.shape[0]
    strat, s, c_rank = strata_and_ranks(confidence, routing, units, n_units=n_units,
                                        stratum_size=stratum_size)
    fit = ci.crossfit(strat, None, confidence, n_seg=2 * n, n_units=None)
    x_res = ci.residuals(fit, omnibus.features(s, c_rank, alternative), 2 * n)
    x_res = jnp.where(jnp.abs(x_res) < 1e-12, 0.0, x_res)  # rounding where x is constant
    y_res = ci.residuals(fit, correct[:, None], 2 * n)[:, 0]
    s_res = x_res[:, 0] if alternative == "monotone" else 0.5 * x_res[:, 0]  # u = 2 s - 1
    ss = jnp.sum(s_res * s_res)
    slope = jnp.where(ss > 0, jnp.sum(y_res * s_res) / jnp.where(ss > 0, ss, 1.0), 0.0)
    return jax.ops.segment_sum(y_res[:, None] * x_res, units, num_segments=n_units), slope


def n_present(units, n_units: int) -> jax.Array:
    """K: the units with at least one example (a batch pads to its largest K). [] float64."""
    count = jax.ops.segment_sum(jnp.ones_like(units), units, num_segments=n_units)
    return jnp.sum(count > 0).astype(jnp.float64)


def t_from_sum(s, k):
    """t of the U_k from S = sum_k U_k / sqrt(sum_k U_k^2) (any shape; k: K).

    mean = S r / K and sd^2 = r^2 (1 - S^2 / K) / (K - 1) with r^2 = sum U^2, so
    t = S sqrt((K - 1) / (K - S^2)), a monotone function of S (|S| <= sqrt(K)).
    """
    return s * jnp.sqrt((k - 1.0) / jnp.maximum(k - s * s, _TINY))


def t_p_value(t, nu):
    """Two-sided P(|t_nu| >= |t|) = betainc(nu / 2, 1 / 2, nu / (nu + t^2))."""
    return betainc(0.5 * nu, 0.5, nu / (nu + t * t))


def normal_score(t, nu):
    """sign(t) Phi^-1(1 - p / 2): the standard-normal statistic with t's two-sided p."""
    return -jnp.sign(t) * ndtri(jnp.maximum(0.5 * t_p_value(t, nu), _TINY))


def score_matrix(confidence, correct, routing, units, *, n_units: int, stratum_size: int,
                 alternative: str = "monotone"):
    """(z [J] (each column's `normal_score`), w [K, J] = U / sqrt(sum_k U^2) per column (0 where
    all U are 0), slope) with this reference; the signature of `conditional.score_matrix`'s
    result."""
    u, slope = cluster_scores(confidence, correct, routing, units, n_units=n_units,
                              stratum_size=stratum_size, alternative=alternative)
    v = jnp.sum(u * u, axis=0, keepdims=True)
    w = jnp.where(v > 0, u / jnp.sqrt(jnp.where(v > 0, v, 1.0)), 0.0)
    k = n_present(units, n_units)
    return normal_score(t_from_sum(jnp.sum(w, axis=0), k), k - 1.0), w, slope


def p_value(w, units, n_units: int) -> jax.Array:
    """The t reference's two-sided p [] from the normalised scores w [K, J] (step 4); with J > 1
    columns the Bonferroni p min(1, J min_j p_j) (the omnibus alternative, step 5)."""
    k = n_present(units, n_units)
    p = t_p_value(t_from_sum(jnp.sum(w, axis=0), k), k - 1.0)
    return jnp.minimum(1.0, w.shape[1] * jnp.min(p))


def null_scores(null_sums, units, n_units: int) -> jax.Array:
    """[B] sign-flip sums sum_k eps_k w_k (the omnibus test: max_j |sum_k eps_k w_kj|) -> their
    `normal_score`s (the orbit shown in plots)."""
    k = n_present(units, n_units)
    return normal_score(t_from_sum(null_sums, k), k - 1.0)
