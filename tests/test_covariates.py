"""Baseline covariates: their coding, which models adjust for them and how, and (slow) that the MMRM recovers
their effects, gains precision on the NAC effect and agrees with an independent REML MMRM."""

from __future__ import annotations

import shutil

import arviz as az
import numpy as np
import pandas as pd
import pytest

from data import TrialParameters, load_dataset, simulate_trial
from inference.sampling import SamplerSettings, sample_posterior
from models import ModelDataError, build_design, get
from models.design import fitted_covariates, select_covariates

COVARIATES = {"age": "continuous", "sex": "categorical", "education": "categorical"}
TRAJECTORY = ("null", "treatment", "treatment_curved", "headline", "moderation")
BIOMARKER = {"biomarker_change": ("covariate_marker_effect",), "biomarker_change_median": ("covariate_marker_effect",),
             "mediation": ("covariate_marker_effect", "covariate_effect")}


def with_covariates(source, folder, kinds=None):
    """A copy of the dataset folder `source` with [covariates] declared in its dataset.toml; a 3-level categorical
    'education' column is added to participants.csv when declared and absent. Returns the folder."""
    kinds = COVARIATES if kinds is None else kinds
    shutil.copytree(source, folder)
    parts = pd.read_csv(folder / "participants.csv", dtype=str, keep_default_na=False)
    if "education" in kinds and "education" not in parts:
        parts["education"] = np.array(["school", "university", "college"])[np.arange(len(parts)) % 3]
        parts.to_csv(folder / "participants.csv", index=False)
    lines = "".join(f'{name} = "{kind}"\n' for name, kind in kinds.items())
    with open(folder / "dataset.toml", "a", encoding="utf-8") as out:
        out.write(f"\n[covariates]\n{lines}")
    return folder


@pytest.fixture(scope="module")
def design(small_trial_dir, tmp_path_factory):
    return build_design(load_dataset(with_covariates(small_trial_dir, tmp_path_factory.mktemp("cov") / "t")))


# ---------------------------------------------------------------- coding and selection


@pytest.mark.unit
def test_design_matrix_coding(design):
    """Continuous: centred, SD 1 (n - 1); categorical: one centred indicator per level but the first in sorted order,
    named <covariate>[<level>]; a list selects whole covariates; an undeclared name is refused; a fit's columns give back
    the covariates it adjusted for."""
    ds = design.dataset
    assert design.covariate_names == ["age", "sex[M]", "education[school]", "education[university]"]
    assert design.covariate_sources == ["age", "sex", "education", "education"]
    x = design.covariates
    assert x.shape == (design.n_participants, 4)
    age = ds["covariate_age"].values
    np.testing.assert_allclose(x[:, 0], (age - age.mean()) / age.std(ddof=1))
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-12)
    sex = ds["covariate_sex"].values.astype(str)
    np.testing.assert_allclose(x[:, 1], (sex == "M") - np.mean(sex == "M"))
    edu = ds["covariate_education"].values.astype(str)
    assert design.covariate_coding["education"]["reference"] == "college"  # first in sorted order
    # differences between columns are the dummy coding: the reference level sits at the same place in every column
    for j, level in ((2, "school"), (3, "university")):
        np.testing.assert_allclose(x[edu == level, j] - x[edu == "college", j].mean(), 1.0)
        np.testing.assert_allclose(x[edu != level, j] - x[edu == "college", j].mean(), 0.0, atol=1e-12)
    np.testing.assert_array_equal(select_covariates(design, True), [0, 1, 2, 3])
    np.testing.assert_array_equal(select_covariates(design, ["education"]), [2, 3])
    np.testing.assert_array_equal(select_covariates(design, "sex"), [1])
    assert len(select_covariates(design, False)) == len(select_covariates(design, None)) == 0
    assert fitted_covariates(["age", "education[school]", "education[university]"], design) == ["age", "education"]
    assert fitted_covariates([], design) is False and fitted_covariates(None, design) is False
    with pytest.raises(ModelDataError, match=r"\['bmi'\] are not declared.*declared: \['age', 'sex', 'education'\]"):
        select_covariates(design, ["bmi"])


@pytest.mark.unit
def test_no_covariates_without_the_table(small_trial):
    """participants.csv of the bundled trials has age and sex, but only declared covariates are used: none here."""
    design = build_design(small_trial)
    assert design.covariates.shape == (design.n_participants, 0) and design.covariate_names == []
    for name in (*TRAJECTORY, "mmrm"):
        assert not any("covariate" in p for p in get(name).default_priors(design)), name
    for name in ("treatment", "mmrm"):
        assert not any("covariate" in v for v in get(name).build(design).model.named_vars), name


@pytest.mark.unit
def test_which_models_adjust_and_with_what(design):
    """Every trajectory member, the MMRM and the biomarker models adjust for every declared covariate by default,
    dims 'covariate' (the fast variants too: tests/test_fused.py); False or a list of names changes that, for the
    fast variant too; the priors are recorded only when used; every likelihood."""
    names = design.covariate_names
    for name in TRAJECTORY:
        spec = get(name)
        assert spec.covariates
        built = spec.build(design)
        dims = built.model.named_vars_to_dims
        assert dims["covariate_level"] == dims["covariate_change"] == ("covariate",), name
        assert dims["covariates"] == ("participant", "covariate")
        assert list(built.model.coords["covariate"]) == names
        assert {"covariate_level", "covariate_change"} <= set(built.priors)
    for name in ("null", "headline"):
        none = get(name).build(design, covariates=False)
        assert "covariate_level" not in none.model.named_vars and "covariate_level" not in none.priors
    chosen = get("treatment").build(design, covariates=["sex"])
    assert list(chosen.model.coords["covariate"]) == list(chosen.fast_variant().model.coords["covariate"]) == ["sex[M]"]
    assert "covariate_level" not in get("null").build(design, covariates=False).fast_variant().model.named_vars
    built = get("treatment_curved").build(design, likelihood="student")  # the plain model only: no fast variant
    assert "covariate_change" in built.model.named_vars and built.fast_variant is None
    mmrm = get("mmrm").build(design)
    assert mmrm.model.named_vars_to_dims["covariate_effect"] == ("covariate",) and "covariate_effect" in mmrm.priors
    assert mmrm.priors["covariate_effect"].params == {"mu": 0.0, "sigma": 0.1 * design.score_range}
    assert "covariate_effect" not in get("mmrm").build(design, covariates=False).priors
    for name, terms in BIOMARKER.items():
        spec = get(name)
        assert spec.covariates
        built = spec.build(design)
        dims = built.model.named_vars_to_dims
        assert dims["covariate_marker_effect"] == ("marker", "covariate") and dims["covariates"] == ("participant", "covariate")
        assert list(built.model.coords["covariate"]) == names and set(terms) <= set(built.priors)
        none = spec.build(design, covariates=False)
        assert not set(terms) & (set(none.model.named_vars) | set(none.priors))
        assert list(spec.build(design, covariates=["age"]).model.coords["covariate"]) == ["age"]


@pytest.mark.unit
def test_trajectory_mean_holds_the_covariate_terms(design):
    """The plain treatment model's visit mean at a random point equals the formula written out in numpy:
    alpha + site + X lambda + b0 + (beta_1 + delta_1 T + X nu + b1) t1 + (beta_2 + delta_2 T) t2."""
    from pytensor.compile.mode import Mode

    model = get("treatment").build(design).model
    rng = np.random.default_rng(4)
    point = {k: v + rng.normal(0, 0.5, np.shape(v)) for k, v in model.initial_point().items()}
    names = ["intercept", "site_effect", "time_change", "nac_change", "covariate_level", "covariate_change", "participant_effects"]
    mode = Mode(linker="py", optimizer=None)
    outs = model.replace_rvs_by_values([model[n] for n in names] + [model["y"].owner.inputs[2]])
    values = model.compile_fn(outs, inputs=model.value_vars, point_fn=False, mode=mode, on_unused_input="ignore")(**point)
    a, site, beta, delta, lam, nu, b, mu = values
    x, t, pid = design.covariates, design.arm_indicator(), design.obs_participant  # delta: active arm x phase
    level = a + site[design.site_idx] + x @ lam + b[:, 0]
    change = beta[0] + t @ delta[:, 0] + x @ nu + b[:, 1]
    want = level[pid] + change[pid] * design.t1 + (beta[1] + t @ delta[:, 1])[pid] * design.t2
    np.testing.assert_allclose(mu, want, rtol=1e-12)


@pytest.fixture(scope="module")
def complete_marker_design(tmp_path_factory):
    """A trial with every biomarker observed at baseline and week 12 (no dropout, no missed sample, no detection
    limit) and age and sex declared as covariates."""
    folder = tmp_path_factory.mktemp("cov_markers") / "t"
    simulate_trial(TrialParameters(n_participants=60, seed=8, serum_fraction=1.0, week12_sample_missing=0.0, detection_limits=(),
                                   dropout_by_last_week=0.0, intermittent_missing=0.0)).write(folder)
    with open(folder / "dataset.toml", "a", encoding="utf-8") as out:
        out.write('\n[covariates]\nage = "continuous"\nsex = "categorical"\n')
    design = build_design(load_dataset(folder))
    assert not design.baseline.missing.any() and not design.later[12].missing.any() and not design.later[12].censored.any()
    return design


def _values(model, point, names):
    from pytensor.compile.mode import Mode

    outs = model.replace_rvs_by_values([model[n] for n in names])
    return model.compile_fn(outs, inputs=model.value_vars, point_fn=False, mode=Mode(linker="py", optimizer=None), on_unused_input="ignore")(**point)


@pytest.mark.unit
@pytest.mark.parametrize("name", list(BIOMARKER))
def test_biomarker_models_add_the_covariate_terms_to_the_right_means(name, complete_marker_design):
    """With every marker observed, moving the covariate effects changes each model's log density by exactly what
    the model's formulas give, written out in scipy: the covariates' prior plus, for the end-of-treatment markers,
    sum_i log MvNormal(z1_i; a + B z0_i + theta T_i + G x_i, Sigma_1) (Laplace per marker for the median model),
    and for the mediation outcome sum_i log Normal(dY_i; c0 + c' T_i + beta.(z1_i - z0_i) + g (Y0_i - mean Y0) +
    h.z0_i + e.x_i, sigma). A transposed G, a covariate on the wrong participants or a missing term fails it."""
    from scipy import stats

    design = complete_marker_design
    model = get(name).build(design).model
    rng = np.random.default_rng(11)
    point = {k: v + rng.normal(0, 0.3, np.shape(v)) for k, v in model.initial_point().items()}
    moved = dict(point)
    moved["covariate_marker_effect"] = point["covariate_marker_effect"] + rng.normal(0, 0.4, np.shape(point["covariate_marker_effect"]))
    if name == "mediation":
        moved["covariate_effect"] = point["covariate_effect"] + rng.normal(0, 2.0, np.shape(point["covariate_effect"]))
    logp = model.compile_logp()
    change = logp(moved) - logp(point)

    x, t = design.covariates, design.arm_indicator()  # participant x active arm
    z0, z1 = design.baseline.z, design.later[12].z

    def end_mean(p):
        return p["end_intercept"] + z0 @ p["baseline_slope"].T + t @ p["nac_marker_effect"] + x @ p["covariate_marker_effect"].T

    def end_loglik(p):
        if name == "biomarker_change_median":
            scale = np.exp(p["laplace_scale_log__"])
            return stats.laplace.logpdf(z1, end_mean(p), scale[None, :]).sum()
        sd, corr = _values(model, p, ["residual_sd", "residual_corr"])
        return sum(stats.multivariate_normal.logpdf(z1[i], end_mean(p)[i], corr * np.outer(sd, sd)) for i in range(len(z1)))

    want = end_loglik(moved) - end_loglik(point)
    want += (stats.norm.logpdf(moved["covariate_marker_effect"], 0, 0.5) - stats.norm.logpdf(point["covariate_marker_effect"], 0, 0.5)).sum()
    if name == "mediation":
        y0 = design.y[design.obs_week == 0][np.argsort(design.obs_participant[design.obs_week == 0])]
        y1 = design.y[design.obs_week == 12][np.argsort(design.obs_participant[design.obs_week == 12])]

        def outcome_loglik(p):
            mean = (p["outcome_intercept"] + t @ p["direct_effect"] + (z1 - z0) @ p["mediator_effect"] + p["baseline_score_slope"] * (y0 - y0.mean())
                    + z0 @ p["outcome_marker_baseline"] + x @ p["covariate_effect"])
            return stats.norm.logpdf(y1 - y0, mean, np.exp(p["outcome_sd_log__"])).sum()

        want += outcome_loglik(moved) - outcome_loglik(point)
        sd_e = 0.1 * design.score_range
        want += (stats.norm.logpdf(moved["covariate_effect"], 0, sd_e) - stats.norm.logpdf(point["covariate_effect"], 0, sd_e)).sum()
    assert abs(change) > 1.0  # the move matters
    np.testing.assert_allclose(change, want, rtol=1e-9, atol=1e-8)


# ---------------------------------------------------------------- slow: recovery and agreement

AGE_PER_YEAR, MALE = -0.45, 2.5  # the simulated covariate effects on the change at every post-baseline visit


@pytest.fixture(scope="module")
def covariate_trial(tmp_path_factory):
    """n = 252 simulated trial whose change from baseline depends on age (-0.45 points per year) and sex (+2.5 for men)
    at every post-baseline visit (scores kept fractional, within 0-60). Returns (dataset, truth per design column)."""
    trial = simulate_trial(TrialParameters(n_participants=252, seed=31, serum_fraction=0.0))
    parts = trial.participants.set_index("participant_id")
    visits = trial.visits.copy()
    age = parts.loc[visits["participant_id"], "age"].to_numpy(float)
    male = (parts.loc[visits["participant_id"], "sex"] == "M").to_numpy(float)
    shift = np.where(visits["week"] > 0, AGE_PER_YEAR * (age - 48.0) + MALE * male, 0.0)
    visits["madrs"] = np.clip(visits["madrs"] + shift, 0.0, 60.0)
    trial.visits = visits
    trial.biomarkers = trial.biomarkers.iloc[0:0]
    folder = tmp_path_factory.mktemp("cov_trial") / "t"
    trial.write(folder)
    toml = (folder / "dataset.toml").read_text().replace("integer = true", "integer = false")
    (folder / "dataset.toml").write_text(toml + '\n[covariates]\nage = "continuous"\nsex = "categorical"\n')
    ds = load_dataset(folder)
    sd_age = float(np.std(parts["age"].to_numpy(float), ddof=1))
    return ds, {"age": AGE_PER_YEAR * sd_age, "sex[M]": MALE}


@pytest.fixture(scope="module")
def covariate_fits(covariate_trial):
    ds, _ = covariate_trial
    design = build_design(ds)
    settings = SamplerSettings(draws=1500, tune=800, chains=4, seed=17)
    fits = {}
    for label, covariates in (("adjusted", True), ("unadjusted", False)):
        idata, timings = sample_posterior(get("mmrm").build(design, covariates=covariates), settings, quiet=True)
        assert timings["fused_log_density"] == 1.0 and int(idata.sample_stats["diverging"].sum()) == 0
        fits[label] = idata
    return design, fits


@pytest.mark.slow
def test_mmrm_recovers_covariate_effects_and_narrows_the_nac_effect(covariate_trial, covariate_fits):
    """The age (per SD) and sex effects inside their 94% intervals; the NAC effect's posterior SD at the end of
    treatment and at the last follow-up at least 5% smaller than without the covariates (they explain about 15% of the
    variance of the change: SD ratios 0.88 and 0.91 on this trial)."""
    _, truth = covariate_trial
    design, fits = covariate_fits
    effect = fits["adjusted"].posterior["covariate_effect"]
    for column, true in truth.items():
        draws = effect.sel(covariate=column).values.ravel()
        lo, hi = az.hdi(draws, hdi_prob=0.94)
        assert lo < true < hi, (column, true, lo, hi)
    for week in (12, 16):
        sds = {k: float(f.posterior["nac_effect"].sel(week=week).std()) for k, f in fits.items()}
        assert sds["adjusted"] < 0.95 * sds["unadjusted"], (week, sds)


@pytest.mark.slow
def test_mmrm_with_covariates_agrees_with_reml(covariate_trial, covariate_fits):
    """Posterior means of the NAC - placebo difference at every visit and of the covariate effects within 0.2 standard
    errors of an independent REML MMRM (unstructured covariance) with the same covariates, coded in the test."""
    from tests.test_mmrm import reml_mmrm

    ds, _ = covariate_trial
    design, fits = covariate_fits
    age = ds["covariate_age"].values.astype(float)
    male = (ds["covariate_sex"].values.astype(str) == "M").astype(float)
    extra = {"age": (age - age.mean()) / age.std(ddof=1), "sex[M]": male}  # uncentred: the REML intercepts differ, not these
    beta, cov, names = reml_mmrm(ds, extra)
    post = fits["adjusted"].posterior
    checks = [(f"nac_{w}", post["nac_visit_effect"].sel(visit=w)) for w in design.weeks[1:]]
    checks += [(f"covariate_{c}", post["covariate_effect"].sel(covariate=c)) for c in extra]
    for name, draws in checks:
        j = names.index(name)
        se = float(np.sqrt(cov[j, j]))
        assert abs(float(draws.mean()) - beta[j]) < 0.2 * se, (name, float(draws.mean()), beta[j], se)
        assert 0.8 < float(draws.std()) / se < 1.25, (name, float(draws.std()), se)


@pytest.mark.smoke
def test_fast_path_means_and_densities_hold_the_covariates(design):
    """At prior draws of the treatment model with covariates, the fast path's fixed part (from the marginal model's
    graph) gives the plain model's integrated densities and, with the same participant effects, its visit means
    (inference/marginal.py: log-likelihood, predictions, comparison)."""
    import pymc as pm

    from inference.marginal import (
        _normal_mean,
        _sampled,
        fixed_part,
        integrated_log_likelihood,
        per_draw,
        plain_integrated_log_likelihood,
        visit_means,
    )

    built = get("treatment").build(design)
    with built.model:
        prior = pm.sample_prior_predictive(draws=4, random_seed=2).prior
    idata = az.InferenceData(posterior=prior)
    fixed = fixed_part(_sampled(prior, design), built.fast_variant())
    plain, fast = plain_integrated_log_likelihood(idata, built), integrated_log_likelihood(idata, design, fixed)
    for var in ("y_participant", "y_visit"):
        np.testing.assert_allclose(plain[var].values, fast[var].values, rtol=1e-9, atol=1e-9)
    mu_plain = per_draw(built.model, _normal_mean(built.model), prior)[0]
    np.testing.assert_allclose(visit_means(idata, design, 0, fixed)[0], mu_plain, rtol=1e-10, atol=1e-9)


@pytest.mark.slow
def test_biomarker_change_recovers_a_covariate_effect_on_the_markers(tmp_path):
    """A trial (200 participants, all in the biomarker sub-study) whose week-12 IL-6 is higher by a factor
    exp(0.3) per SD of age: biomarker_change with age and sex declared puts the true age effect on IL-6
    (0.3 / the log SD of IL-6, in baseline SDs) inside its 94% interval, away from 0, and the effects not
    simulated (age on CRP and BDNF, sex on every marker) and the NAC ratios' truth (1) inside theirs."""
    folder = tmp_path / "t"
    simulate_trial(TrialParameters(n_participants=200, seed=21, serum_fraction=1.0, detection_limits=())).write(folder)
    with open(folder / "dataset.toml", "a", encoding="utf-8") as out:
        out.write('\n[covariates]\nage = "continuous"\nsex = "categorical"\n')
    design = build_design(load_dataset(folder))
    age = dict(zip(design.participants, design.covariates[:, design.covariate_names.index("age")]))
    markers = pd.read_csv(folder / "biomarkers.csv")
    hit = (markers.week == 12) & (markers.marker == "il6")
    markers.loc[hit, "value"] *= np.exp(0.3 * markers.loc[hit, "participant_id"].map(age))
    markers.to_csv(folder / "biomarkers.csv", index=False)
    design = build_design(load_dataset(folder))
    truth = 0.3 / design.baseline.log_scale[design.baseline.names.index("il6")]
    idata, _ = sample_posterior(get("biomarker_change").build(design), SamplerSettings(draws=1000, tune=1000, chains=4, seed=3), quiet=True)
    assert int(idata.sample_stats["diverging"].sum()) == 0
    effect = idata.posterior["covariate_marker_effect"]
    lo, hi = az.hdi(effect.sel(marker="il6", covariate="age").values.ravel(), hdi_prob=0.94)
    assert lo < truth < hi and lo > 0, (truth, lo, hi)
    # the effects not simulated, 5 of them, and the 3 NAC ratios: 99.5% intervals (about 4% chance of a miss among 8)
    for marker in design.baseline.names:
        for column in design.covariate_names:
            if (marker, column) != ("il6", "age"):
                lo, hi = az.hdi(effect.sel(marker=marker, covariate=column).values.ravel(), hdi_prob=0.995)
                assert lo < 0 < hi, (marker, column, lo, hi)
        lo, hi = az.hdi(idata.posterior["nac_ratio"].sel(marker=marker).values.ravel(), hdi_prob=0.995)
        assert lo < 1 < hi, (marker, lo, hi)
