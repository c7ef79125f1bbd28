"""The treatment model: arm x time over the treatment phase and the follow-up, no biomarkers.

    y_iw = alpha + site_s(i) + b0_i + (beta_1 + delta_1 T_i + b1_i) t1_w + (beta_2 + delta_2 T_i) t2_w + e_iw
           [+ (kappa_0 + kappa_1 T_i) q_w with the curved time course, q_w = 4 t1_w (1 - t1_w)]

NAC - placebo at week w: nac_effect[w] = delta_1 t1_w [+ kappa_1 q_w] + delta_2 t2_w. No arm main
effect (randomisation: constrained longitudinal analysis). The registered 'treatment_curved' is
the same model with the curved treatment phase, to compare straight and curved courses by LOO.
"""

from __future__ import annotations

import pymc as pm

from .design import TrialDesign
from .trajectory import build_trajectory, trajectory_priors

NAME = "treatment"
DESCRIPTION = "arm x time (treatment phase, follow-up), no biomarkers: the NAC effect by week"
NAME_CURVED = "treatment_curved"
DESCRIPTION_CURVED = "arm x time with a curved treatment phase (straight line + 4 t1 (1 - t1) bend, per arm), no biomarkers"


def default_priors(design: TrialDesign):
    return trajectory_priors(design)


def build_treatment(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal", curved: bool = False) -> pm.Model:
    return build_trajectory(design, name=NAME_CURVED if curved else NAME, priors=priors, likelihood=likelihood, arm=True, curved=curved)


def build_treatment_curved(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal") -> pm.Model:
    return build_treatment(design, priors=priors, likelihood=likelihood, curved=True)
