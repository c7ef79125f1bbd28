"""A Bayesian MMRM: the trial statistician's primary analysis, as a Bayesian model.

Change from baseline of participant i at post-baseline visit v (weeks after week 0):

    c_iv = y_iv - y_i0
    c_i  ~ MvNormal(mu_i, Sigma) over the visits participant i attended (marginal: MAR-valid)
    mu_iv = a_v + site_s(i) + sum_a d_av T_ia + b_v (y_i0 - ybar_0) [+ sum_j g_j x_ij]
    Sigma = diag(s) Omega diag(s), unstructured: Omega ~ LKJ(eta), s_v ~ HalfNormal

- a_v ('visit_mean'): control-arm mean change at visit v for the average baseline (and average site
  and covariates);
- d_av ('nac_visit_effect', dims active_arm x visit): active arm a - control difference at visit v
  (arm x visit); T_ia = 1 when participant i is in active arm a (pm.Data 'arm_indicator', participant x
  active_arm; a control participant's row is 0), one active arm for a two-arm trial;
- b_v ('baseline_slope'): baseline x visit (regression to the mean differs by visit);
- site offsets sum to zero (site as a fixed factor, as in the frequentist MMRM);
- g_j ('covariate_effect', dims covariate): the baseline covariates declared in dataset.toml
  (models/design.py: continuous ones per SD, categorical ones against their first level, all
  centred), main effects common to every visit, as in the usual primary-analysis MMRM; by default
  every declared one (`covariates`); absent when the dataset declares none.
'nac_effect' (dims active_arm x week) and 'placebo_change' (dims week), 0 at week 0, feed the generic
estimates table: the mean change of active arm a at week w is placebo_change[w] + nac_effect[a, w].

Participants with no post-baseline visit carry no information in a change-from-baseline model and
are left out, as in the frequentist analysis. Missing visits are integrated out: each participant
contributes the multivariate normal density of the visits they attended. Participants are grouped
by missingness pattern: all drop-out (monotone) patterns share one triangular solve with Sigma's
Cholesky factor (forward substitution only looks back); a pattern with an intermittent gap uses
the Cholesky factor of its own block of Sigma. The density is stored per observation as the
sequential conditional log density of a visit given the participant's earlier attended visits
(the standardised innovation of the triangular solve), so the values of one participant sum to
its marginal log density: pointwise LOO predicts a visit from the earlier ones, and summing per
participant ('obs_participant' in constant_data) gives leave-one-participant-out.
Normal likelihood only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.tensor.slinalg import cholesky, solve_triangular

from maths.gaussian import chol_to_cov, packed_chol_to_cov, sd_corr_to_cov, tril_unpack

from .contract import VISIT_CHANGES, BuiltModel, ImpliedCovariance
from .design import COVARIATE_DIM, ModelDataError, TrialDesign, select_covariates
from .priors import CONTROL_CHANGE, Prior, points, rv, rv_with_element, split_control

NAME = "mmrm"
DESCRIPTION = "Bayesian MMRM: change from baseline by visit, arm x visit, baseline x visit, unstructured covariance (LKJ); no biomarkers needed"
LIKELIHOODS = ("normal",)
_LOG_2PI = float(np.log(2 * np.pi))
OFF_EFFECT = "off_treatment_effect"  # the retrieved-dropout term (models/mmrm_retrieved.py), dims arm x visit


def default_priors(design: TrialDesign) -> dict[str, Prior]:
    r = design.score_range
    return {
        "visit_mean": Prior("Normal", {"mu": 0.0, "sigma": 0.25 * r}, f"control mean change at each visit: SD {points(0.25, r)}, so changes of half the scale are plausible a priori"),
        "nac_visit_effect": Prior("Normal", {"mu": 0.0, "sigma": 0.1 * r}, f"treatment - control difference at each visit: SD {points(0.1, r)}; effects of antidepressants are usually smaller"),
        "baseline_slope": Prior("Normal", {"mu": 0.0, "sigma": 0.5}, "change per point of baseline score: regression to the mean gives about -0.2 to -0.5"),
        "site": Prior("ZeroSumNormal", {"sigma": 0.1 * r}, f"site offsets (fixed factor) sum to zero; SD {points(0.1, r)}, wide enough to act as fixed effects"),
        "visit_sd": Prior("HalfNormal", {"sigma": 0.15 * r}, f"SD of the change at each visit: scale {points(0.15, r)}"),
        "visit_corr": Prior("LKJ", {"eta": 1.0}, "unstructured correlation across visits; eta = 1 is uniform over correlation matrices"),
        **({"covariate_effect": Prior(
            "Normal", {"mu": 0.0, "sigma": 0.1 * r},
            f"change at every visit per SD of a continuous covariate, or for a level of a categorical one against its first "
            f"level: SD {points(0.1, r)}, as the treatment difference; baseline characteristics such as age or sex move "
            "the change by a few points at most",
        )} if design.covariate_names else {}),
    }


@dataclass
class MMRMData:
    """Change from baseline in wide and long (pattern-sorted) form."""

    visits: np.ndarray  # post-baseline weeks
    rows: np.ndarray  # index into design.participants of each included participant
    baseline: np.ndarray  # week-0 score per included participant
    baseline_center: float
    change: np.ndarray  # included participant x visit, NaN where not attended
    obs_row: np.ndarray  # long: included-participant index of each observation
    obs_visit: np.ndarray  # long: visit index
    obs_change: np.ndarray  # long: the change from baseline
    patterns: list  # (visit indices, start in long arrays, participants, is_prefix)
    n_excluded: int  # participants with no post-baseline visit
    obs_off: np.ndarray | None = None  # long: 1.0 at a visit after the participant stopped treatment early (None without flags)


def mmrm_data(design: TrialDesign) -> MMRMData:
    weeks = design.weeks
    if len(weeks) < 2:
        raise ModelDataError("the MMRM needs at least one post-baseline visit in the schedule")
    n, nw = design.n_participants, len(weeks)
    wide = np.full((n, nw), np.nan)
    col = np.searchsorted(weeks, design.obs_week.astype(int))
    wide[design.obs_participant, col] = design.y
    if weeks[0] != 0 or np.isnan(wide[:, 0]).any():
        raise ModelDataError("the MMRM needs every participant's week-0 score (change from baseline)")
    change_all = wide[:, 1:] - wide[:, [0]]
    keep = ~np.isnan(change_all).all(axis=1)
    without = [arm for a, arm in enumerate(design.arms) if not (design.arm_idx[keep] == a).any()]
    if keep.sum() < 4 or without:
        raise ModelDataError("the MMRM needs post-baseline visits from at least 4 participants in "
                             + ("both arms" if len(design.arms) == 2 else "every arm")
                             + (f"; arm(s) {without} have none" if without else ""))
    rows = np.flatnonzero(keep)
    change = change_all[keep]
    observed = ~np.isnan(change)
    keys = [tuple(np.flatnonzero(o)) for o in observed]
    order = sorted(set(keys), key=lambda k: (-len(k), k))
    obs_row, obs_visit, obs_change, patterns = [], [], [], []
    start = 0
    for key in order:
        members = np.array([i for i, k in enumerate(keys) if k == key])
        vis = np.array(key, dtype=int)
        rr = np.repeat(members, len(vis))
        vv = np.tile(vis, len(members))
        obs_row.append(rr)
        obs_visit.append(vv)
        obs_change.append(change[rr, vv])
        patterns.append((vis, start, len(members), bool(np.array_equal(vis, np.arange(len(vis))))))
        start += len(rr)
    base = wide[keep, 0]
    obs_row, obs_visit = np.concatenate(obs_row), np.concatenate(obs_visit)
    off = None if design.off_treatment is None else design.off_treatment[rows[obs_row], obs_visit + 1].astype(float)
    return MMRMData(
        visits=weeks[1:],
        rows=rows,
        baseline=base,
        baseline_center=float(base.mean()),
        change=change,
        obs_row=obs_row,
        obs_visit=obs_visit,
        obs_change=np.concatenate(obs_change),
        patterns=patterns,
        n_excluded=int(n - keep.sum()),
        obs_off=off,
    )


def _conditional_logp(patterns, n_visits: int):
    """Per-observation sequential conditional normal log density over each participant's attended visits.

    Forward substitution only looks back, so for drop-out (prefix) patterns one triangular solve with
    Sigma's Cholesky factor L, on residuals padded with zeros after drop-out, gives every participant's
    innovations at once. A pattern with an intermittent gap uses the Cholesky factor of its own
    observed block of Sigma.
    """
    prefix = [(vis, start, n_p) for vis, start, n_p, is_prefix in patterns if is_prefix]
    gaps = [(vis, start, n_p) for vis, start, n_p, is_prefix in patterns if not is_prefix]
    # the prefix patterns, laid out as one (participant, visit) matrix padded with zeros
    n_pre = sum(n_p for _, _, n_p in prefix)
    pre_src = np.concatenate([np.arange(start, start + n_p * len(vis)) for vis, start, n_p in prefix]) if prefix else np.zeros(0, int)
    pre_row = np.concatenate([np.repeat(np.arange(n_p), len(vis)) + sum(q[2] for q in prefix[:i]) for i, (vis, _, n_p) in enumerate(prefix)]) if prefix else pre_src
    pre_col = np.concatenate([np.tile(vis, n_p) for vis, _, n_p in prefix]) if prefix else pre_src

    def innovations(lower, r):
        e = solve_triangular(lower, r.T, lower=True)  # (visit, participant)
        return -0.5 * e.T**2 - pt.log(pt.diag(lower))[None, :] - 0.5 * _LOG_2PI

    def logp(value, mu, chol):
        chol = chol[(0,) * (chol.ndim - 2)]  # PyMC adds a length-1 batch dim to the core (v, v) parameter
        resid = value - mu
        out = pt.zeros_like(resid)
        if prefix:
            wide = pt.zeros((n_pre, n_visits))[pre_row, pre_col].set(resid[pre_src])
            out = out[pre_src].set(innovations(chol, wide)[pre_row, pre_col])
        if gaps:
            cov = pt.dot(chol, chol.T)
            for vis, start, n_p in gaps:
                k = len(vis)
                r = resid[start : start + n_p * k].reshape((n_p, k))
                lp = innovations(cholesky(cov[vis][:, vis]), r)
                out = out[start : start + n_p * k].set(lp.reshape((n_p * k,)))
        return out

    return logp


def draw_changes(mu: np.ndarray, lower: np.ndarray, n_rows: int, obs_row: np.ndarray, obs_visit: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Draws of every attended visit from each participant's joint normal N(mu_i, L L') over the visits: mu (..., obs)
    in the long order of `mmrm_data`, lower (..., visit, visit) Sigma's Cholesky factor; leading dims are draws. A
    participant's attended visits are the matching entries of one draw of the whole vector, so each pattern's
    draws have Sigma's block of its visits as their covariance. The model's random (prior and posterior predictive)."""
    nv = lower.shape[-1]
    z = rng.standard_normal(lower.shape[:-2] + (n_rows, nv))
    eps = z @ np.swapaxes(lower, -1, -2)
    return mu + np.take(eps.reshape(eps.shape[:-2] + (n_rows * nv,)), obs_row * nv + obs_visit, axis=-1)


def _random(n_rows: int, obs_row: np.ndarray, obs_visit: np.ndarray):
    """The CustomDist's random: `draw_changes` of one draw (PyMC passes Sigma's factor with a length-1 batch dim)."""

    def random(mu, chol, rng=None, size=None):
        chol = np.asarray(chol)
        return draw_changes(np.asarray(mu), chol.reshape(chol.shape[-2:]), n_rows, obs_row, obs_visit,
                            rng if rng is not None else np.random.default_rng())

    return random


def control_visit(design: TrialDesign, d: MMRMData | None = None) -> int:
    """Position among the post-baseline visits (dim 'visit') of the end of treatment, where a prior on the control
    arm's mean change (models.priors.CONTROL_CHANGE) applies."""
    visits = (mmrm_data(design) if d is None else d).visits
    hit = np.flatnonzero(visits == design.meta.treatment_end)
    if not len(hit):
        raise ModelDataError(f"the end of treatment (week {design.meta.treatment_end}) is not a post-baseline visit of the MMRM")
    return int(hit[0])


def covariate_columns(posterior, design: TrialDesign) -> np.ndarray:
    """The columns of `design.covariates` a fit adjusted for, from its 'covariate' coordinate (none without it)."""
    if "covariate_effect" not in posterior:
        return np.zeros(0, dtype=int)
    names = [str(c) for c in posterior["covariate_effect"][COVARIATE_DIM].values]
    unknown = [c for c in names if c not in design.covariate_names]
    if unknown:
        raise ValueError(f"the fit adjusted for covariate columns {unknown} that the design does not have ({design.covariate_names})")
    return np.array([design.covariate_names.index(c) for c in names], dtype=int)


def covariate_shift(posterior, design: TrialDesign, rows: np.ndarray) -> np.ndarray | float:
    """sum_j g_j x_ij (chain x draw x len(rows)) of the participants `rows` (indices into the design), or 0.0 for
    a fit without covariates: the covariates' part of the mean change, the same at every visit."""
    columns = covariate_columns(posterior, design)
    if not len(columns):
        return 0.0
    effect = posterior["covariate_effect"].transpose("chain", "draw", COVARIATE_DIM).values
    return np.einsum("cdj,rj->cdr", effect, design.covariates[np.ix_(np.asarray(rows), columns)])


def arm_position(design: TrialDesign, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position among the active arms, 1.0 for an active arm's participant and 0.0 for a control one) of the
    participants `rows`: d_av T_ia summed over a is nac_visit_effect[position, v] * active (position 0 for control)."""
    idx = design.arm_idx[np.asarray(rows)]
    return np.maximum(idx - 1, 0), (idx > 0).astype(float)


def mean_change(posterior, design: TrialDesign, d: MMRMData | None = None) -> np.ndarray:
    """mu of every observation (chain x draw x obs, the long pattern-sorted order of `mmrm_data`) from the posterior, in numpy."""
    d = d if d is not None else mmrm_data(design)
    get = lambda name: posterior[name].transpose("chain", "draw", ...).values  # noqa: E731
    position, active = arm_position(design, d.rows[d.obs_row])
    base = (d.baseline - d.baseline_center)[d.obs_row]
    v = d.obs_visit
    nac = posterior["nac_visit_effect"].transpose("chain", "draw", "active_arm", ...).values
    mu = get("visit_mean")[..., v] + nac[..., position, v] * active + get("baseline_slope")[..., v] * base
    if "site_effect" in posterior:
        mu = mu + get("site_effect")[..., design.site_idx[d.rows][d.obs_row]]
    shift = covariate_shift(posterior, design, d.rows)
    if np.ndim(shift):
        mu = mu + shift[..., d.obs_row]
    if OFF_EFFECT in posterior:  # mmrm_retrieved: the off-treatment shift of arm x visit at visits after stopping treatment
        if d.obs_off is None:
            raise ValueError(f"the fit has '{OFF_EFFECT}' but the design has no off_treatment flags: fit and data differ")
        off = posterior[OFF_EFFECT].transpose("chain", "draw", "arm", ...).values
        mu = mu + off[..., design.arm_idx[d.rows][d.obs_row], v] * d.obs_off
    return mu


def visit_covariance(posterior, nv: int | None = None) -> np.ndarray:
    """Sigma, the MMRM's covariance of a participant's changes over the post-baseline visits, per draw
    (chain x draw x visit x visit): L L' from the packed Cholesky factor `visit_chol`, or, for a posterior
    without it, from `visit_sd` and `visit_corr`."""
    if "visit_chol" in posterior:
        packed = posterior["visit_chol"].transpose("chain", "draw", ...).values
        nv = nv if nv is not None else int(round((np.sqrt(8 * packed.shape[-1] + 1) - 1) / 2))
        return packed_chol_to_cov(packed, nv)
    missing = [v for v in ("visit_sd", "visit_corr") if v not in posterior]
    if missing:
        raise ValueError(f"the MMRM posterior has neither 'visit_chol' nor {missing}: it is not a fit of the MMRM")
    return sd_corr_to_cov(posterior["visit_sd"].transpose("chain", "draw", ...).values,
                          posterior["visit_corr"].transpose("chain", "draw", ...).values)


def implied_covariance(posterior, design: TrialDesign) -> ImpliedCovariance:
    """The MMRM's answer to ModelSpec.score_covariance: Sigma over the post-baseline weeks, the same for everyone."""
    weeks = np.asarray(design.weeks[1:], dtype=int)
    return ImpliedCovariance(weeks, "change", visit_covariance(posterior, len(weeks)))


def pointwise_logp(posterior, design: TrialDesign, mu: np.ndarray | None = None, d: MMRMData | None = None) -> dict[str, np.ndarray]:
    """The pointwise log-likelihood of 'change' (chain x draw x obs) from the posterior, in numpy.

    The same densities as the model's CustomDist (`_conditional_logp`): per observation, the
    conditional normal density of the visit given the participant's earlier attended visits, from the
    Cholesky factor of the pattern's block of Sigma (for a drop-out pattern, the leading block of
    Sigma's own factor); the mean from the same coefficients. tests/test_mmrm.py checks it against
    PyMC's compute_log_likelihood. mu: `mean_change` of the same posterior, when at hand; d: `mmrm_data(design)`.
    """
    d = mmrm_data(design) if d is None else d
    nv = len(d.visits)
    mu = mean_change(posterior, design, d) if mu is None else mu
    chol = tril_unpack(posterior["visit_chol"].transpose("chain", "draw", ...).values, nv)
    resid = d.obs_change - mu
    out = np.empty_like(resid)
    cov = None
    for vis, start, n_p, is_prefix in d.patterns:
        k = len(vis)
        if is_prefix:
            lower = chol[..., :k, :k]
        else:
            cov = chol_to_cov(chol) if cov is None else cov
            lower = np.linalg.cholesky(cov[..., vis[:, None], vis[None, :]])
        block = slice(start, start + n_p * k)
        r = resid[..., block].reshape(resid.shape[:-1] + (n_p, k))
        lp = r @ np.swapaxes(np.linalg.inv(lower), -1, -2)  # e = L^-1 r per participant (a BLAS product per draw)
        # -0.5 e^2 - log L_jj - 0.5 log 2 pi, in place
        lp *= lp
        lp *= -0.5
        lp -= np.log(np.diagonal(lower, axis1=-2, axis2=-1))[..., None, :]
        lp -= 0.5 * _LOG_2PI
        out[..., block] = lp.reshape(resid.shape[:-1] + (n_p * k,))
    return {"change": out}


def build_mmrm(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal",
               covariates: bool | list[str] | None = True, off_treatment: Prior | None = None) -> BuiltModel:
    """The MMRM of the module docstring. covariates: the baseline covariates declared in dataset.toml to adjust for:
    True (the default) all of them, False none, or a list of their names (models/design.select_covariates).
    off_treatment: the prior of OFF_EFFECT, which adds theta[arm, visit] at the visits after a participant stopped the
    randomised treatment early (models/mmrm_retrieved.py builds it so); None: no such term."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"the MMRM supports likelihoods {LIKELIHOODS}, not '{likelihood}'")
    d = mmrm_data(design)
    columns = select_covariates(design, covariates)
    pri, control = split_control(default_priors(design), priors)
    nv = len(d.visits)
    primary = control_visit(design, d) if control is not None else None
    site_idx = design.site_idx[d.rows]
    coords = {
        "participant": design.participants[d.rows],
        "active_arm": design.active_arms,
        "site": design.sites,
        "week": design.weeks,
        "visit": d.visits,
        "visit2": d.visits,
        "obs": np.arange(len(d.obs_change)),
    }
    if len(columns):
        coords[COVARIATE_DIM] = [design.covariate_names[j] for j in columns]
    if off_treatment is not None:
        coords["arm"] = design.arms
    with pm.Model(coords=coords) as model:
        pid = pm.Data("obs_participant", d.obs_row, dims="obs")
        vid = pm.Data("obs_visit", d.obs_visit, dims="obs")
        pm.Data("obs_week", d.visits[d.obs_visit], dims="obs")
        arm = pm.Data("arm_indicator", design.arm_indicator()[d.rows], dims=("participant", "active_arm"))
        base = pm.Data("baseline_centered", d.baseline - d.baseline_center, dims="participant")

        if control is None:
            visit_mean = rv("visit_mean", pri["visit_mean"], dims="visit")
        else:  # a MAP prior on the control arm's mean change at the end of treatment (models.priors.CONTROL_CHANGE)
            visit_mean = rv_with_element("visit_mean", pri["visit_mean"], control, primary, nv, dims="visit")
        nac = rv("nac_visit_effect", pri["nac_visit_effect"], dims=("active_arm", "visit"))
        slope = rv("baseline_slope", pri["baseline_slope"], dims="visit")
        mu = visit_mean[vid] + (nac.T[vid] * arm[pid]).sum(axis=1) + slope[vid] * base[pid]
        if len(design.sites) > 1:
            site = rv("site_effect", pri["site"], dims="site")
            mu = mu + site[site_idx][pid]
        if len(columns):
            x = pm.Data("covariates", design.covariates[np.ix_(d.rows, columns)], dims=("participant", COVARIATE_DIM))
            effect = rv("covariate_effect", pri["covariate_effect"], dims=COVARIATE_DIM)
            mu = mu + pt.dot(x, effect)[pid]
        if off_treatment is not None:  # retrieved dropouts: arm x visit shift of the visits after stopping treatment early
            off = pm.Data("obs_off_treatment", d.obs_off, dims="obs")
            mu = mu + rv(OFF_EFFECT, off_treatment, dims=("arm", "visit"))[design.arm_idx[d.rows][d.obs_row], vid] * off
        sd_prior = pri["visit_sd"]
        chol, corr, sds = pm.LKJCholeskyCov(
            "visit_chol",
            n=nv,
            eta=pri["visit_corr"].params["eta"],
            sd_dist=getattr(pm, sd_prior.dist).dist(**sd_prior.params, shape=nv),
            compute_corr=True,
            store_in_trace=False,
        )
        pm.Deterministic("visit_sd", sds, dims="visit")
        pm.Deterministic("visit_corr", corr, dims=("visit", "visit2"))
        pm.CustomDist(
            "change",
            mu,
            chol,
            logp=_conditional_logp(d.patterns, nv),
            random=_random(len(d.rows), d.obs_row, d.obs_visit),
            signature="(),(v,v)->()",
            observed=d.obs_change,
            dims="obs",
        )
        zero = pt.zeros(1)
        pm.Deterministic("nac_effect", pt.concatenate([pt.zeros((design.n_active, 1)), nac], axis=1), dims=("active_arm", "week"))
        pm.Deterministic("placebo_change", pt.concatenate([zero, visit_mean]), dims="week")
    unused = ({"site"} if len(design.sites) < 2 else set()) | ({"covariate_effect"} if not len(columns) else set())
    used = {k: v for k, v in pri.items() if k not in unused}
    if control is not None:
        used[CONTROL_CHANGE] = control
    return BuiltModel(
        NAME, model, design, used, ("change",), VISIT_CHANGES, fused_kernel="mmrm", pointwise=partial(pointwise_logp, design=design)
    )
