"""Parameter sets for simulating future trials: draws from a saved posterior, or a stated design prior.

Both kinds hold a trial with any number of arms: `arms` names them, the control arm (the reference of
every contrast) first, then the active arms a = 1..A in the fitted data's order; every per-arm parameter
has a leading active-arm axis (size 1 for a two-arm trial). T_ia below is 1 when participant i is in
active arm a.

A `ParameterSet` holds D draws of every parameter the headline model's data-generating process needs,
on the model's own time coding (t1 = min(w, E)/E, t2 = (w - E)^+/(F - E)):

    y_iw = intercept + b0_i + prognostic.z_i
           + (time_change_1 + sum_a T_ia (nac_change_a1 + nac_moderation_a.z_i) + moderation.z_i + b1_i) t1_w
           + (time_curvature + sum_a T_ia nac_curvature_a) q_w + (time_change_2 + sum_a T_ia nac_change_a2) t2_w + e_iw

with (b0_i, b1_i) ~ N(0, [[tau0^2, rho tau0 tau1], [., tau1^2]]), e_iw ~ N(0, residual_sd) and the
standardised baseline log biomarkers z_i ~ MvNormal(marker_mean, marker_chol marker_chol^T) (the fitted
marker block, a sequence of regressions, rewritten as a multivariate normal). `nac_moderation` (active
arm x marker on the treatment-phase change) is zero unless the saved posterior has a variable of that
name: the headline model's `marker_moderation` acts in every arm, so it shifts every arm alike.

An `MMRMParameters` holds D draws of the Bayesian MMRM (models/mmrm.py): the change from baseline at
each fitted post-baseline visit given the baseline score,

    c_i ~ MvNormal(visit_mean + sum_a T_ia nac_visit_effect_a + baseline_slope (y_i0 - baseline_center), Sigma),

with the baseline score itself Normal(baseline_mean, baseline_sd), the fitted trial's observed baseline
scores (a conditional model says nothing about its covariate). `implied_mmrm` rewrites a trajectory
parameter set as the MMRM it implies (exact for normal scores), so both families can be compared.

Future trials are run at new sites: the fitted site offsets are not carried over (they sum to zero),
but their spread is: `site_sd` holds, per draw, the SD of the fitted site offsets (0 for a one-site
fit), from which a simulated trial with several sites draws its new sites' offsets (on the score level
for a trajectory model, on the change from baseline for an MMRM, where the models put them). An MMRM's
covariate effects (centred covariates) are left out, as for a participant at their means.

A design prior (`with_effect_prior`) replaces the effects of the draws: Normal(mean_a, sd_a) on each
active arm's difference from control at the primary week, drawn independently per arm.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from maths.gaussian import chol_to_cov, score_covariance, sd_corr_to_cov, sequential_moments

NAC_MODERATION_VARS = ("nac_marker_moderation", "nac_moderation")  # the moderation model's name first
ARM_DIM = "active_arm"  # the posterior's dim of the active arms (every model writes it; a fit without it has one active arm)
DEFAULT_ARMS = ("placebo", "nac")  # the published-trial calibration's arms (fixed_parameters, data.TrialParameters)


class PlanningError(ValueError):
    """Bad planning input (saved posterior, design prior or design), with what to fix."""


@dataclass(frozen=True)
class Scale:
    """Time coding and outcome scale of the fitted trial."""

    treatment_end: float
    last_week: float
    weeks: tuple[int, ...]
    score_min: float | None = None
    score_max: float | None = None
    integer_scores: bool = False
    outcome_label: str = "outcome"

    def t_codes(self, week: float) -> tuple[float, float]:
        e, f = float(self.treatment_end), float(self.last_week)
        t1 = min(week, e) / e
        t2 = max(week - e, 0.0) / (f - e) if f > e else 0.0
        return t1, t2

    @property
    def score_range(self) -> float:
        if self.score_min is None or self.score_max is None:
            return 60.0
        return float(self.score_max - self.score_min)


@dataclass
class ParameterSet:
    """D draws (first axis) of every generative parameter; K markers."""

    intercept: np.ndarray  # (D,)
    time_change: np.ndarray  # (D, 2) control arm's change: treatment phase, follow-up
    nac_change: np.ndarray  # (D, A, 2) active arm - control accumulated per phase
    participant_sd: np.ndarray  # (D, 2) SD of participant baseline, of participant change
    participant_corr: np.ndarray  # (D,)
    residual_sd: np.ndarray  # (D,)
    marker_mean: np.ndarray  # (D, K) standardised log marker means
    marker_chol: np.ndarray  # (D, K, K) lower Cholesky factor of their covariance
    prognostic: np.ndarray  # (D, K)
    moderation: np.ndarray  # (D, K) every arm
    nac_moderation: np.ndarray  # (D, A, K) each active arm only
    time_curvature: np.ndarray  # (D,) departure from a straight line half-way through treatment
    nac_curvature: np.ndarray  # (D, A)
    marker_names: tuple[str, ...]
    marker_units: tuple[str, ...]
    log_center: np.ndarray  # (K,) natural log value = log_center + log_scale * z
    log_scale: np.ndarray  # (K,)
    scale: Scale
    source: dict = field(default_factory=dict)
    effect_prior: tuple[tuple[float, float], ...] | None = None  # design prior Normal(mean, sd) per active arm on its primary-week effect
    site_sd: np.ndarray | None = None  # (D,) SD of site offsets on the score level (None: 0, no site variation)
    arms: tuple[str, ...] = DEFAULT_ARMS  # control first, then the active arms (the order of every per-arm axis)

    family = "trajectory"
    per_arm = ("nac_change", "nac_moderation", "nac_curvature")

    def __post_init__(self):
        if self.site_sd is None:
            self.site_sd = np.zeros(len(self.intercept))
        _check_arms(self)

    @property
    def per_draw(self) -> tuple[str, ...]:
        return PER_DRAW

    @property
    def control_arm(self) -> str:
        return self.arms[0]

    @property
    def active_arms(self) -> tuple[str, ...]:
        return tuple(self.arms[1:])

    @property
    def n_active(self) -> int:
        return len(self.arms) - 1

    @property
    def n_draws(self) -> int:
        return len(self.intercept)

    @property
    def fitted_weeks(self) -> tuple[int, ...]:
        return tuple(self.scale.weeks)

    def marker_index(self, name: str) -> int:
        if name not in self.marker_names:
            known = ", ".join(self.marker_names) or "none"
            raise PlanningError(f"unknown biomarker '{name}' for enrichment; the parameter set has: {known}")
        return self.marker_names.index(name)

    def z_threshold(self, name: str, threshold: float) -> float:
        """A threshold in natural units (e.g. 3 mg/L) on the standardised log scale."""
        if not threshold > 0:
            raise PlanningError(f"enrichment threshold for '{name}' must be positive in natural units, got {threshold}")
        k = self.marker_index(name)
        return float((np.log(threshold) - self.log_center[k]) / self.log_scale[k])

    def with_effect_prior(self, mean: float | None = None, sd: float | None = None, *, per_arm: dict[str, tuple[float, float]] | None = None):
        """The design prior on the active arms' effects: Normal(mean, sd) on every active arm, or `per_arm`
        {arm: (mean, sd)} naming every active arm once (module docstring)."""
        return with_effect_prior(self, mean, sd, per_arm)

    def with_active_arms(self, arms: tuple[str, ...]):
        """A parameter set of one active arm (not read from a fitted trial) as the same parameters for each
        of the active arms `arms` (control first): what a design prior per arm needs."""
        return with_active_arms(self, arms)

    def to_dict(self) -> dict:
        return _summary(self, skip=("marker_chol",))


def _check_arms(params) -> None:
    """Arm labels: at least one active arm, all different, one per slot of every per-arm axis."""
    arms = tuple(params.arms)
    if len(arms) < 2 or len(set(arms)) != len(arms):
        raise PlanningError(f"a parameter set needs a control arm and at least one active arm, each named once; got {list(arms)}")
    for name in params.per_arm:
        shape = np.shape(getattr(params, name))
        if len(shape) < 2 or shape[1] != len(arms) - 1:
            raise PlanningError(f"'{name}' has shape {shape}; it needs (draws, {len(arms) - 1} active arms, ...) for the arms {list(arms)}")
    prior = params.effect_prior
    if prior is not None and len(prior) != len(arms) - 1:
        raise PlanningError(f"the design prior gives {len(prior)} effect(s) for the {len(arms) - 1} active arm(s) {list(arms[1:])}")


def with_effect_prior(params, mean=None, sd=None, per_arm: dict | None = None):
    """`params` with a design prior Normal(mean_a, sd_a) on each active arm's primary-week effect."""
    if per_arm is None:
        if mean is None or sd is None:
            raise PlanningError("give the design prior as a mean and an SD, or one (mean, sd) per active arm")
        per_arm = {a: (mean, sd) for a in params.active_arms}
    unknown = [a for a in per_arm if a not in params.active_arms]
    missing = [a for a in params.active_arms if a not in per_arm]
    if unknown or missing:
        raise PlanningError(
            f"the design prior must name each active arm of {list(params.active_arms)} once"
            + (f"; unknown arm(s) {unknown}" if unknown else "") + (f"; no prior for {missing}" if missing else "")
        )
    prior = []
    for arm in params.active_arms:
        m, s = per_arm[arm]
        if not np.isfinite(m) or not (np.isfinite(s) and s >= 0):
            raise PlanningError(f"design prior Normal({m}, {s}) for arm '{arm}': the mean must be finite and the sd >= 0")
        prior.append((float(m), float(s)))
    if params.n_active == 1:
        text = f"Normal({prior[0][0]:g}, {prior[0][1]:g})"
    else:
        text = "; ".join(f"{a} Normal({m:g}, {s:g})" for a, (m, s) in zip(params.active_arms, prior))
    return replace(params, effect_prior=tuple(prior), source={**params.source, "effect_prior": text})


def with_active_arms(params, arms) -> ParameterSet | MMRMParameters:
    """One active arm's parameters repeated for each active arm of `arms` (control first); only for a
    parameter set that does not describe a fitted trial's arms (fixed_parameters)."""
    arms = tuple(str(a) for a in arms)
    if arms == tuple(params.arms):
        return params
    if params.source.get("kind") == "posterior":
        raise PlanningError(f"the fitted trial's arms are {list(params.arms)}; a plan from its posterior keeps them (got {list(arms)})")
    if params.n_active != 1:
        raise PlanningError(f"only a parameter set of one active arm can be repeated for several; this one has {list(params.active_arms)}")
    if len(arms) < 2:
        raise PlanningError(f"a trial needs a control arm and at least one active arm; got {list(arms)}")
    k = len(arms) - 1
    grown = {name: np.repeat(getattr(params, name), k, axis=1) for name in params.per_arm}
    prior = None if params.effect_prior is None else params.effect_prior * k
    return replace(params, arms=arms, effect_prior=prior, **grown)


def _summary(params, skip=()) -> dict:
    """Plain JSON-able summary (means of each parameter), for the run record."""
    out = {"family": params.family, "n_draws": params.n_draws, "markers": list(params.marker_names), "source": params.source,
           "arms": list(params.arms)}
    for name in params.per_draw:
        if name not in skip:
            out[f"mean_{name}"] = np.round(np.mean(getattr(params, name), axis=0), 4).tolist()
    return out


@dataclass
class MMRMParameters:
    """D draws (first axis) of the Bayesian MMRM's parameters over its V fitted post-baseline visits."""

    visit_weeks: tuple[int, ...]  # the fitted post-baseline weeks
    visit_mean: np.ndarray  # (D, V) control mean change at the centre baseline
    nac_visit_effect: np.ndarray  # (D, A, V) active arm - control at each visit
    baseline_slope: np.ndarray  # (D, V) change per point of baseline
    visit_chol: np.ndarray  # (D, V, V) lower Cholesky factor of Sigma
    baseline_mean: np.ndarray  # (D,) baseline score distribution: Normal(mean, sd)
    baseline_sd: np.ndarray  # (D,)
    baseline_center: np.ndarray  # (D,) the baseline the fit centred on
    scale: Scale
    source: dict = field(default_factory=dict)
    effect_prior: tuple[tuple[float, float], ...] | None = None  # design prior Normal(mean, sd) per active arm
    site_sd: np.ndarray | None = None  # (D,) SD of site offsets on the change from baseline (None: 0)
    arms: tuple[str, ...] = DEFAULT_ARMS  # control first, then the active arms

    family = "mmrm"
    marker_names: tuple[str, ...] = ()
    per_draw = ("visit_mean", "nac_visit_effect", "baseline_slope", "visit_chol", "baseline_mean", "baseline_sd", "baseline_center", "site_sd")
    per_arm = ("nac_visit_effect",)

    def __post_init__(self):
        if self.site_sd is None:
            self.site_sd = np.zeros(len(self.visit_mean))
        _check_arms(self)

    control_arm = ParameterSet.control_arm
    active_arms = ParameterSet.active_arms
    n_active = ParameterSet.n_active

    @property
    def n_draws(self) -> int:
        return len(self.visit_mean)

    @property
    def fitted_weeks(self) -> tuple[int, ...]:
        return (0, *self.visit_weeks)

    def marker_index(self, name: str) -> int:
        raise PlanningError(f"enrichment on '{name}' needs biomarkers; an MMRM posterior has none (plan from a headline or moderation fit)")

    def z_threshold(self, name: str, threshold: float) -> float:
        return self.marker_index(name)

    with_effect_prior = ParameterSet.with_effect_prior
    with_active_arms = ParameterSet.with_active_arms

    def sigma(self) -> np.ndarray:
        return chol_to_cov(self.visit_chol)

    def to_dict(self) -> dict:
        out = _summary(self, skip=("visit_chol",))
        out["mean_visit_sd"] = np.round(np.sqrt(np.einsum("dvv->v", self.sigma()) / self.n_draws), 4).tolist()
        out["visit_weeks"] = list(self.visit_weeks)
        return out


PER_DRAW = (
    "intercept", "time_change", "nac_change", "participant_sd", "participant_corr", "residual_sd", "marker_mean", "marker_chol",
    "prognostic", "moderation", "nac_moderation", "time_curvature", "nac_curvature", "site_sd",
)


def _stack(post, name: str, d: int, width: int | None = None, default: float | None = None) -> np.ndarray:
    if name not in post:
        if default is None:
            raise PlanningError(f"the saved posterior has no '{name}'; plan from a fit of the headline model (python fit.py) or give --design-prior")
        return np.full((d, width) if width else (d,), default, dtype=float)
    da = post[name]
    arr = da.stack(sample=("chain", "draw")).transpose("sample", ...).values.astype(float)
    return arr


def _stack_arms(post, name: str, d: int, n_active: int, default: float | None = None, width: int | None = None) -> np.ndarray:
    """(D, A, ...) draws of a per-arm variable, the active-arm axis second (a fit without the active-arm
    dim has one active arm); `default` fills (D, A) or (D, A, width) when the posterior has no such variable."""
    if name not in post:
        if default is None:
            _stack(post, name, d)  # raises, naming the variable
        return np.full((d, n_active) + ((width,) if width else ()), default, dtype=float)
    da = post[name]
    if ARM_DIM not in da.dims:
        da = da.expand_dims(ARM_DIM, axis=2)
    arr = da.stack(sample=("chain", "draw")).transpose("sample", ARM_DIM, ...).values.astype(float)
    if arr.shape[1] != n_active:
        raise PlanningError(f"the saved posterior's '{name}' has {arr.shape[1]} active arm(s); the fitted trial has {n_active}")
    return arr


def _design_constants(idata) -> dict:
    """Time coding, scale and marker standardisation of the fitted trial.

    Read from the fit's `design_constants` attr when present; otherwise rebuilt from the dataset the fit
    names (`data_source`), whose checksum must match the fit's.
    """
    attrs = dict(idata.posterior.attrs)
    raw = attrs.get("design_constants")
    if raw:
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    source, checksum = attrs.get("data_source"), attrs.get("data_checksum")
    if not source or not Path(source).is_dir():
        raise PlanningError(
            "the saved fit records neither its design constants nor a readable dataset folder "
            f"(data_source = {source!r}); refit with the current fit.py, or plan from --design-prior"
        )
    from data import load_dataset
    from models.design import build_design

    design = build_design(load_dataset(source))
    if checksum and design.checksum and design.checksum != checksum:
        raise PlanningError(f"the dataset at {source} has changed since the fit (checksum differs); refit it or plan from --design-prior")
    return design_constants(design)


def design_constants(design) -> dict:
    """What planning needs to know of a fitted trial besides the posterior (JSON-able)."""
    meta = design.meta
    weeks = np.asarray(design.weeks, float)
    last = np.full(design.n_participants, -np.inf)
    np.maximum.at(last, design.obs_participant, design.obs_week)
    base = design.y[design.obs_week == 0]
    out = {
        "treatment_end": float(meta.treatment_end),
        "last_week": float(meta.last_week),
        "weeks": [int(w) for w in design.weeks],
        "score_min": float(meta.score_min),
        "score_max": float(meta.score_max),
        "integer_scores": bool(meta.integer_scores),
        "outcome_label": str(meta.outcome_label),
        "participants": int(design.n_participants),
        "entry_min": _entry_min(meta),
        "baseline_mean": float(base.mean()) if len(base) else None,
        "baseline_sd": float(base.std(ddof=1)) if len(base) > 1 else None,
        "arms": [str(a) for a in meta.arms],
        **dropout_by_week(last, design.arm_idx, weeks, meta.arms),
    }
    if design.baseline is not None:
        b = design.baseline
        out["markers"] = list(b.names)
        out["marker_units"] = list(b.units)
        out["log_center"] = [float(v) for v in b.log_center]
        out["log_scale"] = [float(v) for v in b.log_scale]
    return out


def _entry_min(meta) -> float | None:
    """The protocol's entry criterion on the baseline score, if the dataset records one."""
    for name in ("entry_min", "entry_score_min"):
        value = getattr(meta, name, None)
        if value is not None:
            return float(value)
    return None


def dropout_by_week(last_week: np.ndarray, arm_idx: np.ndarray, weeks: np.ndarray, arms) -> dict:
    """Observed loss by each scheduled week, overall (`dropout_by_week`) and per arm (`dropout_by_week_arm`,
    {arm: {week: fraction}}, `arms` control first as `arm_idx` codes them): a participant is lost by week w
    when they attend no visit at or after w (a missed visit followed by a later one is not dropout)."""
    arm_idx = np.asarray(arm_idx).astype(int)

    def curve(rows):
        n = max(int(rows.sum()), 1)
        return {int(w): float((last_week[rows] < w).sum() / n) for w in weeks}

    return {"dropout_by_week": curve(np.ones(len(last_week), bool)),
            "dropout_by_week_arm": {str(arm): curve(arm_idx == a) for a, arm in enumerate(arms)}}


def _arm_index(data, n_active: int | None = None) -> np.ndarray | None:
    """Per participant, 0 (control) or a (the a-th active arm), from a dataset or constant_data group: its
    `arm_index`, its `arm_indicator` (participant x active arm), or a two-arm fit's 0/1 `treated`."""
    if "arm_index" in data:
        return np.asarray(data["arm_index"].values).astype(int)
    if "arm_indicator" in data:
        t = np.asarray(data["arm_indicator"].values, float).reshape(len(data["arm_indicator"]), -1)
        return (t * np.arange(1, t.shape[1] + 1)).sum(axis=1).astype(int)
    if "treated" in data:
        return np.asarray(data["treated"].values).astype(int)
    return None


def _fitted_arms(idata, const: dict) -> tuple[str, ...]:
    """The fitted trial's arms, control first: recorded with the fit, else from its dataset (trial_data's
    meta), else the posterior's active-arm labels after a control named 'control'."""
    if const.get("arms"):
        return tuple(str(a) for a in const["arms"])
    if "trial_data" in idata.groups() and "meta" in idata.trial_data.attrs:
        from data.schema import meta_of

        return tuple(meta_of(idata.trial_data).arms)
    post = idata.posterior
    if ARM_DIM in post.coords:
        return ("control", *(str(a) for a in post[ARM_DIM].values))
    return ("control", "active")


def _fitted_trial(idata, const: dict, arms: tuple[str, ...]) -> dict:
    """Baseline scores and dropout by week and arm of the fitted trial, from the saved fit's own data.

    A trajectory fit's observed_data (`y`) and constant_data (`obs_week`, `obs_participant` and the arm of
    each participant) hold every visit of every participant. The MMRM's constant data hold only centred
    baselines of participants with a post-baseline visit, so for it the fit's trial_data group (the
    validated dataset) is read; failing both, the design constants recorded with the fit."""
    groups = set(idata.groups())
    facts: dict = {"entry_min": const.get("entry_min")}
    obs = idata.observed_data if "observed_data" in groups else {}
    cd = idata.constant_data if "constant_data" in groups else {}
    arm_cd = _arm_index(cd) if cd else None
    if "y" in obs and "obs_week" in cd and "obs_participant" in cd and arm_cd is not None:
        y, week = np.asarray(obs["y"].values, float), np.asarray(cd["obs_week"].values, float)
        pid, arm = np.asarray(cd["obs_participant"].values, int), arm_cd
        facts["from"] = "observed_data and constant_data of the fit"
    elif "trial_data" in groups and "score" in idata.trial_data and _arm_index(idata.trial_data) is not None:
        ds = idata.trial_data
        score, weeks_ds = np.asarray(ds["score"].values, float), np.asarray(ds["week"].values, float)
        ii, jj = np.nonzero(~np.isnan(score))
        y, week, pid, arm = score[ii, jj], weeks_ds[jj], ii, _arm_index(ds)
        facts["from"] = "the fit's trial_data (the validated dataset)"
    else:
        y = None
    if y is not None:
        weeks = np.asarray(const.get("weeks") or np.unique(week), float)
        last = np.full(len(arm), -np.inf)
        np.maximum.at(last, pid, week)
        base = y[week == 0]
        facts.update(baseline_mean=float(base.mean()), baseline_sd=float(base.std(ddof=1)), baseline_n=int(len(base)))
        followed = np.zeros(len(arm), bool)
        followed[pid[week > 0]] = True
        base_by = np.full(len(arm), np.nan)
        base_by[pid[week == 0]] = y[week == 0]
        facts["baseline_center"] = float(np.nanmean(base_by[followed])) if followed.any() else facts["baseline_mean"]
        facts.update(dropout_by_week(last, arm, weeks, arms))
        return facts
    facts["from"] = "the design constants recorded with the fit"
    for key in ("baseline_mean", "baseline_sd", "dropout_by_week", "dropout_by_week_arm"):
        if const.get(key) is not None:
            facts[key] = const[key]
    if "dropout_by_week_arm" not in facts and const.get("dropout_by_week_control") and const.get("dropout_by_week_treatment") and len(arms) == 2:
        facts["dropout_by_week_arm"] = {arms[0]: const["dropout_by_week_control"], arms[1]: const["dropout_by_week_treatment"]}
    facts["baseline_center"] = facts.get("baseline_mean")
    return facts


def from_posterior(path_or_idata, max_draws: int | None = None, seed: int = 0) -> ParameterSet:
    """Parameter draws of a saved fit (idata.nc of the headline model, or any model with its variables)."""
    import arviz as az

    if isinstance(path_or_idata, (str, Path)):
        path = Path(path_or_idata)
        if not path.is_file():
            raise PlanningError(f"no saved fit at {path}; run `python fit.py` first (it writes results/headline/idata.nc)")
        try:
            idata = az.from_netcdf(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
            raise PlanningError(f"cannot read {path} as an InferenceData netCDF file: {exc}") from exc
        label = str(path)
    else:
        idata, label = path_or_idata, "in-memory InferenceData"
    if "posterior" not in idata.groups():
        raise PlanningError(f"{label} has no posterior group")
    post = idata.posterior
    const = _design_constants(idata)
    arms = _fitted_arms(idata, const)
    if ARM_DIM in post.coords and tuple(str(a) for a in post[ARM_DIM].values) != tuple(arms[1:]):
        raise PlanningError(f"{label}: the posterior's active arms {[str(a) for a in post[ARM_DIM].values]} are not the fitted trial's {list(arms[1:])}")
    facts = _fitted_trial(idata, const, arms)
    n_active = len(arms) - 1
    if "nac_visit_effect" in post:
        params = _mmrm_from_posterior(post, const, facts, label, arms)
        if max_draws is not None and max_draws < params.n_draws:
            params = subset(params, np.sort(np.random.default_rng(seed).choice(params.n_draws, size=max_draws, replace=False)))
        return params
    d = post.sizes["chain"] * post.sizes["draw"]
    markers = tuple(str(m) for m in post["marker"].values) if "marker" in post.coords else ()
    k = len(markers)

    time_change = _stack(post, "time_change", d)
    nac_change = _stack_arms(post, "nac_change", d, n_active)
    time_change = time_change.reshape(d, -1)
    nac_change = nac_change.reshape(d, n_active, -1)
    if time_change.shape[1] == 1:  # no follow-up phase
        time_change = np.column_stack([time_change, np.zeros(d)])
        nac_change = np.concatenate([nac_change, np.zeros((d, n_active, 1))], axis=2)
    psd = _stack(post, "participant_sd", d)
    if k:
        mmean, msd = _stack(post, "marker_mean", d), _stack(post, "marker_sd", d)
        links = _stack(post, "marker_regression", d) if "marker_regression" in post else np.zeros((d, 0))
        mu, chol = sequential_moments(mmean.reshape(d, k), msd.reshape(d, k), links.reshape(d, -1), k, factor=True)
        prognostic = _stack(post, "marker_prognostic", d, k, 0.0).reshape(d, k)
        moderation = _stack(post, "marker_moderation", d, k, 0.0).reshape(d, k)
        nac_mod = np.zeros((d, n_active, k))
        for name in NAC_MODERATION_VARS:
            if name in post:
                nac_mod = _stack_arms(post, name, d, n_active).reshape(d, n_active, k)
                break
        centre, spread = np.asarray(const["log_center"], float), np.asarray(const["log_scale"], float)
        units = tuple(const.get("marker_units", [""] * k))
    else:
        mu, chol = np.zeros((d, 0)), np.zeros((d, 0, 0))
        prognostic = moderation = np.zeros((d, 0))
        nac_mod = np.zeros((d, n_active, 0))
        centre = spread = np.zeros(0)
        units = ()
    params = ParameterSet(
        intercept=_stack(post, "intercept", d),
        time_change=time_change,
        nac_change=nac_change,
        participant_sd=psd.reshape(d, 2),
        participant_corr=_stack(post, "participant_corr", d),
        residual_sd=_stack(post, "residual_sd", d),
        marker_mean=mu,
        marker_chol=chol,
        prognostic=prognostic,
        moderation=moderation,
        nac_moderation=nac_mod,
        time_curvature=_stack(post, "time_curvature", d, default=0.0),
        nac_curvature=_stack_arms(post, "nac_curvature", d, n_active, default=0.0),
        marker_names=markers,
        marker_units=units,
        log_center=centre,
        log_scale=spread,
        scale=_scale_from(const),
        source=_posterior_source(post, label, facts),
        site_sd=_site_sd(post, d),
        arms=arms,
    )
    if max_draws is not None and max_draws < d:
        params = subset(params, np.sort(np.random.default_rng(seed).choice(d, size=max_draws, replace=False)))
    return params


def _trial_source(facts: dict) -> dict:
    keys = ("from", "entry_min", "baseline_mean", "baseline_sd", "dropout_by_week", "dropout_by_week_arm")
    out = {k: facts[k] for k in keys if facts.get(k) is not None}
    if "from" in out:
        out["trial_facts_from"] = out.pop("from")
    return out


def _mmrm_from_posterior(post, const: dict, facts: dict, label: str, arms: tuple[str, ...]) -> MMRMParameters:
    d = post.sizes["chain"] * post.sizes["draw"]
    weeks = tuple(int(w) for w in post["visit"].values) if "visit" in post.coords else tuple(int(w) for w in const["weeks"][1:])
    v = len(weeks)
    from models.mmrm import visit_covariance  # the MMRM's own Sigma (imported here: plan.py's workers need no models)

    try:
        chol = np.linalg.cholesky(visit_covariance(post, v).reshape(d, v, v))
    except ValueError as exc:
        raise PlanningError(f"{exc}; refit it with the current fit.py") from None
    if facts.get("baseline_mean") is None or facts.get("baseline_sd") is None:
        raise PlanningError(
            "the saved MMRM fit records no baseline scores (no trial_data group, no baseline_mean in its design constants); "
            "refit it with the current fit.py, or plan from a trajectory model's fit"
        )
    one = lambda x: np.full(d, float(x))  # noqa: E731
    return MMRMParameters(
        visit_weeks=weeks,
        visit_mean=_stack(post, "visit_mean", d).reshape(d, v),
        nac_visit_effect=_stack_arms(post, "nac_visit_effect", d, len(arms) - 1).reshape(d, len(arms) - 1, v),
        baseline_slope=_stack(post, "baseline_slope", d).reshape(d, v),
        visit_chol=chol,
        baseline_mean=one(facts["baseline_mean"]),
        baseline_sd=one(facts["baseline_sd"]),
        baseline_center=one(facts.get("baseline_center") or facts["baseline_mean"]),
        scale=_scale_from(const),
        source=_posterior_source(post, label, facts),
        site_sd=_site_sd(post, d),
        arms=arms,
    )


def _site_sd(post, d: int) -> np.ndarray:
    """Per draw, the SD (ddof 1) of the fitted site offsets; 0 without a site term (one site). The fitted
    offsets are estimates, so their spread includes some estimation noise: if anything it overstates
    the spread of new sites' offsets."""
    if "site_effect" not in post or post.sizes.get("site", 0) < 2:
        return np.zeros(d)
    return _stack(post, "site_effect", d).reshape(d, -1).std(axis=1, ddof=1)


def _posterior_source(post, label: str, facts: dict) -> dict:
    """Where a parameter set read from a saved fit came from: the file, the model, the data checksum and the trial."""
    return {
        "kind": "posterior",
        "path": label,
        "model": str(post.attrs.get("model", "")),
        "data_checksum": str(post.attrs.get("data_checksum", "")),
        "sites": int(post.sizes.get("site", 1)) if "site_effect" in post else 1,
        **_trial_source(facts),
    }


def implied_mmrm(params: ParameterSet, weeks=None) -> MMRMParameters:
    """The MMRM a trajectory parameter set implies over `weeks` (default: its fitted schedule): with the
    participant effects and markers integrated out the scores are multivariate normal, so the change
    from baseline given the baseline is exactly the MMRM's form. Needs no active arm x marker term (it
    would make that arm's covariance differ). Site offsets on the score level are not carried over (their
    MMRM form is not a site offset on the change): the result has site_sd 0."""
    if np.any(params.nac_moderation != 0):
        raise PlanningError("an active arm x marker term makes the arms' covariances differ; the MMRM form does not hold")
    weeks = np.asarray(weeks if weeks is not None else params.scale.weeks, float)
    t1, t2 = np.array([params.scale.t_codes(w) for w in weeks]).T
    q = 4 * t1 * (1 - t1)
    corr = np.ones((params.n_draws, 2, 2))
    corr[:, 0, 1] = corr[:, 1, 0] = params.participant_corr
    s = sd_corr_to_cov(params.participant_sd, corr)
    loadings = np.stack([params.prognostic, params.moderation], axis=1)  # (D, 2, K): on (level, change)
    z = np.column_stack([np.ones(len(weeks)), t1])
    k = score_covariance(z, s, params.residual_sd, loadings, chol_to_cov(params.marker_chol))  # a new participant: every marker unobserved
    zmean = np.einsum("dk,dk->d", params.prognostic, params.marker_mean)
    mean0 = params.intercept + zmean
    mod_mean = np.einsum("dk,dk->d", params.moderation, params.marker_mean)
    change_pl = (params.time_change[:, 0] + mod_mean)[:, None] * t1 + params.time_change[:, 1][:, None] * t2 + params.time_curvature[:, None] * q
    effect = params.nac_change[:, :, 0][:, :, None] * t1 + params.nac_change[:, :, 1][:, :, None] * t2 + params.nac_curvature[:, :, None] * q  # (D, A, W)
    k00 = k[:, 0, 0]
    cov_c = k[:, 1:, 1:] - k[:, 1:, :1] - k[:, :1, 1:] + k00[:, None, None]
    cov_cy = k[:, 1:, 0] - k00[:, None]
    slope = cov_cy / k00[:, None]
    sig = cov_c - slope[:, :, None] * slope[:, None, :] * k00[:, None, None]
    return MMRMParameters(
        visit_weeks=tuple(int(w) for w in weeks[1:]),
        visit_mean=change_pl[:, 1:],
        nac_visit_effect=effect[:, :, 1:],
        baseline_slope=slope,
        visit_chol=np.linalg.cholesky(sig),
        baseline_mean=mean0,
        baseline_sd=np.sqrt(k00),
        baseline_center=mean0.copy(),
        scale=params.scale,
        source={**params.source, "implied_from": "trajectory parameters"},
        effect_prior=params.effect_prior,
        arms=params.arms,
    )


def unit_information_sd(params, week: float, max_draws: int = 200) -> float:
    """SD of one participant's change from baseline at `week` given the baseline score, within an arm
    (mean over up to `max_draws` parameter draws): the scale of the robust mixture's vague component."""
    if params.family == "mmrm":
        j = list(params.visit_weeks).index(int(week))
        return float(np.sqrt(np.einsum("dv,dv->d", params.visit_chol[:, j], params.visit_chol[:, j])).mean())
    return float(implied_sd(params, week, max_draws))


def implied_sd(params: ParameterSet, week: float, max_draws: int = 200) -> float:
    draws = np.linspace(0, params.n_draws - 1, min(params.n_draws, max_draws)).astype(int)
    sub = subset(params, draws)
    sub = replace(sub, nac_moderation=np.zeros_like(sub.nac_moderation))
    m = implied_mmrm(sub, (0, week))
    return float(np.abs(m.visit_chol[:, 0, 0]).mean())


def _scale_from(const: dict) -> Scale:
    return Scale(
        treatment_end=float(const["treatment_end"]),
        last_week=float(const["last_week"]),
        weeks=tuple(int(w) for w in const["weeks"]),
        score_min=const.get("score_min"),
        score_max=const.get("score_max"),
        integer_scores=bool(const.get("integer_scores", False)),
        outcome_label=str(const.get("outcome_label", "outcome")),
    )


def subset(params, idx: np.ndarray):
    return replace(params, **{name: getattr(params, name)[idx] for name in params.per_draw})


def fixed_parameters(
    *,
    intercept: float = 28.0,
    placebo_change: tuple[float, float] = (-11.0, -0.5),
    nac_change=(-1.5, -1.5),
    participant_sd: tuple[float, float] = (4.9, 6.0),
    participant_corr: float = -0.2,
    residual_sd: float = 3.0,
    markers: tuple[str, ...] = ("il6", "crp", "bdnf"),
    marker_units: tuple[str, ...] = ("pg/mL", "mg/L", "ng/mL"),
    marker_median: tuple[float, ...] = (2.0, 2.0, 25.0),
    marker_log_sd: tuple[float, ...] = (0.7, 1.0, 0.3),
    marker_corr=((1.0, 0.4, -0.1), (0.4, 1.0, -0.1), (-0.1, -0.1, 1.0)),
    prognostic: tuple[float, ...] = (0.0, 0.0, 0.0),
    moderation: tuple[float, ...] = (-1.5, 0.0, 0.0),
    nac_moderation=(0.0, 0.0, 0.0),
    site_sd: float = 1.5,
    scale: Scale | None = None,
    arms: tuple[str, ...] = DEFAULT_ARMS,
) -> ParameterSet:
    """One fixed parameter set (a point design prior on the nuisance parameters).

    `arms` names the arms, control first; `nac_change` (treatment phase, follow-up) and `nac_moderation`
    (per marker) are one active arm's, used for every active arm, or one row per active arm.

    Defaults are the published-trial calibration of the bundled synthetic trial (data.TrialParameters):
    screened baseline mean 28 with SD 5.8 (= sqrt(4.9^2 + 3^2)), placebo change -11 by week 12, NAC effect
    -1.5 at week 12, IL-6 predicting a larger drop in both arms, log-normal markers, site offsets with
    SD 1.5 on the score level (used when a design has several sites). Markers are
    standardised by their true log mean and SD, so marker_mean = 0 and the covariance is the correlation.
    """
    k = len(markers)
    n_active = len(arms) - 1

    def per_arm(value, width: int) -> np.ndarray:  # (A, width): one row for every active arm, or one row each
        a = np.asarray(value, float)
        a = a.reshape(-1, a.shape[-1])[:, :width]
        if len(a) not in (1, n_active):
            raise PlanningError(f"give one row for every active arm or one per active arm of {list(arms[1:])}; got {len(a)}")
        return np.broadcast_to(a, (n_active, width)).copy()

    corr = np.asarray(marker_corr, float)[:k, :k]
    chol = np.linalg.cholesky(corr) if k else np.zeros((0, 0))
    one = lambda v: np.asarray([v], float)  # noqa: E731
    row = lambda v: np.asarray(v, float)[None, :k] if k else np.zeros((1, 0))  # noqa: E731
    return ParameterSet(
        intercept=one(intercept),
        time_change=np.asarray(placebo_change, float)[None],
        nac_change=per_arm(nac_change, 2)[None],
        participant_sd=np.asarray(participant_sd, float)[None],
        participant_corr=one(participant_corr),
        residual_sd=one(residual_sd),
        marker_mean=np.zeros((1, k)),
        marker_chol=chol[None],
        prognostic=row(prognostic),
        moderation=row(moderation),
        nac_moderation=per_arm(nac_moderation, k)[None],
        time_curvature=np.zeros(1),
        nac_curvature=np.zeros((1, n_active)),
        marker_names=tuple(markers),
        marker_units=tuple(marker_units[:k]),
        log_center=np.log(np.asarray(marker_median, float)[:k]),
        log_scale=np.asarray(marker_log_sd, float)[:k],
        scale=scale or Scale(treatment_end=12, last_week=16, weeks=(0, 2, 4, 6, 8, 12, 16), score_min=0, score_max=60, integer_scores=True, outcome_label="MADRS"),
        source={"kind": "fixed", "note": "published-trial calibration (data.TrialParameters defaults)"},
        site_sd=one(site_sd),
        arms=tuple(arms),
    )


_PRIOR_RE = re.compile(r"^\s*normal\s*\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\)\s*$", re.IGNORECASE)


def parse_design_prior(text: str) -> tuple[float, float]:
    """'Normal(mean, sd)' on an active arm's difference from control at the primary week (sd 0 = a fixed effect)."""
    m = _PRIOR_RE.match(text or "")
    if not m:
        raise PlanningError(f"design prior '{text}' not understood; write Normal(MEAN, SD), e.g. Normal(-2, 1.5) "
                            "(outcome points; negative = the active arm better), or ARM=Normal(MEAN, SD) for one arm")
    try:
        mean, sd = float(m.group(1)), float(m.group(2))
    except ValueError:
        raise PlanningError(f"design prior '{text}' not understood; MEAN and SD must be numbers, e.g. Normal(-2, 1.5)") from None
    if sd < 0:
        raise PlanningError(f"design prior '{text}': the SD must be >= 0")
    return mean, sd


def parse_design_priors(texts) -> tuple[dict[str, tuple[float, float]] | None, list[tuple[float, float]]]:
    """Design priors given as 'Normal(M, SD)' or 'ARM=Normal(M, SD)': ({arm: (mean, sd)}, []) when every one
    names its arm, (None, [(mean, sd), ...]) when none does; mixing the two forms is refused."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    named, plain = {}, []
    for text in texts:
        arm, eq, rest = text.partition("=")
        if eq and not arm.strip().lower().startswith("normal"):
            arm = arm.strip()
            if arm in named:
                raise PlanningError(f"design prior for arm '{arm}' given twice")
            named[arm] = parse_design_prior(rest)
        else:
            plain.append(parse_design_prior(text))
    if named and plain:
        raise PlanningError("name the arm of every design prior (ARM=Normal(M, SD)) or of none")
    return (named or None), plain
