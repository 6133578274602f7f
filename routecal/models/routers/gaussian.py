"""Gaussian posteriors over router logits: KL divergences to the prior and reparameterised samples.

VMoER (Li & Wicker, arXiv:2603.09453, Sec. 3.1; thesis arXiv:2509.23830, Ch. 4) places
q(l | u) = N(mu(u), Sigma(u)) on the E router logits of token u, with prior p(l | u) = N(l_det(u),
s_p^2 I) (s_p = 1 in the paper), mu = l_det + delta_mu. Three covariance families:

  diag     (MFVR)    Sigma = diag(sigma^2)
  lowrank            Sigma = diag(sigma^2) + V V^T,   V [E, R]
  full     (FCVR)    Sigma = L L^T,  L lower-triangular with positive diagonal (Cholesky factor)

Every KL below is the closed form for two Gaussians (e.g. Bishop 2006, eq. 2.155 family):
  KL(N(m + d, S) || N(m, s^2 I)) = 1/2 [ tr(S)/s^2 + |d|^2/s^2 - E + E log s^2 - log det S ].

Letters: B batch, T tokens, E experts, R covariance rank, S samples, P = E (E - 1) / 2.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from routecal.models.routers.common import common_draws

Array = jax.Array


def _eye(n: int, batch_ndim: int, dtype) -> Array:
    """I_n with `batch_ndim` leading singleton axes (explicit rank, for strict promotion)."""
    return jnp.eye(n, dtype=dtype).reshape((1,) * batch_ndim + (n, n))


def _kl_from_parts(trace: Array, maha: Array, logdet: Array, e: int, prior_sigma: float) -> Array:
    sp2 = float(prior_sigma) ** 2
    return 0.5 * ((trace + maha) / sp2 - e + e * math.log(sp2) - logdet)


def kl_lowrank(
    delta_BxTxE: Array, sigma_BxTxE: Array, v_BxTxExR: Array | None, prior_sigma: float = 1.0
) -> Array:
    """Per-token KL for Sigma = diag(sigma^2) + V V^T -> [B, T].

    tr(Sigma) = sum sigma^2 + |V|_F^2 and, by the matrix determinant lemma,
    log det Sigma = sum log sigma^2 + log det(I_R + V^T diag(sigma^-2) V).
    """
    e = delta_BxTxE.shape[-1]
    trace = jnp.sum(jnp.square(sigma_BxTxE), axis=-1)
    logdet = 2.0 * jnp.sum(jnp.log(sigma_BxTxE), axis=-1)
    if v_BxTxExR is not None:
        trace = trace + jnp.sum(jnp.square(v_BxTxExR), axis=(-2, -1))
        w = v_BxTxExR / sigma_BxTxE[..., None]
        r = v_BxTxExR.shape[-1]
        inner = jnp.einsum("...er,...es->...rs", w, w)
        inner = inner + _eye(r, inner.ndim - 2, w.dtype)
        logdet = logdet + jnp.linalg.slogdet(inner)[1]
    maha = jnp.sum(jnp.square(delta_BxTxE), axis=-1)
    return _kl_from_parts(trace, maha, logdet, e, prior_sigma)


def kl_cholesky(delta_BxTxE: Array, chol_BxTxExE: Array, prior_sigma: float = 1.0) -> Array:
    """Per-token KL for Sigma = L L^T (FCVR) -> [B, T].

    tr(L L^T) = |L|_F^2 and log det(L L^T) = 2 sum_i log L_ii (L lower-triangular, L_ii > 0).
    """
    e = delta_BxTxE.shape[-1]
    trace = jnp.sum(jnp.square(chol_BxTxExE), axis=(-2, -1))
    diag = jnp.diagonal(chol_BxTxExE, axis1=-2, axis2=-1)
    logdet = 2.0 * jnp.sum(jnp.log(diag), axis=-1)
    maha = jnp.sum(jnp.square(delta_BxTxE), axis=-1)
    return _kl_from_parts(trace, maha, logdet, e, prior_sigma)


def tril_indices(e: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the P = E (E - 1) / 2 strictly-lower entries, row-major."""
    return np.tril_indices(e, k=-1)


def cholesky_factor(sigma_BxTxE: Array, offdiag_BxTxP: Array) -> Array:
    """L [B, T, E, E]: diagonal sigma (> 0), strictly-lower entries from `offdiag` (row-major)."""
    e = sigma_BxTxE.shape[-1]
    rows, cols = tril_indices(e)
    lower = jnp.zeros((*sigma_BxTxE.shape, e), sigma_BxTxE.dtype)
    lower = lower.at[..., rows, cols].set(offdiag_BxTxP)
    return lower + sigma_BxTxE[..., None] * _eye(e, sigma_BxTxE.ndim - 1, sigma_BxTxE.dtype)


def sample_logits(
    key: Array,
    mu_BxTxE: Array,
    sigma_BxTxE: Array,
    n_samples: int,
    *,
    v_BxTxExR: Array | None = None,
    chol_BxTxExE: Array | None = None,
    group: int = 1,
) -> Array:
    """Reparameterised samples l = mu + A eps -> [S, B, T, E], eps ~ N(0, I).

    `group` > 1 shares eps among each `group` consecutive batch rows (common random numbers).

    A = diag(sigma) (diag), [diag(sigma), V] with eps of size E + R (lowrank) or L (full). The
    first E standard normals are drawn identically in every family, so FCVR with zero
    off-diagonals reproduces MFVR sample for sample.
    """
    k_eps, k_low = jax.random.split(key)
    def normal(k: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.normal(k, shape, jnp.float32)

    eps = common_draws(k_eps, normal, (n_samples, *mu_BxTxE.shape), 1, group)
    if chol_BxTxExE is not None:
        return mu_BxTxE[None] + jnp.einsum("btij,sbtj->sbti", chol_BxTxExE, eps)
    out = mu_BxTxE[None] + sigma_BxTxE[None] * eps
    if v_BxTxExR is not None:
        r = v_BxTxExR.shape[-1]
        eps_r = common_draws(k_low, normal, (n_samples, *mu_BxTxE.shape[:-1], r), 1, group)
        out = out + jnp.einsum("bter,sbtr->sbte", v_BxTxExR, eps_r)
    return out


def logit_variance(
    sigma_BxTxE: Array, *, v_BxTxExR: Array | None = None, chol_BxTxExE: Array | None = None
) -> Array:
    """Router-logit variance score: mean over experts of diag(Sigma) -> [B, T]."""
    if chol_BxTxExE is not None:
        return jnp.mean(jnp.sum(jnp.square(chol_BxTxExE), axis=-1), axis=-1)
    var = jnp.square(sigma_BxTxE)
    if v_BxTxExR is not None:
        var = var + jnp.sum(jnp.square(v_BxTxExR), axis=-1)
    return jnp.mean(var, axis=-1)
