"""Leave-one-out predictive accuracy at two levels, with Pareto-k checks and remedies that run.

- visit level (pointwise PSIS-LOO, `az.loo`): predicting a new visit of a known participant;
- participant level: the log-likelihood summed over each participant's visits, then PSIS-LOO
  on the participant x draw matrix: predicting a new patient, the unit a trial generalises to.

PSIS is unreliable where the Pareto shape k exceeds PARETO_K_MAX. Those units are never reported
silently: `remedy` recomputes them by refitting. With at most REFIT_MAX problem units each is left
out in turn and refitted (exact LOO); with more, every unit is estimated by grouped K-fold
cross-validation (KFOLD_K folds of participants, stratified by arm; at the visit level, folds of visits). A held-out unit's predictive
density is log mean_s p(y_held | theta_s), where the refit saw none of its scores: its participant
effects are then draws from the population distribution given its covariates, as for a new patient.
Refits go through a builder callback `build(design) -> BuiltModel` (any registered model, or a cheap
one in tests) and a `SamplerSettings`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Callable

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import logsumexp

PARETO_K_MAX = 0.7  # PSIS-LOO unreliable above this Pareto shape (Vehtari et al. 2017/2024)
REFIT_MAX = 5  # refit each problem unit when there are at most this many, else grouped K-fold
KFOLD_K = 5  # folds for grouped K-fold by participant (each refit sees 80% of participants: slightly pessimistic, half the time of 10)
OBS_FIELDS = ("y", "t1", "t2")  # per-observation design arrays besides those named obs_*


@dataclass
class LooResult:
    """elpd of one model at one level, per unit and in total, with how each unit was estimated."""

    level: str  # "visit" or "participant"
    units: np.ndarray  # labels: observation index or participant id
    elpd_i: np.ndarray
    pareto_k: np.ndarray  # NaN where a unit was not estimated by PSIS
    method: np.ndarray  # per unit: "psis", "refit" or "kfold"
    p_loo: float = float("nan")
    notes: list[str] = field(default_factory=list)
    integrated: bool = False  # scored by the integrated quantity (INTEGRATED) rather than the conditional one

    @property
    def elpd(self) -> float:
        return float(self.elpd_i.sum())

    @property
    def se(self) -> float:
        return float(np.sqrt(len(self.elpd_i) * np.var(self.elpd_i)))

    @property
    def bad(self) -> np.ndarray:
        """Units whose elpd rests on an unreliable PSIS estimate (k > PARETO_K_MAX and not recomputed)."""
        return (self.method == "psis") & (self.pareto_k > PARETO_K_MAX)

    @property
    def reliable(self) -> bool:
        return not self.bad.any()

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"unit": self.units, "elpd_i": self.elpd_i, "pareto_k": self.pareto_k, "method": self.method})

    def text(self) -> str:
        k = self.pareto_k[np.isfinite(self.pareto_k)]
        methods = ", ".join(f"{m} {int((self.method == m).sum())}" for m in ("psis", "refit", "kfold") if (self.method == m).any())
        line = f"{self.level}-level LOO: elpd {self.elpd:.1f} (SE {self.se:.1f}), p_loo {self.p_loo:.1f}, {len(self.elpd_i)} {self.level}s ({methods})"
        if len(k):
            line += f"; Pareto k max {k.max():.2f}, {int((k > PARETO_K_MAX).sum())} above {PARETO_K_MAX}"
        if not self.reliable:
            line += f"\n  WARNING: {int(self.bad.sum())} {self.level}(s) with Pareto k > {PARETO_K_MAX} not recomputed: this elpd is unreliable"
        return "\n".join([line] + [f"  {n}" for n in self.notes])


def _check(idata: az.InferenceData, var_name: str = "y") -> None:
    if "log_likelihood" not in idata.groups() or var_name not in idata.log_likelihood:
        raise ValueError(f"the fit has no log_likelihood['{var_name}']")


def participant_log_likelihood(idata: az.InferenceData, var_name: str = "y") -> xr.DataArray:
    """Log-likelihood summed over each participant's observations: (chain, draw, participant)."""
    _check(idata, var_name)
    ll = idata.log_likelihood[var_name]
    obs_dim = [d for d in ll.dims if d not in ("chain", "draw")]
    if len(obs_dim) != 1:
        raise ValueError(f"log_likelihood['{var_name}'] must have one observation dimension, has {obs_dim}")
    pid = np.asarray(idata.constant_data["obs_participant"].values, dtype=int)
    labels = idata.constant_data["participant"].values if "participant" in idata.constant_data.coords else np.arange(pid.max() + 1)
    indicator = np.zeros((ll.sizes[obs_dim[0]], len(labels)))
    indicator[np.arange(len(pid)), pid] = 1.0
    values = np.asarray(ll.transpose("chain", "draw", obs_dim[0]).values) @ indicator
    out = xr.DataArray(values, dims=("chain", "draw", "participant"), coords={"chain": ll["chain"], "draw": ll["draw"], "participant": labels})
    return out.isel(participant=indicator.sum(axis=0) > 0)  # participants with no observation contribute nothing


INTEGRATED = {"participant": "y_participant", "visit": "y_visit"}  # log_likelihood variables of the integrated quantities
QUANTITY = {
    "participant": "post-baseline scores given the baseline score, participant effects integrated out",
    "visit": "each post-baseline visit given the participant's other visits (exact, multivariate normal)",
}


def _integrated(idata: az.InferenceData, level: str, var_name: str) -> xr.DataArray | None:
    name = INTEGRATED[level]
    if var_name == "y" and "log_likelihood" in idata.groups() and name in idata.log_likelihood:
        return idata.log_likelihood[name]
    return None


def _psis(idata: az.InferenceData, ll: xr.DataArray, level: str, units, integrated: bool = False) -> LooResult:
    data = az.InferenceData(posterior=idata.posterior, log_likelihood=xr.Dataset({"y": ll}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = az.loo(data, pointwise=True, var_name="y")
    return LooResult(
        level=level,
        units=np.asarray(units),
        elpd_i=np.asarray(res.loo_i.values, dtype=float),
        pareto_k=np.asarray(res.pareto_k.values, dtype=float),
        method=np.array(["psis"] * len(units), dtype=object),
        p_loo=float(res.p_loo),
        integrated=integrated,
    )


def loo_visits(idata: az.InferenceData, var_name: str = "y", integrated: bool = True) -> LooResult:
    """PSIS-LOO over visits: on the exact leave-one-visit-out densities ('y_visit') when the fit has them,
    else on the pointwise log-likelihood conditional on the participant effects."""
    ll = _integrated(idata, "visit", var_name) if integrated else None
    if ll is not None:
        return _psis(idata, ll, "visit", ll["scored_visit"].values, integrated=True)
    _check(idata, var_name)
    ll = idata.log_likelihood[var_name]
    obs_dim = [d for d in ll.dims if d not in ("chain", "draw")][0]
    return _psis(idata, ll, "visit", np.arange(ll.sizes[obs_dim]))


def loo_participants(idata: az.InferenceData, var_name: str = "y", integrated: bool = True) -> LooResult:
    """Leave-one-participant-out PSIS-LOO: on the integrated densities ('y_participant') when the fit has
    them, else on the participant-summed log-likelihood conditional on the participant effects."""
    ll = _integrated(idata, "participant", var_name) if integrated else None
    if ll is not None:
        return _psis(idata, ll.rename(scored_participant="participant"), "participant", ll["scored_participant"].values, integrated=True)
    ll = participant_log_likelihood(idata, var_name)
    return _psis(idata, ll, "participant", ll["participant"].values)


# ---------------------------------------------------------------- refits


def subset_observations(design, keep: np.ndarray):
    """A copy of a TrialDesign keeping only the observation rows where `keep` is True."""
    keep = np.asarray(keep, dtype=bool)
    n_obs = len(design.y)
    changes = {}
    for f in dataclasses.fields(design):
        value = getattr(design, f.name)
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n_obs and (f.name in OBS_FIELDS or f.name.startswith("obs_")):
            changes[f.name] = value[keep]
    return dataclasses.replace(design, **changes)


def refit_heldout(design, build: Callable, held: np.ndarray, settings, outcome: str = "y", quiet: bool = True) -> tuple[np.ndarray, int]:
    """Refit without the `held` observation rows; return their log-likelihood (n_held, draws) and the refit's divergences."""
    import pymc as pm

    from inference.sampling import sample_posterior

    held = np.asarray(held, dtype=bool)
    if held.all() or not held.any():
        raise ValueError("a held-out set must contain some observations, not all")
    post, _ = sample_posterior(build(subset_observations(design, ~held)), settings, quiet=quiet)
    divergences = int(post.sample_stats["diverging"].sum()) if "diverging" in post.sample_stats else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ll = pm.compute_log_likelihood(post, model=build(subset_observations(design, held)).model, var_names=[outcome], extend_inferencedata=False, progressbar=False)
    return np.asarray(ll[outcome].stack(sample=("chain", "draw")).transpose(..., "sample").values), divergences


def refit_integrated(design, build: Callable, held: np.ndarray, settings, quiet: bool = True) -> tuple[xr.DataArray, int]:
    """Refit without the `held` observation rows (whole participants); return the held-out participants'
    integrated densities log p(post-baseline | baseline, theta) per refit draw, and the refit's divergences.

    The refit samples the model's fast variant when it has one; the held-out participants stay in its
    design without observations, so their fixed part (arm, site, biomarkers) is defined."""
    from inference.marginal import fixed_part, integrated_log_likelihood, plain_integrated_log_likelihood
    from inference.sampling import sample_posterior

    held = np.asarray(held, dtype=bool)
    built = build(subset_observations(design, ~held))
    fast = built.fast_variant() if built.fast_variant is not None and settings.fast else None
    post, _ = sample_posterior(fast or built, settings, quiet=quiet)
    divergences = int(post.sample_stats["diverging"].sum()) if "diverging" in post.sample_stats else 0
    held_design = subset_observations(design, held)
    if fast is not None:
        densities = integrated_log_likelihood(post, held_design, fixed_part(post.posterior, fast))
    else:
        densities = plain_integrated_log_likelihood(post, build(held_design))
    if not densities:
        raise ValueError(f"model '{built.name}' has no integrated form (a Normal likelihood is needed)")
    return densities["y_participant"], divergences


def _logmeanexp(x: np.ndarray, axis=-1):
    return logsumexp(x, axis=axis) - np.log(x.shape[axis])


def heldout_elpd(design, build: Callable, row_groups: list[np.ndarray], settings, outcome: str = "y", quiet: bool = True) -> np.ndarray:
    """log p(y_group | y_rest) for each group of observation rows: refit without the group, score it.

    `build(design) -> BuiltModel`; `settings` an inference.sampling.SamplerSettings (its seed is split
    into one stream per refit, so the same seed gives the same numbers). Returns one value per group;
    `heldout_elpd.divergences` holds the refits' divergent transitions of the last call.
    """
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(settings.seed).spawn(len(row_groups))]
    out = np.empty(len(row_groups))
    heldout_elpd.divergences = 0
    for g, rows in enumerate(row_groups):
        held = np.zeros(len(design.y), dtype=bool)
        held[np.asarray(rows, dtype=int)] = True
        arr, div = refit_heldout(design, build, held, dataclasses.replace(settings, seed=seeds[g]), outcome, quiet)
        heldout_elpd.divergences += div
        out[g] = float(_logmeanexp(arr.sum(axis=0)))
    return out


def kfold_groups(design, k: int, seed: int) -> list[np.ndarray]:
    """K folds of participants, stratified by arm (random within arm), as lists of participant indices."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    pos = 0
    for arm in np.unique(design.arm_idx):
        members = rng.permutation(np.nonzero(design.arm_idx == arm)[0])
        for p in members:
            folds[pos % k].append(int(p))
            pos += 1
    return [np.asarray(sorted(f), dtype=int) for f in folds if f]


def grouped_kfold_integrated(design, build: Callable, settings, k: int = KFOLD_K, quiet: bool = True) -> LooResult:
    """Grouped K-fold by participant on the integrated quantity: each fold's participants held out together,
    each scored by log mean over the refit's draws of p(their post-baseline scores | baseline, theta).
    The cross-validation counterpart of `loo_participants` on 'y_participant' (same units)."""
    folds = kfold_groups(design, min(k, design.n_participants), settings.seed)
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(settings.seed + 1).spawn(len(folds))]
    scores: dict[str, float] = {}
    divergences = 0
    for f, members in enumerate(folds):
        held = np.isin(design.obs_participant, members)
        if not held.any():
            continue
        dens, div = refit_integrated(design, build, held, dataclasses.replace(settings, seed=seeds[f]), quiet=quiet)
        divergences += div
        flat = dens.stack(sample=("chain", "draw")).transpose("scored_participant", "sample")
        for label, row in zip(flat["scored_participant"].values, flat.values):
            scores[str(label)] = float(_logmeanexp(row))
    units = [str(p) for p in design.participants if str(p) in scores]
    note = f"grouped {len(folds)}-fold cross-validation by participant on the integrated densities ({len(folds)} refits)"
    return LooResult(level="participant", units=np.asarray(units, dtype=object), elpd_i=np.array([scores[u] for u in units]),
                     pareto_k=np.full(len(units), np.nan), method=np.array(["kfold"] * len(units), dtype=object), integrated=True,
                     notes=[note + (f"; WARNING: {divergences} divergent transitions across the refits" if divergences else "; no divergences in the refits")])


def grouped_kfold(design, build: Callable, settings, k: int = KFOLD_K, level: str = "participant", quiet: bool = True) -> LooResult:
    """K-fold cross-validation: elpd of every participant (grouped by participant) or every visit, from K refits.

    level='participant': each fold's participants are held out together (all their visits); the fold's
    elpd is split back to participants by scoring each held-out participant against the same refit.
    level='visit': folds are random sets of visits (a participant's other visits stay in), each
    held-out visit scored on its own, the K-fold counterpart of pointwise LOO.
    """
    n_obs = len(design.y)
    if level == "visit":
        order = np.random.default_rng(settings.seed).permutation(n_obs)
        masks = [np.isin(np.arange(n_obs), order[f::k]) for f in range(min(k, n_obs))]
        units = np.arange(n_obs)
        note = f"{len(masks)}-fold cross-validation by visit ({len(masks)} refits)"
    else:
        folds = kfold_groups(design, min(k, design.n_participants), settings.seed)
        masks = [np.isin(design.obs_participant, members) for members in folds]
        units = np.unique(design.obs_participant)
        note = f"grouped {len(masks)}-fold cross-validation by participant ({len(masks)} refits)"
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(settings.seed + 1).spawn(len(masks))]
    elpd = np.full(len(units), np.nan)
    divergences = 0
    for f, held in enumerate(masks):
        if not held.any():
            continue
        arr, div = refit_heldout(design, build, held, dataclasses.replace(settings, seed=seeds[f]), quiet=quiet)  # (n_held_obs, draws)
        divergences += div
        rows = np.nonzero(held)[0]
        if level == "visit":
            elpd[rows] = _logmeanexp(arr, axis=1)
        else:
            pid = design.obs_participant[rows]
            for p in np.unique(pid):
                elpd[np.searchsorted(units, p)] = float(_logmeanexp(arr[pid == p].sum(axis=0)))
    labels = units if level == "visit" else np.asarray(design.participants)[units]
    return LooResult(level=level, units=np.asarray(labels), elpd_i=elpd, pareto_k=np.full(len(units), np.nan), method=np.array(["kfold"] * len(units), dtype=object),
                     notes=[note + (f"; WARNING: {divergences} divergent transitions across the refits" if divergences else "; no divergences in the refits")])


def remedy(result: LooResult, design, build: Callable, settings, refit_max: int = REFIT_MAX, k: int = KFOLD_K, quiet: bool = True) -> LooResult:
    """Recompute every unit with Pareto k > PARETO_K_MAX: exact refits if few, grouped K-fold otherwise."""
    bad = np.nonzero(result.bad)[0]
    if not len(bad):
        return result
    if len(bad) <= refit_max:
        if result.level == "participant":
            pos = {str(p): i for i, p in enumerate(design.participants)}
            groups = [np.nonzero(design.obs_participant == pos[str(result.units[i])])[0] for i in bad]
        else:
            groups = [np.array([int(result.units[i])]) for i in bad]
        exact = heldout_elpd(design, build, groups, settings, quiet=quiet)
        div = getattr(heldout_elpd, "divergences", 0)
        elpd_i, method = result.elpd_i.copy(), result.method.copy()
        elpd_i[bad], method[bad] = exact, "refit"
        note = f"{len(bad)} {result.level}(s) with Pareto k > {PARETO_K_MAX} refitted without their data (exact LOO): " + ", ".join(
            f"{result.units[i]} {result.elpd_i[i]:.2f} -> {e:.2f}" for i, e in zip(bad, exact)
        ) + (f"; WARNING: {div} divergent transitions in the refits" if div else "; no divergences in the refits")
        return dataclasses.replace(result, elpd_i=elpd_i, method=method, notes=result.notes + [note])
    kf = grouped_kfold(design, build, settings, k=k, level=result.level, quiet=quiet)
    note = f"{len(bad)} {result.level}s with Pareto k > {PARETO_K_MAX} (more than {refit_max}): every {result.level} estimated by grouped K-fold instead (PSIS elpd was {result.elpd:.1f})"
    return dataclasses.replace(kf, pareto_k=result.pareto_k, p_loo=result.p_loo, notes=result.notes + kf.notes + [note])
