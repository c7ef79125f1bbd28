"""Estimands under other missing-data assumptions, from the posterior draws, without refitting.

Every fitted effect (`nac_effect`) is a hypothetical estimand under missing at random (MAR): the
scores after dropout are those the participant's own arm predicts from their observed scores. This
module computes, per posterior draw and for each active arm, the difference from the control arm at
each visit when the missing scores after dropout follow the reference-based strategies of Carpenter, Roger and Kenward (2013,
J Biopharm Stat 23:1352), as rbmi's statistical specification describes them, and under delta
adjustment (a tipping-point analysis).

Models. Per posterior draw s a model gives, over its outcome visits v and for each active arm a, the
arm difference d^a_v = mu^a_v - mu^r_v (active arm a minus the reference, the control arm r; the
posterior's `nac_effect`, dims active_arm x week) and the within-participant covariance Sigma:
- `mmrm` (outcome: change from baseline at the post-baseline visits): d^a = `nac_effect` at those
  visits; before the first visit the change is 0 in every arm (d^a = 0 at baseline);
- `treatment`, `treatment_curved`, `headline` (outcome: the score at every scheduled week,
  week 0 included): d^a = `nac_effect` (normal likelihood only).
Sigma is what the model says (ModelSpec.score_covariance, models/contract.ImpliedCovariance): the
MMRM's unstructured covariance; for the trajectory models Z (S + A_i C A_i') Z' + sigma^2 I with
Z the rows (1, t1_w), S the covariance of the participant effects and sigma the residual SD, where
A_i C A_i' is the covariance that a participant's missing baseline biomarkers add (the headline
model integrates them out given the observed ones; observed biomarkers are in the participant's
mean, the same in every arm). A participant with a censored biomarker value has it drawn with the
fit, so their Sigma is the one without that term. Participants are grouped by their Sigma.
The arm enters these models' means only through d^a, so mu^a - mu^r = d^a for every participant of
active arm a: each participant's MAR mean is their own arm's, and the reference-based means below
replace it by the control arm's.
`moderation` (a participant-specific arm difference), `null` (no arm) and the biomarker models are
not supported.

Population: every randomised participant with a baseline score (for the MMRM, also those without
any post-baseline visit, whom its fit leaves out). Participant i has observed visits O_i and last
observed visit k_i; the visits after k_i are post-dropout (D_i), gaps before k_i stay MAR.

Strategies, as mean vectors nu^s over the visits for a participant of active arm a:
    MAR  nu = mu^a                                      (own arm)
    J2R  nu = mu^a up to k_i, mu^r after                (jump to reference)
    CR   nu = mu^r everywhere                           (copy reference)
    CIR  nu = mu^a up to k_i, then mu^a_k + (mu^r_v - mu^r_k) after   (copy increments in reference)
The conditional mean imputation of v in D_i is m^s_iv = nu^s_v + Sigma_vO Sigma_OO^-1 (y_O - nu^s_O), so

    m^s_iv - m^MAR_iv = e^s_v - Sigma_vO Sigma_OO^-1 e^s_O,    e^s = nu^s - mu^a

with e^J2R_v = -d^a_v after k_i (0 before), e^CR = -d^a, e^CIR_v = d^a_k - d^a_v after k_i (0
before): it depends on d^a and Sigma only, not on the scores y. The estimand per draw is

    Delta^{s,a}_v = d^a_v + (1/n_a) sum over participants i of arm a with v in D_i of (m^s_iv - m^MAR_iv)

(the reference is the control arm, so every strategy is MAR there; the other active arms do not
enter arm a's contrast). This is the conditional mean imputation estimator (Wolbers et al. 2022,
Stat Med 41:2527; the point estimate of multiple imputation), evaluated on every draw so that the
posterior of d and Sigma carries the uncertainty: the MAR row of arm a is the model's own
`nac_effect` of arm a, draw for draw. Participants are grouped by (strategy, O_i, k_i) and each
group solved once for all draws.

Delta adjustment: the imputed post-dropout scores of active arm a are delta points higher (worse):
Delta^{s,a,delta}_v = Delta^{s,a}_v + delta p^a_v, p^a_v the share of arm a with an imputed
post-dropout score at v; with arms="both" the control arm's too: - delta p^C_v. Every draw moves
by the same amount, so the tipping point (the smallest delta at which P(benefit) falls below the
decision threshold or the 95% interval reaches 0) is found exactly, besides on the grid, for each
active arm against the control arm.

Multiplicative delta: the imputed *change from baseline* of the active arm's missing scores is multiplied by a
factor f (f = 1: MAR; f < 1: the missing participants improve less than MAR predicts; f = 0: no change from
baseline at all, a "baseline carried forward"-like value; f < 0: they worsen). A rating scale has no natural zero,
so a factor on the raw score would mean nothing; a factor on the change from baseline does. Per draw s, with
c^a_iv(s) the expected change from baseline of participant i's missing score at v given the draw (MAR),

    Delta^{s,a,f}_v = Delta^{s,a}_v + (f - 1) C^{s,a}_v,    C^{s,a}_v = (1/n_a) sum over participants i of arm a
                                                                       imputed at v of (c^a_iv + m^s_iv - m^MAR_iv)

(the strategy's imputed change; C^{MAR,a} sums the c^a_iv; with arms="both" the control arm's imputed changes too:
- (f - 1) C^C_v). It is the delta adjustment with a per-draw delta, (f - 1) C^{s,a}_v / p^a_v, so the
tipping factor is found on the same grid-and-refine search; as the draws no longer move by one amount, the exact
point is refined by bisection. c^a_iv(s) (`imputed_changes`): the MMRM's conditional mean of the missing change given
the participant's changes at the visits the imputation conditions on (the draw's mean and Sigma, as in responders.py);
for the trajectory models the participant's own mean at the draw's participant effects (and latent biomarkers),
drawn with the fit given all of the participant's observed scores, minus their baseline score.

Two variances of a reference-based strategy (J2R, CR, CIR), both in sensitivity.csv's `variance` column:
- `conditional_mean`: the posterior of Delta^{s,a} above. As with rbmi's conditional mean imputation and the
  jackknife, it is the repeated-sampling variance of the conditional-mean estimator: for J2R exactly
  Delta^{J2R,a}_v = (1 - p^a_v) d^a_v (e^J2R is 0 at the observed visits), so its SD is (1 - p^a_v) times the MAR
  SD, smaller the more is imputed; CIR mixes d^a_v with the earlier d^a_k, CR with the regression of v on the
  observed d^a_O, with the same effect when those are no more uncertain than d^a_v.
- `information_anchored` (Cro, Carpenter and Kenward 2019, J R Stat Soc A 182:1-26): the variance that keeps the
  information of the MAR analysis, the share of information lost to the missing data being the same under the
  strategy as under MAR. As rbmi and Lu (2021) obtain it, the strategy is matched by a delta adjustment of MAR: per
  active arm a and visit v the anchoring delta
      delta^{s,a}_v = (E[Delta^{s,a}_v] - E[Delta^{MAR,a}_v]) / p^a_v      (0 where p^a_v = 0: then Delta^s = Delta^MAR)
  (E the posterior mean) is the delta whose delta-adjusted MAR analysis (below, arms="treatment") has the
  strategy's posterior mean, and the information-anchored draws are Delta^{MAR,a}_v + delta^{s,a}_v p^a_v, draw by
  draw. Every draw moves by the same amount, so their mean is the strategy's and their SD is exactly the MAR SD:
  on complete data the difference in means has the same variance whatever the assumption about the missing
  scores, so keeping the MAR analysis' share of information keeps its variance. (Rubin's rules applied to a
  reference-based multiple imputation give approximately this variance, as Cro et al. 2019 show.)

Intercurrent events (`data/ice.py`, ice.csv): a listed participant follows the listed strategy
from the listed week on (the visits from that week are post-event, the visit before it plays k_i),
whatever the analysis' strategy; for a strategy other than MAR, scores observed from that week on
are set aside (as rbmi does) and the MAR comparison is conditioned on the same pre-event visits.
Unlisted participants follow the strategy of the analysis after their last observed visit.

Retrieved dropouts (`mmrm_retrieved`, models/mmrm_retrieved.py): its d is the arm difference had every participant stayed
on treatment, so its strategy and delta rows are about that hypothetical effect; its table adds the treatment-policy rows
(strategy `treatment_policy`): d^a_v + pi^a_v theta^a_v - pi^c_v theta^c_v per draw, pi the share of the arm off
treatment at v (from the off_treatment flags and, here, from the listed week of an intercurrent event of ice.csv on),
dropout_share the share of the active arm whose missing visit after stopping treatment is imputed from the
off-treatment model.

Lower scores are better: P(benefit) = P(Delta < 0) = `p_below_0` (models/effects.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

from data.ice import ICE_STRATEGIES, IceTable, check_ice, load_ice  # noqa: E402
from maths.gaussian import conditional_normal  # noqa: E402
from models.design import TrialDesign  # noqa: E402
from models.effects import HDI_PROB, TREATMENT_POLICY, flat_draws, hdi_names  # noqa: E402
from models.mmrm import OFF_EFFECT, mmrm_data  # noqa: E402
from models.mmrm_retrieved import off_status, policy_draws, policy_shares  # noqa: E402
from models.registry import fitted_model_name, get  # noqa: E402

from .plots import to_png  # noqa: E402
from .responders import mmrm_mean, trajectory_means  # noqa: E402

STRATEGIES = ICE_STRATEGIES  # MAR, J2R, CR, CIR
REFERENCE_BASED = ("J2R", "CR", "CIR")  # the strategies with an information-anchored variance besides the conditional-mean one
VARIANCES = ("conditional_mean", "information_anchored")  # sensitivity.csv's `variance` column
VARIANCE_TEXT = {
    "conditional_mean": "conditional mean: the repeated-sampling variance of the conditional-mean estimator, smaller the more "
                        "is imputed",
    "information_anchored": "information anchored: the MAR posterior shifted by the anchoring delta, keeping the information "
                            "of the MAR analysis (what regulators usually ask for)",
}
SUPPORTED_MODELS = ("mmrm", "treatment", "treatment_curved", "headline", "mmrm_retrieved")
POLICY = "treatment_policy"  # the strategy label of the treatment-policy rows of a retrieved-dropout fit
ARMS = ("treatment", "both")
DECISION_THRESHOLD = 0.975  # P(benefit) below this: the conclusion of benefit is lost
FLIP_INTERVAL_PROB = 0.95  # ... or this interval (HDI) reaching 0
DELTA_FRACTIONS = (1 / 30, 1 / 15, 1 / 10)  # default delta rows, as fractions of the score range (2, 4, 6 MADRS points)
GRID_POINTS = 30  # default tipping-point grid: about this many steps
MMRM_MEAN_VARS = ("visit_mean", "nac_visit_effect", "baseline_slope")  # the MMRM's mean change (responders.mmrm_mean)
CONTRAST_COLUMN = "contrast"  # "<arm> - <control>": the first column of the tables of a trial with several active arms
DELTA_KINDS = ("additive", "multiplicative")  # tipping_point.csv's `delta_kind`: delta points added, or a factor on the change
DELTA_KIND_COLUMN = "delta_kind"

STRATEGY_TEXT = {
    "MAR": "dropout: hypothetical, missing at random (own arm's course given the observed scores)",
    "J2R": "dropout: jump to reference ({control} mean after the last visit)",
    "CR": "dropout: copy reference ({control} course throughout)",
    "CIR": "dropout: copy increments in reference ({control} changes from the last visit)",
}
UNSUPPORTED = {
    "moderation": "its NAC effect differs between participants (by baseline biomarkers), so there is no single arm difference to jump to",
    "null": "it has no arm effect",
}


@dataclass
class ModelPieces:
    """What the strategies need from a fit: d per active arm and Sigma per draw over the model's outcome visits."""

    model: str
    visits: np.ndarray  # weeks of the outcome visits (MMRM: post-baseline; trajectory models: all, week 0 first)
    d: np.ndarray  # draws x active arm x visits: active arm - control mean
    sigma: np.ndarray  # draws x visits x visits: within-participant covariance (participants with observed model inputs)
    chains: int
    draws: int
    variable: str  # what the outcome is, e.g. "MADRS change from baseline"
    group: np.ndarray | None = None  # per design participant: 0 for `sigma`, g for group_sigma[g - 1]
    group_sigma: tuple = ()  # draws x visits x visits per further group (ImpliedCovariance.groups)
    arms: tuple[str, ...] = ()  # the active arms (design.active_arms), in the order of d's second axis
    control: str = ""  # the control arm, the reference of every strategy
    off_effect: np.ndarray | None = None  # draws x arm (control first) x visits: mmrm_retrieved's theta; None for other models

    @property
    def baseline_anchor(self) -> bool:
        """True when week 0 is not an outcome visit (the MMRM): d = 0 there, in every arm."""
        return int(self.visits[0]) != 0

    def covariance(self, group: int) -> np.ndarray:
        return self.sigma if group == 0 else self.group_sigma[group - 1]

    def arm_position(self, arm: str | None = None) -> int:
        """The position of active arm `arm` among `arms` (None: the trial's only active arm); ValueError otherwise."""
        if arm is None:
            if len(self.arms) != 1:
                raise ValueError(f"this trial has {len(self.arms)} active arms {list(self.arms)}; name the one to compare "
                                 f"with {self.control} (arm=...)")
            return 0
        if arm not in self.arms:
            raise ValueError(f"'{arm}' is not an active arm of the trial; choose from {list(self.arms)} "
                             f"({self.control} is the reference arm of every strategy)")
        return self.arms.index(arm)

    def contrast(self, arm: str | None = None) -> str:
        """'<arm> - <control>', the row text that names an arm's comparison."""
        return f"{self.arms[self.arm_position(arm)]} - {self.control}"


@dataclass
class Population:
    """The estimand population and each participant's dropout."""

    arm: np.ndarray  # per participant: 0 the control arm, a the a-th active arm (ModelPieces.arms[a - 1])
    observed: np.ndarray  # participant x visit bool
    last: np.ndarray  # index of the last observed visit, -1 when none (MMRM: no post-baseline visit)
    participants: np.ndarray
    group: np.ndarray  # per participant: their covariance group (ModelPieces.group)
    rows: np.ndarray | None = None  # per participant: their index in the design


@dataclass
class StrategyEffect:
    """One active arm's difference from control under one strategy per draw, and who is imputed after dropout or the event."""

    strategy: str
    weeks: np.ndarray  # the model's outcome visits
    draws: np.ndarray  # draws x visits
    share_treatment: np.ndarray  # per visit: share of the active arm with an imputed post-dropout score
    share_control: np.ndarray
    arm: str = ""  # the active arm
    variance: str = "conditional_mean"  # or "information_anchored" (`information_anchored`)
    anchoring_delta: np.ndarray | None = None  # per visit, the information-anchored draws' delta (None: conditional mean)
    # draws x visits, C^{s,a} of the module docstring: the active arm's imputed changes from baseline under this strategy,
    # summed over its participants imputed at the visit and divided by the arm's size (None: not computed, see
    # `imputed_changes`); and the control arm's (MAR), for arms="both"
    imputed_change: np.ndarray | None = None
    imputed_change_control: np.ndarray | None = None

    def slope(self, kind: str = "additive", arms: str = "treatment") -> np.ndarray:
        """Draws x visits: how far each draw moves per unit of departure from MAR (`departure`): the net imputed share
        (additive, the same in every draw), or minus the net mean imputed change from baseline (multiplicative)."""
        share = net_share(self, arms)
        if check_kind(kind) == "additive":
            return np.broadcast_to(share[None, :], self.draws.shape)
        if self.imputed_change is None or (arms == "both" and self.imputed_change_control is None):
            raise ValueError(f"the multiplicative delta needs the imputed changes from baseline of {self.strategy} (arm "
                             f"'{self.arm}'): strategy_effect(..., changes=imputed_changes(idata, design, pieces))")
        control = self.imputed_change_control if arms == "both" else 0.0
        return -(self.imputed_change - control)

    def adjusted(self, value, kind: str = "additive", arms: str = "treatment") -> np.ndarray:
        """The draws with the delta of `kind` applied to the imputed scores of the active arm (arms="both": and of the
        control arm): `value` points added (additive) or the imputed change from baseline multiplied by the factor
        `value` (multiplicative); a number, or one per visit."""
        return self.draws + departure(value, kind) * self.slope(kind, arms)

    def delta_adjusted(self, delta, arms: str = "treatment") -> np.ndarray:
        """The draws with the imputed scores of the active arm (arms="both": and of the control arm) delta points worse;
        delta a number, or one per visit."""
        return self.adjusted(delta, "additive", arms)

    def factor_adjusted(self, factor, arms: str = "treatment") -> np.ndarray:
        """The draws with the imputed change from baseline of the active arm (arms="both": and of the control arm)
        multiplied by `factor` (1: these draws); a number, or one per visit."""
        return self.adjusted(factor, "multiplicative", arms)


def check_kind(kind: str) -> str:
    if kind not in DELTA_KINDS:
        raise ValueError(f"the delta's kind must be one of {DELTA_KINDS}, not '{kind}'")
    return kind


def departure(value, kind: str = "additive"):
    """How far a delta of `kind` is from MAR, the unit the draws move by (StrategyEffect.slope): the delta itself
    (additive, points), or 1 - factor (multiplicative). Its own inverse: the delta at departure t is departure(t, kind)."""
    value = np.asarray(value, dtype=float)
    return value if check_kind(kind) == "additive" else 1.0 - value


def information_anchored(effect: StrategyEffect, mar: StrategyEffect) -> StrategyEffect:
    """The information-anchored posterior of a reference-based strategy's effect (module docstring): the MAR draws of
    the same active arm plus, per visit, the anchoring delta x the arm's imputed share, where the anchoring delta
    makes the delta-adjusted MAR analysis' posterior mean the strategy's. Its `anchoring_delta` holds the deltas
    (points; 0 at visits where nobody of the arm is imputed, where the strategy is MAR); its SD is the MAR SD."""
    if mar.strategy != "MAR" or mar.variance != "conditional_mean":
        raise ValueError(f"the information-anchored draws shift the MAR draws, not those of {mar.strategy} ({mar.variance})")
    if effect.arm != mar.arm or effect.draws.shape != mar.draws.shape or not np.array_equal(effect.weeks, mar.weeks):
        raise ValueError(f"{effect.strategy} of arm '{effect.arm}' and MAR of arm '{mar.arm}' are not the same arm's draws over the "
                         "same visits")
    share = mar.share_treatment
    gap = effect.draws.mean(axis=0) - mar.draws.mean(axis=0)
    delta = np.divide(gap, share, out=np.zeros_like(gap), where=share > 0)
    return StrategyEffect(effect.strategy, effect.weeks, mar.delta_adjusted(delta), effect.share_treatment, effect.share_control,
                          effect.arm, "information_anchored", delta)


def net_share(effect: StrategyEffect, arms: str) -> np.ndarray:
    if arms not in ARMS:
        raise ValueError(f"arms must be one of {ARMS}, not '{arms}'")
    return effect.share_treatment - (effect.share_control if arms == "both" else 0.0)


# ---------------------------------------------------------------- model adapters


def supported_model(idata: az.InferenceData, design: TrialDesign, model: str | None = None) -> str:
    """The fitted model's name when reference-based imputation and delta adjustment are defined for its fit; else
    ValueError saying why (cheap: nothing is computed)."""
    name = fitted_model_name(idata, model)
    if name not in SUPPORTED_MODELS:
        why = UNSUPPORTED.get(name, "it does not model the visit scores with a normal likelihood")
        raise ValueError(
            f"reference-based imputation and delta adjustment are defined for the models {', '.join(SUPPORTED_MODELS)}; "
            f"not for '{name}': {why}"
        )
    likelihood = str(idata.posterior.attrs.get("likelihood", "")).strip('"')
    if likelihood and likelihood != "normal":
        raise ValueError(f"reference-based imputation needs the normal likelihood (conditional normal means); "
                         f"the fit of '{name}' used '{likelihood}'")
    post = idata.posterior
    if "nac_effect" not in post:
        raise ValueError(f"the fit of '{name}' has no 'nac_effect' in its posterior")
    if "active_arm" not in post["nac_effect"].dims:
        raise ValueError(f"the fit of '{name}' has 'nac_effect' without the 'active_arm' dim (dims {post['nac_effect'].dims}): "
                         "it was made by an older version of the project; refit it")
    fit_arms = [str(a) for a in post["active_arm"].values]
    if fit_arms != list(design.active_arms):
        raise ValueError(f"the fit's active arms {fit_arms} are not the design's {list(design.active_arms)}: "
                         "fit and data are of different trials")
    fit_weeks = np.asarray(post["week"].values).astype(int)
    if not np.array_equal(fit_weeks, design.weeks):
        raise ValueError(f"the fit's weeks {fit_weeks.tolist()} are not the design's {design.weeks.tolist()}: "
                         "fit and data are of different trials")
    return name


def model_pieces(idata: az.InferenceData, design: TrialDesign, model: str | None = None) -> ModelPieces:
    """d (draws x active arm x visits) and Sigma (draws x visits x visits, per covariance group) of a supported model's fit."""
    name = supported_model(idata, design, model)
    post = idata.posterior
    chains, draws = post.sizes["chain"], post.sizes["draw"]
    implied = get(name).score_covariance(post, design)
    flat = lambda cov: cov.reshape((chains * draws,) + cov.shape[2:])  # noqa: E731
    d = flat_draws(post["nac_effect"].sel(week=implied.weeks).transpose("chain", "draw", "active_arm", "week"))
    what = "change from baseline" if implied.outcome == "change" else "score"
    off = flat_draws(post[OFF_EFFECT].sel(visit=implied.weeks).transpose("chain", "draw", "arm", "visit")) if OFF_EFFECT in post else None
    return ModelPieces(name, np.asarray(implied.weeks, dtype=int), d, flat(implied.cov), chains, draws,
                       f"{design.meta.outcome_label} {what}", implied.group_of(design.n_participants),
                       tuple(flat(cov) for _, cov in implied.groups), tuple(design.active_arms), design.meta.control_arm, off)


def estimand_population(design: TrialDesign, pieces: ModelPieces) -> Population:
    """All randomised participants with a baseline score, their observed outcome visits and last observed visit."""
    wide = design.wide_scores()
    keep = ~np.isnan(wide[:, 0])
    observed = ~np.isnan(wide[:, 1:] if pieces.baseline_anchor else wide)
    observed = observed[keep]
    idx = np.arange(observed.shape[1])
    last = np.where(observed.any(axis=1), np.max(np.where(observed, idx, -1), axis=1), -1)
    group = pieces.group[keep] if pieces.group is not None else np.zeros(int(keep.sum()), dtype=int)
    return Population(np.asarray(design.arm_idx)[keep].astype(int), observed, last, design.participants[keep], group,
                      np.flatnonzero(keep))


# ---------------------------------------------------------------- the strategies


def _as_ice(ice, design: TrialDesign) -> IceTable | None:
    if ice is None:
        return None
    if isinstance(ice, (str, Path)):
        if design.dataset is None:
            raise ValueError("reading ice.csv needs the design's dataset (models.build_design(data.load_dataset(folder)))")
        ice = load_ice(ice, design.dataset)
        if ice is None:
            return None
    if not isinstance(ice, IceTable):
        raise TypeError("ice must be an IceTable (data.ice.load_ice), the path of ice.csv or None")
    check_ice(ice, design.participants, design.weeks)
    return ice


def _plan(pop: Population, pieces: ModelPieces, strategy: str, ice: IceTable | None):
    """Per participant: strategy, first post-event visit index e (D = visits from e on), conditioning mask, imputed mask."""
    n, nv = pop.observed.shape
    strat = np.full(n, strategy, dtype=object)
    first = pop.last + 1
    given = np.ones((n, nv), dtype=bool)  # the visits a participant's imputation conditions on (with `observed`)
    if ice is not None and len(ice):
        where = {p: i for i, p in enumerate(pop.participants)}
        for pid, (week, s) in ice.by_participant().items():
            i = where[pid]
            strat[i] = s
            first[i] = int(np.searchsorted(pieces.visits, week))
            if s != "MAR":
                given[i, first[i]:] = False  # observed scores after the event are set aside
    cond = pop.observed & given
    post = np.arange(nv)[None, :] >= first[:, None]
    imputed = post & ~cond
    return strat, first, cond, imputed


def _shift(strategy: str, d: np.ndarray, first: int) -> np.ndarray:
    """e^s = nu^s - mu^a over all visits (draws x visits) for a participant of active arm a (d = d^a, draws x visits)
    whose post-event visits start at `first`."""
    e = np.zeros_like(d)
    if strategy == "MAR":
        return e
    if strategy == "CR":
        return -d
    if strategy == "J2R":
        e[:, first:] = -d[:, first:]
        return e
    if strategy == "CIR":
        k = first - 1
        dk = np.zeros(len(d)) if k < 0 else d[:, k]  # k = -1: baseline of the MMRM, d = 0
        e[:, first:] = dk[:, None] - d[:, first:]
        return e
    raise ValueError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")


def strategy_effect(pieces: ModelPieces, pop: Population, strategy: str, ice: IceTable | None = None,
                    arm: str | None = None, changes: np.ndarray | None = None) -> StrategyEffect:
    """Delta^{s,a} per draw over the model's visits for active arm `arm` (None: the trial's only active arm) against
    the control arm (see the module docstring), grouped by (strategy, O_i, k_i). `changes`: `imputed_changes` of the
    same fit and `ice`, for the multiplicative delta (C^{s,a} = C^{MAR,a} + Delta^{s,a} - d^a: the strategy's
    imputations differ from MAR's by what moves Delta^{s,a} away from d^a)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
    a = pieces.arm_position(arm)
    strat, first, cond, imputed = _plan(pop, pieces, strategy, ice)
    nv = pop.observed.shape[1]
    members, control = pop.arm == a + 1, pop.arm == 0
    n_t, n_c = int(members.sum()), int(control.sum())
    d = pieces.d[:, a]
    total = d.copy()
    groups: dict[tuple, int] = {}
    for i in np.flatnonzero(members & (first < nv)):
        if strat[i] == "MAR":
            continue
        key = (strat[i], int(first[i]), tuple(np.flatnonzero(cond[i])), int(pop.group[i]))
        groups[key] = groups.get(key, 0) + 1
    for (s, e_first, o, g), count in groups.items():
        e = _shift(s, d, e_first)
        contrib = e[:, e_first:]
        o = np.asarray(o, dtype=int)
        if len(o) and np.any(e[:, o]):  # minus the regression of the post-event visits on the conditioning ones, at e_O
            coef, _, _ = conditional_normal(np.zeros(nv), pieces.covariance(g), o, np.arange(e_first, nv))
            contrib = contrib - np.einsum("sto,so->st", coef, e[:, o])
        total[:, e_first:] += count / n_t * contrib
    share_t = imputed[members].sum(axis=0) / max(n_t, 1)
    share_c = imputed[control].sum(axis=0) / max(n_c, 1)
    mine = theirs = None
    if changes is not None:
        if changes.shape != (len(d), len(pieces.arms) + 1, nv):
            raise ValueError(f"changes has shape {changes.shape}, not (draws, arms, visits) = {(len(d), len(pieces.arms) + 1, nv)}: "
                             "pass imputed_changes of the same fit")
        mine, theirs = changes[:, a + 1] + (total - d), changes[:, 0]
    return StrategyEffect(strategy, pieces.visits, total, share_t, share_c, pieces.arms[a], imputed_change=mine,
                          imputed_change_control=theirs)


def imputed_changes(idata: az.InferenceData, design: TrialDesign, pieces: ModelPieces, ice=None) -> np.ndarray:
    """C^{MAR} of the module docstring per arm: draws x arm (0 the control arm, a the a-th active arm) x the model's
    visits, the expected change from baseline of each missing score given the draw (MAR; c_iv), summed over the arm's
    participants imputed at the visit (after dropout, or from their intercurrent event) and divided by the arm's size
    (0 where nobody is imputed).

    The MMRM: c_iv = mu_iv + Sigma_vO Sigma_OO^-1 (y_O - mu_O), the participant's own mean change (responders.mmrm_mean)
    and their changes at the visits the imputation conditions on (O: before dropout or the event); for mmrm_retrieved mu is
    the on-treatment mean, and an observed change after stopping treatment has its arm's off-treatment shift added. The trajectory
    models: c_iv = the participant's own mean score at v at the draw's participant effects (responders.trajectory_means)
    minus their baseline score."""
    pop = estimand_population(design, pieces)
    ice = _as_ice(ice, design)
    _, _, cond, imputed = _plan(pop, pieces, "MAR", ice)
    n_draws, nv, n_arms = pieces.d.shape[0], len(pieces.visits), len(pieces.arms) + 1
    out = np.zeros((n_draws, n_arms, nv))
    who = np.flatnonzero(imputed.any(axis=1))
    if not len(who):
        return out
    rows = pop.rows[who]
    wide = design.wide_scores()[rows]
    if pieces.baseline_anchor:  # the MMRM: changes at the post-baseline visits
        lacking = [v for v in MMRM_MEAN_VARS if v not in idata.posterior]
        if lacking:
            raise ValueError(f"the multiplicative delta needs each participant's own mean change, and the posterior of "
                             f"'{pieces.model}' lacks {lacking} (a fit of the MMRM has them)")
        mu = mmrm_mean(idata.posterior, design, rows, mmrm_data(design).baseline_center)  # draws x who x visits
        y = wide[:, 1:] - wide[:, [0]]
        change = mu.copy()
        patterns: dict[tuple, list[int]] = {}
        for k, i in enumerate(who):
            patterns.setdefault((tuple(np.flatnonzero(cond[i])), int(pop.group[i])), []).append(k)
        for (o, g), members in patterns.items():
            if not o:
                continue  # nothing to condition on: the participant's own mean
            o, m = np.asarray(o, dtype=int), np.asarray(members)
            t = np.setdiff1d(np.arange(nv), o)
            coef, _, _ = conditional_normal(np.zeros(nv), pieces.covariance(g), o, t)  # draws x T x O
            resid = y[m][:, o][None] - mu[:, m][:, :, o]
            if pieces.off_effect is not None:  # mmrm_retrieved: an observed off-treatment visit's mean adds its arm's shift
                off = off_status(design)[rows[m]][:, o]
                resid = resid - pieces.off_effect[:, pop.arm[who[m]]][:, :, o] * off[None]
            change[:, m[:, None], t[None, :]] = mu[:, m][:, :, t] + np.einsum("sto,smo->smt", coef, resid)
    else:
        week_idx = np.searchsorted(design.weeks, pieces.visits)
        change = trajectory_means(idata, design, pieces.model, rows, week_idx) - wide[:, 0][None, :, None]
    if change.shape[0] != n_draws:
        raise ValueError(f"the posterior has {change.shape[0]} draws of the participants' means, not the {n_draws} of its effects")
    change = np.where(imputed[who][None], change, 0.0)
    sizes = np.bincount(pop.arm, minlength=n_arms)
    for g in range(n_arms):
        mine = pop.arm[who] == g
        if mine.any():
            out[:, g] = change[:, mine].sum(axis=1) / sizes[g]
    return out


def arm_strategy_effects(pieces: ModelPieces, design: TrialDesign, strategies=STRATEGIES, ice=None,
                         changes: np.ndarray | None = None) -> dict[tuple[str, str], StrategyEffect]:
    """Every active arm's StrategyEffect under each of `strategies` (and MAR, the base of the delta rows), keyed
    (arm, strategy): the draws `sensitivity_table` summarises, computed once (diagnostics.csr_tables reads them too);
    `changes`: `imputed_changes` with the same `ice`, for the multiplicative delta; for a retrieved-dropout fit also
    (arm, POLICY), the treatment-policy effect (`policy_effect`)."""
    pop = estimand_population(design, pieces)
    ice = _as_ice(ice, design)
    out = {(arm, s): strategy_effect(pieces, pop, s, ice, arm, changes) for arm in pieces.arms
           for s in dict.fromkeys([*strategies, "MAR"])}
    if pieces.off_effect is not None:
        out.update({(arm, POLICY): policy_effect(pieces, design, ice, arm) for arm in pieces.arms})
    return out


def policy_effect(pieces: ModelPieces, design: TrialDesign, ice: IceTable | None = None, arm: str | None = None) -> StrategyEffect:
    """The treatment-policy effect of active arm `arm` against the control arm per draw (models/mmrm_retrieved.py), with
    ice.csv's events as discontinuations from their week on; its shares: those of each arm imputed from the off-treatment
    model (a delta moves the imputed post-discontinuation scores)."""
    if pieces.off_effect is None:
        raise ValueError(f"the treatment-policy effect needs a fit of 'mmrm_retrieved', not of '{pieces.model}'")
    a = pieces.arm_position(arm)
    keep = pieces.visits > 0
    shares = policy_shares(design, ice)
    tp = np.zeros_like(pieces.d[:, a])
    tp[:, keep] = policy_draws(pieces.d[:, :, keep], pieces.off_effect[:, :, keep], shares.off)[:, a]
    pad = lambda x: np.concatenate([np.zeros(int((~keep).sum())), x])  # noqa: E731
    return StrategyEffect(POLICY, pieces.visits, tp, pad(shares.imputed[a + 1]), pad(shares.imputed[0]), pieces.arms[a])


def strategy_effects(idata: az.InferenceData, design: TrialDesign, strategies=STRATEGIES, ice=None,
                     model: str | None = None) -> xr.DataArray:
    """Each active arm's difference from control under each strategy: DataArray (chain, draw, active_arm, strategy,
    week), post-baseline weeks."""
    pieces = model_pieces(idata, design, model)
    pop = estimand_population(design, pieces)
    ice = _as_ice(ice, design)
    keep = pieces.visits > 0
    out = np.stack([np.stack([strategy_effect(pieces, pop, s, ice, arm).draws[:, keep] for s in strategies], axis=1)
                    for arm in pieces.arms], axis=1)
    out = out.reshape(pieces.chains, pieces.draws, len(pieces.arms), len(strategies), int(keep.sum()))
    return xr.DataArray(out, dims=("chain", "draw", "active_arm", "strategy", "week"),
                        coords={"chain": np.arange(pieces.chains), "draw": np.arange(pieces.draws), "active_arm": list(pieces.arms),
                                "strategy": list(strategies), "week": pieces.visits[keep]})


# ---------------------------------------------------------------- tables


def summarise(draws: np.ndarray, hdi_prob: float = HDI_PROB) -> dict:
    """mean, sd, HDI and P(< 0) of flat draws."""
    lo, hi = az.hdi(np.asarray(draws, dtype=float), hdi_prob=hdi_prob)
    lo_name, hi_name = hdi_names(hdi_prob)
    return {"mean": float(draws.mean()), "sd": float(draws.std(ddof=1)), lo_name: float(lo), hi_name: float(hi),
            "p_below_0": float((draws < 0).mean())}


def estimand_text(design: TrialDesign, pieces: ModelPieces, n: int, week: int, strategy: str, delta: float = 0.0,
                  arms: str = "treatment", ice: IceTable | None = None, arm: str | None = None) -> str:
    """The estimand of one row in the ICH E9(R1) attributes: population; variable; intercurrent events; summary.
    `arm`: the active arm compared with the control arm (None: the trial's only active arm)."""
    meta = design.meta
    active = pieces.arms[pieces.arm_position(arm)]
    end = meta.treatment_end
    phase = "end of treatment" if week == end else "off-treatment follow-up" if week > end else "during treatment"
    handling = TREATMENT_POLICY if strategy == POLICY else STRATEGY_TEXT[strategy].format(control=meta.control_arm)
    if strategy != POLICY and pieces.off_effect is not None:  # mmrm_retrieved's d: the effect had everyone stayed on treatment
        handling = "treatment discontinuation: hypothetical, as if every participant had stayed on treatment; " + handling
    if delta:
        who = f"{active} arm's" if arms == "treatment" else "both arms'"
        handling += f", {who} missing scores after dropout {delta:g} points worse"
    if ice is not None and len(ice):
        handling += (f"; intercurrent events of {ice.source} ({len(ice)} participants): "
                     + ("off treatment from the week listed" if strategy == POLICY else "the strategy listed, from the week listed"))
    return (f"all randomised with a baseline score (n = {n}); {pieces.variable} at week {week} ({phase}); {handling}; "
            f"difference in means ({active} - {meta.control_arm})")


def default_deltas(design: TrialDesign) -> tuple[float, ...]:
    """Delta rows of the sensitivity table: 1/30, 1/15, 1/10 of the score range, to half a point (2, 4, 6 on MADRS)."""
    return tuple(max(0.5, round(2 * f * design.score_range) / 2) for f in DELTA_FRACTIONS)


def sensitivity_table(
    idata: az.InferenceData,
    design: TrialDesign,
    strategies=STRATEGIES,
    deltas=None,
    ice=None,
    hdi_prob: float = HDI_PROB,
    arms: str = "treatment",
    weeks=None,
    model: str | None = None,
    pieces: ModelPieces | None = None,
    effects: dict[tuple[str, str], StrategyEffect] | None = None,
    variances=VARIANCES,
) -> pd.DataFrame:
    """Each active arm's difference from the control arm at each week under each strategy, then MAR with each delta:
    for each active arm in order, its rows (strategies, then deltas, each at every week); a reference-based strategy
    (J2R, CR, CIR) has its conditional-mean rows, then its information-anchored rows (`variances`).

    Columns: strategy (MAR, J2R, CR, CIR, `delta=<points>`), variance (`conditional_mean`, or
    `information_anchored`: the MAR draws shifted by the anchoring delta, see `information_anchored`; the MAR and
    delta rows are `conditional_mean`, their variance being MAR's either way), week, mean, sd, hdi_3%, hdi_97% (for
    hdi_prob 0.94), p_below_0 (P(benefit)), delta, anchoring_delta (the information-anchored rows' delta, points;
    empty on the other rows), dropout_share (share of the active arm with an imputed score after dropout or the event
    at that week), estimand (which ends with the arms compared, "difference in means (<arm> - <control>)"; the
    same for both variances of a strategy). A trial with several active arms has a first column `contrast`
    ("<arm> - <control>", CONTRAST_COLUMN) as well; a two-arm trial's table has none.
    `weeks`: the weeks reported (None: every post-baseline week of the model); `deltas=None` takes
    `default_deltas(design)`; `ice`: an IceTable, the path of ice.csv, or None; `pieces`: the fit's `model_pieces`,
    when the caller has them already; `effects`: their `arm_strategy_effects` with the same `ice` (computed here when
    not given).
    """
    pieces = pieces if pieces is not None else model_pieces(idata, design, model)
    pop = estimand_population(design, pieces)
    ice = _as_ice(ice, design)
    deltas = default_deltas(design) if deltas is None else tuple(float(x) for x in deltas)
    unknown = [v for v in variances if v not in VARIANCES]
    if unknown or "conditional_mean" not in variances:
        raise ValueError(f"variances must include 'conditional_mean' and be among {list(VARIANCES)} (got {list(variances)})")
    wanted = [int(w) for w in (pieces.visits[pieces.visits > 0] if weeks is None else weeks)]
    missing = [w for w in wanted if w not in pieces.visits or w == 0]
    if missing:
        raise ValueError(f"weeks {missing} are not post-baseline visits of the model ({pieces.visits[pieces.visits > 0].tolist()})")
    n = len(pop.arm)
    several = len(pieces.arms) > 1
    rows = []
    plan = [(s, s, v, 0.0) for s in strategies for v in variances if v == "conditional_mean" or s in REFERENCE_BASED]
    plan += [(f"delta={x:g}", "MAR", "conditional_mean", x) for x in deltas]
    for arm in pieces.arms:
        by_strategy = {s: (effects[(arm, s)] if effects is not None else strategy_effect(pieces, pop, s, ice, arm))
                       for s in dict.fromkeys([*strategies, "MAR"])}
        which = {CONTRAST_COLUMN: pieces.contrast(arm)} if several else {}
        for label, s, variance, delta in plan:
            eff = by_strategy[s]
            if variance == "information_anchored":
                eff = information_anchored(eff, by_strategy["MAR"])
            draws = eff.delta_adjusted(delta, arms) if delta else eff.draws
            for w in wanted:
                j = int(np.searchsorted(pieces.visits, w))
                anchoring = float(eff.anchoring_delta[j]) if eff.anchoring_delta is not None else np.nan
                rows.append({**which, "strategy": label, "variance": variance, "week": w, **summarise(draws[:, j], hdi_prob),
                             "delta": delta, "anchoring_delta": anchoring, "dropout_share": float(eff.share_treatment[j]),
                             "estimand": estimand_text(design, pieces, n, w, s, delta, arms, ice, arm)})
        if pieces.off_effect is not None:  # a retrieved-dropout fit: the treatment-policy rows
            eff = effects[(arm, POLICY)] if effects is not None and (arm, POLICY) in effects else policy_effect(pieces, design, ice, arm)
            for w in wanted:
                j = int(np.searchsorted(pieces.visits, w))
                rows.append({**which, "strategy": POLICY, "variance": "conditional_mean", "week": w,
                             **summarise(eff.draws[:, j], hdi_prob), "delta": 0.0, "anchoring_delta": np.nan,
                             "dropout_share": float(eff.share_treatment[j]),
                             "estimand": estimand_text(design, pieces, n, w, POLICY, ice=ice, arm=arm)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- tipping point


@dataclass
class TippingPoint:
    """A delta (additive or multiplicative) on a grid at one week, one active arm against the control arm: where the
    conclusion of benefit is lost."""

    table: pd.DataFrame  # per grid value (`delta`: points added, or the factor): mean, sd, HDIs, p_below_0, flipped
    delta: float | None  # the grid value nearest MAR at which the conclusion flips (additive: the smallest delta;
    #                      multiplicative: the largest factor); None: not within the grid
    exact: float | None  # the exact flip point (delta, or factor); None: it never flips
    week: int
    strategy: str
    arms: str
    threshold: float
    share: float  # the share of the arm imputed at the week (arms="both": minus the control arm's)
    message: str
    figure: bytes | None = None  # effect and P(benefit) against the delta, PNG
    arm: str = ""  # the active arm
    control: str = ""  # the control arm
    n_active: int = 1  # active arms of the trial: with several, the message and the tables name the contrast
    kind: str = "additive"  # or "multiplicative" (DELTA_KINDS)
    change: float | None = None  # multiplicative: the posterior mean of the imputed participants' mean imputed change from
    #                              baseline at the week (points; arms="both": net of the control arm's)

    @property
    def contrast(self) -> str:
        """'<arm> - <control>'."""
        return f"{self.arm} - {self.control}"


def _nice_step(x: float) -> float:
    if not x > 0 or not math.isfinite(x):
        return 1.0
    p = 10 ** math.floor(math.log10(x))
    return next(m * p for m in (1, 2, 2.5, 5, 10) if m * p >= x)


def _departure_grid(base_mean: float, slope: float, least: float, most: float | None = None, step: float | None = None) -> np.ndarray:
    """Departures from MAR 0 to `most` (default 1.5 |effect| / mean slope: where the mean reaches half the effect
    beyond 0; at least `least`) in nice steps."""
    if most is None:
        most = 1.5 * abs(base_mean) / slope if slope > 0 else 0.0
        most = max(most, least)
    step = _nice_step(most / GRID_POINTS) if step is None else float(step)
    return np.round(np.arange(0.0, most + step / 2, step), 10)


def delta_grid(base_mean: float, share: float, score_range: float, max_delta: float | None = None, step: float | None = None) -> np.ndarray:
    """0 to max_delta (default 1.5 |effect| / share, at least a tenth of the score range) in nice steps."""
    return _departure_grid(base_mean, share, 0.1 * score_range, max_delta, step)


def factor_grid(base_mean: float, slope: float, min_factor: float | None = None, step: float | None = None) -> np.ndarray:
    """Factors from 1 down to min_factor (default 1 - 1.5 |effect| / slope, slope the posterior mean of the net mean
    imputed change with its sign turned, so that the mean effect moves by half its size beyond 0; at most 0, so
    that 'no change from baseline' is on the grid) in nice steps."""
    most = None if min_factor is None else 1.0 - float(min_factor)
    return np.round(1.0 - _departure_grid(base_mean, slope, 1.0, most, step), 10)


def tipping_point(
    idata: az.InferenceData,
    design: TrialDesign,
    week: int | None = None,
    deltas=None,
    strategy: str = "MAR",
    arms: str = "treatment",
    threshold: float = DECISION_THRESHOLD,
    interval_prob: float = FLIP_INTERVAL_PROB,
    ice=None,
    max_delta: float | None = None,
    step: float | None = None,
    hdi_prob: float = HDI_PROB,
    plot: bool = True,
    model: str | None = None,
    pieces: ModelPieces | None = None,
    arm: str | None = None,
    kind: str = "additive",
    min_factor: float | None = None,
    changes: np.ndarray | None = None,
) -> TippingPoint:
    """Where benefit of active arm `arm` (None: the trial's only active arm) over the control arm is no longer
    concluded as the imputed post-dropout scores depart from `strategy`: the smallest delta (kind="additive": points
    added to them) or the largest factor (kind="multiplicative": on their change from baseline; 1 is `strategy`).

    The conclusion flips when P(benefit) = P(difference < 0) falls below `threshold` or the
    `interval_prob` HDI reaches 0. `week` defaults to the end of treatment; `deltas`, the grid in the kind's units
    (points, or factors), to `delta_grid` from 0 to 1.5 x |effect| / share of the active arm imputed at that week
    (`max_delta`, `step` set it), or to `factor_grid` from 1 down to 1 - 1.5 x |effect| / (share x the mean imputed
    change), at most 0 (`min_factor`, `step` set it). `changes`: `imputed_changes` of the fit with this `ice`
    (multiplicative; computed here when not given).
    """
    if arms not in ARMS:
        raise ValueError(f"arms must be one of {ARMS}, not '{arms}'")
    multiplicative = check_kind(kind) == "multiplicative"
    pieces = pieces if pieces is not None else model_pieces(idata, design, model)
    active = pieces.arms[pieces.arm_position(arm)]
    several = len(pieces.arms) > 1
    pop = estimand_population(design, pieces)
    ice = _as_ice(ice, design)
    week = int(design.meta.treatment_end if week is None else week)
    if week not in pieces.visits or week == 0:
        raise ValueError(f"week {week} is not a post-baseline visit of the model ({pieces.visits[pieces.visits > 0].tolist()})")
    j = int(np.searchsorted(pieces.visits, week))
    if multiplicative and changes is None:
        changes = imputed_changes(idata, design, pieces, ice)
    eff = strategy_effect(pieces, pop, strategy, ice, active, changes if multiplicative else None)
    x = eff.draws[:, j]
    share = float(net_share(eff, arms)[j])
    slope = np.array(eff.slope(kind, arms)[:, j])
    if deltas is not None:
        grid = np.asarray(deltas, dtype=float)
    elif multiplicative:
        grid = factor_grid(float(x.mean()), float(slope.mean()), min_factor, step)
    else:
        grid = delta_grid(float(x.mean()), share, design.score_range, max_delta, step)
    away = departure(grid, kind)
    lo95, hi95 = hdi_names(interval_prob)
    rows = []
    for value, t in zip(grid, away):
        y = x + t * slope
        row = {"delta": float(value), "week": week, **summarise(y, hdi_prob)}
        lo, hi = az.hdi(y, hdi_prob=interval_prob)
        row[lo95], row[hi95] = float(lo), float(hi)
        row["flipped"] = bool(row["p_below_0"] < threshold or hi >= 0)
        rows.append(row)
    table = pd.DataFrame(rows)
    flipped = table["flipped"].to_numpy(dtype=bool) if len(table) else np.zeros(0, dtype=bool)
    hit = float(grid[flipped][np.argmin(away[flipped])]) if flipped.any() else None
    start = float(away.max()) if len(away) and away.max() > 0 else 1.0
    found = _exact_flip(x, slope, threshold, interval_prob, start)
    exact = None if found is None else float(departure(found, kind))
    change = None
    if multiplicative:
        own = float(eff.share_treatment[j])
        change = float(eff.imputed_change[:, j].mean() / own) if own > 0 else 0.0
        if arms == "both":
            change = float(-slope.mean() / share) if share > 0 else 0.0
    message = _tipping_message(kind, x, share, grid, hit, exact, change, threshold, interval_prob, strategy, arms, week,
                               active, pieces.contrast(active) if several else "")
    result = TippingPoint(table, hit, exact, week, strategy, arms, threshold, share, message, arm=active,
                          control=pieces.control, n_active=len(pieces.arms), kind=kind, change=change)
    if plot:
        result.figure = tipping_plot(result, design, hdi_prob)
    return result


def _tipping_message(kind, x, share, grid, hit, exact, change, threshold, interval_prob, strategy, arms, week, active,
                     contrast) -> str:
    """The tipping point in words (TippingPoint.message)."""
    arm_name = f"{active} arm" if contrast else "treatment arm"
    at = f"{f'for {contrast} ' if contrast else ''}at week {week}"
    p0, hi0 = float((x < 0).mean()), float(az.hdi(x, hdi_prob=interval_prob)[1])
    not_even = f"P(benefit) = {p0:.3f} (threshold {threshold:g}), {interval_prob:.0%} interval upper end {hi0:.2f}"
    if kind == "additive":
        where = f"{at} ({strategy}, delta added to the {arm_name if arms == 'treatment' else 'both arms'})"
        if p0 < threshold or hi0 >= 0:
            return f"no benefit concluded even without delta {where}: {not_even}"
        if share <= 0:
            return f"the conclusion never flips {where}: delta moves the difference by delta x {share:.3f} (no net imputed dropouts)"
        if hit is None:
            return (f"the conclusion does not flip within the grid (0 to {grid.max():g} points) {where}; "
                    f"it would at {exact:.2f} points")
        return (f"the conclusion flips at delta = {hit:g} points on the grid (exactly {exact:.2f}) {where}: "
                f"{share:.1%} of the {arm_name} imputed after dropout")
    where = f"{at} ({strategy}, the imputed change from baseline of the {arm_name if arms == 'treatment' else 'both arms'} times a factor)"
    if p0 < threshold or hi0 >= 0:
        return f"no benefit concluded even at factor 1 {where}: {not_even}"
    if exact is None:
        why = ("nobody is imputed after dropout (net)" if share <= 0 else
               f"the imputed change from baseline is {change:+.2f} points on average, no improvement that a smaller factor "
               "takes away")
        return f"the conclusion never flips at a factor below 1 {where}: {why}"
    if hit is None:
        return (f"the conclusion does not flip within the grid (factor 1 down to {grid.min():g}) {where}; "
                f"it would at factor {exact:.2f}")
    return (f"the conclusion flips at factor = {hit:g} on the grid (exactly {exact:.2f}) {where}: {share:.1%} of the "
            f"{arm_name} imputed after dropout, their imputed change from baseline {change:.2f} points on average")


def _exact_flip(x: np.ndarray, slope, threshold: float, interval_prob: float, start: float = 1.0) -> float | None:
    """The smallest departure t >= 0 (StrategyEffect.slope) at which y = x + t slope has P(y < 0) < threshold or its
    HDI reaching 0; None when it never does. `slope`: one number, or one per draw. With one slope for every draw
    (the additive delta) it is exact, from the order statistics; otherwise it is bracketed by doubling from `start`
    (up to 2^40 x start) and found by bisection to 1e-10 relative."""
    slope = np.broadcast_to(np.asarray(slope, dtype=float), x.shape)

    def flips(t: float) -> bool:
        y = x + t * slope
        return bool((y < 0).mean() < threshold or az.hdi(y, hdi_prob=interval_prob)[1] >= 0)

    if flips(0.0):
        return 0.0
    if np.ptp(slope) == 0:  # every draw moves by the same amount
        share = float(slope[0])
        if share <= 0:
            return None
        srt = np.sort(x)
        k = math.ceil(threshold * len(x)) - 1  # P < threshold  <=>  at most k draws below -t share  <=>  -t share <= srt[k]
        by_p = -srt[k] / share
        by_interval = -float(az.hdi(x, hdi_prob=interval_prob)[1]) / share
        return max(0.0, min(by_p, by_interval))
    lo, hi = 0.0, float(start) if start > 0 else 1.0
    for _ in range(40):
        if flips(hi):
            break
        lo, hi = hi, 2 * hi
    else:
        return None
    while hi - lo > 1e-10 * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if flips(mid) else (mid, hi)
    return hi


def _xlabel(kind: str, strategy: str, arms: str) -> str:
    if kind == "additive":
        return f"delta: points added to imputed scores after dropout ({arms})"
    return f"factor on the imputed change from baseline after dropout ({arms}; 1 = {strategy})"


def tipping_plot(result: TippingPoint | list[TippingPoint], design: TrialDesign | None = None, hdi_prob: float = HDI_PROB) -> bytes:
    """The difference (mean and HDI) and P(benefit) against the delta, PNG bytes; given the tipping points of several
    active arms or weeks (one strategy and threshold), one line and band per arm and week against the control arm;
    with both kinds, a column of panels each (additive: against delta; multiplicative: against the factor, from 1)."""
    results = [result] if isinstance(result, TippingPoint) else list(result)
    kinds = [k for k in DELTA_KINDS if any(res.kind == k for res in results)]
    first = results[0]
    lo, hi = hdi_names(hdi_prob)
    fig, axes = plt.subplots(2, len(kinds), figsize=(6.5 * len(kinds), 5.5), sharex="col", squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    label = design.meta.outcome_label if design is not None else "score"
    for c, kind in enumerate(kinds):
        ax1, ax2 = axes[0, c], axes[1, c]
        mine = [res for res in results if res.kind == kind]
        several = len(mine) > 1
        arms_differ = len({res.arm for res in mine}) > 1
        weeks = list(dict.fromkeys(res.week for res in mine))
        name = lambda res: ", ".join([res.contrast] * arms_differ + [f"week {res.week}"] * (len(weeks) > 1))  # noqa: E731
        for k, res in enumerate(mine):
            t = res.table
            color = colors[k % len(colors)]
            ax1.fill_between(t["delta"], t[lo], t[hi], alpha=0.3 if not several else 0.2, color=color,
                             label=f"{hdi_prob:.0%} HDI" if not several else None)
            ax1.plot(t["delta"], t["mean"], color=color, label="posterior mean" if not several else f"{name(res)} (mean, {hdi_prob:.0%} HDI)")
            ax2.plot(t["delta"], t["p_below_0"], color=color, label=name(res) if several else None)
        ax1.axhline(0, color="black", lw=0.8)
        at = f"week {mine[0].week}" if len(weeks) == 1 else "weeks " + ", ".join(str(w) for w in weeks)
        if arms_differ:
            ax1.set_ylabel(f"active arm - {mine[0].control} at {at}\n({label} points)")
        else:
            names = (mine[0].arm, mine[0].control) if mine[0].arm else ("treatment", "control")
            ax1.set_ylabel(f"{names[0]} - {names[1]} at {at}\n({label} points)")
        ax1.legend(loc="upper left", fontsize=8)
        ax2.axhline(mine[0].threshold, color="grey", ls="--", lw=0.8, label=f"threshold {mine[0].threshold:g}")
        ax2.set_ylabel("P(benefit)")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_xlabel(_xlabel(kind, mine[0].strategy, mine[0].arms))
        what = "delta" if kind == "additive" else "factor"
        for k, res in enumerate(mine):
            if res.delta is not None:
                color = colors[k % len(colors)] if several else "tab:red"
                flips = f"{name(res) + ' ' if several else ''}flips at {what} = {res.delta:g}"
                for ax in (ax1, ax2):
                    ax.axvline(res.delta, color=color, lw=0.8, ls=":" if several else "-", label=flips if ax is ax2 else None)
        ax2.legend(loc="lower left", fontsize=8)
        if kind == "multiplicative":
            ax1.invert_xaxis()  # from 1 (MAR) towards less improvement, as delta grows to the right
        if len(kinds) > 1:
            ax1.set_title(f"{first.strategy} + delta (additive)" if kind == "additive"
                          else f"{first.strategy}, imputed change x factor (multiplicative)", fontsize=9)
    if kinds == ["additive"]:
        fig.suptitle(f"Tipping point ({first.strategy} + delta)", fontsize=10)
    elif kinds == ["multiplicative"]:
        fig.suptitle(f"Tipping point ({first.strategy}, imputed change from baseline x factor)", fontsize=10)
    else:
        fig.suptitle("Tipping point", fontsize=10)
    return to_png(fig)
