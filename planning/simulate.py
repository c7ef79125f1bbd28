"""Simulate whole future trials from a parameter set and analyse each one fast.

Simulation (vectorised over S trials of one design): each simulated trial takes one parameter draw and
enrols n_control + n_treatment new participants, who must pass the entry screening on their baseline
score (and the enrichment threshold on a baseline biomarker, when the design enriches). Every scheduled
visit of every participant is drawn:

- from a trajectory model (planning.params.ParameterSet): baseline log biomarkers from the fitted marker
  distribution, participant effects, and the score at each scheduled week from the model's equation;
- from the MMRM (planning.params.MMRMParameters): the baseline score from the fitted trial's observed
  baseline distribution, and the change from baseline at every post-baseline visit from the MMRM's
  multivariate normal given the baseline.

Entry screening keeps only people whose baseline score is at least `entry_min` (people are redrawn until
eligible: exactly the conditional law given eligibility). A design with several sites (`sites`) spreads
each arm evenly over them (participant j of an arm at site j mod sites) and draws each simulated trial's
site offsets afresh, Normal(0, site SD) with the SD given (`site_sd`) or the parameter draw's (the
spread of the fitted site offsets), added where the fitted models put them: to every score (baseline
included, so before screening) for a trajectory model, to the change from baseline at every visit for
an MMRM. The analyses pool the sites (no site term): with the arms balanced within sites the effect
estimate stays unbiased, and the site variance is absorbed into the residual covariance. Scores are rounded and clipped to the scale.
Participants then drop out (monotone: after leaving, no further visit), with the design's cumulative
dropout by each visit in each arm, by one of three mechanisms: completely at random (MCAR); at random
(MAR: the probability of leaving before a visit is logistic in the score at the last attended visit, as
in rbmi's simulate_data); not at random (MNAR: logistic in the score of the visit being missed). For
MAR and MNAR the logistic intercept is solved in each simulated trial, arm and visit so that the
expected number leaving equals the design's rate exactly; the slope is `dropout_score_effect` log-odds
per 5 outcome points (worse scores leave more often when positive).

Analysis (no MCMC), by `AnalysisSettings.method`:
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
interim look is the same call with fewer attended visits; `sequential` (at the end of this module) runs
the interim looks and their stopping rules.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

from .mmrm_gls import mmrm_effect
from .params import ParameterSet, PlanningError

DROPOUT_MECHANISMS = ("mcar", "mar", "mnar")
ANALYSES = ("mmrm", "ancova")
SCORE_UNIT = 5.0  # dropout_score_effect is per this many outcome points (as data.TrialParameters)
MAX_DROPOUT = 0.99


@dataclass(frozen=True)
class PlannedTrial:
    """One candidate design."""

    n_control: int
    allocation: float = 1.0  # NAC participants per placebo participant
    primary_week: float = 12.0
    weeks: tuple[int, ...] = (0, 2, 4, 6, 8, 12)
    dropout: float | tuple[float, float] = 0.2  # lost by the primary week: one rate, or (control, treatment)
    dropout_mechanism: str = "mar"  # mcar, mar (last attended score), mnar (the missed visit's score)
    dropout_score_effect: float = 0.3  # log-odds of leaving per 5 outcome points (mar, mnar)
    dropout_shape: tuple[float, ...] | None = None  # per post-baseline week: cumulative dropout / dropout by the primary week
    dropout_source: str = "given"  # how the rates were chosen (stated in the table)
    entry_min: float | None = None  # enrol only if the baseline score is at least this
    enrich_marker: str | None = None
    enrich_threshold: float | None = None  # natural units: enrol only if baseline marker > threshold
    sites: int = 1  # participants of each arm spread evenly over this many new sites
    site_sd: float | None = None  # SD of the new sites' offsets; None: each parameter draw's own

    @property
    def n_treatment(self) -> int:
        return int(round(self.n_control * self.allocation))

    @property
    def n_total(self) -> int:
        return self.n_control + self.n_treatment

    @property
    def population(self) -> str:
        if self.enrich_marker is None:
            return "all"
        return f"{self.enrich_marker}>{self.enrich_threshold:g}"

    @property
    def dropout_rates(self) -> tuple[float, float]:
        """(control, treatment) loss by the primary week."""
        d = self.dropout
        return (float(d), float(d)) if np.ndim(d) == 0 else (float(d[0]), float(d[1]))

    @property
    def pooled_dropout(self) -> float:
        c, t = self.dropout_rates
        return (self.n_control * c + self.n_treatment * t) / self.n_total

    @property
    def post_weeks(self) -> tuple[int, ...]:
        return tuple(sorted(self.weeks))[1:]

    @property
    def primary_index(self) -> int:
        """Index of the primary week among the post-baseline visits."""
        return list(self.post_weeks).index(int(self.primary_week))

    def cumulative_dropout(self) -> np.ndarray:
        """(2, V): fraction of each arm (control, treatment) lost by each post-baseline visit."""
        v, k = len(self.post_weeks), self.primary_index + 1
        out = np.zeros((2, v))
        for a, rate in enumerate(self.dropout_rates):
            if self.dropout_shape is not None:
                out[a] = np.minimum(rate * np.asarray(self.dropout_shape, float), MAX_DROPOUT)
            else:  # the same hazard at every visit, reaching `rate` by the primary visit
                out[a] = 1 - (1 - rate) ** (np.arange(1, v + 1) / k)
        return np.maximum.accumulate(np.minimum(out, MAX_DROPOUT), axis=1)

    def validate(self, params) -> None:
        if self.n_control < 2 or self.n_treatment < 2:
            raise PlanningError(f"each arm needs at least 2 participants (got {self.n_control} placebo, {self.n_treatment} NAC)")
        if not self.allocation > 0:
            raise PlanningError(f"allocation ratio must be positive, got {self.allocation}")
        if not all(0 <= r < 1 for r in self.dropout_rates):
            raise PlanningError(f"dropout must be in [0, 1) in each arm, got {self.dropout}")
        if self.dropout_mechanism not in DROPOUT_MECHANISMS:
            raise PlanningError(f"unknown dropout mechanism '{self.dropout_mechanism}'; choose one of {', '.join(DROPOUT_MECHANISMS)}")
        if not np.isfinite(self.dropout_score_effect):
            raise PlanningError("the dropout score effect must be finite")
        weeks = sorted(self.weeks)
        if not weeks or weeks[0] != 0:
            raise PlanningError(f"the visit schedule must start at week 0 (baseline), got {list(self.weeks)}")
        if len(set(weeks)) != len(weeks):
            raise PlanningError(f"the visit schedule repeats a week: {list(self.weeks)}")
        if self.primary_week not in weeks or self.primary_week <= 0:
            raise PlanningError(f"the primary week {self.primary_week:g} must be a post-baseline week of the schedule {weeks}")
        if self.primary_week > params.scale.last_week:
            raise PlanningError(
                f"the primary week {self.primary_week:g} lies beyond the fitted trial's last week {params.scale.last_week:g}; "
                "the model cannot extrapolate trajectories past the data"
            )
        if self.dropout_shape is not None:
            shape = np.asarray(self.dropout_shape, float)
            if len(shape) != len(self.post_weeks) or np.any(shape < 0) or np.any(np.diff(shape) < -1e-12):
                raise PlanningError(f"the dropout shape needs one non-decreasing, non-negative value per post-baseline week, got {self.dropout_shape}")
        if params.family == "mmrm":
            missing = [w for w in self.post_weeks if w not in params.visit_weeks]
            if missing:
                raise PlanningError(
                    f"week(s) {missing} of the schedule are not visits of the fitted MMRM ({list(params.visit_weeks)}); "
                    "an MMRM describes its own visits only: choose --weeks among them"
                )
        if not (isinstance(self.sites, (int, np.integer)) and 1 <= self.sites <= min(self.n_control, self.n_treatment)):
            raise PlanningError(f"--sites must be a whole number from 1 to the smaller arm's size ({min(self.n_control, self.n_treatment)}), got {self.sites}")
        if self.site_sd is not None and not (np.isfinite(self.site_sd) and self.site_sd >= 0):
            raise PlanningError(f"--site-sd must be finite and >= 0, got {self.site_sd}")
        if self.entry_min is not None and not np.isfinite(self.entry_min):
            raise PlanningError(f"the entry criterion must be finite, got {self.entry_min}")
        if self.enrich_marker is not None:
            params.z_threshold(self.enrich_marker, float(self.enrich_threshold))


@dataclass(frozen=True)
class Scenario:
    """Where the NAC effect comes from: the parameter draws (assurance), a fixed value (power, type I
    error), or the vague component of the robust design prior, Normal(0, sd)."""

    kind: str  # "assurance", "fixed" or "vague"
    effect: float | None = None
    sd: float | None = None

    @property
    def label(self) -> str:
        if self.kind == "fixed":
            return f"effect={self.effect:g}"
        return self.kind


@dataclass(frozen=True)
class AnalysisSettings:
    threshold: float = 0.975  # success if P(effect < 0) > threshold
    mcid: float = 2.0
    dual: bool = False  # also require P(effect < -mcid) > mcid_prob
    mcid_prob: float = 0.5
    prior_sd: float = 6.0  # Normal(0, prior_sd) analysis prior on the effect (the headline model's nac_change prior)
    interval: float = 0.95  # central posterior interval whose width is reported
    method: str = "mmrm"  # "mmrm" (all attended visits, REML) or "ancova" (completers at the primary week)
    visit_mean_prior_sd: float = 15.0  # the MMRM's other priors (models/mmrm.py; 0.25 x the outcome range)
    baseline_slope_prior_sd: float = 0.5

    def validate(self) -> None:
        if not 0.5 <= self.threshold < 1:
            raise PlanningError(f"--threshold must be in [0.5, 1), got {self.threshold}")
        if not 0 < self.mcid_prob < 1:
            raise PlanningError(f"the MCID probability must be in (0, 1), got {self.mcid_prob}")
        if not (self.prior_sd > 0 and self.visit_mean_prior_sd > 0 and self.baseline_slope_prior_sd > 0):
            raise PlanningError(f"the analysis prior SDs must be positive, got {self.prior_sd}, {self.visit_mean_prior_sd}, {self.baseline_slope_prior_sd}")
        if self.mcid < 0:
            raise PlanningError(f"--mcid must be >= 0, got {self.mcid}")
        if self.method not in ANALYSES:
            raise PlanningError(f"unknown analysis '{self.method}'; choose one of {', '.join(ANALYSES)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SimulatedTrials:
    """S simulated trials of one design: every scheduled score, the visits attended, arm, truth."""

    y: np.ndarray  # (S, N, W) scores at the design's weeks (week 0 first), before dropout
    attended: np.ndarray  # (S, N) post-baseline visits attended: a prefix of the schedule
    treated: np.ndarray  # (N,) 0/1
    primary: int  # index of the primary week among the post-baseline visits
    true_effect: np.ndarray  # (S,) mean NAC - placebo effect at the primary week in the enrolled population
    eligible: np.ndarray  # (S,) fraction of screened people eligible (1 without screening or enrichment)
    site: np.ndarray | None = None  # (N,) site of each participant (None: one site)
    site_sd: np.ndarray | None = None  # (S,) SD the site offsets were drawn with (None: one site)

    @property
    def y0(self) -> np.ndarray:
        return self.y[:, :, 0]

    @property
    def yp(self) -> np.ndarray:
        return self.y[:, :, self.primary + 1]

    @property
    def completed(self) -> np.ndarray:
        """(S, N) attended the primary visit."""
        return self.attended > self.primary


def site_of(trial: PlannedTrial) -> np.ndarray:
    """(N,) site of each participant (control first, then treatment): participant j of an arm at site j mod sites."""
    return np.concatenate([np.arange(trial.n_control), np.arange(trial.n_treatment)]) % trial.sites


def _site_offsets(params, idx: np.ndarray, trial: PlannedTrial, rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(S, N) each participant's site offset and (S,) the SD it was drawn with; (None, None) with one site
    or a zero SD (then no random numbers are drawn, so one-site tables do not depend on this)."""
    if trial.sites < 2:
        return None, None
    sd = np.full(len(idx), float(trial.site_sd)) if trial.site_sd is not None else np.asarray(params.site_sd, float)[idx]
    if not np.any(sd > 0):
        return None, sd
    u = sd[:, None] * rng.standard_normal((len(idx), trial.sites))
    return u[:, site_of(trial)], sd


def _markers(params: ParameterSet, idx: np.ndarray, n: int, trial: PlannedTrial, rng: np.random.Generator):
    """Standardised baseline log markers (S, N, K) and the eligible fraction per simulated trial."""
    s = len(idx)
    k = len(params.marker_names)
    mu = params.marker_mean[idx]  # (S, K)
    chol = params.marker_chol[idx]  # (S, K, K)
    e = rng.standard_normal((s, n, k))
    if trial.enrich_marker is None or k == 0:
        return mu[:, None, :] + e @ chol.transpose(0, 2, 1), np.ones(s)
    j = params.marker_index(trial.enrich_marker)
    c = params.z_threshold(trial.enrich_marker, float(trial.enrich_threshold))
    # Reorder so the enrichment marker comes first: its Cholesky column then loads on e_0 alone,
    # and drawing e_0 from its truncated normal gives the exact conditional law of the others.
    order = [j] + [i for i in range(k) if i != j]
    cov = np.einsum("sij,skj->sik", chol, chol)[:, order][:, :, order]
    lo = np.linalg.cholesky(cov)
    sd_j = lo[:, 0, 0]
    a = (c - mu[:, j]) / sd_j  # standardised threshold per draw
    upper_tail = special.ndtr(-a)  # P(eligible)
    if upper_tail.mean() < 1e-6:
        raise PlanningError(
            f"enrichment threshold {trial.enrich_threshold:g} for {trial.enrich_marker} leaves fewer than 1 in a million people eligible; lower it"
        )
    u = rng.uniform(size=(s, n))
    e[:, :, 0] = -special.ndtri(u * np.maximum(upper_tail, 1e-300)[:, None])  # e_0 > a, stable in the upper tail
    z_perm = mu[:, order][:, None, :] + e @ lo.transpose(0, 2, 1)
    z = np.empty_like(z_perm)
    z[:, :, order] = z_perm
    return z, upper_tail


def _curve(source: dict, key: str) -> dict[float, float] | None:
    curve = source.get(key)
    return {float(k): float(v) for k, v in curve.items()} if curve else None


def calibrated_dropout(source: dict, weeks: tuple[int, ...], primary: float, given) -> tuple[tuple[float, float], tuple[float, ...] | None, str]:
    """Per-arm loss by the primary week, the shape of the cumulative loss over the post-baseline weeks
    (relative to the primary week's) and a statement of where both come from.

    Default: the fitted trial's observed loss by visit (per arm at the primary week; the shape from both
    arms together), interpolated linearly in weeks. `given` (placebo, NAC) replaces the rates and keeps the
    fitted shape; without a fitted trial the hazard is the same at every visit."""
    post = [w for w in sorted(weeks) if w > 0]
    pooled = _curve(source, "dropout_by_week")

    def at(curve, w):
        xs = sorted(curve)
        return float(np.interp(w, [0.0, *xs], [0.0, *(curve[x] for x in xs)]))

    shape = None
    if pooled and at(pooled, primary) > 0:
        shape = tuple(round(at(pooled, w) / at(pooled, primary), 6) for w in post)
    if given is not None:
        return tuple(given), shape, "given (--dropout); " + ("visit profile of the fitted trial" if shape else "same hazard at every visit")
    control, treatment = _curve(source, "dropout_by_week_control"), _curve(source, "dropout_by_week_treatment")
    if control and treatment:
        rates = (round(at(control, primary), 4), round(at(treatment, primary), 4))
        return rates, shape, "fitted trial: observed loss by visit and arm"
    if pooled:
        rate = round(at(pooled, primary), 4)
        return (rate, rate), shape, "fitted trial: observed loss by visit"
    return (0.2, 0.2), None, "default 0.2, same hazard at every visit"


def _effect_shape(params, trial: PlannedTrial) -> np.ndarray:
    """A fixed primary-week effect spread over the post-baseline visits as the trajectory models' fixed
    scenario does: in proportion to the treatment-phase time code t1 (then constant in follow-up)."""
    t1 = np.array([params.scale.t_codes(w)[0] for w in trial.post_weeks])
    return t1 / t1[trial.primary_index]


def _scenario_effect(params, scenario: Scenario, s: int, rng: np.random.Generator, effect_scale: float) -> np.ndarray | None:
    """Primary-week effects of a fixed, vague or design-prior scenario (S,); None: the draws' own effects."""
    if scenario.kind == "fixed":
        return np.full(s, float(scenario.effect))
    if scenario.kind == "vague":
        return float(scenario.sd) * rng.standard_normal(s)
    if scenario.kind != "assurance":
        raise PlanningError(f"unknown scenario kind '{scenario.kind}'")
    if params.effect_prior is not None:
        mean, sd = params.effect_prior
        return (mean + sd * rng.standard_normal(s)) * effect_scale
    return None


def _truncated_normal(mean, sd, lower, rng, shape) -> np.ndarray:
    """Normal(mean, sd) draws restricted to >= lower (lower = None: unrestricted), by the inverse CDF."""
    u = rng.uniform(size=shape)
    if lower is None:
        return mean + sd * special.ndtri(u)
    tail = special.ndtr((mean - lower) / sd)  # P(eligible)
    return mean - sd * special.ndtri(u * tail)  # = mean + sd e, e > (lower - mean)/sd


def _check_eligible(fraction: np.ndarray, trial: PlannedTrial) -> None:
    if np.mean(fraction) < 1e-4:
        raise PlanningError(f"the entry criterion (baseline score >= {trial.entry_min:g}) leaves fewer than 1 in 10,000 people eligible; lower --entry-min")


def _trajectory_scores(params: ParameterSet, idx, trial: PlannedTrial, scenario: Scenario, rng, effect_scale: float, treated: np.ndarray):
    s, n = len(idx), len(treated)
    weeks = np.asarray(sorted(trial.weeks), float)
    t1, t2 = np.array([params.scale.t_codes(w) for w in weeks]).T
    q = 4 * t1 * (1 - t1)  # curved models' basis
    p_t1 = params.scale.t_codes(trial.primary_week)[0]

    offset, site_sd = _site_offsets(params, idx, trial, rng)
    z, eligible = _markers(params, idx, n, trial, rng)
    tau = params.participant_sd[idx]
    rho = params.participant_corr[idx]
    sigma = params.residual_sd[idx]
    prognostic = params.prognostic[idx]
    m0 = params.intercept[idx][:, None] + np.einsum("snk,sk->sn", z, prognostic)  # baseline mean given the markers (and site)
    if offset is not None:
        m0 = m0 + offset
    sd0 = np.sqrt(tau[:, 0] ** 2 + sigma**2)[:, None]
    lower = trial.entry_min
    if lower is not None:
        q_ok = special.ndtr((m0 - lower) / sd0)  # P(eligible | markers)
        eligible = eligible * q_ok.mean(axis=1)
        _check_eligible(eligible, trial)
        if z.shape[2] and np.any(prognostic != 0):  # eligibility depends on the markers: redraw people until eligible
            keep = rng.uniform(size=(s, n)) < q_ok
            for _ in range(10_000):
                if keep.all():
                    break
                ii, jj = np.nonzero(~keep)
                znew, _ = _markers(params, idx[ii], 1, trial, rng)
                z[ii, jj] = znew[:, 0]
                m0[ii, jj] = params.intercept[idx[ii]] + np.einsum("mk,mk->m", znew[:, 0], prognostic[ii]) + (0.0 if offset is None else offset[ii, jj])
                keep[ii, jj] = rng.uniform(size=len(ii)) < special.ndtr((m0[ii, jj] - lower) / sd0[ii, 0])
    y0 = _truncated_normal(m0, sd0, lower, rng, (s, n))
    # participant effects and the baseline residual given the baseline score
    resid = y0 - m0
    share = (tau[:, 0] ** 2 / sd0[:, 0] ** 2)[:, None]
    e = rng.standard_normal((s, n, 2))
    b0 = share * resid + np.sqrt(share * sigma[:, None] ** 2) * e[:, :, 0]
    e0 = np.where(tau[:, 0:1] > 0, b0 / np.where(tau[:, 0:1] > 0, tau[:, 0:1], 1.0), e[:, :, 0])
    b1 = tau[:, 1:2] * (rho[:, None] * e0 + np.sqrt(1 - rho[:, None] ** 2) * e[:, :, 1])

    fixed = _scenario_effect(params, scenario, s, rng, effect_scale)
    if fixed is None:
        d1 = params.nac_change[idx, 0] * effect_scale
        d2 = params.nac_change[idx, 1] * effect_scale
        k1 = params.nac_curvature[idx] * effect_scale
        eta = params.nac_moderation[idx] * effect_scale
    else:
        d1, d2, k1 = fixed / p_t1, np.zeros(s), np.zeros(s)
        eta = params.nac_moderation[idx] * (effect_scale if scenario.kind == "assurance" else 0.0)
    modr = np.einsum("snk,sk->sn", z, params.moderation[idx])
    nac_mod = np.einsum("snk,sk->sn", z, eta)
    level = m0 + b0
    slope1 = params.time_change[idx, 0][:, None] + d1[:, None] * treated + modr + treated * nac_mod + b1
    slope2 = params.time_change[idx, 1][:, None] + d2[:, None] * treated
    bend = params.time_curvature[idx][:, None] + k1[:, None] * treated
    eps = rng.standard_normal((s, n, len(weeks) - 1))
    y = np.empty((s, n, len(weeks)))
    y[:, :, 0] = y0
    y[:, :, 1:] = (level[:, :, None] + slope1[:, :, None] * t1[1:] + slope2[:, :, None] * t2[1:] + bend[:, :, None] * q[1:]
                   + sigma[:, None, None] * eps)
    p1, p2 = params.scale.t_codes(trial.primary_week)
    pq = 4 * p1 * (1 - p1)
    true_effect = d1 * p1 + d2 * p2 + k1 * pq + p1 * nac_mod[:, treated == 1].mean(axis=1)
    return y, true_effect, eligible, site_sd


def _mmrm_scores(params, idx, trial: PlannedTrial, scenario: Scenario, rng, effect_scale: float, treated: np.ndarray):
    s, n = len(idx), len(treated)
    offset, site_sd = _site_offsets(params, idx, trial, rng)
    sel = np.array([list(params.visit_weeks).index(w) for w in trial.post_weeks])
    bm, bs = params.baseline_mean[idx][:, None], params.baseline_sd[idx][:, None]
    lower = trial.entry_min
    eligible = np.ones(s) if lower is None else special.ndtr((bm[:, 0] - lower) / bs[:, 0])
    if lower is not None:
        _check_eligible(eligible, trial)
    y0 = _truncated_normal(bm, bs, lower, rng, (s, n))
    fixed = _scenario_effect(params, scenario, s, rng, effect_scale)
    if fixed is None:
        d = params.nac_visit_effect[idx][:, sel] * effect_scale
    else:
        d = fixed[:, None] * _effect_shape(params, trial)[None, :]
    sig = params.sigma()[idx][:, sel][:, :, sel]
    chol = np.linalg.cholesky(sig)
    mean = (params.visit_mean[idx][:, sel][:, None, :] + d[:, None, :] * treated[None, :, None]
            + params.baseline_slope[idx][:, sel][:, None, :] * (y0 - params.baseline_center[idx][:, None])[:, :, None])
    eps = rng.standard_normal((s, n, len(sel)))
    change = mean + eps @ np.swapaxes(chol, 1, 2)
    if offset is not None:
        change = change + offset[:, :, None]
    y = np.concatenate([y0[:, :, None], y0[:, :, None] + change], axis=2)
    return y, d[:, trial.primary_index], eligible, site_sd


def _solve_intercepts(x: np.ndarray, risk: np.ndarray, arm: np.ndarray, hazard: np.ndarray, beta: float) -> np.ndarray:
    """Per trial and arm, the logistic intercept a with mean_{at risk in arm} expit(a + beta x) = hazard[arm].

    x, risk (S, N); arm (N,) 0/1; hazard (2,). Newton's method on a monotone function of a, from the
    intercept that is exact when x is constant. Returns (S, N) intercepts placed per participant."""
    s = x.shape[0]
    a = np.zeros((s, 2))
    for k in (0, 1):
        h = hazard[k]
        rows = arm == k
        xr, rr = x[:, rows], risk[:, rows].astype(float)
        n_r = rr.sum(axis=1)
        if h <= 0 or h >= 1:
            a[:, k] = -np.inf if h <= 0 else np.inf
            continue
        xbar = (xr * rr).sum(axis=1) / np.maximum(n_r, 1)
        ak = np.log(h / (1 - h)) - beta * xbar
        for _ in range(30):
            p = special.expit(ak[:, None] + beta * xr)
            f = (p * rr).sum(axis=1) / np.maximum(n_r, 1) - h
            df = (p * (1 - p) * rr).sum(axis=1) / np.maximum(n_r, 1)
            step = np.clip(f / np.maximum(df, 1e-12), -2.0, 2.0)
            ak = ak - step
            if np.all((np.abs(f) < 1e-10) | (n_r == 0)):
                break
        a[:, k] = ak
    return a[:, arm.astype(int)]


def simulate_dropout(y: np.ndarray, treated: np.ndarray, trial: PlannedTrial, rng: np.random.Generator) -> np.ndarray:
    """Visits attended (S, N) under the design's dropout rates by visit and arm and its mechanism.

    Before post-baseline visit v, a participant still in the trial leaves with probability h_av (MCAR),
    or expit(alpha + beta x / 5) with x the score at the last attended visit (MAR) or at visit v itself
    (MNAR), alpha solved per trial and arm so that the expected fraction leaving is h_av, where
    1 - h_av = (1 - F_av) / (1 - F_a,v-1) and F_av is the design's cumulative dropout by visit v."""
    s, n, w = y.shape
    v = w - 1
    arm = np.asarray(treated).astype(int)
    surv = 1 - trial.cumulative_dropout()  # (2, V)
    hazard = 1 - surv / np.concatenate([np.ones((2, 1)), surv[:, :-1]], axis=1)
    u = rng.uniform(size=(s, n, v))
    beta = trial.dropout_score_effect / SCORE_UNIT
    inside = np.ones((s, n), bool)
    attended = np.zeros((s, n), dtype=np.int64)
    for j in range(v):
        h = hazard[:, j]
        if trial.dropout_mechanism == "mcar" or beta == 0:
            p = h[arm][None, :]
        else:
            x = y[:, :, j] if trial.dropout_mechanism == "mar" else y[:, :, j + 1]  # last attended, or the one being missed
            p = special.expit(_solve_intercepts(x, inside, arm, h, beta) + beta * x)
        inside &= u[:, :, j] >= p
        attended += inside
    return attended


def simulate_trials(
    params,
    trial: PlannedTrial,
    scenario: Scenario,
    n_sims: int,
    rng: np.random.Generator,
    effect_scale: float = 1.0,
    round_scores: bool = True,
) -> SimulatedTrials:
    s = int(n_sims)
    nc, nt = trial.n_control, trial.n_treatment
    treated = np.concatenate([np.zeros(nc), np.ones(nt)])
    idx = rng.integers(params.n_draws, size=s)
    make = _mmrm_scores if params.family == "mmrm" else _trajectory_scores
    y, true_effect, eligible, site_sd = make(params, idx, trial, scenario, rng, effect_scale, treated)
    sc = params.scale
    if round_scores and sc.integer_scores:
        y = np.round(y)
    if round_scores and sc.score_min is not None and sc.score_max is not None:
        y = np.clip(y, sc.score_min, sc.score_max)
    attended = simulate_dropout(y, treated, trial, rng)
    return SimulatedTrials(y=y, attended=attended, treated=treated, primary=trial.primary_index, true_effect=true_effect, eligible=eligible,
                           site=None if site_sd is None else site_of(trial), site_sd=site_sd)


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


# Interim looks: stop a simulated trial early for futility or efficacy, and its sequential decision.
#
# Enrolment: uniform accrual at `accrual_per_week` participants per week (default: n_total / primary week,
# so enrolment takes as long as the treatment period). Participants enter in an order that interleaves the
# arms in proportion to the allocation (as permuted blocks do); participant k (k = 0..N-1 in that order)
# enters at week k / rate and has the visits scheduled up to (time - entry) by a given calendar time,
# cut short by their dropout.
#
# A look happens at a calendar week: given directly (`weeks`), or at information fraction f, when
# ceil(f N) participants have reached the primary visit (scheduled), at week (ceil(f N) - 1) / rate +
# primary week. It analyses the data then available (the same MMRM or ANCOVA as the final analysis:
# participants still short of the primary visit contribute their earlier visits to the MMRM), giving
# the interim posterior mean m_I and SD s_I of the effect, and predicts from the same data the final
# analysis' posterior SD s_F and degrees of freedom (`expected_final_counts`, `mmrm_effect`): each
# participant's number of attended visits at the final analysis is known for those already seen to drop
# out, and follows the design's dropout by visit (conditional on the visits attended so far) for the
# others and for those still to enrol; the MMRM's posterior SD is then computed for those expected
# pattern counts with Sigma at the interim REML estimate (the ANCOVA's: s_I scaled by the expected
# growth in completers). Under the normal approximation the final posterior mean is predicted as
#     m_F ~ Normal(m_I, s_I^2 - s_F^2)
# and the final analysis succeeds when m_F <= c, c = -t_q s_F (t_q the Student-t quantile of the final
# decision's threshold on its degrees of freedom; with the dual criterion also m_F <= -MCID - t_p s_F), so
#     PPoS = Phi((c - m_I) / sqrt(s_I^2 - s_F^2)).
# The trial stops for efficacy when the interim P(benefit) > `efficacy`, for futility when PPoS <
# `futility`; a look whose analysis fails does not stop the trial. Enrolment stops at the look, so a
# trial stopped there enrols those who entered by then.


@dataclass(frozen=True)
class InterimSettings:
    fractions: tuple[float, ...] = ()  # looks at information fractions: share of participants who have reached the primary visit
    futility: float = 0.1  # stop if PPoS < futility
    efficacy: float = 0.995  # stop if interim P(benefit) > efficacy
    accrual_per_week: float | None = None  # default: n_total / primary week
    weeks: tuple[float, ...] = ()  # or looks at these calendar weeks from the first participant's entry

    @property
    def n_looks(self) -> int:
        return len(self.weeks) if self.weeks else len(self.fractions)

    def describe(self) -> str:
        if self.weeks:
            return "at calendar weeks " + ", ".join(f"{w:g}" for w in self.weeks)
        return "at " + ", ".join(f"{f:g}" for f in self.fractions) + " of participants at the primary visit"

    def validate(self) -> None:
        f, w = list(self.fractions), list(self.weeks)
        if bool(f) == bool(w):
            raise PlanningError("give the interim looks either as information fractions (--interim) or as calendar weeks (--interim-weeks), not both or neither")
        if f and (any(not 0 < x < 1 for x in f) or any(b <= a for a, b in zip(f, f[1:]))):
            raise PlanningError(f"--interim fractions must be increasing and in (0, 1), got {f}")
        if w and (any(not (np.isfinite(x) and x > 0) for x in w) or any(b <= a for a, b in zip(w, w[1:]))):
            raise PlanningError(f"--interim-weeks must be increasing and positive, got {w}")
        if not 0 <= self.futility < 1:
            raise PlanningError(f"--futility must be in [0, 1), got {self.futility}")
        if not 0.5 <= self.efficacy <= 1:
            raise PlanningError(f"--efficacy must be in [0.5, 1], got {self.efficacy}")
        if self.accrual_per_week is not None and not self.accrual_per_week > 0:
            raise PlanningError(f"--accrual-per-week must be positive, got {self.accrual_per_week}")

    def check_design(self, trial: PlannedTrial) -> None:
        """Refuse calendar looks that fall before any participant has a post-baseline visit scheduled, or
        at or after the final analysis."""
        if not self.weeks:
            return
        first, last = trial.post_weeks[0], final_week(trial, self)
        for w in self.weeks:
            if not first <= w < last:
                raise PlanningError(
                    f"interim look at week {w:g} for {trial.n_control} per arm ({trial.population}): looks must fall between the first participant's first "
                    f"post-baseline visit (week {first:g}) and the final analysis (week {last:g} at {accrual_rate(trial, self):g} participants per week); "
                    "move the look or change --accrual-per-week"
                )


def accrual_rate(trial: PlannedTrial, interim: InterimSettings) -> float:
    return interim.accrual_per_week if interim.accrual_per_week is not None else trial.n_total / trial.primary_week


def entry_weeks(trial: PlannedTrial, rate: float) -> np.ndarray:
    """(N,) entry week of each participant (control first, then treatment, as SimulatedTrials.treated)."""
    nc, nt = trial.n_control, trial.n_treatment
    key = np.concatenate([(np.arange(nc) + 0.5) / nc, (np.arange(nt) + 0.5) / nt])
    order = np.argsort(key, kind="stable")  # arms interleaved in proportion to the allocation
    rank = np.empty(len(key), int)
    rank[order] = np.arange(len(key))
    return rank / rate


def look_weeks(trial: PlannedTrial, interim: InterimSettings) -> np.ndarray:
    """Calendar week of each look (weeks from the first participant's entry)."""
    if interim.weeks:
        return np.asarray(interim.weeks, float)
    rate = accrual_rate(trial, interim)
    m = np.array([math.ceil(f * trial.n_total - 1e-9) for f in interim.fractions])
    return (np.maximum(m, 1) - 1) / rate + trial.primary_week


def look_information(trial: PlannedTrial, interim: InterimSettings) -> np.ndarray:
    """Per look: the fraction of participants whose primary visit is scheduled by then (attended or not)."""
    entry = entry_weeks(trial, accrual_rate(trial, interim))
    return np.array([float((entry + trial.primary_week <= w + 1e-9).mean()) for w in look_weeks(trial, interim)])


def final_week(trial: PlannedTrial, interim: InterimSettings) -> float:
    return (trial.n_total - 1) / accrual_rate(trial, interim) + max(trial.weeks)


def visits_reached(trial: PlannedTrial, entry: np.ndarray, week: float) -> np.ndarray:
    """(N,) post-baseline visits scheduled by calendar week `week`."""
    post = np.asarray(trial.post_weeks, float)
    return (post[None, :] <= week - entry[:, None] + 1e-9).sum(axis=1)


def attended_at(sim: SimulatedTrials, trial: PlannedTrial, entry: np.ndarray, week: float) -> np.ndarray:
    """(S, N) visits attended by calendar week `week`: those scheduled by then, cut short by dropout."""
    return np.minimum(sim.attended, visits_reached(trial, entry, week)[None, :])


def expected_final_counts(sim: SimulatedTrials, trial: PlannedTrial, entry: np.ndarray, week: float) -> np.ndarray:
    """(S, V, 2): expected number of participants per arm (control, treatment) who will have attended
    exactly the first p + 1 post-baseline visits at the final analysis, predicted at calendar week `week`.

    A participant seen to drop out (fewer visits attended than scheduled by then) keeps their count; one
    still in the trial after r visits (including those yet to enrol, r = 0) attends exactly j >= r visits
    with probability (S_a(j) - S_a(j + 1)) / S_a(r), S_a(j) the design's share of arm a attending visit j."""
    reached = visits_reached(trial, entry, week)
    att = np.minimum(sim.attended, reached[None, :])  # (S, N)
    v = len(trial.post_weeks)
    surv = np.concatenate([np.ones((2, 1)), 1 - trial.cumulative_dropout(), np.zeros((2, 1))], axis=1)  # S_a(0..V+1)
    j = np.arange(v + 1)
    exact = surv[:, :-1] - surv[:, 1:]  # (2, V + 1): P(exactly j visits)
    table = np.where(j[None, None, :] >= j[None, :, None], exact[:, None, :] / surv[:, : v + 1, None], 0.0)  # (arm, r, j)
    arm = sim.treated.astype(int)
    dist = np.where((att >= reached[None, :])[:, :, None], table[arm[None, :], att], np.eye(v + 1)[att])  # (S, N, V + 1)
    counts = np.einsum("snj,na->sja", dist, np.eye(2)[arm])
    return counts[:, 1:, :]


def success_bound(final: dict, analysis: AnalysisSettings) -> np.ndarray:
    """The largest final posterior mean that still succeeds, per trial (`final`: the final analysis'
    posterior SD `post_sd` and degrees of freedom `df`, realised or predicted)."""
    df, sd = final["df"], final["post_sd"]
    c = -special.stdtrit(df, analysis.threshold) * sd
    if analysis.dual:
        c = np.minimum(c, -analysis.mcid - special.stdtrit(df, analysis.mcid_prob) * sd)
    return c


def ppos(interim_mean: np.ndarray, interim_sd: np.ndarray, final_sd: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Predictive probability that the final posterior mean is at most `bound`, the final posterior mean
    being Normal(interim mean, interim var - final var); a point mass at the interim mean if that is <= 0."""
    with np.errstate(divide="ignore", invalid="ignore"):  # failed analyses (infinite SDs) are masked by the caller
        var = np.maximum(interim_sd**2 - final_sd**2, 0.0)
        z = (bound - interim_mean) / np.sqrt(var)
    z = np.where(var > 0, z, np.where(bound >= interim_mean, np.inf, -np.inf))
    return special.ndtr(z)


def interim_analysis(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, entry: np.ndarray, week: float) -> dict[str, np.ndarray]:
    """The analysis of the data available at calendar week `week`, with the final analysis' posterior SD
    and degrees of freedom predicted from it (`final_sd`, `final_df`) and the PPoS (`ppos`; NaN where the
    interim analysis failed)."""
    counts = expected_final_counts(sim, trial, entry, week)
    res = analyse(sim, analysis, attended=attended_at(sim, trial, entry, week), final_counts=counts)
    ok = res["ok"] & np.isfinite(res["final_sd"])
    p = ppos(res["post_mean"], res["post_sd"], res["final_sd"], success_bound({"df": res["final_df"], "post_sd": res["final_sd"]}, analysis))
    res["ppos"] = np.where(ok, p, np.nan)
    res["ok"] = ok
    return res


def stage_results(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, interim: InterimSettings):
    """The final analysis and every look's analysis of every simulated trial (whether or not it would
    have stopped earlier): (final, [look 1, look 2, ...])."""
    entry = entry_weeks(trial, accrual_rate(trial, interim))
    return analyse(sim, analysis), [interim_analysis(sim, trial, analysis, entry, w) for w in look_weeks(trial, interim)]


def sequential(sim: SimulatedTrials, trial: PlannedTrial, analysis: AnalysisSettings, interim: InterimSettings,
               stages=None) -> dict[str, np.ndarray]:
    """The final analysis' per-trial results replaced, for trials stopped at a look, by that look's; plus
    `stop_look` (0 = ran to the end, k = stopped at look k), `stop_efficacy`, `stop_futility`, `enrolled`,
    `duration` and `ppos` (S, looks; NaN where the look was not reached). `stages`: `stage_results`, when
    already computed."""
    final, looks = stage_results(sim, trial, analysis, interim) if stages is None else stages
    s, n = sim.attended.shape
    entry = entry_weeks(trial, accrual_rate(trial, interim))
    weeks = look_weeks(trial, interim)
    out = {k: np.array(v, copy=True) for k, v in final.items()}
    stop_look = np.zeros(s, int)
    stop_eff = np.zeros(s, bool)
    enrolled = np.full(s, float(n))
    duration = np.full(s, final_week(trial, interim))
    pp = np.full((s, len(weeks)), np.nan)
    for k, (week, res) in enumerate(zip(weeks, looks), start=1):
        running = stop_look == 0
        if not running.any():
            break
        ok = res["ok"]
        pp[:, k - 1] = np.where(running & ok, res["ppos"], np.nan)
        eff = running & ok & (res["p_benefit"] > interim.efficacy)
        fut = running & ok & ~eff & (res["ppos"] < interim.futility)
        stop = eff | fut
        stop_look[stop] = k
        stop_eff |= eff
        enrolled[stop] = float(min(n, (entry <= week + 1e-9).sum()))
        duration[stop] = week
        for key in ("post_mean", "post_sd", "p_benefit", "p_mcid", "width", "estimate", "se", "df", "ok", "completers"):
            out[key] = np.where(stop, res[key], out[key])
        out["success"] = np.where(stop, eff, out["success"])
    out.update(stop_look=stop_look, stop_efficacy=stop_eff, stop_futility=(stop_look > 0) & ~stop_eff, enrolled=enrolled, duration=duration, ppos=pp)
    return out
