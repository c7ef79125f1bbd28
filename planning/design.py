"""What a planning run simulates and how it decides, as settings: the candidate design
(`PlannedTrial`: its arms, arm sizes, allocation, visit schedule, dropout by visit and arm and its
mechanism, entry screening, enrichment, sites), where the active arms' effects come from (`Scenario`),
the analysis and its decision rule (`AnalysisSettings`, applied to each active arm against control),
the interim looks (`InterimSettings`, with the accrual rate and the calendar week of the final analysis
they imply), and the container of S simulated trials of one design (`SimulatedTrials`).

A design has K = A + 1 arms: the control arm (index 0, the reference of every comparison) and A active
arms (indices 1..A), named in `PlannedTrial.arms`, control first (None: the parameter set's arms, set by
`with_arms` when a plan runs). Participants are ordered by arm: the control arm's first, then each
active arm's.

planning/simulate.py draws the trials, planning/analysis.py analyses them, planning/interim.py runs the
interim looks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from maths.map_prior import NormalMixture

from .params import PlanningError

DROPOUT_MECHANISMS = ("mcar", "mar", "mnar")
ANALYSES = ("mmrm", "ancova")
MAX_DROPOUT = 0.99


@dataclass(frozen=True)
class PlannedTrial:
    """One candidate design."""

    n_control: int
    allocation: float | tuple[float, ...] = 1.0  # participants of each active arm per control participant: one ratio for all, or one per active arm
    primary_week: float = 12.0
    weeks: tuple[int, ...] = (0, 2, 4, 6, 8, 12)
    dropout: float | tuple[float, ...] = 0.2  # lost by the primary week: one rate, or one per arm (control first)
    dropout_mechanism: str = "mar"  # mcar, mar (last attended score), mnar (the missed visit's score)
    dropout_score_effect: float = 0.3  # log-odds of leaving per 5 outcome points (mar, mnar)
    dropout_shape: tuple[float, ...] | None = None  # per post-baseline week: cumulative dropout / dropout by the primary week
    dropout_source: str = "given"  # how the rates were chosen (stated in the table)
    entry_min: float | None = None  # enrol only if the baseline score is at least this
    enrich_marker: str | None = None
    enrich_threshold: float | None = None  # natural units: enrol only if baseline marker > threshold
    sites: int = 1  # participants of each arm spread evenly over this many new sites
    site_sd: float | None = None  # SD of the new sites' offsets; None: each parameter draw's own
    arms: tuple[str, ...] | None = None  # control first, then the active arms; None: the parameter set's

    @property
    def n_active(self) -> int:
        if self.arms is not None:
            return len(self.arms) - 1
        return len(self.allocation) if np.ndim(self.allocation) else 1

    @property
    def arm_labels(self) -> tuple[str, ...]:
        """The arms' names (generic ones until `with_arms` names them)."""
        if self.arms is not None:
            return tuple(self.arms)
        return ("control", *(f"active {a}" for a in range(1, self.n_active + 1)))

    def with_arms(self, params) -> PlannedTrial:
        """The design with the parameter set's arms when it names none."""
        return self if self.arms is not None else replace(self, arms=tuple(params.arms))

    @property
    def ratios(self) -> tuple[float, ...]:
        """Participants of each active arm per control participant."""
        a = self.allocation
        return (float(a),) * self.n_active if np.ndim(a) == 0 else tuple(float(x) for x in a)

    @property
    def arm_sizes(self) -> tuple[int, ...]:
        """Participants per arm, control first."""
        return (self.n_control, *(int(round(self.n_control * r)) for r in self.ratios))

    @property
    def n_treatment(self) -> int:
        """Participants in the active arms together (the active arm's, with one)."""
        return sum(self.arm_sizes[1:])

    @property
    def n_total(self) -> int:
        return self.n_control + self.n_treatment

    def arm_of(self) -> np.ndarray:
        """(N,) arm index of each participant: control first, then each active arm in order."""
        return np.repeat(np.arange(len(self.arm_sizes)), self.arm_sizes)

    def allocation_text(self) -> str:
        """'placebo:low:high 1:1:1'-style statement of the allocation (ratios relative to control)."""
        return ":".join(self.arm_labels) + " " + ":".join(f"{r:g}" for r in (1.0, *self.ratios))

    @property
    def population(self) -> str:
        if self.enrich_marker is None:
            return "all"
        return f"{self.enrich_marker}>{self.enrich_threshold:g}"

    @property
    def dropout_rates(self) -> tuple[float, ...]:
        """Loss by the primary week per arm, control first."""
        d = self.dropout
        k = self.n_active + 1
        if np.ndim(d) == 0:
            return (float(d),) * k
        d = tuple(float(x) for x in d)
        return d * k if len(d) == 1 else d

    def pooled_dropout_of(self, arms) -> float:
        """Loss by the primary week over the arms (indices) given, weighted by their sizes."""
        sizes, rates = self.arm_sizes, self.dropout_rates
        return sum(sizes[a] * rates[a] for a in arms) / sum(sizes[a] for a in arms)

    @property
    def pooled_dropout(self) -> float:
        return self.pooled_dropout_of(range(len(self.arms)))

    @property
    def post_weeks(self) -> tuple[int, ...]:
        return tuple(sorted(self.weeks))[1:]

    @property
    def primary_index(self) -> int:
        """Index of the primary week among the post-baseline visits."""
        return list(self.post_weeks).index(int(self.primary_week))

    def cumulative_dropout(self) -> np.ndarray:
        """(K, V): fraction of each arm (control first) lost by each post-baseline visit."""
        v, k = len(self.post_weeks), self.primary_index + 1
        out = np.zeros((self.n_active + 1, v))
        for a, rate in enumerate(self.dropout_rates):
            if self.dropout_shape is not None:
                out[a] = np.minimum(rate * np.asarray(self.dropout_shape, float), MAX_DROPOUT)
            else:  # the same hazard at every visit, reaching `rate` by the primary visit
                out[a] = 1 - (1 - rate) ** (np.arange(1, v + 1) / k)
        return np.maximum.accumulate(np.minimum(out, MAX_DROPOUT), axis=1)

    def validate(self, params) -> None:
        if self.arms is not None and tuple(self.arms) != tuple(params.arms):
            raise PlanningError(f"the design's arms {list(self.arms)} are not the parameter set's {list(params.arms)}")
        arms = tuple(params.arms)
        if self.n_active != len(arms) - 1:
            raise PlanningError(f"the design has {self.n_active} active arm(s); the parameter set's are {list(arms[1:])}")
        if np.ndim(self.allocation) and len(self.ratios) != self.n_active:
            raise PlanningError(f"the allocation gives {len(self.ratios)} ratio(s) for the {self.n_active} active arm(s) {list(arms[1:])}")
        if not all(r > 0 and np.isfinite(r) for r in self.ratios):
            raise PlanningError(f"allocation ratios must be positive, got {self.allocation}")
        if min(self.arm_sizes) < 2:
            sizes = ", ".join(f"{n} {a}" for n, a in zip(self.arm_sizes, arms))
            raise PlanningError(f"each arm needs at least 2 participants (got {sizes})")
        if np.ndim(self.dropout) and len(self.dropout) not in (1, len(arms)):
            raise PlanningError(f"give one dropout rate for every arm or one per arm ({', '.join(arms)}); got {len(self.dropout)}")
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
        if not (isinstance(self.sites, (int, np.integer)) and 1 <= self.sites <= min(self.arm_sizes)):
            raise PlanningError(f"--sites must be a whole number from 1 to the smallest arm's size ({min(self.arm_sizes)}), got {self.sites}")
        if self.site_sd is not None and not (np.isfinite(self.site_sd) and self.site_sd >= 0):
            raise PlanningError(f"--site-sd must be finite and >= 0, got {self.site_sd}")
        if self.entry_min is not None and not np.isfinite(self.entry_min):
            raise PlanningError(f"the entry criterion must be finite, got {self.entry_min}")
        if self.enrich_marker is not None:
            params.z_threshold(self.enrich_marker, float(self.enrich_threshold))


@dataclass(frozen=True)
class Scenario:
    """Where the active arms' effects come from: the parameter draws (assurance), fixed values (power,
    type I error: one effect for every active arm, or one per active arm), or the vague component of the
    robust design prior, Normal(0, sd) independently per arm."""

    kind: str  # "assurance", "fixed" or "vague"
    effect: float | tuple[float, ...] | None = None
    sd: float | None = None
    control_mean: float | None = None  # the control arm's true mean change at the primary week (None: the parameter draws')
    drift: float | None = None  # control_mean minus the MAP prior's mean (the label's and the table's)
    stream: int | None = None  # the chunks' seed stream (None: the scenario's position); scenarios sharing it share their trials

    @property
    def label(self) -> str:
        if self.kind == "fixed":
            if np.ndim(self.effect) == 0:
                text = f"effect={self.effect:g}"
            else:
                text = "effect=" + ",".join(f"{e:g}" for e in self.effect)
            return text if self.drift is None else f"drift={self.drift:+g},{text}"
        return self.kind

    def effects(self, n_active: int) -> np.ndarray:
        """(A,) fixed effects of the active arms."""
        e = np.atleast_1d(np.asarray(self.effect, float))
        if len(e) not in (1, n_active):
            raise PlanningError(f"scenario '{self.label}': give one effect for every active arm or one per active arm ({n_active})")
        return np.broadcast_to(e, (n_active,)).copy()

    def arm_effect(self, a: int) -> float:
        """The fixed effect of active arm a (0-based; NaN for other kinds)."""
        if self.kind != "fixed":
            return float("nan")
        return float(self.effect) if np.ndim(self.effect) == 0 else float(self.effect[a])


@dataclass(frozen=True)
class AnalysisSettings:
    """The analysis of a simulated trial and its decision rule, applied to each active arm's difference
    from control (one threshold for every arm)."""

    threshold: float = 0.975  # success if P(effect < 0) > threshold
    mcid: float = 2.0
    dual: bool = False  # also require P(effect < -mcid) > mcid_prob
    mcid_prob: float = 0.5
    prior_sd: float = 6.0  # Normal(0, prior_sd) analysis prior on the effect (the headline model's nac_change prior)
    interval: float = 0.95  # central posterior interval whose width is reported
    method: str = "mmrm"  # "mmrm" (all attended visits, REML) or "ancova" (completers at the primary week)
    visit_mean_prior_sd: float = 15.0  # the MMRM's other priors (models/mmrm.py; 0.25 x the outcome range)
    baseline_slope_prior_sd: float = 0.5
    # a (robust) MAP prior on the control arm's mean change at the primary visit, as (weights, means, sds) of its
    # normal mixture (None: no borrowing); planning/analysis.py then also gives the analysis without it
    control_prior: tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]] | None = None
    reference_threshold: float | None = None  # the analysis without borrowing's threshold (None: `threshold`)

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
        if self.control_prior is not None:
            w, m, sd = (np.asarray(v, float) for v in self.control_prior)
            if not (w.ndim == 1 and len(w) and w.shape == m.shape == sd.shape and np.isfinite([w, m, sd]).all()
                    and (w >= 0).all() and w.sum() > 0 and (sd > 0).all()):
                raise PlanningError("the control prior must be a normal mixture: as many finite weights (>= 0, not all 0), means and "
                                    f"positive SDs, got {self.control_prior}")
        if self.reference_threshold is not None and not 0.5 <= self.reference_threshold < 1:
            raise PlanningError(f"the threshold without borrowing must be in [0.5, 1), got {self.reference_threshold}")

    def control_mixture(self):
        """The control prior as a maths.map_prior.NormalMixture (None without borrowing)."""
        return None if self.control_prior is None else NormalMixture(*self.control_prior)

    def without_borrowing(self) -> AnalysisSettings:
        """The same analysis without the control prior, with the threshold for it."""
        threshold = self.threshold if self.reference_threshold is None else self.reference_threshold
        return replace(self, control_prior=None, reference_threshold=None, threshold=threshold)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SimulatedTrials:
    """S simulated trials of one design: every scheduled score, the visits attended, arm, truth."""

    y: np.ndarray  # (S, N, W) scores at the design's weeks (week 0 first), before dropout
    attended: np.ndarray  # (S, N) post-baseline visits attended: a prefix of the schedule
    arm: np.ndarray  # (N,) arm index: 0 control, a the a-th active arm
    primary: int  # index of the primary week among the post-baseline visits
    true_effect: np.ndarray  # (S, A) mean active arm - control effect at the primary week in the enrolled population
    eligible: np.ndarray  # (S,) fraction of screened people eligible (1 without screening or enrichment)
    site: np.ndarray | None = None  # (N,) site of each participant (None: one site)
    site_sd: np.ndarray | None = None  # (S,) SD the site offsets were drawn with (None: one site)

    @property
    def n_active(self) -> int:
        return self.true_effect.shape[1]

    @property
    def treated(self) -> np.ndarray:
        """(N,) 0/1: in an active arm."""
        return (self.arm > 0).astype(float)

    def take(self, rows: np.ndarray) -> SimulatedTrials:
        """The trials `rows` only."""
        return SimulatedTrials(self.y[rows], self.attended[rows], self.arm, self.primary, self.true_effect[rows], self.eligible[rows], self.site,
                               None if self.site_sd is None else self.site_sd[rows])

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
    futility: float = 0.1  # an active arm stops (is dropped) if its PPoS < futility
    efficacy: float = 0.995  # an active arm stops for efficacy if its interim P(benefit) > efficacy
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
