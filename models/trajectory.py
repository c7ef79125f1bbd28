"""Shared core of the trajectory model family (null, treatment, moderation; straight or curved).

For participant i at week w (T_i = 1 in the treatment arm, t1/t2 the phase times of design.py):

    y_iw ~ Normal(mu_iw, sigma)         [or Student-t, or censored at the scale's floor and ceiling]
    mu_iw = alpha + site_s(i) + b0_i + [sum_k pi_k z_ik]
            + (beta_1 + [delta_1 T_i] + [sum_k gamma_k z_ik] + [sum_k eta_k z_ik T_i] + b1_i) t1_w
            + [(kappa_0 + kappa_1 T_i) q_w]                                   (curved time course)
            + (beta_2 + [delta_2 T_i]) t2_w

Terms in brackets are switched on by the model: the arm (`arm`), the baseline log biomarkers as
prognostic effects and slope moderators (`markers`), the biomarker x arm x time interaction
(`nac_moderation`), and the curvature of the treatment phase (`curved`), with the basis

    q_w = 4 t1_w (1 - t1_w)             0 at baseline and at the end of treatment, 1 half-way

so beta_1 and delta_1 keep their meaning (change by the end of treatment) and kappa is the
departure from the straight line half-way through treatment, in outcome points (kappa < 0 on a
scale where lower is better: early response, then a plateau). Participant effects, site effects
and likelihoods are the headline model's (imported from models.headline).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from .design import TrialDesign
from .headline import add_likelihood, add_participant_effects, add_site_effects
from .marker_block import add_marker_block
from .priors import Prior, resolve, rv, scaled_defaults

LIKELIHOODS = ("normal", "student", "censored")


def curve_basis(t1) -> np.ndarray:
    """Concave-or-convex bump of the treatment phase: 0 at baseline and end of treatment, 1 half-way."""
    t1 = np.asarray(t1, dtype=float)
    return 4.0 * t1 * (1.0 - t1)


def trajectory_priors(design: TrialDesign) -> dict[str, Prior]:
    """The headline defaults plus the terms only some family members use (scaled to the outcome range)."""
    r = design.score_range
    pri = scaled_defaults(design.meta.score_min, design.meta.score_max)
    pri["time_curvature"] = Prior(
        "Normal", {"mu": 0.0, "sigma": 0.1 * r},
        "departure of the placebo course from a straight line half-way through treatment (6 MADRS points = 1 SD)",
    )
    pri["nac_curvature"] = Prior(
        "Normal", {"mu": 0.0, "sigma": 0.05 * r},
        "departure of the NAC-placebo difference from a straight line half-way through treatment (3 MADRS points = 1 SD)",
    )
    pri["nac_marker_moderation"] = Prior(
        "Normal", {"mu": 0.0, "sigma": 0.05 * r},
        "extra NAC-placebo difference by end of treatment per SD of baseline log marker (3 MADRS points = 1 SD)",
    )
    return pri


def add_visit_data(design: TrialDesign, arm: bool):
    """The visit data every trajectory model stores (constant_data) and the arm; shared with the fast path."""
    pid = pm.Data("obs_participant", design.obs_participant, dims="obs")
    t1 = pm.Data("t1", design.t1, dims="obs")
    t2 = pm.Data("t2", design.t2, dims="obs")
    pm.Data("obs_week", design.obs_week, dims="obs")
    treated = pm.Data("treated", design.treated, dims="participant") if arm else None
    return pid, t1, t2, treated


def add_time_terms(design: TrialDesign, pri: dict[str, Prior], arm: bool):
    """Intercept, placebo change per phase, NAC - placebo per phase (with the arm) and site offsets."""
    intercept = rv("intercept", pri["intercept"])
    time_change = rv("time_change", pri["time_change"], dims="phase")
    nac_change = rv("nac_change", pri["nac_change"], dims="phase") if arm else None
    return intercept, time_change, nac_change, add_site_effects(design, pri)


def build_trajectory(
    design: TrialDesign,
    *,
    name: str,
    priors: dict | None = None,
    likelihood: str = "normal",
    arm: bool = True,
    markers: bool = False,
    nac_moderation: bool = False,
    curved: bool = False,
) -> pm.Model:
    """Build one member of the trajectory family; see the module docstring for the maths."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood '{likelihood}'; choose {', '.join(LIKELIHOODS)}")
    if nac_moderation and not (arm and markers):
        raise ValueError("nac_moderation needs both the arm and the biomarker terms")
    md = design.require_markers(name) if markers else None
    defaults = trajectory_priors(design)
    pri = resolve(defaults, priors)
    coords = design.coords()
    if not markers:
        coords.pop("marker", None)  # a model without biomarkers has no marker dim
    with pm.Model(coords=coords) as model:
        pid, t1, t2, treated = add_visit_data(design, arm)

        intercept, time_change, nac_change, site = add_time_terms(design, pri, arm)
        effects = add_participant_effects(design, pri)

        level = intercept + site + effects[:, 0]
        change1 = time_change[0] + effects[:, 1]
        if arm:
            change1 = change1 + nac_change[0] * treated
        if markers:
            z = add_marker_block(md, pri)
            prognostic = rv("marker_prognostic", pri["marker_prognostic"], dims="marker")
            moderation = rv("marker_moderation", pri["marker_moderation"], dims="marker")
            level = level + pt.dot(z, prognostic)
            change1 = change1 + pt.dot(z, moderation)
            if nac_moderation:
                nac_mod = rv("nac_marker_moderation", pri["nac_marker_moderation"], dims="marker")
                change1 = change1 + pt.dot(z, nac_mod) * treated
        mu = level[pid] + change1[pid] * t1
        curvature = nac_curvature = None
        if curved:
            q = pm.Data("t1_curve", curve_basis(design.t1), dims="obs")
            curvature = rv("time_curvature", pri["time_curvature"])
            bend = curvature + pt.zeros(design.n_participants)
            if arm:
                nac_curvature = rv("nac_curvature", pri["nac_curvature"])
                bend = bend + nac_curvature * treated
            mu = mu + bend[pid] * q
        if design.has_followup:
            change2 = time_change[1] + pt.zeros(design.n_participants)
            if arm:
                change2 = change2 + nac_change[1] * treated
            mu = mu + change2[pid] * t2
        add_likelihood(mu, design, pri, likelihood)

        _add_summaries(design, time_change, nac_change, curvature, nac_curvature)
        if markers:
            per_doubling = np.log(2.0) / md.log_scale
            pm.Deterministic("moderation_per_doubling", moderation * per_doubling, dims="marker")
            pm.Deterministic("prognostic_per_doubling", prognostic * per_doubling, dims="marker")
            if nac_moderation:
                pm.Deterministic("nac_moderation_per_doubling", nac_mod * per_doubling, dims="marker")
    # record only the priors this model uses (the saved fit's provenance)
    used = set(model.named_vars)
    extra = {"time_curvature", "nac_curvature", "nac_marker_moderation"}
    model.priors_used = {k: v for k, v in pri.items() if k not in extra or k in used}
    if not arm:
        model.priors_used.pop("nac_change", None)
    if not markers:
        for key in ("marker_prognostic", "marker_moderation", "marker_mean", "marker_sd", "marker_regression"):
            model.priors_used.pop(key, None)
    if likelihood != "student":
        model.priors_used.pop("student_nu", None)
    if likelihood == "normal" and not (markers or curved or nac_moderation):
        # exact fast variant: participant effects integrated out (models/marginal.py)
        from .marginal import build_trajectory_marginal

        model.fast_variant = partial(build_trajectory_marginal, design, name, priors, arm)
    return model


def _add_summaries(design: TrialDesign, time_change, nac_change, curvature, nac_curvature) -> None:
    """nac_effect (NAC - placebo) and placebo_change per scheduled week, dims week."""
    w1, w2, wq = design.week_t1, design.week_t2, curve_basis(design.week_t1)
    placebo = time_change[0] * w1
    if curvature is not None:
        placebo = placebo + curvature * wq
    if design.has_followup:
        placebo = placebo + time_change[1] * w2
    pm.Deterministic("placebo_change", placebo, dims="week")
    if nac_change is None:
        return
    nac = nac_change[0] * w1
    if nac_curvature is not None:
        nac = nac + nac_curvature * wq
    if design.has_followup:
        nac = nac + nac_change[1] * w2
    pm.Deterministic("nac_effect", nac, dims="week")
