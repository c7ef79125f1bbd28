"""From the validated Dataset to the arrays a model needs (the only bridge between them).

Holds the time coding shared by every trajectory model:
    t1 = min(week, E) / E          treatment phase: 0 at baseline, 1 at end of treatment E
    t2 = (week - E)^+ / (F - E)    follow-up: 0 until E, 1 at the last follow-up week F
so a coefficient on t1 is a change by end of treatment and one on t2 a change over follow-up,
in outcome points, whatever the visit schedule.

Biomarkers enter as standardised baseline log values; the centring and scale used are kept
here so effects can be reported per doubling in natural units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from data.meta import DatasetMeta
from data.schema import meta_of


class ModelDataError(ValueError):
    """The dataset is valid but lacks what a chosen model needs (e.g. biomarkers)."""


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
    treated: np.ndarray  # per participant, 0/1
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

    @property
    def n_participants(self) -> int:
        return len(self.participants)

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
        }
        if self.baseline is not None:
            c["marker"] = self.baseline.names
        return c

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
        treated=ds["treated"].values.astype(float),
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
    )
    if "marker_value" in ds:
        base = _marker_block(ds, meta, 0)
        design.baseline = base
        for w in ds["biomarker_week"].values:
            if int(w) != 0:
                design.later[int(w)] = _marker_block(ds, meta, int(w), base.log_center, base.log_scale)
    return design
