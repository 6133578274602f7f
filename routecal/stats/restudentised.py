"""Few clusters: the sign-flip null with the statistic re-studentised in every flip.

Shapes: `N` examples, `K` units (clusters), `J` score columns, `Bc` flips per chunk (lanes),
`M` sign patterns.

Why (issue 22): with K = 6 equal clusters the default null of `conditional_calibration_test`
(Z*_b = sum_k eps_bk U_k / sqrt(sum_k U_k^2), the unit scores U_k computed once) rejected 1.9%
[1.0%, 3.3%] of 1000 true nulls. Z is not one of those flips: with K clusters the within-stratum
fits pool the other clusters, so the cross-fitted statistic is about sqrt((K - 1) / K) times the
identity flip sum_k U_k / sqrt(sum U^2) (measured ratio 0.89 at K = 6, 0.93 at 10, 0.97 at 60),
and Var Z = 0.95 at K = 6 (1000 datasets; 0.99 at 10, 1.1 at 60) against Var Z* = 1, while the
identity flip itself is over-dispersed (1.19: the U_k share the fits). Neither a fixed scale nor
other weights fix that (scratch runs on the same 1000 datasets of 6 x 500, B = 199): Webb's
six-point weights (Webb 2023, "Reworking wild bootstrap-based inference for clustered errors",
Can. J. Econ. 56(3)) in place of the signs give 1.1% (2.6% at 8 clusters, 3.4% at 10); the
identity flip against Webb weights 6.5%-12.6% (K = 6 to 60 Pareto).

Method: the wild cluster *restricted* bootstrap with the statistic recomputed on every bootstrap
sample (WCR; Cameron, Gelbach & Miller 2008, REStat 90(3), Sec. IV; MacKinnon, Nielsen & Webb
2023, "Cluster-robust inference: a guide to empirical practice", J. Econometrics 232(2), Sec. 5),
as a score test (Kline & Santos 2012, "A score based approach to wild bootstrap inference",
J. Econometric Methods 1(1)). The restricted model is the null's: y = yhat + r with yhat the
pooled within-stratum fit on (1, c) (`cluster_inference.crossfit`, every example's own unit in)
and r its residual. Flip b draws y*_b = yhat + eps_bk r_i (i in cluster k) and recomputes the
whole statistic on y*_b: the numerator T* = sum_i w_i y*_i and the CR2-style scores U*_k from the
cross-fitted and pooled residuals of y*_b (`cluster_inference.studentised`). Everything is
linear in the K + 1 coefficients (1, eps_b1, ..., eps_bK), so `parts` applies the two smoothers
once to the K + 1 columns (yhat, r 1[cluster 1], ..., r 1[cluster K]) (O(N K)) and `statistic`
assembles Z*_b from [K + 1] and [K, K + 1] sums (O(K^2) per flip). With eps = 1 the sample is y
itself, so Z is the identity element of its own null (the orbit of the exact randomisation
test). Canay, Santos & Shaikh 2021 ("The wild bootstrap with a 'small' number of 'large'
clusters", REStat 103(2)) prove that this test, with Rademacher weights and the statistic
re-studentised in each draw, keeps its level asymptotically with a fixed number of large
clusters under homogeneity conditions on the cluster-level regressors.
The smallest p stays 2^(1 - K) (eps and -eps give the same |Z*|; `cluster_inference.min_p_value`).

Measured (benchmarks/RESULTS.md, issue 22, six clusters; 1000 datasets per row, B = 199): the
omnibus test holds its level with it on three seeds, 4.7% / 3.8% / 5.2% at 6 x 500 (fixed scores:
0.3%), 5.5% / 5.8% / 4.1% at 8 x 375 (1.8%), 5.6% / 4.9% at 10 x 300 (3.3%), so `reference="auto"`
(`resolve`) used it for the omnibus alternative with K <= `SMALL_K` = 12 clusters (MacKinnon,
Nielsen & Webb 2023, Sec. 4.2: below about 12 clusters cluster-robust inference is unreliable),
until it rejected 7.0% [5.1%, 9.3%] with Pareto(1.1) sizes at 10 nominal clusters and could not
reject at K <= 5: "auto" now gives both alternatives with clusters "within" (`within_clusters`,
Bonferroni over the omnibus columns); this null stays available on request.
The monotone test does NOT hold its level with it: 8.2% [6.1%, 10.7%] at 6 x 500 (5.5%, 6.7% on
two more seeds), 7.3% at 8 x 375, 6.5% at 10 x 300; with K <= 12 clusters "auto" gives it the
within-cluster t reference instead (`within_clusters`; its fixed-score null gave 1.9% at 6: too
few sign patterns). Enumerating all 64 patterns at 6 x 500, Z is the largest of its orbit in
6% of 300 true nulls where exchangeability gives 1/32 (the flips of the residuals are not
exchangeable with the data: the residuals sum to zero within strata, and Canay, Santos & Shaikh's
guarantee needs homogeneous cluster-level regressors, where here routing is a per-cluster level;
which of the two drives it was not isolated). Webb's weights in the same null: 7.7% at 6 (9.0%
on another seed), 6.8% at 8, 6.4% at 10. Flip b's signs are `cluster_inference.flip_chunk`'s (bit k of word 0
of lane b), so they depend on (key, b) only. Cost: O(N K) once, O(K^2) per flip; K <= 32.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from routecal.stats import cluster_inference as ci
from routecal.stats.random_bits import _uniform_bits

SMALL_K = 12  # reference="auto": K <= SMALL_K clusters get "within" / "restudentised"
MAX_K = 32  # one random word signs every unit
REFERENCES = ("auto", "fixed", "restudentised", "within")


def check_reference(reference: str) -> str:
    """`reference` if it names one of `REFERENCES`, else a ValueError naming the argument."""
    if reference not in REFERENCES:
        raise ValueError(f"reference: must be one of {REFERENCES}, got {reference!r}")
    return reference


def resolve(reference: str, n_units: int, alternative: str, n: int | None = None) -> str:
    """The null used with K units of N examples (N = None: clusters given, K < N).

    "auto": with K <= `SMALL_K` clusters (K < N) "within" (`within_clusters`; the omnibus
    alternative: Bonferroni over its columns); with K <= `SMALL_K` units of one example each,
    "restudentised" for the omnibus alternative and "fixed" for the monotone one; else "fixed".
    Explicit choices are checked: "restudentised" needs K <= `MAX_K`; "within" clusters (K < N:
    with one example per unit nothing varies within a unit).
    """
    reference = check_reference(reference)
    clustered = n is None or n_units < n
    if reference == "auto":
        if n_units > SMALL_K:
            return "fixed"
        if clustered:
            return "within"
        return "restudentised" if alternative == "omnibus" else "fixed"
    if reference == "restudentised" and n_units > MAX_K:
        raise ValueError(
            f"reference: 'restudentised' needs at most {MAX_K} clusters, got {n_units}"
        )
    if reference == "within" and not clustered:
        raise ValueError(f"reference: 'within' needs clusters of several examples ({n_units} "
                         f"units of {n} examples)")
    return reference


class Parts(NamedTuple):
    """Z*(eps) is linear in (1, eps) through these sums (module docstring). t: [K + 1, J]
    numerator terms; a, b: [K, K + 1, J] cluster sums of w times the cross-fitted / pooled
    residuals of each column (yhat, r 1[cluster 1], ..., r 1[cluster K])."""

    t: jax.Array
    a: jax.Array
    b: jax.Array


def parts(fit, pooled, w, correct, y_pool, units, n_units: int, n_seg: int) -> Parts:
    """The re-studentised null's sums of one dataset (traced under x64).

    Args:
      fit, pooled: the cross-fitted and pooled stratum fits (`cluster_inference.crossfit`).
      w: [N, J] influence weights (`cluster_inference.influence`). correct: [N] labels.
      y_pool: [N] pooled residuals r. units: [N] in [0, K).
    """
    one_hot = units[:, None] == jnp.arange(n_units)[None, :]
    cols = jnp.concatenate(
        [(correct - y_pool)[:, None], jnp.where(one_hot, y_pool[:, None], 0.0)], axis=1
    )  # [N, K + 1]: yhat, then r in each cluster
    seg = functools.partial(jax.ops.segment_sum, segment_ids=units, num_segments=n_units)

    def sums(res):  # [N, K + 1] -> [K, K + 1, J], one column at a time ([N, K + 1] temporaries)
        return jnp.stack([seg(res * w[:, j : j + 1]) for j in range(w.shape[1])], axis=-1)

    t = jnp.einsum("nc,nj->cj", cols, w)
    return Parts(t, sums(ci.residuals(fit, cols, n_seg)), sums(ci.residuals(pooled, cols, n_seg)))


def statistic(flip: jax.Array, p: Parts) -> jax.Array:
    """Z*_j of sign patterns flip [M, K] (True: eps = -1) -> [M, J].

    Sums in a fixed order with exact negations (no multiplies), so a lane's value does not depend
    on how many lanes are computed together.
    """
    m, k = flip.shape

    def signed(x, j):  # [..] term j of cluster j (coefficient eps_j) for every lane
        return jnp.where(flip[:, j].reshape((m,) + (1,) * x.ndim), -x[None], x[None])

    t = jnp.broadcast_to(p.t[0], (m,) + p.t.shape[1:])
    a = jnp.broadcast_to(p.a[:, 0], (m,) + p.a.shape[::2])
    b = jnp.broadcast_to(p.b[:, 0], (m,) + p.b.shape[::2])
    for j in range(k):
        t = t + signed(p.t[j + 1], j)
        a = a + signed(p.a[:, j + 1], j)
        b = b + signed(p.b[:, j + 1], j)
    u2 = jnp.sum(jnp.maximum(a * b, 0.0), axis=1)
    ok = u2 > 0
    return jnp.where(ok, t / jnp.sqrt(jnp.where(ok, u2, 1.0)), 0.0)


def signs(seed: jax.Array, n_units: int) -> jax.Array:
    """[2, Bc] lane keys -> [Bc, K] flips (True: eps = -1), bit k of the lane's word 0: the signs
    `cluster_inference.flip_chunk` gives unit k."""
    bits = _uniform_bits(seed, jnp.zeros((1,), jnp.uint32))[0]
    return ((bits[:, None] >> jnp.arange(n_units, dtype=jnp.uint32)[None, :]) & 1) == 1


def flip_chunk(seed: jax.Array, p: Parts) -> jax.Array:
    """Re-studentised sign-flip statistics of one chunk: [2, Bc] lane keys -> [Bc, J]."""
    return statistic(signs(seed, p.a.shape[0]), p)


def barrier(p: Parts) -> Parts:
    """The parts behind an optimization barrier (as `cluster_inference.blocks`): every chunk size
    and device count sees the same sums."""
    return Parts(*lax.optimization_barrier(tuple(p)))
