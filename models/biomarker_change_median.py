"""Bayesian median regression of the end-of-treatment log biomarkers (the published quantile method).

Hasebe et al. (2017) used quantile regression for the biomarker changes. Its Bayesian form
uses the asymmetric Laplace likelihood, whose q-quantile is its location; at q = 0.5 it is
the Laplace distribution, so for each marker k separately
    z1_ik ~ Laplace(a_k + B_k . z0_i + sum_a theta_ak T_ia,  b_k)   (median regression)
with z0_i, z1_i the standardised log markers at baseline and at the end of treatment and T_ia = 1
when participant i is in active arm a (one active arm in a two-arm trial). The median of a monotone
transform is the transform of the median, so exp(theta_ak SD_k) is the active arm a / control ratio
of the median marker values (natural units) at given baseline values, for each active arm.

- Baseline markers are covariates: missing ones are imputed and censored ones bounded
  in the same latent multivariate-normal block as the mean model (marker_change_block).
- Baseline covariates declared in dataset.toml add G x_i to the location, as in the mean model.
- End-of-treatment values below the detection limit are left-censored: the likelihood term
  is the Laplace CDF at the limit (pm.Censored), never the limit itself.
- Missing end-of-treatment values enter no likelihood: quantile regression is marginal per
  marker, so a latent value would carry no information (valid if missing at random given
  arm and baseline markers).
The log-likelihood is stored per marker (`week12_il6`, ...), the model's `outcome_vars`.

Caveat: the asymmetric Laplace is a working likelihood. Its posterior SD for theta is close to
the mean model's, whereas the sampling SD of a median estimator is larger (sqrt(pi/2) times on
normal residuals), so the raw posterior intervals are too narrow. The estimates table therefore
widens each marker's draws of theta around their mean by the Yang, Wang & He (2016) adjustment
(`interval_scale`, its factor, is in the table); the posterior in the saved fit is the raw one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from .biomarker_change import ratio_rows
from .contract import MARKER_VALUES, BuiltModel
from .design import COVARIATE_DIM, TrialDesign, select_covariates
from .marker_change_block import (
    COVARIATE_MARKER_PRIOR,
    add_change_regression,
    arm_data,
    block_coords,
    change_data,
    change_priors,
    used_priors,
    with_text,
)
from .priors import Prior, resolve, rv

NAME = "biomarker_change_median"
DESCRIPTION = "Bayesian median (quantile q=0.5, asymmetric Laplace) regression of end-of-treatment log markers: NAC/placebo ratio of medians"
QUANTILE = 0.5
# Far below any standardised value: observed (uncensored) rows get this as their censoring bound.
_NO_BOUND = -1.0e3


def default_priors(design: TrialDesign) -> dict[str, Prior]:
    pri = change_priors(design)
    del pri["residual_sd"], pri["residual_corr"]
    pri["laplace_scale"] = Prior("HalfNormal", {"sigma": 1.0}, "Laplace scale b of the standardised log marker (its SD is b sqrt 2)")
    return pri


def build_biomarker_change_median(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal", covariates=True) -> BuiltModel:
    if likelihood != "normal":
        raise ValueError(f"model '{NAME}' has its own (asymmetric Laplace, q = 0.5) likelihood; --likelihood {likelihood} does not apply")
    cd = change_data(design, NAME)
    columns = select_covariates(design, covariates)
    pri = resolve(default_priors(design), priors)
    end = cd.later
    with pm.Model(coords=block_coords(cd, design, columns)) as model:
        _, mu, nac = add_change_regression(cd, pri, arm_data(cd, design), design, columns)
        scale = rv("laplace_scale", pri["laplace_scale"], dims="marker")
        outcome_vars = []
        for k, mk in enumerate(cd.names):
            rows = np.flatnonzero(~end.missing[:, k])
            if not len(rows):
                continue
            cens = end.censored[rows, k]
            value = np.where(cens, end.z_upper[rows, k], end.z[rows, k])
            bound = np.where(cens, end.z_upper[rows, k], _NO_BOUND)
            name = f"week{cd.week}_{mk}"
            model.add_coord(f"week{cd.week}_observed_{mk}", cd.participants[rows])
            # asymmetric Laplace at q = 0.5 is the Laplace distribution
            pm.Censored(
                name,
                pm.Laplace.dist(mu=mu[rows, k], b=scale[k]),
                lower=bound,
                upper=None,
                observed=value,
                dims=f"week{cd.week}_observed_{mk}",
            )
            outcome_vars.append(name)
        log_ratio = pm.Deterministic("nac_log_ratio", nac * cd.baseline.log_scale, dims=("active_arm", "marker"))
        pm.Deterministic("nac_ratio", pt.exp(log_ratio), dims=("active_arm", "marker"))
    notes = cd.notes()
    w = cd.week
    notes[f"week{w}_missing_no_likelihood"] = notes[f"week{w}_imputed"]  # not imputed here: no likelihood term
    notes[f"week{w}_imputed"] = 0
    for per in notes["by_marker"].values():
        per[f"week{w}_missing_no_likelihood"] = per.pop(f"week{w}_imputed")
    notes["quantile"] = QUANTILE
    return BuiltModel(NAME, model, design, used_priors(pri, columns, COVARIATE_MARKER_PRIOR), tuple(outcome_vars), MARKER_VALUES, notes=with_text(notes))


def interval_scale(idata, design: TrialDesign) -> dict[str, dict[str, float]]:
    """Per active arm and marker ({arm: {marker: factor}}), the factor that widens the working posterior of theta_ak
    to its adjusted spread.

    Yang, Wang & He (2016): with the asymmetric Laplace exp(-rho_q((y - x'beta) / s)), the
    posterior covariance S of beta is corrected to n q (1 - q) / s^2 * S D0 S, D0 = X'X / n; at
    q = 0.5 the Laplace scale b is 2 s, so the correction is n / b^2 * S D0 S. On normal residuals
    the factor is about sqrt(pi / 2) = 1.25. Latent baseline covariates enter D0 at their mean (0,
    missing) or at the detection limit (censored); the arm is randomised, so theta barely depends on them.
    Baseline covariates the fit adjusted for enter X as they entered the model; X ends with the
    participant x active arm indicator, one column (one theta_ak) per active arm.
    """
    cd = change_data(design, NAME)
    post = idata.posterior.stack(sample=("chain", "draw"))
    b0 = cd.baseline
    z0 = np.where(b0.censored, b0.z_upper, np.nan_to_num(b0.z, nan=0.0))
    arm = design.arm_indicator()[cd.rows]
    arms = [str(a) for a in post["nac_marker_effect"]["active_arm"].values]
    names = [str(c) for c in post[COVARIATE_MARKER_PRIOR][COVARIATE_DIM].values] if COVARIATE_MARKER_PRIOR in post else []
    cov = design.covariates[np.ix_(cd.rows, [design.covariate_names.index(c) for c in names])] if names else np.zeros((cd.n, 0))
    out = {a: {} for a in arms}
    for k, mk in enumerate(cd.names):
        rows = ~cd.later.missing[:, k]
        x = np.column_stack([np.ones(rows.sum()), z0[rows], cov[rows], arm[rows]])  # the thetas last
        d0 = x.T @ x / len(x)
        coefs = np.vstack(
            [post["end_intercept"].sel(marker=mk).values]
            + [post["baseline_slope"].sel(marker=mk, baseline_marker=j).values for j in cd.names]
            + [post[COVARIATE_MARKER_PRIOR].sel({"marker": mk, COVARIATE_DIM: c}).values for c in names]
            + [post["nac_marker_effect"].sel(marker=mk, active_arm=a).values for a in arms]
        )
        s_post = np.cov(coefs)
        b = float(post["laplace_scale"].sel(marker=mk).mean())
        s_adj = len(x) / b**2 * s_post @ d0 @ s_post
        for j, a in enumerate(arms):
            last = len(coefs) - len(arms) + j
            out[a][mk] = float(np.sqrt(s_adj[last, last] / s_post[last, last]))
    return out


def extra_estimates(idata, design: TrialDesign, mcid=None) -> pd.DataFrame:
    """Ratios of medians with intervals adjusted for the working likelihood (see interval_scale)."""
    scale = interval_scale(idata, design)
    post = idata.posterior
    adjusted = post["nac_log_ratio"].copy()
    for arm, by_marker in scale.items():
        for mk, c in by_marker.items():
            d = post["nac_log_ratio"].sel(active_arm=arm, marker=mk)
            adjusted.loc[{"active_arm": arm, "marker": mk}] = d.mean() + (d - d.mean()) * c
    view = idata.posterior.assign(nac_ratio_adjusted=np.exp(adjusted))
    table = ratio_rows(view, design, var="nac_ratio_adjusted", what="medians", kind="ratio_median", model=NAME)
    table["quantity"] = table["quantity"] + " (interval adjusted for the working likelihood)"
    # ratio_rows' order: each active arm, then each marker
    table["interval_scale"] = [scale[str(a)][str(m)] for a in adjusted["active_arm"].values for m in adjusted["marker"].values]
    return table
