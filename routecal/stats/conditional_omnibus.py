"""The omnibus alternative of the conditional test: power against non-monotone routing effects.

Shapes: `N` examples, `J` = `N_BASIS` basis columns.

The monotone test scores one direction, the routing rank s: it has no power when the accuracy
change is V-shaped in routing (issue 22: P(correct | c, r) = c + 0.1 (1 - 2|r|), 6% power at
N = 2000) or changes sign with confidence (c + 0.08 sign(r) sign(c - 0.6): 4.5% to 18.5%). The
omnibus alternative scores a small basis of transforms of the routing rank and their interactions
with the confidence rank,

    u = 2 s - 1,  q = u^2 - 1/3,  u * v,  q * v      (v = 2 rank(c) - 1, all in [-1, 1]),

each residualised on confidence exactly like s (cross-fitted within strata, `cluster_inference`),
gives one studentised Z_j per column, and takes T = max_j |Z_j|. Its null is the multiplier
(sign-flip) null of the max with the *same* signs for every column, so the correlation between the
columns is kept (Chernozhukov, Chetverikov & Kato 2013, "Gaussian approximations and multiplier
bootstrap for maxima of sums of high-dimensional random vectors", Ann. Statist. 41(6), Thm 3.1;
a randomisation test of the max, exact under sign symmetry as in Canay, Romano & Shaikh 2017).
The first column is the monotone score itself (u is affine in s), so the omnibus test keeps most
of the monotone test's power (the price of the max over 4 columns is a larger critical value,
about 2.5 instead of 1.96 for independent columns). A GCM with a fixed basis is the "several
regression functions" variant of Shah & Peters (2020, Sec. 4); a kernel test (KCI, Zhang et al.
2011) uses an infinite basis and is orders of magnitude slower (benchmarks/validity.py --kci).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ALTERNATIVES = ("monotone", "omnibus")
N_BASIS = 4
BASIS_NAMES = ("u", "u^2 - 1/3", "u * v", "(u^2 - 1/3) * v")


def features(s: jax.Array, c_rank: jax.Array, alternative: str) -> jax.Array:
    """Score columns of the alternative: [N] routing rank s in [0, 1], [N] confidence rank in [0, 1]
    -> [N, J] (J = 1 for "monotone": s itself; `N_BASIS` for "omnibus")."""
    if alternative == "monotone":
        return s[:, None]
    u = 2.0 * s - 1.0
    q = u * u - 1.0 / 3.0
    v = 2.0 * c_rank - 1.0
    return jnp.stack([u, q, u * v, q * v], axis=1)


def check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative: must be one of {ALTERNATIVES}, got {alternative!r}")
    return alternative
