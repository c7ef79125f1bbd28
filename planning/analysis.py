"""Analyse simulated trials fast (no MCMC), by `AnalysisSettings.method`:
- "mmrm" (default): the MMRM of change from baseline over all attended visits (treatment x visit,
  baseline x visit, unstructured covariance, REML; planning/mmrm_gls.py), valid under MAR;
- "ancova": ANCOVA of change from baseline at the primary week on arm and baseline among completers.
The posterior for the NAC - placebo effect at the primary week: for the MMRM, the Bayesian MMRM's
(models/mmrm.py) exact posterior given Sigma at its REML estimate, with its normal priors on every
mean coefficient (treatment effect at each visit Normal(0, prior_sd), visit means Normal(0,
visit_mean_prior_sd), baseline slopes Normal(0, baseline_slope_prior_sd)); for the ANCOVA, the
estimate and SE combined with the Normal(0, prior_sd) prior,
    precision = 1/se^2 + 1/prior_sd^2,  mean = (estimate/se^2)/precision,  sd = precision^-1/2.
Both with Student-t tails on (participants at the primary visit - 3) degrees of freedom. Decision:
success if P(effect < 0) > threshold, and with the dual criterion also P(effect < -MCID) > mcid_prob.
`analyse` takes the attended visits as an argument, so an analysis of the data available at an
interim look is the same call with fewer attended visits (planning/interim.py runs the looks and their
stopping rules).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from .design import AnalysisSettings, SimulatedTrials
from .mmrm_gls import mmrm_effect
from .params import PlanningError


def ancova(sim: SimulatedTrials, completed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trial: ANCOVA estimate of the NAC - placebo difference in change, its SE and residual df.

    change = a + effect * T + b * (baseline - mean baseline) + e, fitted by least squares among completers.
    Trials with fewer than 2 completers in an arm, or a singular design (all baselines equal, say),
    get se = inf: no information, the decision fails.
    """
    w = (sim.completed if completed is None else completed).astype(float)
    s, n = w.shape
    t = np.broadcast_to(sim.treated, (s, n))
    n_obs = w.sum(axis=1)
    base_mean = (w * sim.y0).sum(axis=1) / np.maximum(n_obs, 1)
    x = np.stack([np.ones((s, n)), t, sim.y0 - base_mean[:, None]], axis=2)
    y = sim.yp - sim.y0
    xw = x * w[:, :, None]
    xtx = xw.transpose(0, 2, 1) @ x
    xty = (xw.transpose(0, 2, 1) @ y[:, :, None])[:, :, 0]
    per_arm_t = (w * t).sum(axis=1)
    ok = (per_arm_t >= 2) & (n_obs - per_arm_t >= 2) & (n_obs >= 5)
    # singular designs (e.g. every baseline clipped to the same score, or baseline collinear with arm)
    diag = np.einsum("sjj->sj", xtx)
    ok &= np.linalg.det(xtx) > 1e-10 * np.prod(np.maximum(diag, 1e-300), axis=1)
    xtx[~ok] = np.eye(3)
    xtx_inv = np.linalg.inv(xtx)
    beta = np.einsum("sjk,sk->sj", xtx_inv, xty)
    resid = y - (x @ beta[:, :, None])[:, :, 0]
    df = np.maximum(n_obs - 3, 1)
    s2 = (w * resid**2).sum(axis=1) / df
    se = np.sqrt(s2 * xtx_inv[:, 1, 1])
    ok &= np.isfinite(se) & (se > 0)
    est = np.where(ok, beta[:, 1], 0.0)
    se = np.where(ok, se, np.inf)
    return est, se, df


def normal_update(est: np.ndarray, se: np.ndarray, prior_sd: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and SD of the effect: the estimate with its SE combined with a Normal(0, prior_sd) prior."""
    prec = 1.0 / se**2 + 1.0 / prior_sd**2
    return (est / se**2) / prec, 1.0 / np.sqrt(prec)


def posterior_decisions(mean: np.ndarray, sd: np.ndarray, df: np.ndarray, analysis: AnalysisSettings) -> dict[str, np.ndarray]:
    """P(benefit), P(benefit > MCID), the decision rule and the interval width per trial, from the posterior
    mean and SD of the effect with Student-t tails on df degrees of freedom."""
    p_benefit = special.stdtr(df, -mean / sd)
    p_mcid = special.stdtr(df, (-analysis.mcid - mean) / sd)
    success = p_benefit > analysis.threshold
    if analysis.dual:
        success &= p_mcid > analysis.mcid_prob
    q = special.stdtrit(df, 0.5 + analysis.interval / 2)
    return {"post_mean": mean, "post_sd": sd, "p_benefit": p_benefit, "p_mcid": p_mcid, "success": success, "width": 2 * q * sd}


def analyse(sim: SimulatedTrials, analysis: AnalysisSettings, attended: np.ndarray | None = None,
            final_counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Analyse every simulated trial with `analysis.method` on the visits attended (default: all the
    participants attended by the end of the trial; an interim look passes those attended by then).
    With `final_counts` (`expected_final_counts`), also the final analysis' predicted posterior SD and
    degrees of freedom, `final_sd` and `final_df`."""
    attended = sim.attended if attended is None else attended
    extra = {}
    if analysis.method == "ancova":
        est, se, df = ancova(sim, attended > sim.primary)
        ok = np.isfinite(se)
        mean, sd = normal_update(est, se, analysis.prior_sd)
        if final_counts is not None:  # the SE shrinks as 1 / sqrt(completers)
            n_now = (attended > sim.primary).sum(axis=1)
            n_final = final_counts[:, sim.primary :].sum(axis=(1, 2))
            se_final = se * np.sqrt(n_now / np.maximum(n_final, 1e-9))
            extra = {"final_sd": np.where(ok, normal_update(0.0, se_final, analysis.prior_sd)[1], np.inf), "final_df": np.maximum(n_final - 3, 1)}
    elif analysis.method == "mmrm":
        priors = (analysis.visit_mean_prior_sd, analysis.prior_sd, analysis.baseline_slope_prior_sd)
        fit = mmrm_effect(sim.y[:, :, 1:] - sim.y[:, :, :1], attended, sim.treated, sim.y0, sim.primary, prior_sd=priors, final_counts=final_counts)
        est, se, df, ok, mean, sd = (fit[k] for k in ("estimate", "se", "df", "ok", "post_mean", "post_sd"))
        if final_counts is not None:
            extra = {"final_sd": fit["final_sd"], "final_df": fit["final_df"]}
    else:
        raise PlanningError(f"unknown analysis '{analysis.method}'")
    out = posterior_decisions(mean, sd, df, analysis)
    out.update(extra)
    out.update(estimate=est, se=se, df=df, ok=ok, completers=(attended > sim.primary).sum(axis=1), true_effect=sim.true_effect, eligible=sim.eligible)
    return out
