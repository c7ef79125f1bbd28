"""The fast path: the headline model (and the treatment and null models, `build_trajectory_marginal`)
with the participant effects integrated out analytically.

With a Gaussian likelihood the participant effects b_i = (b0_i, b1_i) ~ N(0, S), S = L L',
enter the mean linearly through Z_i = [1, t1] (the participant's observed visits), so

    y_i ~ MvNormal(X_i c_i, Z_i S Z_i' + sigma^2 I)

exactly, where c_i = (level_i, change_i, followup_change_i) are the participant's fixed-part
coefficients on X_i = [1, t1, t2] (they include the site, arm and latent biomarker terms; the
biomarker block stays as it is: conditional on the completed markers z the model is still
Gaussian in b). With the Woodbury identity and the matrix determinant lemma, written with the
Cholesky factor L so that S is never inverted,

    M_i        = I_2 + L' Z_i'Z_i L / sigma^2
    log|V_i|   = 2 n_i log sigma + log|M_i|
    r'V_i^-1 r = r'r / sigma^2 - w' M_i^-1 w / sigma^4,     w = L' Z_i' r,  r = y_i - X_i c_i,

and r'r, Z_i'r only need per-participant sums of the visit data (X'X, X'y, y'y), computed once.
The log-density therefore costs O(participants) per gradient, with 2 x 2 algebra in closed
form, whatever the number of visits, and the sampler no longer has to explore 2 x n funnel-prone
participant coordinates.

Nothing a user sees is lost: after sampling, each posterior draw gets an exact draw of the
participant effects from their conditional posterior
    u_i | y, theta ~ N(M_i^-1 w / sigma^2, M_i^-1),   b_i = L u_i,
so (theta, b) is an exact draw from the joint posterior of the plain model. They are stored as
`participant_raw` (u) and `participant_effects` (b) with the plain model's names and dims.
The pointwise log-likelihood of `y` is then the same quantity the plain path stores: per visit,
conditional on the participant effects, log Normal(y_iw | mu_iw, sigma); the posterior
predictive draws y_rep_iw ~ Normal(mu_iw, sigma) likewise. (Grouped by
constant_data.obs_participant they give leave-one-participant-out LOO as on the plain path.)

The marginalisation is exact only for the Gaussian likelihood; Student-t and censored
likelihoods keep the plain path (`attach_fast_path` does nothing for them).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import arviz as az
import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from .design import TrialDesign
from .headline import NAME, add_effect_summaries, add_participant_covariance, add_population_terms, build_headline, default_priors
from .priors import resolve, rv

FIXED_TERMS = ["level", "change", "followup_change"]
FIXED_VAR = "participant_fixed"  # per-draw fixed-part coefficients c_i; used for recovery, then dropped
LOG2PI = float(np.log(2.0 * np.pi))
LOG_LIKELIHOOD_NOTE = (
    "pointwise per visit, conditional on the participant effects (drawn from their exact conditional "
    "posterior after sampling the marginal model): log Normal(y | mu, residual_sd), as on the plain path"
)


@dataclass(frozen=True)
class VisitStats:
    """Per-participant sums of the visit data on X = [1, t1, t2]: X'X, X'y, y'y and counts."""

    xx: np.ndarray  # participant x 3 x 3
    xy: np.ndarray  # participant x 3
    yy: np.ndarray  # participant
    n: np.ndarray  # participant (observed visits)


def visit_stats(design: TrialDesign) -> VisitStats:
    n_p = design.n_participants
    x = np.column_stack([np.ones_like(design.t1), design.t1, design.t2 if design.has_followup else np.zeros_like(design.t2)])
    pid = design.obs_participant
    xx = np.zeros((n_p, 3, 3))
    np.add.at(xx, pid, x[:, :, None] * x[:, None, :])
    xy = np.zeros((n_p, 3))
    np.add.at(xy, pid, x * design.y[:, None])
    yy = np.bincount(pid, weights=design.y**2, minlength=n_p).astype(float)
    n = np.bincount(pid, minlength=n_p).astype(float)
    return VisitStats(xx=xx, xy=xy, yy=yy, n=n)


def marginal_loglik(stats: VisitStats, c, chol, sigma):
    """Per-participant log marginal likelihood (pytensor): c participant x 3, chol 2 x 2 lower, sigma scalar."""
    xx = pt.as_tensor_variable(stats.xx)
    xy = pt.as_tensor_variable(stats.xy)
    gc = (xx * c[:, None, :]).sum(axis=2)  # X'X c
    rr = stats.yy - 2.0 * (c * xy).sum(axis=1) + (c * gc).sum(axis=1)  # r'r
    zr = xy[:, :2] - gc[:, :2]  # Z'r
    a, b, d = (np.ascontiguousarray(stats.xx[:, i, j]) for i, j in ((0, 0), (0, 1), (1, 1)))  # Z'Z
    l00, l10, l11 = chol[0, 0], chol[1, 0], chol[1, 1]
    s2 = sigma**2
    m00 = 1.0 + (a * l00**2 + 2.0 * b * l00 * l10 + d * l10**2) / s2
    m01 = l11 * (b * l00 + d * l10) / s2
    m11 = 1.0 + d * l11**2 / s2
    det = m00 * m11 - m01**2
    w0 = l00 * zr[:, 0] + l10 * zr[:, 1]
    w1 = l11 * zr[:, 1]
    wmw = (m11 * w0**2 - 2.0 * m01 * w0 * w1 + m00 * w1**2) / det
    quad = rr / s2 - wmw / s2**2
    return -0.5 * (stats.n * LOG2PI + 2.0 * stats.n * pt.log(sigma) + pt.log(det) + quad)


def build_headline_marginal(design: TrialDesign, priors: dict | None = None) -> pm.Model:
    """The headline model (Gaussian likelihood) with the participant effects integrated out."""
    md = design.require_markers(NAME)
    pri = resolve(default_priors(design), priors)
    stats = visit_stats(design)
    coords = design.coords()
    coords["participant_term"] = FIXED_TERMS
    with pm.Model(coords=coords) as model:
        treated = pm.Data("treated", design.treated, dims="participant")
        pm.Data("obs_participant", design.obs_participant, dims="obs")
        pm.Data("t1", design.t1, dims="obs")
        pm.Data("t2", design.t2, dims="obs")
        pm.Data("obs_week", design.obs_week, dims="obs")

        z, intercept, time_change, nac_change, prognostic, moderation, site = add_population_terms(design, md, pri)
        chol = add_participant_covariance(pri)

        level = intercept + site + pt.dot(z, prognostic)
        change1 = time_change[0] + nac_change[0] * treated + pt.dot(z, moderation)
        change2 = time_change[1] + nac_change[1] * treated if design.has_followup else pt.zeros(design.n_participants)
        fixed = pm.Deterministic(FIXED_VAR, pt.stack([level, change1, change2], axis=1), dims=("participant", "participant_term"))
        sigma = rv("residual_sd", pri["residual_sd"])
        pm.Potential("y_marginal", marginal_loglik(stats, fixed, chol, sigma).sum())

        add_effect_summaries(design, nac_change, time_change)
        per_doubling = np.log(2.0) / md.log_scale
        pm.Deterministic("moderation_per_doubling", moderation * per_doubling, dims="marker")
        pm.Deterministic("prognostic_per_doubling", prognostic * per_doubling, dims="marker")
    model.priors_used = pri
    model.marginal_design = design
    model.fused_layout = partial(_fused_layout_or_none, model, design, pri)
    return model


def _fused_layout_or_none(model: pm.Model, design: TrialDesign, priors: dict):
    """The fused log density's layout for this model (models/fused.py), or None where it does not apply."""
    from .fused import Unsupported, fused_layout

    try:
        return fused_layout(model, design, priors)
    except Unsupported:
        return None


def build_trajectory_marginal(design: TrialDesign, name: str, priors: dict | None = None, arm: bool = True) -> pm.Model:
    """The null (arm=False) or treatment (arm=True) trajectory model, Gaussian, participant effects integrated out.

    Same variables, names and dims as models/trajectory.build_trajectory with markers=False and a
    straight treatment phase (the only members whose fixed part is linear in (1, t1, t2)).
    """
    from .trajectory import _add_summaries, add_time_terms, add_visit_data, trajectory_priors

    pri = resolve(trajectory_priors(design), priors)
    stats = visit_stats(design)
    coords = design.coords()
    coords.pop("marker", None)
    coords["participant_term"] = FIXED_TERMS
    with pm.Model(coords=coords) as model:
        _, _, _, treated = add_visit_data(design, arm)

        intercept, time_change, nac_change, site = add_time_terms(design, pri, arm)
        chol = add_participant_covariance(pri)

        zeros = pt.zeros(design.n_participants)
        level = intercept + site + zeros
        change1 = time_change[0] + (nac_change[0] * treated if arm else zeros)
        if design.has_followup:
            change2 = time_change[1] + (nac_change[1] * treated if arm else zeros)
        else:
            change2 = zeros
        fixed = pm.Deterministic(FIXED_VAR, pt.stack([level, change1, change2], axis=1), dims=("participant", "participant_term"))
        sigma = rv("residual_sd", pri["residual_sd"])
        pm.Potential("y_marginal", marginal_loglik(stats, fixed, chol, sigma).sum())
        _add_summaries(design, time_change, nac_change, None, None)
    model.priors_used = pri
    model.marginal_design = design
    model.fused_layout = partial(_fused_layout_or_none, model, design, pri)
    return model


def attach_fast_path(model: pm.Model, design: TrialDesign, priors: dict | None = None, likelihood: str = "normal") -> pm.Model:
    """Give a plain headline model its exact fast variant (Gaussian likelihood only); returns the model."""
    if likelihood == "normal":
        model.fast_variant = partial(build_headline_marginal, design, priors)
    return model


def build_headline_auto(design: TrialDesign, priors: dict | None = None, likelihood: str = "normal") -> pm.Model:
    """The plain headline model, carrying its marginal fast variant when that is exact (normal likelihood).

    `models.sampling.sample_all` samples the fast variant unless SamplerSettings(fast=False).
    """
    return attach_fast_path(build_headline(design, priors, likelihood), design, priors, likelihood)



# ---------------------------------------------------------------- recovery after sampling


def _chol_from_posterior(post: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sd = post["participant_sd"].values  # chain, draw, 2
    rho = post["participant_corr"].values
    return sd[..., 0], sd[..., 1] * rho, sd[..., 1] * np.sqrt(np.clip(1.0 - rho**2, 0.0, None))


def recover_participant_effects(idata: az.InferenceData, design: TrialDesign, seed: int) -> None:
    """Draw (u_i, b_i) | y, theta for every posterior draw; add participant_raw/effects to idata.posterior."""
    stats = visit_stats(design)
    post = idata.posterior
    c = post[FIXED_VAR].values  # chain, draw, participant, 3
    sigma = post["residual_sd"].values[..., None]
    l00, l10, l11 = (v[..., None] for v in _chol_from_posterior(post))
    gc = np.einsum("pkj,cdpj->cdpk", stats.xx[:, :2, :], c, optimize=True)  # (X'X c)[:2]; optimize: a BLAS path, 10x faster
    zr = stats.xy[:, :2] - gc
    a, b, d = stats.xx[:, 0, 0], stats.xx[:, 0, 1], stats.xx[:, 1, 1]
    s2 = sigma**2
    m00 = 1.0 + (a * l00**2 + 2.0 * b * l00 * l10 + d * l10**2) / s2
    m01 = l11 * (b * l00 + d * l10) / s2
    m11 = 1.0 + d * l11**2 / s2
    det = m00 * m11 - m01**2
    w0 = (l00 * zr[..., 0] + l10 * zr[..., 1]) / s2
    w1 = l11 * zr[..., 1] / s2
    mean0 = (m11 * w0 - m01 * w1) / det  # M^-1 w / sigma^2
    mean1 = (m00 * w1 - m01 * w0) / det
    r00 = np.sqrt(m00)  # M = R R', R lower; u = mean + R'^-1 eps has covariance M^-1
    r10 = m01 / r00
    r11 = np.sqrt(m11 - r10**2)
    eps = np.random.default_rng(seed).standard_normal(mean0.shape + (2,))
    x1 = eps[..., 1] / r11
    x0 = (eps[..., 0] - r10 * x1) / r00
    u = np.stack([mean0 + x0, mean1 + x1], axis=-1)
    effects = np.stack([l00 * u[..., 0], l10 * u[..., 0] + l11 * u[..., 1]], axis=-1)
    dims = ("chain", "draw", "participant", "participant_effect")
    coords = {"participant": post["participant"].values, "participant_effect": ["intercept", "change"]}
    post["participant_raw"] = xr.DataArray(u, dims=dims, coords=coords)
    post["participant_effects"] = xr.DataArray(effects, dims=dims, coords=coords)


def visit_means(idata: az.InferenceData, design: TrialDesign, chain: int) -> tuple[np.ndarray, np.ndarray]:
    """mu (draw x obs) of one chain, conditional on the participant effects, and residual_sd (draw x 1)."""
    post = idata.posterior
    c = post[FIXED_VAR].values[chain]
    eff = post["participant_effects"].values[chain]
    pid = design.obs_participant
    t2 = design.t2 if design.has_followup else np.zeros_like(design.t2)
    mu = c[:, pid, 0] + eff[:, pid, 0] + (c[:, pid, 1] + eff[:, pid, 1]) * design.t1 + c[:, pid, 2] * t2
    return mu, post["residual_sd"].values[chain][:, None]


def add_pointwise_groups(idata: az.InferenceData, design: TrialDesign, pred_seed: int) -> dict[str, float]:
    """log_likelihood['y'] and posterior_predictive['y'] per visit, conditional on the recovered effects."""
    import time

    post = idata.posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    n_obs = len(design.y)
    ll = np.empty((n_chain, n_draw, n_obs))
    rep = np.empty((n_chain, n_draw, n_obs))
    rng = np.random.default_rng(pred_seed)
    t_ll = t_pp = 0.0
    for ch in range(n_chain):
        t0 = time.perf_counter()
        mu, sigma = visit_means(idata, design, ch)
        resid = (design.y - mu) / sigma
        ll[ch] = -0.5 * (LOG2PI + resid**2) - np.log(sigma)
        t1 = time.perf_counter()
        rep[ch] = mu + sigma * rng.standard_normal((n_draw, n_obs))
        t_ll += t1 - t0
        t_pp += time.perf_counter() - t1
    coords = {"chain": post["chain"].values, "draw": post["draw"].values, "obs": np.arange(n_obs)}
    dims = ("chain", "draw", "obs")
    for group, arr in (("log_likelihood", ll), ("posterior_predictive", rep)):
        ds = xr.Dataset({"y": xr.DataArray(arr, dims=dims, coords=coords)})
        if group in idata.groups():
            del idata[group]
        idata.add_groups({group: ds})
    return {"log_likelihood_s": t_ll, "posterior_predictive_s": t_pp}


def finish_marginal_fit(idata: az.InferenceData, design: TrialDesign, recover_seed: int, pred_seed: int) -> dict[str, float]:
    """Everything after sampling the marginal model: effects, log-likelihood, predictions; drops the helper."""
    import time

    t0 = time.perf_counter()
    recover_participant_effects(idata, design, recover_seed)
    timings = {"recover_s": time.perf_counter() - t0}
    timings.update(add_pointwise_groups(idata, design, pred_seed))
    del idata.posterior[FIXED_VAR]
    if "participant_term" in idata.posterior.coords:
        idata.posterior = idata.posterior.drop_vars("participant_term")
    idata.posterior.attrs["fit_path"] = "marginal"
    idata.log_likelihood.attrs["y"] = LOG_LIKELIHOOD_NOTE
    return timings
