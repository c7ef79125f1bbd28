"""Synthetic trials calibrated to the published NAC trial (Berk et al. 2014; Hasebe et al. 2017).

The generator writes a dataset folder in exactly the documented schema plus `truth.json`,
the parameter values it used, so every model can be checked against a known truth. Every
figure below is an overridable parameter; values marked 'assumed' have no published source.

Generative model (weeks w; E = end of treatment; F = last follow-up week):
    t1 = min(w, E) / E                      treatment-phase time (0 at baseline, 1 at E)
    t2 = max(w - E, 0) / (F - E)            follow-up time (0 until E, 1 at F)
    z_i  = standardised baseline log biomarkers of participant i
    y_iw = a_i + site_s + prognostic.z_i
           + (placebo_change_e + nac_effect_e * T_i + moderation.z_i + b_i + mediation.d_i) * g(t1)
           + (placebo_change_f + (nac_effect_f - nac_effect_e) * T_i) * t2 + e_iw
with d_i = log marker at week E - log marker at baseline (natural logs; NAC shifts the week-E
log marker by nac_marker_log_ratio, so the indirect effect is nac_marker_log_ratio.mediation),
(a_i, b_i) correlated participant effects, e_iw ~ N(0, residual_sd), g the time course
(linear, or concave with `curvature` > 0). Scores are rounded and clipped to the scale.
Only participants with a baseline score >= `entry_min` are enrolled (screening).

Dropout is monotone after baseline. Before each post-baseline visit j a participant still in the
trial leaves with probability logistic(a + dropout_score_effect (s_i - mean s) / 5), with a set so
that about `dropout_by_last_week` have left by the last visit at the average score, and s_i
- `dropout_mechanism = "mar"` (default): y_i,j-1, the last score, which was observed (missing at random);
- `"mnar"`: y_ij, the score at the visit being missed, never observed (missing not at random);
- `"mnar_treatment"`: y_ij in the treatment arm, y_i,j-1 in the control arm (e.g. leaving for lack of
  efficacy on the drug).
The complete scores before any deletion are kept in `SyntheticTrial.complete` (not written).

Treatment discontinuation and retrieved dropouts (`discontinuation_by_end` > 0): before each treatment-phase visit
(after baseline, up to the end of treatment E) a participant still on treatment stops the randomised treatment with a
constant probability, so that `discontinuation_by_end` have stopped by E; stopping does not depend on the scores. From
the first visit after stopping, the participant's mean loses the arm's (direct) effect and moves by
`off_treatment_shift` points: the active arm's course becomes the control arm's, in every arm plus the shift. A share
`retrieved_fraction` of those who stop keep attending their visits (retrieved dropouts; later dropout as above); the
others leave the trial at stopping. visits.csv then has the column off_treatment (1 from the first visit after
stopping, also on empty-score rows of the visits missed after stopping), and truth.json the treatment-policy effect
(every randomised participant's expected change whatever happened to treatment) of each active arm by week: the mean
change of TRUTH_DRAWS participants' complete scores, clipped and rounded to the scale as the trial's, at a fixed seed
(`treatment_policy_truth`). Without the scale's bounds it would be effect_w (1 - pi_w), pi_w the share stopped by w
(`TrialParameters.treatment_policy_effect`; the shift, the same in every arm, cancels); the clipping at the scale's
floor moves it by about a tenth of a point when the active arm's mean change is large.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from .atomic import atomic_folder
from .meta import DatasetMeta

MARKERS = ("il6", "crp", "bdnf")
DROPOUT_MECHANISMS = ("mar", "mnar", "mnar_treatment")


@dataclass(frozen=True)
class TrialParameters:
    """Every figure of the synthetic trial; defaults follow the published trial (see DOMAIN notes)."""

    seed: int = 20140628
    n_participants: int = 252  # analysed participants (Berk 2014)
    treatment_fraction: float = 0.5  # 1:1 randomisation
    sites: tuple[str, ...] = ("barwon", "melbourne", "sydney", "brisbane")  # assumed site labels
    site_weights: tuple[float, ...] = (0.35, 0.30, 0.20, 0.15)  # assumed
    site_sd: float = 1.5  # assumed SD of site offsets, MADRS points
    weeks: tuple[int, ...] = (0, 2, 4, 6, 8, 12, 16)  # assumed visit schedule
    treatment_end: int = 12
    entry_min: float = 18.0  # MADRS >= 18 at entry
    baseline_mean: float = 27.0  # latent mean before screening: screened mean ~ 28
    baseline_sd: float = 6.8  # latent SD before screening: screened SD ~ 5.8
    residual_sd: float = 3.0  # visit-to-visit noise (assumed)
    slope_sd: float = 6.0  # SD of individual change by week 12 (assumed)
    intercept_slope_corr: float = -0.2  # higher baseline, larger drop (assumed)
    placebo_change_e: float = -11.0  # placebo change by end of treatment (assumed 10-12)
    placebo_change_f: float = -0.5  # further placebo change, end of treatment -> last follow-up
    nac_effect_e: float = -1.5  # NAC - placebo at week 12 (Berk 2014: ~1-1.5, ns)
    nac_effect_f: float = -3.0  # NAC - placebo at week 16
    curvature: float = 0.0  # 0 = linear in the treatment phase; > 0 concave (early response)
    # Biomarkers (log scale): medians in natural units, SDs of the log, correlations
    marker_units: tuple[tuple[str, str], ...] = (("il6", "pg/mL"), ("crp", "mg/L"), ("bdnf", "ng/mL"))
    marker_median: tuple[float, ...] = (2.0, 2.0, 25.0)  # assumed typical serum values
    marker_log_sd: tuple[float, ...] = (0.7, 1.0, 0.3)  # assumed
    marker_corr: tuple[tuple[float, ...], ...] = ((1.0, 0.4, -0.1), (0.4, 1.0, -0.1), (-0.1, -0.1, 1.0))
    marker_stability: float = 0.6  # baseline-week 12 correlation on the log scale (0.5-0.7)
    nac_marker_log_ratio: tuple[float, ...] = (0.0, 0.0, 0.0)  # NAC effect on week-12 log marker
    prognostic: tuple[float, ...] = (0.0, 0.0, 0.0)  # baseline MADRS points per SD of log marker
    moderation: tuple[float, ...] = (-1.5, 0.0, 0.0)  # change by week 12 per SD of log marker (IL-6: larger drop)
    nac_moderation: tuple[float, ...] = (0.0, 0.0, 0.0)  # extra NAC effect by week 12 per SD of log marker
    mediation: tuple[float, ...] = (0.0, 0.0, 0.0)  # MADRS points at E and after per unit change in log marker (baseline -> week 12)
    serum_fraction: float = 0.6  # share of participants in the biomarker sub-study (assumed)
    week12_sample_missing: float = 0.1  # extra missed week-12 samples among completers (assumed)
    detection_limits: tuple[tuple[str, float], ...] = (("il6", 0.7),)  # IL-6 assay limit (assumed)
    dropout_by_last_week: float = 0.25  # monotone dropout by the last visit (20-30%)
    dropout_score_effect: float = 0.3  # log-odds of dropping out per 5 points of the score it depends on
    dropout_mechanism: str = "mar"  # on the last observed score ("mar"), the missed visit's ("mnar"), or that in the treatment arm only
    intermittent_missing: float = 0.03  # missed single visits among those still in the trial
    outcome: str = "madrs"
    outcome_label: str = "MADRS"
    score_min: float = 0.0
    score_max: float = 60.0
    control_arm: str = "placebo"
    treatment_arm: str = "nac"  # the first active arm, with effects nac_effect_e and nac_effect_f
    # Further active arms of a multi-arm trial: (label, effect vs control at E, effect at F) each. The biomarker terms
    # (nac_marker_log_ratio, nac_moderation) apply to every active arm. Empty: a two-arm trial.
    more_arms: tuple[tuple[str, float, float], ...] = ()
    allocation: tuple[float, ...] = ()  # multi-arm: randomisation weights (control, then each active arm); empty: equal
    doses: tuple[tuple[str, float], ...] = ()  # [arms.dose] of dataset.toml: (arm, dose) for every arm, or empty
    # Treatment discontinuation (module docstring): share stopped by the end of treatment (0: nobody stops, no off_treatment
    # column), share of them who keep attending, and the off-treatment shift from the control arm's course (points)
    discontinuation_by_end: float = 0.0
    retrieved_fraction: float = 0.5
    off_treatment_shift: float = 0.0

    def with_(self, **changes) -> "TrialParameters":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field; the discontinuation fields only for a trial with discontinuation (discontinuation_by_end > 0)."""
        out = json.loads(json.dumps(asdict(self)))
        if not self.discontinuation_by_end:
            for key in ("discontinuation_by_end", "retrieved_fraction", "off_treatment_shift"):
                out.pop(key)
        return out

    @property
    def active_arms(self) -> tuple[str, ...]:
        return (self.treatment_arm, *(a for a, _, _ in self.more_arms))

    def arm_effects(self) -> list[tuple[float, float]]:
        """(effect vs control at E, at F) of each active arm, in order."""
        return [(self.nac_effect_e, self.nac_effect_f), *((float(e), float(f)) for _, e, f in self.more_arms)]

    def effect_at(self, week: float, arm: int = 0) -> float:
        """True mean difference of active arm `arm` (0: treatment_arm) from control at a week (nac_effect_at's rule)."""
        e_eff, f_eff = self.arm_effects()[arm]
        return self.with_(nac_effect_e=e_eff, nac_effect_f=f_eff, more_arms=()).nac_effect_at(week)

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.marker_units)

    def nac_indirect_effects(self) -> tuple[float, ...]:
        """True natural indirect effect of NAC through each marker at the end of treatment (outcome points):
        the NAC shift of the week-12 log marker times the outcome change per unit change of the log marker."""
        return tuple(float(a * b) for a, b in zip(self.nac_marker_log_ratio, self.mediation))

    def nac_effect_at(self, week: float) -> float:
        """True NAC - placebo mean difference at a scheduled week (at the mean biomarker level).

        This is the total effect: the direct part (nac_effect_e, nac_effect_f) plus the part carried
        by the biomarkers (nac_indirect_effects), which, like the direct part, builds up over the
        treatment phase and persists into follow-up."""
        e, f = self.treatment_end, max(self.weeks)
        t1 = self._g(min(week, e) / e)
        t2 = max(week - e, 0) / (f - e) if f > e else 0.0
        effect = self.nac_effect_e * t1 + (self.nac_effect_f - self.nac_effect_e) * t2
        indirect = sum(self.nac_indirect_effects())
        return effect + indirect * t1 if indirect else effect

    def stopped_share(self, week: float) -> float:
        """Share of participants who have stopped the randomised treatment by a scheduled week (module docstring)."""
        weeks = np.asarray(self.weeks, dtype=float)
        chances = int(((weeks > weeks[0]) & (weeks <= min(week, self.treatment_end))).sum())
        return 1.0 - (1.0 - self._stop_hazard()) ** chances

    def _stop_hazard(self) -> float:
        k = int(((np.asarray(self.weeks) > self.weeks[0]) & (np.asarray(self.weeks) <= self.treatment_end)).sum())
        return 1.0 - (1.0 - self.discontinuation_by_end) ** (1.0 / k)

    def treatment_policy_effect(self, week: float, arm: int = 0) -> float:
        """Treatment-policy difference of active arm `arm` from control at a week without the scale's bounds: the arm's effect
        kept by those on treatment, lost by those who stopped (the off-treatment shift is the same in every arm). truth.json
        has the exact one, of the clipped scores (`treatment_policy_truth`)."""
        return self.effect_at(week, arm) * (1.0 - self.stopped_share(week))

    def _g(self, t):
        c = self.curvature
        t = np.asarray(t, dtype=float)
        return t if c == 0 else (1 - np.exp(-c * t)) / (1 - np.exp(-c))

    def meta(self) -> DatasetMeta:
        return DatasetMeta(
            outcome=self.outcome,
            outcome_label=self.outcome_label,
            score_min=self.score_min,
            score_max=self.score_max,
            integer_scores=True,
            control_arm=self.control_arm,
            treatment_arms=self.active_arms,
            doses=dict(self.doses),
            weeks=tuple(self.weeks),
            treatment_end=self.treatment_end,
            biomarker_weeks=(0, self.treatment_end),
            marker_units=dict(self.marker_units),
            detection_limits=dict(self.detection_limits),
            title=(f"Synthetic NAC trial (seed {self.seed})" if not self.more_arms
                   else f"Synthetic {2 + len(self.more_arms)}-arm trial (seed {self.seed})"),
        )


@dataclass
class SyntheticTrial:
    """A simulated trial as the three CSV tables plus its truth."""

    participants: pd.DataFrame
    visits: pd.DataFrame
    biomarkers: pd.DataFrame
    params: TrialParameters
    truth: dict = field(default_factory=dict)
    complete: pd.DataFrame | None = None  # every participant's score at every scheduled week before dropout and misses (not written)

    def write(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the dataset folder atomically (a temporary folder renamed into place)."""
        with atomic_folder(folder, overwrite=overwrite) as tmp:
            (tmp / "dataset.toml").write_text(self.params.meta().to_toml(), encoding="utf-8")
            self.participants.to_csv(tmp / "participants.csv", index=False, lineterminator="\n")
            self.visits.to_csv(tmp / "visits.csv", index=False, lineterminator="\n")
            if len(self.biomarkers):
                self.biomarkers.to_csv(tmp / "biomarkers.csv", index=False, lineterminator="\n", float_format="%.4g")
            (tmp / "truth.json").write_text(json.dumps(self.truth, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return Path(folder)


def _dropout_intercept(p: TrialParameters) -> float:
    """Per-visit dropout log-odds giving `dropout_by_last_week` overall at the average score."""
    k = len(p.weeks) - 1
    per_visit = 1 - (1 - p.dropout_by_last_week) ** (1 / k)
    with np.errstate(divide="ignore"):  # no dropout: -inf, nobody leaves
        return float(np.log(per_visit / (1 - per_visit)))


def _complete_scores(p: TrialParameters, rng: np.random.Generator, rng_stop: np.random.Generator, n: int,
                     screen: int = 4) -> SimpleNamespace:
    """Every participant's score at every scheduled week before any visit is missed (the generative model of the module
    docstring, screening included, `screen` x n candidates at a time), with what the rest of the simulation needs;
    `rng_stop` draws the discontinuation."""
    weeks = np.asarray(p.weeks, dtype=float)
    e, f = float(p.treatment_end), float(weeks.max())
    t1 = p._g(np.minimum(weeks, e) / e)
    t2 = np.maximum(weeks - e, 0) / (f - e) if f > e else np.zeros_like(weeks)
    markers = p.markers
    nm = len(markers)
    log_med = np.log(np.asarray(p.marker_median))
    log_sd = np.asarray(p.marker_log_sd)
    corr = np.asarray(p.marker_corr)

    # Screening: draw candidates until n meet the entry criterion on their (noisy) baseline score.
    site_offsets = rng.normal(0, p.site_sd, size=len(p.sites))
    site_offsets -= site_offsets.mean()
    rows = []
    n_screened = 0
    while sum(len(r[0]) for r in rows) < n:
        m = screen * n
        n_screened += m
        z = rng.multivariate_normal(np.zeros(nm), corr, size=m)
        cov_ab = np.array(
            [
                [p.baseline_sd**2 - p.residual_sd**2, p.intercept_slope_corr * np.sqrt(p.baseline_sd**2 - p.residual_sd**2) * p.slope_sd],
                [p.intercept_slope_corr * np.sqrt(p.baseline_sd**2 - p.residual_sd**2) * p.slope_sd, p.slope_sd**2],
            ]
        )
        ab = rng.multivariate_normal(np.zeros(2), cov_ab, size=m)
        site = rng.choice(len(p.sites), size=m, p=np.asarray(p.site_weights) / np.sum(p.site_weights))
        noise = rng.normal(0, p.residual_sd, size=(m, len(weeks)))
        latent = p.baseline_mean + ab[:, 0] + site_offsets[site] + z @ np.asarray(p.prognostic)
        keep = latent + noise[:, 0] >= p.entry_min
        rows.append((z[keep], ab[keep], site[keep], noise[keep]))
    z = np.concatenate([r[0] for r in rows])[:n]
    ab = np.concatenate([r[1] for r in rows])[:n]
    site = np.concatenate([r[2] for r in rows])[:n]
    noise = np.concatenate([r[3] for r in rows])[:n]
    arm_index = np.zeros(n, dtype=int)  # 0 control, a the a-th active arm
    if not p.more_arms:
        arm_index[rng.permutation(n)[: int(round(p.treatment_fraction * n))]] = 1
    else:
        weights = np.asarray(p.allocation or (1.0,) * (2 + len(p.more_arms)), dtype=float)
        if len(weights) != 2 + len(p.more_arms) or (weights <= 0).any():
            raise ValueError(f"allocation needs a positive weight for control and each of the {1 + len(p.more_arms)} active arms")
        counts = np.floor(n * weights / weights.sum()).astype(int)
        counts[: n - counts.sum()] += 1
        arm_index[rng.permutation(n)] = np.repeat(np.arange(len(weights)), counts)
    treated = (arm_index > 0).astype(int)
    effects = np.array([(0.0, 0.0), *p.arm_effects()])
    effect_e, effect_f = effects[arm_index, 0], effects[arm_index, 1]

    # Biomarkers: baseline log values, week-12 values correlated with baseline, NAC effect optional.
    log0 = log_med + z * log_sd
    stab = p.marker_stability
    z12 = stab * z + np.sqrt(1 - stab**2) * rng.multivariate_normal(np.zeros(nm), corr, size=n)
    log12 = log_med + z12 * log_sd + treated[:, None] * np.asarray(p.nac_marker_log_ratio)
    change = log12 - log0

    slope_e = (
        p.placebo_change_e
        + treated * (effect_e + z @ np.asarray(p.nac_moderation))
        + z @ np.asarray(p.moderation)
        + ab[:, 1]
        + change @ np.asarray(p.mediation)
    )
    slope_f = p.placebo_change_f + treated * (effect_f - effect_e)
    mean = (
        p.baseline_mean + ab[:, 0] + site_offsets[site] + z @ np.asarray(p.prognostic)
    )[:, None] + slope_e[:, None] * t1[None, :] + slope_f[:, None] * t2[None, :]
    # Treatment discontinuation (module docstring), from its own stream so that trials without it are unchanged
    stopped = np.zeros((n, len(weeks)), dtype=bool)
    retrieved = np.zeros(n, dtype=bool)
    if p.discontinuation_by_end > 0:
        phase = (weeks > weeks[0]) & (weeks <= e)
        for j in range(1, len(weeks)):
            stopped[:, j] = stopped[:, j - 1] | (phase[j] & (rng_stop.random(n) < p._stop_hazard()))
        retrieved = rng_stop.random(n) < p.retrieved_fraction
        direct = effect_e[:, None] * t1[None, :] + (effect_f - effect_e)[:, None] * t2[None, :]
        mean = mean + np.where(stopped, p.off_treatment_shift - direct, 0.0)
    y = np.clip(np.round(mean + noise), p.score_min, p.score_max)
    return SimpleNamespace(weeks=weeks, e=e, markers=markers, log_med=log_med, log_sd=log_sd, site_offsets=site_offsets,
                           n_screened=n_screened, site=site, arm_index=arm_index, treated=treated, log0=log0, log12=log12, y=y,
                           stopped=stopped, retrieved=retrieved)


TRUTH_DRAWS = 1_000_000  # participants simulated for the treatment-policy truth
TRUTH_SEED = 20260228


@lru_cache(maxsize=8)
def _policy_truth(p: TrialParameters) -> dict[str, dict[str, float]]:
    """Per active arm and week, the treatment-policy difference from control in mean change: TRUTH_DRAWS participants'
    complete scores (clipped and rounded to the scale as the trial's) at a fixed seed, in chunks; MC SE about 0.01-0.02."""
    chunk = 200_000
    sums = counts = 0
    for k in range(TRUTH_DRAWS // chunk):
        c = _complete_scores(p, np.random.default_rng([TRUTH_SEED, k]), np.random.default_rng([TRUTH_SEED, k, 28]), chunk, screen=2)
        change = c.y - c.y[:, :1]
        arms = np.arange(1 + len(p.active_arms))
        sums = sums + np.stack([change[c.arm_index == a].sum(axis=0) for a in arms])
        counts = counts + np.array([(c.arm_index == a).sum() for a in arms])[:, None]
    mean = sums / counts
    return {arm: {str(int(w)): float(mean[a + 1, j] - mean[0, j]) for j, w in enumerate(p.weeks)} for a, arm in enumerate(p.active_arms)}


def treatment_policy_truth(p: TrialParameters) -> dict[str, dict[str, float]]:
    """The treatment-policy effect of each active arm by week (truth.json): of the complete scores, so whatever the trial's
    seed and size, who keeps attending, dropout and biomarker sampling (computed once per process for the rest)."""
    d = TrialParameters()
    return _policy_truth(p.with_(seed=0, n_participants=0, retrieved_fraction=d.retrieved_fraction, serum_fraction=d.serum_fraction,
                                 week12_sample_missing=d.week12_sample_missing, dropout_by_last_week=d.dropout_by_last_week,
                                 dropout_score_effect=d.dropout_score_effect, dropout_mechanism=d.dropout_mechanism,
                                 intermittent_missing=d.intermittent_missing))


def simulate_trial(params: TrialParameters | None = None, policy_truth: bool = True, **overrides) -> SyntheticTrial:
    """Simulate one trial. Deterministic given params.seed. policy_truth=False: a trial with discontinuation without the
    treatment-policy effect in truth.json (a Monte Carlo of TRUTH_DRAWS participants: seconds)."""
    p = (params or TrialParameters()).with_(**overrides) if overrides else (params or TrialParameters())
    if p.dropout_mechanism not in DROPOUT_MECHANISMS:
        raise ValueError(f"unknown dropout_mechanism '{p.dropout_mechanism}'; choose one of {', '.join(DROPOUT_MECHANISMS)}")
    rng = np.random.default_rng(p.seed)
    n = p.n_participants
    c = _complete_scores(p, rng, np.random.default_rng([p.seed, 28]), n)
    weeks, e, markers, log_med, log_sd, site_offsets = c.weeks, c.e, c.markers, c.log_med, c.log_sd, c.site_offsets
    site, arm_index, treated, log0, log12, y = c.site, c.arm_index, c.treated, c.log0, c.log12, c.y
    n_screened, stopped, retrieved = c.n_screened, c.stopped, c.retrieved

    # Monotone dropout after baseline, driven by the last observed score (MAR) or by the score of the
    # visit being missed (MNAR, in both arms or the treatment arm only); rare intermittent misses.
    a = _dropout_intercept(p)
    observed = np.ones_like(y, dtype=bool)
    active = np.ones(n, dtype=bool)
    by_current = {"mar": np.zeros(n, dtype=bool), "mnar": np.ones(n, dtype=bool), "mnar_treatment": treated == 1}[p.dropout_mechanism]
    for j in range(1, len(weeks)):
        score = np.where(by_current, y[:, j], y[:, j - 1])
        logit = a + p.dropout_score_effect * (score - score.mean()) / 5
        drop = active & (rng.random(n) < 1 / (1 + np.exp(-logit)))
        active &= ~drop
        observed[:, j] = active
    intermittent = (rng.random(y.shape) < p.intermittent_missing) & observed
    intermittent[:, 0] = False
    intermittent[:, -1] = False  # a final visit, when attended, is recorded
    observed &= ~intermittent
    observed &= ~(stopped & ~retrieved[:, None])  # those who stop and are not retrieved leave the trial
    last_seen = np.array([weeks[np.flatnonzero(o)[-1]] for o in observed])

    ids = np.array([f"P{i + 1:04d}" for i in range(n)])
    participants = pd.DataFrame(
        {
            "participant_id": ids,
            "arm": np.asarray([p.control_arm, *p.active_arms])[arm_index],
            "site": np.asarray(p.sites)[site],
            "age": np.clip(np.round(rng.normal(48, 12, n)), 18, 80).astype(int),
            "sex": np.where(rng.random(n) < 0.8, "F", "M"),
        }
    )
    if p.discontinuation_by_end > 0:  # every attended visit with its flag, and the visits missed after stopping (empty score)
        ii, jj = np.nonzero(observed | stopped)
        score = pd.array(np.where(observed[ii, jj], y[ii, jj], np.nan), dtype="Int64")
        visits = pd.DataFrame({"participant_id": ids[ii], "week": weeks[jj].astype(int), p.outcome: score,
                               "off_treatment": stopped[ii, jj].astype(int)})
    else:
        ii, jj = np.nonzero(observed)
        visits = pd.DataFrame({"participant_id": ids[ii], "week": weeks[jj].astype(int), p.outcome: y[ii, jj].astype(int)})

    # Serum sub-study: a subset at baseline; week 12 only if still in the trial at week 12.
    serum = rng.random(n) < p.serum_fraction
    at12 = serum & (last_seen >= e) & (rng.random(n) >= p.week12_sample_missing)
    lods = dict(p.detection_limits)
    bio_rows = []
    for week, take, logv in ((0, serum, log0), (p.treatment_end, at12, log12)):
        for k, mk in enumerate(markers):
            values = np.exp(logv[take, k])
            lod = lods.get(mk)
            below = values < lod if lod else np.zeros(len(values), dtype=bool)
            bio_rows.append(
                pd.DataFrame(
                    {
                        "participant_id": ids[take],
                        "week": week,
                        "marker": mk,
                        "value": np.where(below, lod if lod else 0.0, values),
                        "below_lod": below.astype(int),
                    }
                )
            )
    biomarkers = pd.concat(bio_rows, ignore_index=True).sort_values(["participant_id", "week", "marker"], kind="stable")

    truth = {
        "params": p.to_dict(),
        "nac_effect_by_week": {str(int(w)): p.nac_effect_at(w) for w in weeks},
        **({"effect_by_arm_week": {arm: {str(int(w)): p.effect_at(w, a) for w in weeks} for a, arm in enumerate(p.active_arms)}}
           if p.more_arms else {}),
        "site_offsets": dict(zip(p.sites, site_offsets.round(6).tolist())),
        "marker_log_mean": dict(zip(markers, log_med.tolist())),
        "marker_log_sd": dict(zip(markers, log_sd.tolist())),
        "n_screened": int(n_screened),
        "n_enrolled": int(n),
        "dropout_by_last_week": float(1 - observed[:, -1].mean()),
        "dropout_mechanism": p.dropout_mechanism,
        **({"treatment_policy_effect_by_week": treatment_policy_truth(p)[p.treatment_arm]}
           if p.discontinuation_by_end > 0 and policy_truth else {}),
        **({"stopped_share_by_week": {str(int(w)): p.stopped_share(w) for w in weeks},
            "n_stopped": int(stopped[:, -1].sum()), "n_retrieved_visits": int((stopped & observed).sum())}
           if p.discontinuation_by_end > 0 else {}),
        **({"treatment_policy_by_arm_week": treatment_policy_truth(p)}
           if p.discontinuation_by_end > 0 and p.more_arms and policy_truth else {}),
        "n_below_lod": int(sum(int(b["below_lod"].sum()) for b in bio_rows)),
        "generator": "data.synthetic.simulate_trial",
    }
    every = np.tile(weeks.astype(int), n)
    complete = pd.DataFrame({"participant_id": np.repeat(ids, len(weeks)), "week": every, p.outcome: y.ravel().astype(int)})
    return SyntheticTrial(participants, visits, biomarkers.reset_index(drop=True), p, truth, complete)


def dose_trial_parameters(**overrides) -> TrialParameters:
    """The bundled three-arm example (data/dose/): placebo, a low and a high dose of the active drug, 1:1:1, 90 per arm,
    a dose-dependent effect (low -1.5 then -2.0 MADRS points at the end of treatment and the follow-up visit, high
    -3.0 then -3.5), biomarkers and dropout as in the default trial."""
    p = TrialParameters(seed=20261206, n_participants=270, treatment_arm="low", nac_effect_e=-1.5, nac_effect_f=-2.0,
                        more_arms=(("high", -3.0, -3.5),), doses=(("placebo", 0.0), ("low", 50.0), ("high", 100.0)))
    return p.with_(**overrides) if overrides else p


def main(argv=None) -> int:
    """Write a synthetic dataset folder: python -m data.synthetic OUT [--seed S] [--n N] [--dropout mar|mnar|mnar_treatment]
    [--discontinuation SHARE [--retrieved SHARE]]."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=TrialParameters.seed)
    ap.add_argument("--n", type=int, default=TrialParameters.n_participants, help="participants")
    ap.add_argument("--dropout", choices=DROPOUT_MECHANISMS, default=TrialParameters.dropout_mechanism,
                    help="what dropout depends on: the last observed score (mar) or the missed visit's (mnar, mnar_treatment)")
    ap.add_argument("--discontinuation", type=float, default=0.0, metavar="SHARE",
                    help="share who stop the randomised treatment by the end of treatment (off_treatment column; 0: none)")
    ap.add_argument("--retrieved", type=float, default=TrialParameters.retrieved_fraction, metavar="SHARE",
                    help="with --discontinuation: share of those who stop who keep attending (retrieved dropouts)")
    ap.add_argument("--force", action="store_true", help="replace an existing folder")
    ap.add_argument("--dose-example", action="store_true",
                    help="the three-arm dose trial of data/dose/ (placebo, low, high) instead of the two-arm NAC trial")
    args = ap.parse_args(argv)
    base = dose_trial_parameters() if args.dose_example else TrialParameters()
    changes = {k: v for k, v in (("seed", args.seed), ("n_participants", args.n), ("dropout_mechanism", args.dropout),
                                 ("discontinuation_by_end", args.discontinuation), ("retrieved_fraction", args.retrieved))
               if v != getattr(TrialParameters(), k)}
    trial = simulate_trial(base.with_(**changes))
    try:
        trial.write(args.out, overwrite=args.force)
    except FileExistsError as exc:
        print(f"error: {exc}")
        return 2
    print(f"wrote {args.out} ({len(trial.participants)} participants, {len(trial.visits)} visits)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
