"""The headline model: MADRS trajectories with arm x time, biomarkers as prognostic effects and moderators.

    y_iw = alpha + site_s(i) + b0_i + sum_k pi_k z_ik
           + (beta_1 + delta_1 T_i + sum_k gamma_k z_ik + b1_i) t1_w
           + (beta_2 + delta_2 T_i) t2_w + e_iw,       e_iw ~ Normal(0, sigma) [or Student-t]

T_i = 1 for the treatment arm; z_ik standardised baseline log biomarkers (imputed where
missing, censored below the detection limit, see marker_block); (b0_i, b1_i) correlated
participant effects, non-centred with an LKJ prior; site offsets sum to zero with a fixed
scale (a site SD estimated from 3-4 sites creates a funnel and adds nothing). The arm has
no main effect: randomisation makes baseline means equal (constrained longitudinal analysis).

NAC - placebo at week w is delta_1 t1_w + delta_2 t2_w ('nac_effect', dims week).
"""

from __future__ import annotations

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from .design import TrialDesign
from .marker_block import add_marker_block
from .priors import Prior, dist, resolve, rv, scaled_defaults

NAME = "headline"
DESCRIPTION = "arm x time (treatment phase, follow-up) + baseline log IL-6/CRP/BDNF as prognostic effects and slope moderators"


def default_priors(design: TrialDesign) -> dict[str, Prior]:
    return scaled_defaults(design.meta.score_min, design.meta.score_max)


def add_participant_covariance(priors: dict[str, Prior]):
    """LKJ Cholesky factor of the (intercept, change) covariance, with its SDs and correlation as Deterministics.

    Shared by the plain build (effects sampled) and the marginalised build (effects integrated out).
    """
    chol, _, _ = pm.LKJCholeskyCov(
        "participant_chol",
        n=2,
        eta=priors["participant_corr"].params["eta"],
        sd_dist=dist(priors["participant_sd"]),
        compute_corr=True,
        store_in_trace=False,
    )
    cov = pt.dot(chol, chol.T)
    sds = pt.sqrt(pt.diag(cov))
    pm.Deterministic("participant_sd", sds, dims="participant_effect")
    pm.Deterministic("participant_corr", cov[0, 1] / (sds[0] * sds[1]))
    return chol


def add_participant_effects(design: TrialDesign, priors: dict[str, Prior]):
    """Correlated random intercept and treatment-phase change, non-centred (Cholesky)."""
    chol = add_participant_covariance(priors)
    raw = pm.Normal("participant_raw", 0.0, 1.0, dims=("participant", "participant_effect"))
    return pm.Deterministic("participant_effects", pt.dot(raw, chol.T), dims=("participant", "participant_effect"))


def add_site_effects(design: TrialDesign, priors: dict[str, Prior]):
    if len(design.sites) < 2:
        return pt.zeros(design.n_participants)
    site = rv("site_effect", priors["site"], dims="site")
    # pm.Data so a compiled model can be refitted to another trial's site assignment (validation/)
    site_idx = pm.Data("site_idx", design.site_idx, dims="participant")
    return site[site_idx]


def add_likelihood(mu, design: TrialDesign, priors: dict[str, Prior], likelihood: str):
    sigma = rv("residual_sd", priors["residual_sd"])
    if likelihood == "normal":
        return pm.Normal("y", mu=mu, sigma=sigma, observed=design.y, dims="obs")
    if likelihood == "student":
        nu = rv("student_nu", priors["student_nu"])
        return pm.StudentT("y", nu=nu, mu=mu, sigma=sigma, observed=design.y, dims="obs")
    if likelihood == "censored":
        lo, hi = design.meta.score_min, design.meta.score_max
        return pm.Censored("y", pm.Normal.dist(mu=mu, sigma=sigma), lower=lo, upper=hi, observed=design.y, dims="obs")
    raise ValueError(f"unknown likelihood '{likelihood}'; choose normal, student or censored")


def add_population_terms(design: TrialDesign, md, pri: dict[str, Prior]):
    """The headline's population-level terms, shared by the plain and the marginalised (fast) builds."""
    z = add_marker_block(md, pri)
    intercept = rv("intercept", pri["intercept"])
    time_change = rv("time_change", pri["time_change"], dims="phase")
    nac_change = rv("nac_change", pri["nac_change"], dims="phase")
    prognostic = rv("marker_prognostic", pri["marker_prognostic"], dims="marker")
    moderation = rv("marker_moderation", pri["marker_moderation"], dims="marker")
    site = add_site_effects(design, pri)
    return z, intercept, time_change, nac_change, prognostic, moderation, site


def build_headline(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal") -> pm.Model:
    md = design.require_markers(NAME)
    pri = resolve(default_priors(design), priors)
    with pm.Model(coords=design.coords()) as model:
        treated = pm.Data("treated", design.treated, dims="participant")
        pid = pm.Data("obs_participant", design.obs_participant, dims="obs")
        t1 = pm.Data("t1", design.t1, dims="obs")
        t2 = pm.Data("t2", design.t2, dims="obs")
        pm.Data("obs_week", design.obs_week, dims="obs")

        z, intercept, time_change, nac_change, prognostic, moderation, site = add_population_terms(design, md, pri)
        effects = add_participant_effects(design, pri)

        level = intercept + site + effects[:, 0] + pt.dot(z, prognostic)
        change1 = time_change[0] + nac_change[0] * treated + pt.dot(z, moderation) + effects[:, 1]
        mu = level[pid] + change1[pid] * t1
        if design.has_followup:
            change2 = time_change[1] + nac_change[1] * treated
            mu = mu + change2[pid] * t2
        add_likelihood(mu, design, pri, likelihood)

        add_effect_summaries(design, nac_change, time_change)
        per_doubling = np.log(2.0) / md.log_scale
        pm.Deterministic("moderation_per_doubling", moderation * per_doubling, dims="marker")
        pm.Deterministic("prognostic_per_doubling", prognostic * per_doubling, dims="marker")
    model.priors_used = pri  # recorded in the saved fit's provenance
    return model


def add_effect_summaries(design: TrialDesign, nac_change, time_change) -> None:
    """Deterministics every arm x time model shares: NAC - placebo and placebo change, per week."""
    w1 = design.week_t1
    nac = nac_change[0] * w1
    placebo = time_change[0] * w1
    if design.has_followup:
        nac = nac + nac_change[1] * design.week_t2
        placebo = placebo + time_change[1] * design.week_t2
    pm.Deterministic("nac_effect", nac, dims="week")
    pm.Deterministic("placebo_change", placebo, dims="week")
