"""Do the biomarkers carry NAC's effect? Arm -> change in log biomarker -> MADRS change.

A joint model of the mediators (the three markers' log change, baseline to end of treatment
E) and of the outcome (MADRS change from baseline at E). With T_ia = 1 when participant i is in
active arm a (one active arm in a two-arm trial; 0 for every a in the control arm), z0_i / z1_i
the standardised log markers at baseline / E (standardised by the baseline SD of each log
marker) and d_i = z1_i - z0_i their change:
    z0_i ~ MvNormal(m, Sigma_0)
    z1_i ~ MvNormal(a + B z0_i + sum_a theta_a T_ia, Sigma_1)      mediator model (LKJ residuals)
    dY_i ~ Normal(c0 + sum_a c'_a T_ia + sum_k beta_k d_ik
                  + g (Y0_i - mean Y0) + sum_k h_k z0_ik, sigma)   outcome model [or Student-t]
Given z0, the change d_k shifts in active arm a by theta_ak (baseline SDs) against the control arm.
With no arm x mediator interaction, the natural effects at E of active arm a against the control
arm, in outcome points, are (each variable with a leading 'active_arm' dim)
    indirect via marker k   NIE_ak = theta_ak beta_k      (parallel mediators)   'indirect_effect'
    indirect, all markers   NIE_a  = sum_k theta_ak beta_k                       'indirect_effect_total'
    direct                  NDE_a  = c'_a                                        'direct_effect'
    total                   TE_a   = c'_a + NIE_a,   proportion mediated NIE_ak / TE_a.
The marker -> outcome path beta_k ('mediator_per_log_unit' per log unit) is common to every arm.
They are causal effects under the usual sequential ignorability: randomisation covers the arm;
for the marker -> MADRS path it assumes no unmeasured confounding beyond baseline MADRS,
baseline markers and the declared baseline covariates (which are adjusted for, and which drive
both in the trial: baseline IL-6 predicts MADRS change). Baseline covariates declared in
dataset.toml enter both models: G x_i in the mediator model (`covariate_marker_effect`, as in
biomarker_change) and sum_j e_j x_ij in the outcome model (`covariate_effect`, as in the MMRM);
`covariates` = True (the default), False or a list of names.

Who enters and missing data:
- participants with any biomarker value or an observed MADRS at E; those with neither would
  add only latent values and are excluded, with a count;
- missing and below-limit markers (baseline or E) are latent in the marker block (imputed
  from the other markers, the arm and, through the outcome model, MADRS change);
- a missing MADRS at E enters no likelihood term (the outcome is the last node of the graph,
  so imputing it would add nothing): valid if missing at random given arm, baseline MADRS and
  markers. Dropout driven by intermediate visits is not captured here; the trajectory models
  use every visit for the total effect.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from .biomarker_change import ratio_rows
from .contract import MARKER_VALUES, BuiltModel
from .design import COVARIATE_DIM, ModelDataError, TrialDesign, select_covariates
from .effects import effect_row, with_estimands
from .marker_change_block import (
    COVARIATE_MARKER_PRIOR,
    add_change_regression,
    add_latent_block,
    add_residual_chol,
    arm_data,
    arm_sum,
    block_coords,
    change_data,
    change_priors,
    end_week,
    used_priors,
    with_text,
)
from .priors import Prior, points, resolve, rv

NAME = "mediation"
DESCRIPTION = "arm -> change in log IL-6/CRP/BDNF -> MADRS change at end of treatment: natural indirect, direct and total effects"


def default_priors(design: TrialDesign) -> dict[str, Prior]:
    r = design.score_range
    pri = change_priors(design)
    if design.covariate_names:
        pri["covariate_effect"] = Prior(
            "Normal", {"mu": 0.0, "sigma": 0.1 * r},
            f"outcome change per SD of a continuous covariate, or for a level of a categorical one against its first level: SD {points(0.1, r)}, as the MMRM's",
        )
    pri.update(
        {
            "outcome_intercept": Prior("Normal", {"mu": 0.0, "sigma": 0.25 * r}, f"control change by end of treatment at mean covariates: SD {points(0.25, r)}"),
            "direct_effect": Prior("Normal", {"mu": 0.0, "sigma": 0.1 * r}, f"treatment - control change not through the markers: SD {points(0.1, r)}, like nac_change"),
            "mediator_effect": Prior("Normal", {"mu": 0.0, "sigma": 0.05 * r}, f"outcome change per baseline-SD change of the log marker: SD {points(0.05, r)}"),
            "baseline_score_slope": Prior("Normal", {"mu": 0.0, "sigma": 0.5}, "change per point of baseline score (regression to the mean is about -0.3)"),
            "outcome_marker_baseline": Prior("Normal", {"mu": 0.0, "sigma": 0.05 * r}, f"outcome change per SD of baseline log marker: SD {points(0.05, r)}, like marker_moderation"),
            "outcome_sd": Prior("HalfNormal", {"sigma": 0.15 * r}, f"SD of individual change by end of treatment: scale {points(0.15, r)}"),
            "student_nu": Prior("Gamma", {"alpha": 2.0, "beta": 0.1}, "Student-t degrees of freedom (robust likelihood): mean 20"),
        }
    )
    return pri


def _scores_at(design: TrialDesign, week: int) -> np.ndarray:
    out = np.full(design.n_participants, np.nan)
    sel = design.obs_week == week
    out[design.obs_participant[sel]] = design.y[sel]
    return out


def outcome_week(design: TrialDesign) -> int:
    w = end_week(design, NAME)
    if w not in set(int(x) for x in design.weeks):
        raise ModelDataError(f"model '{NAME}' needs outcome visits at the biomarker week {w}; the visit schedule is {list(design.weeks)}")
    return w


def mediation_data(design: TrialDesign):
    """(week, change data, baseline scores, outcome-week scores, rows with both scores); ModelDataError when lacking."""
    design.require_markers(NAME)
    week = outcome_week(design)
    y0_all = _scores_at(design, 0)
    y1_all = _scores_at(design, week)
    has_outcome = ~np.isnan(y1_all) & ~np.isnan(y0_all)
    cd = change_data(design, NAME, also_keep=has_outcome, reason=f"no biomarker value and no {design.meta.outcome_label} at week {week}")
    with_y = np.flatnonzero(~np.isnan(y1_all[cd.rows]) & ~np.isnan(y0_all[cd.rows]))
    if len(with_y) < 4:
        raise ModelDataError(f"model '{NAME}' needs {design.meta.outcome_label} at weeks 0 and {week} for at least 4 participants; visits.csv has {len(with_y)}")
    return week, cd, y0_all, y1_all, with_y


def build_mediation(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal", covariates=True) -> BuiltModel:
    if likelihood not in ("normal", "student"):
        raise ValueError(f"model '{NAME}' supports the normal and student likelihoods, not '{likelihood}'")
    week, cd, y0_all, y1_all, with_y = mediation_data(design)
    columns = select_covariates(design, covariates)
    pri = resolve(default_priors(design), priors)
    y0 = y0_all[cd.rows]
    y1 = y1_all[cd.rows]
    y0_centre = float(np.nanmean(y0_all))
    change_name = f"{design.meta.outcome}_change"
    coords = {**block_coords(cd, design, columns), "outcome_participant": cd.participants[with_y]}
    with pm.Model(coords=coords) as model:
        arm = arm_data(cd, design)
        base_score = pm.Data("baseline_score", y0[with_y] - y0_centre, dims="outcome_participant")
        z0, mu, nac = add_change_regression(cd, pri, arm, design, columns)
        chol = add_residual_chol("residual", cd.names, pri["residual_sd"], pri["residual_corr"].params["eta"])
        z1 = add_latent_block(f"week{week}", cd.later, cd.participants, mu, chol)
        dz = z1 - z0

        intercept = rv("outcome_intercept", pri["outcome_intercept"])
        direct = rv("direct_effect", pri["direct_effect"], dims="active_arm")
        beta = rv("mediator_effect", pri["mediator_effect"], dims="marker")
        g = rv("baseline_score_slope", pri["baseline_score_slope"])
        h = rv("outcome_marker_baseline", pri["outcome_marker_baseline"], dims="marker")
        sigma = rv("outcome_sd", pri["outcome_sd"])
        mean = intercept + arm_sum(arm[with_y], direct, design.n_active) + pt.dot(dz[with_y], beta) + g * base_score + pt.dot(z0[with_y], h)
        if len(columns):  # the pm.Data 'covariates' of the mediator model, at the participants with an outcome
            x = model["covariates"]
            mean = mean + pt.dot(x[with_y], rv("covariate_effect", pri["covariate_effect"], dims=COVARIATE_DIM))
        if likelihood == "normal":
            pm.Normal(change_name, mu=mean, sigma=sigma, observed=y1[with_y] - y0[with_y], dims="outcome_participant")
        else:
            nu = rv("student_nu", pri["student_nu"])
            pm.StudentT(change_name, nu=nu, mu=mean, sigma=sigma, observed=y1[with_y] - y0[with_y], dims="outcome_participant")

        scale = cd.baseline.log_scale
        log_ratio = pm.Deterministic("nac_log_ratio", nac * scale, dims=("active_arm", "marker"))
        pm.Deterministic("nac_ratio", pt.exp(log_ratio), dims=("active_arm", "marker"))
        pm.Deterministic("mediator_per_log_unit", beta / scale, dims="marker")
        indirect = pm.Deterministic("indirect_effect", nac * beta[None, :], dims=("active_arm", "marker"))
        indirect_total = pm.Deterministic("indirect_effect_total", indirect.sum(axis=1), dims="active_arm")
        total = pm.Deterministic("total_effect", direct + indirect_total, dims="active_arm")
        pm.Deterministic("proportion_mediated", indirect / total[:, None], dims=("active_arm", "marker"))
        pm.Deterministic("proportion_mediated_total", indirect_total / total, dims="active_arm")
    notes = cd.notes()
    notes["outcome_observed"] = int(len(with_y))
    notes["outcome_missing_no_likelihood"] = int(cd.n - len(with_y))
    used = used_priors(pri, columns, COVARIATE_MARKER_PRIOR, "covariate_effect")
    return BuiltModel(NAME, model, design, used, (change_name,), MARKER_VALUES, notes=with_text(notes))


def _near_zero(draws: np.ndarray) -> bool:
    p = float((np.asarray(draws) < 0).mean())
    return 0.03 < p < 0.97  # the 94% interval of the total effect includes 0


def extra_estimates(idata, design: TrialDesign, mcid=None) -> pd.DataFrame:
    """For each active arm in order, its effects against the control arm at the end of treatment (total, direct,
    indirect through all markers and through each, the proportions mediated, the ratios of geometric means of the
    markers); the marker -> outcome path, common to every arm, beside the indirect effect through the marker in a
    two-arm trial and after every arm's rows otherwise. Every row with its estimand."""
    post = idata.posterior
    meta = design.meta
    week = end_week(design, NAME)
    label = meta.outcome_label
    unit = f"{label} points"
    active = [str(a) for a in post["total_effect"]["active_arm"].values]
    single = len(active) == 1
    markers = [str(mk) for mk in post["marker"].values]
    paths = []
    for mk in markers:
        paths.append((effect_row(
            f"{label} change per unit change in log {mk} (x e) at week {week}",
            post["mediator_per_log_unit"].sel(marker=mk).values,
            None,
            week=week,
            marker=mk,
            unit=f"{unit} per log unit",
        ), "mediator_path"))
    ratios = ratio_rows(post, design, model=NAME)
    blocks = []
    for j, arm in enumerate(active):
        at = {"active_arm": arm}
        arms = f"{arm} - {meta.control_arm}"
        rows = []
        total = post["total_effect"].sel(at).values
        caveat = (
            "unstable: total effect near 0 (94% HDI includes 0); read the indirect effect"
            if _near_zero(total)
            else ""
        )
        rows.append((effect_row(f"{arms} total effect on {label} change at week {week}", total, mcid, week=week, marker="", unit=unit),
                     "mediation_total"))
        rows.append((effect_row(f"{arms} direct effect (not through the markers) at week {week}", post["direct_effect"].sel(at).values, mcid,
                                week=week, marker="", unit=unit), "mediation_direct"))
        rows.append((effect_row(f"{arms} indirect effect through all markers at week {week}", post["indirect_effect_total"].sel(at).values, None,
                                week=week, marker="", unit=unit), "mediation_indirect"))
        for k, mk in enumerate(markers):
            rows.append((effect_row(f"{arms} indirect effect through {mk} at week {week}", post["indirect_effect"].sel(active_arm=arm, marker=mk).values, None,
                                    week=week, marker=mk, unit=unit), "mediation_indirect"))
            if single:
                rows.append(paths[k])
        whose = "" if single else f"{arms} "
        proportions = [("all markers", post["proportion_mediated_total"].sel(at).values, "")] + [
            (mk, post["proportion_mediated"].sel(active_arm=arm, marker=mk).values, mk) for mk in markers
        ]
        for what, draws, mk in proportions:
            row = effect_row(f"proportion of the {whose}total effect mediated by {what} at week {week}", draws, None, week=week, marker=mk,
                             unit="fraction")
            row["median"] = float(np.median(draws))
            row["note"] = caveat
            rows.append((row, "proportion_mediated"))
        table = pd.DataFrame([r for r, _ in rows])
        blocks.append(with_estimands(table, meta, [k for _, k in rows], model=NAME, arms=[arm] * len(rows)))
        blocks.append(ratios.iloc[j * len(markers) : (j + 1) * len(markers)])
    if not single:
        blocks.append(with_estimands(pd.DataFrame([r for r, _ in paths]), meta, [k for _, k in paths], model=NAME, arms=active[:1] * len(paths)))
    return pd.concat(blocks, ignore_index=True)
