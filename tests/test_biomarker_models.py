"""Biomarker-change (mean and median) and mediation models: structure, priors, and recovery of known truths.

The default run fits one simulated trial in which NAC raises week-12 log IL-6 by 0.4 (ratio
1.49) and the IL-6 change carries -5 MADRS points per log unit (a true indirect effect of
-2 points), with no NAC effect on CRP or BDNF: so one fit checks an effect where one is
simulated and none where none is. Larger and null scenarios are marked slow, as is the
recovery of each arm's effects on a three-arm trial; the three-arm structure and tables are unit-tested.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytest

from data import TrialParameters, load_dataset, simulate_trial
from inference.sampling import SamplerSettings, sample_posterior
from models import ModelDataError, build_design, get
from models.contract import MARKER_VALUES

MODELS = ("biomarker_change", "biomarker_change_median", "mediation")
FIT = SamplerSettings(draws=400, tune=400, chains=2, seed=11, prior_draws=50)


def _design(folder, **overrides):
    simulate_trial(TrialParameters(**overrides)).write(folder)
    return build_design(load_dataset(folder))


def hdi(draws, prob=0.99):
    # one trial: a 94% interval misses 6% of the time, so single-trial checks use 99%
    return az.hdi(np.asarray(draws).ravel(), hdi_prob=prob)


def covers(draws, value, prob=0.99) -> bool:
    lo, hi = hdi(draws, prob)
    return lo < value < hi


# ---------------------------------------------------------------- structure (no sampling)


@pytest.fixture(scope="module")
def design(small_trial):
    return build_design(small_trial)


@pytest.fixture(scope="module")
def built(design):
    return {name: get(name).build(design) for name in MODELS}


@pytest.mark.unit
@pytest.mark.parametrize("name", MODELS)
def test_builds_with_named_dims_and_finite_logp(built, design, name):
    b = built[name]
    model = b.model
    dims = model.named_vars_to_dims
    assert dims["nac_ratio"] == ("active_arm", "marker") and dims["nac_marker_effect"] == ("active_arm", "marker")
    assert list(model.coords["active_arm"]) == ["nac"] and dims["arm_indicator"] == ("participant", "active_arm")
    assert dims["baseline_slope"] == ("marker", "baseline_marker")
    assert list(model.coords["marker"]) == design.baseline.names
    for var in model.free_RVs + model.deterministics + model.observed_RVs:
        if var.ndim and not var.name.endswith("_chol"):  # packed LKJ Cholesky factors have no natural dims
            assert var.name in dims, var.name
    logp = model.point_logps()
    assert all(np.isfinite(v) for v in logp.values()), logp
    assert b.priors and all(hasattr(p, "reason") for p in b.priors.values())
    assert set(b.priors) == set(get(name).default_priors(design)), "the priors used are the spec's defaults"
    assert b.outcome_vars and all(v in model.named_vars for v in b.outcome_vars)
    assert b.observations == MARKER_VALUES and not get(name).comparable
    if name == "mediation":
        assert b.outcome_vars == ("madrs_change",)
        for v in ("indirect_effect", "proportion_mediated"):
            assert dims[v] == ("active_arm", "marker")
        for v in ("direct_effect", "indirect_effect_total", "total_effect", "proportion_mediated_total"):
            assert dims[v] == ("active_arm",)
        assert dims["mediator_per_log_unit"] == ("marker",)  # the marker -> outcome path is common to every arm
    else:
        assert b.outcome_vars == tuple(f"week12_{m}" for m in design.baseline.names)  # per marker, for LOO


@pytest.mark.unit
def test_who_enters_and_what_is_imputed_or_censored(design, built, small_trial_dir):
    bio = pd.read_csv(small_trial_dir / "biomarkers.csv")
    with_serum = bio["participant_id"].nunique()
    notes = built["biomarker_change"].notes
    assert notes["participants_included"] == with_serum
    assert notes["participants_excluded"] == design.n_participants - with_serum
    at12 = bio[bio["week"] == 12]
    n_below12 = int(at12["below_lod"].sum())
    assert notes["week12_censored"] == n_below12
    assert notes["week12_observed"] == len(at12) - n_below12
    assert notes["week12_imputed"] == 3 * with_serum - len(at12)
    assert notes["baseline_censored"] == int(bio.loc[bio["week"] == 0, "below_lod"].sum())
    assert "imputed" in notes["text"] and "censored" in notes["text"]
    model = built["biomarker_change"].model
    assert model["marker_missing_week12"].eval().size == notes["week12_imputed"]
    if notes["week12_censored"]:
        assert model["marker_censored_week12"].eval().size == notes["week12_censored"]
    # the median model gives missing week-12 values no likelihood term instead of imputing them
    med = built["biomarker_change_median"].notes
    assert med["week12_imputed"] == 0 and med["week12_missing_no_likelihood"] == notes["week12_imputed"]
    assert "marker_missing_week12" not in built["biomarker_change_median"].model.named_vars
    # mediation keeps participants without serum who have a week-12 MADRS (their markers are latent)
    visits = pd.read_csv(small_trial_dir / "visits.csv")
    with_y12 = set(visits.loc[visits["week"] == 12, "participant_id"])
    med_notes = built["mediation"].notes
    assert med_notes["participants_included"] == len(with_y12 | set(bio["participant_id"]))
    assert med_notes["outcome_observed"] == len(with_y12)


@pytest.mark.unit
@pytest.mark.parametrize("name", MODELS)
def test_prior_predictive_is_plausible(built, name):
    model, outcome_vars = built[name].model, built[name].outcome_vars
    with model:
        prior = pm.sample_prior_predictive(draws=300, random_seed=3)
    if name == "mediation":
        y = prior.prior_predictive["madrs_change"].values.ravel()
        assert np.mean(np.abs(y) <= 60) > 0.9, "MADRS change beyond the 0-60 scale's range in most prior draws"
        assert np.mean(np.abs(y) <= 20) > 0.4
    elif name == "biomarker_change_median":
        for var in outcome_vars:
            z = prior.prior_predictive[var].values.ravel()
            assert np.mean(np.abs(z) <= 6) > 0.9, f"{var}: standardised log marker beyond 6 SD in most prior draws"
    else:
        # The observed RVs are the markers' conditionals given the previous markers' *observed* residuals, which
        # a prior residual SD near 0 inflates; the check that matters is the joint prior predictive: simulate
        # baseline and week-12 markers from each prior draw.
        z1 = _joint_prior_predictive(prior.prior, model.coords["marker"], np.random.default_rng(4))
        assert np.mean(np.abs(z1) <= 6) > 0.9, "week-12 standardised log markers beyond 6 SD in most prior draws"
        z = prior.prior_predictive[outcome_vars[0]].values.ravel()  # the first marker is marginal
        assert np.mean(np.abs(z) <= 6) > 0.9
    ratio = prior.prior["nac_ratio"].values
    assert np.mean((ratio > 0.25) & (ratio < 4)) > 0.95, "prior NAC / placebo ratios beyond 4-fold"


@pytest.mark.unit
@pytest.mark.parametrize("name", ["biomarker_change_median", "mediation"])
def test_log_likelihood_is_stored_per_outcome_value(built, name):
    """LOO needs one pointwise log-likelihood per observed outcome value (per marker for the median model)."""
    model, outcome_vars = built[name].model, list(built[name].outcome_vars)
    with model:
        prior = pm.sample_prior_predictive(draws=20, random_seed=5)
        fake = az.InferenceData(posterior=prior.prior)
        ll = pm.compute_log_likelihood(fake, var_names=outcome_vars, extend_inferencedata=False, progressbar=False)
    for var in outcome_vars:
        assert ll[var].dims[-1] == model.named_vars_to_dims[var][0]
        assert ll[var].sizes[ll[var].dims[-1]] == model[var].eval().size
        assert np.isfinite(ll[var].values).all(), var


@pytest.mark.unit
def test_likelihood_options(design):
    robust = get("mediation").build(design, likelihood="student").model
    assert "student_nu" in robust.named_vars and np.isfinite(robust.point_logps()["madrs_change"])
    for name in ("biomarker_change", "biomarker_change_median"):
        assert get(name).likelihoods == ("normal",)
        with pytest.raises(ValueError, match="likelihood"):
            get(name).build(design, likelihood="student")


def _prior_idata(built, draws=40, seed=6):
    """Prior draws as a posterior: enough to tabulate a model's estimates without sampling."""
    with built.model:
        prior = pm.sample_prior_predictive(draws=draws, random_seed=seed).prior
    return az.InferenceData(posterior=prior)


@pytest.mark.unit
def test_two_arm_tables_read_as_they_always_have(design, built):
    """A two-arm trial's rows: the arm / control ratios per marker, and mediation's effects with the marker -> outcome
    path beside each marker's indirect effect, then the proportions and the ratios; each row with its estimand."""
    from diagnostics.estimates import model_estimates

    week, markers = 12, design.baseline.names
    ratio = [f"nac / placebo ratio of geometric means of {mk} at week {week}" for mk in markers]
    expected = {
        "biomarker_change": ratio,
        "biomarker_change_median": [f"nac / placebo ratio of medians of {mk} at week {week} (interval adjusted for the working likelihood)"
                                    for mk in markers],
        "mediation": [f"nac - placebo total effect on MADRS change at week {week}", f"nac - placebo direct effect (not through the markers) at week {week}",
                      f"nac - placebo indirect effect through all markers at week {week}"]
        + [q for mk in markers for q in (f"nac - placebo indirect effect through {mk} at week {week}",
                                         f"MADRS change per unit change in log {mk} (x e) at week {week}")]
        + [f"proportion of the total effect mediated by {what} at week {week}" for what in ["all markers", *markers]] + ratio,
    }
    for name, quantities in expected.items():
        idata = _prior_idata(built[name])
        table = model_estimates(idata, get(name), design)
        assert list(table["quantity"]) == quantities, name
        assert table["summary"].str.len().gt(0).all() and not table["summary"].str.contains("low|high").any()
        ratios = table[table["unit"].str.startswith("ratio")]
        assert ratios["summary"].str.contains(r"\(nac / placebo\)").all() and (ratios["p_above_1"] >= 0).all()


THREE = dict(treatment_arm="low", more_arms=(("high", -3.0, -3.5),), n_participants=90, seed=14, serum_fraction=0.8)


@pytest.fixture(scope="module")
def design_three(tmp_path_factory):
    design = _design(tmp_path_factory.mktemp("bio") / "three", **THREE)
    assert design.active_arms == ["low", "high"]
    return design


@pytest.fixture(scope="module")
def built_three(design_three):
    return {name: get(name).build(design_three) for name in MODELS}


@pytest.mark.unit
@pytest.mark.parametrize("name", MODELS)
def test_three_arms_one_effect_per_active_arm(design_three, built_three, name):
    """Each active arm has its own effect on every marker (and, in mediation, its own direct, indirect and total
    effects): the end-week mean of a participant is the control arm's plus their own arm's theta, nothing pooled."""
    from models.marker_change_block import change_data
    from models.mediation import mediation_data

    model = built_three[name].model
    dims = model.named_vars_to_dims
    assert list(model.coords["active_arm"]) == ["low", "high"]
    assert dims["nac_marker_effect"] == ("active_arm", "marker") and dims["nac_ratio"] == ("active_arm", "marker")
    cd = mediation_data(design_three)[1] if name == "mediation" else change_data(design_three, name)
    np.testing.assert_array_equal(model["arm_indicator"].get_value(), design_three.arm_indicator()[cd.rows])
    assert all(np.isfinite(v) for v in model.point_logps().values())
    rng = np.random.default_rng(2)
    point = {k: v + rng.normal(0, 0.5, size=np.shape(v)) for k, v in model.initial_point().items()}
    if name != "biomarker_change_median":
        # the first marker's end-week mean at participants with every baseline marker observed: a + B z0 + theta_arm
        mk = cd.names[0]
        mean = model.replace_rvs_by_values([model[f"week{cd.week}_{mk}"].owner.inputs[2]])[0]  # the observed RV's mu
        mu = model.compile_fn(mean, inputs=model.value_vars, on_unused_input="ignore")(point)
        observed = np.flatnonzero(~cd.later.missing[:, 0] & ~cd.later.censored[:, 0])
        complete = ~np.isnan(cd.baseline.z[observed]).any(axis=1)
        arm = design_three.arm_idx[cd.rows[observed]]
        theta = np.vstack([np.zeros(len(cd.names)), point["nac_marker_effect"]])
        want = point["end_intercept"][0] + cd.baseline.z[observed] @ point["baseline_slope"][0] + theta[arm, 0]
        np.testing.assert_allclose(mu[complete], want[complete], rtol=1e-10, atol=1e-10)
        assert len(set(arm[complete])) == 3
    if name == "mediation":
        names = ["nac_marker_effect", "mediator_effect", "direct_effect", "indirect_effect", "indirect_effect_total", "total_effect",
                 "proportion_mediated"]
        nac, beta, direct, indirect, indirect_total, total, proportion = model.compile_fn(
            model.replace_rvs_by_values([model[v] for v in names]), inputs=model.value_vars, on_unused_input="ignore")(point)
        np.testing.assert_allclose(indirect, nac * beta[None, :])
        np.testing.assert_allclose(total, direct + indirect.sum(axis=1))
        np.testing.assert_allclose(proportion, indirect / total[:, None])
        assert direct.shape == (2,) and indirect.shape == (2, len(cd.names))


@pytest.mark.unit
def test_arm_sum_is_the_arm_design_times_the_effects(design_three):
    import pytensor.tensor as pt

    from models.marker_change_block import arm_sum

    arm = design_three.arm_indicator()
    effect = np.random.default_rng(3).normal(size=(2, 3))
    np.testing.assert_allclose(arm_sum(pt.as_tensor(arm), pt.as_tensor(effect), 2).eval(), arm @ effect, rtol=1e-14)
    np.testing.assert_allclose(arm_sum(pt.as_tensor(arm), pt.as_tensor(effect[:, 1]), 2).eval(), arm @ effect[:, 1], rtol=1e-14)


@pytest.mark.unit
def test_three_arm_tables_name_each_arm(design_three, built_three):
    """Per active arm in order, the rows a two-arm trial has, named with the arm and stating its estimand; mediation's
    marker -> outcome paths (common to every arm) follow every arm's rows; the median model's interval factors are
    per arm and marker."""
    from diagnostics.estimates import model_estimates
    from models.biomarker_change_median import interval_scale

    markers = design_three.baseline.names
    m = len(markers)
    for name in MODELS:
        idata = _prior_idata(built_three[name])
        table = model_estimates(idata, get(name), design_three)
        ratios = table[table["unit"].str.startswith("ratio")]
        assert len(ratios) == 2 * m
        for j, arm in enumerate(("low", "high")):
            part = ratios.iloc[j * m : (j + 1) * m]
            assert part["quantity"].str.startswith(f"{arm} / placebo ratio of").all(), name
            assert part["summary"].str.contains(f"({arm} / placebo)", regex=False).all()
            assert list(part["marker"]) == markers
            draws = idata.posterior["nac_ratio"].sel(active_arm=arm, marker=markers[0]).values
            if name != "biomarker_change_median":
                assert part["mean"].iloc[0] == pytest.approx(draws.mean())
        if name == "biomarker_change_median":
            scale = interval_scale(idata, design_three)
            assert set(scale) == {"low", "high"} and all(set(v) == set(markers) for v in scale.values())
            assert list(table["interval_scale"]) == [scale[a][mk] for a in ("low", "high") for mk in markers]
        if name == "mediation":
            per_arm = 3 + m + (1 + m) + m  # total, direct, indirect (all, each), proportions (all, each), ratios
            for j, arm in enumerate(("low", "high")):
                block = table.iloc[j * per_arm : (j + 1) * per_arm]
                assert block["quantity"].iloc[0] == f"{arm} - placebo total effect on MADRS change at week 12"
                assert block["mean"].iloc[0] == pytest.approx(idata.posterior["total_effect"].sel(active_arm=arm).values.mean())
                effects = block[block["unit"] == "MADRS points"]
                assert effects["quantity"].str.startswith(f"{arm} - placebo").all() and len(effects) == 3 + m
                assert effects["summary"].str.contains(f"{arm} - placebo").all()
                proportions = block[block["unit"] == "fraction"]
                assert proportions["quantity"].str.startswith(f"proportion of the {arm} - placebo total effect mediated by").all()
            paths = table.iloc[2 * per_arm :]
            assert list(paths["quantity"]) == [f"MADRS change per unit change in log {mk} (x e) at week 12" for mk in markers]
            assert (paths["unit"] == "MADRS points per log unit").all()


@pytest.mark.unit
def test_every_arm_needs_biomarker_values(design_three):
    """An active arm with fewer than 2 participants with biomarker values is refused, naming each arm's count."""
    ds = design_three.dataset.copy(deep=True)
    high = ds["arm_index"].values == 2
    values = ds["marker_value"].values.copy()
    values[high] = np.nan
    ds["marker_value"] = (ds["marker_value"].dims, values)
    ds["below_lod"] = (ds["below_lod"].dims, np.where(high[:, None, None], False, ds["below_lod"].values))
    design = build_design(ds)
    for name in ("biomarker_change", "biomarker_change_median"):
        with pytest.raises(ModelDataError, match=r"at least 2 participants per arm; biomarkers.csv has \d+ in arm 'placebo', \d+ in arm 'low', 0 in arm 'high'"):
            get(name).require(design)


def _joint_prior_predictive(prior, markers, rng, n=50):
    """Week-12 standardised log markers of n new participants per prior draw (half per arm)."""
    p = prior.stack(sample=("chain", "draw"))
    out = []
    treated = np.arange(n) % 2
    for s in range(p.sizes["sample"]):
        d = p.isel(sample=s)

        def cov(name):
            sd = d[f"{name}_sd"].values
            return d[f"{name}_corr"].values * np.outer(sd, sd)

        z0 = rng.multivariate_normal(d["baseline_mean"].values, cov("baseline"), size=n)
        mu = d["end_intercept"].values + z0 @ d["baseline_slope"].values.T + treated[:, None] * d["nac_marker_effect"].values[0]
        out.append(mu + rng.multivariate_normal(np.zeros(len(markers)), cov("residual"), size=n))
    return np.concatenate(out)


@pytest.mark.unit
@pytest.mark.parametrize("name", MODELS)
def test_needs_biomarkers(tmp_path, name):
    trial = simulate_trial(TrialParameters(n_participants=30, seed=2))
    full = trial.biomarkers
    trial.biomarkers = full.iloc[0:0]
    trial.write(tmp_path / "nobio")
    nobio = build_design(load_dataset(tmp_path / "nobio"))
    for refuse in (get(name).require, get(name).build):  # the cheap check refuses as the builder does
        with pytest.raises(ModelDataError, match="needs baseline biomarkers"):
            refuse(nobio)
    trial.biomarkers = full[full["week"] == 0]
    trial.write(tmp_path / "baseline_only")
    baseline_only = build_design(load_dataset(tmp_path / "baseline_only"))
    for refuse in (get(name).require, get(name).build):
        with pytest.raises(ModelDataError, match="week-12"):
            refuse(baseline_only)


@pytest.mark.unit
def test_generator_truth_includes_the_mediated_effect():
    p = TrialParameters(nac_marker_log_ratio=(0.4, 0.0, 0.0), mediation=(-5.0, 0.0, 0.0))
    assert p.nac_indirect_effects() == pytest.approx((-2.0, 0.0, 0.0))
    assert p.nac_effect_at(12) == pytest.approx(p.nac_effect_e - 2.0)
    assert p.nac_effect_at(16) == pytest.approx(p.nac_effect_f - 2.0)
    assert TrialParameters().nac_effect_at(12) == TrialParameters().nac_effect_e
    # and the simulated trial carries it: complete-case NAC - placebo change at week 12
    big = simulate_trial(p.with_(n_participants=4000, seed=9))
    wide = big.visits.pivot(index="participant_id", columns="week", values="madrs")
    arm = big.participants.set_index("participant_id")["arm"].reindex(wide.index)
    change = (wide[12] - wide[0]).dropna()
    diff = change[arm == "nac"].mean() - change[arm == "placebo"].mean()
    assert diff == pytest.approx(p.nac_effect_at(12), abs=0.8)


# ---------------------------------------------------------------- recovery (short fits)

EFFECT = dict(n_participants=300, seed=41, serum_fraction=0.8, nac_marker_log_ratio=(0.4, 0.0, 0.0), mediation=(-5.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def effect_design(tmp_path_factory):
    return _design(tmp_path_factory.mktemp("bio") / "effect", **EFFECT)


@pytest.fixture(scope="module")
def mean_fit(effect_design):
    idata, _ = sample_posterior(get("biomarker_change").build(effect_design), FIT, quiet=True)
    return idata


def _complete_case(design, estimator):
    """NAC coefficient of the end-week log marker on arm and baseline log markers, complete cases, per marker."""
    b, w = design.baseline, design.later[12]
    out = {}
    for k, mk in enumerate(b.names):
        ok = ~np.isnan(b.z).any(axis=1) & ~np.isnan(w.z[:, k])
        x = np.column_stack([np.ones(ok.sum()), design.arm_idx[ok] > 0, b.z[ok]])
        out[mk] = estimator(w.z[ok, k], x) * b.log_scale[k]
    return out


@pytest.mark.slow  # compiles the model's graph (about a minute from empty caches); structure, priors and likelihood are unit-tested above
def test_biomarker_change_recovers_nac_effect_and_its_absence(mean_fit, effect_design):
    post = mean_fit.posterior
    assert int(mean_fit.sample_stats["diverging"].sum()) == 0
    log_ratio = post["nac_log_ratio"]
    assert covers(log_ratio.sel(marker="il6"), 0.4)
    assert hdi(log_ratio.sel(marker="il6"))[0] > 0, "a log ratio of 0.4 with ~240 participants must be clearly positive"
    assert (post["nac_ratio"].sel(marker="il6").values > 1).mean() > 0.97
    for mk in ("crp", "bdnf"):
        assert covers(log_ratio.sel(marker=mk), 0.0), mk
    # independent method: least squares on complete cases (no censoring in CRP, BDNF; identical regressors, so
    # the joint model's mean equals equation-by-equation OLS up to the prior)
    ols = _complete_case(effect_design, lambda y, x: np.linalg.lstsq(x, y, rcond=None)[0][1])
    for mk in ("crp", "bdnf"):
        d = log_ratio.sel(marker=mk).values
        assert abs(d.mean() - ols[mk]) < 0.3 * d.std(), (mk, d.mean(), ols[mk])
    rows = get("biomarker_change").extra_estimates(mean_fit, effect_design, 2.0)
    il6 = rows.set_index("marker").loc["il6"]
    assert il6["p_above_1"] > 0.97 and il6["hdi_3%"] > 1.0 and "geometric means" in il6["quantity"]


@pytest.mark.slow
def test_median_regression_agrees_with_mean_model(mean_fit, effect_design):
    """Log-normal data: the ratio of medians equals the ratio of geometric means, so the two models agree."""
    idata, _ = sample_posterior(get("biomarker_change_median").build(effect_design), FIT, quiet=True)
    assert int(idata.sample_stats["diverging"].sum()) == 0
    med = idata.posterior["nac_log_ratio"]
    mean = mean_fit.posterior["nac_log_ratio"]
    for mk in ("il6", "crp", "bdnf"):
        assert covers(med.sel(marker=mk), float(mean.sel(marker=mk).mean())), mk
        assert covers(mean.sel(marker=mk), float(med.sel(marker=mk).mean())), mk
    assert covers(med.sel(marker="il6"), 0.4) and hdi(med.sel(marker="il6"))[0] > 0
    # independent method: frequentist median regression on complete cases (CRP, BDNF: no censoring)
    from statsmodels.regression.quantile_regression import QuantReg

    qr = _complete_case(effect_design, lambda y, x: QuantReg(y, x).fit(q=0.5).params[1])
    for mk in ("crp", "bdnf"):
        d = med.sel(marker=mk).values
        assert abs(d.mean() - qr[mk]) < 0.6 * d.std(), (mk, d.mean(), qr[mk])
    # the working-likelihood adjustment widens the intervals by about sqrt(pi/2) = 1.25 on normal residuals
    table = get("biomarker_change_median").extra_estimates(idata, effect_design, 2.0).set_index("marker")
    for mk in ("il6", "crp", "bdnf"):
        assert 1.0 < table.loc[mk, "interval_scale"] < 1.7, (mk, table.loc[mk, "interval_scale"])
        raw_lo, raw_hi = az.hdi(np.exp(med.sel(marker=mk).values.ravel()), hdi_prob=0.94)
        assert table.loc[mk, "hdi_97%"] - table.loc[mk, "hdi_3%"] > 1.05 * (raw_hi - raw_lo), mk


@pytest.mark.slow
def test_mediation_recovers_indirect_effect_and_its_absence(effect_design):
    model = get("mediation").build(effect_design)
    idata, _ = sample_posterior(model, FIT, quiet=True)
    assert int(idata.sample_stats["diverging"].sum()) == 0
    post = idata.posterior
    p = TrialParameters(**EFFECT)
    truth = dict(zip(p.markers, p.nac_indirect_effects()))  # il6: -2, others 0
    ind = post["indirect_effect"]
    assert covers(ind.sel(marker="il6"), truth["il6"])
    assert (ind.sel(marker="il6").values < 0).mean() > 0.95, "a -2 point indirect effect must be clearly negative"
    for mk in ("crp", "bdnf"):
        assert covers(ind.sel(marker=mk), 0.0), mk
    assert covers(post["mediator_per_log_unit"].sel(marker="il6"), -5.0)
    assert covers(post["direct_effect"], p.nac_effect_e)
    assert covers(post["total_effect"], p.nac_effect_at(12))
    table = get("mediation").extra_estimates(idata, effect_design, 2.0)
    prop = table[table["quantity"].str.startswith("proportion") & (table["marker"] == "")]
    assert len(prop) == 1 and "median" in prop.columns


# ---------------------------------------------------------------- slow: bigger trials, null scenarios


@pytest.mark.slow
def test_null_trial_no_effect_on_markers_and_no_indirect_effect(tmp_path):
    design = _design(tmp_path / "null", n_participants=500, seed=77, serum_fraction=0.8)
    settings = SamplerSettings(draws=1000, tune=800, chains=2, seed=5)
    mean, _ = sample_posterior(get("biomarker_change").build(design), settings, quiet=True)
    med, _ = sample_posterior(get("biomarker_change_median").build(design), settings, quiet=True)
    med_fit, _ = sample_posterior(get("mediation").build(design), settings, quiet=True)
    for idata in (mean, med, med_fit):
        assert int(idata.sample_stats["diverging"].sum()) == 0
        for mk in ("il6", "crp", "bdnf"):
            assert covers(idata.posterior["nac_log_ratio"].sel(marker=mk), 0.0), mk
    for mk in ("il6", "crp", "bdnf"):
        ind = med_fit.posterior["indirect_effect"].sel(marker=mk).values
        assert covers(ind, 0.0) and abs(ind.mean()) < 0.5, mk
    assert covers(med_fit.posterior["direct_effect"], -1.5)
    # a null total effect makes the proportion mediated unstable: the table says so
    table = get("mediation").extra_estimates(med_fit, design, 2.0)
    notes = table.loc[table["quantity"].str.startswith("proportion"), "note"]
    total = med_fit.posterior["total_effect"].values
    if 0.03 < (total < 0).mean() < 0.97:
        assert notes.str.contains("unstable").all()


@pytest.mark.slow
def test_mediation_through_crp_in_a_larger_trial(tmp_path):
    params = dict(n_participants=600, seed=123, serum_fraction=0.8, nac_marker_log_ratio=(0.0, -0.5, 0.0), mediation=(0.0, 3.0, 0.0))
    design = _design(tmp_path / "crp", **params)
    idata, _ = sample_posterior(get("mediation").build(design), SamplerSettings(draws=1000, tune=800, chains=2, seed=6), quiet=True)
    assert int(idata.sample_stats["diverging"].sum()) == 0
    post = idata.posterior
    assert covers(post["indirect_effect"].sel(marker="crp"), -1.5, prob=0.94)
    assert (post["indirect_effect"].sel(marker="crp").values < 0).mean() > 0.97
    assert covers(post["nac_log_ratio"].sel(marker="crp"), -0.5, prob=0.94)
    for mk in ("il6", "bdnf"):
        assert covers(post["indirect_effect"].sel(marker=mk), 0.0, prob=0.94), mk
    prop = post["proportion_mediated"].sel(marker="crp").values
    true_prop = -1.5 / (-1.5 - 1.5)
    assert covers(prop, true_prop)


@pytest.mark.slow
def test_median_and_mean_agree_in_a_larger_trial(tmp_path):
    design = _design(tmp_path / "agree", n_participants=800, seed=202, serum_fraction=0.9, nac_marker_log_ratio=(0.3, -0.3, 0.1))
    settings = SamplerSettings(draws=1000, tune=800, chains=2, seed=8)
    mean, _ = sample_posterior(get("biomarker_change").build(design), settings, quiet=True)
    med, _ = sample_posterior(get("biomarker_change_median").build(design), settings, quiet=True)
    for k, mk in enumerate(("il6", "crp", "bdnf")):
        a = mean.posterior["nac_log_ratio"].sel(marker=mk).values
        b = med.posterior["nac_log_ratio"].sel(marker=mk).values
        true = (0.3, -0.3, 0.1)[k]
        assert covers(a, true, 0.94) or covers(b, true, 0.94), mk
        assert abs(a.mean() - b.mean()) < 2 * np.hypot(a.std(), b.std()), mk
    scale = get("biomarker_change_median").extra_estimates(med, design, 2.0).set_index("marker")["interval_scale"]
    for mk in ("crp", "bdnf"):  # uncensored, normal residuals on the log scale: sqrt(pi / 2) = 1.25 expected
        assert 1.1 < scale[mk] < 1.45, (mk, scale[mk])


@pytest.mark.slow  # compiles the model's graph
def test_diagnose_reruns_a_folder_of_biomarker_fits_only(small_trial_dir, tmp_path, capsys):
    """diagnose.py on a results folder holding only a biomarker model's fit rewrites its report (the model's
    answers, no comparison of visit-score fits); --kfold, which refits visit-score fits, is refused with exit 2
    before any work, the folder untouched."""
    import diagnose
    import fit

    out = tmp_path / "out"
    assert fit.main(["--data", str(small_trial_dir), "--model", "biomarker_change", "--draws", "200", "--tune", "200", "--chains", "2",
                     "--prior-draws", "10", "--out", str(out), "--quiet"]) == 0
    report = out / "report.html"
    first = report.read_text()
    report.unlink()
    capsys.readouterr()
    assert diagnose.main([str(out), "--quiet"]) == 0
    again = report.read_text()
    assert "ratio of geometric means" in again and "ratio of geometric means" in first
    assert diagnose.main([str(out), "--kfold", "2", "--quiet"]) == 2
    assert "holds none (only models of other outcomes)" in capsys.readouterr().err
    assert report.read_text() == again


@pytest.mark.slow
def test_three_arm_trial_recovers_each_arms_effects(tmp_path):
    """A three-arm trial (200 per arm) in which both active arms raise week-12 log IL-6 by 0.4 and the IL-6 change
    carries -5 MADRS points per log unit (the generator gives every active arm the biomarker terms), with direct
    effects -1.5 (low) and -3 (high): each arm's ratio, indirect, direct and total effects cover the truth."""
    spec = {**THREE, "n_participants": 600, "seed": 72, "nac_marker_log_ratio": (0.4, 0.0, 0.0), "mediation": (-5.0, 0.0, 0.0)}
    params, design = TrialParameters(**spec), _design(tmp_path / "three", **spec)
    settings = SamplerSettings(draws=800, tune=600, chains=2, seed=9)
    mean, _ = sample_posterior(get("biomarker_change").build(design), settings, quiet=True)
    med, _ = sample_posterior(get("mediation").build(design), settings, quiet=True)
    for idata in (mean, med):
        assert int(idata.sample_stats["diverging"].sum()) == 0
    for j, arm in enumerate(("low", "high")):
        log_ratio = mean.posterior["nac_log_ratio"].sel(active_arm=arm)
        assert covers(log_ratio.sel(marker="il6"), 0.4) and hdi(log_ratio.sel(marker="il6"))[0] > 0, arm
        for mk in ("crp", "bdnf"):
            assert covers(log_ratio.sel(marker=mk), 0.0), (arm, mk)
        post = med.posterior.sel(active_arm=arm)
        assert covers(post["indirect_effect"].sel(marker="il6"), -2.0), arm
        assert covers(post["direct_effect"], params.arm_effects()[j][0]), arm
        assert covers(post["total_effect"], params.effect_at(12, j)), arm
    # the two arms' direct effects differ by 1.5 points: the model keeps them apart
    gap = med.posterior["direct_effect"].sel(active_arm="high") - med.posterior["direct_effect"].sel(active_arm="low")
    assert covers(gap, -1.5)
