"""The null trajectory model: time only, no arm effect; the reference every other model is compared with.

    y_iw = alpha + site_s(i) + b0_i + (beta_1 + b1_i) t1_w + beta_2 t2_w + e_iw
           [+ kappa_0 q_w with the curved time course]

Both arms share one course over time, so 'placebo_change' is the common change from baseline.
No biomarkers are needed. See models/trajectory.py for the shared maths and priors.
"""

from __future__ import annotations

import pymc as pm

from .design import TrialDesign
from .trajectory import build_trajectory, trajectory_priors

NAME = "null"
DESCRIPTION = "time only (treatment phase, follow-up), no arm effect: the reference for comparison; no biomarkers needed"


def default_priors(design: TrialDesign):
    return trajectory_priors(design)


def build_null(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal", curved: bool = False) -> pm.Model:
    return build_trajectory(design, name=NAME, priors=priors, likelihood=likelihood, arm=False, curved=curved)
