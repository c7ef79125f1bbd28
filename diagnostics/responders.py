"""Responder and remission estimands from a fitted model's posterior: rates per arm and their contrasts.

At each reported visit (by default the end of treatment and the last follow-up week) and for two
binary outcomes of the participant's score y_w at week w against their own baseline y_0:

    response    y_w <= (1 - RESPONSE_REDUCTION) y_0    (a reduction of at least 50%)
    remission   y_w <= the remission cut-off            (MADRS <= 7 by default, a parameter)

(the constants of diagnostics/ppc.py), this module reports the rate per arm, and for each active
arm against the control arm the risk difference (active - control), the odds ratio and the number
needed to treat, under two estimands named in the ICH E9(R1) attributes (population, variable, intercurrent events, population-level summary):

- `MAR`, hypothetical strategy under missing at random: a participant without a score at the visit
  (withdrawal, missed visit) gets, in each posterior draw, a score drawn from that draw's
  predictive distribution conditional on their observed visits;
- `NRI`, composite strategy, non-responder imputation: a participant without a score at the visit
  counts as a non-responder (not remitted);
- for a retrieved-dropout fit (`mmrm_retrieved`) `treatment_policy` takes the place of `MAR`: the
  treatment policy for treatment discontinuation, as its estimates.csv (models/mmrm_retrieved.py):
  scores attended after stopping treatment count as observed, a score missing after stopping is
  drawn from the off-treatment model (its mean includes the arm's off-treatment shift theta), any
  other missing score from the on-treatment model, each given the participant's observed visits.

Population: every randomised participant with a baseline score (others are excluded, and the
estimand text says how many; the loader requires a baseline score, so normally none).

How the posterior is built (Bayesian multiple imputation). For each posterior draw d the data
are completed: observed indicators as observed, missing ones imputed from the draw's conditional
predictive (MAR) or set to 0 (NRI). With x_d responders among the n participants of an arm, the
population rate has the completed-data posterior Beta(x_d + 1/2, n - x_d + 1/2) (Jeffreys prior);
the posterior of the rate is the mixture of these over the draws, so it carries both the
uncertainty of the imputations and the binomial sampling uncertainty of a proportion (a completed
data set alone would give a rate with no spread when everybody is observed). One rate p_d is
drawn from each draw's Beta, by inversion of the Beta CDF at a uniform shared by the two
estimands (one uniform per arm, independent between arms), so that when no outcome is missing the
two estimands give identical draws; the risk difference p_a - p_0 of active arm a against the
control arm, the odds ratio and the NNT are functions of these draws.

Summaries:
- rates and risk difference: `mean` and `sd` are those of the Beta mixture, exactly (with complete
  data the rate's mean is (x + 0.5) / (n + 1)); `median`, the HDI and `p_above_0` (risk difference:
  P(active arm better), higher rates being better) come from the draws;
- odds ratio: mean, SD and median of its draws; its interval is the HDI of log OR, exponentiated
  (P(OR > 1) equals the risk difference's `p_above_0`);
- number needed to treat, NNT = 1 / RD: it has no posterior mean (1 / RD is unbounded wherever the
  posterior of RD has density at 0), and its scale runs from benefit (NNT > 0) through infinity to
  harm (NNT < 0, a number needed to harm), so the ordinary median of the 1 / RD draws would mix the
  two. It is reported only when the risk difference's HDI excludes 0: `median` = 1 / median(RD)
  (the posterior median on that benefit-to-harm ordering) and the interval the reciprocal of the
  risk difference's HDI (the same posterior probability). Otherwise `note` says "not defined".

Imputation per model family (the only place the model enters; NRI does not use the model):
- trajectory models (null, treatment, treatment_curved, headline, moderation): each draw's
  participant effects are a draw from their posterior given all of the participant's observed
  scores, and given them the visits are independent, so a missing score is drawn from
  Normal(mu_iw, residual_sd) (Student-t with the likelihood 'student'; a censored likelihood's
  latent normal, clipped to the scale below), with the participant's full mean at week w,
  mu_iw = (c0_i + b0_i) + (c1_i + b1_i) t1_w + c2_i t2_w [+ c3_i q_w]: fixed-part coefficients c_i
  (models/marginal.py) plus the draw's participant effects b_i at the week's time codes. It is the
  model's own mean: the registered model is rebuilt on the participant-week pairs to report
  (attended or not) and its Normal mean evaluated at every draw (`trajectory_means`); a posterior
  that holds `participant_fixed` and `participant_effects` is read directly;
- the MMRM: change from baseline is multivariate normal over the post-baseline visits with the
  draw's unstructured covariance; the missing visits are drawn jointly from the conditional normal
  given the participant's observed changes (grouped by missingness pattern), score = baseline +
  change. Participants with a baseline only (left out of the MMRM fit) get the unconditional normal
  with their own mean (visit mean, their arm's effect, baseline x visit, site). The retrieved-dropout
  MMRM: the same, with theta[arm, v] added to the mean of every visit v, observed or missing, at which
  the participant is off treatment (models.mmrm_retrieved.off_status), as in its likelihood.
Imputed scores are put on the scale as observed ones are: clipped to [score_min, score_max] and,
on an integer scale, rounded (a continuous prediction of a recorded integer score: unrounded, a
draw of 7.3 would not count as MADRS <= 7 although it stands for a recorded 7).

Models without visit scores (biomarker_change*, mediation) raise ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import arviz as az
import numpy as np
import pandas as pd
from scipy import special

from data.meta import DatasetMeta
from inference.marginal import per_draw
from maths.gaussian import conditional_normal
from models.design import TrialDesign
from models.effects import HDI_PROB, flat_draws, hdi_names
from models.marginal import FIXED_VAR
from models.mmrm import NAME as MMRM_NAME
from models.mmrm import OFF_EFFECT, covariate_shift, mmrm_data
from models.mmrm_retrieved import NAME as RETRIEVED_NAME
from models.mmrm_retrieved import off_status
from models.registry import REGISTRY, fitted_model_name, get
from models.trajectory import curve_basis

from .ppc import REMISSION_CUTOFF, RESPONSE_REDUCTION

DEFAULT_SEED = 1
ESTIMANDS = ("MAR", "NRI")
POLICY = "treatment_policy"  # the imputed estimand of a retrieved-dropout fit, in place of MAR
OUTCOMES = ("response", "remission")
FAILURE = {"response": ("a non-responder", "non-responders"), "remission": ("not remitted", "not remitted")}  # NRI: one, several


@dataclass
class CompletedScores:
    """Scores of the estimand population at the reported weeks, completed per posterior draw (MAR imputation)."""

    weeks: np.ndarray  # the reported weeks (k)
    participants: np.ndarray  # ids of the population: randomised participants with a baseline score (n)
    arm: np.ndarray  # n: 0 the control arm, a the a-th active arm (meta.arms[a])
    baseline: np.ndarray  # n: baseline score
    observed: np.ndarray  # n x k: observed scores, NaN where missing
    scores: np.ndarray  # draws x n x k: the observed scores where observed, imputed elsewhere
    n_excluded: int  # randomised participants without a baseline score

    @property
    def missing(self) -> np.ndarray:
        return np.isnan(self.observed)


# ---------------------------------------------------------------- inputs


def scored_model(idata: az.InferenceData, model: str | None = None) -> str:
    """The registered name of the fitted model (models.registry.fitted_model_name) for responder estimands, or
    ValueError when it is not a model of the visit scores."""
    name = fitted_model_name(idata, model)
    scored = ", ".join(n for n, spec in REGISTRY.items() if spec.score_covariance is not None)
    if name not in REGISTRY:
        raise ValueError(f"unknown model '{name}'; responder and remission estimands need one of: {scored}")
    if get(name).score_covariance is not None:
        return name
    raise ValueError(
        f"model '{name}' has no visit scores (its outcome is biomarker values or effects), so it has no responder or "
        f"remission rates; use a model of the visit scores: {scored}"
    )


def report_weeks(design: TrialDesign, weeks=None) -> np.ndarray:
    """The weeks to report: None -> end of treatment and last follow-up week; 'all' -> every post-baseline
    scheduled week; else the given weeks (scheduled, after baseline)."""
    meta = design.meta
    scheduled = [int(w) for w in design.weeks]
    later = scheduled[1:]
    if weeks is None:
        chosen = sorted({int(meta.treatment_end), int(meta.last_week)})
    elif isinstance(weeks, str):
        if weeks != "all":
            raise ValueError(f"weeks must be None, 'all' or a list of weeks, not {weeks!r}")
        chosen = later
    else:
        chosen = sorted({int(w) for w in np.atleast_1d(weeks)})
    bad = [w for w in chosen if w not in later]
    if bad or not chosen:
        raise ValueError(f"weeks {bad or chosen} are not post-baseline scheduled weeks; choose from {later}")
    return np.asarray(chosen, dtype=int)


def _flat(post, name: str) -> np.ndarray:
    return flat_draws(post[name])


def _require(post, names, model: str) -> None:
    missing = [v for v in names if v not in post]
    if missing:
        raise ValueError(
            f"the posterior lacks {missing}, which a fit of '{model}' has; a saved fit is read whole with "
            "deptrial.load_fit(path) (it recomputes the participant effects of a fast-path fit)"
        )


# ---------------------------------------------------------------- imputation


def _same_participants(post, var: str, design: TrialDesign) -> None:
    ids = np.asarray(post[var]["participant"].values).astype(str)
    if len(ids) != design.n_participants or not np.array_equal(ids, np.asarray(design.participants).astype(str)):
        raise ValueError("the fit's participants are not the design's: pass the design the model was fitted to")


def trajectory_means(idata: az.InferenceData, design: TrialDesign, name: str, rows: np.ndarray, week_idx: np.ndarray) -> np.ndarray:
    """mu_iw, draws x participants `rows` x weeks `week_idx` (indices into design.weeks), attended or not.

    With `participant_fixed` and `participant_effects` in the posterior: (c0 + b0) + (c1 + b1) t1 + c2 t2 [+ c3 q].
    Otherwise the model's own mean: the registered model rebuilt on these participant-week pairs (the same
    participants, biomarkers and free variables; only the visit layout differs) and its Normal mean evaluated at
    every draw (inference.marginal.per_draw), so every term of every family member is the model's."""
    post = idata.posterior
    weeks_t1 = design.week_t1[week_idx]
    weeks_t2 = design.week_t2[week_idx] if design.has_followup else np.zeros(len(week_idx))
    if FIXED_VAR in post and "participant_effects" in post:
        _same_participants(post, "participant_effects", design)
        c = _flat(post, FIXED_VAR)[:, rows]
        b = _flat(post, "participant_effects")[:, rows]
        mu = (c[..., 0] + b[..., 0])[..., None] + (c[..., 1] + b[..., 1])[..., None] * weeks_t1 + c[..., 2][..., None] * weeks_t2
        if c.shape[-1] > 3:
            mu = mu + c[..., 3][..., None] * curve_basis(weeks_t1)
        return mu
    _require(post, ["participant_raw"], name)
    _same_participants(post, "participant_raw", design)
    k = len(week_idx)
    pairs = replace(
        design,
        obs_participant=np.repeat(rows, k),
        obs_week=np.tile(design.weeks[week_idx].astype(float), len(rows)),
        t1=np.tile(weeks_t1, len(rows)),
        t2=np.tile(weeks_t2, len(rows)),
        y=np.zeros(len(rows) * k),
    )
    model = get(name).build(pairs, likelihood="normal").model  # the mean is the same whatever the likelihood
    _require(post, [rv.name for rv in model.free_RVs], name)
    mu = model["y"].owner.inputs[2]  # pm.Normal(mu, sigma): inputs (rng, size, mu, sigma)
    values = per_draw(model, mu, post)
    return values.reshape((-1, len(rows), k))


def _trajectory_draws(idata, design: TrialDesign, name: str, rows: np.ndarray, week_idx: np.ndarray, rng) -> np.ndarray:
    """Draws x population x reported weeks of scores from each draw's predictive given the participant effects."""
    post = idata.posterior
    _require(post, ["residual_sd"], name)
    mu = trajectory_means(idata, design, name, rows, week_idx)
    sigma = _flat(post, "residual_sd")
    if "student_nu" in post:
        eps = rng.standard_t(_flat(post, "student_nu")[:, None, None], size=mu.shape)
    else:
        eps = rng.standard_normal(mu.shape)
    return mu + sigma[:, None, None] * eps


def mmrm_mean(post, design: TrialDesign, rows: np.ndarray, baseline_center: float) -> np.ndarray:
    """The MMRM mean change, draws x participants `rows` x post-baseline visit: visit mean + the participant's arm x
    visit (0 in the control arm) + baseline x visit (about the fit's centre) + site (+ covariates); the mean of
    models/mmrm.py for any participant."""
    base = design.wide_scores()[rows, 0] - baseline_center
    effect = flat_draws(post["nac_visit_effect"].transpose("chain", "draw", "active_arm", ...))  # draws x active arm x visit
    by_arm = np.concatenate([np.zeros_like(effect[:, :1]), effect], axis=1)  # arm 0: the control arm
    mu = _flat(post, "visit_mean")[:, None, :] + by_arm[:, np.asarray(design.arm_idx)[rows]]
    mu = mu + _flat(post, "baseline_slope")[:, None, :] * base[None, :, None]
    if "site_effect" in post:
        mu = mu + _flat(post, "site_effect")[:, design.site_idx[rows]][..., None]
    shift = covariate_shift(post, design, rows)  # baseline covariates: the same at every visit
    if np.ndim(shift):
        mu = mu + shift.reshape((-1, len(rows)))[..., None]
    return mu


def _mmrm_draws(idata, design: TrialDesign, rows: np.ndarray, week_idx: np.ndarray, rng) -> np.ndarray:
    """Draws x population x reported weeks of scores: baseline + change, the missing changes drawn jointly from the
    conditional normal given the participant's observed changes."""
    post = idata.posterior
    _require(post, ["visit_mean", "nac_visit_effect", "baseline_slope"], MMRM_NAME)
    d = mmrm_data(design)
    implied = get(MMRM_NAME).score_covariance(post, design)
    cov = implied.cov.reshape((-1,) + implied.cov.shape[2:])
    mu = mmrm_mean(post, design, rows, d.baseline_center)
    if OFF_EFFECT in post:  # mmrm_retrieved: + theta[arm, v] wherever the participant is off treatment, observed or missing
        theta = flat_draws(post[OFF_EFFECT].transpose("chain", "draw", "arm", ...))  # draws x arm x visit
        mu = mu + theta[:, np.asarray(design.arm_idx)[rows]] * off_status(design)[rows][None]
    wide = design.wide_scores()[rows]
    change = wide[:, 1:] - wide[:, [0]]
    target = np.asarray(week_idx) - 1  # reported weeks among the post-baseline visits
    n_draws = cov.shape[0]
    out = np.broadcast_to(change[:, target], (n_draws, len(rows), len(target))).copy()
    seen = ~np.isnan(change)
    patterns: dict[tuple, list] = {}
    for i, o in enumerate(seen):
        patterns.setdefault(tuple(np.flatnonzero(o)), []).append(i)
    for obs in sorted(patterns, key=lambda k: (len(k), k)):
        members = np.asarray(patterns[obs])
        o = np.asarray(obs, dtype=int)
        slots = np.asarray([j for j, v in enumerate(target) if v not in obs], dtype=int)
        if not len(slots):
            continue
        m = target[slots]
        # per draw, the conditional normal of the missing changes given the observed ones, each participant's own mean
        gain, cond, _ = conditional_normal(np.zeros(cov.shape[-1]), cov, o, m)
        mean = mu[:, members][:, :, m]
        if len(o):
            resid = change[members][:, o][None] - mu[:, members][:, :, o]
            mean = mean + np.einsum("smo,spo->spm", gain, resid)
        lower = np.linalg.cholesky(0.5 * (cond + np.swapaxes(cond, -1, -2)))
        eps = rng.standard_normal(mean.shape)
        out[:, members[:, None], slots[None, :]] = mean + np.einsum("smk,spk->spm", lower, eps)
    return wide[:, 0][None, :, None] + out


def on_scale(scores: np.ndarray, meta: DatasetMeta) -> np.ndarray:
    """Scores as the scale records them: clipped to its range, rounded on an integer scale."""
    scores = np.clip(scores, meta.score_min, meta.score_max)
    return np.round(scores) if meta.integer_scores else scores


def completed_scores(idata: az.InferenceData, design: TrialDesign, weeks=None, seed=DEFAULT_SEED, *, model: str | None = None,
                     scale: bool = True) -> CompletedScores:
    """The population's scores at the reported weeks, completed per posterior draw under MAR (see the module doc).

    weeks  None (end of treatment and last follow-up), 'all', or a list of post-baseline scheduled weeks
    seed   an int or a numpy SeedSequence: the imputations' random stream
    model  the registered model name (default: the fit's provenance)
    scale  False: imputed scores as drawn, before clipping and rounding to the scale
    """
    name = scored_model(idata, model)
    chosen = report_weeks(design, weeks)
    week_idx = np.searchsorted(design.weeks, chosen)
    wide = design.wide_scores()
    has_base = ~np.isnan(wide[:, 0])
    rows = np.flatnonzero(has_base)
    rng = np.random.default_rng(seed)
    if name in (MMRM_NAME, RETRIEVED_NAME):
        drawn = _mmrm_draws(idata, design, rows, week_idx, rng)
    else:
        drawn = _trajectory_draws(idata, design, name, rows, week_idx, rng)
    observed = wide[rows][:, week_idx]
    if scale:
        drawn = on_scale(drawn, design.meta)
    scores = np.where(np.isnan(observed)[None], drawn, observed[None])
    return CompletedScores(
        weeks=chosen,
        participants=np.asarray(design.participants)[rows],
        arm=np.asarray(design.arm_idx)[rows].astype(int),
        baseline=wide[rows, 0],
        observed=observed,
        scores=scores,
        n_excluded=int((~has_base).sum()),
    )


# ---------------------------------------------------------------- summaries


def _hdi(draws: np.ndarray, hdi_prob: float) -> tuple[float, float]:
    lo, hi = az.hdi(np.asarray(draws, dtype=float), hdi_prob=hdi_prob)
    return float(lo), float(hi)


def beta_moments(events: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the Jeffreys posterior Beta(x + 1/2, n - x + 1/2) for each count x."""
    a = np.asarray(events, dtype=float) + 0.5
    b = n - np.asarray(events, dtype=float) + 0.5
    return a / (n + 1.0), a * b / ((n + 1.0) ** 2 * (n + 2.0))


def rate_draws(events: np.ndarray, n: int, uniforms: np.ndarray) -> np.ndarray:
    """One rate per posterior draw: the Beta(x_d + 1/2, n - x_d + 1/2) quantile at the draw's uniform."""
    return special.betaincinv(np.asarray(events, dtype=float) + 0.5, n - np.asarray(events, dtype=float) + 0.5, uniforms)


def contrast_rows(p_control: np.ndarray, p_treat: np.ndarray, moments_control, moments_treat, hdi_prob: float = HDI_PROB) -> list[dict]:
    """Risk difference, odds ratio and NNT rows (quantity, mean, sd, median, interval, p_above_0, note) from the
    rate draws of the two arms and the exact (mean, variance) arrays of their per-draw Beta posteriors."""
    lo_name, hi_name = hdi_names(hdi_prob)
    rd = p_treat - p_control
    m_c, v_c = moments_control
    m_t, v_t = moments_treat
    diff_mean = m_t - m_c
    rd_lo, rd_hi = _hdi(rd, hdi_prob)
    rows = [{
        "quantity": "risk_difference", "mean": float(diff_mean.mean()),
        "sd": float(np.sqrt((v_t + v_c).mean() + diff_mean.var())), "median": float(np.median(rd)),
        lo_name: rd_lo, hi_name: rd_hi, "p_above_0": float(np.mean(rd > 0)), "note": "",
    }]
    tiny = 1e-12
    pc, pt_ = np.clip(p_control, tiny, 1 - tiny), np.clip(p_treat, tiny, 1 - tiny)
    log_or = np.log(pt_ / (1 - pt_)) - np.log(pc / (1 - pc))
    odds = np.exp(log_or)
    lo, hi = _hdi(log_or, hdi_prob)
    rows.append({
        "quantity": "odds_ratio", "mean": float(odds.mean()), "sd": float(odds.std(ddof=1)), "median": float(np.median(odds)),
        lo_name: float(np.exp(lo)), hi_name: float(np.exp(hi)), "p_above_0": np.nan,
        "note": "interval: HDI of log OR, exponentiated; P(OR > 1) = P(risk difference > 0)",
    })
    nnt = {"quantity": "nnt", "mean": np.nan, "sd": np.nan, "median": np.nan, lo_name: np.nan, hi_name: np.nan, "p_above_0": np.nan}
    if rd_lo > 0 or rd_hi < 0:
        nnt.update({"median": float(1.0 / np.median(rd)), lo_name: 1.0 / rd_hi, hi_name: 1.0 / rd_lo})
        nnt["note"] = ("number needed to treat for one more (benefit): 1 / median risk difference; interval: 1 / the risk difference's HDI"
                       if rd_lo > 0 else
                       "negative: a number needed to harm of |NNT| (treatment worse); interval: 1 / the risk difference's HDI")
    else:
        nnt["note"] = f"not defined: the {hdi_prob:.0%} HDI of the risk difference includes 0 (NNT unbounded, from benefit to harm)"
    rows.append(nnt)
    return rows


def estimand_text(estimand: str, outcome: str, week: int, meta: DatasetMeta, n: int, n_excluded: int,
                  remission_cutoff: float) -> str:
    """The estimand in the ICH E9(R1) attributes: population, variable, intercurrent events, population-level summary."""
    label = meta.outcome_label
    if week == meta.treatment_end:
        phase = "end of treatment"
    else:
        phase = "off-treatment follow-up" if week > meta.treatment_end else "during treatment"
    if outcome == "response":
        variable = f"{label} response (>= {RESPONSE_REDUCTION:.0%} reduction from baseline) at week {week} ({phase})"
    else:
        variable = f"{label} remission (score <= {remission_cutoff:g}) at week {week} ({phase})"
    population = (f"Population: all randomised participants with a baseline {label} score (n = {n}; "
                  f"{n_excluded} without a baseline score excluded).")
    if estimand == "MAR":
        events = ("Intercurrent events (treatment discontinuation, withdrawal, missed visit): hypothetical strategy, the outcome "
                  "had the participant been assessed at the visit; missing scores imputed under missing at random from the "
                  "model's posterior predictive given the participant's observed visits.")
    elif estimand == POLICY:
        events = ("Intercurrent events: treatment discontinuation: treatment policy, the outcome whatever happened to the randomised "
                  "treatment (visits attended after stopping treatment used as observed); missing scores after stopping treatment "
                  "imputed from the model's off-treatment course (retrieved dropouts: missing at random given the arm, the observed "
                  "visits and being off treatment), other missing scores under missing at random on treatment, each from the "
                  "model's posterior predictive given the participant's observed visits.")
    else:
        events = ("Intercurrent events (treatment discontinuation, withdrawal, missed visit): composite strategy, a participant "
                  f"without a score at the visit counts as {FAILURE[outcome][0]} (non-responder imputation).")
    actives = meta.treatment_arms
    if len(actives) == 1:
        against = f"risk difference ({actives[0]} - {meta.control_arm})"
    else:
        against = (f"risk difference of each active arm against {meta.control_arm} "
                   f"({', '.join(f'{a} - {meta.control_arm}' for a in actives)})")
    summary = f"Population-level summary: {outcome} rate per arm, {against}, odds ratio and number needed to treat."
    return f"{population} Variable: {variable}. {events} {summary}"


def responder_table(idata: az.InferenceData, design: TrialDesign, remission_cutoff: float = REMISSION_CUTOFF, weeks=None,
                    seed=DEFAULT_SEED, hdi_prob: float = HDI_PROB, *, model: str | None = None) -> pd.DataFrame:
    """Response and remission rates per arm, risk difference, odds ratio and NNT under the MAR (a retrieved-dropout fit:
    treatment_policy) and NRI estimands.

    idata             a fitted trajectory model or MMRM (read a saved fit with deptrial.load_fit)
    design            the TrialDesign the model was fitted to
    remission_cutoff  remission: score <= this (default ppc.REMISSION_CUTOFF, MADRS <= 7)
    weeks             None: end of treatment and last follow-up week; 'all': every post-baseline visit; or a list
    seed              int: the imputations and the rate draws (the same seed gives the same table)
    hdi_prob          width of the intervals (columns hdi_<tail>%, e.g. hdi_3% and hdi_97% for 0.94)
    model             the registered model name (default: the fit's provenance)

    One row per estimand (MAR or treatment_policy, NRI) x outcome (response, remission) x week x quantity: rate_<arm> for every arm
    (the control arm first, then the active arms in order), then for each active arm against the control arm
    risk_difference (arm "<active> - <control>"), odds_ratio and nnt (arm "<active> vs <control>"). Columns:
    estimand, estimand_text, outcome, week, quantity, arm, n (participants: of the arm, or of the two arms
    compared), n_missing (without a score at the week), events (responders or remitters: the mean over draws of
    the completed data's count), mean, sd, median, the HDI bounds, p_above_0 (risk difference: P(active arm
    better)) and note. How each is computed, and why the NNT is reported as it is, is in the module doc.
    """
    meta = design.meta
    seeds = np.random.SeedSequence(seed).spawn(2)
    done = completed_scores(idata, design, weeks, seeds[0], model=model)
    lo_name, hi_name = hdi_names(hdi_prob)
    n_draws = done.scores.shape[0]
    labels = tuple(meta.arms)  # the control arm first: done.arm indexes it
    uniforms = np.random.default_rng(seeds[1]).random((len(OUTCOMES), len(done.weeks), len(labels), n_draws))
    missing = done.missing
    threshold = {"response": (1.0 - RESPONSE_REDUCTION) * done.baseline[:, None], "remission": remission_cutoff}
    n_total = len(done.participants)
    rows = []
    imputed = POLICY if fitted_model_name(idata, model) == RETRIEVED_NAME else "MAR"
    for estimand in (imputed, "NRI"):
        for o, outcome in enumerate(OUTCOMES):
            if estimand != "NRI":
                hits = done.scores <= threshold[outcome]  # draws x n x k
            else:
                hits = np.broadcast_to(~missing & (np.nan_to_num(done.observed, nan=np.inf) <= threshold[outcome]), done.scores.shape)
            for k, week in enumerate(done.weeks):
                text = estimand_text(estimand, outcome, int(week), meta, n_total, done.n_excluded, remission_cutoff)
                head = {"estimand": estimand, "estimand_text": text, "outcome": outcome, "week": int(week)}
                draws, moments = [], []
                for arm in range(len(labels)):
                    sel = done.arm == arm
                    n = int(sel.sum())
                    events = hits[:, sel, k].sum(axis=1)
                    mean, var = beta_moments(events, n)
                    p = rate_draws(events, n, uniforms[o, k, arm])
                    draws.append(p)
                    moments.append((mean, var))
                    lo, hi = _hdi(p, hdi_prob)
                    n_miss = int(missing[sel, k].sum())
                    how = {"MAR": "imputed under MAR", POLICY: "imputed (after stopping treatment: off-treatment model)"}.get(
                        estimand, f"counted as {FAILURE[outcome][1]}")
                    rows.append({
                        **head, "quantity": f"rate_{labels[arm]}", "arm": labels[arm], "n": n, "n_missing": n_miss,
                        "events": float(events.mean()), "mean": float(mean.mean()), "sd": float(np.sqrt(var.mean() + mean.var())),
                        "median": float(np.median(p)), lo_name: lo, hi_name: hi, "p_above_0": np.nan,
                        "note": f"{n_miss} of {n} without a score at week {int(week)}, {how}",
                    })
                for a in range(1, len(labels)):
                    pair = (done.arm == 0) | (done.arm == a)
                    contrast = f"{labels[a]} - {labels[0]}"
                    for row in contrast_rows(draws[0], draws[a], moments[0], moments[a], hdi_prob):
                        rows.append({**head, "arm": contrast if row["quantity"] == "risk_difference" else f"{labels[a]} vs {labels[0]}",
                                     "n": int(pair.sum()), "n_missing": int(missing[pair, k].sum()), "events": np.nan, **row})
    columns = ["estimand", "estimand_text", "outcome", "week", "quantity", "arm", "n", "n_missing", "events", "mean", "sd",
               "median", lo_name, hi_name, "p_above_0", "note"]
    return pd.DataFrame(rows)[columns]
