"""The maths of the fast path: a straight-phase trajectory model with the participant effects integrated out.

With a Gaussian likelihood the participant effects b_i = (b0_i, b1_i) ~ N(0, S), S = L L',
enter the mean linearly through Z_i = [1, t1] (the participant's observed visits), so

    y_i ~ MvNormal(X_i c_i, Z_i S Z_i' + sigma^2 I)

exactly, where c_i = (level_i, change_i, followup_change_i) are the participant's fixed-part
coefficients on X_i = [1, t1, t2] (they include the site, arm and latent biomarker terms; the
biomarker block stays as it is: conditional on the completed markers z the model is still
Gaussian in b). With the Woodbury identity and the matrix determinant lemma, written with the
Cholesky factor L so that S is never inverted,

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

The marginalisation is exact only for the Gaussian likelihood; Student-t and censored likelihoods,
the curved treatment phase and the biomarker x arm term keep the plain model (models/trajectory.py
offers the fast variant only where it is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytensor.tensor as pt

from .design import TrialDesign

FIXED_TERMS = ["level", "change", "followup_change"]
FIXED_VAR = "participant_fixed"  # per-draw fixed-part coefficients c_i; used for recovery, then dropped
LOG2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class VisitStats:
    """Per-participant sums of the visit data on X = [1, t1, t2]: X'X, X'y, y'y and counts."""

    xx: np.ndarray  # participant x 3 x 3
    xy: np.ndarray  # participant x 3
    yy: np.ndarray  # participant
    n: np.ndarray  # participant (observed visits)


def visit_stats(design: TrialDesign) -> VisitStats:
    n_p = design.n_participants
    x = np.column_stack([np.ones_like(design.t1), design.t1, design.t2 if design.has_followup else np.zeros_like(design.t2)])
    pid = design.obs_participant
    xx = np.zeros((n_p, 3, 3))
    np.add.at(xx, pid, x[:, :, None] * x[:, None, :])
    xy = np.zeros((n_p, 3))
    np.add.at(xy, pid, x * design.y[:, None])
    yy = np.bincount(pid, weights=design.y**2, minlength=n_p).astype(float)
    n = np.bincount(pid, minlength=n_p).astype(float)
    return VisitStats(xx=xx, xy=xy, yy=yy, n=n)


def marginal_loglik(stats: VisitStats, c, chol, sigma):
    """Per-participant log marginal likelihood (pytensor): c participant x 3, chol 2 x 2 lower, sigma scalar."""
    xx = pt.as_tensor_variable(stats.xx)
    xy = pt.as_tensor_variable(stats.xy)
    gc = (xx * c[:, None, :]).sum(axis=2)  # X'X c
    rr = stats.yy - 2.0 * (c * xy).sum(axis=1) + (c * gc).sum(axis=1)  # r'r
    zr = xy[:, :2] - gc[:, :2]  # Z'r
    a, b, d = (np.ascontiguousarray(stats.xx[:, i, j]) for i, j in ((0, 0), (0, 1), (1, 1)))  # Z'Z
    l00, l10, l11 = chol[0, 0], chol[1, 0], chol[1, 1]
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
