"""The trial's Gaussian algebra, written once: every other module calls these.

All functions are numpy and accept any leading (draw) axes unless stated. `sequential_moments` and
`conditional_normal_graph` also build the same quantities as a graph when given the tensor module
(xp=pytensor.tensor), for the models; this module itself imports numpy only, so every layer (planning's
workers included) can use it cheaply.

- `tril_unpack(packed, n)`: a lower-triangular matrix from its packed rows (PyMC's LKJCholeskyCov
  order: row by row, (0,0), (1,0), (1,1), (2,0), ...);
- `chol_to_cov(L)` = L L';  `sd_corr_to_cov(sd, R)` = diag(sd) R diag(sd);
- `conditional_normal(mu, cov, given, target, values)`: the regression of the target coordinates
  on the given ones, B = Sigma_TG Sigma_GG^-1, the conditional covariance
  Sigma_TT - B Sigma_GT and, for values x_G, the conditional mean mu_T + B (x_G - mu_G)
  (`conditional_normal_graph`: the same as a PyTensor graph);
- `sequential_moments(a, s, links)`: the multivariate normal of a sequence of regressions
  z_k = a_k + sum_{j<k} B_kj z_j + s_k e_k: with R = I - B, mu = R^-1 a and Sigma = R^-1 diag(s^2) R^-T
  (or its lower Cholesky factor R^-1 diag(s));
- `sandwich(A, C)` = A C A';
- `score_covariance(Z, S, sigma, A, C)`: the covariance of one participant's scores under a
  trajectory model, Z (S + A C A') Z' + sigma^2 I, with Z the participant-effect design over the
  visits (rows (1, t1_w)), S the covariance of the participant effects, A C A' the covariance the
  participant's unobserved biomarkers add to those effects (A their loadings on level and change, C
  their covariance) and sigma the residual SD;
- `duplication_matrix(n)`: D with vec(S) = D vech(S) for symmetric S;
- `conjugate_normal(prior_mean, prior_var, estimate, estimate_var)`: the normal-normal update of a
  Normal(m, v) prior by an estimate y ~ Normal(theta, e): precision 1/v + 1/e, mean the
  precision-weighted m and y (the posterior of a control mean given its estimate; the mean of a
  random-effects model given the weighted mean of the trials; checked against `conditional_normal` in
  tests/test_map_prior.py).

tests/test_gaussian.py checks each against dense numpy or scipy.
"""

from __future__ import annotations

import numpy as np


def tril_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of each packed entry of an n x n lower-triangular matrix, row by row."""
    return np.tril_indices(n)


def tril_unpack(packed, n: int) -> np.ndarray:
    """(..., n(n+1)/2) packed lower-triangular entries -> (..., n, n) lower-triangular matrices."""
    packed = np.asarray(packed, dtype=float)
    if packed.shape[-1] != n * (n + 1) // 2:
        raise ValueError(f"{packed.shape[-1]} packed entries do not fill a {n} x {n} lower triangle")
    rows, cols = tril_indices(n)
    out = np.zeros(packed.shape[:-1] + (n, n))
    out[..., rows, cols] = packed
    return out


def chol_to_cov(chol) -> np.ndarray:
    """L L' for lower factors L (..., n, n)."""
    chol = np.asarray(chol, dtype=float)
    return chol @ np.swapaxes(chol, -1, -2)


def packed_chol_to_cov(packed, n: int) -> np.ndarray:
    """The covariance L L' from the packed lower factor (..., n(n+1)/2)."""
    return chol_to_cov(tril_unpack(packed, n))


def sd_corr_to_cov(sd, corr) -> np.ndarray:
    """diag(sd) R diag(sd): sd (..., n), corr (..., n, n)."""
    sd = np.asarray(sd, dtype=float)
    return sd[..., :, None] * np.asarray(corr, dtype=float) * sd[..., None, :]


def conditional_normal(mu, cov, given, target, values=None):
    """Target coordinates given the others of N(mu, cov): (coef, cond_cov, cond_mean).

    mu (..., n) and cov (..., n, n) with any leading axes; given, target: index arrays (disjoint).
    coef (..., |T|, |G|) = Sigma_TG Sigma_GG^-1, cond_cov (..., |T|, |T|) = Sigma_TT - coef Sigma_GT.
    values (rows, |G|), or with the leading axes (..., rows, |G|): cond_mean (..., rows, |T|) =
    mu_T + (values - mu_G) coef'; None when values is None. With no given coordinates the
    conditional is the marginal of the target.
    """
    mu = np.asarray(mu, dtype=float)
    cov = np.asarray(cov, dtype=float)
    g = np.asarray(given, dtype=int)
    t = np.asarray(target, dtype=int)
    s_tt = cov[..., t[:, None], t[None, :]]
    lead = cov.shape[:-2]
    if len(g) == 0:
        coef = np.zeros(lead + (len(t), 0))
        cond_cov = s_tt
        mean = None
        if values is not None:
            rows = np.shape(values)[-2]
            mean = np.broadcast_to(mu[..., None, t], mu.shape[:-1] + (rows, len(t)))
        return coef, cond_cov, mean
    s_gg = cov[..., g[:, None], g[None, :]]
    s_gt = cov[..., g[:, None], t[None, :]]
    coef = np.swapaxes(np.linalg.solve(s_gg, s_gt), -1, -2)  # (..., T, G) = Sigma_TG Sigma_GG^-1
    cond_cov = s_tt - np.einsum("...tg,...gu->...tu", coef, s_gt)
    mean = None
    if values is not None:
        dev = np.asarray(values, dtype=float) - mu[..., None, g]
        mean = mu[..., None, t] + np.einsum("...rg,...tg->...rt", dev, coef)
    return coef, cond_cov, mean


def conditional_normal_graph(mu, cov, given, target, values, xp):
    """`conditional_normal` as a graph of the tensor module xp (pytensor.tensor): mu (n,), cov (n, n) tensors, no
    leading axes, values (rows, |G|) numpy; returns (cond_mean (rows, |T|), cond_cov (|T|, |T|)), with Sigma_GG solved
    as positive definite."""
    g = np.asarray(given, dtype=int)
    t = np.asarray(target, dtype=int)
    s_gg = cov[g][:, g]
    s_gt = cov[g][:, t]
    coef = xp.linalg.solve(s_gg, s_gt, assume_a="pos")  # Sigma_GG^-1 Sigma_GT
    mean = mu[t][None, :] + xp.dot(values - mu[g][None, :], coef)
    return mean, cov[t][:, t] - xp.dot(s_gt.T, coef)


def _links_matrix(links, m: int, lead: tuple) -> np.ndarray:
    """R = I - B with the regressions B (below the diagonal, order k = 1..m-1, j < k)."""
    r = np.broadcast_to(np.eye(m), lead + (m, m)).copy()
    pos = 0
    for k in range(m):
        for j in range(k):
            r[..., k, j] = -links[..., pos]
            pos += 1
    return r


def sequential_moments(mean, sd, links, m: int, xp=np, factor: bool = False):
    """(mu, Sigma) of the sequential regressions (module docstring); factor=True gives (mu, R^-1 diag(s)), the lower
    Cholesky factor of Sigma, instead (numpy only). links: the regressions in the order k = 1..m-1, j < k (empty or
    None for one marker). Works on numpy arrays with leading draw axes (xp=np) or builds a graph of the tensor module
    xp (pytensor.tensor; tensors without leading axes)."""
    if xp is np:
        mean, sd = (np.asarray(v, dtype=float) for v in (mean, sd))
        lead = mean.shape[:-1]
        links = np.zeros(lead + (0,)) if links is None else np.asarray(links, dtype=float)
        rinv = np.linalg.inv(_links_matrix(links, m, lead))
        mu = np.einsum("...kj,...j->...k", rinv, mean)
        if factor:
            return mu, rinv * sd[..., None, :]
        return mu, np.einsum("...kj,...j,...lj->...kl", rinv, sd**2, rinv)
    if factor:
        raise ValueError("factor=True is numpy only")
    r = xp.eye(m)
    pos = 0
    for k in range(m):
        for j in range(k):
            r = xp.set_subtensor(r[k, j], -links[pos])
            pos += 1
    rinv = xp.linalg.solve_triangular(r, xp.eye(m), lower=True, unit_diagonal=True)
    return xp.dot(rinv, mean), xp.dot(rinv * xp.sqr(sd)[None, :], rinv.T)


def sandwich(a, c) -> np.ndarray:
    """A C A': a (..., p, q), c (..., q, q) -> (..., p, p)."""
    return np.einsum("...im,...mn,...jn->...ij", a, c, a, optimize=True)


def score_covariance(z, s, sigma, loadings=None, marker_cov=None) -> np.ndarray:
    """Z (S + A C A') Z' + sigma^2 I (module docstring).

    z (V, q) or (..., V, q): the participant-effect design over the visits; s (..., q, q); sigma (...);
    loadings A (..., q, K) and marker_cov C (..., K, K), or None for no biomarker term. Returns (..., V, V).
    """
    s = np.asarray(s, dtype=float)
    if loadings is not None:
        s = s + sandwich(loadings, marker_cov)
    z = np.asarray(z, dtype=float)
    v = z.shape[-2]
    cov = np.einsum("...vi,...ij,...wj->...vw", z, s, z, optimize=True)
    return cov + np.asarray(sigma, dtype=float)[..., None, None] ** 2 * np.eye(v)


def duplication_matrix(n: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """D (n^2 x n(n+1)/2) with vec(S) = D vech(S) for symmetric S, and the packed (row, column) indices of vech."""
    rows, cols = tril_indices(n)
    d = np.zeros((n * n, len(rows)))
    for j, (a, b) in enumerate(zip(rows, cols)):
        d[a * n + b, j] = 1.0
        d[b * n + a, j] = 1.0
    return d, (rows, cols)


def conjugate_normal(prior_mean, prior_var, estimate, estimate_var) -> tuple[np.ndarray, np.ndarray]:
    """(posterior mean, posterior variance) of theta with theta ~ Normal(prior_mean, prior_var) and
    estimate ~ Normal(theta, estimate_var); broadcasts over every argument."""
    prior_var = np.asarray(prior_var, dtype=float)
    estimate_var = np.asarray(estimate_var, dtype=float)
    var = 1.0 / (1.0 / prior_var + 1.0 / estimate_var)
    return var * (np.asarray(prior_mean, dtype=float) / prior_var + np.asarray(estimate, dtype=float) / estimate_var), var
