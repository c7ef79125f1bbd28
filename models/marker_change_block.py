"""Baseline and end-of-treatment log biomarkers as one latent block (models of biomarker change).

Generalises the idea of marker_block to a block whose mean depends on covariates and whose
residuals have an LKJ-correlated covariance: for participant i with mean vector mu_i (one
entry per marker) and Cholesky factor L of the residual covariance,
    z_i = mu_i + L e_i,   e_i ~ N(0, I),
written marker by marker (L is lower triangular), so each entry is a univariate normal given
the previous ones:
    z_ik | z_i,<k ~ N(mu_ik + sum_j<k L_kj e_ij,  L_kk).
Then
- observed entries contribute their likelihood (and e_ik = (z_ik - conditional mean) / L_kk),
- missing entries are latent: e_ik ~ N(0, 1),
- values below the detection limit c are latent below it by the inverse-CDF transform
  e_ik = Phi^-1(u Phi(c')) with u ~ U(0, 1) and c' the standardised limit, plus
  log Phi(c'), the probability of being below the limit (never the limit, never zero).
Everything is non-centred and acyclic, so it samples cleanly and supports prior predictive draws.

Baseline covariates declared in dataset.toml (models/design.py) shift the end-week mean of every
marker: mu_i += G x_i, G ('covariate_marker_effect', dims marker x covariate) in baseline SDs of the
log marker per SD of a continuous covariate, or for a level of a categorical one against its first.

`change_data` chooses who enters: participants with at least one biomarker value (at any
biomarker week, including values below the limit); participants with no serum at all would
contribute only latent values and nothing to any estimate, so they are left out, and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from .design import COVARIATE_DIM, MarkerData, ModelDataError, TrialDesign
from .marker_block import std_normal_icdf, std_normal_logcdf
from .priors import Prior, dist, rv


@dataclass
class ChangeData:
    """The participants entering a biomarker-change model and their baseline / end-week markers."""

    rows: np.ndarray  # indices into the design's participants
    participants: np.ndarray  # their ids
    week: int  # the end-of-treatment biomarker week
    baseline: MarkerData  # restricted to rows
    later: MarkerData  # restricted to rows, standardised like baseline
    n_excluded: int  # participants left out (no usable data for this model)
    excluded_reason: str

    @property
    def names(self) -> list[str]:
        return self.baseline.names

    @property
    def n(self) -> int:
        return len(self.rows)

    def notes(self) -> dict:
        b, w = self.baseline, self.later
        return {
            "participants_included": int(self.n),
            "participants_excluded": int(self.n_excluded),
            "excluded_reason": self.excluded_reason,
            "end_biomarker_week": int(self.week),
            "baseline_observed": int(np.sum(~b.missing & ~b.censored)),
            "baseline_imputed": int(b.n_missing),
            "baseline_censored": int(b.n_censored),
            f"week{self.week}_observed": int(np.sum(~w.missing & ~w.censored)),
            f"week{self.week}_imputed": int(w.n_missing),
            f"week{self.week}_censored": int(w.n_censored),
            "by_marker": {
                m: {
                    "baseline_imputed": int(b.missing[:, k].sum()),
                    "baseline_censored": int(b.censored[:, k].sum()),
                    f"week{self.week}_imputed": int(w.missing[:, k].sum()),
                    f"week{self.week}_censored": int(w.censored[:, k].sum()),
                }
                for k, m in enumerate(self.names)
            },
        }


def _subset(md: MarkerData, rows: np.ndarray) -> MarkerData:
    return replace(md, z=md.z[rows], missing=md.missing[rows], censored=md.censored[rows], z_upper=md.z_upper[rows])


def end_week(design: TrialDesign, model_name: str) -> int:
    """The biomarker week at the end of treatment (or the last one before it if none falls on it)."""
    if not design.later:
        raise ModelDataError(
            f"model '{model_name}' needs biomarkers at baseline and at a later week, but biomarkers.csv has "
            "only baseline values; add the end-of-treatment samples (see [biomarkers] weeks in dataset.toml)"
        )
    weeks = sorted(design.later)
    if design.meta.treatment_end in design.later:
        return int(design.meta.treatment_end)
    before = [w for w in weeks if w <= design.meta.treatment_end]
    return int(before[-1] if before else weeks[0])


def change_data(design: TrialDesign, model_name: str, also_keep: np.ndarray | None = None, reason: str | None = None) -> ChangeData:
    """Participants with any biomarker value (or flagged in `also_keep`), with their marker blocks."""
    base = design.require_markers(model_name)
    week = end_week(design, model_name)
    later = design.later[week]
    keep = (~base.missing).any(axis=1) | (~later.missing).any(axis=1)
    if also_keep is not None:
        keep = keep | np.asarray(also_keep, dtype=bool)
    rows = np.flatnonzero(keep)
    counts = np.bincount(design.arm_idx[rows], minlength=len(design.arms))
    if counts.min() < 2:
        has = (f"{counts[1]} in the treatment arm and {counts[0]} in the control arm" if len(counts) == 2
               else ", ".join(f"{n} in arm '{arm}'" for arm, n in zip(design.arms, counts)))
        raise ModelDataError(f"model '{model_name}' needs biomarker values from at least 2 participants per arm; biomarkers.csv has {has}")
    observed_later = ~later.missing[rows] & ~later.censored[rows]
    if not observed_later.any():
        raise ModelDataError(f"model '{model_name}' needs some week-{week} biomarker values above the detection limit; biomarkers.csv has none")
    return ChangeData(
        rows=rows,
        participants=design.participants[rows],
        week=week,
        baseline=_subset(base, rows),
        later=_subset(later, rows),
        n_excluded=int(len(keep) - len(rows)),
        excluded_reason=reason or "no biomarker value at any week (no serum): they would add only latent values",
    )


def add_residual_chol(name: str, names: list[str], sd_prior: Prior, eta: float):
    """Cholesky factor of an LKJ-correlated covariance over markers; stores `<name>_sd`, `<name>_corr`."""
    m = len(names)
    model = pm.modelcontext(None)
    for c in ("marker", "marker_other"):
        if c not in model.coords:
            model.add_coord(c, names)
    if m == 1:
        sd = rv(f"{name}_sd", sd_prior, dims="marker")
        return sd.reshape((1, 1))
    chol, corr, sds = pm.LKJCholeskyCov(f"{name}_chol", n=m, eta=eta, sd_dist=dist(sd_prior), compute_corr=True, store_in_trace=False)
    pm.Deterministic(f"{name}_sd", sds, dims="marker")
    pm.Deterministic(f"{name}_corr", corr, dims=("marker", "marker_other"))
    return chol


def add_latent_block(block: str, md: MarkerData, participants, mu, chol, observe: bool = True):
    """Add one participant x marker block z = mu + L e (see module doc); return the completed z.

    Observed values get an observed RV `<block>_<marker>` (dims `<block>_observed_<marker>`, the
    participant ids) unless `observe` is False, in which case the caller adds its own likelihood for
    them (the column then holds the data, and later markers condition on them as usual).
    Latent draws are named `marker_missing_<block>` and `marker_censored_<block>`.
    """
    n, m = md.z.shape
    model = pm.modelcontext(None)
    participants = np.asarray(participants)
    miss_i, miss_k = np.nonzero(md.missing)
    cens_i, cens_k = np.nonzero(md.censored)
    obs_mask = ~md.missing & ~md.censored
    eta = None
    u = None
    if len(miss_i):
        model.add_coord(f"{block}_missing_value", [f"{participants[i]}:{md.names[k]}" for i, k in zip(miss_i, miss_k)])
        eta = pm.Normal(f"marker_missing_{block}", 0.0, 1.0, dims=f"{block}_missing_value")
    if len(cens_i):
        model.add_coord(f"{block}_censored_value", [f"{participants[i]}:{md.names[k]}" for i, k in zip(cens_i, cens_k)])
        u = pm.Uniform(f"marker_censored_{block}", 0.0, 1.0, dims=f"{block}_censored_value")
    data = np.where(obs_mask, md.z, 0.0)
    eps_cols, cols = [], []
    for k in range(m):
        cond = mu[:, k]
        for j in range(k):
            cond = cond + chol[k, j] * eps_cols[j]
        s = chol[k, k]
        col = pt.as_tensor_variable(data[:, k])
        eps = (col - cond) / s
        rows_m = np.flatnonzero(miss_k == k)
        if len(rows_m):
            idx = miss_i[rows_m]
            e = eta[rows_m]
            eps = pt.set_subtensor(eps[idx], e)
            col = pt.set_subtensor(col[idx], cond[idx] + s * e)
        rows_c = np.flatnonzero(cens_k == k)
        if len(rows_c):
            idx = cens_i[rows_c]
            c = (md.z_upper[idx, k] - cond[idx]) / s
            log_below = std_normal_logcdf(c)
            e = std_normal_icdf(u[rows_c] * pt.exp(log_below))
            eps = pt.set_subtensor(eps[idx], e)
            col = pt.set_subtensor(col[idx], cond[idx] + s * e)
            pm.Potential(f"{block}_censored_{md.names[k]}", log_below.sum())
        obs_rows = np.flatnonzero(obs_mask[:, k])
        if observe and len(obs_rows):
            model.add_coord(f"{block}_observed_{md.names[k]}", participants[obs_rows])
            pm.Normal(f"{block}_{md.names[k]}", mu=cond[obs_rows], sigma=s, observed=md.z[obs_rows, k], dims=f"{block}_observed_{md.names[k]}")
        eps_cols.append(eps)
        cols.append(col)
    return pt.stack(cols, axis=1)


COVARIATE_MARKER_PRIOR = "covariate_marker_effect"


def change_priors(design: TrialDesign | None = None) -> dict[str, Prior]:
    """Priors of the biomarker-change blocks, on the standardised log scale (baseline mean 0, SD 1); with a
    design whose dataset declares covariates, also the covariates' prior."""
    covariate = {}
    if design is not None and design.covariate_names:
        covariate[COVARIATE_MARKER_PRIOR] = Prior(
            "Normal", {"mu": 0.0, "sigma": 0.5},
            "shift of the end-of-treatment standardised log marker per SD of a continuous covariate, or for a level of a categorical one "
            "against its first level: half a baseline SD is already large",
        )
    return covariate | {
        "marker_mean": Prior("Normal", {"mu": 0.0, "sigma": 1.0}, "baseline standardised log marker mean (0 by construction of the scale)"),
        "marker_sd": Prior("HalfNormal", {"sigma": 1.0}, "baseline standardised log marker SD (1 by construction)"),
        "marker_corr": Prior("LKJ", {"eta": 2.0}, "correlation between markers, mildly shrunk towards 0"),
        "end_intercept": Prior("Normal", {"mu": 0.0, "sigma": 1.0}, "end-of-treatment standardised log marker in the control arm at baseline 0"),
        "baseline_slope": Prior(
            "Normal", {"mu": 0.0, "sigma": 0.5}, "end-of-treatment log marker per SD of each baseline log marker: correlation-sized (own-marker stability ~0.5-0.7)"
        ),
        "nac_marker_effect": Prior(
            "Normal", {"mu": 0.0, "sigma": 0.5}, "NAC shift of the end-of-treatment log marker in baseline SDs: half an SD is already a large effect"
        ),
        "residual_sd": Prior("HalfNormal", {"sigma": 1.0}, "residual SD of the end-of-treatment standardised log marker"),
        "residual_corr": Prior("LKJ", {"eta": 2.0}, "correlation of the markers' residuals, mildly shrunk towards 0"),
    }


def used_priors(pri: dict[str, Prior], columns: np.ndarray, *names: str) -> dict[str, Prior]:
    """The priors a model built with these covariate columns uses: the covariate priors `names` only with columns."""
    return {k: v for k, v in pri.items() if len(columns) or k not in names}


def arm_data(cd: ChangeData, design: TrialDesign):
    """pm.Data 'arm_indicator' (participant x active_arm) of the participants entering the model: T_ia."""
    return pm.Data("arm_indicator", design.arm_indicator()[cd.rows], dims=("participant", "active_arm"))


def arm_sum(arm, effect, n_active: int):
    """sum_a T_ia effect[a] (participant, or participant x marker): arm the participant x active arm indicator, effect
    (active arm) or (active arm x marker). One product per active arm, so a two-arm trial computes T_i effect; with one
    active arm, a marker effect is broadcast against the indicator's single column (no indexing, so the graph and its
    gradient are those of T_i theta)."""
    def term(a):
        return arm[:, a][:, None] * effect[a][None, :] if effect.ndim > 1 else arm[:, a] * effect[a]

    if n_active == 1 and effect.ndim > 1:
        return pt.specify_broadcastable(arm, 1) * pt.specify_broadcastable(effect, 0)
    total = term(0)
    for a in range(1, n_active):
        total = total + term(a)
    return total


def add_change_regression(cd: ChangeData, pri: dict[str, Prior], arm, design: TrialDesign | None = None, columns=()):
    """Baseline block and the mean of the end-week markers: returns (z0, mu_end, nac_effect_std), the last per active arm
    and marker ('nac_marker_effect', active_arm x marker: theta_a, the shift in active arm a against control). arm: the
    participant x active arm indicator (`arm_data`). With covariate `columns` of `design.covariates`, adds their shift
    G x_i (pm.Data 'covariates', 'covariate_marker_effect')."""
    names = cd.names
    base_mean = rv("baseline_mean", pri["marker_mean"], dims="marker")
    base_chol = add_residual_chol("baseline", names, pri["marker_sd"], pri["marker_corr"].params["eta"])
    z0 = add_latent_block("baseline", cd.baseline, cd.participants, base_mean[None, :] + pt.zeros((cd.n, 1)), base_chol)
    intercept = rv("end_intercept", pri["end_intercept"], dims="marker")
    slope = rv("baseline_slope", pri["baseline_slope"], dims=("marker", "baseline_marker"))
    nac = rv("nac_marker_effect", pri["nac_marker_effect"], dims=("active_arm", "marker"))
    mu = intercept[None, :] + pt.dot(z0, slope.T) + arm_sum(arm, nac, len(pm.modelcontext(None).coords["active_arm"]))
    if len(columns):
        x = pm.Data("covariates", design.covariates[np.ix_(cd.rows, np.asarray(columns))], dims=("participant", COVARIATE_DIM))
        effect = rv(COVARIATE_MARKER_PRIOR, pri[COVARIATE_MARKER_PRIOR], dims=("marker", COVARIATE_DIM))
        mu = mu + pt.dot(x, effect.T)
    return z0, mu, nac


def block_coords(cd: ChangeData, design: TrialDesign | None = None, columns=()) -> dict:
    coords = {"participant": cd.participants, "marker": cd.names, "marker_other": cd.names, "baseline_marker": cd.names}
    if design is not None:
        coords["active_arm"] = design.active_arms
    if len(columns):
        coords[COVARIATE_DIM] = [design.covariate_names[j] for j in columns]
    return coords


def notes_text(notes: dict) -> str:
    w = notes["end_biomarker_week"]
    text = (
        f"biomarker participants: {notes['participants_included']} included, {notes['participants_excluded']} excluded "
        f"({notes['excluded_reason']}); baseline values {notes['baseline_observed']} observed, {notes['baseline_imputed']} imputed, "
        f"{notes['baseline_censored']} censored; week-{w} values {notes[f'week{w}_observed']} observed, {notes[f'week{w}_imputed']} imputed, "
        f"{notes[f'week{w}_censored']} censored"
    )
    shown = {"participants_included", "participants_excluded", "excluded_reason", "end_biomarker_week", "by_marker", "text"}
    shown |= {f"{p}_{s}" for p in ("baseline", f"week{w}") for s in ("observed", "imputed", "censored")}
    for key, value in notes.items():
        if key not in shown:
            text += f"; {key.replace('_', ' ')}: {value}"
    return text


def with_text(notes: dict) -> dict:
    """The notes plus a one-line `text` (fit.py prints it and stores the notes with the fit)."""
    notes["text"] = notes_text(notes)
    return notes
