"""The maths of the fast path: a trajectory model with the participant effects integrated out.

With a Gaussian likelihood the participant effects b_i = (b0_i, b1_i) ~ N(0, S), S = L L',
enter the mean linearly through Z_i = [1, t1] (the participant's observed visits), so

    y_i ~ MvNormal(X_i c_i, Z_i S Z_i' + sigma^2 I)

exactly, where c_i are the participant's fixed-part coefficients on the columns X_i (they include
the site, arm and latent biomarker terms; the biomarker block stays as it is: conditional on the
completed markers z the model is still Gaussian in b):

    X_i = [1, t1, t2]        c_i = (level_i, change_i, followup_change_i)
    X_i = [1, t1, t2, q]     c_i = (level_i, change_i, followup_change_i, curvature_i)   (curved treatment phase)

with q = 4 t1 (1 - t1) the curvature basis of models/trajectory.py (t2 = 0 without a follow-up
phase). The arm terms are those of the participant's own active arm (none in the control arm), in
change_i, followup_change_i and curvature_i; the biomarker x arm term of the moderation model is part
of change_i. Z_i is the first two columns of X_i whatever the model. With the Woodbury identity and
the matrix determinant lemma, written with the Cholesky factor L so that S is never inverted,

    M_i        = I_2 + L' Z_i'Z_i L / sigma^2
    log|V_i|   = 2 n_i log sigma + log|M_i|
    r'V_i^-1 r = r'r / sigma^2 - w' M_i^-1 w / sigma^4,     w = L' Z_i' r,  r = y_i - X_i c_i,

and r'r, Z_i'r only need per-participant sums of the visit data (X'X, X'y, y'y), computed once.
The log-density therefore costs O(participants) per gradient, with 2 x 2 algebra in closed
form, whatever the number of visits, and the sampler does not have to explore 2 x n funnel-prone
participant coordinates.

Nothing a user sees is lost: after sampling, each posterior draw gets an exact draw of the
participant effects from their conditional posterior
    u_i | y, theta ~ N(M_i^-1 w / sigma^2, M_i^-1),   b_i = L u_i,
so (theta, b) is an exact draw from the joint posterior of the plain model (inference/marginal.py).
They are stored as `participant_raw` (u) and `participant_effects` (b) with the plain model's names
and dims. The pointwise log-likelihood of `y` is then the same quantity the plain path stores: per
visit, conditional on the participant effects, log Normal(y_iw | mu_iw, sigma); the posterior
predictive draws y_rep_iw ~ Normal(mu_iw, sigma) likewise.

The marginalisation is exact only for the Gaussian likelihood: Student-t and censored likelihoods
keep the plain model (models/trajectory.py offers the fast variant only where it is exact: every
family member with the normal likelihood).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytensor.tensor as pt

from .design import TrialDesign

FIXED_TERMS = ["level", "change", "followup_change"]  # the coefficients on X = [1, t1, t2]
CURVATURE_TERM = "curvature"  # the coefficient on the 4th column q of a curved model
FIXED_VAR = "participant_fixed"  # per-draw fixed-part coefficients c_i; used for recovery, then dropped
LOG2PI = float(np.log(2.0 * np.pi))


def fixed_terms(curved: bool) -> list[str]:
    """Names of the fixed-part coefficients c_i (the 'participant_term' coordinate of FIXED_VAR)."""
    return FIXED_TERMS + [CURVATURE_TERM] if curved else list(FIXED_TERMS)


def fixed_columns(design: TrialDesign, curve: np.ndarray | None = None) -> np.ndarray:
    """X per observed visit, obs x K: [1, t1, t2] (t2 = 0 without a follow-up phase), and the curvature
    basis `curve` (per visit) as a 4th column when given."""
    cols = [np.ones_like(design.t1), design.t1, design.t2 if design.has_followup else np.zeros_like(design.t2)]
    if curve is not None:
        cols.append(np.asarray(curve, dtype=float))
    return np.column_stack(cols)


@dataclass(frozen=True)
class VisitStats:
    """Per-participant sums of the visit data on X = [1, t1, t2] (or [1, t1, t2, q]): X'X, X'y, y'y and counts."""

    xx: np.ndarray  # participant x K x K
    xy: np.ndarray  # participant x K
    yy: np.ndarray  # participant
    n: np.ndarray  # participant (observed visits)


def visit_stats(design: TrialDesign, columns: np.ndarray | None = None) -> VisitStats:
    """The sums on `columns` (obs x K, `fixed_columns`; default the straight X = [1, t1, t2])."""
    n_p = design.n_participants
    x = fixed_columns(design) if columns is None else columns
    k = x.shape[1]
    pid = design.obs_participant
    xx = np.zeros((n_p, k, k))
    np.add.at(xx, pid, x[:, :, None] * x[:, None, :])
    xy = np.zeros((n_p, k))
    np.add.at(xy, pid, x * design.y[:, None])
    yy = np.bincount(pid, weights=design.y**2, minlength=n_p).astype(float)
    n = np.bincount(pid, minlength=n_p).astype(float)
    return VisitStats(xx=xx, xy=xy, yy=yy, n=n)


def marginal_loglik(stats: VisitStats, c, chol, sigma):
    """Per-participant log marginal likelihood (pytensor): c participant x K (the columns of `stats`), chol the
    lower Cholesky factor of the participant-effect covariance as (l00, l10, l11), each a scalar or one value per
    participant (models/trajectory.participant_cholesky), sigma scalar."""
    xx = pt.as_tensor_variable(stats.xx)
    xy = pt.as_tensor_variable(stats.xy)
    gc = (xx * c[:, None, :]).sum(axis=2)  # X'X c
    rr = stats.yy - 2.0 * (c * xy).sum(axis=1) + (c * gc).sum(axis=1)  # r'r
    zr = xy[:, :2] - gc[:, :2]  # Z'r
    a, b, d = (np.ascontiguousarray(stats.xx[:, i, j]) for i, j in ((0, 0), (0, 1), (1, 1)))  # Z'Z
    l00, l10, l11 = chol
    s2 = sigma**2
    m00 = 1.0 + (a * l00**2 + 2.0 * b * l00 * l10 + d * l10**2) / s2
    m01 = l11 * (b * l00 + d * l10) / s2
    m11 = 1.0 + d * l11**2 / s2
    det = m00 * m11 - m01**2
    w0 = l00 * zr[:, 0] + l10 * zr[:, 1]
    w1 = l11 * zr[:, 1]
    wmw = (m11 * w0**2 - 2.0 * m01 * w0 * w1 + m00 * w1**2) / det
    quad = rr / s2 - wmw / s2**2
    return -0.5 * (stats.n * LOG2PI + 2.0 * stats.n * pt.log(sigma) + pt.log(det) + quad)


def integrated_pointwise(e: np.ndarray, t1: np.ndarray, pid: np.ndarray, baseline: np.ndarray, chol: tuple, sigma: np.ndarray):
    """Log-densities of the scores with the participant effects integrated out, per draw (numpy).

    e         draws x obs: y - the fixed part of the mean X c (everything but the participant effects; with the
              curvature column when the model has one)
    t1        obs: the treatment-phase time code (the participant-effect design is z = (1, t1))
    pid       obs: participant index; baseline: obs, True at each participant's week-0 visit
    chol      (l00, l10, l11), each draws, or draws x participants for a covariance per participant (missing
              biomarkers integrated out, models/trajectory.participant_cholesky): the Cholesky factor L of S
    sigma     draws: the residual SD

    With V_i = Z_i S Z_i' + sigma^2 I and its precision P_i = V_i^-1 (Woodbury, 2 x 2 algebra as above):
    - participant: log p(y_i | theta) - log p(y_i0 | theta) = log p(post-baseline scores | baseline, theta),
      draws x participants (the full log p(y_i | theta) for a participant without a baseline visit);
    - visit: log p(y_ij | y_i,-j, theta) = log N(y_ij | y_ij - (P_i e_i)_j / P_i,jj, 1 / P_i,jj), draws x obs,
      the exact leave-one-visit-out predictive density given the participant's other visits.
    """
    order = np.argsort(pid, kind="stable")
    pid_s = pid[order]
    n_p = int(pid.max()) + 1
    starts = np.searchsorted(pid_s, np.arange(n_p))
    present = np.bincount(pid, minlength=n_p) > 0
    def per_participant(x):  # draws x obs -> draws x participants (sums over each participant's visits)
        out = np.add.reduceat(x[:, order], np.minimum(starts, len(pid) - 1), axis=1)
        return np.where(present, out, 0.0)
    per_participant_chol = np.ndim(chol[0]) == 2
    l00, l10, l11 = (np.asarray(v, dtype=float) if per_participant_chol else np.asarray(v, dtype=float)[:, None] for v in chol)
    s2 = np.asarray(sigma, dtype=float)[:, None] ** 2
    ones = np.ones((1, len(pid)))
    a00 = per_participant(ones)[0]
    a01 = per_participant(t1[None, :])[0]
    a11 = per_participant(t1[None, :] ** 2)[0]
    m00 = 1.0 + (l00**2 * a00 + 2.0 * l00 * l10 * a01 + l10**2 * a11) / s2
    m01 = l11 * (l00 * a01 + l10 * a11) / s2
    m11 = 1.0 + l11**2 * a11 / s2
    det = m00 * m11 - m01**2
    s0, s1 = per_participant(e), per_participant(e * t1[None, :])
    w0, w1 = l00 * s0 + l10 * s1, l11 * s1  # w = L' Z' e
    v0, v1 = (m11 * w0 - m01 * w1) / det, (m00 * w1 - m01 * w0) / det  # M^-1 w
    n = a00[None, :]
    full = -0.5 * (n * LOG2PI + n * np.log(s2) + np.log(det) + per_participant(e**2) / s2 - (w0 * v0 + w1 * v1) / s2**2)
    if per_participant_chol:  # the factor of each visit's participant
        l00, l10, l11 = l00[:, pid], l10[:, pid], l11[:, pid]
    g0, g1 = l00 + l10 * t1[None, :], l11 * t1[None, :]  # g_j = L' z_j
    i00, i01, i11 = (m11 / det)[:, pid], (-m01 / det)[:, pid], (m00 / det)[:, pid]
    q = g0 * (i00 * g0 + i01 * g1) + g1 * (i01 * g0 + i11 * g1)  # g' M^-1 g
    h = g0 * v0[:, pid] + g1 * v1[:, pid]  # g' M^-1 w
    p_jj = (1.0 - q / s2) / s2
    pe = (e - h / s2) / s2
    visit = 0.5 * (np.log(p_jj) - LOG2PI) - 0.5 * pe**2 / p_jj
    var0 = s2 + g0**2 + g1**2  # z0' S z0 + sigma^2 at each visit (used at the baseline visits)
    base = -0.5 * (LOG2PI + np.log(var0) + e**2 / var0)
    base_sum = per_participant(np.where(baseline[None, :], base, 0.0))
    return full - base_sum, visit
