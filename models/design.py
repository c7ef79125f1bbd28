"""From the validated Dataset to the arrays a model needs (the only bridge between them).

Holds the time coding shared by every trajectory model:
    t1 = min(week, E) / E          treatment phase: 0 at baseline, 1 at end of treatment E
    t2 = (week - E)^+ / (F - E)    follow-up: 0 until E, 1 at the last follow-up week F
so a coefficient on t1 is a change by end of treatment and one on t2 a change over follow-up,
in outcome points, whatever the visit schedule.

Biomarkers enter as standardised baseline log values; the centring and scale used are kept
here so effects can be reported per doubling in natural units.

Baseline covariates declared under [covariates] of dataset.toml become one design matrix
(participant x column, `TrialDesign.covariates`): a continuous covariate is centred on its mean
over the trial's participants and scaled to SD 1 (so its effect is per SD), a categorical one is
dummy-coded against its first level in sorted order, one indicator column per other level, named
`<covariate>[<level>]`, centred on the level's proportion (so its effect is the difference from
the first level, and every intercept and control-arm change of a model is that of the average
participant, as without covariates). `select_covariates` gives the columns a model adjusts for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from data.meta import DatasetMeta
from data.schema import meta_of


class ModelDataError(ValueError):
    """The dataset is valid but lacks what a chosen model needs (e.g. biomarkers)."""


COVARIATE_DIM = "covariate"  # the dim of the covariate columns and of their effects


def time_codes(weeks, treatment_end: float, last_week: float) -> tuple[np.ndarray, np.ndarray]:
    weeks = np.asarray(weeks, dtype=float)
    t1 = np.minimum(weeks, treatment_end) / treatment_end
    if last_week > treatment_end:
        t2 = np.maximum(weeks - treatment_end, 0) / (last_week - treatment_end)
    else:
        t2 = np.zeros_like(weeks)
    return t1, t2


@dataclass
class MarkerData:
    """Standardised log biomarkers at one biomarker week (participant x marker)."""

    names: list[str]
    units: list[str]
    z: np.ndarray  # standardised log value; NaN where missing or censored
    missing: np.ndarray  # bool: no sample
    censored: np.ndarray  # bool: below detection limit (z holds NaN; upper bound in z_upper)
    z_upper: np.ndarray  # standardised log detection limit where censored, NaN elsewhere
    log_center: np.ndarray  # mean of observed log values (per marker)
    log_scale: np.ndarray  # SD of observed log values (per marker)

    @property
    def n_missing(self) -> int:
        return int(self.missing.sum())

    @property
    def n_censored(self) -> int:
        return int(self.censored.sum())


@dataclass
class TrialDesign:
    """Long-format visit arrays plus participant-level arrays, with coords for named dims."""

    meta: DatasetMeta
    participants: np.ndarray
    sites: list[str]
    weeks: np.ndarray
    arm_idx: np.ndarray  # per participant: 0 the control arm, a the a-th active arm (meta.arms[a])
    site_idx: np.ndarray  # per participant
    obs_participant: np.ndarray  # per observed visit: participant index
    obs_week: np.ndarray  # per observed visit: week
    t1: np.ndarray
    t2: np.ndarray
    y: np.ndarray
    week_t1: np.ndarray  # per scheduled week
    week_t2: np.ndarray
    has_followup: bool
    checksum: str
    baseline: MarkerData | None = None
    later: dict[int, MarkerData] = field(default_factory=dict)  # other biomarker weeks, same standardisation
    dataset: xr.Dataset | None = field(default=None, repr=False)  # the validated dataset it was built from (saved with each fit)
    # baseline covariates (module docstring): participant x column, no columns without [covariates] in dataset.toml
    covariates: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    covariate_names: list[str] = field(default_factory=list)  # per column: 'age', 'sex[M]'
    covariate_sources: list[str] = field(default_factory=list)  # per column: the declared covariate it codes ('age', 'sex')
    covariate_coding: dict = field(default_factory=dict)  # per covariate: kind, and mean and SD (continuous) or levels (categorical)
    # participant x scheduled week, True from the participant's first visit after stopping the randomised treatment early
    # (visits.csv's off_treatment column, data/schema.py); None when the dataset has no such column
    off_treatment: np.ndarray | None = None

    @property
    def n_participants(self) -> int:
        return len(self.participants)

    @property
    def arms(self) -> list[str]:
        """Every arm, control (the reference) first: arm index 0, 1, ... (dim 'arm')."""
        return list(self.meta.arms)

    @property
    def active_arms(self) -> list[str]:
        """The active arms, each compared with the control arm (dim 'active_arm')."""
        return list(self.meta.treatment_arms)

    @property
    def n_active(self) -> int:
        return len(self.meta.treatment_arms)

    def arm_indicator(self) -> np.ndarray:
        """participant x active arm, 1.0 where the participant is in that arm (a control participant's row is 0):
        the design matrix of the arm contrasts, T_ia in the models' formulas."""
        return (self.arm_idx[:, None] == np.arange(1, self.n_active + 1)[None, :]).astype(float)

    @property
    def score_range(self) -> float:
        return float(self.meta.score_max - self.meta.score_min)

    def phases(self) -> list[str]:
        return ["treatment", "followup"] if self.has_followup else ["treatment"]

    def coords(self) -> dict:
        c = {
            "participant": self.participants,
            "site": self.sites,
            "week": self.weeks,
            "obs": np.arange(len(self.y)),
            "phase": self.phases(),
            "participant_effect": ["intercept", "change"],
            "active_arm": self.active_arms,
        }
        if self.baseline is not None:
            c["marker"] = self.baseline.names
        return c

    @property
    def declared_covariates(self) -> list[str]:
        """The covariates declared in dataset.toml, in their order there."""
        return list(self.covariate_coding)

    def wide_scores(self) -> np.ndarray:
        """participant x scheduled week scores, NaN where not observed."""
        wide = np.full((self.n_participants, len(self.weeks)), np.nan)
        wide[self.obs_participant, np.searchsorted(self.weeks, self.obs_week.astype(int))] = self.y
        return wide

    def require_markers(self, model_name: str) -> MarkerData:
        if self.baseline is None:
            raise ModelDataError(
                f"model '{model_name}' needs baseline biomarkers, but the dataset has no biomarkers.csv; "
                "choose a model without biomarkers (e.g. 'treatment') or add biomarkers.csv (see README)"
            )
        return self.baseline


def _marker_block(ds: xr.Dataset, meta: DatasetMeta, week: int, center=None, scale=None) -> MarkerData:
    values = ds["marker_value"].sel(biomarker_week=week).values
    below = ds["below_lod"].sel(biomarker_week=week).values
    logv = np.log(values)
    observed = ~np.isnan(values) & ~below
    if center is None:
        center = np.array([np.mean(logv[observed[:, k], k]) if observed[:, k].sum() else 0.0 for k in range(values.shape[1])])
        scale = np.array([np.std(logv[observed[:, k], k], ddof=1) if observed[:, k].sum() > 2 else 1.0 for k in range(values.shape[1])])
        scale = np.where(scale > 0, scale, 1.0)
    z = np.where(observed, (logv - center) / scale, np.nan)
    upper = np.where(below, (logv - center) / scale, np.nan)
    names = [str(m) for m in ds["marker"].values]
    return MarkerData(
        names=names,
        units=[meta.marker_units.get(m, "") for m in names],
        z=z,
        missing=np.isnan(values),
        censored=below & ~np.isnan(values),
        z_upper=upper,
        log_center=center,
        log_scale=scale,
    )


def covariate_matrix(ds: xr.Dataset, meta: DatasetMeta) -> tuple[np.ndarray, list[str], list[str], dict]:
    """(matrix participant x column, column names, the covariate of each column, coding) of the declared covariates:
    continuous ones centred and scaled to SD 1 (the SD with n - 1), categorical ones dummy-coded against the first
    level in sorted order, each indicator centred on its proportion (the loader has checked every value is present,
    numeric where continuous, with two levels or more where categorical)."""
    n = ds.sizes["participant"]
    columns, names, sources, coding = [], [], [], {}
    for name, kind in meta.covariates.items():
        values = ds[f"covariate_{name}"].values
        if kind == "continuous":
            x = values.astype(float)
            center, scale = float(np.mean(x)), float(np.std(x, ddof=1)) if n > 1 else 1.0
            scale = scale if scale > 0 else 1.0
            columns.append((x - center) / scale)
            names.append(name)
            sources.append(name)
            coding[name] = {"kind": kind, "mean": center, "sd": scale}
        else:
            labels = np.array([str(v) for v in values])
            levels = sorted({str(v) for v in labels})
            shares = []
            for level in levels[1:]:
                indicator = (labels == level).astype(float)
                shares.append(float(indicator.mean()))
                columns.append(indicator - shares[-1])
                names.append(f"{name}[{level}]")
                sources.append(name)
            coding[name] = {"kind": kind, "reference": levels[0], "levels": levels[1:], "proportion": shares}
    matrix = np.column_stack(columns) if columns else np.zeros((n, 0))
    return matrix, names, sources, coding


def select_covariates(design: TrialDesign, covariates=True) -> np.ndarray:
    """Indices of the covariate columns a model adjusts for: True (the default) every declared covariate, False or
    None none, or a list of declared covariate names (a categorical one brings all its columns). An undeclared name
    raises ModelDataError."""
    if covariates is None or covariates is False:
        return np.zeros(0, dtype=int)
    if covariates is True:
        return np.arange(len(design.covariate_names))
    wanted = [covariates] if isinstance(covariates, str) else list(covariates)
    unknown = [c for c in wanted if c not in design.covariate_coding]
    if unknown:
        declared = design.declared_covariates
        raise ModelDataError(
            f"covariate(s) {unknown} are not declared in the dataset's dataset.toml [covariates] "
            f"(declared: {declared or 'none'}); declare them there (e.g. age = \"continuous\") or choose from the declared ones"
        )
    return np.array([j for j, src in enumerate(design.covariate_sources) if src in wanted], dtype=int)


def fitted_covariates(columns, design: TrialDesign) -> list[str] | bool:
    """The `covariates` argument that rebuilds a fitted model: the declared covariates behind the column names of its
    'covariate' coordinate (e.g. a posterior's), or False when it has none (a saved fit records its columns so)."""
    names = [str(c) for c in (columns if columns is not None else ())]
    if not names:
        return False
    unknown = [c for c in names if c not in design.covariate_names]
    if unknown:
        raise ModelDataError(f"the fit adjusted for covariate columns {unknown}, which the dataset's [covariates] do not give "
                             f"(its columns: {design.covariate_names})")
    return list(dict.fromkeys(design.covariate_sources[design.covariate_names.index(c)] for c in names))


def build_design(ds: xr.Dataset) -> TrialDesign:
    meta = meta_of(ds)
    score = ds["score"].values
    weeks = ds["week"].values.astype(float)
    ii, jj = np.nonzero(~np.isnan(score))
    sites, site_idx = np.unique(ds["site"].values, return_inverse=True)
    t1w, t2w = time_codes(weeks, meta.treatment_end, meta.last_week)
    design = TrialDesign(
        meta=meta,
        participants=ds["participant"].values,
        sites=[str(s) for s in sites],
        weeks=weeks.astype(int),
        # a dataset saved with an older two-arm fit holds the 0/1 'treated' instead of 'arm_index' (the same coding)
        arm_idx=(ds["arm_index"] if "arm_index" in ds else ds["treated"]).values.astype(int),
        site_idx=site_idx.astype(int),
        obs_participant=ii.astype(int),
        obs_week=weeks[jj],
        t1=t1w[jj],
        t2=t2w[jj],
        y=score[ii, jj].astype(float),
        week_t1=t1w,
        week_t2=t2w,
        has_followup=bool(meta.last_week > meta.treatment_end),
        checksum=str(ds.attrs.get("checksum", "")),
        dataset=ds,
        off_treatment=ds["off_treatment"].values.astype(bool) if "off_treatment" in ds else None,
    )
    design.covariates, design.covariate_names, design.covariate_sources, design.covariate_coding = covariate_matrix(ds, meta)
    if "marker_value" in ds:
        base = _marker_block(ds, meta, 0)
        design.baseline = base
        for w in ds["biomarker_week"].values:
            if int(w) != 0:
                design.later[int(w)] = _marker_block(ds, meta, int(w), base.log_center, base.log_scale)
    return design
