"""Operating characteristics of the fast analysis for one fixed parameter draw, without simulation.

With no dropout, no rounding and no active arm x marker term, change from baseline and the baseline score
are jointly normal within each arm, with within-arm regression residual SD sigma_c (conditional_change_sd).
With K arms (control and A = K - 1 active arms, N participants in all) the ANCOVA of change on the arm
indicators and the baseline gives, for active arm a with n_a participants against the n_0 of control,
given the baseline scores an estimate exactly Normal(effect_a, sigma_c^2 v) with
    v = 1/n_a + 1/n_0 + (mean baseline difference of the two arms)^2 / within-arm baseline sum of squares
      = (1/n_a + 1/n_0) (1 + F / (N - K)),   F ~ F(1, N - K)   (randomised, normal baselines: the pooled
within-arm sum of squares of all K arms is sigma_0^2 chi2_{N-K}, independent of the arm means),
and the residual variance estimate is sigma_c^2 chi2_df / df, df = N - K - 1, independently. The rule
"P(effect < 0) > threshold" under the Normal(0, prior_sd) prior with t tails is
    estimate < -q se_hat sqrt(1 + se_hat^2 / prior_sd^2),   q = t_df^-1(threshold),  se_hat^2 = s^2 v,
so power = E[ Phi((-q se_hat sqrt(1 + se_hat^2/prior_sd^2) - effect) / (sigma_c sqrt(v))) ] over F and
chi2_df, computed by quadrature on their quantiles. This is the independent check of the simulator. (With complete data the MMRM's primary-visit estimate
and SE, REML, are exactly the ANCOVA's; its posterior also carries the priors of the other coefficients.)
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from .design import AnalysisSettings, PlannedTrial
from .params import ParameterSet


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


def analytic_power(params: ParameterSet, trial: PlannedTrial, effect: float, analysis: AnalysisSettings, draw: int = 0, nodes: int = 400,
                   arm: int = 0) -> float:
    """P(success) of active arm `arm` (0-based) by the single-criterion rule when its effect is `effect`
    (no dropout, unrounded scores; the other arms' effects do not enter)."""
    if max(trial.dropout_rates) != 0:
        raise ValueError("the formula assumes no dropout")
    if analysis.dual:
        raise ValueError("the formula covers the single criterion P(effect < 0) > threshold")
    sd_c = conditional_change_sd(params, trial.primary_week, draw)
    sizes = trial.arm_sizes
    n1, n0 = sizes[arm + 1], sizes[0]
    n, k = sum(sizes), len(sizes)
    df = n - k - 1
    u = (np.arange(nodes) + 0.5) / nodes
    v = (1 / n1 + 1 / n0) * (1 + stats.f.ppf(u, 1, n - k) / (n - k))  # (nodes,)
    s2 = sd_c**2 * stats.chi2.ppf(u, df) / df  # (nodes,)
    se_hat = np.sqrt(s2[None, :] * v[:, None])
    q = special.stdtrit(df, analysis.threshold)
    cut = -q * se_hat * np.sqrt(1 + se_hat**2 / analysis.prior_sd**2)
    return float(np.mean(special.ndtr((cut - effect) / (sd_c * np.sqrt(v[:, None])))))
