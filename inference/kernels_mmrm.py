"""The fused log density of the Bayesian MMRM (models/mmrm.py) and of the retrieved-dropout MMRM (models/mmrm_retrieved.py):
log density and gradient as one numba function.

Why: the MMRM's PyTensor graph carries one Cholesky factor (and its gradient) per intermittent
missingness pattern; nutpie compiles it node by node (over a minute from empty caches) and each
gradient then pays a per-node overhead. Here the whole log density and its gradient are one pass,
compiled by numba once per machine whatever the trial: every size, datum and prior parameter is
read at run time from one float64 context array (as inference/kernels.py does for the trajectory
models), so the machine code does not depend on the data.

The maths. Participants are grouped by missingness pattern P (the post-baseline visits V_P they
attended, n_P of them). With residuals r_i = c_i - mu_i on V_P and Sigma_P = Sigma[V_P, V_P]:

    log p = sum_P [ -1/2 tr(Sigma_P^-1 R_P) - n_P/2 log|Sigma_P| - n_P |V_P|/2 log 2 pi ],  R_P = sum_i r_i r_i'

The mean is mu_iv = B[v, :] x_i with x_i = (z_i, w_i): z_i = (1, the active-arm indicators, the
centred baseline) has a coefficient per visit (A[v, :] = visit_mean, nac_visit_effect of each active
arm, baseline_slope), w_i = (the site's indicator when there are several sites, the covariates) a
coefficient gam common to every visit (the sum-to-zero site offsets, then covariate_effect), so
mu_i = A_V z_i + 1 s_i with s_i = gam' w_i. A pattern's likelihood needs only sums over its
participants, computed once (fused_layout): Scc = sum c_i c_i', Scz, Szz, Swc, Swz and Sww. With
s_i appended to z_i (sums of s_i c_i, s_i z_i and s_i^2 from Swc gam, Swz gam and gam' Sww gam) and
A~ = [A_V, 1]:

    Y_P = sum_i r_i (z_i, s_i)' = [Scz, Scs] - A~ [[Szz, Szs], [Ssz, Sss]],  R_P = Scc - A~ [Scz, Scs]' - Y_P A~'
    d log p / d A_V   = Sigma_P^-1 Y_P[:, z]                   (visit_mean, nac_visit_effect, baseline_slope by visit)
    d log p / d gam   = Swc h - Swz A_V' h - (1'h) Sww gam,  h = Sigma_P^-1 1   (site offsets and covariate effects)
    d log p / d Sigma = sum_P (Sigma_P^-1 R_P Sigma_P^-1 - n_P Sigma_P^-1) / 2, placed on V_P x V_P   (= G)
    d log p / d L     = 2 G L (its lower triangle), Sigma = L L'

so a pattern costs O(|V_P|^3) a gradient whatever its size.

The retrieved-dropout MMRM adds theta[arm, v] (off_treatment_effect) to the mean at the visits a participant attended
after stopping treatment early. Participants are grouped by pattern x off-treatment visits x arm (one group per pattern
where nobody is off treatment: the plain MMRM's grouping): in a group with off-treatment visits O and arm a the shift is
the constant delta = theta[a, O] on O, and as z_i starts with 1 it moves the intercept column, A_V[:, 0] + delta. The
group is a pattern of its own with that A_V, and d log p / d theta[a, O] = (Sigma_P^-1 Y_P)[O, 0], the group's part of
d log p / d visit_mean there. Below, "pattern" means such a group.

A pattern of few participants is cheaper participant by participant (u_i = Sigma_P^-1 r_i, the same terms with
sum_i u_i u_i' for Sigma_P^-1 R_P Sigma_P^-1): each pattern is computed the cheaper way (uses_sums; K_SUMS keeps the
sums, K_ROWS its participants' rows), and the context holds no other per-participant data.

Sigma_P^-1 comes from Omega_T = (Sigma[:T, :T])^-1, T the visits up to the pattern's last attended
one: Omega_T = Linv_T' Linv_T from the leading block of L^-1, grown row by row as the patterns
(sorted by T) need it; a drop-out pattern's Sigma_P^-1 is Omega_T itself, and a pattern that
missed the visits M before T has Sigma_P^-1 = Omega_OO - Omega_OM Omega_MM^-1 Omega_MO and
log|Sigma_P| = log|Sigma[:T, :T]| + log|Omega_MM|. Everything of a pattern is laid out on its first
T visits with zeros at the missed ones. The K_ROWS participants over the same T share Omega_T:
their Omega_T r_i and sum_i u_i u_i' are BLAS products in chunks (below OpenBLAS's size for threads).

No Cholesky factor is differentiated: the gradient goes through Sigma. Then PyMC's
LKJCholeskyCov density on the packed factor (the LKJ density of the correlation, the scale prior
on the SDs and their Jacobian, its normalising constant), the log transform of L's diagonal, the
location priors (a NormalMixture on one visit's visit_mean for a MAP prior) and the sum-to-zero site
offsets, exactly as PyMC writes them. tests/test_fused.py checks value, gradient and every stored
variable against PyTensor's at random points (drop-out and intermittent patterns, one site and
several, three arms, covariates, other priors; the sums, the rows and their mix); tests/test_retrieved_dropouts.py
the same with the off-treatment shift.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
from scipy.special import gammaln

from models.mmrm import OFF_EFFECT, arm_position, control_visit, mmrm_data
from models.priors import CONTROL_CHANGE

from .kernels import (
    LOG2PI,
    FusedLayout,
    Unsupported,
    _callback_status,
    _cholesky_inplace,
    _covariate_columns,
    _field,
    _jit,
    _mixture_at,
    _normal_prior,
    _pack,
    _prior_triple,
    _scale_prior,
    block_layout,
    constants,
    mixture_field,
    zerosum_density,
    zerosum_values,
)

KERNEL = "mmrm"
# prior slots (3 numbers each: family, p1, p2)
P_VMEAN, P_NAC, P_SLOPE, P_SITE, P_VSD, P_CORR, P_COV, P_OFF = constants(8)
N_PRIORS = 8
PRIOR_SLOTS = {
    P_VMEAN: ("visit_mean", "location"),
    P_NAC: ("nac_visit_effect", "location"),
    P_SLOPE: ("baseline_slope", "location"),
    P_SITE: ("site", "zerosum"),
    P_VSD: ("visit_sd", "scale"),
    P_COV: ("covariate_effect", "location"),
    P_OFF: (OFF_EFFECT, "location"),
}
X_BLOCKS = ("visit_mean", "nac_visit_effect", "baseline_slope", "site_effect_zerosum__", "visit_chol_cholesky-cov-packed__",
            "covariate_effect", OFF_EFFECT)
(X_VMEAN, X_NAC, X_SLOPE, X_SITE, X_CHOL, X_COV, X_OFF) = range(len(X_BLOCKS))
E_BLOCKS = ("site_effect", "visit_chol", "visit_sd", "visit_corr", "nac_effect", "placebo_change")
(E_SITE, E_CHOL, E_SD, E_CORR, E_NAC, E_PLACEBO) = range(len(E_BLOCKS))
# fields of the context array
(F_SIZES, F_XOFF, F_EOFF, F_PRIORS, F_PATTERNS, F_PATTERN_VISITS, F_STATS, F_CONTROL) = constants(8)
N_FIELDS = 8  # F_CONTROL: a NormalMixture prior on one visit's visit_mean (kernels.mixture_field; [-1] without)
# sizes (field F_SIZES): participants, sites (0 for one), visits, length of x, length of the expanded draw, weeks,
# patterns, observations, covariate columns, active arms
# per pattern (field F_PATTERNS): its kind (K_SUMS or K_ROWS), participants n_P, attended visits k, T (the visits up to
# its last attended one), visits missed before T, offset of those missed visits in F_PATTERN_VISITS, offset of its data
# in F_STATS, off-treatment visits (after the missed ones in F_PATTERN_VISITS), the arm of their shift. Everything of a
# pattern lives on its first T visits, zero at the missed ones.
PATTERN_WIDTH = 9
K_ROWS, K_SUMS = 0.0, 1.0
CHUNK = 200_000  # at most this many multiply-adds in one BLAS product (below OpenBLAS's threshold for threads)
BLAS_ROWS = 8  # fewer participants in a chunk: loops instead of BLAS products (whose call costs more than it saves)
ROW_HEAD = 4  # per participant of a K_ROWS pattern: active-arm position, 1.0 if in an active arm, centred baseline,
# site, then its covariates and its changes at the first T visits (0.0 at the missed ones)


def lkj_normalizing_constant(eta: float, n: int) -> float:
    """PyMC's normalising constant of the LKJ density (pymc.distributions.multivariate._lkj_normalizing_constant)."""
    if eta == 1:
        result = float(gammaln(2.0 * np.arange(1, int((n - 1) / 2) + 1)).sum())
        if n % 2 == 1:
            result += 0.25 * (n**2 - 1) * math.log(math.pi) - 0.25 * (n - 1) ** 2 * math.log(2.0) - (n - 1) * gammaln(int((n + 1) / 2))
        else:
            result += 0.25 * n * (n - 2) * math.log(math.pi) + 0.25 * (3 * n**2 - 4 * n) * math.log(2.0) + n * gammaln(n / 2) - (n - 1) * gammaln(n)
        return float(result)
    k = np.arange(1, n)
    return float(-(n - 1) * gammaln(eta + 0.5 * (n - 1)) + (0.5 * k * math.log(math.pi) + gammaln(eta + 0.5 * (n - 1 - k))).sum())


# ---------------------------------------------------------------- numba


@_jit
def _unpack_chol(x, o, nv):
    """Sigma's Cholesky factor L (nv x nv) from the packed unconstrained block (log diagonal)."""
    chol = np.zeros((nv, nv))
    p = o
    for i in range(nv):
        for j in range(i + 1):
            chol[i, j] = math.exp(x[p]) if j == i else x[p]
            p += 1
    return chol


@_jit
def _lower_inverse(c, k):
    inv = np.zeros((k, k))
    for j in range(k):
        inv[j, j] = 1.0 / c[j, j]
        for i in range(j + 1, k):
            s = 0.0
            for m in range(j, i):
                s -= c[i, m] * inv[m, j]
            inv[i, j] = s / c[i, i]
    return inv


@_jit
def _pattern_precision(omega, mis, t_last, mm, sinv, work):
    """Sigma_P^-1 embedded in the first T visits (zero rows and columns at the missed visits M) into sinv[:T, :T], from
    Omega = (Sigma[:T, :T])^-1: Omega - Omega_.M Omega_MM^-1 Omega_M. (= Omega_OO - Omega_OM Omega_MM^-1 Omega_MO on the
    attended visits O), for a pattern with missed visits (mm >= 1; without, Sigma_P^-1 is Omega itself). Returns
    1/2 log|Omega_MM| (nan if not positive definite)."""
    half_logdet = _missed_factor(omega, mis, t_last, mm, work)
    if not half_logdet == half_logdet:
        return math.nan
    for a in range(t_last):
        c = work[mm, a]
        for b in range(t_last):
            sinv[a, b] = omega[a, b] - c * work[mm, b]
    for m in range(1, mm):
        for a in range(t_last):
            c = work[mm + m, a]
            for b in range(t_last):
                sinv[a, b] -= c * work[mm + m, b]
    for m in range(mm):  # exactly zero at the missed visits
        for a in range(t_last):
            sinv[mis[m], a] = 0.0
            sinv[a, mis[m]] = 0.0
    return half_logdet


@_jit
def _sums_pattern(stats, so, tl, nq, n_s, n_cov, sp, amat, gam, d_amat, d_gam, uu, d_int):
    """A K_SUMS pattern: returns tr(Sigma_P^-1 R) and adds d/dA (to d_amat), d/d gam (to d_gam) and Sigma_P^-1 R Sigma_P^-1
    (to uu's lower triangle), R = sum_i r_i r_i' from the pattern's sums at stats[so:] and sp = Sigma_P^-1 (embedded);
    writes the pattern's own d/dA[:, 0] (the intercept column) into d_int[:T]."""
    nw, na = n_s + n_cov, nq + 1
    # Scc (T x T), Scz (T x nq), Szz (nq x nq), Swc (nw x T), Swz (nw x nq), then of Sww the site counts (n_s), the
    # site x covariate block (n_s x n_cov) and the covariate block (n_cov x n_cov)
    o = so
    scc = stats[o : o + tl * tl].reshape((tl, tl))
    o += tl * tl
    scz = stats[o : o + tl * nq].reshape((tl, nq))
    o += tl * nq
    szz = stats[o : o + nq * nq].reshape((nq, nq))
    o += nq * nq
    swc = stats[o : o + nw * tl].reshape((nw, tl))
    o += nw * tl
    swz = stats[o : o + nw * nq].reshape((nw, nq))
    o += nw * nq
    cnt = stats[o : o + n_s]
    o += n_s
    wsc = stats[o : o + n_s * n_cov].reshape((n_s, n_cov))
    o += n_s * n_cov
    wcc = stats[o : o + n_cov * n_cov].reshape((n_cov, n_cov))
    # gw = Sww gam: sum_i s_i w_i with s_i = gam' w_i, the part of the mean common to every visit
    gw = np.zeros(max(nw, 1))
    for j in range(n_s):
        gw[j] = cnt[j] * gam[j]
        for c in range(n_cov):
            g = wsc[j, c]
            gw[j] += g * gam[n_s + c]
            gw[n_s + c] += g * gam[j]
    for c in range(n_cov):
        for c2 in range(n_cov):
            gw[n_s + c] += wcc[c, c2] * gam[n_s + c2]
    # the sums with s_i appended to z_i: cz = [Scz, sum_i c_i s_i], zz = [[Szz, sum_i z_i s_i], [., sum_i s_i^2]]
    cz, zz, at = np.zeros((tl, na)), np.zeros((na, na)), np.empty((tl, na))
    for a in range(tl):
        for b in range(nq):
            cz[a, b] = scz[a, b]
            at[a, b] = amat[a, b]
        at[a, nq] = 1.0  # A~ = [A, 1]: the mean is A~ (z_i, s_i)
    for b in range(nq):
        for c in range(nq):
            zz[b, c] = szz[b, c]
    for j in range(nw):
        g = gam[j]
        zz[nq, nq] += g * gw[j]
        for a in range(tl):
            cz[a, nq] += g * swc[j, a]
        for b in range(nq):
            zz[b, nq] += g * swz[j, b]
    for b in range(nq):
        zz[nq, b] = zz[b, nq]
    # Y = sum_i r_i (z_i, s_i)' = cz - A~ zz;  R = sum_i r_i r_i' = Scc - A~ cz' - Y A~' (symmetric). Their rows at the
    # missed visits are not those sums and are never read: Sigma_P^-1 is zero there.
    y = np.empty((tl, na))
    for a in range(tl):
        for b in range(na):
            g = cz[a, b]
            for l in range(na):
                g -= at[a, l] * zz[l, b]
            y[a, b] = g
    rr = np.empty((tl, tl))
    for a in range(tl):
        for b in range(a + 1):
            g = scc[a, b]
            for l in range(na):
                g -= at[a, l] * cz[b, l] + y[a, l] * at[b, l]
            rr[a, b] = g
            rr[b, a] = g
    # tr(Sigma_P^-1 R); d/dA = Sigma_P^-1 Y[:, :nq]; with h = Sigma_P^-1 1 and sum_i r_i w_i' = Swc' - A Swz' - 1 gw',
    # d/d gam = Swc h - Swz A' h - (1'h) gw; Sigma_P^-1 R Sigma_P^-1 = sum_i u_i u_i'
    spc = np.empty((tl, tl))  # contiguous, for BLAS
    quad = 0.0
    h = np.zeros(tl)
    for a in range(tl):
        for m in range(tl):
            s_am = sp[a, m]
            spc[a, m] = s_am
            quad += s_am * rr[a, m]
            h[a] += s_am
    sy = np.dot(spc, y)
    for a in range(tl):
        d_int[a] = sy[a, 0]
        for b in range(nq):
            d_amat[a, b] += sy[a, b]
    h_a = np.zeros(nq)
    h1 = 0.0
    for a in range(tl):
        h1 += h[a]
        for b in range(nq):
            h_a[b] += h[a] * amat[a, b]
    for j in range(nw):
        g = -h1 * gw[j]
        for a in range(tl):
            g += h[a] * swc[j, a]
        for b in range(nq):
            g -= h_a[b] * swz[j, b]
        d_gam[j] += g
    srs = np.dot(np.dot(spc, rr), spc)
    for a in range(tl):
        for b in range(a + 1):
            uu[a, b] += srs[a, b]
    return quad


@_jit
def _missed_factor(omega, mis, t_last, mm, work):
    """For missed visits M before T: C^-1 Omega_M. into work[mm:2 mm, :T] with Omega_MM = C C' (C in work[:mm, :mm]), so
    that Sigma_P^-1 embedded = Omega - W'W with W = C^-1 Omega_M.; returns 1/2 log|Omega_MM| (nan if not positive
    definite): log|Sigma_P| = log|Sigma[:T, :T]| + log|Omega_MM|."""
    for a in range(mm):
        for b in range(mm):
            work[a, b] = omega[mis[a], mis[b]]
    logdet = _cholesky_inplace(work, mm)
    if not logdet == logdet:
        return math.nan
    for a in range(mm):  # forward substitution
        ra = mm + a
        for j in range(t_last):
            work[ra, j] = omega[mis[a], j]
        for m in range(a):
            c = work[a, m]
            for j in range(t_last):
                work[ra, j] -= c * work[mm + m, j]
        c = work[a, a]
        for j in range(t_last):
            work[ra, j] /= c
    return 0.5 * logdet


@_jit
def _matmul(a, b, out, n, k):
    """out[:n, :k] = a[:n, :k] b[:k, :k] (a, b C-contiguous): BLAS from BLAS_ROWS rows, loops below."""
    if n >= BLAS_ROWS:
        g = np.dot(a, b)
        for j in range(n):
            for c in range(k):
                out[j, c] = g[j, c]
        return
    for j in range(n):
        for c in range(k):
            out[j, c] = 0.0
        for m in range(k):
            am = a[j, m]
            for c in range(k):
                out[j, c] += am * b[m, c]


@_jit
def _add_gram(v, n, k, acc):
    """acc[:k, :k] += v[:n]' v[:n] (lower triangle): BLAS from BLAS_ROWS rows, loops below."""
    if n >= BLAS_ROWS:
        g = np.dot(v.T, v)
        for a in range(k):
            for b in range(a + 1):
                acc[a, b] += g[a, b]
        return
    for j in range(n):
        for a in range(k):
            va = v[j, a]
            for b in range(a + 1):
                acc[a, b] += va * v[j, b]


@_jit
def _rows_group(stats, patterns, pattern_visits, p0, p1, tl, nv, n_s, n_cov, omega, half_logdet_t, x, xo, site, grad, d_gam,
                u_full, sn, work):
    """The K_ROWS patterns p0..p1-1, all over the same first T visits, participant by participant; returns their log
    density (nan if a block of Sigma is not positive definite) and adds d/d mean to grad, d/d gam to d_gam,
    sum_i u_i u_i' to u_full and sum_P n_P Sigma_P^-1 to sn (lower triangle). u_i = Sigma_P^-1 r_i = Omega r_i - W'W r_i
    (r_i zero at the missed visits): Omega r_i for a chunk of participants at a time in one BLAS product (at most CHUNK
    multiply-adds, below OpenBLAS's threshold for threads; loops for fewer than BLAS_ROWS), as is sum_i u_i u_i'. A pattern
    with off-treatment visits has its shift in its visit means and adds its gradient to grad."""
    o_mean, o_nac, o_slope, o_cov, o_off = int(xo[X_VMEAN]), int(xo[X_NAC]), int(xo[X_SLOPE]), int(xo[X_COV]), int(xo[X_OFF])
    # views, so that indices from range() need no check for negative values
    x_mean, x_slope, x_cov = x[o_mean : o_mean + nv], x[o_slope : o_slope + nv], x[o_cov : o_cov + n_cov]
    g_mean, g_slope = grad[o_mean : o_mean + nv], grad[o_slope : o_slope + nv]
    width = ROW_HEAD + n_cov + tl
    om = np.empty((tl, tl))
    for a in range(tl):
        for b in range(tl):
            om[a, b] = omega[a, b]
    mis = np.empty(tl, dtype=np.int64)
    mean = np.empty(tl)  # a pattern's visit means, the off-treatment shift included
    max_rows = max(1, CHUNK // (tl * tl))
    lp = 0.0
    p = p0
    while p < p1:
        n_rows, n_missed = int(patterns[PATTERN_WIDTH * p + 1]), int(patterns[PATTERN_WIDTH * p + 4])
        q = p + 1
        while (q < p1 and n_rows + int(patterns[PATTERN_WIDTH * q + 1]) <= max_rows
               and n_missed + int(patterns[PATTERN_WIDTH * q + 4]) <= max_rows):
            n_rows += int(patterns[PATTERN_WIDTH * q + 1])
            n_missed += int(patterns[PATTERN_WIDTH * q + 4])
            q += 1
        # the rows u_i, then sqrt(n_P) W of each pattern: sum_i u_i u_i' - sum_P n_P Sigma_P^-1 = V'V - (sum_P n_P) Omega
        vmat = np.empty((n_rows + n_missed, tl))
        n_w = n_rows
        rbar = np.empty((n_rows, tl))  # r_i on the first T visits, zero at the missed ones
        i = 0
        for pp in range(p, q):
            row = PATTERN_WIDTH * pp
            n_p, mm, vo, so = int(patterns[row + 1]), int(patterns[row + 4]), int(patterns[row + 5]), int(patterns[row + 6])
            for v in range(tl):
                mean[v] = x_mean[v]
            for m in range(int(patterns[row + 7])):
                v = int(pattern_visits[vo + mm + m])
                mean[v] += x[o_off + int(patterns[row + 8]) * nv + v]
            for j in range(n_p):
                rec = stats[so + j * width : so + (j + 1) * width]  # active-arm position, in an active arm, centred
                # baseline, site, covariates, changes
                t, bi = rec[1], rec[2]
                o_arm = o_nac + int(rec[0]) * nv  # the participant's row of the arm x visit block
                x_arm = x[o_arm : o_arm + nv]
                shift = site[int(rec[3])]  # the site and the covariates: the same at every visit
                for c in range(n_cov):
                    shift += rec[ROW_HEAD + c] * x_cov[c]
                change = rec[ROW_HEAD + n_cov :]
                r = rbar[i]
                for v in range(tl):
                    r[v] = change[v] - (mean[v] + x_arm[v] * t + x_slope[v] * bi + shift)
                for m in range(mm):
                    rbar[i, int(pattern_visits[vo + m])] = 0.0
                i += 1
        _matmul(rbar, om, vmat, n_rows, tl)  # Omega r_i
        i = 0
        for pp in range(p, q):
            row = PATTERN_WIDTH * pp
            n_p, k, mm, vo, so = (int(patterns[row + 1]), int(patterns[row + 2]), int(patterns[row + 4]), int(patterns[row + 5]),
                                  int(patterns[row + 6]))
            n_off, o_shift = int(patterns[row + 7]), o_off + int(patterns[row + 8]) * nv
            half_logdet = half_logdet_t
            if mm > 0:
                for m in range(mm):
                    mis[m] = int(pattern_visits[vo + m])
                half_logdet += _missed_factor(omega, mis, tl, mm, work)
                if not half_logdet == half_logdet:
                    return math.nan
                root = math.sqrt(n_p)
                for m in range(mm):  # n_P Sigma_P^-1 = n_P Omega - n_P W'W
                    for a in range(tl):
                        vmat[n_w, a] = root * work[mm + m, a]
                    n_w += 1
            quad = 0.0
            for j in range(n_p):
                rec = stats[so + j * width : so + (j + 1) * width]
                t, bi, si = rec[1], rec[2], int(rec[3])
                o_arm = o_nac + int(rec[0]) * nv
                g_arm = grad[o_arm : o_arm + nv]
                r, ui = rbar[i], vmat[i]
                for m in range(mm):  # u -= W'W r
                    w = work[mm + m]
                    g = 0.0
                    for a in range(tl):
                        g += w[a] * r[a]
                    for a in range(tl):
                        ui[a] -= g * w[a]
                for m in range(mm):  # exactly zero at the missed visits
                    ui[mis[m]] = 0.0
                u_sum = 0.0
                for v in range(tl):
                    uv = ui[v]
                    quad += r[v] * uv
                    u_sum += uv
                    g_mean[v] += uv
                    g_arm[v] += uv * t
                    g_slope[v] += uv * bi
                for m in range(n_off):  # the off-treatment shift
                    v = int(pattern_visits[vo + mm + m])
                    grad[o_shift + v] += ui[v]
                if n_s > 0:
                    d_gam[si] += u_sum
                for c in range(n_cov):
                    d_gam[n_s + c] += u_sum * rec[ROW_HEAD + c]
                i += 1
            lp += -0.5 * quad - n_p * half_logdet - 0.5 * n_p * k * LOG2PI
        _add_gram(vmat, n_rows + n_missed, tl, u_full)
        for a in range(tl):
            for b in range(a + 1):
                sn[a, b] += n_rows * om[a, b]
        p = q
    return lp


def _logp_c(dim, x_, out_, logp_, ctx_):
    head = numba.carray(ctx_, (2,), np.float64)
    ctx = numba.carray(ctx_, (int(head[0]),), np.float64)
    n_x = int(dim)
    logp = numba.carray(logp_, (1,))
    logp[0] = math.nan
    if n_x != int(_field(ctx, F_SIZES)[3]):
        return -1
    x = numba.carray(x_, (n_x,))
    grad = numba.carray(out_, (n_x,))
    sizes = _field(ctx, F_SIZES)
    n_s, nv, n_pat, n_cov, n_arm = int(sizes[1]), int(sizes[2]), int(sizes[6]), int(sizes[8]), int(sizes[9])
    xo = _field(ctx, F_XOFF)
    pri = _field(ctx, F_PRIORS)
    patterns, pattern_visits, stats = _field(ctx, F_PATTERNS), _field(ctx, F_PATTERN_VISITS), _field(ctx, F_STATS)
    for j in range(grad.shape[0]):
        grad[j] = 0.0
    o_mean, o_nac, o_slope, o_site, o_chol = int(xo[X_VMEAN]), int(xo[X_NAC]), int(xo[X_SLOPE]), int(xo[X_SITE]), int(xo[X_CHOL])
    o_cov, o_off = int(xo[X_COV]), int(xo[X_OFF])
    nq, nw = 2 + n_arm, n_s + n_cov  # regressors with a coefficient per visit (1, the active arms, baseline); common ones
    chol = _unpack_chol(x, o_chol, nv)
    linv = _lower_inverse(chol, nv)
    site = zerosum_values(x, o_site, n_s)
    gam = np.zeros(max(nw, 1))  # the common coefficients: site offsets (several sites), then covariate effects
    for j in range(n_s):
        gam[j] = site[j]
    for j in range(n_cov):
        gam[n_s + j] = x[o_cov + j]
    amat = np.empty((nv, nq))  # B's visit-specific part: visit_mean, nac_visit_effect per active arm, baseline_slope
    for v in range(nv):
        amat[v, 0] = x[o_mean + v]
        for j in range(n_arm):
            amat[v, 1 + j] = x[o_nac + j * nv + v]
        amat[v, nq - 1] = x[o_slope + v]
    am = np.empty((nv, nq))
    d_int = np.empty(nv)
    d_gam = np.zeros(max(nw, 1))
    d_amat = np.zeros((nv, nq))
    uu = np.zeros((nv, nv))  # sum_i u_i u_i' of the K_SUMS patterns (lower triangle), u_i = Sigma_P^-1 r_i embedded
    u_full = np.zeros((nv, nv))  # the same of the K_ROWS participants
    sn = np.zeros((nv, nv))  # sum over patterns of n_P Sigma_P^-1 embedded (lower triangle)
    omega = np.zeros((nv, nv))  # (Sigma[:t, :t])^-1, grown row by row of L^-1 as the patterns' T increase
    t_done = 0
    half_logdet_t = 0.0
    lp = 0.0
    mis = np.empty(nv, dtype=np.int64)
    sinv, work = np.empty((nv, nv)), np.empty((2 * nv, nv))
    p = np.int64(0)  # not the literal 0: _rows_group would be compiled for p = 0 as well as for an int64 p
    while p < n_pat:
        row = PATTERN_WIDTH * p
        kind, n_p, k, tl = patterns[row], int(patterns[row + 1]), int(patterns[row + 2]), int(patterns[row + 3])
        mm, vo, so, n_off = int(patterns[row + 4]), int(patterns[row + 5]), int(patterns[row + 6]), int(patterns[row + 7])
        while t_done < tl:  # Omega of the leading t_done + 1 visits: add the outer product of row t_done of L^-1
            for a in range(t_done + 1):
                la = linv[t_done, a]
                for b in range(t_done + 1):
                    omega[a, b] += la * linv[t_done, b]
            half_logdet_t += math.log(chol[t_done, t_done])
            t_done += 1
        if kind == K_ROWS:  # the K_ROWS patterns over the same first T visits together
            q = p + 1
            while q < n_pat and patterns[PATTERN_WIDTH * q] == K_ROWS and int(patterns[PATTERN_WIDTH * q + 3]) == tl:
                q += 1
            lp += _rows_group(stats, patterns, pattern_visits, p, q, tl, nv, n_s, n_cov, omega, half_logdet_t, x, xo, site,
                              grad, d_gam, u_full, sn, work)
            if not lp == lp:  # logp holds NaN from the start
                return 4
            p = q
            continue
        if mm == 0:
            sp = omega  # a drop-out pattern: Sigma_P^-1 is the precision of the leading block
            half_logdet = half_logdet_t
        else:
            for j in range(mm):
                mis[j] = int(pattern_visits[vo + j])
            sp = sinv
            half_logdet = half_logdet_t + _pattern_precision(omega, mis, tl, mm, sinv, work)
            if not half_logdet == half_logdet:
                return 4
        o_shift = o_off + int(patterns[row + 8]) * nv
        for a in range(tl):  # the pattern's A: its off-treatment shift in the intercept column
            for b in range(nq):
                am[a, b] = amat[a, b]
        for m in range(n_off):
            v = int(pattern_visits[vo + mm + m])
            am[v, 0] += x[o_shift + v]
        quad = _sums_pattern(stats, so, tl, nq, n_s, n_cov, sp, am, gam, d_amat, d_gam, uu, d_int)
        for m in range(n_off):
            v = int(pattern_visits[vo + mm + m])
            grad[o_shift + v] += d_int[v]
        lp += -0.5 * quad - n_p * half_logdet - 0.5 * n_p * k * LOG2PI
        for a in range(tl):
            for b in range(a + 1):
                sn[a, b] += n_p * sp[a, b]
        p += 1
    for v in range(nv):
        grad[o_mean + v] += d_amat[v, 0]
        for j in range(n_arm):
            grad[o_nac + j * nv + v] += d_amat[v, 1 + j]
        grad[o_slope + v] += d_amat[v, nq - 1]
    g_sigma = np.empty((nv, nv))  # d log p / d Sigma = G
    for a in range(nv):
        for b in range(a + 1):
            g_sigma[a, b] = 0.5 * (uu[a, b] + u_full[a, b] - sn[a, b])
            g_sigma[b, a] = g_sigma[a, b]
    d_site = np.zeros(max(n_s, 1))
    for j in range(n_s):
        d_site[j] = d_gam[j]
    for j in range(n_cov):
        grad[o_cov + j] += d_gam[n_s + j]

    # d/dL = 2 G L, lower triangle; then PyMC's LKJCholeskyCov density on L and the log-diagonal transform
    g_chol = 2.0 * (g_sigma @ chol)
    eta = pri[3 * P_CORR + 1]
    lp += pri[3 * P_CORR + 2]
    p = o_chol
    for i in range(nv):
        ss = 0.0
        for j in range(i + 1):
            ss += chol[i, j] * chol[i, j]
        sd = math.sqrt(ss)
        f, df = _scale_prior(pri, P_VSD, sd)
        a_i = 2.0 * eta - 2.0 + nv - i
        lp += a_i * (math.log(chol[i, i]) - math.log(sd)) - i * math.log(sd) + f + x[p + i]
        d_sd = -(a_i + i) / sd + df  # d/d sd of the terms through sd
        for j in range(i + 1):
            g = g_chol[i, j] + d_sd * chol[i, j] / sd
            if j == i:
                grad[p + j] += (g + a_i / chol[i, i]) * chol[i, i] + 1.0
            else:
                grad[p + j] += g
        p += i + 1

    control = _field(ctx, F_CONTROL)
    for v in range(nv):
        if v == int(control[0]):  # the MAP prior on the control arm's change at the end of treatment
            g, dg = _mixture_at(control[1:], x[o_mean + v])
        else:
            g, dg = _normal_prior(pri, P_VMEAN, x[o_mean + v])
        lp += g
        grad[o_mean + v] += dg
        for a in range(n_arm):
            g, dg = _normal_prior(pri, P_NAC, x[o_nac + a * nv + v])
            lp += g
            grad[o_nac + a * nv + v] += dg
        g, dg = _normal_prior(pri, P_SLOPE, x[o_slope + v])
        lp += g
        grad[o_slope + v] += dg
    for j in range(n_cov):
        g, dg = _normal_prior(pri, P_COV, x[o_cov + j])
        lp += g
        grad[o_cov + j] += dg
    if o_off >= 0:  # the off-treatment shifts, arm x visit
        for j in range((n_arm + 1) * nv):
            g, dg = _normal_prior(pri, P_OFF, x[o_off + j])
            lp += g
            grad[o_off + j] += dg

    if o_site >= 0:
        lp += zerosum_density(site, d_site, pri[3 * P_SITE + 1], n_s, o_site, grad)
    return _callback_status(lp, grad, n_x, logp)


def _expand_c(dim, expanded, x_, out_, ctx_):
    head = numba.carray(ctx_, (2,), np.float64)
    ctx = numba.carray(ctx_, (int(head[0]),), np.float64)
    if int(dim) != int(_field(ctx, F_SIZES)[3]) or int(expanded) != int(_field(ctx, F_SIZES)[4]):
        return -1
    x = numba.carray(x_, (int(dim),))
    out = numba.carray(out_, (int(expanded),))
    sizes = _field(ctx, F_SIZES)
    n_s, nv, n_dim, n_arm = int(sizes[1]), int(sizes[2]), int(sizes[3]), int(sizes[9])
    xo, eo = _field(ctx, F_XOFF), _field(ctx, F_EOFF)
    for j in range(n_dim):
        out[j] = x[j]
    o_chol = int(xo[X_CHOL])
    chol = _unpack_chol(x, o_chol, nv)
    if eo[E_SITE] >= 0:
        site = zerosum_values(x, int(xo[X_SITE]), n_s)
        for j in range(n_s):
            out[int(eo[E_SITE]) + j] = site[j]
    if eo[E_CHOL] >= 0:
        p = int(eo[E_CHOL])
        for i in range(nv):
            for j in range(i + 1):
                out[p] = chol[i, j]
                p += 1
    sigma = chol @ chol.T
    sd = np.empty(nv)
    for i in range(nv):
        sd[i] = math.sqrt(sigma[i, i])
    if eo[E_SD] >= 0:
        for i in range(nv):
            out[int(eo[E_SD]) + i] = sd[i]
    if eo[E_CORR] >= 0:
        for i in range(nv):
            for j in range(nv):
                out[int(eo[E_CORR]) + i * nv + j] = sigma[i, j] / (sd[i] * sd[j])
    for w in range(nv + 1):
        if eo[E_NAC] >= 0:  # active_arm x week
            for a in range(n_arm):
                out[int(eo[E_NAC]) + a * (nv + 1) + w] = 0.0 if w == 0 else x[int(xo[X_NAC]) + a * nv + w - 1]
        if eo[E_PLACEBO] >= 0:
            out[int(eo[E_PLACEBO]) + w] = 0.0 if w == 0 else x[int(xo[X_VMEAN]) + w - 1]
    return 0


# ---------------------------------------------------------------- the context (Python)


def uses_sums(n_p: int, t_last: int, n_q: int, n_w: int) -> bool:
    """Whether a pattern of n_p participants over its first t_last visits is cheaper from its sums (about 1.5 T^3 +
    2 T^2 n_q + (T + n_q) n_w operations a gradient) than participant by participant (about n_p (1.5 T^2 + 6 T + n_w));
    an operation of the sums counts twice (measured: the participant by participant loop runs faster per operation)."""
    t = t_last
    return n_p * (1.5 * t * t + 6 * t + n_w) > 2.0 * (1.5 * t**3 + 2 * t * t * n_q + (t + n_q) * (n_w + n_q))


def _groups(d, arm, off: bool) -> list:
    """(attended visits, off-treatment visits, arm of the shift (-1 without), members, changes on the first T visits) per
    pattern x off-treatment visits x arm (off: with the shift; else, and where nobody is off treatment, one per pattern)."""
    out = []
    for vis, start, n_p, _ in d.patterns:
        k, t_last = len(vis), int(vis[-1]) + 1
        members = d.obs_row[start : start + n_p * k : k]
        c = np.zeros((n_p, t_last))
        c[:, vis] = d.obs_change[start : start + n_p * k].reshape(n_p, k)
        flags = d.obs_off[start : start + n_p * k].reshape(n_p, k) > 0 if off else np.zeros((n_p, k), dtype=bool)
        keys = [(tuple(int(v) for v in vis[f]), int(a) if f.any() else -1) for f, a in zip(flags, arm[members])]
        for key in sorted(set(keys)):
            sel = np.array([key == other for other in keys])
            out.append((vis, *key, members, c) if sel.all() else (vis, *key, members[sel], c[sel]))
    return out


def _pattern_data(d, position, active, site_idx, covariates, n_s: int, n_arm: int, arm, off: bool):
    """Per pattern (fields F_PATTERNS, F_PATTERN_VISITS, F_STATS; with the off-treatment shift, per pattern x off-treatment
    visits x arm: _groups), ordered by T (the visits up to its last attended one) and kind: its sums (K_SUMS) or its
    participants' rows (K_ROWS), whichever a gradient computes faster (uses_sums), on its first T visits with zeros at the
    missed ones."""
    n_cov = covariates.shape[1]
    n_q, n_w = 2 + n_arm, n_s + n_cov
    z_all = np.zeros((len(position), n_q))  # 1, the active arm's indicator, the centred baseline
    z_all[:, 0] = 1.0
    z_all[np.flatnonzero(active > 0), 1 + position[active > 0]] = 1.0
    z_all[:, n_q - 1] = d.baseline - d.baseline_center
    w_all = np.concatenate([np.eye(n_s)[site_idx] if n_s else np.zeros((len(position), 0)), covariates], axis=1)
    rows, visits, blocks, offset = [], [], [], 0
    order = sorted(_groups(d, arm, off), key=lambda q: (int(q[0][-1]), uses_sums(len(q[3]), int(q[0][-1]) + 1, n_q, n_w), -len(q[0]),
                                                        tuple(q[0]), q[1], q[2]))
    for vis, off_visits, shifted, members, c in order:  # by T, then the K_ROWS patterns of the same T together
        n_p, k, t_last = len(members), len(vis), int(vis[-1]) + 1
        missed = np.setdiff1d(np.arange(t_last), vis)
        if uses_sums(n_p, t_last, n_q, n_w):
            z, w = z_all[members], w_all[members]
            ws, wc = w[:, :n_s], w[:, n_s:]
            block = [c.T @ c, c.T @ z, z.T @ z, w.T @ c, w.T @ z, ws.sum(axis=0), ws.T @ wc, wc.T @ wc]
            kind = K_SUMS
        else:
            head = np.column_stack([position[members], active[members], z_all[members, n_q - 1], site_idx[members]])
            block = [np.concatenate([head, covariates[members], c], axis=1)]
            kind = K_ROWS
        block = np.concatenate([np.ravel(b) for b in block])
        rows += [kind, n_p, k, t_last, len(missed), len(visits), offset, len(off_visits), shifted]
        visits += [int(v) for v in missed] + list(off_visits)
        blocks.append(block)
        offset += block.size
    return rows, visits, np.concatenate(blocks), len(order)


def fused_layout(model, design, priors, shapes: dict) -> FusedLayout:
    """Layout and data of an MMRM `model` (models/mmrm.build_mmrm, with or without the off-treatment shift) built from
    `design` with `priors`.

    Raises Unsupported when the model is not one this module computes exactly.
    """
    names, slices, shape_list, xoff, eoff, n_dim, pos = block_layout(model, shapes, X_BLOCKS, E_BLOCKS)
    joined = names[: len(model.free_RVs)]
    if "visit_chol_cholesky-cov-packed__" not in joined:
        raise Unsupported(f"not the MMRM's free variables: {joined}")
    d = mmrm_data(design)
    nv = len(d.visits)
    n_sites = len(design.sites)
    n_arm = design.n_active
    expected = {"visit_mean": nv, "nac_visit_effect": n_arm * nv, "baseline_slope": nv, "visit_chol_cholesky-cov-packed__": nv * (nv + 1) // 2}
    if n_sites >= 2:
        expected["site_effect_zerosum__"] = n_sites - 1
    with_covariates = "covariate_effect" in joined
    columns = _covariate_columns(model, design) if with_covariates else []
    if with_covariates:
        expected["covariate_effect"] = len(columns)
    with_off = OFF_EFFECT in joined
    if with_off:
        expected[OFF_EFFECT] = (n_arm + 1) * nv
        if d.obs_off is None:
            raise Unsupported(f"'{OFF_EFFECT}' without the design's off_treatment flags")
    found = {name: sl.stop - sl.start for name, sl in zip(names[: len(joined)], slices)}
    if found != expected:
        raise Unsupported(f"free variables {found} are not the expected {expected}")

    pri = np.zeros(3 * N_PRIORS)
    for slot, (key, kind) in PRIOR_SLOTS.items():
        if (slot == P_SITE and n_sites < 2) or (slot == P_COV and not with_covariates) or (slot == P_OFF and not with_off):
            continue
        pri[3 * slot : 3 * slot + 3] = _prior_triple(priors[key], kind)
    corr = priors["visit_corr"]
    if corr.dist != "LKJ" or set(corr.params) != {"eta"}:
        raise Unsupported(f"prior {corr.describe()} is not one the fused function computes")
    eta = float(corr.params["eta"])
    pri[3 * P_CORR : 3 * P_CORR + 3] = (0.0, eta, lkj_normalizing_constant(eta, nv))

    site_idx = design.site_idx[d.rows] if n_sites >= 2 else np.zeros(len(d.rows), dtype=int)
    position, active = arm_position(design, d.rows)
    covariates = design.covariates[np.ix_(d.rows, columns)] if len(columns) else np.zeros((len(d.rows), 0))
    pattern_rows, pattern_visits, stats, n_patterns = _pattern_data(d, position, active, site_idx, covariates,
                                                                    n_sites if n_sites >= 2 else 0, n_arm, design.arm_idx[d.rows], with_off)
    sizes = np.array([
        len(d.rows), n_sites if n_sites >= 2 else 0, nv, n_dim, pos, nv + 1, n_patterns, len(d.obs_change), len(columns),
        n_arm,
    ])
    fields = [
        sizes, xoff, eoff, pri, np.array(pattern_rows, dtype=float), np.array(pattern_visits, dtype=float), stats,
        mixture_field(priors.get(CONTROL_CHANGE), control_visit(design, d) if CONTROL_CHANGE in priors else -1),
    ]
    assert len(fields) == N_FIELDS
    return FusedLayout(ctx=_pack(fields), n_dim=n_dim, n_expanded=pos, shape_info=(names, slices, shape_list), kernel=KERNEL)


@lru_cache(maxsize=1)
def source_key() -> str:
    """Hash of this file, the module it builds on and the numba version: the compiled functions' cache key."""
    import hashlib
    from pathlib import Path

    from . import kernels

    return hashlib.sha256(Path(__file__).read_bytes() + kernels.source_key().encode()).hexdigest()[:24]
