"""Trajectory model family (null, treatment, treatment_curved, moderation): structure, priors, recovery."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytest

import fit
from data import TrialParameters, load_dataset, simulate_trial
from inference.sampling import SamplerSettings, sample_all, sample_posterior
from models import ModelDataError, build_design, get
from models.contract import VISIT_SCORES
from models.moderation import CLINICAL_LEVELS, marker_levels, nac_effect_at_levels
from models.trajectory import curve_basis

FAMILY = ("null", "treatment", "treatment_curved", "moderation")
NO_BIOMARKERS = ("null", "treatment", "treatment_curved")


@pytest.fixture(scope="module")
def design(small_trial):
    return build_design(small_trial)


@pytest.fixture(scope="module")
def design_nobio(tmp_path_factory):
    trial = simulate_trial(TrialParameters(n_participants=30, seed=2))
    trial.biomarkers = trial.biomarkers.iloc[0:0]
    folder = tmp_path_factory.mktemp("nobio") / "t"
    trial.write(folder)
    return build_design(load_dataset(folder))


def _short_fit(model, seed, draws=300, tune=400):
    idata, _ = sample_posterior(model, SamplerSettings(draws=draws, tune=tune, chains=2, seed=seed), quiet=True)
    return idata


@pytest.mark.unit
@pytest.mark.parametrize("name", FAMILY)
def test_dims_and_finite_logp_every_likelihood(design, name):
    """Every model's dims and a finite log density; the three likelihoods (one code path, models/trajectory.py) on the
    models without markers and with curvature, the normal one on the others."""
    spec = get(name)
    assert set(spec.likelihoods) == {"normal", "student", "censored"}
    for likelihood in spec.likelihoods if name in ("null", "treatment_curved") else ("normal",):
        built = spec.build(design, likelihood=likelihood)
        model = built.model
        assert built.observations == VISIT_SCORES and spec.comparable and built.outcome_vars == ("y",)
        dims = model.named_vars_to_dims
        assert dims["y"] == ("obs",)
        assert dims["time_change"] == ("phase",)
        assert dims["placebo_change"] == ("week",)
        assert dims["participant_raw"] == ("participant", "participant_effect")
        logp = model.point_logps()
        assert all(np.isfinite(v) for v in logp.values()), (name, likelihood, logp)
        for var in model.free_RVs + model.deterministics:
            if var.ndim and var.name != "participant_chol":
                assert var.name in dims, (name, var.name)
        assert built.priors["time_change"].params["sigma"] == pytest.approx(15.0)
        assert ("student_nu" in built.priors) == (likelihood == "student")
        assert set(built.priors) <= set(model.named_vars) | {"participant_sd", "participant_corr", "site"}, "only the priors it uses"
    if name == "null":
        assert "nac_change" not in model.named_vars and "nac_effect" not in model.named_vars
        assert "nac_change" not in built.priors and "active_arm" not in model.coords
    else:
        assert dims["nac_effect"] == ("active_arm", "week") and dims["nac_change"] == ("active_arm", "phase")
        assert dims["arm_indicator"] == ("participant", "active_arm") and list(model.coords["active_arm"]) == ["nac"]
    assert ("time_curvature" in model.named_vars) == name.endswith("curved")
    if name == "treatment_curved":
        assert dims["nac_curvature"] == ("active_arm",)
    if name == "moderation":
        assert dims["nac_marker_moderation"] == ("active_arm", "marker")
        assert dims["nac_moderation_per_doubling"] == ("active_arm", "marker")
        assert "nac_marker_moderation" in built.priors
    elif name == "headline":
        assert dims["moderation_per_doubling"] == ("marker",) and "marker_mean" in built.priors
        assert "nac_marker_moderation" not in built.priors
    else:
        assert "marker" not in model.coords and "marker_mean" not in built.priors


@pytest.mark.unit
def test_models_without_biomarkers(design_nobio):
    for name in NO_BIOMARKERS:
        model = get(name).build(design_nobio).model
        assert np.isfinite(model.point_logps()["y"])
        get(name).require(design_nobio)
    for name in ("moderation", "headline"):
        for refuse in (get(name).require, get(name).build):
            with pytest.raises(ModelDataError, match="needs baseline biomarkers"):
                refuse(design_nobio)


@pytest.mark.unit
def test_unknown_likelihood_is_refused(design_nobio):
    with pytest.raises(ValueError, match="unknown likelihood"):
        get("treatment").build(design_nobio, likelihood="poisson")


@pytest.mark.unit
@pytest.mark.parametrize("name", FAMILY)
def test_prior_predictive_stays_on_scale(design, name):
    with get(name).build(design).model:
        prior = pm.sample_prior_predictive(draws=200, random_seed=5)
    y = prior.prior_predictive["y"].values.ravel()
    # a few extreme prior draws of the marker block put a censored latent marker at -inf (shared with headline)
    assert np.mean(~np.isfinite(y)) < 0.01
    y = y[np.isfinite(y)]
    inside = np.mean((y >= -10) & (y <= 70))
    # weakly informative priors: the bulk (85%; the moderation model's extra terms widen the tails) stays near the scale
    assert inside > 0.85, f"{name}: only {inside:.0%} of prior predictive scores near the 0-60 range"
    if name != "null":
        nac16 = prior.prior["nac_effect"].sel(week=16).values.ravel()
        assert 0.8 < np.mean(np.abs(nac16) < 20), "prior NAC effects should mostly be below a third of the scale"
    assert 0 < np.median(y) < 60


@pytest.mark.unit
def test_curve_basis_keeps_phase_meaning_and_nests_straight_model(design):
    q = curve_basis([0, 0.5, 1.0, 1 / 3])
    np.testing.assert_allclose(q, [0, 1, 0, 8 / 9])
    straight = get("treatment").build(design).model
    curved = get("treatment_curved").build(design).model
    point = curved.initial_point()
    point["time_curvature"] = np.array(0.0)
    point["nac_curvature"] = np.zeros(1)  # one active arm
    lp_c = curved.compile_logp(vars=[curved["y"]])(point)
    lp_s = straight.compile_logp(vars=[straight["y"]])({k: v for k, v in point.items() if k in straight.initial_point()})
    assert lp_c == pytest.approx(lp_s), "with zero curvature the curved model must equal the straight one"
    point["time_curvature"] = np.array(-3.0)
    assert curved.compile_logp(vars=[curved["y"]])(point) != pytest.approx(lp_s)


@pytest.mark.unit
def test_marker_levels_in_natural_units(design, small_trial_dir):
    levels = marker_levels(design.baseline)
    assert [v for _, v in levels["crp"]] == list(CLINICAL_LEVELS["crp"][1])
    raw = pd.read_csv(small_trial_dir / "biomarkers.csv")
    il6 = raw[(raw.marker == "il6") & (raw.week == 0)]["value"].to_numpy()
    assert (raw[(raw.marker == "il6") & (raw.week == 0)]["below_lod"]).mean() < 0.25
    np.testing.assert_allclose([v for _, v in levels["il6"]], np.quantile(il6, [0.25, 0.5, 0.75]), rtol=2e-3)
    custom = marker_levels(design.baseline, {"bdnf": [20, 30]})
    assert [v for _, v in custom["bdnf"]] == [20.0, 30.0]


def _moderation_draws(design, seed=0):
    """Known draws of the moderation model's arm terms (active_arm x week, active_arm x marker), as an InferenceData."""
    rng = np.random.default_rng(seed)
    md = design.baseline
    k = design.n_active
    nac = rng.normal(-2, 1, size=(2, 50, k, len(design.weeks)))
    eta = rng.normal(-1, 0.3, size=(2, 50, k, len(md.names)))
    idata = az.from_dict(
        posterior={"nac_effect": nac, "nac_marker_moderation": eta, "nac_moderation_per_doubling": eta * np.log(2) / md.log_scale},
        coords={"week": design.weeks, "marker": md.names, "active_arm": design.active_arms},
        dims={"nac_effect": ["active_arm", "week"], "nac_marker_moderation": ["active_arm", "marker"],
              "nac_moderation_per_doubling": ["active_arm", "marker"]},
    )
    return idata, nac, eta


@pytest.mark.unit
def test_nac_effect_at_levels_formula(design):
    """Rows equal nac_effect + eta_k (ln x - m_k) / s_k by construction of known draws."""
    md = design.baseline
    idata, nac, eta = _moderation_draws(design)
    table = nac_effect_at_levels(idata, design, mcid=2.0)
    k = md.names.index("crp")
    z3 = (np.log(3.0) - md.log_center[k]) / md.log_scale[k]
    row = table[table["quantity"].str.contains("week 16, baseline crp 3 mg/L")].iloc[0]
    assert row["quantity"] == "nac - placebo mean MADRS at week 16, baseline crp 3 mg/L"
    assert row["mean"] == pytest.approx((nac[..., 0, -1] + eta[..., 0, k] * z3).mean())
    assert table["quantity"].str.contains("week 12, baseline il6").sum() == 3
    assert table["quantity"].str.contains("per doubling of baseline bdnf").sum() == 1
    assert table["summary"].str.contains("nac - placebo", regex=False).all()


@pytest.mark.unit
def test_nac_effect_at_levels_per_active_arm(tmp_path):
    """A three-arm trial: the rows of each active arm in turn ('low - placebo ...', then 'high - placebo ...'), each
    from its own arm's draws, each row's estimand naming its arm."""
    from data.synthetic import dose_trial_parameters

    simulate_trial(dose_trial_parameters(n_participants=45, seed=3)).write(tmp_path / "t")
    design = build_design(load_dataset(tmp_path / "t"))
    assert design.active_arms == ["low", "high"]
    md = design.baseline
    idata, nac, eta = _moderation_draws(design, seed=1)
    table = nac_effect_at_levels(idata, design, mcid=2.0)
    half = len(table) // 2
    assert table["quantity"].iloc[:half].str.startswith(("low - placebo", "extra low - placebo")).all()
    assert table["quantity"].iloc[half:].str.startswith(("high - placebo", "extra high - placebo")).all()
    k = md.names.index("crp")
    z3 = (np.log(3.0) - md.log_center[k]) / md.log_scale[k]
    for a, arm in enumerate(design.active_arms):
        row = table[table["quantity"] == f"{arm} - placebo mean MADRS at week 12, baseline crp 3 mg/L"].iloc[0]
        # week 12 is the end of treatment: t1 = 1
        assert row["mean"] == pytest.approx((nac[..., a, list(design.weeks).index(12)] + eta[..., a, k] * z3).mean())
        assert f"({arm} - placebo)" in row["summary"]
        row = table[table["quantity"] == f"extra {arm} - placebo difference by week 12 per doubling of baseline il6"].iloc[0]
        j = md.names.index("il6")
        assert row["mean"] == pytest.approx((eta[..., a, j] * np.log(2) / md.log_scale[j]).mean())
        assert f"{arm} - placebo difference" in row["summary"]


@pytest.mark.unit
def test_list_models_shows_family(capsys):
    assert fit.main(["--list-models"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert set(FAMILY) | {"mmrm", "headline"} <= set(names)


@pytest.mark.smoke
def test_treatment_model_recovers_nac_effect(tmp_path):
    """Short fit through the shipped (fast) path, 150 participants: covers the true week-12 and week-16
    effects and sees the benefit (a swapped arm or a dropped follow-up phase fails it)."""
    params = TrialParameters(n_participants=150, seed=41, nac_effect_e=-3.0, nac_effect_f=-5.0, serum_fraction=0.0)
    simulate_trial(params).write(tmp_path / "t")
    design = build_design(load_dataset(tmp_path / "t"))
    assert design.baseline is None  # no biomarkers at all: the treatment model does not need them
    idata, _ = sample_all(get("treatment").build(design), SamplerSettings(draws=300, tune=400, chains=2, seed=3, prior_draws=20), quiet=True)
    assert idata.posterior.attrs["fit_path"] == "marginal"
    for week, truth in ((12, -3.0), (16, -5.0)):
        eff = idata.posterior["nac_effect"].sel(active_arm="nac", week=week).values.ravel()
        lo, hi = az.hdi(eff, hdi_prob=0.99)
        assert lo < truth < hi, (week, lo, hi)
    assert (idata.posterior["nac_effect"].sel(active_arm="nac", week=16).values < 0).mean() > 0.95
    assert int(idata.sample_stats["diverging"].sum()) == 0


@pytest.mark.slow  # a recovery check; the estimates table is unit-tested above
def test_moderation_model_recovers_il6_interaction(tmp_path):
    """NAC helps more with higher baseline IL-6 (-3 points per SD of log IL-6); CRP and BDNF: none.
    Sampled through the shipped (fast) path: the marginal model and the fused log density."""
    params = TrialParameters(n_participants=160, seed=52, serum_fraction=0.9, nac_moderation=(-3.0, 0.0, 0.0))
    simulate_trial(params).write(tmp_path / "t")
    design = build_design(load_dataset(tmp_path / "t"))
    idata = _short_fit(get("moderation").build(design).fast_variant(), seed=6)
    eta = idata.posterior["nac_marker_moderation"].sel(active_arm="nac")
    # the design standardises by the sample SD of observed log values, the generator by the true SD
    k = design.baseline.names.index("il6")
    truth_il6 = -3.0 * design.baseline.log_scale[k] / params.marker_log_sd[k]
    lo, hi = az.hdi(eta.sel(marker="il6").values.ravel(), hdi_prob=0.99)
    assert lo < truth_il6 < hi, (lo, hi, truth_il6)
    assert (eta.sel(marker="il6").values < 0).mean() > 0.95
    for mk in ("crp", "bdnf"):
        lo, hi = az.hdi(eta.sel(marker=mk).values.ravel(), hdi_prob=0.99)
        assert lo < 0.0 < hi, (mk, lo, hi)
    table = nac_effect_at_levels(idata, design)
    il6 = table[table["quantity"].str.contains("week 12, baseline il6")]["mean"].to_numpy()
    assert il6[0] > il6[1] > il6[2], "the NAC effect must grow (more negative) with baseline IL-6"
    assert int(idata.sample_stats["diverging"].sum()) == 0


@pytest.mark.slow
def test_treatment_model_zero_effect_covers_zero(tmp_path):
    params = TrialParameters(n_participants=252, seed=61, nac_effect_e=0.0, nac_effect_f=0.0, serum_fraction=0.0)
    simulate_trial(params).write(tmp_path / "t")
    design = build_design(load_dataset(tmp_path / "t"))
    idata = _short_fit(get("treatment").build(design), seed=8, draws=600, tune=600)
    for week in (12, 16):
        lo, hi = az.hdi(idata.posterior["nac_effect"].sel(active_arm="nac", week=week).values.ravel(), hdi_prob=0.94)
        assert lo < 0.0 < hi, (week, lo, hi)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")  # az.compare warns on any visit with k > 0.67; the ranking is what is tested
@pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.sort_values")  # inside az.compare
def test_curved_course_recovered_and_preferred_by_loo(tmp_path):
    """With a concave (early response) course, the curved model tracks the true placebo course at
    weeks 2-8, where the straight line cannot, and LOO prefers it."""
    params = TrialParameters(n_participants=252, seed=71, curvature=3.0, serum_fraction=0.0)
    simulate_trial(params).write(tmp_path / "t")
    design = build_design(load_dataset(tmp_path / "t"))
    fits = {}
    for name in ("treatment", "treatment_curved"):
        built = get(name).build(design)
        idata = _short_fit(built, seed=9, draws=500, tune=600)
        with built.model:
            pm.compute_log_likelihood(idata, var_names=["y"], progressbar=False)
        fits[name] = idata
    truth_w4 = params.placebo_change_e * float(params._g(4 / 12))
    curved = fits["treatment_curved"].posterior["placebo_change"].sel(week=4).values.ravel()
    lo, hi = az.hdi(curved, hdi_prob=0.99)
    assert lo < truth_w4 < hi, (lo, hi, truth_w4)
    straight = fits["treatment"].posterior["placebo_change"].sel(week=4).values.ravel()
    assert abs(straight.mean() - truth_w4) > abs(curved.mean() - truth_w4)
    cmp = az.compare({k: v for k, v in fits.items()})
    assert cmp.index[0] == "treatment_curved"
    assert cmp.loc["treatment", "elpd_diff"] > 2 * cmp.loc["treatment", "dse"]
