"""Does NAC change the biomarkers? End-of-treatment log markers given baseline log markers and arm.

For participant i with standardised log markers z0_i at baseline and z1_i at the end of
treatment (week 12; both standardised by the baseline mean and SD of the log values):
    z0_i ~ MvNormal(m, Sigma_0)                                   baseline block
    z1_i ~ MvNormal(a + B z0_i + sum_a theta_a T_ia, Sigma_1)     the three markers jointly
with LKJ(2) priors on the correlations of Sigma_0 and Sigma_1 (the markers' residuals are
correlated: IL-6 and CRP move together). Missing values at either week are latent (imputed
from the other markers, the arm and the other week); values below the detection limit are
latent below it (left-censored). T_ia = 1 when participant i is in active arm a (one active arm in a
two-arm trial), so theta_a is active arm a's effect against the control arm. See marker_change_block for
the parameterisation.

Baseline covariates declared in dataset.toml add G x_i to the end-of-treatment mean (`covariates`:
True, the default, for every declared one; False; or a list of names), so theta is the NAC effect
adjusted for them as for the baseline markers.

Active arm a's effect on marker k is theta_ak in baseline SDs ('nac_marker_effect', active_arm x
marker); on the natural log scale it is theta_ak * SD_k(log marker), reported as the ratio of
geometric means arm a / control at the end of treatment, exp(theta_ak SD_k) ('nac_ratio'), with its
94% HDI and P(ratio > 1), for each active arm.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from .contract import MARKER_VALUES, BuiltModel
from .design import TrialDesign, select_covariates
from .effects import effect_row, with_estimands
from .marker_change_block import (
    COVARIATE_MARKER_PRIOR,
    add_change_regression,
    add_latent_block,
    add_residual_chol,
    arm_data,
    block_coords,
    change_data,
    change_priors,
    end_week,
    used_priors,
    with_text,
)
from .priors import resolve

NAME = "biomarker_change"
DESCRIPTION = "NAC effect on end-of-treatment log IL-6/CRP/BDNF given baseline (joint, LKJ-correlated residuals): ratio of geometric means"


def default_priors(design: TrialDesign) -> dict:
    return change_priors(design)


def build_biomarker_change(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal", covariates=True) -> BuiltModel:
    if likelihood != "normal":
        raise ValueError(f"model '{NAME}' has a normal likelihood on the log scale only, not '{likelihood}'")
    cd = change_data(design, NAME)
    columns = select_covariates(design, covariates)
    pri = resolve(default_priors(design), priors)
    with pm.Model(coords=block_coords(cd, design, columns)) as model:
        _, mu, nac = add_change_regression(cd, pri, arm_data(cd, design), design, columns)
        chol = add_residual_chol("residual", cd.names, pri["residual_sd"], pri["residual_corr"].params["eta"])
        add_latent_block(f"week{cd.week}", cd.later, cd.participants, mu, chol)
        log_ratio = pm.Deterministic("nac_log_ratio", nac * cd.baseline.log_scale, dims=("active_arm", "marker"))
        pm.Deterministic("nac_ratio", pt.exp(log_ratio), dims=("active_arm", "marker"))
    outcome = tuple(v.name for v in model.observed_RVs if v.name.startswith(f"week{cd.week}_"))
    return BuiltModel(NAME, model, design, used_priors(pri, columns, COVARIATE_MARKER_PRIOR), outcome, MARKER_VALUES, notes=with_text(cd.notes()))


def ratio_rows(post, design: TrialDesign, var: str = "nac_ratio", what: str = "geometric means", kind: str = "ratio_geometric",
               model: str = NAME) -> pd.DataFrame:
    """From the posterior Dataset, for each active arm in order, one row per marker: the arm / control ratio at the end of
    treatment, 94% HDI, P(ratio > 1); each with its estimand (`kind`, stated for `model`)."""
    meta = design.meta
    week = end_week(design, NAME)
    rows, arms = [], []
    for arm in post[var]["active_arm"].values:
        for mk in post[var]["marker"].values:
            draws = post[var].sel(active_arm=arm, marker=mk).values
            row = effect_row(
                f"{arm} / {meta.control_arm} ratio of {what} of {mk} at week {week}",
                draws,
                None,
                week=week,
                marker=str(mk),
                unit=f"ratio ({meta.marker_units.get(str(mk), '')})",
            )
            row["p_below_0"] = np.nan  # a ratio is always positive: see p_above_1
            row["p_above_1"] = float((draws > 1).mean())
            rows.append(row)
            arms.append(str(arm))
    return with_estimands(pd.DataFrame(rows), meta, [kind] * len(rows), model=model, arms=arms)


def extra_estimates(idata, design: TrialDesign, mcid=None) -> pd.DataFrame:
    return ratio_rows(idata.posterior, design)
