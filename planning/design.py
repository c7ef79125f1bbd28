"""What a planning run simulates and how it decides, as settings: the candidate design
(`PlannedTrial`: arm sizes, allocation, visit schedule, dropout by visit and arm and its mechanism, entry
screening, enrichment, sites), where the NAC effect comes from (`Scenario`), the analysis and its decision
rule (`AnalysisSettings`), the interim looks (`InterimSettings`, with the accrual rate and the calendar
week of the final analysis they imply), and the container of S simulated trials of one design
(`SimulatedTrials`).

planning/simulate.py draws the trials, planning/analysis.py analyses them, planning/interim.py runs the
interim looks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .params import PlanningError

DROPOUT_MECHANISMS = ("mcar", "mar", "mnar")
ANALYSES = ("mmrm", "ancova")
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
    """Participants enrolled per week (planning/interim.py): `accrual_per_week`, by default n_total / primary week."""
    return interim.accrual_per_week if interim.accrual_per_week is not None else trial.n_total / trial.primary_week


def final_week(trial: PlannedTrial, interim: InterimSettings) -> float:
    """Calendar week of the final analysis: the last participant's entry plus the last scheduled visit."""
    return (trial.n_total - 1) / accrual_rate(trial, interim) + max(trial.weeks)
