"""The trajectory model family: null, treatment, treatment_curved, headline and moderation, one builder.

For participant i at week w (T_ia = 1 if i is in active arm a, else 0, so a control participant has T_ia = 0
for every a; t1/t2 the phase times of design.py):

    y_iw ~ Normal(mu_iw, sigma)         [or Student-t, or censored at the scale's floor and ceiling]
    mu_iw = alpha + site_s(i) + b0_i + [sum_k pi_k z_ik] + [sum_j lambda_j x_ij]
            + (beta_1 + [sum_a delta_a1 T_ia] + [sum_k gamma_k z_ik] + [sum_a sum_k eta_ak z_ik T_ia]
               + [sum_j nu_j x_ij] + b1_i) t1_w
            + [(kappa_0 + sum_a kappa_a T_ia) q_w]                            (curved time course)
            + (beta_2 + [sum_a delta_a2 T_ia]) t2_w

Terms in brackets are switched on by the family member (FAMILY below): the arms (`arm`), the
baseline log biomarkers as prognostic effects and slope moderators (`markers`), the
biomarker x arm x time interaction (`nac_moderation`), and the curvature of the treatment phase
(`curved`), with the basis

    q_w = 4 t1_w (1 - t1_w)             0 at baseline and at the end of treatment, 1 half-way

so beta_1 and delta_a1 keep their meaning (change by the end of treatment) and kappa is the
departure from the straight line half-way through treatment, in outcome points.

Every active arm a has its own terms (dim 'active_arm': the active arms in their declared order, each
compared with the control arm): delta_a ('nac_change', dims active_arm x phase), kappa_a ('nac_curvature',
active_arm) and eta_ak ('nac_marker_moderation', active_arm x marker); nothing is pooled over arms. A
two-arm trial has one active arm (the dim has size 1).

- z_ik: standardised baseline log biomarkers, imputed where missing and censored below the
  detection limit (models/marker_block.py).
- x_ij: the baseline covariates declared in dataset.toml (models/design.py: continuous ones per SD,
  categorical ones against their first level, all centred), by default every declared one
  (`covariates`): lambda_j (`covariate_level`) shifts the participant's level, nu_j
  (`covariate_change`) their change by the end of treatment, as the biomarkers' prognostic and
  moderation terms do. Absent when the dataset declares none.
- (b0_i, b1_i): correlated participant effects, non-centred with an LKJ prior on their covariance.
- site offsets sum to zero with a fixed scale (a site SD estimated from 3-4 sites creates a funnel
  and adds nothing).
- The arms have no main effect: randomisation makes baseline means equal (constrained longitudinal
  analysis).

Active arm a - control at week w is 'nac_effect' (dims active_arm x week): delta_a1 t1_w [+ kappa_a q_w]
+ delta_a2 t2_w; 'placebo_change' (dims week) is the control arm's change from baseline, so arm a's mean
change from baseline is placebo_change + nac_effect[a].

With the Gaussian likelihood the participant effects enter the mean only through (1, t1), so they
can be integrated out exactly for every member: the biomarker x arm term is part of each
participant's fixed treatment-phase change, and the curvature a 4th fixed coefficient on q.
`build_trajectory` then offers `build_trajectory_marginal` as the model's fast variant
(models/marginal.py has the maths).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from maths.gaussian import score_covariance, sd_corr_to_cov

from .contract import VISIT_SCORES, BuiltModel, ImpliedCovariance
from .design import COVARIATE_DIM, TrialDesign, select_covariates
from .marginal import FIXED_VAR, fixed_columns, fixed_terms, marginal_loglik, visit_stats
from .marker_block import add_marker_block, integrated_marker_terms
from .priors import CONTROL_CHANGE, Prior, dist, points, rv, rv_with_element, scaled_defaults, split_control

LIKELIHOODS = ("normal", "student", "censored")

# The registered members: name -> (description, switches)
FAMILY = {
    "headline": (
        "arm x time (treatment phase, follow-up) + baseline log IL-6/CRP/BDNF as prognostic effects and slope moderators",
        {"arm": True, "markers": True},
    ),
    "null": (
        "time only (treatment phase, follow-up), no arm effect: the reference for comparison; no biomarkers needed",
        {"arm": False},
    ),
    "treatment": ("arm x time (treatment phase, follow-up), no biomarkers: each active arm's effect by week", {"arm": True}),
    "treatment_curved": (
        "arm x time with a curved treatment phase (straight line + 4 t1 (1 - t1) bend, per arm), no biomarkers",
        {"arm": True, "curved": True},
    ),
    "moderation": (
        "headline + biomarker x arm x time: each active arm's effect as a function of baseline IL-6/CRP/BDNF, "
        "reported at chosen marker levels",
        {"arm": True, "markers": True, "nac_moderation": True},
    ),
}
MARKER_PRIORS = ("marker_prognostic", "marker_moderation", "marker_mean", "marker_sd", "marker_regression")
COVARIATE_PRIORS = ("covariate_level", "covariate_change")


def curve_basis(t1) -> np.ndarray:
    """Concave-or-convex bump of the treatment phase: 0 at baseline and end of treatment, 1 half-way."""
    t1 = np.asarray(t1, dtype=float)
    return 4.0 * t1 * (1.0 - t1)


def visit_columns(design: TrialDesign, curved: bool) -> np.ndarray:
    """The columns X of a member's fixed part per observed visit: [1, t1, t2], and q = curve_basis(t1) when curved."""
    return fixed_columns(design, curve_basis(design.t1) if curved else None)


def trajectory_priors(design: TrialDesign) -> dict[str, Prior]:
    """Default priors of every family member (scaled to the outcome range); each member uses its own subset."""
    r = design.score_range
    pri = scaled_defaults(design.meta.score_min, design.meta.score_max)
    pri["time_curvature"] = Prior(
        "Normal", {"mu": 0.0, "sigma": 0.1 * r},
        "departure of the placebo course from a straight line half-way through treatment (6 MADRS points = 1 SD)",
    )
    pri["nac_curvature"] = Prior(
        "Normal", {"mu": 0.0, "sigma": 0.05 * r},
        "departure of each active arm - control difference from a straight line half-way through treatment (3 MADRS points = 1 SD)",
    )
    pri["nac_marker_moderation"] = Prior(
        "Normal", {"mu": 0.0, "sigma": 0.05 * r},
        "extra difference of each active arm from control by end of treatment per SD of baseline log marker (3 MADRS points = 1 SD)",
    )
    if design.covariate_names:  # only for a dataset that declares covariates
        per = "per SD of a continuous covariate, or for a level of a categorical one against its first level"
        pri["covariate_level"] = Prior(
            "Normal", {"mu": 0.0, "sigma": 0.1 * r},
            f"baseline score {per}: SD {points(0.1, r)}; baseline characteristics such as age or sex shift scores by a few points",
        )
        pri["covariate_change"] = Prior(
            "Normal", {"mu": 0.0, "sigma": 0.1 * r},
            f"change by end of treatment {per}: SD {points(0.1, r)}; baseline characteristics move the course by a few points at most",
        )
    return pri


def priors_used(pri: dict[str, Prior], *, arm: bool, markers: bool, nac_moderation: bool, curved: bool, likelihood: str,
                covariates: bool = True) -> dict[str, Prior]:
    """The subset of the family's priors that one member uses (recorded in the saved fit's provenance).

    covariates: whether it adjusts for covariates (the covariate priors exist only for a dataset declaring some)."""
    drop = set() if covariates else set(COVARIATE_PRIORS)
    if not arm:
        drop |= {"nac_change", "nac_curvature"}
    if not markers:
        drop |= set(MARKER_PRIORS)
    if not nac_moderation:
        drop.add("nac_marker_moderation")
    if not curved:
        drop |= {"time_curvature", "nac_curvature"}
    if likelihood != "student":
        drop.add("student_nu")
    return {k: v for k, v in pri.items() if k not in drop}


# ---------------------------------------------------------------- building blocks


def add_visit_data(design: TrialDesign, arm: bool):
    """The visit data every family member stores (constant_data) and, with the arms, T (participant x active arm,
    `TrialDesign.arm_indicator`: 1 in the participant's active arm, a control participant's row 0)."""
    pid = pm.Data("obs_participant", design.obs_participant, dims="obs")
    t1 = pm.Data("t1", design.t1, dims="obs")
    t2 = pm.Data("t2", design.t2, dims="obs")
    pm.Data("obs_week", design.obs_week, dims="obs")
    arms = pm.Data("arm_indicator", design.arm_indicator(), dims=("participant", "active_arm")) if arm else None
    return pid, t1, t2, arms


def add_site_effects(design: TrialDesign, priors: dict[str, Prior]):
    if len(design.sites) < 2:
        return pt.zeros(design.n_participants)
    site = rv("site_effect", priors["site"], dims="site")
    # pm.Data so a compiled model can be refitted to another trial's site assignment (validation/)
    site_idx = pm.Data("site_idx", design.site_idx, dims="participant")
    return site[site_idx]


def add_population_terms(design: TrialDesign, pri: dict[str, Prior], arm: bool, markers: bool, nac_moderation: bool,
                         integrate_missing: bool = False, control: Prior | None = None):
    """Population-level terms in a fixed order (the order of the sampler's parameter vector).

    Returns (z, intercept, time_change, nac_change, prognostic, moderation, nac_mod, site); absent terms are None.
    With integrate_missing (the fast path), z is (z, patterns): models/marker_block.py. `control`: a prior (a MAP
    NormalMixture, models.priors.CONTROL_CHANGE) of the control arm's change by the end of treatment, time_change[0].
    """
    z = add_marker_block(design.baseline, pri, integrate_missing=integrate_missing) if markers else None
    intercept = rv("intercept", pri["intercept"])
    if control is None:
        time_change = rv("time_change", pri["time_change"], dims="phase")
    else:
        time_change = rv_with_element("time_change", pri["time_change"], control, 0, len(design.phases()), dims="phase")
    nac_change = rv("nac_change", pri["nac_change"], dims=("active_arm", "phase")) if arm else None
    prognostic = rv("marker_prognostic", pri["marker_prognostic"], dims="marker") if markers else None
    moderation = rv("marker_moderation", pri["marker_moderation"], dims="marker") if markers else None
    nac_mod = rv("nac_marker_moderation", pri["nac_marker_moderation"], dims=("active_arm", "marker")) if nac_moderation else None
    site = add_site_effects(design, pri)
    return z, intercept, time_change, nac_change, prognostic, moderation, nac_mod, site


def add_covariate_terms(design: TrialDesign, pri: dict[str, Prior], columns: np.ndarray):
    """The covariates' shifts of each participant's level and treatment-phase change: (X lambda, X nu), or None
    without covariate columns. X is `design.covariates[:, columns]` (pm.Data 'covariates')."""
    if not len(columns):
        return None
    x = pm.Data("covariates", design.covariates[:, columns], dims=("participant", COVARIATE_DIM))
    level = rv("covariate_level", pri["covariate_level"], dims=COVARIATE_DIM)
    change = rv("covariate_change", pri["covariate_change"], dims=COVARIATE_DIM)
    return pt.dot(x, level), pt.dot(x, change)


def participant_coefficients(design: TrialDesign, terms, arms, covariate_shift=None):
    """The fixed part of each participant's level, treatment-phase change and follow-up change
    (arms: T, participant x active arm; covariate_shift: `add_covariate_terms`' shifts of the first two, or None).

    Each active arm's terms are added in turn, times its column of T: a participant gets their own arm's terms,
    a control participant none."""
    z, intercept, time_change, nac_change, prognostic, moderation, nac_mod, site = terms
    zeros = pt.zeros(design.n_participants)
    level = intercept + site + zeros
    change1 = time_change[0] + zeros
    change2 = time_change[1] + zeros if design.has_followup else zeros
    if nac_change is not None:
        for a in range(design.n_active):
            change1 = change1 + nac_change[a, 0] * arms[:, a]
        if design.has_followup:
            for a in range(design.n_active):
                change2 = change2 + nac_change[a, 1] * arms[:, a]
    if z is not None:
        level = level + pt.dot(z, prognostic)
        change1 = change1 + pt.dot(z, moderation)
    if nac_mod is not None:
        for a in range(design.n_active):
            change1 = change1 + pt.dot(z, nac_mod[a]) * arms[:, a]
    if covariate_shift is not None:
        level = level + covariate_shift[0]
        change1 = change1 + covariate_shift[1]
    return level, change1, change2


def add_curvature(design: TrialDesign, priors: dict[str, Prior], arm: bool, arms):
    """kappa_0 (`time_curvature`) and, with the arms, kappa_a per active arm (`nac_curvature`, dims active_arm).

    Returns (kappa_0, kappa or None without the arms, bend): bend_i = kappa_0 + sum_a kappa_a T_ia is each
    participant's coefficient on q = curve_basis(t1)."""
    curvature = rv("time_curvature", priors["time_curvature"])
    bend = curvature + pt.zeros(design.n_participants)
    nac_curvature = None
    if arm:
        nac_curvature = rv("nac_curvature", priors["nac_curvature"], dims="active_arm")
        for a in range(design.n_active):
            bend = bend + nac_curvature[a] * arms[:, a]
    return curvature, nac_curvature, bend


def add_participant_covariance(priors: dict[str, Prior]):
    """LKJ Cholesky factor of the (intercept, change) covariance, with its SDs and correlation as Deterministics."""
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


def participant_cholesky(design: TrialDesign, chol, terms, arms, patterns):
    """(l00, l10, l11): the Cholesky factor of each participant's covariance of (level, change) deviations.

    S = L L' for everyone; a participant whose missing markers M are integrated out
    (models/marker_block.py) adds A_i C A_i', where C = Var(z_M | z_K) and the columns of A_i are each
    missing marker's coefficients on (level, change): (prognostic_k, moderation_k [+ sum_a nac_moderation_ak T_ia])."""
    l00, l10, l11 = chol[0, 0], chol[1, 0], chol[1, 1]
    if not patterns:
        return l00, l10, l11
    _, _, _, _, prognostic, moderation, nac_mod, _ = terms
    n = design.n_participants
    s00 = pt.zeros(n) + l00**2
    s01 = pt.zeros(n) + l00 * l10
    s11 = pt.zeros(n) + l10**2 + l11**2
    for pat in patterns:
        a0 = prognostic[pat.missing]  # |M|
        a1 = moderation[pat.missing][None, :] + pt.zeros((len(pat.rows), 1))
        if nac_mod is not None:
            for a in range(design.n_active):
                a1 = a1 + nac_mod[a][pat.missing][None, :] * arms[pat.rows, a][:, None]
        ca0 = pt.dot(pat.cov, a0)  # C a0
        s00 = pt.inc_subtensor(s00[pat.rows], pt.dot(a0, ca0))
        s01 = pt.inc_subtensor(s01[pat.rows], pt.dot(a1, ca0))
        s11 = pt.inc_subtensor(s11[pat.rows], (pt.dot(a1, pat.cov) * a1).sum(axis=1))
    c00 = pt.sqrt(s00)
    c10 = s01 / c00
    return c00, c10, pt.sqrt(s11 - c10**2)


def implied_covariance(posterior, design: TrialDesign) -> ImpliedCovariance:
    """The covariance of a participant's scores over the scheduled weeks implied by a fit of a family member (normal
    likelihood), the participant effects integrated out: Z (S + A_i C A_i') Z' + sigma^2 I with Z the rows (1, t1_w),
    S from `participant_sd` and `participant_corr`, sigma `residual_sd`. A_i C A_i' is the term of a participant whose
    missing baseline biomarkers are integrated out (participant_cholesky; given the observed ones): a group of its own
    per missing pattern and arm (the arms' loadings differ with the biomarker x arm term); observed biomarkers are part
    of the mean, not the
    covariance. models/gaussian.score_covariance does the algebra."""
    draws = lambda name: posterior[name].transpose("chain", "draw", ...).values  # noqa: E731
    sd, rho = draws("participant_sd"), draws("participant_corr")
    corr = np.ones(rho.shape + (2, 2))
    corr[..., 0, 1] = corr[..., 1, 0] = rho
    s = sd_corr_to_cov(sd, corr)
    sigma = draws("residual_sd")
    z = np.column_stack([np.ones(len(design.weeks)), design.week_t1])
    groups = []
    for pat in integrated_marker_terms(posterior, design):
        a = pat["loadings"]  # chain, draw, rows, 2, |M|: the same within an arm
        arm = design.arm_idx[pat["rows"]]
        for value in np.unique(arm):
            first = int(np.flatnonzero(arm == value)[0])
            groups.append((pat["rows"][arm == value], score_covariance(z, s, sigma, a[:, :, first], pat["cov"])))
    return ImpliedCovariance(np.asarray(design.weeks, dtype=int), "score", score_covariance(z, s, sigma), tuple(groups))


def add_participant_effects(priors: dict[str, Prior]):
    """Correlated random intercept and treatment-phase change, non-centred (Cholesky)."""
    chol = add_participant_covariance(priors)
    raw = pm.Normal("participant_raw", 0.0, 1.0, dims=("participant", "participant_effect"))
    return pm.Deterministic("participant_effects", pt.dot(raw, chol.T), dims=("participant", "participant_effect"))


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
    raise ValueError(f"unknown likelihood '{likelihood}'; choose {', '.join(LIKELIHOODS)}")


def add_effect_summaries(design: TrialDesign, terms, curvature=None, nac_curvature=None) -> None:
    """Per scheduled week: 'nac_effect' (with the arms: each active arm - control, dims active_arm x week) and
    'placebo_change' (the control arm's change from baseline, dims week); the per-doubling marker effects
    ('nac_moderation_per_doubling': active_arm x marker)."""
    z, _, time_change, nac_change, prognostic, moderation, nac_mod, _ = terms
    w1, w2, wq = design.week_t1, design.week_t2, curve_basis(design.week_t1)
    if nac_change is not None:
        nac = nac_change[:, 0][:, None] * w1[None, :]
        if nac_curvature is not None:
            nac = nac + nac_curvature[:, None] * wq[None, :]
        if design.has_followup:
            nac = nac + nac_change[:, 1][:, None] * w2[None, :]
        pm.Deterministic("nac_effect", nac, dims=("active_arm", "week"))
    placebo = time_change[0] * w1
    if curvature is not None:
        placebo = placebo + curvature * wq
    if design.has_followup:
        placebo = placebo + time_change[1] * w2
    pm.Deterministic("placebo_change", placebo, dims="week")
    if z is not None:
        per_doubling = np.log(2.0) / design.baseline.log_scale
        pm.Deterministic("moderation_per_doubling", moderation * per_doubling, dims="marker")
        pm.Deterministic("prognostic_per_doubling", prognostic * per_doubling, dims="marker")
        if nac_mod is not None:
            pm.Deterministic("nac_moderation_per_doubling", nac_mod * per_doubling[None, :], dims=("active_arm", "marker"))


def _coords(design: TrialDesign, markers: bool, columns: np.ndarray, arm: bool = True) -> dict:
    coords = design.coords()
    if not markers:
        coords.pop("marker", None)  # a model without biomarkers has no marker dim
    if not arm:
        coords.pop("active_arm", None)  # nor one without the arms an active_arm dim
    if len(columns):
        coords[COVARIATE_DIM] = [design.covariate_names[j] for j in columns]
    return coords


# ---------------------------------------------------------------- the builders


def build_trajectory(
    design: TrialDesign,
    priors: dict | None = None,
    likelihood: str = "normal",
    *,
    name: str,
    arm: bool = True,
    markers: bool = False,
    nac_moderation: bool = False,
    curved: bool = False,
    covariates: bool | list[str] | None = True,
) -> BuiltModel:
    """Build one member of the family (see the module docstring for the maths).

    covariates: the baseline covariates declared in dataset.toml to adjust for: True (the default) all of them,
    False none, or a list of their names (models/design.select_covariates)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood '{likelihood}'; choose {', '.join(LIKELIHOODS)}")
    if nac_moderation and not (arm and markers):
        raise ValueError("nac_moderation needs both the arm and the biomarker terms")
    if markers:
        design.require_markers(name)
    columns = select_covariates(design, covariates)
    pri, control = split_control(trajectory_priors(design), priors)
    with pm.Model(coords=_coords(design, markers, columns, arm)) as model:
        pid, t1, t2, arms = add_visit_data(design, arm)
        terms = add_population_terms(design, pri, arm, markers, nac_moderation, control=control)
        shift = add_covariate_terms(design, pri, columns)
        effects = add_participant_effects(pri)
        level, change1, change2 = participant_coefficients(design, terms, arms, shift)
        mu = (level + effects[:, 0])[pid] + (change1 + effects[:, 1])[pid] * t1
        curvature = nac_curvature = None
        if curved:
            q = pm.Data("t1_curve", curve_basis(design.t1), dims="obs")
            curvature, nac_curvature, bend = add_curvature(design, pri, arm, arms)
            mu = mu + bend[pid] * q
        if design.has_followup:
            mu = mu + change2[pid] * t2
        add_likelihood(mu, design, pri, likelihood)
        add_effect_summaries(design, terms, curvature, nac_curvature)
    switches = {"arm": arm, "markers": markers, "nac_moderation": nac_moderation, "curved": curved}
    fast = None
    if likelihood == "normal":
        fast = partial(build_trajectory_marginal, design, priors, name=name, covariates=covariates, **switches)
    return BuiltModel(
        name=name,
        model=model,
        design=design,
        priors={**priors_used(pri, **switches, likelihood=likelihood, covariates=bool(len(columns))),
                **({CONTROL_CHANGE: control} if control is not None else {})},
        outcome_vars=("y",),
        observations=VISIT_SCORES,
        fast_variant=fast,
    )


def build_trajectory_marginal(
    design: TrialDesign,
    priors: dict | None = None,
    *,
    name: str,
    arm: bool = True,
    markers: bool = False,
    nac_moderation: bool = False,
    curved: bool = False,
    covariates: bool | list[str] | None = True,
) -> BuiltModel:
    """A family member (Gaussian likelihood) with the participant effects integrated out.

    Same population variables, names and dims as `build_trajectory`, in the same order; the
    participant effects and the pointwise log-likelihood of 'y' are added after sampling
    (inference/marginal.py). The fixed part per participant (FIXED_VAR) has the coefficients on
    [1, t1, t2], and on q when curved (models/marginal.py).
    """
    if nac_moderation and not (arm and markers):
        raise ValueError("nac_moderation needs both the arm and the biomarker terms")
    if markers:
        design.require_markers(name)
    columns = select_covariates(design, covariates)
    pri, control = split_control(trajectory_priors(design), priors)
    stats = visit_stats(design, visit_columns(design, curved))
    coords = _coords(design, markers, columns, arm)
    coords["participant_term"] = fixed_terms(curved)
    with pm.Model(coords=coords) as model:
        _, _, _, arms = add_visit_data(design, arm)
        terms = add_population_terms(design, pri, arm, markers, nac_moderation, integrate_missing=True, control=control)
        patterns = []
        if markers:
            z, patterns = terms[0]
            terms = (z, *terms[1:])
        shift = add_covariate_terms(design, pri, columns)
        chol = add_participant_covariance(pri)
        coefficients = list(participant_coefficients(design, terms, arms, shift))
        curvature = nac_curvature = None
        if curved:
            pm.Data("t1_curve", curve_basis(design.t1), dims="obs")  # as in the plain model; the likelihood reads `stats`
            curvature, nac_curvature, bend = add_curvature(design, pri, arm, arms)
            coefficients.append(bend)
        fixed = pm.Deterministic(FIXED_VAR, pt.stack(coefficients, axis=1), dims=("participant", "participant_term"))
        sigma = rv("residual_sd", pri["residual_sd"])
        pm.Potential("y_marginal", marginal_loglik(stats, fixed, participant_cholesky(design, chol, terms, arms, patterns), sigma).sum())
        add_effect_summaries(design, terms, curvature, nac_curvature)
    switches = {"arm": arm, "markers": markers, "nac_moderation": nac_moderation, "curved": curved}
    return BuiltModel(
        name=name,
        model=model,
        design=design,
        priors={**priors_used(pri, **switches, likelihood="normal", covariates=bool(len(columns))),
                **({CONTROL_CHANGE: control} if control is not None else {})},
        outcome_vars=("y",),
        observations=VISIT_SCORES,
        marginal=True,
        fused_kernel="trajectory",
    )
