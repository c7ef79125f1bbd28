"""Simulate future trials from a parameter set and analyse each one fast.

Simulation (vectorised over S trials of one design): each simulated trial takes one parameter draw,
enrols n_control + n_treatment new participants (baseline biomarkers from the fitted marker
distribution, truncated above the enrichment threshold when the design enriches), draws their
participant effects and their scores at baseline and at the primary week from the model, rounds and
clips scores to the outcome scale, and drops participants out completely at random with the design's
rate by the primary week.

Analysis (the fast default, no MCMC): ANCOVA of change from baseline at the primary week on arm and
baseline score among completers, the trial statistician's usual primary analysis of a parallel-arm
trial, turned into a posterior for the NAC - placebo effect with a Normal(0, prior_sd) prior:
    precision = 1/se^2 + 1/prior_sd^2,  mean = (estimate/se^2)/precision,  sd = precision^-1/2,
with Student-t tails on n - 3 degrees of freedom for the estimated residual SD (the marginal posterior
under flat priors on the other coefficients and log sigma). Decision: success if P(effect < 0) >
threshold, and with the dual criterion also P(effect < -MCID) > mcid_prob. `planning.mcmc_check`
shows these decisions agree with full MCMC of the same model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

from .params import ParameterSet, PlanningError


@dataclass(frozen=True)
class PlannedTrial:
    """One candidate design."""

    n_control: int
    allocation: float = 1.0  # NAC participants per placebo participant
    primary_week: float = 12.0
    weeks: tuple[int, ...] = (0, 2, 4, 6, 8, 12)
    dropout: float = 0.2  # fraction lost by the primary week (completely at random)
    enrich_marker: str | None = None
    enrich_threshold: float | None = None  # natural units: enrol only if baseline marker > threshold

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

    def validate(self, params: ParameterSet) -> None:
        if self.n_control < 2 or self.n_treatment < 2:
            raise PlanningError(f"each arm needs at least 2 participants (got {self.n_control} placebo, {self.n_treatment} NAC)")
        if not self.allocation > 0:
            raise PlanningError(f"allocation ratio must be positive, got {self.allocation}")
        if not 0 <= self.dropout < 1:
            raise PlanningError(f"dropout must be in [0, 1), got {self.dropout}")
        weeks = sorted(self.weeks)
        if not weeks or weeks[0] != 0:
            raise PlanningError(f"the visit schedule must start at week 0 (baseline), got {list(self.weeks)}")
        if self.primary_week not in weeks or self.primary_week <= 0:
            raise PlanningError(f"the primary week {self.primary_week:g} must be a post-baseline week of the schedule {weeks}")
        if self.primary_week > params.scale.last_week:
            raise PlanningError(
                f"the primary week {self.primary_week:g} lies beyond the fitted trial's last week {params.scale.last_week:g}; "
                "the model cannot extrapolate trajectories past the data"
            )
        if self.enrich_marker is not None:
            params.z_threshold(self.enrich_marker, float(self.enrich_threshold))


@dataclass(frozen=True)
class Scenario:
    """Where the NAC effect comes from: the parameter draws (assurance) or a fixed value (power, type I error)."""

    kind: str  # "assurance" or "fixed"
    effect: float | None = None

    @property
    def label(self) -> str:
        return "assurance" if self.kind == "assurance" else f"effect={self.effect:g}"


@dataclass(frozen=True)
class AnalysisSettings:
    threshold: float = 0.975  # success if P(effect < 0) > threshold
    mcid: float = 2.0
    dual: bool = False  # also require P(effect < -mcid) > mcid_prob
    mcid_prob: float = 0.5
    prior_sd: float = 6.0  # Normal(0, prior_sd) analysis prior on the effect (the headline model's nac_change prior)
    interval: float = 0.95  # central posterior interval whose width is reported

    def validate(self) -> None:
        if not 0.5 <= self.threshold < 1:
            raise PlanningError(f"--threshold must be in [0.5, 1), got {self.threshold}")
        if not 0 < self.mcid_prob < 1:
            raise PlanningError(f"the MCID probability must be in (0, 1), got {self.mcid_prob}")
        if not self.prior_sd > 0:
            raise PlanningError(f"the analysis prior SD must be positive, got {self.prior_sd}")
        if self.mcid < 0:
            raise PlanningError(f"--mcid must be >= 0, got {self.mcid}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SimulatedTrials:
    """S simulated trials of one design: baseline and primary-week scores, completion, arm."""

    y0: np.ndarray  # (S, N)
    yp: np.ndarray  # (S, N)
    completed: np.ndarray  # (S, N) bool
    treated: np.ndarray  # (N,) 0/1
    true_effect: np.ndarray  # (S,) mean NAC - placebo effect at the primary week in the enrolled population
    eligible: np.ndarray  # (S,) fraction of screened people eligible (1 without enrichment)


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


def simulate_trials(
    params: ParameterSet,
    trial: PlannedTrial,
    scenario: Scenario,
    n_sims: int,
    rng: np.random.Generator,
    effect_scale: float = 1.0,
    round_scores: bool = True,
) -> SimulatedTrials:
    s = int(n_sims)
    nc, nt = trial.n_control, trial.n_treatment
    n = nc + nt
    treated = np.concatenate([np.zeros(nc), np.ones(nt)])
    idx = rng.integers(params.n_draws, size=s)
    t1, t2 = params.scale.t_codes(trial.primary_week)
    q = 4 * t1 * (1 - t1)  # curved models' basis

    z, eligible = _markers(params, idx, n, trial, rng)
    tau = params.participant_sd[idx]
    rho = params.participant_corr[idx]
    e = rng.standard_normal((s, n, 2))
    b0 = tau[:, 0:1] * e[:, :, 0]
    b1 = tau[:, 1:2] * (rho[:, None] * e[:, :, 0] + np.sqrt(1 - rho[:, None] ** 2) * e[:, :, 1])

    if scenario.kind == "assurance":
        if params.effect_prior is not None:
            mean, sd = params.effect_prior
            effect = (mean + sd * rng.standard_normal(s)) * effect_scale
            d1, d2, k1 = effect / t1, np.zeros(s), np.zeros(s)
        else:
            d1 = params.nac_change[idx, 0] * effect_scale
            d2 = params.nac_change[idx, 1] * effect_scale
            k1 = params.nac_curvature[idx] * effect_scale
        eta = params.nac_moderation[idx] * effect_scale
    elif scenario.kind == "fixed":
        d1, d2, k1 = np.full(s, float(scenario.effect) / t1), np.zeros(s), np.zeros(s)
        eta = np.zeros_like(params.nac_moderation[idx])
    else:
        raise PlanningError(f"unknown scenario kind '{scenario.kind}'")

    coef = np.stack([params.prognostic[idx], params.moderation[idx], eta], axis=2)  # (S, K, 3)
    prog, modr, nac_mod = np.moveaxis(z @ coef, 2, 0)
    level = params.intercept[idx][:, None] + b0 + prog
    change = (params.time_change[idx, 0][:, None] + d1[:, None] * treated + modr + treated * nac_mod + b1) * t1
    change = change + (params.time_change[idx, 1][:, None] + d2[:, None] * treated) * t2
    change = change + (params.time_curvature[idx][:, None] + k1[:, None] * treated) * q
    sigma = params.residual_sd[idx][:, None]
    eps = rng.standard_normal((s, n, 2))
    y0 = level + sigma * eps[:, :, 0]
    yp = level + change + sigma * eps[:, :, 1]
    sc = params.scale
    if round_scores and sc.integer_scores:
        y0, yp = np.round(y0), np.round(yp)
    if round_scores and sc.score_min is not None and sc.score_max is not None:
        y0, yp = np.clip(y0, sc.score_min, sc.score_max), np.clip(yp, sc.score_min, sc.score_max)
    completed = rng.uniform(size=(s, n)) >= trial.dropout
    true_effect = d1 * t1 + d2 * t2 + k1 * q + t1 * nac_mod[:, nc:].mean(axis=1)
    return SimulatedTrials(y0=y0, yp=yp, completed=completed, treated=treated, true_effect=true_effect, eligible=eligible)


def ancova(sim: SimulatedTrials) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trial: ANCOVA estimate of the NAC - placebo difference in change, its SE and residual df.

    change = a + effect * T + b * (baseline - mean baseline) + e, fitted by least squares among completers.
    Trials with fewer than 2 completers in an arm, or a singular design (all baselines equal, say),
    get se = inf: no information, the decision fails.
    """
    w = sim.completed.astype(float)
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


def posterior_decisions(est: np.ndarray, se: np.ndarray, df: np.ndarray, analysis: AnalysisSettings) -> dict[str, np.ndarray]:
    """Normal-prior update of the ANCOVA estimate, t tails; the decision rule per trial."""
    prec = 1.0 / se**2 + 1.0 / analysis.prior_sd**2
    mean = (est / se**2) / prec
    sd = 1.0 / np.sqrt(prec)
    p_benefit = special.stdtr(df, -mean / sd)
    p_mcid = special.stdtr(df, (-analysis.mcid - mean) / sd)
    success = p_benefit > analysis.threshold
    if analysis.dual:
        success &= p_mcid > analysis.mcid_prob
    q = special.stdtrit(df, 0.5 + analysis.interval / 2)
    return {"post_mean": mean, "post_sd": sd, "p_benefit": p_benefit, "p_mcid": p_mcid, "success": success, "width": 2 * q * sd}


def analyse(sim: SimulatedTrials, analysis: AnalysisSettings) -> dict[str, np.ndarray]:
    est, se, df = ancova(sim)
    out = posterior_decisions(est, se, df, analysis)
    out.update(estimate=est, se=se, df=df, completers=sim.completed.sum(axis=1), true_effect=sim.true_effect, eligible=sim.eligible)
    return out
