"""Bayesian MMRM: data layout, exact marginal likelihood, priors, and agreement with a REML MMRM (two arms here; the
k-arm REML check is tests/test_multiarm_reml.py)."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pymc as pm
import pytest
from scipy import optimize
from scipy.stats import multivariate_normal
from threadpoolctl import threadpool_limits

import fit
from data import DEFAULT_DATASET, TrialParameters, load_dataset, simulate_trial
from inference.sampling import SamplerSettings, sample_all
from models import ModelDataError, build_design, get
from models.contract import VISIT_CHANGES
from models.mmrm import mmrm_data

THREE_ARMS = TrialParameters(treatment_arm="low", more_arms=(("high", -3.0, -3.5),), n_participants=60, seed=12,
                             dropout_by_last_week=0.4, intermittent_missing=0.1, serum_fraction=0.0)


@pytest.fixture(scope="module")
def design(small_trial):
    return build_design(small_trial)


@pytest.fixture(scope="module")
def design_cov(small_trial_dir, tmp_path_factory):
    """The small trial with baseline covariates declared (continuous age, 2-level sex, 3-level education)."""
    from tests.test_covariates import with_covariates

    return build_design(load_dataset(with_covariates(small_trial_dir, tmp_path_factory.mktemp("mmrm_cov") / "t")))


@pytest.fixture(scope="module")
def design_three(tmp_path_factory):
    """A small three-arm trial (placebo, low, high; 20 per arm) with drop-out and intermittent gaps, no biomarkers."""
    folder = tmp_path_factory.mktemp("three_mmrm") / "t"
    simulate_trial(THREE_ARMS).write(folder)
    design = build_design(load_dataset(folder))
    assert design.active_arms == ["low", "high"] and np.bincount(design.arm_idx).tolist() == [20, 20, 20]
    return design


def _arm_term(nac, design, r):
    """d_av T_ia summed over a for design participant r: nac (active arm x visit)."""
    a = int(design.arm_idx[r])
    return nac[a - 1] if a > 0 else np.zeros(nac.shape[-1])


@pytest.fixture(scope="module")
def design_nobio(tmp_path_factory):
    trial = simulate_trial(TrialParameters(n_participants=40, seed=12, dropout_by_last_week=0.4, intermittent_missing=0.1))
    trial.biomarkers = trial.biomarkers.iloc[0:0]
    folder = tmp_path_factory.mktemp("nobio_mmrm") / "t"
    trial.write(folder)
    return build_design(load_dataset(folder))


# --- an independent REML MMRM (unstructured covariance, GLS for the mean), straight from the Dataset


def reml_mmrm(ds, covariates=None):
    """REML fit of change ~ visit + visit:arm + visit:baseline + site [+ covariates], unstructured covariance.

    covariates: {name: value per participant of ds}, each a main effect common to every visit (column
    'covariate_<name>'). Returns (beta, covariance of beta, names). Written from the loaded Dataset,
    sharing no code with the Bayesian model, as an independent reference.
    """
    score = ds["score"].values
    change = score[:, 1:] - score[:, [0]]
    keep = ~np.isnan(change).all(axis=1)
    change, base = change[keep], score[keep, 0]
    assert ds["arm_index"].values.max() == 1, "two arms here (tests/test_multiarm_reml.py: k arms)"
    treated = (ds["arm_index"].values[keep] > 0).astype(float)
    sites, site_idx = np.unique(ds["site"].values[keep], return_inverse=True)
    n, nv = change.shape
    eye = np.eye(nv)
    blocks = [eye[None].repeat(n, 0), eye[None] * treated[:, None, None], eye[None] * (base - base.mean())[:, None, None]]
    dummies = np.zeros((n, nv, len(sites) - 1))
    for s in range(1, len(sites)):
        dummies[site_idx == s, :, s - 1] = 1.0
    extra = [np.repeat(np.asarray(v, dtype=float)[keep][:, None, None], nv, axis=1) for v in (covariates or {}).values()]
    X = np.concatenate(blocks + [dummies] + extra, axis=2)  # participant x visit x column
    names = [f"{k}_{w}" for k in ("visit", "nac", "baseline") for w in ds["week"].values[1:]] + [f"site_{s}" for s in sites[1:]]
    names += [f"covariate_{c}" for c in (covariates or {})]
    observed = ~np.isnan(change)
    groups = {}
    for i, o in enumerate(observed):
        groups.setdefault(tuple(np.flatnonzero(o)), []).append(i)
    # each missingness pattern's attended visits, its participants' design rows and changes (taken once, not per evaluation)
    groups = [(np.array(k), X[np.array(v)][:, np.array(k), :], change[np.array(v)][:, np.array(k)]) for k, v in groups.items()]
    tril = np.tril_indices(nv)

    def pieces(theta):
        L = np.zeros((nv, nv))
        L[tril] = theta
        L[np.diag_indices(nv)] = np.exp(np.diag(L))
        S = L @ L.T
        p = X.shape[2]
        xtvx, xtvy, yvy, logdet = np.zeros((p, p)), np.zeros(p), 0.0, 0.0
        for o, Xo, yo in groups:
            Vinv = np.linalg.inv(S[np.ix_(o, o)])
            VX, Vy = np.matmul(Vinv, Xo), yo @ Vinv  # V^-1 X_n, V^-1 y_n (V^-1 symmetric) of each participant n
            xtvx += np.tensordot(Xo, VX, axes=([0, 1], [0, 1]))  # sum_n X_n' V^-1 X_n
            xtvy += np.tensordot(Xo, Vy, axes=([0, 1], [0, 1]))
            yvy += float((yo * Vy).sum())
            logdet += len(yo) * np.linalg.slogdet(S[np.ix_(o, o)])[1]
        return xtvx, xtvy, yvy, logdet

    def objective(theta):
        xtvx, xtvy, yvy, logdet = pieces(theta)
        beta = np.linalg.solve(xtvx, xtvy)
        return logdet + (yvy - beta @ xtvy) + np.linalg.slogdet(xtvx)[1]

    cov0 = np.ma.cov(np.ma.masked_invalid(change), rowvar=False).filled(0) + 1e-6 * eye
    L0 = np.linalg.cholesky(cov0 + 0.1 * np.diag(np.diag(cov0)))
    L0[np.diag_indices(nv)] = np.log(np.diag(L0))
    with threadpool_limits(1):  # small matrices: BLAS threads only contend
        res = optimize.minimize(objective, L0[tril], method="BFGS", options={"gtol": 1e-6, "maxiter": 2000})
    xtvx, xtvy, _, _ = pieces(res.x)
    return np.linalg.solve(xtvx, xtvy), np.linalg.inv(xtvx), names


# --- structure


@pytest.mark.unit
def test_mmrm_data_layout(design_nobio):
    d = mmrm_data(design_nobio)
    n = design_nobio.n_participants
    wide = np.full((n, len(design_nobio.weeks)), np.nan)
    wide[design_nobio.obs_participant, np.searchsorted(design_nobio.weeks, design_nobio.obs_week)] = design_nobio.y
    no_post = np.isnan(wide[:, 1:]).all(axis=1)
    assert d.n_excluded == int(no_post.sum())
    np.testing.assert_array_equal(d.rows, np.flatnonzero(~no_post))
    np.testing.assert_allclose(d.change, wide[~no_post, 1:] - wide[~no_post, :1])
    np.testing.assert_allclose(d.obs_change, d.change[d.obs_row, d.obs_visit])
    assert len(d.obs_change) == int((~np.isnan(d.change)).sum())
    assert any(not prefix for *_, prefix in d.patterns), "the fixture must have intermittent (non-monotone) gaps"
    for vis, start, n_p, prefix in d.patterns:  # each pattern block is contiguous, one participant after another
        rows = d.obs_row[start : start + n_p * len(vis)].reshape(n_p, len(vis))
        assert (rows == rows[:, :1]).all()
        np.testing.assert_array_equal(d.obs_visit[start : start + n_p * len(vis)].reshape(n_p, len(vis)), np.tile(vis, (n_p, 1)))


@pytest.mark.unit
def test_log_likelihood_is_the_marginal_normal_of_attended_visits(design_nobio, design_three):
    """Sum over a participant's observations = scipy's multivariate normal over their attended visits (two arms and
    three: each active arm's participants get their own arm's row of nac_visit_effect, the control arm's none)."""
    for design in (design_nobio, design_three):
        model = get("mmrm").build(design).model
        d = mmrm_data(design)
        rng = np.random.default_rng(1)
        point = {k: v + rng.normal(0, 0.4, size=np.shape(v)) for k, v in model.initial_point().items()}
        per_obs = model.compile_fn(model.logp(vars=[model["change"]], sum=False)[0], inputs=model.value_vars, on_unused_input="ignore")(point)
        names = ["visit_sd", "visit_corr", "visit_mean", "nac_visit_effect", "baseline_slope", "site_effect"]
        sd, corr, vm, nac, slope, site = model.compile_fn(model.replace_rvs_by_values([model[v] for v in names]), inputs=model.value_vars, on_unused_input="ignore")(point)
        assert nac.shape == (design.n_active, len(d.visits))
        cov = np.outer(sd, sd) * corr
        base = d.baseline - d.baseline.mean()
        for i in range(len(d.rows)):
            o = ~np.isnan(d.change[i])
            r = d.rows[i]
            mu = vm + _arm_term(nac, design, r) + slope * base[i] + site[design.site_idx[r]]
            expected = multivariate_normal(mu[o], cov[np.ix_(o, o)]).logpdf(d.change[i][o])
            assert per_obs[d.obs_row == i].sum() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.unit
def test_numpy_pointwise_log_likelihood_equals_pymc(design_nobio, design_cov, design_three):
    """BuiltModel.pointwise (used instead of compiling the graph) gives PyMC's own pointwise densities, and
    models.mmrm.mean_change PyMC's own mean, without baseline covariates and with some of those declared (the
    covariate columns found by the fit's coordinate; all of them: tests/test_fused.py, tests/test_covariates.py),
    and on a three-arm trial."""
    import arviz as az
    import pymc as pm

    from models.mmrm import mean_change

    for dsg, covariates in ((design_nobio, True), (design_cov, ["education", "age"]), (design_three, True)):
        built = get("mmrm").build(dsg, covariates=covariates)
        assert ("covariate_effect" in built.model.named_vars) == (dsg is design_cov)
        prior = pm.sample_prior_predictive(draws=6, model=built.model, random_seed=3).prior
        idata = az.InferenceData(posterior=prior)
        with built.model:
            pm.compute_log_likelihood(idata, var_names=["change"], extend_inferencedata=True, progressbar=False)
        ours = built.pointwise(prior)["change"]
        np.testing.assert_allclose(ours, idata.log_likelihood["change"].values, rtol=1e-9, atol=1e-9)
        model = built.model
        mu = model.compile_fn(model["change"].owner.inputs[2], inputs=model.free_RVs, on_unused_input="ignore")
        want = np.array([mu({rv.name: prior[rv.name].values[0, k] for rv in model.free_RVs}) for k in range(6)])
        np.testing.assert_allclose(mean_change(prior, dsg)[0], want, rtol=1e-12, atol=1e-9)


@pytest.mark.unit
def test_dims_priors_and_prior_predictive(design_nobio, design):
    for des in (design_nobio, design):  # no biomarkers needed; biomarkers present are ignored
        built = get("mmrm").build(des)
        model = built.model
        assert np.isfinite(model.point_logps()["change"])
    dims = model.named_vars_to_dims
    assert dims["nac_effect"] == ("active_arm", "week") and dims["change"] == ("obs",)
    assert dims["nac_visit_effect"] == ("active_arm", "visit") and dims["visit_corr"] == ("visit", "visit2")
    assert dims["placebo_change"] == ("week",) and dims["arm_indicator"] == ("participant", "active_arm")
    assert list(model.coords["active_arm"]) == ["nac"]
    assert built.outcome_vars == ("change",) and built.observations == VISIT_CHANGES and not get("mmrm").comparable
    assert set(built.priors) == {"visit_mean", "nac_visit_effect", "baseline_slope", "site", "visit_sd", "visit_corr"}
    with model:
        prior = pm.sample_prior_predictive(draws=200, random_seed=2)
    d = mmrm_data(design)
    score = d.baseline[d.obs_row] + prior.prior_predictive["change"].values.reshape(-1, len(d.obs_row))
    inside = np.mean((score >= -10) & (score <= 70))
    assert inside > 0.9, f"only {inside:.0%} of prior predictive scores near the 0-60 range"
    assert (prior.prior["nac_effect"].sel(week=0).values == 0).all()


@pytest.mark.unit
def test_three_arms_dims_and_fused_density_equals_pytensor(design_three):
    """Arm x visit on a three-arm trial: one row of nac_visit_effect and nac_effect per active arm; the fused log
    density (inference/kernels_mmrm.py) equals PyTensor's, its gradient and every stored variable, at random points
    (three arms under other priors, with eight sites and covariates: tests/test_fused.py::test_fused_mmrm_sums_and_rows_equal_pytensor)."""
    from tests.test_fused import _check_against_pytensor, _mmrm

    built = get("mmrm").build(design_three)
    dims = built.model.named_vars_to_dims
    assert dims["nac_visit_effect"] == ("active_arm", "visit") and dims["nac_effect"] == ("active_arm", "week")
    assert list(built.model.coords["active_arm"]) == ["low", "high"]
    arm = built.model["arm_indicator"].get_value()
    np.testing.assert_array_equal(arm, design_three.arm_indicator()[mmrm_data(design_three).rows])
    patterns = mmrm_data(design_three).patterns
    assert any(not prefix for *_, prefix in patterns), "the fixture must have intermittent gaps"
    _, layout = _check_against_pytensor(design_three, None, points=3, seed=3, build=_mmrm)
    names, _, shapes = layout.shape_info
    assert layout.kernel == "mmrm" and shapes[names.index("nac_visit_effect")] == (2, len(design_three.weeks) - 1)


@pytest.mark.unit
def test_an_arm_without_post_baseline_visits_is_refused(design_three):
    """Every arm needs post-baseline visits: the MMRM names the arm that has none, before any fit."""
    ds = design_three.dataset.copy(deep=True)
    high = ds["arm_index"].values == 2
    score = ds["score"].values.copy()
    score[np.ix_(high, np.arange(1, score.shape[1]))] = np.nan
    ds["score"] = (ds["score"].dims, score)
    design = build_design(ds)
    with pytest.raises(ModelDataError, match=r"every arm; arm\(s\) \['high'\] have none"):
        mmrm_data(design)
    with pytest.raises(ModelDataError, match="every arm"):
        get("mmrm").build(design)


@pytest.mark.unit
def test_normal_likelihood_only(design_nobio, tmp_path, capsys):
    assert get("mmrm").likelihoods == ("normal",)
    with pytest.raises(ValueError, match="supports likelihoods"):
        get("mmrm").build(design_nobio, likelihood="student")
    assert fit.main(["--model", "mmrm", "--likelihood", "student", "--out", str(tmp_path / "o")]) == 2
    assert "supports likelihoods" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- fits: a small simulated trial in the default run, the bundled trial (n = 252) in the slow run


def _fit(ds, draws, tune, seed):
    design = build_design(ds)
    settings = SamplerSettings(draws=draws, tune=tune, chains=2, seed=seed, prior_draws=20)
    idata, _ = sample_all(get("mmrm").build(design), settings, quiet=True)
    return ds, design, idata


@pytest.fixture(scope="module")
def small_fit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mmrm_small") / "t"
    simulate_trial(TrialParameters(n_participants=100, seed=23, nac_effect_e=-3.0, nac_effect_f=-5.0, serum_fraction=0.0)).write(folder)
    return _fit(load_dataset(folder), draws=300, tune=300, seed=11)


@pytest.fixture(scope="module")
def default_fit():
    return _fit(load_dataset(DEFAULT_DATASET), draws=600, tune=500, seed=11)


def _check_agreement(design, idata, ds, tol, weeks, slope_tol):
    beta, cov, names = reml_mmrm(ds)
    post = idata.posterior["nac_effect"].sel(active_arm="nac")
    for w in weeks:
        j = names.index(f"nac_{w}")
        se = np.sqrt(cov[j, j])
        draws = post.sel(week=w).values.ravel()
        assert abs(draws.mean() - beta[j]) < tol * se, (w, draws.mean(), beta[j], se)
        assert 0.75 < draws.std() / se < 1.25, (w, draws.std(), se)
        j = names.index(f"baseline_{w}")  # baseline x visit too
        se = np.sqrt(cov[j, j])
        assert abs(idata.posterior["baseline_slope"].sel(visit=w).values.mean() - beta[j]) < slope_tol * se, (w, beta[j], se)


def _check_groups(idata):
    assert int(idata.sample_stats["diverging"].sum()) == 0
    n_obs = idata.observed_data["change"].sizes["obs"]
    assert idata.log_likelihood["change"].sizes["obs"] == n_obs
    assert idata.posterior_predictive["change"].sizes["obs"] == n_obs
    assert np.isfinite(idata.log_likelihood["change"].values).all()
    # posterior predictive change at week 12 resembles the observed one (mean and SD)
    wk = idata.constant_data["obs_week"].values
    pp = idata.posterior_predictive["change"].values[..., wk == 12]
    obs = idata.observed_data["change"].values[wk == 12]
    assert abs(pp.mean() - obs.mean()) < 1.5 and 0.75 < pp.std() / obs.std() < 1.3
    with warnings.catch_warnings():  # a high Pareto k of one visit is the diagnostics' business (the LOO tables flag it), not this check's
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        assert np.isfinite(az.loo(idata, var_name="change").elpd_loo)


@pytest.mark.smoke
def test_short_fit_agrees_with_reml(tmp_path):
    """The small version of the REML agreement, through the fused log density: the posterior mean of the
    NAC - placebo difference at every visit within 0.25 REML SE of the REML estimate (n = 100, weak
    N(0, 6) prior; Monte Carlo error about 0.05 SE), baseline x visit within 1 SE (its N(0, 0.5) prior
    pulls it a little). A swapped arm, a wrong visit index or a wrong conditional density fails it."""
    from inference.sampling import SamplerSettings, sample_posterior

    folder = tmp_path / "t"
    simulate_trial(TrialParameters(n_participants=100, seed=23, nac_effect_e=-3.0, nac_effect_f=-5.0, serum_fraction=0.0)).write(folder)
    ds = load_dataset(folder)
    idata, timings = sample_posterior(get("mmrm").build(build_design(ds)), SamplerSettings(draws=400, tune=400, chains=2, seed=5), quiet=True)
    assert timings["fused_log_density"] == 1.0 and int(idata.sample_stats["diverging"].sum()) == 0
    post = idata.posterior
    beta, cov, names = reml_mmrm(ds)
    for i, w in enumerate(ds["week"].values[1:]):
        for term, var, tol in (("nac", "nac_visit_effect", 0.25), ("baseline", "baseline_slope", 1.0)):
            j = names.index(f"{term}_{w}")
            draws = post[var].sel(active_arm="nac") if term == "nac" else post[var]
            mean = float(draws.isel(visit=i).mean())
            assert abs(mean - beta[j]) < tol * np.sqrt(cov[j, j]), (term, w, mean, beta[j], np.sqrt(cov[j, j]))


@pytest.mark.slow
def test_small_bayesian_mmrm_agrees_with_reml_and_covers_truth(small_fit):
    """n = 100: posterior means of the NAC - placebo difference at weeks 12 and 16 within 0.3 REML
    standard errors of the REML estimate (the N(0, 6) prior shrinks a little more than at n = 252),
    SDs within 25% of the SEs, the true effects (-3, -5) inside the 99% interval; baseline x visit
    within 1 SE."""
    ds, design, idata = small_fit
    # baseline x visit: at n = 100 (about 70 at week 12) the posterior mean, which averages over the
    # covariance's uncertainty, sits up to ~0.7 SE from the plug-in REML estimate; about 0.3 SE at n = 252 (slow)
    _check_agreement(design, idata, ds, tol=0.3, weeks=(12, 16), slope_tol=1.0)
    for w, t in {12: -3.0, 16: -5.0}.items():
        lo, hi = az.hdi(idata.posterior["nac_effect"].sel(active_arm="nac", week=w).values.ravel(), hdi_prob=0.99)
        assert lo < t < hi, (w, lo, hi)
    _check_groups(idata)


@pytest.mark.slow
def test_bayesian_mmrm_agrees_with_reml_on_bundled_trial(default_fit):
    """n = 252: the NAC difference within 0.25 SE of REML at every visit; the truth (-1.5, -3) inside the
    99% interval. Baseline x visit within 0.35 SE: the posterior mean, which averages over the
    covariance's uncertainty, sits 0.19-0.29 SE from the plug-in REML estimate on this trial (measured
    with 8,000-12,000 draws, the same on the fused and the graph log density); a wrong visit index or
    baseline would be many SE away."""
    ds, design, idata = default_fit
    _check_agreement(design, idata, ds, tol=0.25, weeks=design.weeks[1:], slope_tol=0.35)
    for w, t in {12: -1.5, 16: -3.0}.items():  # data/default/truth.json
        lo, hi = az.hdi(idata.posterior["nac_effect"].sel(active_arm="nac", week=w).values.ravel(), hdi_prob=0.99)
        assert lo < t < hi, (w, lo, hi)
    _check_groups(idata)


@pytest.mark.slow
def test_bayesian_mmrm_zero_effect_covers_zero(tmp_path):
    params = TrialParameters(n_participants=252, seed=81, nac_effect_e=0.0, nac_effect_f=0.0, serum_fraction=0.0)
    simulate_trial(params).write(tmp_path / "t")
    ds = load_dataset(tmp_path / "t")
    design = build_design(ds)
    idata, _ = sample_all(get("mmrm").build(design), SamplerSettings(draws=800, tune=600, chains=2, seed=5, prior_draws=20), quiet=True)
    beta, cov, names = reml_mmrm(ds)
    for w in (12, 16):
        draws = idata.posterior["nac_effect"].sel(active_arm="nac", week=w).values.ravel()
        lo, hi = az.hdi(draws, hdi_prob=0.94)
        assert lo < 0.0 < hi, (w, lo, hi)
        j = names.index(f"nac_{w}")
        assert abs(draws.mean() - beta[j]) < 0.25 * np.sqrt(cov[j, j])


@pytest.mark.smoke
def test_integrated_densities_are_those_of_post_baseline_scores_given_baseline(design_nobio):
    """The MMRM's y_participant / y_visit equal dense multivariate-normal algebra on each participant's attended
    visits, on the same units (participant ids, visit indices) as the trajectory models'."""

    from inference.marginal import mmrm_integrated_log_likelihood, scored_units

    built = get("mmrm").build(design_nobio)
    with built.model:
        prior = pm.sample_prior_predictive(draws=4, random_seed=5).prior
        idata = az.InferenceData(posterior=prior)
        pm.compute_log_likelihood(idata, var_names=["change"], progressbar=False)
    got = mmrm_integrated_log_likelihood(idata, built)
    d = mmrm_data(design_nobio)
    _, scored, visits = scored_units(design_nobio)
    assert list(got["y_participant"]["scored_participant"].values) == list(design_nobio.participants[scored])
    assert list(got["y_visit"]["scored_visit"].values) == list(visits)
    mu_fn = built.model.compile_fn(inputs=built.model.free_RVs, outs=built.model["change"].owner.inputs[2], on_unused_input="ignore")
    for k in range(4):
        point = {rv.name: prior[rv.name].values[0, k] for rv in built.model.free_RVs}
        mu = mu_fn(point)
        sd, corr = prior["visit_sd"].values[0, k], prior["visit_corr"].values[0, k]
        cov = np.outer(sd, sd) * corr
        for r in (0, 3, len(d.rows) - 1):
            rows = np.flatnonzero(d.obs_row == r)
            vis = d.obs_visit[rows]
            e = d.obs_change[rows] - mu[rows]
            v = cov[np.ix_(vis, vis)]
            want = multivariate_normal(np.zeros(len(rows)), v).logpdf(e)
            assert got["y_participant"].values[0, k, r] == pytest.approx(want, abs=1e-8)
            for j, obs in enumerate(rows):
                o = [i for i in range(len(rows)) if i != j]
                m = v[j, o] @ np.linalg.solve(v[np.ix_(o, o)], e[o]) if o else 0.0
                var = v[j, j] - (v[j, o] @ np.linalg.solve(v[np.ix_(o, o)], v[o, j]) if o else 0.0)
                label = np.flatnonzero((design_nobio.obs_participant == d.rows[r]) & (design_nobio.obs_week == d.visits[vis[j]]))[0]
                pos = int(np.flatnonzero(got["y_visit"]["scored_visit"].values == label)[0])
                dens = -0.5 * (np.log(2 * np.pi * var) + (e[j] - m) ** 2 / var)
                assert got["y_visit"].values[0, k, pos] == pytest.approx(dens, abs=1e-8)


@pytest.mark.unit
def test_log_likelihood_in_blocks_of_draws_is_the_whole_array_computation(design_three, monkeypatch):
    """complete_fit's MMRM densities ('change', 'y_participant', 'y_visit'), computed a block of draws of one chain at a
    time from one mean, are those of the whole-array computation bit for bit: models.mmrm.pointwise_logp on every draw,
    each participant's sum added in visit order (np.add.at), the leave-one-visit-out densities from the inverse of
    each pattern's block of Sigma."""
    import inference.marginal as im
    from models.marginal import LOG2PI
    from models.mmrm import mean_change, pointwise_logp, visit_covariance

    built = get("mmrm").build(design_three)
    prior = pm.sample_prior_predictive(draws=10, model=built.model, random_seed=7).prior
    post = prior.isel(chain=0, drop=True).rename(draw="flat").drop_vars("flat")
    post = post.coarsen(flat=5).construct(flat=("chain", "draw")).assign_coords(chain=[0, 1], draw=np.arange(5))  # 2 chains x 5 draws
    idata = az.InferenceData(posterior=post)
    monkeypatch.setattr(im, "DRAW_BLOCK", 2)  # blocks of 2 and 3 draws (not 2, 2 and 1: numpy takes another path for one draw)
    got = im.mmrm_log_likelihood(idata, built)
    d = mmrm_data(design_three)
    whole = pointwise_logp(post, design_three)["change"]
    np.testing.assert_array_equal(got["change"].values, whole)
    participant = np.zeros(whole.shape[:2] + (len(d.rows),))
    np.add.at(participant, (slice(None), slice(None), d.obs_row), whole)
    np.testing.assert_array_equal(got["y_participant"].values, participant)
    e = d.obs_change - mean_change(post, design_three, d)
    cov = visit_covariance(post, len(d.visits))
    visit = np.empty_like(e)
    for vis, start, n_p, _ in d.patterns:
        k = len(vis)
        block = slice(start, start + n_p * k)
        prec = np.linalg.inv(cov[..., vis[:, None], vis[None, :]])
        pr = e[..., block].reshape(2, 5, n_p, k) @ prec
        pjj = np.diagonal(prec, axis1=-2, axis2=-1)[:, :, None, :]
        visit[..., block] = (0.5 * (np.log(pjj) - LOG2PI) - 0.5 * pr**2 / pjj).reshape(2, 5, n_p * k)
    order = np.argsort(got["y_visit"]["scored_visit"].values)
    np.testing.assert_array_equal(np.sort(got["y_visit"]["scored_visit"].values), got["y_visit"]["scored_visit"].values)
    index = {(int(p), int(w)): i for i, (p, w) in enumerate(zip(design_three.obs_participant, design_three.obs_week))}
    labels = np.array([index[(int(d.rows[r]), int(d.visits[v]))] for r, v in zip(d.obs_row, d.obs_visit)])
    np.testing.assert_array_equal(got["y_visit"].values, visit[..., np.argsort(labels)])
    assert (order == np.arange(len(order))).all()


@pytest.mark.unit
def test_posterior_predictive_draws_each_participants_attended_visits_from_their_normal(design_three):
    """The MMRM's posterior predictive (complete_fit's, through mmrm_log_likelihood with an rng): at a posterior of one
    point repeated, the draws of every observation have the model's mean, and the draws of a participant's attended
    visits have Sigma's block of those visits as their covariance (distinct SDs per visit, so a visit or participant
    mixed up fails); one draw of `draw_changes` is the CustomDist's random of before, number for number."""
    import inference.marginal as im
    from models.mmrm import _random, draw_changes, mean_change, visit_covariance

    built = get("mmrm").build(design_three)
    one = pm.sample_prior_predictive(draws=1, model=built.model, random_seed=5).prior.isel(chain=0, draw=0, drop=True)
    n = 4000
    post = one.expand_dims(chain=[0], draw=np.arange(n)).copy(deep=True)
    idata = az.InferenceData(posterior=post)
    got = im.mmrm_log_likelihood(idata, built, rng=np.random.default_rng(3))["predictive"].values[0]
    assert got.dtype == np.float32
    d = mmrm_data(design_three)
    mu = mean_change(post.isel(draw=[0]), design_three, d)[0, 0]
    cov = visit_covariance(post.isel(draw=[0]), len(d.visits))[0, 0]
    sd = np.sqrt(np.diag(cov))[d.obs_visit]
    np.testing.assert_array_less(np.abs(got.mean(axis=0) - mu), 5 * sd / np.sqrt(n))
    for vis, start, n_p, _ in d.patterns[:3] + d.patterns[-2:]:  # drop-out patterns and ones with gaps
        k = len(vis)
        block = got[:, start : start + k]  # the pattern's first participant
        emp = np.cov(block.T.astype(float)).reshape(k, k)
        want = cov[np.ix_(vis, vis)]
        tol = 5 * np.sqrt((want**2 + np.outer(np.diag(want), np.diag(want))) / n)
        assert (np.abs(emp - want) < tol).all(), (vis, emp, want)
    # one draw: the random PyMC calls, as it was (standard normals times L', indexed by row and visit)
    lower = np.linalg.cholesky(cov)
    old = mu + (np.random.default_rng(9).standard_normal((len(d.rows), len(d.visits))) @ lower.T)[d.obs_row, d.obs_visit]
    np.testing.assert_array_equal(_random(len(d.rows), d.obs_row, d.obs_visit)(mu, lower[None], rng=np.random.default_rng(9)), old)
    np.testing.assert_array_equal(draw_changes(mu, lower, len(d.rows), d.obs_row, d.obs_visit, np.random.default_rng(9)), old)


@pytest.mark.smoke
def test_planning_mmrm_agrees_with_this_bayesian_mmrm_on_simulated_trials():
    """The small version of planning's MMRM-vs-MCMC check (the full one, 100 trials, is slow): on 3
    simulated trials with MAR dropout (one fails, two succeed), the closed-form MMRM posterior (REML Sigma
    plugged in) and this model sampled through the fused log density (2 chains x 2000 draws) give
    P(effect < 0) and P(effect < -MCID), the MCMC side's as the fractions of its draws below 0 and -MCID,
    within max(0.03, 4 MCSE) of each other on every trial (MCSE = sqrt(p (1 - p) / ESS) of the draws),
    posterior means within 0.2 posterior SD and SDs within 15%, and the same decisions (the MCMC side's
    from its draws)."""
    import plan as plan_cli
    from planning import AnalysisSettings, PlannedTrial, Scenario, fixed_parameters, implied_mmrm
    from planning.mcmc_check import mmrm_agreement

    params = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    trial = PlannedTrial(50, weeks=(0, 4, 8, 12), dropout=0.3, dropout_mechanism="mar", dropout_score_effect=1.0)
    table, summary = mmrm_agreement(params, trial, AnalysisSettings(), plan_cli.project_sampler(2000, 300, 2), n_trials=3, seed=4,
                                    scenario=Scenario("fixed", -3.0))
    assert summary["p_outside_bound"] == 0, table[["fast_p_benefit", "mcmc_p_benefit", "mcmc_p_benefit_mcse", "fast_p_mcid", "mcmc_p_mcid", "mcmc_p_mcid_mcse"]]
    assert summary["max_abs_diff_mean_in_sd"] < 0.2 and summary["max_rel_diff_sd"] < 0.15, summary
    assert summary["agreement_rate"] == 1.0
    assert table.fast_success.nunique() == 2  # decisions on both sides of the threshold
