"""The fused log density: the marginal trajectory models' log density and gradient as one numba function.

Why: nutpie compiles a PyMC model by generating one numba function per node of the
log-density-plus-gradient graph (about 450 for the marginal headline model, models/marginal.py).
On a machine that has never compiled them that takes over a minute, and every gradient then pays
a per-node overhead. The marginal model has a fixed form, so its log density and gradient are
written out here in one pass over participants (reverse mode by hand), compiled by numba once per
machine whatever the dataset: every size, datum and prior parameter is read at run time from one
float64 context array, so the machine code does not depend on the trial.

What is computed is exactly PyMC's log density of the marginal model on its unconstrained space
(transforms, Jacobians and normalising constants included): the latent biomarker block (observed,
missing and censored entries, models/marker_block.py), the priors, the LKJ Cholesky covariance,
the sum-to-zero site offsets and the closed-form marginal likelihood. tests/test_fused.py checks
value, gradient and stored variables against PyTensor's own at random points on several designs
and priors (constants agree to float32 rounding of PyMC's log prior scales; gradients to ~1e-13).
Every member of the trajectory family is the same function with its blocks present or absent:
biomarkers (headline, moderation), the arms (all but null), the biomarker x arm term of the
moderation model (inside each participant's treatment-phase change), the curvature of
treatment_curved (a 4th fixed coefficient per participant, on q = 4 t1 (1 - t1), with its own
sufficient statistics) and the baseline covariates (data, like the completed markers: their
effects `covariate_level` and `covariate_change` add to each participant's level and
treatment-phase change).

Any number of active arms: the arm blocks hold one set of terms per active arm, arm by arm
(`nac_change` active_arm x phase, so arm a's phase p is x[o_nac + a * n_phases + p];
`nac_curvature` active_arm; `nac_marker_moderation` active_arm x marker), and each participant's arm
index (0 control, a for the a-th active arm) picks their own arm's terms. A participant's terms are
added times their arm indicator, 1 (0 for a control participant, with the first arm's terms), and
the gradient of each arm's terms is summed over participants in the order of the participants, so
a two-arm trial (one active arm) is computed with exactly the operations of a one-arm formulation.

The PyMC model still supplies the variable names, dims, transforms, initial points and the prior
predictive: only the two functions nutpie calls (log density with gradient, and the expansion of a
draw into the stored variables) change. Priors outside the supported families (locations: Normal,
with one mean and SD per phase allowed for `time_change` and `nac_change`, scalars elsewhere;
scales: HalfNormal, Exponential, Gamma, HalfCauchy) or a model this module does not recognise make
`fused_layout` raise Unsupported, and inference/compile.py compiles the graph instead. The C
callbacks (`_logp_c`, `_expand_c`) are turned into numba cfuncs, cached on disk, and handed to
nutpie by inference/compile.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numba
import numpy as np

from models.marginal import fixed_terms, visit_stats
from models.marker_block import integrated_rows, latent_missing
from models.priors import CONTROL_CHANGE
from models.trajectory import curve_basis, visit_columns

KERNEL = "trajectory"

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
LOG2PI = math.log(2.0 * math.pi)
SQRT2 = math.sqrt(2.0)
LOGCDF_SWITCH = -20.0  # as models/marker_block.py
# False in the callbacks' variant for models without baseline markers (`callback_functions`): numba removes the
# branches on it before typing, so that variant compiles none of the marker block (half the compile time)
MARKERS = True


def constants(n: int) -> tuple:
    """0, 1, ..., n - 1 as numpy integers: the constants passed to compiled functions (a context field, a prior slot).

    numba compiles a function once per argument types, and types a Python int constant by its value, so
    `_field(ctx, F_ARM)` and `_field(ctx, F_XX)` would be two compiled functions (26 of `_field` alone). A numpy
    integer is typed int64 whatever its value: each helper is compiled once."""
    return tuple(np.int64(k) for k in range(n))


# prior families
NORMAL, HALFNORMAL, EXPONENTIAL, GAMMA, HALFCAUCHY, ZEROSUM, LKJ = 1, 2, 3, 4, 5, 6, 7
# prior slots (3 numbers each: family, p1, p2)
(P_INTERCEPT, P_TIME, P_NAC, P_PROG, P_MOD, P_SITE, P_PSD, P_CORR, P_RESID, P_MMEAN, P_MSD, P_MREG,
 P_NMOD, P_TCURV, P_NCURV, P_CLEVEL, P_CCHANGE) = constants(17)
N_PRIORS = 17
# blocks of the unconstrained vector (value variables of the PyMC model)
X_BLOCKS = (
    "marker_mean",
    "marker_sd_log__",
    "marker_regression",
    "marker_missing_std",
    "marker_censored_u_interval__",
    "intercept",
    "time_change",
    "nac_change",
    "marker_prognostic",
    "marker_moderation",
    "site_effect_zerosum__",
    "participant_chol_cholesky-cov-packed__",
    "residual_sd_log__",
    "nac_marker_moderation",
    "time_curvature",
    "nac_curvature",
    "covariate_level",
    "covariate_change",
)
(X_MMEAN, X_MSD, X_MREG, X_MISS, X_CENS, X_ICPT, X_TIME, X_NAC, X_PROG, X_MOD, X_SITE, X_CHOL, X_RESID, X_NMOD, X_TCURV,
 X_NCURV, X_CLEVEL, X_CCHANGE) = range(len(X_BLOCKS))
# blocks of the expanded draw after the unconstrained vector (the model's other stored variables)
E_BLOCKS = (
    "marker_sd",
    "marker_censored_u",
    "site_effect",
    "participant_chol",
    "residual_sd",
    "participant_sd",
    "participant_corr",
    "participant_fixed",
    "nac_effect",
    "placebo_change",
    "moderation_per_doubling",
    "prognostic_per_doubling",
    "nac_moderation_per_doubling",
)
(E_MSD, E_CENS, E_SITE, E_CHOL, E_RESID, E_PSD, E_CORR, E_FIXED, E_NAC, E_PLACEBO, E_MODD, E_PROGD, E_NMODD) = range(len(E_BLOCKS))
# fields of the context array; F_XQ (per participant: sums of q, t1 q, t2 q, q^2), F_QY (sum of q y) and
# F_WEEK_Q (q per scheduled week) are empty unless the model is curved
(F_SIZES, F_XOFF, F_EOFF, F_PRIORS, F_ARM, F_SITE_IDX, F_XX, F_XY, F_YY, F_NVIS, F_ZDATA, F_ZSTATUS, F_ZINDEX, F_ZUPPER,
 F_PER_DOUBLING, F_WEEK_T1, F_WEEK_T2, F_XQ, F_QY, F_WEEK_Q, F_NINT, F_COV, F_PHASE_LOC, F_IGROUP, F_IREP, F_CONTROL) = constants(26)
N_FIELDS = 26
# F_CONTROL: a NormalMixture (MAP) prior on time_change[0], the control arm's change by the end of treatment, in place
# of its F_PHASE_LOC Normal (`mixture_field`; [-1] without)
# F_ARM: per participant, its arm index (0 the control arm, a the a-th active arm)
# F_NINT: per participant, the number of its missing markers integrated out (0 for most); F_IGROUP: its group of
# participants sharing H (`_integrated_modes`), -1 if none; F_IREP: one participant per group
# F_COV: the covariate columns the model adjusts for, participant x covariate (row-major; empty without covariates)
# F_PHASE_LOC: the Normal priors of time_change and nac_change element by element, (mu, sigma) per phase, time_change's
# first: [mu_t0, sigma_t0, mu_t1, sigma_t1, mu_n0, sigma_n0, mu_n1, sigma_n1] (a prior may give each phase its own mean;
# nac_change's apply to every active arm)
PHASE_LOC_TIME, PHASE_LOC_NAC = 0, 4
# sizes (field F_SIZES): participants, markers, latent missing and censored marker entries, sites (0 for one), follow-up (0/1),
# length of x, length of the expanded draw, scheduled weeks, curved (0/1), participants with integrated markers,
# covariate columns, active arms
# marker entry status (INTEGRATED: a missing value integrated out with the participant effects)
OBSERVED, MISSING, CENSORED, INTEGRATED = 0, 1, 2, 3


# ---------------------------------------------------------------- scalar pieces (numba)

# error_model="numpy": a division by zero gives inf/nan (caught by the caller's finiteness check)
# instead of raising, which a C callback could not report. no_cfunc_wrapper: these functions are called from
# compiled code (and from Python), never through a C pointer of their own, which numba would otherwise
# generate and optimise for each of them (a quarter of the compile time)
_jit = numba.njit(error_model="numpy", no_cfunc_wrapper=True)


@_jit
def _callback_status(lp, grad, n_x, logp):
    """The end of every kernel's log-density callback: the value into logp, and nutpie's return code, 3 for a
    non-finite gradient, 4 for a non-finite log density, else 0."""
    logp[0] = lp
    for j in range(n_x):
        if not math.isfinite(grad[j]):
            return 3
    if not math.isfinite(lp):
        return 4
    return 0


@_jit
def _field(ctx, k):
    off = int(ctx[2 + 2 * k])
    return ctx[off : off + int(ctx[3 + 2 * k])]


@_jit
def _arm_of(arm, i):
    """(indicator, slot) of participant i: 1.0 and a - 1 in active arm a; 0.0 and 0 in the control arm (whose
    terms are then the first arm's times 0: the same operations for every participant)."""
    a = int(arm[i])
    if a > 0:
        return 1.0, a - 1
    return 0.0, 0


@_jit
def _normal_at(mu, sigma, x):
    """log Normal(x | mu, sigma) and its derivative in x."""
    z = (x - mu) / sigma
    return -0.5 * z * z - math.log(sigma) - HALF_LOG_2PI, -z / sigma


@_jit
def _mixture_at(mix, x):
    """log NormalMixture(x | w, mu, sigma) as PyMC writes it (logsumexp over k of log w_k + log Normal(x | mu_k,
    sigma_k)) and its derivative in x. mix = [K, w_1..w_K, mu_1..mu_K, sigma_1..sigma_K] (`mixture_field`)."""
    k = int(mix[0])
    terms = np.empty(k)
    top = -np.inf
    for j in range(k):
        lp, _ = _normal_at(mix[1 + k + j], mix[1 + 2 * k + j], x)
        terms[j] = math.log(mix[1 + j]) + lp
        if terms[j] > top:
            top = terms[j]
    total, slope = 0.0, 0.0
    for j in range(k):
        e = math.exp(terms[j] - top)
        total += e
        sj = mix[1 + 2 * k + j]
        slope += e * (-(x - mix[1 + k + j]) / (sj * sj))
    return top + math.log(total), slope / total


@_jit
def _normal_prior(pri, slot, x):
    """log density and its derivative of a location prior (Normal(mu, sigma))."""
    return _normal_at(pri[3 * slot + 1], pri[3 * slot + 2], x)


@_jit
def _scale_prior(pri, slot, s):
    """log density and its derivative at s > 0 of a scale prior (before the log transform)."""
    fam, p1, p2 = int(pri[3 * slot]), pri[3 * slot + 1], pri[3 * slot + 2]
    if fam == HALFNORMAL:
        return 0.5 * math.log(2.0 / math.pi) - math.log(p1) - 0.5 * (s / p1) ** 2, -s / (p1 * p1)
    if fam == EXPONENTIAL:
        return math.log(p1) - p1 * s, -p1
    if fam == GAMMA:
        return p1 * math.log(p2) - math.lgamma(p1) + (p1 - 1.0) * math.log(s) - p2 * s, (p1 - 1.0) / s - p2
    # HALFCAUCHY
    r = s / p1
    return math.log(2.0 / math.pi) - math.log(p1) - math.log1p(r * r), -2.0 * s / (p1 * p1 + s * s)


@_jit
def _log_ndtr(x):
    """log Phi(x) and its derivative, the same branches as models/marker_block.std_normal_logcdf."""
    if x >= LOGCDF_SWITCH:
        phi_cdf = 0.5 * math.erfc(-x / SQRT2)
        return math.log(phi_cdf), math.exp(-0.5 * x * x - HALF_LOG_2PI) / phi_cdf
    r = 1.0 / (x * x)
    poly = r * (-1.0 + r * (3.0 + r * (-15.0 + 105.0 * r)))
    dpoly = -1.0 + r * (6.0 + r * (-45.0 + 420.0 * r))
    value = -0.5 * x * x - math.log(-x) - HALF_LOG_2PI + math.log1p(poly)
    return value, -x - 1.0 / x + dpoly * (-2.0 * r / x) / (1.0 + poly)


_ACKLAM_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
_ACKLAM_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01, -1.328068155288572e01)
_ACKLAM_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
_ACKLAM_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


@_jit
def ndtri(p):
    """Phi^-1(p) for p in (0, 1): Acklam's rational approximation and one Halley step (double precision)."""
    a, b, c, d = _ACKLAM_A, _ACKLAM_B, _ACKLAM_C, _ACKLAM_D
    q = min(p, 1.0 - p)
    if q < 0.02425:
        t = math.sqrt(-2.0 * math.log(q))
        x = (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) / ((((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1.0)
    else:
        t = q - 0.5
        r = t * t
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * t / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    e = 0.5 * math.erfc(-x / SQRT2) - q
    u = e * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
    x = x - u / (1.0 + 0.5 * x * u)
    return x if p <= 0.5 else -x


@_jit
def _sigmoid(v):
    if v >= 0.0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


@_jit
def _softplus(v):
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


# ---------------------------------------------------------------- the marker block (numba)


@_jit
def _complete_markers(x, ctx, zfill):
    """Completed standardised markers z (participant x marker) and their log density.

    Integrated entries take their value from zfill (participant x marker) and are scored like
    observed ones there. Also returns what the backward pass needs per entry: for censored entries
    q = Phi^-1(p), the standardised limit c, d log Phi(c)/dc, and dq/dc, dq/du.
    """
    sizes = _field(ctx, F_SIZES)
    n_p, m = int(sizes[0]), int(sizes[1])
    xo = _field(ctx, F_XOFF)
    pri = _field(ctx, F_PRIORS)
    zdata, zstatus, zindex, zupper = _field(ctx, F_ZDATA), _field(ctx, F_ZSTATUS), _field(ctx, F_ZINDEX), _field(ctx, F_ZUPPER)
    o_mean, o_sd, o_reg, o_miss, o_cens = int(xo[X_MMEAN]), int(xo[X_MSD]), int(xo[X_MREG]), int(xo[X_MISS]), int(xo[X_CENS])
    z = np.empty((n_p, m))
    aux = np.empty((n_p, m, 5))  # only the slots the backward pass reads are written
    lp = 0.0
    for k in range(m):
        sd = math.exp(x[o_sd + k])
        inv_sd = 1.0 / sd
        n_observed = 0
        base = k * (k - 1) // 2
        for i in range(n_p):
            mu = x[o_mean + k]
            for j in range(k):
                mu += x[o_reg + base + j] * z[i, j]
            e = i * m + k
            status = int(zstatus[e])
            if status == OBSERVED or status == INTEGRATED:
                value = zdata[e] if status == OBSERVED else zfill[i, k]
                z[i, k] = value
                r = (value - mu) * inv_sd
                lp += -0.5 * r * r
                aux[i, k, 0] = r
                n_observed += 1
            elif status == MISSING:
                eta = x[o_miss + int(zindex[e])]
                z[i, k] = mu + sd * eta
                lp += -0.5 * eta * eta - HALF_LOG_2PI
            else:
                v = x[o_cens + int(zindex[e])]
                u = _sigmoid(v)
                c = (zupper[e] - mu) / sd
                log_below, dlog_below = _log_ndtr(c)
                p = u * math.exp(log_below)
                clipped = p < 1e-300 or p > 1.0 - 1e-16
                p = min(max(p, 1e-300), 1.0 - 1e-16)
                q = ndtri(p)
                z[i, k] = mu + sd * q
                lp += log_below - 2.0 * _softplus(-v) - v  # probability below the limit; U(0, 1) and its logit Jacobian
                inv_pdf_q = math.exp(0.5 * q * q + HALF_LOG_2PI)  # dq/dp
                aux[i, k, 0] = q
                aux[i, k, 1] = c
                aux[i, k, 2] = dlog_below
                aux[i, k, 3] = 0.0  # PyTensor's clip passes no gradient outside its range
                aux[i, k, 4] = 0.0
                if not clipped:
                    aux[i, k, 3] = p * dlog_below * inv_pdf_q  # dq/dc
                    aux[i, k, 4] = math.exp(log_below) * inv_pdf_q  # dq/du
        lp -= n_observed * (x[o_sd + k] + HALF_LOG_2PI)  # log sd = x, the unconstrained value
    for k in range(m):
        w = x[o_sd + k]
        f, _ = _scale_prior(pri, P_MSD, math.exp(w))
        g, _ = _normal_prior(pri, P_MMEAN, x[o_mean + k])
        lp += f + w + g
    for l in range(m * (m - 1) // 2):
        g, _ = _normal_prior(pri, P_MREG, x[o_reg + l])
        lp += g
    return z, aux, lp


@_jit
def _markers_backward(x, ctx, z, aux, adj, grad):
    """Add d(log density)/dx of the marker block to grad, given adj = d(rest)/dz (overwritten)."""
    sizes = _field(ctx, F_SIZES)
    n_p, m = int(sizes[0]), int(sizes[1])
    xo = _field(ctx, F_XOFF)
    pri = _field(ctx, F_PRIORS)
    zstatus, zindex = _field(ctx, F_ZSTATUS), _field(ctx, F_ZINDEX)
    o_mean, o_sd, o_reg, o_miss, o_cens = int(xo[X_MMEAN]), int(xo[X_MSD]), int(xo[X_MREG]), int(xo[X_MISS]), int(xo[X_CENS])
    for k in range(m - 1, -1, -1):
        sd = math.exp(x[o_sd + k])
        base = k * (k - 1) // 2
        d_sd = 0.0
        d_mean = 0.0
        for i in range(n_p):
            e = i * m + k
            status = int(zstatus[e])
            a = adj[i, k]
            if status == OBSERVED or status == INTEGRATED:  # an integrated value is at its conditional mode
                r = aux[i, k, 0]
                d_mu = r / sd
                d_sd += (r * r - 1.0) / sd
            elif status == MISSING:
                idx = o_miss + int(zindex[e])
                eta = x[idx]
                d_mu = a
                d_sd += a * eta
                grad[idx] += a * sd - eta
            else:
                idx = o_cens + int(zindex[e])
                v = x[idx]
                u = _sigmoid(v)
                q, c, dlog_below, dq_dc, dq_du = aux[i, k, 0], aux[i, k, 1], aux[i, k, 2], aux[i, k, 3], aux[i, k, 4]
                # z = mu + sd q(c, u), c = (limit - mu) / sd; plus log Phi(c)
                d_mu = a * (1.0 - dq_dc) - dlog_below / sd
                d_sd += a * (q - c * dq_dc) - dlog_below * c / sd
                grad[idx] += a * sd * dq_du * u * (1.0 - u) + 1.0 - 2.0 * u
            d_mean += d_mu
            for j in range(k):
                grad[o_reg + base + j] += d_mu * z[i, j]
                adj[i, j] += d_mu * x[o_reg + base + j]
        s = sd
        _, df = _scale_prior(pri, P_MSD, s)
        grad[o_sd + k] += (d_sd + df) * s + 1.0
        _, dg = _normal_prior(pri, P_MMEAN, x[o_mean + k])
        grad[o_mean + k] += d_mean + dg
    for l in range(m * (m - 1) // 2):
        _, dg = _normal_prior(pri, P_MREG, x[o_reg + l])
        grad[o_reg + l] += dg


# ---------------------------------------------------------------- the rest of the model (numba)


@_jit
def zerosum_values(x, o, n_s):
    """Sum-to-zero offsets (PyMC's ZeroSumTransform backward) from the unconstrained block at o (zeros when o < 0)."""
    s = np.zeros(max(n_s, 1))
    if o < 0:
        return s
    rn = math.sqrt(n_s)
    total = 0.0
    for j in range(n_s - 1):
        total += x[o + j]
    norm = total / (rn + n_s)
    for j in range(n_s - 1):
        s[j] = x[o + j] - norm
    s[n_s - 1] = -total / rn
    return s


@_jit
def zerosum_density(values, d_values, sigma, n_s, o, grad):
    """ZeroSumNormal(sigma) log density of the n_s offsets (n_s - 1 degrees of freedom); adds its gradient and
    d_values (the rest of the model's d/d offsets) through the transform to grad[o:]; returns the log density."""
    rn = math.sqrt(n_s)
    lp = -(n_s - 1) * (HALF_LOG_2PI + math.log(sigma))
    for j in range(n_s):
        lp += -0.5 * (values[j] / sigma) ** 2
        d_values[j] += -values[j] / (sigma * sigma)
    head = 0.0
    for j in range(n_s - 1):
        head += d_values[j]
    for j in range(n_s - 1):
        grad[o + j] += d_values[j] - head / (rn + n_s) - d_values[n_s - 1] / rn
    return lp


@_jit
def _site_values(x, ctx):
    return zerosum_values(x, int(_field(ctx, F_XOFF)[X_SITE]), int(_field(ctx, F_SIZES)[4]))


@_jit
def _fixed_part(x, ctx, z, site):
    """Per-participant (level, change by end of treatment, follow-up change[, curvature]): participant x 3 (4 when curved)."""
    sizes = _field(ctx, F_SIZES)
    n_p, m, followup, curved, n_cov = int(sizes[0]), int(sizes[1]), int(sizes[5]), int(sizes[9]), int(sizes[11])
    xo = _field(ctx, F_XOFF)
    arm, site_idx, cov = _field(ctx, F_ARM), _field(ctx, F_SITE_IDX), _field(ctx, F_COV)
    o_prog, o_mod, o_time, o_nac, o_nmod = int(xo[X_PROG]), int(xo[X_MOD]), int(xo[X_TIME]), int(xo[X_NAC]), int(xo[X_NMOD])
    o_tcurv, o_ncurv, o_clevel, o_cchange = int(xo[X_TCURV]), int(xo[X_NCURV]), int(xo[X_CLEVEL]), int(xo[X_CCHANGE])
    n_ph = 1 + followup
    icpt = x[int(xo[X_ICPT])]
    fixed = np.empty((n_p, 3 + curved))
    for i in range(n_p):
        treated, slot = _arm_of(arm, i)  # the participant's own arm's terms (times 0 in the control arm)
        level = icpt + site[int(site_idx[i])]
        ch1 = x[o_time]
        if o_nac >= 0:  # the null model has no arm
            ch1 += x[o_nac + slot * n_ph] * treated
        for k in range(m):
            level += z[i, k] * x[o_prog + k]
            ch1 += z[i, k] * x[o_mod + k]
        if o_nmod >= 0:  # biomarker x arm (moderation model)
            nmod = 0.0
            for k in range(m):
                nmod += z[i, k] * x[o_nmod + slot * m + k]
            ch1 += nmod * treated
        for j in range(n_cov):  # baseline covariates: data, like the markers' prognostic and moderation terms
            v = cov[i * n_cov + j]
            level += v * x[o_clevel + j]
            ch1 += v * x[o_cchange + j]
        fixed[i, 0] = level
        fixed[i, 1] = ch1
        fixed[i, 2] = 0.0
        if followup:
            fixed[i, 2] = x[o_time + 1]
            if o_nac >= 0:
                fixed[i, 2] += x[o_nac + slot * n_ph + 1] * treated
        if curved:  # the bend kappa_0 + kappa_a of the participant's arm a
            fixed[i, 3] = x[o_tcurv]
            if o_ncurv >= 0:
                fixed[i, 3] += x[o_ncurv + slot] * treated
    return fixed


@_jit
def _marker_structure(x, ctx):
    """R = I - B (m x m, unit lower triangular: minus the regressions) and 1/s^2 (m) of the sequential marker
    model, whose joint precision is Q = R' diag(1/s^2) R."""
    sizes = _field(ctx, F_SIZES)
    m = int(sizes[1])
    xo = _field(ctx, F_XOFF)
    o_sd, o_reg = int(xo[X_MSD]), int(xo[X_MREG])
    r = np.eye(max(m, 1))
    pos = 0
    for k in range(m):
        for j in range(k):
            r[k, j] = -x[o_reg + pos]
            pos += 1
    inv_s2 = np.empty(max(m, 1))
    for k in range(m):
        inv_s2[k] = math.exp(-2.0 * x[o_sd + k])
    return r, inv_s2


@_jit
def _marker_score(x, ctx, r, inv_s2, zrow, out):
    """out = d log p(z)/dz of the sequential marker model at zrow: -R' diag(1/s^2) (R z - a)."""
    m = zrow.shape[0]
    o_mean = int(_field(ctx, F_XOFF)[X_MMEAN])
    for k in range(m):
        out[k] = 0.0
    for k in range(m):
        e = -x[o_mean + k]
        for j in range(k + 1):
            e += r[k, j] * zrow[j]
        e *= inv_s2[k]
        for j in range(k + 1):
            out[j] -= r[k, j] * e


@_jit
def _precision_block(r, inv_s2, miss, q, out):
    """out[:q, :q] = Q_MM, the block of the marker precision Q = R' diag(1/s^2) R on the missing markers."""
    m = r.shape[0]
    for a in range(q):
        for b in range(q):
            v = 0.0
            for k in range(m):
                v += r[k, miss[a]] * r[k, miss[b]] * inv_s2[k]
            out[a, b] = v


@_jit
def _cholesky_inplace(h, d):
    """Lower Cholesky factor of h[:d, :d] written into its lower triangle; returns log det, or nan if not positive definite."""
    logdet = 0.0
    for j in range(d):
        v = h[j, j]
        for k in range(j):
            v -= h[j, k] * h[j, k]
        if not v > 0.0:
            return math.nan
        c = math.sqrt(v)
        h[j, j] = c
        logdet += 2.0 * math.log(c)
        for i in range(j + 1, d):
            v = h[i, j]
            for k in range(j):
                v -= h[i, k] * h[j, k]
            h[i, j] = v / c
    return logdet


@_jit
def _cholesky_solve(c, d, b):
    """Solve (C C') y = b in place for the factor C in the lower triangle of c[:d, :d]."""
    for i in range(d):
        v = b[i]
        for k in range(i):
            v -= c[i, k] * b[k]
        b[i] = v / c[i, i]
    for i in range(d - 1, -1, -1):
        v = b[i]
        for k in range(i + 1, d):
            v -= c[k, i] * b[k]
        b[i] = v / c[i, i]


@_jit
def _missing_set(ctx, i, m, miss):
    """The integrated marker indices of participant i into miss; returns their number q."""
    zstatus = _field(ctx, F_ZSTATUS)
    q = 0
    for k in range(m):
        if int(zstatus[i * m + k]) == INTEGRATED:
            miss[q] = k
            q += 1
    return q


@_jit
def _marker_loadings(x, ctx, i, miss, q, jac):
    """Columns 2.. of J = [L, A]: each integrated marker's coefficients on (level, change):
    (prognostic_k, moderation_k + nac_moderation_ak of the participant's active arm a)."""
    xo = _field(ctx, F_XOFF)
    m = int(_field(ctx, F_SIZES)[1])
    treated, slot = _arm_of(_field(ctx, F_ARM), i)
    o_prog, o_mod, o_nmod = int(xo[X_PROG]), int(xo[X_MOD]), int(xo[X_NMOD])
    for a in range(q):
        k = miss[a]
        jac[0, 2 + a] = x[o_prog + k]
        jac[1, 2 + a] = x[o_mod + k]
        if o_nmod >= 0:
            jac[1, 2 + a] += x[o_nmod + slot * m + k] * treated


@_jit
def _zr(ctx, i, c, curved):
    """Z'r = the first two entries of X'(y - X c) for participant i and coefficients c (3, or 4 when curved)."""
    xx, xy, xq = _field(ctx, F_XX), _field(ctx, F_XY), _field(ctx, F_XQ)
    a00, a01, a02, a11, a12 = xx[6 * i], xx[6 * i + 1], xx[6 * i + 2], xx[6 * i + 3], xx[6 * i + 4]
    r0 = xy[3 * i] - (a00 * c[0] + a01 * c[1] + a02 * c[2])
    r1 = xy[3 * i + 1] - (a01 * c[0] + a11 * c[1] + a12 * c[2])
    if curved:
        r0 -= xq[4 * i] * c[3]
        r1 -= xq[4 * i + 1] * c[3]
    return r0, r1


@_jit
def _jacobian(x, ctx, i, miss, q, l00, l10, l11, jac):
    """J = [L, A] (2 x (2 + q)) of participant i."""
    jac[0, 0], jac[0, 1], jac[1, 0], jac[1, 1] = l00, 0.0, l10, l11
    _marker_loadings(x, ctx, i, miss, q, jac)


@_jit
def _integrated_modes(x, ctx, z0, fixed0, l00, l10, l11, inv_s2, uhat, hchol, hinv, logdet):
    """For each participant with integrated markers: the mode u = (eps, z_M) of the joint conditional density of
    their standardised participant effects eps (b = L eps) and missing markers, with its precision H.

    f(u) = log N(y_i | X c(z) + Z L eps, s^2 I) + log N(eps | 0, I) + log p(z) is quadratic in u with
    H = -d2f = J' Z'Z J / s^2 + blockdiag(I_2, Q_MM), J = [L, A]; the mode solves H u = df(0) (u = 0 at
    z_M = 0, eps = 0). H depends on the participant only through the missing set, Z'Z and (with the
    biomarker x arm term) the arm index: participants sharing them form a group (F_IGROUP, one representative
    each in F_IREP), and H, its Cholesky factor, H^-1 and log det H are computed once per group.
    Writes uhat (eps, then z_M in the order of the missing markers) per participant, and hchol, hinv,
    logdet per group. Returns False if some H is not positive definite."""
    sizes = _field(ctx, F_SIZES)
    n_p, m, curved = int(sizes[0]), int(sizes[1]), int(sizes[9])
    igroup, irep, xx, nint = _field(ctx, F_IGROUP), _field(ctx, F_IREP), _field(ctx, F_XX), _field(ctx, F_NINT)
    r, inv_ms2 = _marker_structure(x, ctx)
    dmax = 2 + m
    miss = np.zeros(max(m, 1), dtype=np.int64)
    jac = np.zeros((2, dmax))
    qmm = np.zeros((max(m, 1), max(m, 1)))
    score = np.zeros(max(m, 1))
    g = np.zeros(dmax)
    n_groups = irep.shape[0]
    pj = np.zeros((n_groups, dmax, 2))  # H^-1 J' / s^2 per group: the mode is pj Z'r + H^-1 [0; score_M]
    gmiss = np.zeros((n_groups, max(m, 1)), dtype=np.int64)
    for grp in range(n_groups):
        i = int(irep[grp])
        q = _missing_set(ctx, i, m, miss)
        d = 2 + q
        _jacobian(x, ctx, i, miss, q, l00, l10, l11, jac)
        a00, a01, a11 = xx[6 * i], xx[6 * i + 1], xx[6 * i + 3]
        _precision_block(r, inv_ms2, miss, q, qmm)
        h = hchol[grp]
        for a in range(d):
            for b in range(d):
                bj0 = a00 * jac[0, b] + a01 * jac[1, b]
                bj1 = a01 * jac[0, b] + a11 * jac[1, b]
                h[a, b] = (jac[0, a] * bj0 + jac[1, a] * bj1) * inv_s2
        h[0, 0] += 1.0
        h[1, 1] += 1.0
        for a in range(q):
            for b in range(q):
                h[2 + a, 2 + b] += qmm[a, b]
        ld = _cholesky_inplace(h, d)
        if math.isnan(ld):
            return False
        logdet[grp] = ld
        for a in range(d):  # H^-1, column by column
            for b in range(d):
                g[b] = 1.0 if a == b else 0.0
            _cholesky_solve(h, d, g)
            for b in range(d):
                hinv[grp, a, b] = g[b]
        for a in range(d):
            for c in range(2):
                v = 0.0
                for b in range(d):
                    v += hinv[grp, a, b] * jac[c, b]
                pj[grp, a, c] = v * inv_s2
        for a in range(q):
            gmiss[grp, a] = miss[a]
    for i in range(n_p):
        grp = int(igroup[i])
        if grp < 0:
            continue
        q = int(nint[i])
        d = 2 + q
        r0, r1 = _zr(ctx, i, fixed0[i], curved)
        _marker_score(x, ctx, r, inv_ms2, z0[i], score)
        for a in range(d):
            v = pj[grp, a, 0] * r0 + pj[grp, a, 1] * r1
            for b in range(q):
                v += hinv[grp, a, 2 + b] * score[gmiss[grp, b]]
            uhat[i, a] = v
    return True


@_jit
def _conditional_means(x, ctx, z0):
    """z0 with each integrated participant's missing markers set to their conditional mean given the observed
    ones, m = Q_MM^-1 (d log p/dz at z_M = 0)_M (the marker model is Gaussian, its Hessian -Q)."""
    sizes = _field(ctx, F_SIZES)
    n_p, m = int(sizes[0]), int(sizes[1])
    nint = _field(ctx, F_NINT)
    r, inv_ms2 = _marker_structure(x, ctx)
    miss = np.zeros(max(m, 1), dtype=np.int64)
    qmm = np.zeros((max(m, 1), max(m, 1)))
    score = np.zeros(max(m, 1))
    g = np.zeros(max(m, 1))
    z = z0.copy()
    for i in range(n_p):
        if nint[i] == 0:
            continue
        q = _missing_set(ctx, i, m, miss)
        _precision_block(r, inv_ms2, miss, q, qmm)
        _marker_score(x, ctx, r, inv_ms2, z0[i], score)
        for a in range(q):
            g[a] = score[miss[a]]
        _cholesky_inplace(qmm, q)
        _cholesky_solve(qmm, q, g)
        for a in range(q):
            z[i, miss[a]] = g[a]
    return z


def _logp_c(dim, x_, out_, logp_, ctx_):
    """The C callback nutpie calls: the log density of a marginal trajectory model at unconstrained x into logp[0],
    its gradient into out. Returns 0; -1 when dim is not the model's (or the context has markers and this is the
    variant without, `callback_functions`), 3 for a non-finite gradient, 4 for a non-finite log density.

    One function, not a call of a compiled `logp_grad`: numba optimises and emits a compiled function on its own and
    again inside each caller, so the body of the largest function is compiled once this way. Nothing in it raises
    (error_model="numpy"; every size comes from the context array, checked against dim): an exception would leave
    logp[0] NaN, which the sampler rejects. `logp_grad` calls it from Python."""
    head = numba.carray(ctx_, (2,), np.float64)
    ctx = numba.carray(ctx_, (int(head[0]),), np.float64)
    n_x = int(dim)
    logp = numba.carray(logp_, (1,))
    logp[0] = math.nan
    sizes = _field(ctx, F_SIZES)
    if n_x != int(sizes[6]) or (not MARKERS and int(sizes[1]) > 0):
        return -1
    x = numba.carray(x_, (n_x,))
    grad = numba.carray(out_, (n_x,))
    n_p, m, n_s, followup, curved = int(sizes[0]), int(sizes[1]), int(sizes[4]), int(sizes[5]), int(sizes[9])
    xo = _field(ctx, F_XOFF)
    pri = _field(ctx, F_PRIORS)
    arm, site_idx = _field(ctx, F_ARM), _field(ctx, F_SITE_IDX)
    n_arm, n_ph = int(sizes[12]), 1 + followup
    xx, xy, yy, nvis = _field(ctx, F_XX), _field(ctx, F_XY), _field(ctx, F_YY), _field(ctx, F_NVIS)
    xq, qy = _field(ctx, F_XQ), _field(ctx, F_QY)
    for j in range(grad.shape[0]):
        grad[j] = 0.0

    site = _site_values(x, ctx)
    o_chol, o_resid = int(xo[X_CHOL]), int(xo[X_RESID])
    l00, l10, l11 = math.exp(x[o_chol]), x[o_chol + 1], math.exp(x[o_chol + 2])
    sigma = math.exp(x[o_resid])
    s2 = sigma * sigma
    inv_s2 = 1.0 / s2

    # participants with integrated markers: the joint mode of (eps, z_M) first (models/marker_block.py, module docstring)
    nint, igroup = _field(ctx, F_NINT), _field(ctx, F_IGROUP)
    with_integrated = int(sizes[10]) > 0
    dmax = 2 + m
    rows = n_p if with_integrated else 0
    n_groups = _field(ctx, F_IREP).shape[0]
    uhat = np.zeros((rows, dmax))
    hchol, hinv, logdet = np.zeros((n_groups, dmax, dmax)), np.zeros((n_groups, dmax, dmax)), np.zeros(n_groups)
    group_size = np.zeros(n_groups)
    zfill = np.zeros((n_p, m))
    miss = np.zeros(max(m, 1), dtype=np.int64)
    if MARKERS and with_integrated:  # their markers: observed values, 0 at the integrated ones (they have no latent value)
        z0 = _field(ctx, F_ZDATA).reshape((n_p, m))
        if not _integrated_modes(x, ctx, z0, _fixed_part(x, ctx, z0, site), l00, l10, l11, inv_s2, uhat, hchol, hinv, logdet):
            logp[0] = -math.inf
            return 4
        for i in range(n_p):
            q = _missing_set(ctx, i, m, miss)
            for a in range(q):
                zfill[i, miss[a]] = uhat[i, 2 + a]
        r_mk, inv_ms2 = _marker_structure(x, ctx)
    else:
        r_mk, inv_ms2 = np.eye(1), np.ones(1)
    d_inv_ms2 = np.zeros(max(m, 1))  # d(-log det H / 2) / d(1/s_k^2) and / dR, accumulated over participants
    d_r = np.zeros((max(m, 1), max(m, 1)))
    jac = np.zeros((2, dmax))
    bj = np.zeros((2, dmax))
    gmat = np.zeros((2, dmax))

    if MARKERS:
        z, aux, lp = _complete_markers(x, ctx, zfill)
    else:
        z, aux, lp = np.zeros((n_p, m)), np.zeros((n_p, m, 5)), 0.0
    fixed = _fixed_part(x, ctx, z, site)
    inv_s4 = inv_s2 * inv_s2
    inv_s6 = inv_s4 * inv_s2
    log_s2 = 2.0 * x[o_resid]
    det_product = 1.0  # log det M summed as the log of running products (one log per many participants)
    log_det_sum = 0.0
    n_total = 0.0

    g00 = g10 = g11 = d_s2 = 0.0
    d_icpt = d_t0 = d_t1 = d_tc = 0.0
    d_nac = np.zeros(max(n_arm, 1) * n_ph)  # per active arm and phase (nac_change's layout)
    d_nc = np.zeros(max(n_arm, 1))  # per active arm (nac_curvature)
    d_site = np.zeros(max(n_s, 1))
    adj = np.empty((n_p, m))  # every entry is set in the participant loop below
    o_prog, o_mod, o_nmod = int(xo[X_PROG]), int(xo[X_MOD]), int(xo[X_NMOD])
    d_prog = np.zeros(m)
    d_mod = np.zeros(m)
    d_nmod = np.zeros(max(n_arm, 1) * m)  # per active arm and marker (nac_marker_moderation's layout)
    n_cov = int(sizes[11])
    cov = _field(ctx, F_COV)
    d_clevel = np.zeros(n_cov)
    d_cchange = np.zeros(n_cov)
    for i in range(n_p):
        a00, a01, a02, a11, a12, a22 = xx[6 * i], xx[6 * i + 1], xx[6 * i + 2], xx[6 * i + 3], xx[6 * i + 4], xx[6 * i + 5]
        c0, c1, c2 = fixed[i, 0], fixed[i, 1], fixed[i, 2]
        q = int(nint[i])
        if q > 0:  # conditional on the mode: the participant effects b = L eps join the coefficients
            eps0, eps1 = uhat[i, 0], uhat[i, 1]
            c0 += l00 * eps0
            c1 += l10 * eps0 + l11 * eps1
        gc0 = a00 * c0 + a01 * c1 + a02 * c2
        gc1 = a01 * c0 + a11 * c1 + a12 * c2
        gc2 = a02 * c0 + a12 * c1 + a22 * c2
        a03 = a13 = c3 = gc3 = r3 = 0.0
        if curved:  # the 4th column q: X'X gains (a03, a13, a23, a33), X'y gains q'y
            a03, a13, a23, a33 = xq[4 * i], xq[4 * i + 1], xq[4 * i + 2], xq[4 * i + 3]
            c3 = fixed[i, 3]
            gc3 = a03 * c0 + a13 * c1 + a23 * c2 + a33 * c3
            gc0 += a03 * c3
            gc1 += a13 * c3
            gc2 += a23 * c3
            r3 = qy[i] - gc3
        r0, r1, r2 = xy[3 * i] - gc0, xy[3 * i + 1] - gc1, xy[3 * i + 2] - gc2  # X'r
        rr = yy[i] - 2.0 * (c0 * xy[3 * i] + c1 * xy[3 * i + 1] + c2 * xy[3 * i + 2]) + c0 * gc0 + c1 * gc1 + c2 * gc2
        if curved:
            rr += c3 * gc3 - 2.0 * c3 * qy[i]  # the 4th terms of c'X'X c - 2 c'X'y
        n = nvis[i]
        if q > 0:
            # log p(y_i, z_K) = f(u) + (q / 2) log 2 pi - log det H / 2 at the mode u (the n log(2 pi s^2) / 2 below)
            n_total += n
            lp += -0.5 * (rr * inv_s2 + eps0 * eps0 + eps1 * eps1) + 0.5 * q * LOG2PI - 0.5 * logdet[int(igroup[i])]
            dc0, dc1, dc2, dc3 = r0 * inv_s2, r1 * inv_s2, r2 * inv_s2, r3 * inv_s2  # y's part at the mode
            g00 += r0 * inv_s2 * eps0
            g10 += r1 * inv_s2 * eps0
            g11 += r1 * inv_s2 * eps1
            d_s2 += 0.5 * (rr * inv_s4 - n * inv_s2)
            group_size[int(igroup[i])] += 1.0
        else:
            # M = I + L' B L / s2, B = Z'Z = [[a00, a01], [a01, a11]]
            bl00, bl01, bl10, bl11 = a00 * l00 + a01 * l10, a01 * l11, a01 * l00 + a11 * l10, a11 * l11
            m00 = 1.0 + (l00 * bl00 + l10 * bl10) * inv_s2
            m01 = l11 * bl10 * inv_s2
            m11 = 1.0 + l11 * bl11 * inv_s2
            det = m00 * m11 - m01 * m01  # >= 1: M is the identity plus a positive semi-definite matrix
            if det > 1e100:
                log_det_sum += math.log(det)
            else:
                if det_product > 1e200:
                    log_det_sum += math.log(det_product)
                    det_product = 1.0
                det_product *= det
            inv_det = 1.0 / det
            ki00, ki01, ki11 = m11 * inv_det, -m01 * inv_det, m00 * inv_det  # K = M^-1
            w0, w1 = l00 * r0 + l10 * r1, l11 * r1
            k0, k1 = ki00 * w0 + ki01 * w1, ki01 * w0 + ki11 * w1  # K w
            wkw = w0 * k0 + w1 * k1
            n_total += n
            lp += -0.5 * (rr * inv_s2 - wkw * inv_s4)
            # d/dc = X'r / s2 - A[:, :2] h, h = L K w / s4
            h0, h1 = l00 * k0 * inv_s4, (l10 * k0 + l11 * k1) * inv_s4
            dc0 = r0 * inv_s2 - (a00 * h0 + a01 * h1)
            dc1 = r1 * inv_s2 - (a01 * h0 + a11 * h1)
            dc2 = r2 * inv_s2 - (a02 * h0 + a12 * h1)
            dc3 = r3 * inv_s2 - (a03 * h0 + a13 * h1)  # 0 unless curved
            # d/dL = -B L K / s2 + Z'r (Kw)' / s4 - B L (Kw)(Kw)' / s6
            v0, v1 = bl00 * k0 + bl01 * k1, bl10 * k0 + bl11 * k1
            g00 += -(bl00 * ki00 + bl01 * ki01) * inv_s2 + r0 * k0 * inv_s4 - v0 * k0 * inv_s6
            g10 += -(bl10 * ki00 + bl11 * ki01) * inv_s2 + r1 * k0 * inv_s4 - v1 * k0 * inv_s6
            g11 += -(bl10 * ki01 + bl11 * ki11) * inv_s2 + r1 * k1 * inv_s4 - v1 * k1 * inv_s6
            d_s2 += -0.5 * ((n - 2.0 + ki00 + ki11) * inv_s2 - rr * inv_s4 + (wkw + k0 * k0 + k1 * k1) * inv_s6)
        # back to the population terms (the participant's own arm's: slot)
        treated, slot = _arm_of(arm, i)
        d_icpt += dc0
        d_site[int(site_idx[i])] += dc0
        d_t0 += dc1
        d_nac[slot * n_ph] += dc1 * treated
        d_t1 += dc2
        if followup:
            d_nac[slot * n_ph + 1] += dc2 * treated
        d_tc += dc3
        d_nc[slot] += dc3 * treated
        for k in range(m):
            d_prog[k] += dc0 * z[i, k]
            d_mod[k] += dc1 * z[i, k]
            adj[i, k] = dc0 * x[o_prog + k] + dc1 * x[o_mod + k]
        if o_nmod >= 0:
            dt = dc1 * treated
            for k in range(m):
                d_nmod[slot * m + k] += dt * z[i, k]
                adj[i, k] += dt * x[o_nmod + slot * m + k]
        for j in range(n_cov):
            v = cov[i * n_cov + j]
            d_clevel[j] += dc0 * v
            d_cchange[j] += dc1 * v

    lp += -0.5 * (n_total * (LOG2PI + log_s2) + log_det_sum + math.log(det_product))

    # - log det H / 2 per group of integrated participants (times its size), H = J' B J / s2 + blockdiag(I, Q_MM):
    # d/dJ = -B J H^-1 / s2 (into L and the loadings A), d/ds2 = tr(H^-1 J' B J) / (2 s4), and through Q_MM
    if MARKERS:  # (the variant without markers has no group)
        irep = _field(ctx, F_IREP)
        for grp in range(n_groups):
            i = int(irep[grp])
            size = group_size[grp]
            q = _missing_set(ctx, i, m, miss)
            d = 2 + q
            _jacobian(x, ctx, i, miss, q, l00, l10, l11, jac)
            a00, a01, a11 = xx[6 * i], xx[6 * i + 1], xx[6 * i + 3]
            for b in range(d):
                bj[0, b] = a00 * jac[0, b] + a01 * jac[1, b]
                bj[1, b] = a01 * jac[0, b] + a11 * jac[1, b]
            trace = 0.0  # tr(H^-1 J' B J)
            for a in range(2):
                for b in range(d):
                    v = 0.0
                    for e in range(d):
                        v += bj[a, e] * hinv[grp, e, b]
                    gmat[a, b] = -v * inv_s2 * size
                    trace += v * jac[a, b]
            d_s2 += 0.5 * trace * inv_s4 * size
            g00 += gmat[0, 0]
            g10 += gmat[1, 0]
            g11 += gmat[1, 1]
            for a in range(q):
                k = miss[a]
                d_prog[k] += gmat[0, 2 + a]
                d_mod[k] += gmat[1, 2 + a]
                if o_nmod >= 0:
                    treated, slot = _arm_of(arm, i)
                    d_nmod[slot * m + k] += gmat[1, 2 + a] * treated
            for kk in range(m):  # Q_MM = sum_k R_kM' R_kM / s_k^2, with W = -H^-1_zz / 2
                for a in range(q):
                    ra = r_mk[kk, miss[a]]
                    for b in range(q):
                        w = -0.5 * hinv[grp, 2 + a, 2 + b] * size
                        rb = r_mk[kk, miss[b]]
                        d_inv_ms2[kk] += w * ra * rb
                        d_r[kk, miss[a]] += 2.0 * w * rb * inv_ms2[kk]

    # residual SD (log transform)
    f, df = _scale_prior(pri, P_RESID, sigma)
    lp += f + x[o_resid]
    grad[o_resid] += (2.0 * sigma * d_s2 + df) * sigma + 1.0

    # LKJ Cholesky covariance (n = 2, packed [L00, L10, L11], log-transformed diagonal)
    eta = pri[3 * P_CORR + 1]
    sd0, sd1sq = l00, l10 * l10 + l11 * l11
    sd1 = math.sqrt(sd1sq)
    f0, df0 = _scale_prior(pri, P_PSD, sd0)
    f1, df1 = _scale_prior(pri, P_PSD, sd1)
    log_sd1 = math.log(sd1)
    lp += pri[3 * P_CORR + 2] + (2.0 * eta - 1.0) * (x[o_chol + 2] - log_sd1) - log_sd1 + f0 + f1 + x[o_chol] + x[o_chol + 2]
    gb, gc = l10 / sd1sq, l11 * l11 / sd1sq
    grad[o_chol] += g00 * l00 + df0 * sd0 + 1.0
    grad[o_chol + 1] += g10 - 2.0 * eta * gb + df1 * l10 / sd1
    grad[o_chol + 2] += g11 * l11 + 2.0 * eta * (1.0 - gc) + df1 * l11 * l11 / sd1

    # location priors and their gradients (time_change and nac_change phase by phase: F_PHASE_LOC)
    phase_loc = _field(ctx, F_PHASE_LOC)
    t, nc = PHASE_LOC_TIME, PHASE_LOC_NAC
    o = int(xo[X_ICPT])
    g, dg = _normal_prior(pri, P_INTERCEPT, x[o])
    lp += g
    grad[o] += d_icpt + dg
    o = int(xo[X_TIME])
    control = _field(ctx, F_CONTROL)
    if control[0] == 0.0:
        g, dg = _mixture_at(control[1:], x[o])
    else:
        g, dg = _normal_at(phase_loc[t], phase_loc[t + 1], x[o])
    lp += g
    grad[o] += d_t0 + dg
    o_nac = int(xo[X_NAC])
    if o_nac >= 0:
        for a in range(n_arm):
            o = o_nac + a * n_ph
            g, dg = _normal_at(phase_loc[nc], phase_loc[nc + 1], x[o])
            lp += g
            grad[o] += d_nac[a * n_ph] + dg
    if followup:
        o = int(xo[X_TIME]) + 1
        g, dg = _normal_at(phase_loc[t + 2], phase_loc[t + 3], x[o])
        lp += g
        grad[o] += d_t1 + dg
        if o_nac >= 0:
            for a in range(n_arm):
                o = o_nac + a * n_ph + 1
                g, dg = _normal_at(phase_loc[nc + 2], phase_loc[nc + 3], x[o])
                lp += g
                grad[o] += d_nac[a * n_ph + 1] + dg
    for k in range(m):
        g, dg = _normal_prior(pri, P_PROG, x[o_prog + k])
        lp += g
        grad[o_prog + k] += d_prog[k] + dg
        g, dg = _normal_prior(pri, P_MOD, x[o_mod + k])
        lp += g
        grad[o_mod + k] += d_mod[k] + dg
    if o_nmod >= 0:
        for j in range(n_arm * m):  # arm by arm, marker by marker
            g, dg = _normal_prior(pri, P_NMOD, x[o_nmod + j])
            lp += g
            grad[o_nmod + j] += d_nmod[j] + dg
    if curved:
        o = int(xo[X_TCURV])
        g, dg = _normal_prior(pri, P_TCURV, x[o])
        lp += g
        grad[o] += d_tc + dg
        o = int(xo[X_NCURV])
        if o >= 0:
            for a in range(n_arm):
                g, dg = _normal_prior(pri, P_NCURV, x[o + a])
                lp += g
                grad[o + a] += d_nc[a] + dg
    o_clevel, o_cchange = int(xo[X_CLEVEL]), int(xo[X_CCHANGE])
    for j in range(n_cov):
        g, dg = _normal_prior(pri, P_CLEVEL, x[o_clevel + j])
        lp += g
        grad[o_clevel + j] += d_clevel[j] + dg
        g, dg = _normal_prior(pri, P_CCHANGE, x[o_cchange + j])
        lp += g
        grad[o_cchange + j] += d_cchange[j] + dg

    o = int(xo[X_SITE])
    if o >= 0:
        lp += zerosum_density(site, d_site, pri[3 * P_SITE + 1], n_s, o, grad)

    if MARKERS:
        _markers_backward(x, ctx, z, aux, adj, grad)
    if MARKERS and with_integrated:  # - log det H / 2 through Q_MM: 1/s_k^2 = exp(-2 x), R_kj = -regression
        o_sd, o_reg = int(xo[X_MSD]), int(xo[X_MREG])
        pos = 0
        for k in range(m):
            grad[o_sd + k] += -2.0 * d_inv_ms2[k] * inv_ms2[k]
            for j in range(k):
                grad[o_reg + pos] -= d_r[k, j]
                pos += 1
    return _callback_status(lp, grad, n_x, logp)


def _expand_c(dim, expanded, x_, out_, ctx_):
    """The C callback nutpie calls to store a draw: x itself, then each other stored variable at its offset in ctx.
    Returns 0, or -1 when dim or expanded is not the model's (or as `_logp_c`). One function for the reason of `_logp_c`; out is
    NaN first, so that an exception (nothing raises for a context from `fused_layout`) stores no stale value."""
    head = numba.carray(ctx_, (2,), np.float64)
    ctx = numba.carray(ctx_, (int(head[0]),), np.float64)
    sizes = _field(ctx, F_SIZES)
    if int(dim) != int(sizes[6]) or int(expanded) != int(sizes[7]) or (not MARKERS and int(sizes[1]) > 0):
        return -1
    x = numba.carray(x_, (int(dim),))
    out = numba.carray(out_, (int(expanded),))
    for j in range(int(expanded)):
        out[j] = math.nan
    n_p, m, n_s, followup, n_dim, n_week = int(sizes[0]), int(sizes[1]), int(sizes[4]), int(sizes[5]), int(sizes[6]), int(sizes[8])
    xo, eo = _field(ctx, F_XOFF), _field(ctx, F_EOFF)
    for j in range(n_dim):
        out[j] = x[j]
    z = np.zeros((n_p, m))
    if MARKERS:
        z, _, _ = _complete_markers(x, ctx, z)
    if MARKERS and int(sizes[10]) > 0:  # integrated markers: the fixed part holds their conditional means
        z = _conditional_means(x, ctx, z)
    site = _site_values(x, ctx)
    fixed = _fixed_part(x, ctx, z, site)
    sizes_cens = int(sizes[3])
    if eo[E_MSD] >= 0:
        for k in range(m):
            out[int(eo[E_MSD]) + k] = math.exp(x[int(xo[X_MSD]) + k])
    if eo[E_CENS] >= 0:
        for j in range(sizes_cens):
            out[int(eo[E_CENS]) + j] = _sigmoid(x[int(xo[X_CENS]) + j])
    if eo[E_SITE] >= 0:
        for j in range(n_s):
            out[int(eo[E_SITE]) + j] = site[j]
    o_chol = int(xo[X_CHOL])
    l00, l10, l11 = math.exp(x[o_chol]), x[o_chol + 1], math.exp(x[o_chol + 2])
    sd1 = math.sqrt(l10 * l10 + l11 * l11)
    if eo[E_CHOL] >= 0:
        out[int(eo[E_CHOL])] = l00
        out[int(eo[E_CHOL]) + 1] = l10
        out[int(eo[E_CHOL]) + 2] = l11
    if eo[E_RESID] >= 0:
        out[int(eo[E_RESID])] = math.exp(x[int(xo[X_RESID])])
    if eo[E_PSD] >= 0:
        out[int(eo[E_PSD])] = l00
        out[int(eo[E_PSD]) + 1] = sd1
    if eo[E_CORR] >= 0:
        out[int(eo[E_CORR])] = l00 * l10 / (l00 * sd1)
    if eo[E_FIXED] >= 0:
        o = int(eo[E_FIXED])
        n_t = fixed.shape[1]
        for i in range(n_p):
            for t in range(n_t):
                out[o + n_t * i + t] = fixed[i, t]
    wt1, wt2, wq = _field(ctx, F_WEEK_T1), _field(ctx, F_WEEK_T2), _field(ctx, F_WEEK_Q)
    o_time, o_nac, o_tcurv, o_ncurv = int(xo[X_TIME]), int(xo[X_NAC]), int(xo[X_TCURV]), int(xo[X_NCURV])
    n_arm, n_ph = int(sizes[12]), 1 + followup
    for w in range(n_week):
        placebo = x[o_time] * wt1[w]
        if o_tcurv >= 0:
            placebo += x[o_tcurv] * wq[w]
        if followup:
            placebo += x[o_time + 1] * wt2[w]
        if eo[E_PLACEBO] >= 0:
            out[int(eo[E_PLACEBO]) + w] = placebo
        if eo[E_NAC] >= 0 and o_nac >= 0:  # active_arm x week
            for a in range(n_arm):
                nac = x[o_nac + a * n_ph] * wt1[w]
                if o_ncurv >= 0:
                    nac += x[o_ncurv + a] * wq[w]
                if followup:
                    nac += x[o_nac + a * n_ph + 1] * wt2[w]
                out[int(eo[E_NAC]) + a * n_week + w] = nac
    per_doubling = _field(ctx, F_PER_DOUBLING)
    for k in range(m):
        if eo[E_MODD] >= 0:
            out[int(eo[E_MODD]) + k] = x[int(xo[X_MOD]) + k] * per_doubling[k]
        if eo[E_PROGD] >= 0:
            out[int(eo[E_PROGD]) + k] = x[int(xo[X_PROG]) + k] * per_doubling[k]
        if eo[E_NMODD] >= 0:  # active_arm x marker
            for a in range(n_arm):
                out[int(eo[E_NMODD]) + a * m + k] = x[int(xo[X_NMOD]) + a * m + k] * per_doubling[k]
    return 0


# ---------------------------------------------------------------- the context (Python)


class Unsupported(ValueError):
    """The model or its priors are outside what the fused function computes (the graph is used)."""


def _scalar(params: dict, key: str, default=None) -> float:
    value = params.get(key, default)
    if value is None or np.ndim(value) != 0:
        raise Unsupported(f"prior parameter {key}={value!r} is not a scalar")
    return float(value)


def location_elements(prior, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma), n values each, of a Normal location prior on a block of n elements whose parameters are each a
    scalar or one value per element (e.g. the enthusiastic preset's per-phase mean of nac_change)."""
    p = dict(prior.params)
    if prior.dist != "Normal" or not set(p) <= {"mu", "sigma", "tau"}:
        raise Unsupported(f"prior {prior.describe()} (location) is not one the fused function computes")

    def elements(key, default):
        value = np.asarray(p.get(key, default), dtype=float)
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != n):
            raise Unsupported(f"prior parameter {key}={p[key]!r} is neither a scalar nor one value per element ({n})")
        return np.broadcast_to(value, (n,)).astype(float)

    sigma = 1.0 / np.sqrt(elements("tau", 1.0)) if "tau" in p else elements("sigma", 1.0)
    return elements("mu", 0.0), sigma


def _prior_triple(prior, kind: str) -> tuple[float, float, float]:
    """(family, p1, p2) of a Prior, in the parameterisation the numba code uses."""
    p = dict(prior.params)
    name = prior.dist
    if kind == "location" and name == "Normal" and set(p) <= {"mu", "sigma", "tau"}:
        sigma = 1.0 / math.sqrt(_scalar(p, "tau")) if "tau" in p else _scalar(p, "sigma", 1.0)
        return NORMAL, _scalar(p, "mu", 0.0), sigma
    if kind == "scale":
        if name == "HalfNormal" and set(p) <= {"sigma", "tau"}:
            return HALFNORMAL, 1.0 / math.sqrt(_scalar(p, "tau")) if "tau" in p else _scalar(p, "sigma", 1.0), 0.0
        if name == "Exponential" and set(p) <= {"lam", "scale"} and len(p) == 1:
            return EXPONENTIAL, 1.0 / _scalar(p, "scale") if "scale" in p else _scalar(p, "lam"), 0.0
        if name == "Gamma" and set(p) in ({"alpha", "beta"}, {"mu", "sigma"}):
            if "alpha" in p:
                return GAMMA, _scalar(p, "alpha"), _scalar(p, "beta")
            mu, sd = _scalar(p, "mu"), _scalar(p, "sigma")
            return GAMMA, mu * mu / (sd * sd), mu / (sd * sd)
        if name == "HalfCauchy" and set(p) <= {"beta"}:
            return HALFCAUCHY, _scalar(p, "beta", 1.0), 0.0
    if kind == "zerosum" and name == "ZeroSumNormal" and set(p) <= {"sigma"}:
        return ZEROSUM, _scalar(p, "sigma", 1.0), 0.0
    if kind == "lkj" and name == "LKJ" and set(p) <= {"eta"}:
        eta = _scalar(p, "eta")
        # PyMC's normalising constant of the LKJ density for n = 2 (any eta > 0)
        return LKJ, eta, -math.lgamma(eta + 0.5) + 0.5 * math.log(math.pi) + math.lgamma(eta)
    raise Unsupported(f"prior {prior.describe()} ({kind}) is not one the fused function computes")


PRIOR_SLOTS = {
    P_INTERCEPT: ("intercept", "location"),
    P_TIME: ("time_change", "phases"),  # per element: F_PHASE_LOC (the slot holds the first phase's)
    P_NAC: ("nac_change", "phases"),
    P_PROG: ("marker_prognostic", "location"),
    P_MOD: ("marker_moderation", "location"),
    P_SITE: ("site", "zerosum"),
    P_PSD: ("participant_sd", "scale"),
    P_CORR: ("participant_corr", "lkj"),
    P_RESID: ("residual_sd", "scale"),
    P_MMEAN: ("marker_mean", "location"),
    P_MSD: ("marker_sd", "scale"),
    P_MREG: ("marker_regression", "location"),
    P_NMOD: ("nac_marker_moderation", "location"),
    P_TCURV: ("time_curvature", "location"),
    P_NCURV: ("nac_curvature", "location"),
    P_CLEVEL: ("covariate_level", "location"),
    P_CCHANGE: ("covariate_change", "location"),
}


def mixture_field(prior, index: int) -> np.ndarray:
    """The context field of a NormalMixture prior on element `index` of a location vector (models.priors.rv_with_element):
    [index, K, w.., mu.., sigma..]; an empty prior (None) gives [-1] (no element has one)."""
    if prior is None:
        return np.array([-1.0])
    if prior.dist != "NormalMixture" or set(prior.params) != {"w", "mu", "sigma"}:
        raise Unsupported(f"prior {prior.describe()} is not one the fused function computes")
    w, mu, sd = (np.atleast_1d(np.asarray(prior.params[k], dtype=float)) for k in ("w", "mu", "sigma"))
    if not (w.shape == mu.shape == sd.shape) or w.ndim != 1:
        raise Unsupported(f"prior {prior.describe()}: one weight, mean and SD per component are needed")
    return np.concatenate([[float(index), float(len(w))], w, mu, sd])


def _pack(fields: list[np.ndarray]) -> np.ndarray:
    """One float64 array: [total length, number of fields, (offset, length) per field, the fields]."""
    head = 2 + 2 * len(fields)
    offsets, pos = [], head
    for f in fields:
        offsets += [pos, f.size]
        pos += f.size
    return np.ascontiguousarray(np.concatenate([np.array([pos, len(fields)] + offsets, dtype=float)] + [np.ravel(f).astype(float) for f in fields]))


@dataclass(frozen=True)
class FusedLayout:
    """The context array and nutpie's variable layout of one model for a fused kernel."""

    ctx: np.ndarray
    n_dim: int
    n_expanded: int
    shape_info: tuple  # (names, slices, shapes), as nutpie's own compile produces
    kernel: str = "trajectory"  # which fused functions read ctx (inference/compile.KERNELS)
    variant: str = ""  # which of the kernel's compiled variants computes this model ("" the general one; `callback_functions`)


def block_layout(model, shapes: dict, x_blocks: tuple, e_blocks: tuple):
    """nutpie's layout of a model's variables for a fused kernel: the unconstrained (sampled) variables,
    then the other stored ones, each at an offset in the draw. Returns (names, slices, shapes, offset of
    each x block, offset of each e block (-1 where absent), n_dim, n_expanded); raises Unsupported
    for a variable the kernel does not know."""
    joined = [model.rvs_to_values[rv].name for rv in model.free_RVs]
    unknown = [n for n in joined if n not in x_blocks]
    if unknown:
        raise Unsupported(f"unknown free variables {unknown}")
    remaining = [v.name for v in model.unobserved_value_vars if v.name not in joined]
    unknown = [n for n in remaining if n not in e_blocks]
    if unknown:
        raise Unsupported(f"unknown stored variables {unknown}")
    names, slices, shape_list = [], [], []
    xoff, eoff = -np.ones(len(x_blocks)), -np.ones(len(e_blocks))
    pos = n_dim = 0
    for group, blocks, offsets in ((joined, x_blocks, xoff), (remaining, e_blocks, eoff)):
        for name in group:
            shape = tuple(int(s) for s in shapes[name])
            size = int(np.prod(shape))
            offsets[blocks.index(name)] = pos
            names.append(name)
            slices.append(slice(pos, pos + size))
            shape_list.append(shape)
            pos += size
        if group is joined:
            n_dim = pos
    return names, slices, shape_list, xoff, eoff, n_dim, pos


def _covariate_columns(model, design) -> list[int]:
    """The columns of `design.covariates` the model adjusts for, from its 'covariate' coordinate."""
    names = [str(c) for c in model.coords.get("covariate", ())]
    if not names or any(c not in design.covariate_names for c in names):
        raise Unsupported(f"covariate coordinate {names} does not match the design's covariate columns {design.covariate_names}")
    return [design.covariate_names.index(c) for c in names]


def _integrated_groups(integrated: np.ndarray, xx: np.ndarray, arm: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Group of each participant with integrated markers (-1 for the others) and one representative per group: the
    same missing set, the same Z'Z and, when the loadings depend on the arm (arm: each participant's arm index), the
    same arm share one H."""
    keys = {}
    group = -np.ones(len(integrated))
    for i in np.flatnonzero(integrated.any(axis=1)):
        key = (tuple(integrated[i]), xx[i, 0, 0], xx[i, 0, 1], xx[i, 1, 1], None if arm is None else int(arm[i]))
        group[i] = keys.setdefault(key, len(keys))
    rep = np.zeros(len(keys))
    for i in range(len(group) - 1, -1, -1):
        if group[i] >= 0:
            rep[int(group[i])] = i
    return group, rep


def fused_layout(model, design, priors, shapes: dict) -> FusedLayout:
    """Layout and data of a marginal trajectory `model` (models/trajectory.build_trajectory_marginal) built from
    `design` with `priors`; `shapes` maps each stored variable to its shape (as nutpie computes them).

    Covers every member of the trajectory family: the headline model (arms and baseline markers),
    moderation (the headline model with the biomarker x arm term), treatment (arms, no markers),
    treatment_curved (treatment with the curvature) and null (neither), each with any number of active
    arms and with or without baseline covariates. Raises Unsupported when the model is not one this
    module computes exactly.
    """
    names, slices, shape_list, xoff, eoff, n_dim, pos = block_layout(model, shapes, X_BLOCKS, E_BLOCKS)
    joined, remaining = names[: len(model.free_RVs)], names[len(model.free_RVs):]
    with_markers, with_arm = "marker_mean" in joined, "nac_change" in joined
    with_nac_moderation, curved = "nac_marker_moderation" in joined, "time_curvature" in joined
    with_covariates = "covariate_level" in joined
    md = design.baseline if with_markers else None
    if with_markers and md is None:
        raise Unsupported("marker variables without baseline markers")
    n_p, m = design.n_participants, (md.z.shape[1] if md is not None else 0)
    absent = set()
    if not with_markers:
        absent |= {P_MMEAN, P_MSD, P_MREG, P_PROG, P_MOD}
    if not with_arm:
        absent.add(P_NAC)
    if not with_nac_moderation:
        absent.add(P_NMOD)
    if not curved:
        absent.add(P_TCURV)
    if not (curved and with_arm):
        absent.add(P_NCURV)
    if not with_covariates:
        absent |= {P_CLEVEL, P_CCHANGE}
    n_sites, n_phases = len(design.sites), len(design.phases())
    n_arms = 0
    if with_arm:  # the model's active arms must be the design's, in its order (x holds arm a's terms at block a)
        n_arms = design.n_active
        labels = [str(a) for a in model.coords.get("active_arm", ())]
        if labels != [str(a) for a in design.active_arms]:
            raise Unsupported(f"active_arm coordinate {labels} is not the design's active arms {design.active_arms}")
    pri = np.zeros(3 * N_PRIORS)
    phase_loc = np.zeros(8)
    for slot, (key, kind) in PRIOR_SLOTS.items():
        if slot in absent:
            continue
        if kind == "phases":
            mu, sigma = location_elements(priors[key], n_phases)
            start = PHASE_LOC_TIME if slot == P_TIME else PHASE_LOC_NAC
            phase_loc[start : start + 2 * n_phases] = np.column_stack([mu, sigma]).ravel()
            pri[3 * slot : 3 * slot + 3] = (NORMAL, mu[0], sigma[0])
        else:
            pri[3 * slot : 3 * slot + 3] = _prior_triple(priors[key], kind)

    expected = {"intercept": 1, "time_change": n_phases, "participant_chol_cholesky-cov-packed__": 3, "residual_sd_log__": 1}
    if n_sites >= 2:
        expected["site_effect_zerosum__"] = n_sites - 1
    if with_arm:
        expected["nac_change"] = n_arms * n_phases
    if with_markers:
        expected.update({
            "marker_mean": m, "marker_sd_log__": m, "marker_prognostic": m, "marker_moderation": m,
            **({"marker_regression": m * (m - 1) // 2} if m > 1 else {}),
            **({"marker_missing_std": len(latent_missing(md))} if len(latent_missing(md)) else {}),
            **({"marker_censored_u_interval__": md.n_censored} if md.n_censored else {}),
        })
    if with_nac_moderation and with_markers and with_arm:
        expected["nac_marker_moderation"] = n_arms * m
    if curved:
        expected["time_curvature"] = 1
        if with_arm:
            expected["nac_curvature"] = n_arms
    columns = _covariate_columns(model, design) if with_covariates else []
    if with_covariates:
        expected["covariate_level"] = expected["covariate_change"] = len(columns)
    sizes_found = {name: sl.stop - sl.start for name, sl in zip(names[: len(joined)], slices)}
    if sizes_found != expected:
        raise Unsupported(f"free variables {sizes_found} are not the expected {expected}")
    # the stored blocks that depend on the optional terms (expand writes them from those terms)
    n_terms = len(fixed_terms(curved))
    if "participant_fixed" in remaining and tuple(shapes["participant_fixed"]) != (n_p, n_terms):
        raise Unsupported(f"participant_fixed has shape {tuple(shapes['participant_fixed'])}, not ({n_p}, {n_terms})")
    if ("nac_moderation_per_doubling" in remaining) != with_nac_moderation:
        raise Unsupported("nac_moderation_per_doubling without nac_marker_moderation, or the reverse")
    arm_blocks = {"nac_effect": (n_arms, len(design.weeks)), "nac_moderation_per_doubling": (n_arms, m)}
    for name, shape in arm_blocks.items():  # expand writes them active arm by active arm
        if name in remaining and tuple(shapes[name]) != shape:
            raise Unsupported(f"{name} has shape {tuple(shapes[name])}, not {shape}")

    stats = visit_stats(design, visit_columns(design, curved))
    xx = stats.xx[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    xq, qy, week_q = np.zeros(0), np.zeros(0), np.zeros(0)
    if curved:  # the 4th column's sums: X'q per participant (q'1, q't1, q't2, q'q) and q'y
        xq, qy = stats.xx[:, :, 3], stats.xy[:, 3]
        week_q = curve_basis(design.week_t1)
    status = np.zeros((n_p, m))
    index = np.zeros((n_p, m))
    zdata, zupper, per_doubling = np.zeros((n_p, m)), np.zeros((n_p, m)), np.zeros(m)
    n_int, igroup, irep = np.zeros(n_p), -np.ones(n_p), np.zeros(0)
    if md is not None:
        integrated = integrated_rows(md)
        status = np.where(md.missing, np.where(integrated[:, None], INTEGRATED, MISSING), np.where(md.censored, CENSORED, OBSERVED))
        n_int = (status == INTEGRATED).sum(axis=1)
        igroup, irep = _integrated_groups(status == INTEGRATED, stats.xx, design.arm_idx if with_nac_moderation else None)
        mi, mk = np.nonzero(status == MISSING)
        index[mi, mk] = np.arange(len(mi))
        ci, ck = np.nonzero(md.censored)
        index[ci, ck] = np.arange(len(ci))
        zdata = np.where(status == OBSERVED, np.nan_to_num(md.z), 0.0)
        zupper = np.nan_to_num(md.z_upper)
        per_doubling = np.log(2.0) / md.log_scale
    n_miss = len(latent_missing(md)) if md is not None else 0
    n_cens = md.n_censored if md is not None else 0
    sizes = np.array([
        n_p, m, n_miss, n_cens, n_sites if n_sites >= 2 else 0, int(design.has_followup), n_dim, pos, len(design.weeks), int(curved),
        int((n_int > 0).sum()), len(columns), n_arms,
    ])
    fields = [
        sizes, xoff, eoff, pri,
        design.arm_idx if with_arm else np.zeros(n_p), design.site_idx if n_sites >= 2 else np.zeros(n_p),
        xx, stats.xy[:, :3], stats.yy, stats.n,
        zdata, status, index, zupper, per_doubling, design.week_t1, design.week_t2, xq, qy, week_q, n_int,
        design.covariates[:, columns] if len(columns) else np.zeros(0), phase_loc, igroup, irep,
        mixture_field(priors.get(CONTROL_CHANGE), 0),
    ]
    assert len(fields) == N_FIELDS
    return FusedLayout(ctx=_pack(fields), n_dim=n_dim, n_expanded=pos, shape_info=(names, slices, shape_list),
                       variant="" if with_markers else NO_MARKERS)


# ---------------------------------------------------------------- nutpie (Python)


# nutpie's C interface: log density and gradient; expansion of a draw into the stored variables
LOGP_SIG = numba.types.int64(numba.types.uint64, numba.types.CPointer(numba.types.double), numba.types.CPointer(numba.types.double),
                             numba.types.CPointer(numba.types.double), numba.types.voidptr)
EXPAND_SIG = numba.types.int64(numba.types.uint64, numba.types.uint64, numba.types.CPointer(numba.types.double),
                               numba.types.CPointer(numba.types.double), numba.types.voidptr)
CFUNC_OPTIONS = {"error_model": "numpy"}  # the callbacks' arithmetic as `_jit`'s


NO_MARKERS = "no_markers"  # the variant for models without baseline markers (MARKERS False)


@lru_cache(maxsize=None)
def callback_functions(variant: str = "") -> tuple:
    """The Python functions (logp, expand) that numba compiles into the C callbacks of `variant` (FusedLayout.variant):
    "" the general ones; NO_MARKERS the same code with MARKERS False, which compiles in half the time and serves
    the models without baseline markers (it refuses, with code -1, a context array that has markers)."""
    if variant == "":
        return _logp_c, _expand_c
    if variant != NO_MARKERS:
        raise ValueError(f"unknown variant {variant!r} of the trajectory kernel")
    import types

    namespace = {**globals(), "MARKERS": False}
    return tuple(types.FunctionType(f.__code__, namespace, f.__name__, f.__defaults__, f.__closure__) for f in (_logp_c, _expand_c))


@lru_cache(maxsize=1)
def callbacks():
    """(`_logp_c`, `_expand_c`) compiled as C callbacks in this process, for `logp_grad` and `expand` (without the
    disk cache that inference/compile.fused_functions gives nutpie's)."""
    return numba.cfunc(LOGP_SIG, **CFUNC_OPTIONS)(_logp_c), numba.cfunc(EXPAND_SIG, **CFUNC_OPTIONS)(_expand_c)


def _pointer(a: np.ndarray, what: str, size: int):
    import ctypes

    if a.dtype != np.float64 or not a.flags.c_contiguous or a.size != size:
        raise ValueError(f"{what}: a contiguous float64 array of {size} values is needed")
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


def logp_grad(x: np.ndarray, ctx: np.ndarray, grad: np.ndarray) -> float:
    """The log density at unconstrained x (its gradient into grad): `_logp_c`, what nutpie calls, from Python."""
    import ctypes

    x = np.ascontiguousarray(x, dtype=np.float64)
    lp = np.zeros(1)
    code = callbacks()[0].ctypes(x.size, _pointer(x, "x", x.size), _pointer(grad, "grad", x.size), _pointer(lp, "logp", 1),
                                 ctx.ctypes.data_as(ctypes.c_void_p))
    if code == -1:
        raise ValueError(f"x has {x.size} values; the model of this context array has {int(_field(ctx, F_SIZES)[6])}")
    return float(lp[0])


def expand(x: np.ndarray, ctx: np.ndarray, out: np.ndarray) -> None:
    """Write the draw x's stored variables into out: `_expand_c`, what nutpie calls, from Python."""
    import ctypes

    x = np.ascontiguousarray(x, dtype=np.float64)
    code = callbacks()[1].ctypes(x.size, out.size, _pointer(x, "x", x.size), _pointer(out, "out", out.size), ctx.ctypes.data_as(ctypes.c_void_p))
    if code != 0:
        sizes = _field(ctx, F_SIZES)
        raise ValueError(f"x has {x.size} values and out {out.size}; the model of this context array has {int(sizes[6])} and {int(sizes[7])}")


@lru_cache(maxsize=1)
def source_key() -> str:
    """Hash of this file and the numba version: the compiled functions' cache key."""
    import hashlib
    from pathlib import Path

    return hashlib.sha256(Path(__file__).read_bytes() + numba.__version__.encode()).hexdigest()[:24]
