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

Missing biomarkers integrated out (models/marker_block.py): a participant whose missing markers z_M
were integrated out gets, with b_i, an exact draw of z_M from the joint conditional posterior.
Given theta, (b_i, d_i = z_M - m_i) is a priori N(0, blockdiag(S, C)) and enters the scores only
through w_i = b_i + A_i d_i ~ N(0, S_i), S_i = S + A_i C A_i'; w_i | y is drawn as b_i is for the
others (with S_i), then (b_i, d_i) | w_i by conditioning a prior draw on the constraint (Matheron's
rule: x = x* + Cov(x, w) S_i^-1 (w - w*)). The fixed part then holds the completed markers, and the
stored `marker_missing_std` holds every missing entry's standardised innovation, as on the plain path.
"""

from __future__ import annotations

import time

import arviz as az
import numpy as np
import pymc as pm
import pytensor
import xarray as xr

from maths.gaussian import sandwich
from models.contract import BuiltModel
from models.design import TrialDesign
from models.marginal import FIXED_TERMS, FIXED_VAR, LOG2PI, integrated_pointwise, visit_stats
from models.marker_block import integrated_marker_terms, latent_missing
from models.trajectory import curve_basis, visit_columns

INTEGRATED_NOTES = {
    "y_participant": "per participant with at least one post-baseline visit: log p(post-baseline scores | baseline score, theta), "
                     "the participant effects and missing biomarkers integrated out (censored biomarker values, and missing "
                     "ones beside them: conditional on each draw's values)",
    "y_visit": "per post-baseline visit: log p(y_ij | the participant's other visits, theta), exact leave-one-visit-out from "
               "the participant's multivariate normal (participant effects and missing biomarkers integrated out, as above)",
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


def _draws(post: xr.Dataset, name: str) -> np.ndarray:
    return post[name].transpose("chain", "draw", ...).values


def recover_participant_effects(idata: az.InferenceData, design: TrialDesign, seed: int, c: np.ndarray) -> np.ndarray:
    """Draw (u_i, b_i) | y, theta for every posterior draw; add participant_raw/effects to idata.posterior.

    c: the fixed-part coefficients of every draw (`fixed_part`): on X = [1, t1, t2], or [1, t1, t2, q] when curved.
    With integrated markers (module docstring) their values are drawn too: `marker_missing_std` is completed and the
    returned coefficients hold the drawn markers (c itself otherwise). Computed chain by chain (the memory of one
    chain's temporaries), with the random streams consumed in chain order."""
    stats = visit_stats(design, visit_columns(design, _curved(c)))
    post = idata.posterior
    n_chain = post.sizes["chain"]
    rng, rng_markers = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    u = np.empty(c.shape[:3] + (2,))
    effects = np.empty_like(u)
    completed = c.copy()
    md = design.baseline
    std = None
    for ch in range(n_chain):
        part = post.isel(chain=[ch])
        u[ch], effects[ch], completed[ch], z = _recover_chain(part, design, stats, c[ch:ch + 1], rng, rng_markers)
        if z is not None:
            values = _missing_std_values(part, md, z)
            std = np.empty((n_chain,) + values.shape[1:]) if std is None else std
            std[ch] = values[0]
    if std is not None:
        post = post.drop_vars([v for v in ("marker_missing_std", "marker_missing_value") if v in post.variables])
        post["marker_missing_std"] = xr.DataArray(std, dims=("chain", "draw", "marker_missing_value"),
                                                  coords={"marker_missing_value": np.arange(std.shape[-1])})
    dims = ("chain", "draw", "participant", "participant_effect")
    coords = {"participant": post["participant"].values, "participant_effect": ["intercept", "change"]}
    post["participant_raw"] = xr.DataArray(u, dims=dims, coords=coords)
    post["participant_effects"] = xr.DataArray(effects, dims=dims, coords=coords)
    idata.posterior = post
    return completed


def participant_chol(post: xr.Dataset, design: TrialDesign, patterns: list | None = None) -> tuple:
    """(l00, l10, l11): the Cholesky factor of S (chain, draw) or, with integrated biomarkers, of each participant's
    S_i = S + A_i C A_i' (chain, draw, participant)."""
    l00, l10, l11 = _chol_from_posterior(post)
    patterns = integrated_marker_terms(post, design) if patterns is None else patterns
    if not patterns:
        return l00, l10, l11
    shape = l00.shape + (design.n_participants,)
    s00 = np.broadcast_to((l00**2)[..., None], shape).copy()
    s01 = np.broadcast_to((l00 * l10)[..., None], shape).copy()
    s11 = np.broadcast_to((l10**2 + l11**2)[..., None], shape).copy()
    for pat in patterns:
        extra = sandwich(pat["loadings"], pat["cov"][:, :, None])
        s00[..., pat["rows"]] += extra[..., 0, 0]
        s01[..., pat["rows"]] += extra[..., 0, 1]
        s11[..., pat["rows"]] += extra[..., 1, 1]
    c00 = np.sqrt(s00)
    c10 = s01 / c00
    return c00, c10, np.sqrt(s11 - c10**2)


def _recover_chain(post: xr.Dataset, design: TrialDesign, stats, c: np.ndarray, rng, rng_markers):
    """One chain of `recover_participant_effects`: (u, b, coefficients with the drawn markers, the drawn markers or None)."""
    sigma = post["residual_sd"].values[..., None]
    shared = tuple(v[..., None] for v in _chol_from_posterior(post))
    patterns = integrated_marker_terms(post, design)
    l00, l10, l11 = (v if v.ndim == 3 else v[..., None] for v in participant_chol(post, design, patterns))
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
    eps = rng.standard_normal(mean0.shape + (2,))
    x1 = eps[..., 1] / r11
    x0 = (eps[..., 0] - r10 * x1) / r00
    u = np.stack([mean0 + x0, mean1 + x1], axis=-1)
    effects = np.stack([l00 * u[..., 0], l10 * u[..., 0] + l11 * u[..., 1]], axis=-1)  # w_i (b_i without integrated markers)
    if not patterns:
        return u[0], effects[0], c[0], None
    effects, completed, z = _split_integrated(design, patterns, shared, effects, c, rng_markers)
    return _standardised(effects, shared)[0], effects[0], completed[0], z


def shift_to_markers(fixed: np.ndarray, post: xr.Dataset, design: TrialDesign, z: np.ndarray) -> np.ndarray:
    """The fixed-part coefficients with the integrated participants' missing markers at values z (chain, draw,
    participant, marker) instead of their conditional means: level and change move by A_i (z_M - m_i)."""
    out = fixed.copy()
    for pat in integrated_marker_terms(post, design):
        rows, miss = pat["rows"], pat["missing"]
        delta = z[:, :, rows[:, None], miss[None, :]] - pat["mean"]
        shift = np.einsum("cdrim,cdrm->cdri", pat["loadings"], delta)
        out[:, :, rows, 0] += shift[..., 0]
        out[:, :, rows, 1] += shift[..., 1]
    return out


def markers_from_std(post: xr.Dataset, md) -> np.ndarray:
    """The markers (chain, draw, participant, marker) of participants without a censored value, from the observed values
    and `marker_missing_std` over every missing entry (the sequential form: z_k = a_k + sum_j<k B_kj z_j + s_k eta);
    NaN in the rows of participants with a censored value."""
    eta = _draws(post, "marker_missing_std")
    mean, sd = _draws(post, "marker_mean"), _draws(post, "marker_sd")
    links = _draws(post, "marker_regression") if md.z.shape[1] > 1 else None
    z = np.broadcast_to(md.z, eta.shape[:2] + md.z.shape).copy()
    entry = {(int(i), int(k)): e for e, (i, k) in enumerate(zip(*np.nonzero(md.missing)))}
    for i, k in sorted(entry, key=lambda ik: (ik[1], ik[0])):  # marker by marker: earlier markers first
        value = mean[..., k] + sd[..., k] * eta[..., entry[(i, k)]]
        for j in range(k):
            value = value + links[..., k * (k - 1) // 2 + j] * z[:, :, i, j]
        z[:, :, i, k] = value
    z[:, :, md.censored.any(axis=1)] = np.nan
    return z


def _standardised(b: np.ndarray, chol: tuple) -> np.ndarray:
    """u = L^-1 b (the plain model's participant_raw)."""
    l00, l10, l11 = chol
    u0 = b[..., 0] / l00
    return np.stack([u0, (b[..., 1] - l10 * u0) / l11], axis=-1)


def _split_integrated(design, patterns, chol, w, c, rng):
    """(b_i, z_M) | w_i for the integrated participants (module docstring); returns the participant effects, the
    fixed-part coefficients with the drawn markers, and the markers (chain, draw, participant, marker)."""
    l00, l10, l11 = (v[..., 0] for v in chol)  # chain, draw
    s = np.stack([np.stack([l00**2, l00 * l10], -1), np.stack([l00 * l10, l10**2 + l11**2], -1)], -2)  # chain, draw, 2, 2
    b = w.copy()
    completed = c.copy()
    md = design.baseline
    z = np.broadcast_to(np.nan_to_num(md.z), c.shape[:2] + md.z.shape).copy()
    for pat in patterns:
        rows, miss = pat["rows"], pat["missing"]
        a, cm = pat["loadings"], pat["cov"]  # (c, d, r, 2, q), (c, d, q, q)
        q = len(miss)
        b_star = np.einsum("cdij,cdrj->cdri", np.linalg.cholesky(s), rng.standard_normal(a.shape[:3] + (2,)))
        d_star = np.einsum("cdij,cdrj->cdri", np.linalg.cholesky(cm), rng.standard_normal(a.shape[:3] + (q,)))
        s_i = s[:, :, None] + np.einsum("cdrim,cdmn,cdrjn->cdrij", a, cm, a)
        gap = w[:, :, rows] - b_star - np.einsum("cdrim,cdrm->cdri", a, d_star)
        k = np.linalg.solve(s_i, gap[..., None])[..., 0]  # S_i^-1 (w - w*)
        b[:, :, rows] = b_star + np.einsum("cdij,cdrj->cdri", s, k)
        delta = d_star + np.einsum("cdmn,cdrin,cdri->cdrm", cm, a, k)  # + C A' S_i^-1 (w - w*)
        z[:, :, rows[:, None], miss[None, :]] = pat["mean"] + delta
        shift = np.einsum("cdrim,cdrm->cdri", a, delta)
        completed[:, :, rows, 0] += shift[..., 0]
        completed[:, :, rows, 1] += shift[..., 1]
    return b, completed, z


def _missing_std_values(post: xr.Dataset, md, z: np.ndarray) -> np.ndarray:
    """`marker_missing_std` over every missing entry (chain, draw, entry): the sampled ones kept, the integrated ones
    the standardised innovations (z_k - a_k - sum_j<k B_kj z_j) / s_k of the drawn markers z."""
    mi, mk = np.nonzero(md.missing)
    latent = latent_missing(md)
    mean, sd = _draws(post, "marker_mean"), _draws(post, "marker_sd")
    links = _draws(post, "marker_regression") if md.z.shape[1] > 1 else None
    full = np.empty(z.shape[:2] + (len(mi),))
    for e, (i, k) in enumerate(zip(mi, mk)):
        innovation = z[:, :, i, k] - mean[..., k]
        base = k * (k - 1) // 2
        for j in range(k):
            innovation = innovation - links[..., base + j] * z[:, :, i, j]
        full[..., e] = innovation / sd[..., k]
    if len(latent):
        sampled = _draws(post, "marker_missing_std")
        full[..., latent] = sampled if sampled.shape[-1] == len(latent) else sampled[..., latent]
    return full


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


def add_pointwise_groups(idata: az.InferenceData, design: TrialDesign, pred_seed: int, fixed: np.ndarray,
                         fixed_integrated: np.ndarray | None = None) -> dict[str, float]:
    """log_likelihood['y'] and posterior_predictive['y'] per visit, conditional on the recovered effects (and drawn
    biomarkers: `fixed`), and the integrated densities (`fixed_integrated`: integrated biomarkers at their conditional
    means; `fixed` when there are none)."""
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
    integrated = integrated_log_likelihood(idata, design, fixed if fixed_integrated is None else fixed_integrated)
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
    comparison scores, for participants and visits after baseline, given the baseline score.

    fixed: the fixed-part coefficients with the integrated biomarkers at their conditional means m_i (`fixed_part`),
    so that with S_i = S + A_i C A_i' the densities are the model's own, missing biomarkers integrated out."""
    return _integrated_from_residuals(idata.posterior, design, lambda ch: design.y[None, :] - fixed_mean(fixed[ch], design))


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
    fixed = fixed_part(_sampled(post, fast.design), fast)
    timings = {"fixed_part_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    completed = recover_participant_effects(idata, fast.design, recover_seed, fixed)
    timings["recover_s"] = time.perf_counter() - t0
    timings.update(add_pointwise_groups(idata, fast.design, pred_seed, completed, fixed))
    idata.log_likelihood.attrs["y"] = LOG_LIKELIHOOD_NOTE
    idata.log_likelihood.attrs.update(INTEGRATED_NOTES)
    return timings


def _sampled(post: xr.Dataset, design: TrialDesign) -> xr.Dataset:
    """The posterior as the marginal model sampled it: `marker_missing_std` only at the latent entries (a completed
    fit holds every missing entry, models/marker_block.py)."""
    md = design.baseline
    if md is None or "marker_missing_std" not in post or post["marker_missing_std"].sizes["marker_missing_value"] != md.n_missing:
        return post
    latent = latent_missing(md)
    if len(latent) == md.n_missing:
        return post
    return post.isel(marker_missing_value=latent) if len(latent) else post.drop_vars("marker_missing_std").drop_dims("marker_missing_value")


def compile_kwargs() -> dict:
    """PyTensor compile options for the plain path's posterior predictive draws: compiled C where PyTensor has a
    compiler (cached after the first compile); without one, PyTensor's Python implementations unfused, because
    fused elementwise kernels would run element by element in Python. Same numbers to 1e-14."""
    return {} if pytensor.config.cxx else {"mode": python_mode()}


def python_mode():
    """PyTensor's Python implementations, unfused: one numpy operation per node, nothing to compile."""
    from pytensor.compile.mode import Mode

    return Mode(linker="py", optimizer="fast_run").excluding("fusion", "cxx_only")


def _binary_chains():
    """A rewrite splitting an elementwise sum or product of three or more tensors into binary operations, left to
    right. PyTensor's Python implementation of such a node has no numpy ufunc and calls Python's sum (or np.prod) on
    every element; numpy's add (multiply) on whole arrays in the same order gives the same numbers."""
    import pytensor.scalar.basic as ps
    import pytensor.tensor as pt
    from pytensor.graph.rewriting.basic import in2out, node_rewriter
    from pytensor.tensor.elemwise import Elemwise

    binary = {ps.Add: pt.add, ps.Mul: pt.mul}

    @node_rewriter([Elemwise])
    def split(fgraph, node):
        op = binary.get(type(node.op.scalar_op))
        if op is None or len(node.inputs) < 3:
            return None
        out = node.inputs[0]
        for x in node.inputs[1:]:
            out = op(out, x)
        return [out] if out.type == node.outputs[0].type else None

    return in2out(split, name="binary_chains")


def vectorised_mode():
    """`python_mode` with every elementwise sum or product binary (`_binary_chains`): for graphs over many observations
    or vectorised over draws (`per_draw`, the prior predictive); the same numbers as `python_mode`."""
    return python_mode().register((_binary_chains(), 48.9))  # after the graph's own rewrites, before the in-place ones


def per_draw(model: pm.Model, out, post: xr.Dataset) -> np.ndarray:
    """A tensor of the model's free variables evaluated at every posterior draw: (chain, draw, ...).

    The graph is vectorised over draws (pytensor's vectorize_graph: each free variable gains a leading draw
    dimension) and run with PyTensor's Python implementations, one numpy operation per node over a block of
    DRAW_BLOCK draws at a time: nothing to compile in C (a large graph's C compile takes tens of seconds
    on a machine that has not compiled it before) and memory bounded by one block. The same numbers as
    evaluating the graph draw by draw, to rounding (a test)."""
    from pytensor.graph.replace import vectorize_graph

    free = list(model.free_RVs)
    batched = {rv: rv.type.clone(shape=(None, *rv.type.shape))(name=f"{rv.name}_draws") for rv in free}
    fn = pytensor.function(list(batched.values()), vectorize_graph(out, replace=batched), mode=vectorised_mode(), on_unused_input="ignore")
    n_draw = post.sizes["draw"]
    chains = []
    for ch in range(post.sizes["chain"]):
        values = [np.asarray(post[rv.name].values[ch], dtype=rv.dtype) for rv in free]
        chains.append(np.concatenate([fn(*(v[lo : lo + DRAW_BLOCK] for v in values)) for lo in range(0, n_draw, DRAW_BLOCK)]))
    return np.asarray(chains, dtype=float)


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
    if integrated_marker_terms(post, design):  # the sampled missing biomarkers back to their conditional means m_i
        c = np.zeros(b.shape[:3] + (2,))
        back = shift_to_markers(c, post, design, markers_from_std(post, design.baseline))  # A_i (z_M - m_i)
        fixed_mean = fixed_mean - (back[:, :, pid, 0] + back[:, :, pid, 1] * t1)
    return _integrated_from_residuals(post, design, lambda ch: design.y[None, :] - fixed_mean[ch])


DRAW_BLOCK = 250  # draws per block of the integrated densities: their temporaries are a dozen (draws x obs) arrays


def _integrated_from_residuals(post: xr.Dataset, design: TrialDesign, residuals) -> dict[str, xr.DataArray]:
    """The two integrated quantities from residuals about the fixed part, residuals(chain) -> (draw, obs); computed
    in blocks of DRAW_BLOCK draws, so memory beyond the results stays that of one block whatever the trial's size."""
    baseline, scored, visits = scored_units(design)
    n_chain, n_draw = post.sizes["chain"], post.sizes["draw"]
    parts = np.empty((n_chain, n_draw, len(scored)))
    vis = np.empty((n_chain, n_draw, len(visits)))
    sigma = post["residual_sd"].values
    for ch in range(n_chain):
        e = residuals(ch)
        chol = [v[0] for v in participant_chol(post.isel(chain=[ch]), design)]  # draw (x participant)
        for lo in range(0, n_draw, DRAW_BLOCK):
            block = slice(lo, min(lo + DRAW_BLOCK, n_draw))
            p, v = integrated_pointwise(e[block], design.t1, design.obs_participant, baseline, tuple(x[block] for x in chol),
                                        sigma[ch, block])
            parts[ch, block] = p[:, scored]
            vis[ch, block] = v[:, visits]
    cd = {"chain": post["chain"].values, "draw": post["draw"].values}
    return {
        "y_participant": xr.DataArray(parts, dims=("chain", "draw", "scored_participant"),
                                      coords={**cd, "scored_participant": design.participants[scored]}),
        "y_visit": xr.DataArray(vis, dims=("chain", "draw", "scored_visit"), coords={**cd, "scored_visit": visits}),
    }


def mmrm_integrated_log_likelihood(idata: az.InferenceData, built: BuiltModel) -> dict[str, xr.DataArray]:
    """'y_participant' and 'y_visit' of an MMRM fit (`mmrm_log_likelihood`, which computes its pointwise 'change' with them)."""
    out = mmrm_log_likelihood(idata, built)
    return {k: v for k, v in out.items() if k in INTEGRATED_NOTES}


def mmrm_log_likelihood(idata: az.InferenceData, built: BuiltModel, rng: np.random.Generator | None = None) -> dict[str, xr.DataArray]:
    """The pointwise log-likelihood 'change' of an MMRM fit (models/mmrm.py `pointwise_logp`) with 'y_participant' and
    'y_visit' on the units of the trajectory models' (see `scored_units`), DRAW_BLOCK draws of one chain at a time from
    one mean (`mean_change`), so memory beyond the results is that of one block whatever the trial's size. With `rng`,
    also 'predictive': the posterior predictive of 'change' (models/mmrm.py `draw_changes`, the model's own random) from
    the same mean and Sigma, chains and blocks in order from that one stream, stored as float32 as the prior predictive is.

    The MMRM models post-baseline change given the baseline, so its densities are those of the
    post-baseline scores given the baseline score (the shift by the baseline has Jacobian 1):
    per participant, log MvNormal(change_i | mu_i, Sigma_i) (the sum of its sequential pointwise
    log-likelihood, in visit order); per visit, the exact leave-one-visit-out density from Sigma's block of the
    participant's attended visits, as for the trajectory models. Every number is the one the whole-array
    computation gives (each draw's arithmetic is the same)."""
    from models.mmrm import draw_changes, mean_change, mmrm_data, pointwise_logp, visit_covariance

    post, design = idata.posterior, built.design
    d = mmrm_data(design)
    n_ch, n_dr, n_obs = post.sizes["chain"], post.sizes["draw"], len(d.obs_change)
    # the trajectory models' labels: participants by id, visits by their index among the design's observations
    index = {(int(p), int(w)): i for i, (p, w) in enumerate(zip(design.obs_participant, design.obs_week))}
    labels = np.array([index[(int(d.rows[r]), int(d.visits[v]))] for r, v in zip(d.obs_row, d.obs_visit)])
    order = np.argsort(labels)
    pointwise = np.empty((n_ch, n_dr, n_obs))
    visit = np.empty((n_ch, n_dr, n_obs))
    participant = np.empty((n_ch, n_dr, len(d.rows)))
    predictive = np.empty((n_ch, n_dr, n_obs), dtype=np.float32) if rng is not None else None
    # blocks of DRAW_BLOCK draws, a last block of one draw joined to the one before (numpy's einsum takes another path
    # for a single draw, which can differ from the whole array's in the last bit)
    bounds = [*range(0, n_dr, DRAW_BLOCK), n_dr]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    for ch in range(n_ch):
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            part = post.isel(chain=[ch], draw=slice(lo, hi))
            mus = mean_change(part, design, d)  # numpy, the model's own mean (tests/test_mmrm.py checks it against PyMC's)
            lp = pointwise_logp(part, design, mu=mus, d=d)["change"][0]
            cov = visit_covariance(part, len(d.visits))[0]  # draw, visit, visit
            e = d.obs_change[None, :] - mus[0]
            vis_block = np.empty_like(e)
            for vis, start, n_p, _ in d.patterns:
                k = len(vis)
                block = slice(start, start + n_p * k)
                prec = np.linalg.inv(cov[..., vis[:, None], vis[None, :]])  # draw, k, k
                r = e[..., block].reshape(hi - lo, n_p, k)
                pr = r @ prec  # prec symmetric: (prec r_p)' for each participant p, a BLAS product per draw
                pjj = np.diagonal(prec, axis1=-2, axis2=-1)[:, None, :]
                # 0.5 (log P_jj - log 2 pi) - 0.5 (P r)_j^2 / P_jj, in place
                pr *= pr
                pr *= 0.5
                pr /= pjj
                np.subtract(0.5 * (np.log(pjj) - LOG2PI), pr, out=pr)
                vis_block[..., block] = pr.reshape(hi - lo, n_p * k)
                # a participant's sum in visit order, as a running sum (np.add.at's order of additions)
                participant[ch, lo:hi][:, d.obs_row[start : start + n_p * k : k]] = np.cumsum(lp[:, block].reshape(hi - lo, n_p, k), axis=-1)[..., -1]
            pointwise[ch, lo:hi] = lp
            visit[ch, lo:hi] = vis_block[:, order]
            if predictive is not None:
                predictive[ch, lo:hi] = draw_changes(mus[0], np.linalg.cholesky(cov), len(d.rows), d.obs_row, d.obs_visit, rng)
    cd = {"chain": post["chain"].values, "draw": post["draw"].values}
    extra = {} if predictive is None else {"predictive": xr.DataArray(predictive, dims=("chain", "draw", "obs"), coords={**cd, "obs": np.arange(n_obs)})}
    return {
        **extra,
        "change": xr.DataArray(pointwise, dims=("chain", "draw", "obs"), coords={**cd, "obs": np.arange(n_obs)}),
        "y_participant": xr.DataArray(participant, dims=("chain", "draw", "scored_participant"),
                                      coords={**cd, "scored_participant": design.participants[d.rows]}),
        "y_visit": xr.DataArray(visit, dims=("chain", "draw", "scored_visit"), coords={**cd, "scored_visit": labels[order]}),
    }
