"""The fused log density of the Bayesian MMRM (models/mmrm.py): log density and gradient as one numba function.

Why: the MMRM's PyTensor graph carries one Cholesky factor (and its gradient) per intermittent
missingness pattern; nutpie compiles it node by node (over a minute from empty caches) and each
gradient then pays a per-node overhead. Here the whole log density and its gradient are one pass,
compiled by numba once per machine whatever the trial: every size, datum and prior parameter is
read at run time from one float64 context array (as inference/kernels.py does for the trajectory
models), so the machine code does not depend on the data.

The maths. Participants are grouped by missingness pattern P (the post-baseline visits V_P they
attended, n_P of them). With residuals r_i = c_i - mu_i on V_P and Sigma_P = Sigma[V_P, V_P]:

    log p = sum_P [ -1/2 sum_i r_i' Sigma_P^-1 r_i - n_P/2 log|Sigma_P| - n_P |V_P|/2 log 2 pi ]

- a drop-out pattern (V_P a leading block of the schedule) factors Sigma_P by the leading block of
  Sigma's own Cholesky factor L; an intermittent pattern factors its block once per evaluation;
- d log p / d mu_i = Sigma_P^-1 r_i = u_i, which the mean's coefficients collect; the arm x visit block
  holds nac_visit_effect row by row (active arm a, visit v at a * nv + v), and a participant adds
  x[a * nv + v] * t with t = 1.0 in active arm a and t = 0.0 (a = 0) in the control arm;
- d log p / d Sigma (entries taken as free) = sum_P embed( (sum_i u_i u_i' - n_P Sigma_P^-1) / 2 ) = G,
  and with Sigma = L L', d log p / d L = 2 G L (its lower triangle).

No Cholesky factor is differentiated: the gradient goes through Sigma directly. Then PyMC's
LKJCholeskyCov density on the packed factor (the LKJ density of the correlation, the scale prior
on the SDs and their Jacobian, its normalising constant), the log transform of L's diagonal, the
location priors and the sum-to-zero site offsets, exactly as PyMC writes them. Baseline covariates
(data) add their effects `covariate_effect` to every visit's mean, like the site offset.
tests/test_fused.py checks value, gradient and every stored variable against PyTensor's at random
points (drop-out and intermittent patterns, one site and several, other priors).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numba
import numpy as np
from scipy.special import gammaln

from models.mmrm import arm_position, control_visit, mmrm_data
from models.priors import CONTROL_CHANGE

from .kernels import (
    LOG2PI,
    FusedLayout,
    Unsupported,
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
    mixture_field,
    zerosum_density,
    zerosum_values,
)

KERNEL = "mmrm"
# prior slots (3 numbers each: family, p1, p2)
P_VMEAN, P_NAC, P_SLOPE, P_SITE, P_VSD, P_CORR, P_COV = range(7)
N_PRIORS = 7
PRIOR_SLOTS = {
    P_VMEAN: ("visit_mean", "location"),
    P_NAC: ("nac_visit_effect", "location"),
    P_SLOPE: ("baseline_slope", "location"),
    P_SITE: ("site", "zerosum"),
    P_VSD: ("visit_sd", "scale"),
    P_COV: ("covariate_effect", "location"),
}
X_BLOCKS = ("visit_mean", "nac_visit_effect", "baseline_slope", "site_effect_zerosum__", "visit_chol_cholesky-cov-packed__",
            "covariate_effect")
(X_VMEAN, X_NAC, X_SLOPE, X_SITE, X_CHOL, X_COV) = range(len(X_BLOCKS))
E_BLOCKS = ("site_effect", "visit_chol", "visit_sd", "visit_corr", "nac_effect", "placebo_change")
(E_SITE, E_CHOL, E_SD, E_CORR, E_NAC, E_PLACEBO) = range(len(E_BLOCKS))
# fields of the context array
(F_SIZES, F_XOFF, F_EOFF, F_PRIORS, F_TREATED, F_BASE, F_SITE_IDX, F_PATTERNS, F_PATTERN_VISITS, F_OBS_ROW, F_OBS_CHANGE,
 F_COV, F_ARM, F_CONTROL) = range(14)
N_FIELDS = 14  # F_CONTROL: a NormalMixture prior on one visit's visit_mean (kernels.mixture_field; [-1] without); F_COV: the covariate columns adjusted for, included participant x covariate (row-major; empty without)
# F_TREATED: per included participant 1.0 in an active arm, 0.0 in the control arm; F_ARM: the position of its
# active arm among the active arms (0 for a control participant)
# sizes (field F_SIZES): participants, sites (0 for one), visits, length of x, length of the expanded draw, weeks,
# patterns, observations, covariate columns, active arms
PATTERN_WIDTH = 5  # per pattern: start in the long arrays, participants, visits, is a drop-out pattern, offset of its visits


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
def _cholesky_inverse(a, k):
    """The inverse of the Cholesky factor of the k x k leading block of a (lower), and log|a|/2; nan if not positive definite."""
    c = a[:k, :k].copy()
    logdet = _cholesky_inplace(c, k)  # the factor in c's lower triangle (its upper triangle is not read)
    if np.isnan(logdet):
        return np.full((k, k), np.nan), np.nan
    return _lower_inverse(c, k), 0.5 * logdet


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
def logp_grad(x, ctx, grad):
    """Log density of the MMRM at unconstrained x; its gradient into grad."""
    sizes = _field(ctx, F_SIZES)
    n_s, nv, n_pat, n_cov, n_arm = int(sizes[1]), int(sizes[2]), int(sizes[6]), int(sizes[8]), int(sizes[9])
    xo = _field(ctx, F_XOFF)
    pri = _field(ctx, F_PRIORS)
    cov = _field(ctx, F_COV)
    treated, arm, base, site_idx = _field(ctx, F_TREATED), _field(ctx, F_ARM), _field(ctx, F_BASE), _field(ctx, F_SITE_IDX)
    patterns, pattern_visits = _field(ctx, F_PATTERNS), _field(ctx, F_PATTERN_VISITS)
    obs_row, obs_change = _field(ctx, F_OBS_ROW), _field(ctx, F_OBS_CHANGE)
    for j in range(grad.shape[0]):
        grad[j] = 0.0
    o_mean, o_nac, o_slope, o_site, o_chol = int(xo[X_VMEAN]), int(xo[X_NAC]), int(xo[X_SLOPE]), int(xo[X_SITE]), int(xo[X_CHOL])
    o_cov = int(xo[X_COV])
    chol = _unpack_chol(x, o_chol, nv)
    sigma = chol @ chol.T
    site = zerosum_values(x, o_site, n_s)
    d_site = np.zeros(max(n_s, 1))
    g_sigma = np.zeros((nv, nv))
    lp = 0.0
    block = np.empty((nv, nv))
    vis = np.empty(nv, dtype=np.int64)
    r = np.empty(nv)
    u = np.empty(nv)
    for p in range(n_pat):
        start, n_p, k = int(patterns[PATTERN_WIDTH * p]), int(patterns[PATTERN_WIDTH * p + 1]), int(patterns[PATTERN_WIDTH * p + 2])
        is_prefix, vo = patterns[PATTERN_WIDTH * p + 3] > 0.5, int(patterns[PATTERN_WIDTH * p + 4])
        for j in range(k):
            vis[j] = int(pattern_visits[vo + j])
        if is_prefix:  # the leading block of Sigma is factored by the leading block of L
            half_logdet = 0.0
            for j in range(k):
                half_logdet += math.log(chol[j, j])
            cinv = _lower_inverse(chol, k)
        else:
            for a in range(k):
                for b in range(k):
                    block[a, b] = sigma[vis[a], vis[b]]
            cinv, half_logdet = _cholesky_inverse(block, k)
            if not half_logdet == half_logdet:
                return np.nan
        # Sigma_P^-1 = Cinv' Cinv
        sinv = np.zeros((k, k))
        for a in range(k):
            for b in range(k):
                s = 0.0
                for m in range(max(a, b), k):
                    s += cinv[m, a] * cinv[m, b]
                sinv[a, b] = s
        uu = np.zeros((k, k))
        quad = 0.0
        for q in range(n_p):
            s0 = start + q * k
            i = int(obs_row[s0])
            t, bi, si = treated[i], base[i], int(site_idx[i])
            o_arm = o_nac + int(arm[i]) * nv  # the participant's row of the arm x visit block
            shift = site[si]  # the site and the covariates: the same at every visit
            for j in range(n_cov):
                shift += cov[i * n_cov + j] * x[o_cov + j]
            for j in range(k):
                v = vis[j]
                r[j] = obs_change[s0 + j] - (x[o_mean + v] + x[o_arm + v] * t + x[o_slope + v] * bi + shift)
            for a in range(k):
                s = 0.0
                for b in range(k):
                    s += sinv[a, b] * r[b]
                u[a] = s
                quad += r[a] * s
            u_sum = 0.0
            for a in range(k):
                v = vis[a]
                ua = u[a]
                u_sum += ua
                grad[o_mean + v] += ua
                grad[o_arm + v] += ua * t
                grad[o_slope + v] += ua * bi
                d_site[si] += ua
                for b in range(k):
                    uu[a, b] += ua * u[b]
            for j in range(n_cov):
                grad[o_cov + j] += u_sum * cov[i * n_cov + j]
        lp += -0.5 * quad - n_p * half_logdet - 0.5 * n_p * k * LOG2PI
        for a in range(k):
            for b in range(k):
                g_sigma[vis[a], vis[b]] += 0.5 * (uu[a, b] - n_p * sinv[a, b])

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

    if o_site >= 0:
        lp += zerosum_density(site, d_site, pri[3 * P_SITE + 1], n_s, o_site, grad)
    return lp


@_jit
def expand(x, ctx, out):
    """Write the draw's stored variables: x itself, then each block at its offset in ctx."""
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


def _logp_c(dim, x_, out_, logp_, ctx_):
    head = numba.carray(ctx_, (2,), np.float64)
    ctx = numba.carray(ctx_, (int(head[0]),), np.float64)
    n = int(dim)
    if n != int(_field(ctx, F_SIZES)[3]):
        return -1
    x = numba.carray(x_, (n,))
    out = numba.carray(out_, (n,))
    logp = numba.carray(logp_, (1,))
    try:
        value = logp_grad(x, ctx, out)
    except Exception:  # noqa: BLE001 - reported to the sampler as a failed evaluation
        return 1
    logp[0] = value
    if not np.all(np.isfinite(out)):
        return 3
    if not np.isfinite(value):
        return 4
    return 0


def _expand_c(dim, expanded, x_, out_, ctx_):
    head = numba.carray(ctx_, (2,), np.float64)
    ctx = numba.carray(ctx_, (int(head[0]),), np.float64)
    sizes = _field(ctx, F_SIZES)
    if int(dim) != int(sizes[3]) or int(expanded) != int(sizes[4]):
        return -1
    x = numba.carray(x_, (int(dim),))
    out = numba.carray(out_, (int(expanded),))
    try:
        expand(x, ctx, out)
    except Exception:  # noqa: BLE001
        return -2
    return 0


# ---------------------------------------------------------------- the context (Python)


def fused_layout(model, design, priors, shapes: dict) -> FusedLayout:
    """Layout and data of an MMRM `model` (models/mmrm.build_mmrm) built from `design` with `priors`.

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
    found = {name: sl.stop - sl.start for name, sl in zip(names[: len(joined)], slices)}
    if found != expected:
        raise Unsupported(f"free variables {found} are not the expected {expected}")

    pri = np.zeros(3 * N_PRIORS)
    for slot, (key, kind) in PRIOR_SLOTS.items():
        if (slot == P_SITE and n_sites < 2) or (slot == P_COV and not with_covariates):
            continue
        pri[3 * slot : 3 * slot + 3] = _prior_triple(priors[key], kind)
    corr = priors["visit_corr"]
    if corr.dist != "LKJ" or set(corr.params) != {"eta"}:
        raise Unsupported(f"prior {corr.describe()} is not one the fused function computes")
    eta = float(corr.params["eta"])
    pri[3 * P_CORR : 3 * P_CORR + 3] = (0.0, eta, lkj_normalizing_constant(eta, nv))

    pattern_rows, pattern_visits = [], []
    for vis, start, n_p, is_prefix in d.patterns:
        pattern_rows += [start, n_p, len(vis), float(is_prefix), len(pattern_visits)]
        pattern_visits += [int(v) for v in vis]
    site_idx = design.site_idx[d.rows] if n_sites >= 2 else np.zeros(len(d.rows))
    sizes = np.array([
        len(d.rows), n_sites if n_sites >= 2 else 0, nv, n_dim, pos, nv + 1, len(d.patterns), len(d.obs_change), len(columns),
        n_arm,
    ])
    position, active = arm_position(design, d.rows)
    fields = [
        sizes, xoff, eoff, pri, active, d.baseline - d.baseline_center, site_idx,
        np.array(pattern_rows, dtype=float), np.array(pattern_visits, dtype=float), d.obs_row, d.obs_change,
        design.covariates[np.ix_(d.rows, columns)] if len(columns) else np.zeros(0), position.astype(float),
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
