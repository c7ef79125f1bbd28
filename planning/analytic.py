"""Closed-form operating characteristics of the fast analysis for one fixed parameter draw.

With no dropout, no rounding and no NAC x marker term, change from baseline and the baseline score are
jointly normal within each arm, so the ANCOVA's NAC estimate divided by its estimated SE follows a
noncentral t on n - 3 degrees of freedom with noncentrality effect / se, where
    se^2 = Var(change | baseline) (1/n_treatment + 1/n_control).
The decision rule "P(effect < 0) > threshold" under the Normal(0, prior_sd) prior is
    -Z sqrt(k) > t_df^-1(threshold),   k = prior_sd^2 / (prior_sd^2 + se^2),
so power = P(Z < -t_df^-1(threshold) / sqrt(k)). This is the independent check of the simulator.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from .params import ParameterSet
from .simulate import AnalysisSettings, PlannedTrial


def conditional_change_sd(params: ParameterSet, week: float, draw: int = 0) -> float:
    """SD of change from baseline at `week` given the baseline score, within an arm."""
    t1, _ = params.scale.t_codes(week)
    tau0, tau1 = params.participant_sd[draw]
    rho = params.participant_corr[draw]
    sigma = params.residual_sd[draw]
    chol = params.marker_chol[draw]
    cov = chol @ chol.T
    pi, gamma = params.prognostic[draw], params.moderation[draw]
    var_y0 = tau0**2 + pi @ cov @ pi + sigma**2
    var_c = t1**2 * (tau1**2 + gamma @ cov @ gamma) + 2 * sigma**2
    cov_cy = t1 * (rho * tau0 * tau1 + pi @ cov @ gamma) - sigma**2
    return float(np.sqrt(var_c - cov_cy**2 / var_y0))


def analytic_power(params: ParameterSet, trial: PlannedTrial, effect: float, analysis: AnalysisSettings, draw: int = 0) -> float:
    """P(success) of the single-criterion rule at a fixed NAC effect (no dropout, unrounded scores)."""
    if trial.dropout != 0:
        raise ValueError("the closed form assumes no dropout")
    if analysis.dual:
        raise ValueError("the closed form covers the single criterion P(effect < 0) > threshold")
    sd_c = conditional_change_sd(params, trial.primary_week, draw)
    n1, n0 = trial.n_treatment, trial.n_control
    se = sd_c * np.sqrt(1 / n1 + 1 / n0)
    df = n1 + n0 - 3
    k = analysis.prior_sd**2 / (analysis.prior_sd**2 + se**2)
    q = special.stdtrit(df, analysis.threshold)
    return float(stats.nct.cdf(-q / np.sqrt(k), df, effect / se))
