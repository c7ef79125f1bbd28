"""After sampling a marginal trajectory model: the participant effects, the pointwise log-likelihood and the predictions.

The maths of the marginal model is in models/marginal.py. Here each posterior draw gets an exact
draw of the participant effects from their conditional posterior, so (theta, b) is a draw from the
joint posterior of the plain model; then the pointwise log-likelihood of 'y' (per visit,
conditional on the participant effects) and the posterior predictive are computed with numpy. The
fixed-part coefficients they start from are computed from the posterior by the marginal model's
graph (`fixed_part`), never taken from the sampler, so a saved fit, whose file holds only the
sampled parameters, is completed with exactly the same numbers (inference/storage.py). The
InferenceData then has the plain model's variables, names and dims. The fixed part has the
coefficients on X = [1, t1, t2], and on the curvature basis q = 4 t1 (1 - t1) for a curved model
(4 coefficients per participant); every function here uses all of them.
"""

from __future__ import annotations

import time

import arviz as az
import numpy as np
import pymc as pm
import pytensor
import xarray as xr

from models.contract import BuiltModel
from models.design import TrialDesign
from models.marginal import FIXED_TERMS, FIXED_VAR, LOG2PI, integrated_pointwise, visit_stats
from models.trajectory import curve_basis, visit_columns

INTEGRATED_NOTES = {
    "y_participant": "per participant with at least one post-baseline visit: log p(post-baseline scores | baseline score, theta), "
                     "the participant effects integrated out (latent biomarker values: conditional on each draw's values)",
    "y_visit": "per post-baseline visit: log p(y_ij | the participant's other visits, theta), exact leave-one-visit-out from "
               "the participant's multivariate normal (latent biomarker values: conditional on each draw's values)",
}
LOG_LIKELIHOOD_NOTE = (
    "pointwise per visit, conditional on the participant effects (drawn from their exact conditional "
    "posterior after sampling the marginal model): log Normal(y | mu, residual_sd), as on the plain path"
)


def _chol_from_posterior(post: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sd = post["participant_sd"].values  # chain, draw, 2
    rho = post["participant_corr"].values
    return sd[..., 0], sd[..., 1] * rho, sd[..., 1] * np.sqrt(np.clip(1.0 - rho**2, 0.0, None))


PARTICIPANT_VARS = ("participant_raw", "participant_effects")  # drawn after sampling on this path


def fixed_part(posterior: xr.Dataset, fast: BuiltModel) -> np.ndarray:
    """The fixed-part coefficients c_i (chain, draw, participant, K) of every draw, from the marginal model's graph
    (K = 3: level, change, follow-up change; K = 4 with the curvature)."""
    return per_draw(fast.model, fast.model[FIXED_VAR], posterior)


def _curved(fixed: np.ndarray) -> bool:
    """Whether fixed-part coefficients (..., participant, K) include the curvature (K = 4) or not (K = 3)."""
    k = fixed.shape[-1]
    if k not in (len(FIXED_TERMS), len(FIXED_TERMS) + 1):
        raise ValueError(f"fixed-part coefficients with {k} terms; expected {len(FIXED_TERMS)} or {len(FIXED_TERMS) + 1}")
    return k == len(FIXED_TERMS) + 1


def fixed_mean(fixed: np.ndarray, design: TrialDesign) -> np.ndarray:
    """X c per observed visit, (..., obs), from the coefficients (..., participant, K): everything in the mean but
    the participant effects."""
    pid = design.obs_participant
    t2 = design.t2 if design.has_followup else np.zeros_like(design.t2)
    mean = fixed[..., pid, 0] + fixed[..., pid, 1] * design.t1 + fixed[..., pid, 2] * t2
    if _curved(fixed):
        mean = mean + fixed[..., pid, 3] * curve_basis(design.t1)
    return mean


def recover_participant_effects(idata: az.InferenceData, design: TrialDesign, seed: int, c: np.ndarray) -> None:
    """Draw (u_i, b_i) | y, theta for every posterior draw; add participant_raw/effects to idata.posterior.

    c: the fixed-part coefficients of every draw (`fixed_part`): on X = [1, t1, t2], or [1, t1, t2, q] when curved."""
    stats = visit_stats(design, visit_columns(design, _curved(c)))
    post = idata.posterior
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


def visit_means(idata: az.InferenceData, design: TrialDesign, chain: int, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """mu (draw x obs) of one chain, conditional on the participant effects, and residual_sd (draw x 1)."""
    post = idata.posterior
    c = fixed[chain]
    eff = post["participant_effects"].values[chain]
    pid = design.obs_participant
    t2 = design.t2 if design.has_followup else np.zeros_like(design.t2)
    mu = c[:, pid, 0] + eff[:, pid, 0] + (c[:, pid, 1] + eff[:, pid, 1]) * design.t1 + c[:, pid, 2] * t2
    if _curved(c):
        mu = mu + c[:, pid, 3] * curve_basis(design.t1)
    return mu, post["residual_sd"].values[chain][:, None]


def add_pointwise_groups(idata: az.InferenceData, design: TrialDesign, pred_seed: int, fixed: np.ndarray) -> dict[str, float]:
    """log_likelihood['y'] and posterior_predictive['y'] per visit, conditional on the recovered effects."""
    post = idata.posterior
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    n_obs = len(design.y)
    ll = np.empty((n_chain, n_draw, n_obs))
    rep = np.empty((n_chain, n_draw, n_obs))
    rng = np.random.default_rng(pred_seed)
    t_ll = t_pp = 0.0
    for ch in range(n_chain):
        t0 = time.perf_counter()
        mu, sigma = visit_means(idata, design, ch, fixed)
        resid = (design.y - mu) / sigma
        ll[ch] = -0.5 * (LOG2PI + resid**2) - np.log(sigma)
        t1 = time.perf_counter()
        rep[ch] = mu + sigma * rng.standard_normal((n_draw, n_obs))
        t_ll += t1 - t0
        t_pp += time.perf_counter() - t1
    t0 = time.perf_counter()
    integrated = integrated_log_likelihood(idata, design, fixed)
    t_int = time.perf_counter() - t0
    coords = {"chain": post["chain"].values, "draw": post["draw"].values, "obs": np.arange(n_obs)}
    dims = ("chain", "draw", "obs")
    for group, arr in (("log_likelihood", ll), ("posterior_predictive", rep)):
        ds = xr.Dataset({"y": xr.DataArray(arr, dims=dims, coords=coords)})
        if group == "log_likelihood":
            ds = ds.assign(integrated)
        if group in idata.groups():
            del idata[group]
        idata.add_groups({group: ds})
    return {"log_likelihood_s": t_ll, "posterior_predictive_s": t_pp, "integrated_log_likelihood_s": t_int}


def scored_units(design: TrialDesign) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(baseline mask over visits, participants with a post-baseline visit, post-baseline visit indices)."""
    baseline = design.obs_week == design.weeks[0]
    post = np.flatnonzero(~baseline)
    scored = np.zeros(design.n_participants, dtype=bool)
    scored[design.obs_participant[post]] = True
    return baseline, np.flatnonzero(scored), post


def integrated_log_likelihood(idata: az.InferenceData, design: TrialDesign, fixed: np.ndarray) -> dict[str, xr.DataArray]:
    """'y_participant' and 'y_visit' (models/marginal.py integrated_pointwise) of every draw: the quantities the
    comparison scores, for participants and visits after baseline, given the baseline score."""
    e = design.y[None, None, :] - fixed_mean(fixed, design)
    return _integrated_from_residuals(idata.posterior, design, e)


def finish_marginal_fit(idata: az.InferenceData, fast: BuiltModel, recover_seed: int, pred_seed: int) -> dict[str, float]:
    """Everything after sampling the marginal model (or reading its saved fit): effects, log-likelihood, predictions.

    Drops the sampler's copy of the fixed-part helper: the graph recomputes it (`fixed_part`), so a
    fit completed in memory and the same fit read back from its file give identical numbers."""
    t0 = time.perf_counter()
    post = idata.posterior
    drop = [v for v in (FIXED_VAR, *PARTICIPANT_VARS) if v in post]
    post = post.drop_vars(drop)
    if "participant_term" in post.coords:
        post = post.drop_vars("participant_term")
    post.attrs["fit_path"] = "marginal"
    idata.posterior = post
    fixed = fixed_part(post, fast)
    timings = {"fixed_part_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    recover_participant_effects(idata, fast.design, recover_seed, fixed)
    timings["recover_s"] = time.perf_counter() - t0
    timings.update(add_pointwise_groups(idata, fast.design, pred_seed, fixed))
    idata.log_likelihood.attrs["y"] = LOG_LIKELIHOOD_NOTE
    idata.log_likelihood.attrs.update(INTEGRATED_NOTES)
    return timings


def compile_kwargs() -> dict:
    """PyTensor compile options for functions evaluated on all draws at once (the fixed part, the
    predictive draws): compiled C where PyTensor has a compiler (cached after the first compile, it
    beats the Python implementations on the larger graphs, e.g. 3.5 s against 8.7 s for the
    headline's fixed part); without one, PyTensor's Python implementations unfused, because fused
    elementwise kernels would run element by element in Python. Same numbers to 1e-14."""
    return {} if pytensor.config.cxx else {"mode": python_mode()}


def python_mode():
    """PyTensor's Python implementations, unfused: one numpy operation per node, nothing to compile."""
    from pytensor.compile.mode import Mode

    return Mode(linker="py", optimizer="fast_run").excluding("fusion", "cxx_only")


def per_draw(model: pm.Model, out, post: xr.Dataset) -> np.ndarray:
    """A tensor of the model's free variables evaluated at every posterior draw: (chain, draw, ...).

    Compiled once. Without a C compiler (PyTensor's Python backend) fused elementwise kernels run
    element by element in Python, 16 times slower than unfused numpy operations, so there they are
    not fused."""
    fn = model.compile_fn(inputs=model.free_RVs, outs=out, on_unused_input="ignore", **compile_kwargs())
    names = [rv.name for rv in model.free_RVs]
    rows = []
    for ch in range(post.sizes["chain"]):
        values = {n: post[n].values[ch] for n in names}
        rows.append([fn({n: v[k] for n, v in values.items()}) for k in range(post.sizes["draw"])])
    return np.asarray(rows, dtype=float)


def _normal_mean(model: pm.Model, outcome: str = "y"):
    """The mean of a Normal outcome (None for another family: Student-t and censored scores have no closed form)."""
    from pytensor.tensor.random.basic import NormalRV

    var = model[outcome]
    if var.owner is None or not isinstance(var.owner.op, NormalRV):
        return None
    return var.owner.inputs[2]  # (rng, size, mu, sigma)


def plain_integrated_log_likelihood(idata: az.InferenceData, built: BuiltModel) -> dict[str, xr.DataArray]:
    """'y_participant' and 'y_visit' of a plain-path trajectory fit with a Normal likelihood ({} otherwise).

    The fixed part of the mean is the model's mean minus the sampled participant effects, z (b0, b1);
    from there the maths is the fast path's (models/marginal.py integrated_pointwise)."""
    post = idata.posterior
    mu = _normal_mean(built.model)
    if mu is None or not {"participant_effects", "participant_sd", "participant_corr", "residual_sd"} <= set(post.data_vars):
        return {}
    design = built.design
    pid, t1 = design.obs_participant, design.t1
    mus = per_draw(built.model, mu, post)
    b = post["participant_effects"].transpose("chain", "draw", "participant", "participant_effect").values
    fixed_mean = mus - (b[:, :, pid, 0] + b[:, :, pid, 1] * t1)
    return _integrated_from_residuals(post, design, design.y[None, None, :] - fixed_mean)


def _integrated_from_residuals(post: xr.Dataset, design: TrialDesign, e: np.ndarray) -> dict[str, xr.DataArray]:
    """The two integrated quantities from residuals about the fixed part, e (chain, draw, obs)."""
    baseline, scored, visits = scored_units(design)
    chol = _chol_from_posterior(post)
    parts, vis = [], []
    for ch in range(post.sizes["chain"]):
        p, v = integrated_pointwise(e[ch], design.t1, design.obs_participant, baseline, tuple(x[ch] for x in chol),
                                    post["residual_sd"].values[ch])
        parts.append(p[:, scored])
        vis.append(v[:, visits])
    cd = {"chain": post["chain"].values, "draw": post["draw"].values}
    return {
        "y_participant": xr.DataArray(np.stack(parts), dims=("chain", "draw", "scored_participant"),
                                      coords={**cd, "scored_participant": design.participants[scored]}),
        "y_visit": xr.DataArray(np.stack(vis), dims=("chain", "draw", "scored_visit"), coords={**cd, "scored_visit": visits}),
    }


def mmrm_integrated_log_likelihood(idata: az.InferenceData, built: BuiltModel) -> dict[str, xr.DataArray]:
    """'y_participant' and 'y_visit' of an MMRM fit, on the units of the trajectory models' (see `scored_units`).

    The MMRM models post-baseline change given the baseline, so its densities are those of the
    post-baseline scores given the baseline score (the shift by the baseline has Jacobian 1):
    per participant, log MvNormal(change_i | mu_i, Sigma_i) (the sum of its sequential pointwise
    log-likelihood); per visit, the exact leave-one-visit-out density from Sigma's block of the
    participant's attended visits, as for the trajectory models."""
    from models.mmrm import mean_change, mmrm_data

    post, design = idata.posterior, built.design
    d = mmrm_data(design)
    n_ch, n_dr = post.sizes["chain"], post.sizes["draw"]
    mus = mean_change(post, design, d)  # numpy, the model's own mean (tests/test_mmrm.py checks it against PyMC's)
    sd = post["visit_sd"].transpose("chain", "draw", "visit").values
    corr = post["visit_corr"].transpose("chain", "draw", "visit", "visit2").values
    cov = sd[..., :, None] * corr * sd[..., None, :]
    e = d.obs_change[None, None, :] - mus
    visit = np.empty_like(e)
    for vis, start, n_p, _ in d.patterns:
        k = len(vis)
        block = slice(start, start + n_p * k)
        prec = np.linalg.inv(cov[..., vis[:, None], vis[None, :]])  # chain, draw, k, k
        r = e[..., block].reshape(n_ch, n_dr, n_p, k)
        pr = np.einsum("cdjk,cdpk->cdpj", prec, r)
        pjj = np.diagonal(prec, axis1=-2, axis2=-1)[:, :, None, :]
        visit[..., block] = (0.5 * (np.log(pjj) - LOG2PI) - 0.5 * pr**2 / pjj).reshape(n_ch, n_dr, n_p * k)
    pointwise = idata.log_likelihood["change"].transpose("chain", "draw", ...).values
    participant = np.zeros((n_ch, n_dr, len(d.rows)))
    np.add.at(participant, (slice(None), slice(None), d.obs_row), pointwise)
    # the trajectory models' labels: participants by id, visits by their index among the design's observations
    index = {(int(p), int(w)): i for i, (p, w) in enumerate(zip(design.obs_participant, design.obs_week))}
    labels = np.array([index[(int(d.rows[r]), int(d.visits[v]))] for r, v in zip(d.obs_row, d.obs_visit)])
    order = np.argsort(labels)
    cd = {"chain": post["chain"].values, "draw": post["draw"].values}
    return {
        "y_participant": xr.DataArray(participant, dims=("chain", "draw", "scored_participant"),
                                      coords={**cd, "scored_participant": design.participants[d.rows]}),
        "y_visit": xr.DataArray(visit[..., order], dims=("chain", "draw", "scored_visit"), coords={**cd, "scored_visit": labels[order]}),
    }
