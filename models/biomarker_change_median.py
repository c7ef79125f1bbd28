"""Bayesian median regression of the end-of-treatment log biomarkers (the published quantile method).

Hasebe et al. (2017) used quantile regression for the biomarker changes. Its Bayesian form
uses the asymmetric Laplace likelihood, whose q-quantile is its location; at q = 0.5 it is
the Laplace distribution, so for each marker k separately
    z1_ik ~ Laplace(a_k + B_k . z0_i + theta_k T_i,  b_k)          (median regression)
with z0_i, z1_i the standardised log markers at baseline and at the end of treatment. The
median of a monotone transform is the transform of the median, so exp(theta_k SD_k) is the
NAC / placebo ratio of the median marker values (natural units) at given baseline values.

- Baseline markers are covariates: missing ones are imputed and censored ones bounded
  in the same latent multivariate-normal block as the mean model (marker_change_block).
- End-of-treatment values below the detection limit are left-censored: the likelihood term
  is the Laplace CDF at the limit (pm.Censored), never the limit itself.
- Missing end-of-treatment values enter no likelihood: quantile regression is marginal per
  marker, so a latent value would carry no information (valid if missing at random given
  arm and baseline markers).
The log-likelihood is stored per marker (`week12_il6`, ...), the model's `outcome_vars`.

Caveat: the asymmetric Laplace is a working likelihood. Its posterior SD for theta is close to
the mean model's, whereas the sampling SD of a median estimator is larger (sqrt(pi/2) times on
normal residuals), so the intervals are somewhat too narrow (Yang, Wang & He 2016); the point
estimate is what this model adds, as a robustness check of the mean model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from .biomarker_change import ratio_rows
from .design import TrialDesign
from .marker_change_block import add_change_regression, block_coords, change_data, change_priors, with_text
from .priors import Prior, resolve, rv

NAME = "biomarker_change_median"
DESCRIPTION = "Bayesian median (quantile q=0.5, asymmetric Laplace) regression of end-of-treatment log markers: NAC/placebo ratio of medians"
QUANTILE = 0.5
# Far below any standardised value: observed (uncensored) rows get this as their censoring bound.
_NO_BOUND = -1.0e3


def default_priors(design: TrialDesign) -> dict[str, Prior]:
    pri = change_priors()
    del pri["residual_sd"], pri["residual_corr"]
    pri["laplace_scale"] = Prior("HalfNormal", {"sigma": 1.0}, "Laplace scale b of the standardised log marker (its SD is b sqrt 2)")
    return pri


def build_biomarker_change_median(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal") -> pm.Model:
    if likelihood != "normal":
        raise ValueError(f"model '{NAME}' has its own (asymmetric Laplace, q = 0.5) likelihood; --likelihood {likelihood} does not apply")
    cd = change_data(design, NAME)
    pri = resolve(default_priors(design), priors)
    end = cd.later
    with pm.Model(coords=block_coords(cd)) as model:
        treated = pm.Data("treated", design.treated[cd.rows], dims="participant")
        _, mu, nac = add_change_regression(cd, pri, treated)
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
        log_ratio = pm.Deterministic("nac_log_ratio", nac * cd.baseline.log_scale, dims="marker")
        pm.Deterministic("nac_ratio", pt.exp(log_ratio), dims="marker")
    model.outcome_vars = outcome_vars
    model.priors_used = pri
    notes = cd.notes()
    w = cd.week
    notes[f"week{w}_missing_no_likelihood"] = notes[f"week{w}_imputed"]  # not imputed here: no likelihood term
    notes[f"week{w}_imputed"] = 0
    for per in notes["by_marker"].values():
        per[f"week{w}_missing_no_likelihood"] = per.pop(f"week{w}_imputed")
    notes["quantile"] = QUANTILE
    model.data_notes = with_text(notes)
    return model


def extra_estimates(idata, design: TrialDesign, mcid=None) -> pd.DataFrame:
    return ratio_rows(idata, design, what="medians")
