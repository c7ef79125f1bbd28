"""The fast path (participant effects integrated out) against independent computations and the plain path."""

from __future__ import annotations

import shutil
import warnings

import arviz as az
import numpy as np
import pytensor.tensor as pt
import pytest
import scipy.special
import xarray as xr
from scipy.stats import multivariate_normal

from data import DEFAULT_DATASET, load_dataset
from inference.compile import compile_nutpie, erfcinv_native
from inference.marginal import recover_participant_effects
from inference.sampling import SamplerSettings, sample_all
from models import build_design, get
from models.marginal import FIXED_VAR, marginal_loglik, visit_stats
from models.trajectory import curve_basis, visit_columns
from tests.test_fused import mixed_marker_patterns, three_arm_trial

KEY = ["nac_effect", "moderation_per_doubling", "prognostic_per_doubling", "residual_sd", "participant_sd", "participant_corr", "placebo_change"]


@pytest.fixture(scope="module")
def design(small_trial):
    return build_design(small_trial)


@pytest.fixture(scope="module")
def three_arm_design(tmp_path_factory):
    """A small three-arm trial (control, 'low', 'high'; tests/test_fused.py)."""
    return three_arm_trial(tmp_path_factory.mktemp("trials") / "three_arms")


def _participant_blocks(design, i, curved=False):
    m = design.obs_participant == i
    cols = [np.ones(m.sum()), design.t1[m], design.t2[m]] + ([4 * design.t1[m] * (1 - design.t1[m])] if curved else [])
    return np.column_stack(cols), design.y[m]


def _coefficients(rng, n_p, curved):
    """Fixed-part coefficients (level, change, follow-up change[, curvature]) of every participant."""
    return rng.normal([25.0, -10.0, -2.0, -4.0][: 3 + curved], 3.0, size=(n_p, 3 + curved))


@pytest.mark.unit
@pytest.mark.parametrize("curved", [False, True])
def test_marginal_loglik_equals_dense_mvnormal(design, curved):
    """Woodbury / determinant-lemma closed form == dense MvNormal(X c, Z S Z' + s^2 I) per participant;
    X = [1, t1, t2], or [1, t1, t2, 4 t1 (1 - t1)] for a curved model (Z = [1, t1] either way)."""
    rng = np.random.default_rng(0)
    c = _coefficients(rng, design.n_participants, curved)
    chol = np.array([[5.0, 0.0], [-2.0, 4.0]])
    sigma = 3.2
    stats = visit_stats(design, visit_columns(design, curved))
    assert stats.xx.shape[1:] == (3 + curved, 3 + curved)
    got = marginal_loglik(stats, pt.as_tensor_variable(c), (chol[0, 0], chol[1, 0], chol[1, 1]), pt.as_tensor_variable(sigma)).eval()
    cov_b = chol @ chol.T
    want = []
    for i in range(design.n_participants):
        x, y = _participant_blocks(design, i, curved)
        z = x[:, :2]
        want.append(multivariate_normal(x @ c[i], z @ cov_b @ z.T + sigma**2 * np.eye(len(y))).logpdf(y))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)


@pytest.mark.unit
@pytest.mark.parametrize("curved", [False, True])
def test_recovered_effects_follow_exact_conditional_posterior(design, curved):
    """b_i | y, theta drawn by the recovery has the dense-algebra conditional mean and covariance (with the
    curvature column in the fixed part for a curved model)."""
    n_draw, n_p = 4000, design.n_participants
    rng = np.random.default_rng(1)
    c = _coefficients(rng, n_p, curved)
    sd, rho, sigma = np.array([5.0, 4.0]), -0.3, 3.0
    post = xr.Dataset(
        {
            FIXED_VAR: (("chain", "draw", "participant", "participant_term"), np.broadcast_to(c, (1, n_draw, n_p, 3 + curved)).copy()),
            "participant_sd": (("chain", "draw", "participant_effect"), np.broadcast_to(sd, (1, n_draw, 2)).copy()),
            "participant_corr": (("chain", "draw"), np.full((1, n_draw), rho)),
            "residual_sd": (("chain", "draw"), np.full((1, n_draw), sigma)),
        },
        coords={"chain": [0], "draw": np.arange(n_draw), "participant": design.participants},
    )
    idata = az.InferenceData(posterior=post)
    recover_participant_effects(idata, design, 3, post[FIXED_VAR].values)
    b = idata.posterior["participant_effects"].values[0]
    cov_b = np.diag(sd) @ np.array([[1, rho], [rho, 1]]) @ np.diag(sd)
    for i in range(n_p):
        x, y = _participant_blocks(design, i, curved)
        z = x[:, :2]
        cond_cov = np.linalg.inv(np.linalg.inv(cov_b) + z.T @ z / sigma**2)
        cond_mean = cond_cov @ z.T @ (y - x @ c[i]) / sigma**2
        se = np.sqrt(np.diag(cond_cov) / n_draw)
        assert np.all(np.abs(b[:, i].mean(0) - cond_mean) < 4.5 * se), i
        np.testing.assert_allclose(np.cov(b[:, i].T), cond_cov, rtol=0.15, atol=0.05 * cond_cov.max())


@pytest.mark.unit
@pytest.mark.parametrize("arms", ["two", "three"])
def test_recovered_effects_and_integrated_markers_follow_exact_conditional_posterior(design, three_arm_design, arms):
    """With missing markers integrated out, (b_i, z_M) | y, z_K, theta drawn by the recovery has the dense-algebra
    conditional mean and covariance: prior b ~ N(0, S), z_M ~ N(m_i, C), scores X c(m_i) + Z (b + A_i (z_M - m_i)) + e.
    The drawn markers are read back from the completed marker_missing_std (the sequential innovations). On the
    three-arm trial with the biomarker x arm term of the moderation model: A_i holds the participant's own arm's."""
    from maths.gaussian import conditional_normal, sequential_moments
    from models.marker_block import latent_missing

    design = mixed_marker_patterns(design if arms == "two" else three_arm_design)
    md = design.baseline
    n_draw, n_p, m = 4000, design.n_participants, 3
    rng = np.random.default_rng(2)
    c = _coefficients(rng, n_p, False)
    sd, rho, sigma = np.array([5.0, 4.0]), -0.3, 3.0
    mean, msd, links = np.array([0.1, -0.2, 0.3]), np.array([1.0, 0.8, 1.2]), np.array([0.5, -0.3, 0.4])
    prog, mod = np.array([1.5, -1.0, 0.5]), np.array([-2.0, 1.0, 0.7])
    n_latent = len(latent_missing(md))
    const = lambda v, dims: (("chain", "draw", *dims), np.broadcast_to(v, (1, n_draw) + np.shape(v)).copy())  # noqa: E731
    post = xr.Dataset(
        {
            "participant_sd": const(sd, ("participant_effect",)), "participant_corr": const(rho, ()), "residual_sd": const(sigma, ()),
            "marker_mean": const(mean, ("marker",)), "marker_sd": const(msd, ("marker",)), "marker_regression": const(links, ("marker_link",)),
            "marker_prognostic": const(prog, ("marker",)), "marker_moderation": const(mod, ("marker",)),
            "marker_missing_std": const(np.full(n_latent, 0.3), ("marker_missing_value",)),
        },
        coords={"chain": [0], "draw": np.arange(n_draw), "participant": design.participants},
    )
    nac_mod = np.zeros((design.n_active, m))  # active arm x marker: the moderation model's, on the three-arm trial
    if arms == "three":
        nac_mod = np.array([[1.0, -0.5, 0.0], [-2.5, 0.8, 1.2]])
        post["nac_marker_moderation"] = const(nac_mod, ("active_arm", "marker"))
    idata = az.InferenceData(posterior=post)
    completed = recover_participant_effects(idata, design, 3, np.broadcast_to(c, (1, n_draw, n_p, 3)).copy())
    out = idata.posterior
    b = out["participant_effects"].values[0]
    eta = out["marker_missing_std"].values[0]
    assert eta.shape[1] == md.n_missing
    mi, mk = np.nonzero(md.missing)
    z = np.broadcast_to(np.nan_to_num(md.z), (n_draw, n_p, m)).copy()
    for e, (i, k) in enumerate(zip(mi, mk)):  # sequential: z_k = a_k + sum_j<k B_kj z_j + s_k eta
        z[:, i, k] = mean[k] + sum(links[k * (k - 1) // 2 + j] * z[:, i, j] for j in range(k)) + msd[k] * eta[:, e]
    mu, cov = sequential_moments(mean, msd, links, m)
    cov_b = np.diag(sd) @ np.array([[1, rho], [rho, 1]]) @ np.diag(sd)
    checked = 0
    for i in np.flatnonzero(md.missing.any(axis=1) & ~md.censored.any(axis=1)):
        arm = design.arm_idx[i]
        a = np.vstack([prog, mod + (nac_mod[arm - 1] if arm > 0 else 0.0)])  # the markers' loadings on (level, change)
        miss = np.flatnonzero(md.missing[i])
        keep = np.setdiff1d(np.arange(m), miss)
        _, c_i, m_i = conditional_normal(mu, cov, keep, miss, md.z[i, keep][None, :])
        x, y = _participant_blocks(design, i)
        g = x[:, :2] @ np.hstack([np.eye(2), a[:, miss]])  # scores = X c + G (b, z_M - m_i) + e
        prior = np.block([[cov_b, np.zeros((2, len(miss)))], [np.zeros((len(miss), 2)), c_i]])
        cond_cov = np.linalg.inv(np.linalg.inv(prior) + g.T @ g / sigma**2)
        cond_mean = cond_cov @ g.T @ (y - x @ c[i]) / sigma**2
        cond_mean[2:] += m_i[0]
        draws = np.hstack([b[:, i], z[:, i, miss]])
        se = np.sqrt(np.diag(cond_cov) / n_draw)
        assert np.all(np.abs(draws.mean(0) - cond_mean) < 4.5 * se), i
        np.testing.assert_allclose(np.cov(draws.T), cond_cov, rtol=0.15, atol=0.05 * cond_cov.max())
        # the coefficients returned hold the drawn markers: level and change shift by A (z_M - m_i)
        shift = (z[:, i, miss] - m_i[0]) @ a[:, miss].T
        np.testing.assert_allclose(completed[0, :, i, :2] - c[i, :2], shift, atol=1e-9)
        checked += 1
    assert checked >= 8
    if arms == "three":  # every arm has integrated participants, the control arm among them
        assert set(design.arm_idx[md.missing.any(axis=1) & ~md.censored.any(axis=1)]) == {0, 1, 2}
    # participants without integrated markers: the plain recovery (their b only)
    assert np.allclose(completed[0][:, ~md.missing.any(axis=1)], c[~md.missing.any(axis=1)])


@pytest.mark.unit
def test_native_erfcinv_matches_scipy():
    ys = np.concatenate([np.logspace(-300, -1e-9, 400), np.linspace(0.01, 1.99, 399), 2 - np.logspace(-15, -1, 100)])
    got = np.array([erfcinv_native(y) for y in ys])
    np.testing.assert_allclose(got, scipy.special.erfcinv(ys), rtol=1e-12, atol=1e-14)
    assert erfcinv_native(0.0) == np.inf and erfcinv_native(2.0) == -np.inf and np.isnan(erfcinv_native(np.nan))


@pytest.mark.unit
def test_fast_variant_only_where_exact(design):
    headline = get("headline").build(design)
    assert callable(headline.fast_variant) and not headline.marginal
    for name in ("headline", "treatment_curved", "moderation"):
        for likelihood in ("student", "censored"):  # not Gaussian in the participant effects
            assert get(name).build(design, likelihood=likelihood).fast_variant is None
    # curvature (a 4th fixed column) and biomarker x arm (inside the fixed change): still exact with the normal likelihood
    for name in ("treatment_curved", "moderation"):
        assert callable(get(name).build(design).fast_variant)
    marginal = headline.fast_variant()
    assert marginal.marginal and marginal.name == "headline" and marginal.fast_variant is None
    assert marginal.priors == headline.priors
    plain, fast = headline.model, marginal.model
    # every user-facing variable of the plain model exists with the same dims (participant effects and the missing
    # markers integrated out, all of them in this trial, come after sampling)
    recovered = {"participant_raw", "participant_effects", "y", "marker_missing_std"}
    for name, dims in plain.named_vars_to_dims.items():
        if name not in recovered:
            assert fast.named_vars_to_dims.get(name) == dims, name
    assert {v.name for v in fast.free_RVs} == {v.name for v in plain.free_RVs} - {"participant_raw", "marker_missing_std"}


SMALL = SamplerSettings(draws=400, tune=400, chains=2, seed=5, prior_draws=20)


@pytest.fixture(scope="module")
def fast_fit(design):
    return sample_all(get("headline").build(design), SMALL, quiet=True)


def _agree(fast, plain, names):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # R-hat of the constant baseline effects
        sf = az.summary(fast, var_names=names, kind="all")
        sp = az.summary(plain, var_names=names, kind="all")
    varying = (sf["sd"] > 0) & (sp["sd"] > 0)  # the effects at baseline are 0 by construction
    sf, sp = sf[varying], sp[varying]
    z = (sf["mean"] - sp["mean"]) / np.sqrt(sf["mcse_mean"] ** 2 + sp["mcse_mean"] ** 2)
    # posterior SDs agree too (a wrong marginal likelihood changes widths, not only locations)
    ratio = sf["sd"] / sp["sd"]
    return z, ratio


@pytest.mark.smoke
def test_fast_path_same_groups_and_names(fast_fit, design):
    """The fast path's InferenceData has every variable the plain model declares, with its dims."""
    fast, t_fast = fast_fit
    plain = get("headline").build(design).model
    assert fast.posterior.attrs["fit_path"] == "marginal"
    for group in ("posterior", "sample_stats", "prior", "prior_predictive", "posterior_predictive", "log_likelihood", "observed_data", "constant_data"):
        assert group in fast.groups(), group
    # what nutpie stores of the plain model: the unconstrained values and every constrained variable and Deterministic
    stored = {plain.rvs_to_values[rv].name for rv in plain.free_RVs} | {v.name for v in plain.unobserved_value_vars}
    assert set(fast.posterior.data_vars) == stored
    for name in fast.posterior.data_vars:
        if name in plain.named_vars_to_dims:  # (the packed Cholesky factor has none)
            assert fast.posterior[name].dims[2:] == tuple(plain.named_vars_to_dims[name]), name
    n_obs, chains, draws = len(design.y), SMALL.chains, SMALL.draws
    assert fast.log_likelihood["y"].dims == ("chain", "draw", "obs")
    assert fast.posterior_predictive["y"].shape == fast.log_likelihood["y"].shape == (chains, draws, n_obs)
    np.testing.assert_array_equal(fast.constant_data["obs_participant"], design.obs_participant)
    assert int(fast.sample_stats["diverging"].sum()) == 0
    assert {"recover_s", "log_likelihood_s", "posterior_predictive_s"} <= set(t_fast)


@pytest.mark.smoke
def test_per_draw_equals_the_graph_evaluated_draw_by_draw(fast_fit, design):
    """per_draw (the graph vectorised over draws, in blocks) gives the fixed part of every draw as the fast model's
    own graph evaluated at each draw separately, to rounding; so does the plain model's mean of the scores."""
    from inference.marginal import FIXED_VAR, _normal_mean, _sampled, per_draw, python_mode

    idata, _ = fast_fit
    built = get("headline").build(design)
    # the fast model's free variables as it sampled them; the plain model's, as the completed fit holds them
    for model, tensor, post in ((built.fast_variant().model, None, _sampled(idata.posterior, design)), (built.model, "y", idata.posterior)):
        tensor = model[FIXED_VAR] if tensor is None else _normal_mean(model, tensor)
        got = per_draw(model, tensor, post)
        one = model.compile_fn(inputs=model.free_RVs, outs=tensor, on_unused_input="ignore", mode=python_mode())
        names = [rv.name for rv in model.free_RVs]
        for ch, k in ((0, 0), (0, post.sizes["draw"] - 1), (post.sizes["chain"] - 1, 7)):
            want = one({n: post[n].values[ch, k] for n in names})
            np.testing.assert_allclose(got[ch, k], want, rtol=1e-11, atol=1e-11)
        assert got.shape[:2] == (post.sizes["chain"], post.sizes["draw"])


@pytest.mark.smoke
def test_seed_reproducible_and_cache_reused(design, fast_fit, tmp_path, monkeypatch):
    """Same seed, same numbers; a compile in a process that has not compiled the model loads the wrappers that the
    run's first compile of it (`fast_fit`'s, into the run's own cache folder, empty when the run started) wrote to
    disk. (A cold compile into an empty folder: every run's first fit of each kernel.) The check reads a copy of those
    files, so that another worker writing the run's cache meanwhile cannot change the verdict."""
    from inference import compile as engine

    fast, _ = fast_fit
    written = [p for p in engine.cache_dir().iterdir() if "fused-trajectory-logp-" in p.name or "fused-trajectory-expand-" in p.name]
    assert len([p for p in written if p.suffix == ".nbi"]) == 2  # logp and expand wrappers
    copy = tmp_path / "cache"
    copy.mkdir()
    for p in written:
        shutil.copy2(p, copy / p.name)
    monkeypatch.setenv("DEPTRIAL_CACHE", str(copy))
    monkeypatch.setattr(engine, "_COMPILED", {})  # as a new process: nothing compiled in memory
    _, cached = compile_nutpie(get("headline").build(design).fast_variant())
    assert cached  # loaded from disk: no new cache entry
    again, timings = sample_all(get("headline").build(design), SamplerSettings(draws=400, tune=400, chains=2, seed=5, prior_draws=20), quiet=True)
    assert timings["compile_cached"] == 1.0  # a new model object, same graph: loaded, not recompiled
    for name in ("nac_effect", "participant_effects"):
        np.testing.assert_array_equal(again.posterior[name].values, fast.posterior[name].values)
    np.testing.assert_array_equal(again.log_likelihood["y"].values, fast.log_likelihood["y"].values)


@pytest.mark.slow
def test_fast_and_plain_agree_on_default_data():
    """Default trial at default-like settings: key effects agree within MC error, SDs within 10%; the recovered
    participant effects, the pointwise log-likelihood and the predictions match the plain path's."""
    design = build_design(load_dataset(DEFAULT_DATASET))
    settings = SamplerSettings(draws=1000, tune=1000, chains=4, seed=2, prior_draws=20)
    model = get("headline").build(design)
    fast, _ = sample_all(model, settings, quiet=True)
    plain, _ = sample_all(model, SamplerSettings(**{**settings.__dict__, "fast": False}), quiet=True)
    z, ratio = _agree(fast, plain, KEY)
    assert np.all(np.abs(z) < 4.0), z[np.abs(z) >= 4.0]
    assert np.all((ratio > 0.9) & (ratio < 1.1)), ratio
    assert int(fast.sample_stats["diverging"].sum()) == 0
    # recovered participant effects: same posterior means as the plain path's sampled ones
    bf = fast.posterior["participant_effects"].mean(("chain", "draw")).values
    bp = plain.posterior["participant_effects"].mean(("chain", "draw")).values
    for k in range(2):
        assert np.corrcoef(bf[:, k], bp[:, k])[0, 1] > 0.97
    # pointwise log-likelihood (conditional on b) and predictions on the same scale as the plain path
    lf = fast.log_likelihood["y"].sum("obs")
    lp = plain.log_likelihood["y"].sum("obs")
    assert abs(float(lf.mean() - lp.mean())) < 4 * float(np.hypot(lf.std(), lp.std())) / np.sqrt(200)
    yf = fast.posterior_predictive["y"].mean(("chain", "draw")).values
    yp = plain.posterior_predictive["y"].mean(("chain", "draw")).values
    assert np.corrcoef(yf, yp)[0, 1] > 0.98


@pytest.mark.unit
def test_integrated_densities_equal_dense_multivariate_normal_algebra():
    """Participant: log p(post-baseline | baseline, theta); visit: log p(y_ij | other visits, theta), both from V = Z S Z' + s2 I."""
    from scipy import stats

    from models.marginal import integrated_pointwise

    rng = np.random.default_rng(0)
    pid, t1, base = [], [], []
    for i in range(6):  # one participant with a baseline only, others with 2 to 5 visits, one with a gap
        weeks = [0, 2, 4, 8, 12][: (1 if i == 0 else int(rng.integers(2, 6)))]
        if i == 5:
            weeks = [0, 4, 12]
        for w in weeks:
            pid.append(i), t1.append(w / 12), base.append(w == 0)
    pid, t1, base = np.array(pid), np.array(t1), np.array(base)
    draws = 3
    e = rng.normal(0, 3, (draws, len(pid)))
    l00, l10, l11, sigma = rng.uniform(1, 3, draws), rng.normal(0, 1, draws), rng.uniform(0.5, 2, draws), rng.uniform(1, 2, draws)
    part, visit = integrated_pointwise(e, t1, pid, base, (l00, l10, l11), sigma)
    for d in range(draws):
        chol = np.array([[l00[d], 0], [l10[d], l11[d]]])
        for i in range(6):
            idx = np.flatnonzero(pid == i)
            z = np.column_stack([np.ones(len(idx)), t1[idx]])
            v = z @ chol @ chol.T @ z.T + sigma[d] ** 2 * np.eye(len(idx))
            full = multivariate_normal(np.zeros(len(idx)), v).logpdf(e[d, idx])
            np.testing.assert_allclose(part[d, i], full - stats.norm(0, np.sqrt(v[0, 0])).logpdf(e[d, idx[0]]), atol=1e-10)
            for j in range(len(idx)):
                o = [k for k in range(len(idx)) if k != j]
                mean = v[j, o] @ np.linalg.solve(v[np.ix_(o, o)], e[d, idx[o]]) if o else 0.0
                var = v[j, j] - (v[j, o] @ np.linalg.solve(v[np.ix_(o, o)], v[o, j]) if o else 0.0)
                np.testing.assert_allclose(visit[d, idx[j]], stats.norm(mean, np.sqrt(var)).logpdf(e[d, idx[j]]), atol=1e-10)


@pytest.mark.smoke
def test_integrated_loo_is_reliable_where_the_conditional_one_is_not(fast_fit, design):
    """On the same fit: PSIS on the integrated densities leaves (almost) no unit with Pareto k > 0.7, the
    participant-summed conditional log-likelihood leaves many; units are the post-baseline ones."""
    from diagnostics.loo import PARETO_K_MAX, loo_participants, loo_visits

    idata = fast_fit[0]
    post_visits = design.obs_week > 0
    assert idata.log_likelihood["y_visit"].sizes["scored_visit"] == post_visits.sum()
    assert set(idata.log_likelihood["y_participant"]["scored_participant"].values) == set(design.participants[design.obs_participant[post_visits]])
    part, visit = loo_participants(idata), loo_visits(idata)
    assert part.integrated and visit.integrated
    assert (part.pareto_k > PARETO_K_MAX).mean() <= 0.05 and (visit.pareto_k > PARETO_K_MAX).mean() <= 0.01  # 60 participants: a few are influential
    conditional = loo_participants(idata, integrated=False)
    assert (conditional.pareto_k > PARETO_K_MAX).mean() > 0.3


@pytest.mark.smoke
@pytest.mark.parametrize("name, arms", [("treatment", "two"), ("headline", "two"), ("treatment_curved", "two"), ("moderation", "two"),
                                        ("treatment_curved", "three"), ("moderation", "three")])
def test_plain_path_integrated_densities_equal_the_fast_paths(design, three_arm_design, name, arms):
    """Same draws of the population parameters: the plain path (model mean minus the sampled effects) and the
    fast path (the marginal model's fixed part) give the same integrated densities; Student-t has none. With the
    same participant effects, the fast path's visit means (pointwise log-likelihood, predictions) are the plain
    model's mean: the curvature column and the biomarker x arm term included, each active arm's own on the
    three-arm trial."""
    import pymc as pm

    from inference.marginal import (
        _normal_mean,
        _sampled,
        fixed_part,
        integrated_log_likelihood,
        markers_from_std,
        per_draw,
        plain_integrated_log_likelihood,
        shift_to_markers,
        visit_means,
    )

    design = design if arms == "two" else three_arm_design
    built = get(name).build(design)
    with built.model:
        prior = pm.sample_prior_predictive(draws=6, random_seed=2).prior
    idata = az.InferenceData(posterior=prior)
    plain = plain_integrated_log_likelihood(idata, built)
    fixed = fixed_part(_sampled(prior, design), built.fast_variant())  # integrated biomarkers at their conditional means
    assert fixed.shape[-1] == (4 if name.endswith("curved") else 3)
    fast = integrated_log_likelihood(idata, design, fixed)
    for var in ("y_participant", "y_visit"):
        np.testing.assert_allclose(plain[var].values, fast[var].values, rtol=1e-9, atol=1e-9)
    if "marker_mean" in prior:  # the visit means given the draws' biomarkers
        fixed = shift_to_markers(fixed, prior, design, markers_from_std(prior, design.baseline))
    mu_plain = per_draw(built.model, _normal_mean(built.model), prior)[0]
    np.testing.assert_allclose(visit_means(idata, design, 0, fixed)[0], mu_plain, rtol=1e-10, atol=1e-9)
    assert plain_integrated_log_likelihood(idata, get(name).build(design, likelihood="student")) == {}


# ---------------------------------------------------------------- the curved and moderation models on the fast path

NEW_FAST = ("treatment_curved", "moderation")
NEW_KEY = {
    "treatment_curved": ["nac_effect", "placebo_change", "time_curvature", "nac_curvature", "residual_sd", "participant_sd"],
    "moderation": [
        "nac_effect", "nac_marker_moderation", "nac_moderation_per_doubling", "moderation_per_doubling", "residual_sd", "participant_sd",
    ],
}


@pytest.mark.smoke
@pytest.mark.parametrize("name, arms", [(name, "two") for name in NEW_FAST] + [("treatment_curved", "three")])
def test_curved_and_moderation_fast_paths_complete_fits(design, three_arm_design, name, arms, monkeypatch):
    """A short fit on the fast path through the fused log density: every variable of the plain model with its dims,
    participant effects recovered, predictions on the data's scale, no divergences (agreement with the plain path:
    the slow test below; exactness: tests/test_fused.py and the unit tests above); with two active arms too."""
    from inference import compile as engine

    design = design if arms == "two" else three_arm_design
    layouts = []
    real = engine.fused_layout
    monkeypatch.setattr(engine, "fused_layout", lambda built: layouts.append(real(built)) or layouts[-1])
    fit, _ = sample_all(get(name).build(design), SamplerSettings(draws=200, tune=300, chains=2, seed=4, prior_draws=10), quiet=True)
    assert len(layouts) == 1 and layouts[0] is not None and layouts[0].kernel == "trajectory"  # the fused function, not the graph
    assert fit.posterior.attrs["fit_path"] == "marginal"
    plain = get(name).build(design).model
    stored = {plain.rvs_to_values[rv].name for rv in plain.free_RVs} | {v.name for v in plain.unobserved_value_vars}
    assert set(fit.posterior.data_vars) == stored
    for var in fit.posterior.data_vars:
        if var in plain.named_vars_to_dims:
            assert fit.posterior[var].dims[2:] == tuple(plain.named_vars_to_dims[var]), var
    assert int(fit.sample_stats["diverging"].sum()) == 0
    yp = fit.posterior_predictive["y"].mean(("chain", "draw")).values
    assert np.corrcoef(yp, design.y)[0, 1] > 0.9
    assert {"y", "y_participant", "y_visit"} <= set(fit.log_likelihood.data_vars)
    assert list(fit.posterior["nac_effect"]["active_arm"].values) == design.active_arms
    if name == "treatment_curved":  # nac_effect includes the bend kappa_a q_w
        post = fit.posterior
        q = curve_basis(design.week_t1)
        w = list(design.weeks).index(4)
        want = post["nac_change"].sel(phase="treatment") * design.week_t1[w] + post["nac_curvature"] * q[w]
        np.testing.assert_allclose(post["nac_effect"].sel(week=4).values, want.values, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_FAST)
# numba's performance note while compiling the plain moderation graph (a dot product of non-contiguous views)
@pytest.mark.filterwarnings("ignore:np.dot\\(\\) is faster on contiguous arrays")
def test_curved_and_moderation_fast_and_plain_posteriors_agree(design, name):
    """The fast path (fused log density) against the plain path (the compiled graph, participant effects sampled):
    key effects within Monte Carlo error, posterior SDs within 25%."""
    settings = SamplerSettings(draws=600, tune=600, chains=2, seed=5, prior_draws=20)
    built = get(name).build(design)
    fast, _ = sample_all(built, settings, quiet=True)
    plain, _ = sample_all(built, SamplerSettings(**{**settings.__dict__, "fast": False}), quiet=True)
    assert fast.posterior.attrs["fit_path"] == "marginal" and plain.posterior.attrs["fit_path"] == "plain"
    z, ratio = _agree(fast, plain, NEW_KEY[name])
    assert np.all(np.abs(z) < 4.0), z[np.abs(z) >= 4.0]
    assert np.all((ratio > 0.75) & (ratio < 1.33)), ratio
    bf = fast.posterior["participant_effects"].mean(("chain", "draw")).values
    bp = plain.posterior["participant_effects"].mean(("chain", "draw")).values
    for k in range(2):
        assert np.corrcoef(bf[:, k], bp[:, k])[0, 1] > 0.97
