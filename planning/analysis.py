"""Analyse simulated trials fast (no MCMC), by `AnalysisSettings.method`:
- "mmrm" (default): the MMRM of change from baseline over all attended visits (arm x visit,
  baseline x visit, unstructured covariance, REML; planning/mmrm_gls.py), valid under MAR;
- "ancova": ANCOVA of change from baseline at the primary week on arm and baseline among completers.
Every active arm is compared with the control arm in the one model of all arms (A active arms: one
indicator per active arm, Q = A + 2 regressors). The posterior for each active arm - control effect at
the primary week: for the MMRM, the Bayesian MMRM's (models/mmrm.py) exact posterior given Sigma at
its REML estimate, with its normal priors on every mean coefficient (each arm's effect at each visit
Normal(0, prior_sd), visit means Normal(0, visit_mean_prior_sd), baseline slopes Normal(0,
baseline_slope_prior_sd)); for the ANCOVA, the estimate and SE combined with the Normal(0, prior_sd) prior,
    precision = 1/se^2 + 1/prior_sd^2,  mean = (estimate/se^2)/precision,  sd = precision^-1/2.
Both with Student-t tails on (participants at the primary visit - Q) degrees of freedom. Decision, per
active arm: success if P(effect < 0) > threshold, and with the dual criterion also P(effect < -MCID) >
mcid_prob. Per-arm results are arrays (S, A). `analyse` takes the attended visits as an argument, so
an analysis of the data available at an interim look is the same call with fewer attended visits
(planning/interim.py runs the looks and their stopping rules).

Borrowing a control arm (`AnalysisSettings.control_prior`: a (robust) MAP prior, a normal mixture, on the control
arm's mean change c at the primary visit, maths/map_prior.py): the analysis gives (c_hat, d_hat) with covariance S
with a flat prior on c and the analysis' priors on everything else (MMRM: `mmrm_effect(..., flat_control=True)`,
the GLS given Sigma with the prior precision of c set to 0 and the others kept; ANCOVA: the intercept at the
completers' mean baseline and each arm's difference, with their covariance, each arm's Normal(0, prior_sd) prior
applied as in the analysis without borrowing), and maths.map_prior.control_prior_posterior combines it with the
mixture exactly: each arm's difference has a normal-mixture posterior. P(effect < 0) and P(effect < -MCID) are its
CDF with each component given Student-t tails on the same degrees of freedom as the analysis without borrowing
(so with a single vague component the two analyses are the same, tails included; the tails stand for the
uncertainty in the estimated covariance, as without borrowing); the interval width is that mixture's central
interval. The analysis without borrowing is computed from the same fit and returned beside it (`reference`),
with its own threshold (`AnalysisSettings.reference_threshold`).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from maths.gaussian import conjugate_normal
from maths.map_prior import MixtureArray, control_prior_posterior

from .design import AnalysisSettings, SimulatedTrials
from .mmrm_gls import mmrm_effect
from .params import PlanningError


def ancova(sim: SimulatedTrials, completed: np.ndarray | None = None, with_control: bool = False):
    """Per trial: ANCOVA estimate of each active arm - control difference in change (S, A), its SE (S, A)
    and the residual df (S,); with `with_control` also a dict of the control arm's mean change at the completers'
    mean baseline (the intercept; `control_mean` (S,)), its variance `control_var` (S,) and its covariance with
    each difference `control_effect_cov` (S, A).

    change = a + sum_a effect_a T_a + b * (baseline - mean baseline) + e, fitted by least squares among
    completers. An arm with no completers is left out of the fit (its column would be zero). An arm (or
    the control arm) with fewer than 2 completers, or a singular design (all baselines equal, say), gives
    se = inf: no information, that decision fails.
    """
    w = (sim.completed if completed is None else completed).astype(float)
    s, n = w.shape
    a_n = sim.n_active
    q = a_n + 2
    t = np.broadcast_to((sim.arm[:, None] == np.arange(1, a_n + 1)).astype(float), (s, n, a_n))
    n_obs = w.sum(axis=1)
    base_mean = (w * sim.y0).sum(axis=1) / np.maximum(n_obs, 1)
    x = np.concatenate([np.ones((s, n, 1)), t, (sim.y0 - base_mean[:, None])[:, :, None]], axis=2)
    y = sim.yp - sim.y0
    xw = x * w[:, :, None]
    xtx = xw.transpose(0, 2, 1) @ x
    xty = (xw.transpose(0, 2, 1) @ y[:, :, None])[:, :, 0]
    per_arm_t = np.einsum("sn,sna->sa", w, t)  # completers per active arm
    n_control = n_obs - per_arm_t.sum(axis=1)
    empty = per_arm_t == 0
    if empty.any():  # nobody of that arm completed: its column is zero, so it is left out of the solve
        idx = np.arange(1, a_n + 1)
        xtx[:, idx, idx] += empty
    ok_trial = (n_control >= 2) & (n_obs >= q + 2)
    # singular designs (e.g. every baseline clipped to the same score, or baseline collinear with arm)
    diag = np.einsum("sjj->sj", xtx)
    ok_trial &= np.linalg.det(xtx) > 1e-10 * np.prod(np.maximum(diag, 1e-300), axis=1)
    xtx[~ok_trial] = np.eye(q)
    xtx_inv = np.linalg.inv(xtx)
    beta = np.einsum("sjk,sk->sj", xtx_inv, xty)
    resid = y - (x @ beta[:, :, None])[:, :, 0]
    df = np.maximum(n_obs - q, 1)
    s2 = (w * resid**2).sum(axis=1) / df
    se = np.sqrt(s2[:, None] * xtx_inv[:, np.arange(1, a_n + 1), np.arange(1, a_n + 1)])
    ok = ok_trial[:, None] & (per_arm_t >= 2) & np.isfinite(se) & (se > 0)
    est = np.where(ok, beta[:, 1 : a_n + 1], 0.0)
    se = np.where(ok, se, np.inf)
    if not with_control:
        return est, se, df
    good = ok.any(axis=1)
    control = {"control_mean": np.where(good, beta[:, 0], 0.0), "control_var": np.where(good, s2 * xtx_inv[:, 0, 0], 1.0),
               "control_effect_cov": np.where(ok, s2[:, None] * xtx_inv[:, 0, 1 : a_n + 1], 0.0)}
    return est, se, df, control


def normal_update(est: np.ndarray, se: np.ndarray, prior_sd: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and SD of the effect: the estimate with its SE combined with a Normal(0, prior_sd) prior."""
    mean, var = conjugate_normal(0.0, prior_sd**2, est, se**2)
    return mean, np.sqrt(var)


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


def mixture_decisions(post: MixtureArray, ok: np.ndarray, df: np.ndarray, analysis: AnalysisSettings) -> dict[str, np.ndarray]:
    """`posterior_decisions` for an effect whose posterior is a normal mixture (per trial and arm), each component
    with Student-t tails on df; a failed analysis (not ok) has P(benefit) 1/2, infinite SD and width, no success."""
    p_benefit = np.where(ok, post.cdf(0.0, df), 0.5)
    p_mcid = np.where(ok, post.cdf(-analysis.mcid, df), 0.5)
    success = ok & (p_benefit > analysis.threshold)
    if analysis.dual:
        success &= p_mcid > analysis.mcid_prob
    half = analysis.interval / 2
    width = np.where(ok, post.quantile(0.5 + half, df) - post.quantile(0.5 - half, df), np.inf)
    return {"post_mean": np.where(ok, post.mean, 0.0), "post_sd": np.where(ok, post.sd, np.inf), "p_benefit": p_benefit, "p_mcid": p_mcid,
            "success": success, "width": width}


def borrowing_posterior(analysis: AnalysisSettings, estimates: dict[str, np.ndarray]) -> tuple[MixtureArray, MixtureArray]:
    """Each arm's (S, A) posterior of the control mean and of its difference under the control prior, from the
    flat-control estimates (`control_mean`, `control_var`, `control_effect_cov`, and `flat_effect_mean`,
    `flat_effect_var` for the MMRM, whose effect priors are in them already, or `estimate`, `se` for the ANCOVA,
    whose Normal(0, prior_sd) effect prior is added here)."""
    c = estimates["control_mean"][:, None]
    vc = estimates["control_var"][:, None]
    cov = estimates["control_effect_cov"]
    if analysis.method == "ancova":
        return control_prior_posterior(analysis.control_mixture(), c, estimates["estimate"], vc, cov, np.where(estimates["ok"], estimates["se"] ** 2, 1.0),
                                       effect_prior_sd=analysis.prior_sd)
    return control_prior_posterior(analysis.control_mixture(), c, estimates["flat_effect_mean"], vc, cov, estimates["flat_effect_var"])


def analyse(sim: SimulatedTrials, analysis: AnalysisSettings, attended: np.ndarray | None = None,
            final_counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Analyse every simulated trial with `analysis.method` on the visits attended (default: all the
    participants attended by the end of the trial; an interim look passes those attended by then; a
    participant with 0 visits attended is not in the analysis). Per active arm (S, A): the posterior
    summaries and decision, `estimate`, `se`, `df`, `ok`, `completers` (of the control arm and that arm
    at the primary visit), `true_effect`; per trial `eligible`. With `final_counts`
    (`expected_final_counts`), also the final analysis' predicted posterior SD and degrees of freedom,
    `final_sd` and `final_df`. With a control prior (module docstring) the posterior summaries and decisions are
    the borrowing analysis', `reference` holds the analysis without borrowing's (`posterior_decisions`), and
    `control_post_mean` (S, A) the control mean's posterior mean; interim looks are not available with it."""
    borrow = analysis.control_prior is not None
    if borrow and final_counts is not None:
        raise PlanningError("interim looks are not available with a control prior (--historical-control)")
    attended = sim.attended if attended is None else attended
    a_n = sim.n_active
    completed = attended > sim.primary
    per_arm = np.stack([completed[:, sim.arm == k].sum(axis=1) for k in range(a_n + 1)], axis=1)  # (S, K)
    completers = per_arm[:, :1] + per_arm[:, 1:]  # control and each active arm
    extra = {}
    if analysis.method == "ancova":
        est, se, df, *control = ancova(sim, completed, with_control=borrow)
        df = np.broadcast_to(df[:, None], est.shape).copy()
        ok = np.isfinite(se)
        mean, sd = normal_update(est, se, analysis.prior_sd)
        if final_counts is not None:  # the SE shrinks as 1 / sqrt(completers of the two arms compared)
            final_arm = final_counts[:, sim.primary :].sum(axis=1)  # (S, K)
            n_final = final_arm[:, :1] + final_arm[:, 1:] if a_n > 1 else final_counts[:, sim.primary :].sum(axis=(1, 2))[:, None]
            se_final = se * np.sqrt(completers / np.maximum(n_final, 1e-9))
            n_all = final_counts[:, sim.primary :].sum(axis=(1, 2))
            extra = {"final_sd": np.where(ok, normal_update(0.0, se_final, analysis.prior_sd)[1], np.inf),
                     "final_df": np.broadcast_to(np.maximum(n_all - (a_n + 2), 1)[:, None], est.shape).copy()}
    elif analysis.method == "mmrm":
        priors = (analysis.visit_mean_prior_sd, analysis.prior_sd, analysis.baseline_slope_prior_sd)
        fit = mmrm_effect(sim.y[:, :, 1:] - sim.y[:, :, :1], attended, sim.arm, sim.y0, sim.primary, prior_sd=priors, final_counts=final_counts,
                          n_active=a_n, flat_control=borrow)
        est, se, df, ok, mean, sd = (fit[k] for k in ("estimate", "se", "df", "ok", "post_mean", "post_sd"))
        control = [fit] if borrow else []
        if final_counts is not None:
            extra = {"final_sd": fit["final_sd"], "final_df": fit["final_df"]}
    else:
        raise PlanningError(f"unknown analysis '{analysis.method}'")
    if borrow:
        out = posterior_decisions(mean, sd, df, analysis.without_borrowing())
        c_post, d_post = borrowing_posterior(analysis, {**control[0], "estimate": est, "se": se, "ok": ok})
        reference, out = out, mixture_decisions(d_post, ok, df, analysis)
        out.update(reference=reference, control_post_mean=np.where(ok, c_post.mean, np.nan))
    else:
        out = posterior_decisions(mean, sd, df, analysis)
    out.update(extra)
    out.update(estimate=est, se=se, df=df, ok=ok, completers=completers, true_effect=sim.true_effect, eligible=sim.eligible)
    return out
