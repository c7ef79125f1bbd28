"""Power-scaling sensitivity (diagnostics/prior_sensitivity.py): the log prior against PyMC's own densities,
the sensitivities against the closed form of a conjugate normal model, Kallioinen's reading of them, and
which effects and log-likelihood terms are used. The default tier samples nothing."""

from __future__ import annotations

import inspect
import json

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from diagnostics.loo import PARETO_K_MAX
from diagnostics.prior_sensitivity import (
    CONFLICT,
    DENSITIES,
    NO_FLAG,
    PRIOR_SENSITIVITY_THRESHOLD,
    STRONG_PRIOR,
    TABLE_COLUMNS,
    diagnosis,
    likelihood_variables,
    log_prior,
    prior_log_density,
    prior_sensitivity_table,
    reported_effects,
)
from diagnostics.report import prior_sensitivity_lines
from models.prior_file import FAMILIES
from models.priors import Prior, to_json


def posterior(chains: int, draws: int, **variables) -> xr.Dataset:
    """A posterior of arrays (chain, draw, ...), with the dims named after the variable."""
    out = {}
    for name, values in variables.items():
        values = np.asarray(values, dtype=float).reshape(chains, draws, *np.shape(values)[2:])
        out[name] = (("chain", "draw", *[f"{name}_dim_{i}" for i in range(values.ndim - 2)]), values)
    return xr.Dataset(out, coords={"chain": np.arange(chains), "draw": np.arange(draws)})


@pytest.mark.unit
def test_every_family_a_prior_file_allows_has_a_log_density():
    assert set(FAMILIES) == set(DENSITIES)


@pytest.mark.unit
def test_log_prior_is_pymcs_density_of_the_values_as_the_priors_state_them():
    """At a few points per family, log_prior equals PyMC's logp of the constrained values (no Jacobian):
    every family, per-element parameters (a per-phase mean), sum-to-zero offsets, and the LKJ density
    of a 2 x 2 (one correlation) and a 4 x 4 correlation matrix with its SDs' prior."""
    import pymc as pm
    import pytensor

    rng = np.random.default_rng(3)
    k = 3  # points
    real, pos = rng.normal(1.0, 2.0, (1, k)), rng.gamma(2.0, 1.0, (1, k))
    cases = {  # prior name -> (Prior, values (1, k, ...), PyMC distribution)
        "normal": (Prior("Normal", {"mu": [-2.0, 0.0], "sigma": 1.2}, ""), rng.normal(0, 2, (1, k, 2)), None),
        "student": (Prior("StudentT", {"nu": 4.0, "mu": 1.0, "sigma": 2.0}, ""), real, None),
        "cauchy": (Prior("Cauchy", {"alpha": 1.0, "beta": 2.0}, ""), real, None),
        "laplace": (Prior("Laplace", {"mu": 1.0, "b": 2.0}, ""), real, None),
        "halfnormal": (Prior("HalfNormal", {"sigma": 6.0}, ""), pos, None),
        "halfstudent": (Prior("HalfStudentT", {"nu": 3.0, "sigma": 2.0}, ""), pos, None),
        "halfcauchy": (Prior("HalfCauchy", {"beta": 1.5}, ""), pos, None),
        "exponential": (Prior("Exponential", {"lam": 0.3}, ""), pos, None),
        "gamma": (Prior("Gamma", {"alpha": 2.0, "beta": 0.1}, ""), pos, None),
        "gamma_mu": (Prior("Gamma", {"mu": 2.0, "sigma": 1.0}, ""), pos, None),
        "invgamma": (Prior("InverseGamma", {"alpha": 3.0, "beta": 2.0}, ""), pos, None),
        "lognormal": (Prior("LogNormal", {"mu": 0.5, "sigma": 0.7}, ""), pos, None),
    }
    outputs = []
    for prior, values, _ in cases.values():
        family = getattr(pm, prior.dist).dist(**prior.params)
        outputs.append(pm.logp(family, values))
    zsn = rng.normal(0.0, 3.0, (k, 4))
    zsn -= zsn.mean(axis=1, keepdims=True)  # sum-to-zero offsets
    outputs += [pm.logp(pm.ZeroSumNormal.dist(sigma=3.0, shape=4), zsn[i]) for i in range(k)]
    matrices = []
    for _ in range(k):  # random 4 x 4 correlation matrices
        cov = np.cov(rng.normal(size=(4, 12)))
        matrices.append(cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))))
    matrices = np.array(matrices)
    iu = np.triu_indices(4, 1)
    outputs += [pm.logp(pm.LKJCorr.dist(n=4, eta=2.0), matrices[i][iu]) for i in range(k)]  # PyMC's value: the upper triangle
    r = rng.uniform(-0.9, 0.9, k)
    outputs += [pm.logp(pm.LKJCorr.dist(n=2, eta=3.0), r[i : i + 1]) for i in range(k)]
    sds = rng.gamma(2.0, 2.0, (k, 4))
    outputs.append(pm.logp(pm.HalfNormal.dist(9.0, shape=4), sds))
    outputs += [pm.logp(pm.LKJCorr.dist(n=4, eta=1.0), matrices[0][iu]), pm.logp(pm.LKJCorr.dist(n=3, eta=1.0), matrices[0][:3, :3][np.triu_indices(3, 1)])]
    values = pytensor.function([], outputs, mode="FAST_COMPILE")()

    for (name, (prior, x, _)), reference in zip(cases.items(), values):
        x = x if x.ndim == 3 else x[..., None]
        mine = prior_log_density(prior, x)
        assert mine.shape == (1, k)
        assert np.allclose(mine[0], np.asarray(reference).reshape(k, -1).sum(axis=-1), atol=1e-6), name
    rest = values[len(cases):]
    zsn_ref, lkj4_ref, lkj2_ref, sd_ref = rest[:k], rest[k : 2 * k], rest[2 * k : 3 * k], rest[3 * k]
    uniform4, uniform3 = rest[3 * k + 1 :]  # eta = 1 (the MMRM's default): PyMC's constant for even and odd n
    assert prior_log_density(Prior("LKJ", {"eta": 1.0}, ""), matrices[None, :1]) == pytest.approx(float(uniform4), abs=1e-6)
    assert prior_log_density(Prior("LKJ", {"eta": 1.0}, ""), matrices[None, :1, :3, :3]) == pytest.approx(float(uniform3), abs=1e-6)
    # as a fit stores them: site_effect (chain, draw, site); a correlation Deterministic (chain, draw, n, n) or the one correlation
    post = posterior(1, k, site_effect=zsn[None], visit_corr=matrices[None], participant_corr=r[None], visit_sd=sds[None])
    priors = {
        "site": Prior("ZeroSumNormal", {"sigma": 3.0}, ""),
        "visit_corr": Prior("LKJ", {"eta": 2.0}, ""),
        "participant_corr": Prior("LKJ", {"eta": 3.0}, ""),
        "visit_sd": Prior("HalfNormal", {"sigma": 9.0}, ""),
    }
    lp = log_prior(az.InferenceData(posterior=post), priors)
    assert np.allclose(lp["site"].values[0], zsn_ref, atol=1e-6)  # the prior named 'site' is stated for site_effect
    assert np.allclose(lp["visit_corr"].values[0], lkj4_ref, atol=1e-6)
    assert np.allclose(lp["participant_corr"].values[0], lkj2_ref, atol=1e-6)
    assert np.allclose(lp["visit_sd"].values[0], np.asarray(sd_ref).sum(axis=-1), atol=1e-6)


@pytest.mark.unit
def test_priors_without_a_variable_or_density_are_listed_not_used():
    post = posterior(1, 4, intercept=np.zeros((1, 4)))
    post.attrs["priors"] = to_json({
        "intercept": Prior("Normal", {"mu": 0.0, "sigma": 1.0}, ""),
        "site": Prior("ZeroSumNormal", {"sigma": 1.0}, ""),  # a one-site trial has no site_effect
        "odd": Prior("Weibull", {"alpha": 1.0, "beta": 1.0}, ""),
    })
    post["odd"] = post["intercept"] + 1.0
    lp = log_prior(az.InferenceData(posterior=post))
    assert list(lp.data_vars) == ["intercept"]
    assert json.loads(lp.attrs["not_power_scaled"]) == {"site": "no posterior variable", "odd": "no log density for Weibull"}
    # with sites, 'site' is a dim of the posterior and the prior is stated for site_effect
    offsets = np.array([[[-1.0, 0.5, 0.5]] * 4])
    with_sites = post.assign(site_effect=(("chain", "draw", "site"), offsets)).assign_coords(site=["a", "b", "c"])
    lp = log_prior(az.InferenceData(posterior=with_sites))
    assert list(lp.data_vars) == ["intercept", "site"]
    assert np.allclose(lp["site"].values, -0.5 * 1.5 - 2 * 0.5 * np.log(2 * np.pi))


# ---------------------------------------------------------------- a conjugate normal model


def conjugate(mu0, tau0, sigma, n, truth=2.0, draws=4000, seed=1):
    """theta ~ Normal(mu0, tau0), y_i ~ Normal(theta, sigma): exact posterior draws and the pointwise log-likelihood."""
    rng = np.random.default_rng(seed)
    y = truth + sigma * rng.standard_normal(n)
    m, s = scaled_posterior(mu0, tau0, y, sigma, 1.0, 1.0)
    theta = m + s * rng.standard_normal((4, draws // 4))
    post = posterior(4, draws // 4, theta=theta)
    post.attrs["priors"] = to_json({"theta": Prior("Normal", {"mu": mu0, "sigma": tau0}, "")})
    loglik = xr.Dataset({"y": (("chain", "draw", "obs"), stats.norm.logpdf(y, theta[..., None], sigma))})
    return az.InferenceData(posterior=post, log_likelihood=loglik), y, m, s


def scaled_posterior(mu0, tau0, y, sigma, prior_power, likelihood_power):
    """Mean and SD of the posterior with the prior and the likelihood raised to powers (closed form)."""
    precision = prior_power / tau0**2 + likelihood_power * len(y) / sigma**2
    return (prior_power * mu0 / tau0**2 + likelihood_power * y.sum() / sigma**2) / precision, precision**-0.5


def cjs_sensitivity(m, s, shifted, lo, hi, delta=0.01):
    """The power-scaling sensitivity from the exact CDFs: the cumulative Jensen-Shannon distance of each
    power-scaled posterior (in both directions, as arviz) over the draws' range, by finite differences."""
    x = np.linspace(lo, hi, 20001)
    dx = x[1] - x[0]
    total = 0.0
    for mq, sq in shifted:
        distances = []
        for p, q in ((stats.norm.cdf(x, m, s), stats.norm.cdf(x, mq, sq)), (stats.norm.sf(x, m, s), stats.norm.sf(x, mq, sq))):
            def part(a, b):
                with np.errstate(divide="ignore", invalid="ignore"):
                    return np.sum(np.where(a > 0, a * np.log2(a / (0.5 * (a + b))), 0.0)) * dx
            pi, qi = p.sum() * dx, q.sum() * dx
            pq = max(0.0, part(p, q) + 0.5 / np.log(2) * (qi - pi))
            qp = max(0.0, part(q, p) + 0.5 / np.log(2) * (pi - qi))
            distances.append(np.sqrt((pq + qp) / (pi + qi)))
        total += max(distances)
    return total / (2 * np.log2(1 + delta))


CONJUGATE = [  # prior mean and SD, data SD and size, the diagnosis
    pytest.param(0.0, 100.0, 10.0, 50, NO_FLAG, id="weak prior"),
    pytest.param(5.0, 0.5, 10.0, 50, CONFLICT, id="strong prior away from the data"),
    pytest.param(0.0, 1.0, 10.0, 4, STRONG_PRIOR, id="strong prior, little data"),
]


@pytest.mark.unit
@pytest.mark.parametrize("mu0, tau0, sigma, n, expected", CONJUGATE)
def test_sensitivities_match_the_closed_form_of_a_conjugate_model(mu0, tau0, sigma, n, expected):
    idata, y, m, s = conjugate(mu0, tau0, sigma, n)
    table = prior_sensitivity_table(idata, {"theta": idata.posterior["theta"]})
    row = table.iloc[0]
    draws = idata.posterior["theta"].values
    alphas = (1 / 1.01, 1.01)
    prior_ref = cjs_sensitivity(m, s, [scaled_posterior(mu0, tau0, y, sigma, a, 1.0) for a in alphas], draws.min(), draws.max())
    lik_ref = cjs_sensitivity(m, s, [scaled_posterior(mu0, tau0, y, sigma, 1.0, a) for a in alphas], draws.min(), draws.max())
    assert row["likelihood_sensitivity"] == pytest.approx(lik_ref, rel=0.15)
    if expected == NO_FLAG:
        assert row["prior_sensitivity"] < 0.005 and prior_ref < 0.005
    else:
        assert row["prior_sensitivity"] == pytest.approx(prior_ref, rel=0.15)
    assert row["diagnosis"] == expected and row["prior_sensitive"] == (expected != NO_FLAG)
    assert table.attrs["power_scaled_priors"] == ["theta"] and table.attrs["likelihood_variables"] == ["y"]
    assert max(table.attrs["pareto_k"].values()) < 0.7


@pytest.mark.unit
def test_a_stronger_prior_is_more_sensitive():
    """Same data: the prior sensitivity grows as the prior narrows, the likelihood's stays."""
    sens = []
    for tau0 in (30.0, 3.0, 0.3):
        idata = conjugate(0.0, tau0, 10.0, 50)[0]
        sens.append(prior_sensitivity_table(idata, {"theta": idata.posterior["theta"]}).iloc[0]["prior_sensitivity"])
    assert sens[0] < 0.01 < sens[1] < sens[2] and sens[2] > PRIOR_SENSITIVITY_THRESHOLD


@pytest.mark.unit
def test_diagnosis_follows_kallioinens_rule():
    t = PRIOR_SENSITIVITY_THRESHOLD
    assert diagnosis(0.2, 0.2) == CONFLICT and diagnosis(t, t) == CONFLICT
    assert diagnosis(0.2, 0.01) == STRONG_PRIOR
    assert diagnosis(0.01, 0.2) == NO_FLAG and diagnosis(0.01, 0.01) == NO_FLAG and diagnosis(float("nan"), 0.2) == NO_FLAG


# ---------------------------------------------------------------- what a fit reports


@pytest.mark.unit
def test_reported_effects_and_likelihood_terms_of_a_fit():
    """A trajectory fit: nac_effect at the end of treatment and the last follow-up (from the provenance),
    placebo_change at the end of treatment, the per-doubling rows; the integrated densities are not the likelihood."""
    rng = np.random.default_rng(0)
    weeks = np.array([0, 2, 4, 8, 12, 16])
    post = xr.Dataset(
        {
            "nac_effect": (("chain", "draw", "week"), np.concatenate([np.zeros((2, 50, 1)), rng.normal(size=(2, 50, 5))], axis=-1)),
            "placebo_change": (("chain", "draw", "week"), rng.normal(size=(2, 50, 6))),
            "moderation_per_doubling": (("chain", "draw", "marker"), rng.normal(size=(2, 50, 2))),
            "residual_sd": (("chain", "draw"), rng.gamma(20.0, 0.2, size=(2, 50))),
        },
        coords={"week": weeks, "marker": ["il6", "crp"]},
    )
    post.attrs["design_constants"] = json.dumps({"treatment_end": 12.0, "last_week": 16.0})
    post.attrs["priors"] = to_json({"residual_sd": Prior("HalfNormal", {"sigma": 6.0}, "")})
    loglik = xr.Dataset({
        "y": (("chain", "draw", "obs"), rng.normal(-3, 0.1, size=(2, 50, 30))),
        "y_participant": (("chain", "draw", "scored_participant"), rng.normal(-9, 0.1, size=(2, 50, 10))),
        "y_visit": (("chain", "draw", "scored_visit"), rng.normal(-3, 0.1, size=(2, 50, 20))),
    })
    idata = az.InferenceData(posterior=post, log_likelihood=loglik)
    effects = reported_effects(idata)
    assert [e.effect for e in effects] == ["nac_effect at week 12", "nac_effect at week 16", "placebo_change at week 12",
                                           "moderation_per_doubling, il6", "moderation_per_doubling, crp"]
    assert np.array_equal(effects[1].draws, post["nac_effect"].sel(week=16).values) and effects[3].marker == "il6"
    assert likelihood_variables(idata) == ["y"]
    # without the provenance: every week but a constant week 0
    del post.attrs["design_constants"]
    assert [e.week for e in reported_effects(idata) if e.variable == "nac_effect"] == [2, 4, 8, 12, 16]
    table = prior_sensitivity_table(idata, weeks=[12])
    assert list(table["effect"]) == ["nac_effect at week 12", "placebo_change at week 12", "moderation_per_doubling, il6", "moderation_per_doubling, crp"]
    assert list(table.columns) == ["effect", "variable", "week", "marker", "prior_sensitivity", "likelihood_sensitivity", "prior_sensitive", "diagnosis",
                                   "prior_pareto_k", "likelihood_pareto_k", "not_power_scaled"]
    assert table[["prior_sensitivity", "likelihood_sensitivity"]].notna().all().all()


@pytest.mark.unit
def test_reported_effects_of_several_active_arms_name_their_arm():
    """A variable with an active_arm dim: one effect per arm, 'var[arm]' when there are several, 'var' alone for one
    (a two-arm fit reads as before); a prior on a per-arm variable sums its density over the arms."""
    rng = np.random.default_rng(1)
    weeks = np.array([0, 12, 16])
    effect = rng.normal(size=(2, 40, 2, 3))
    post = xr.Dataset({"nac_effect": (("chain", "draw", "active_arm", "week"), effect),
                       "total_effect": (("chain", "draw", "active_arm"), rng.normal(size=(2, 40, 2)))},
                      coords={"week": weeks, "active_arm": ["low", "high"]})
    effects = reported_effects(az.InferenceData(posterior=post), weeks=[12])
    assert [e.effect for e in effects] == ["nac_effect[low] at week 12", "nac_effect[high] at week 12", "total_effect[low]", "total_effect[high]"]
    assert np.array_equal(effects[1].draws, effect[:, :, 1, 1]) and effects[0].variable == "nac_effect" and effects[0].week == 12
    one = reported_effects(az.InferenceData(posterior=post.sel(active_arm=["high"])), weeks=[12])
    assert [e.effect for e in one] == ["nac_effect at week 12", "total_effect"] and np.array_equal(one[0].draws, effect[:, :, 1, 1])
    change = rng.normal(size=(2, 40, 2, 2))  # nac_change (active_arm, phase): the prior applies to every arm and phase
    lp = prior_log_density(Prior("Normal", {"mu": 0.0, "sigma": 6.0}, ""), change)
    np.testing.assert_allclose(lp, stats.norm.logpdf(change, 0, 6).sum(axis=(2, 3)))


# ---------------------------------------------------------------- where power-scaling fails


def _csv_round_trip(table: pd.DataFrame, tmp_path) -> pd.DataFrame:
    """As prior_sensitivity.csv is written and read back for the report."""
    table.to_csv(tmp_path / "prior_sensitivity.csv", index=False)
    return pd.read_csv(tmp_path / "prior_sensitivity.csv")


@pytest.mark.unit
def test_the_table_carries_the_pareto_k_and_the_priors_not_power_scaled(tmp_path):
    idata = conjugate(0.0, 100.0, 10.0, 50)[0]
    table = prior_sensitivity_table(idata, {"theta": idata.posterior["theta"]})
    assert list(table.columns) == TABLE_COLUMNS
    row = table.iloc[0]
    assert row["prior_pareto_k"] == table.attrs["pareto_k"]["prior"] < PARETO_K_MAX
    assert row["likelihood_pareto_k"] == table.attrs["pareto_k"]["likelihood"] < PARETO_K_MAX
    assert row["not_power_scaled"] == ""
    back = _csv_round_trip(table, tmp_path)
    assert list(back.columns) == TABLE_COLUMNS and back["prior_pareto_k"].iloc[0] == pytest.approx(row["prior_pareto_k"])
    lines = prior_sensitivity_lines(back)
    note = f"No reported effect is prior-sensitive (power-scaling: every prior sensitivity below {PRIOR_SENSITIVITY_THRESHOLD:g})."
    assert lines == [f'<p class="note">{note}</p>'], lines
    assert "0.05" not in inspect.getsource(prior_sensitivity_lines)  # the threshold is the one constant, not a copy


@pytest.mark.unit
def test_a_prior_that_cannot_be_power_scaled_is_written_and_reported(tmp_path):
    """Three ways power-scaling fails: a prior with no posterior variable (a one-site trial's site prior), a family
    without a log density, and a prior so far from the posterior that its importance weights have Pareto k above 0.7."""
    idata = conjugate(0.0, 100.0, 10.0, 50)[0]
    idata.posterior["odd"] = idata.posterior["theta"] + 1.0
    idata.posterior.attrs["priors"] = to_json({
        "theta": Prior("Normal", {"mu": 8.0, "sigma": 0.2}, ""),  # 4.5 posterior SDs from the posterior, 7 times narrower
        "site": Prior("ZeroSumNormal", {"sigma": 1.0}, ""),
        "odd": Prior("Weibull", {"alpha": 1.0, "beta": 1.0}, ""),
    })
    table = prior_sensitivity_table(idata, {"theta": idata.posterior["theta"]})
    row = table.iloc[0]
    assert row["not_power_scaled"] == "odd (no log density for Weibull); site (no posterior variable)"
    assert np.isfinite(row["prior_pareto_k"]) and row["prior_pareto_k"] > PARETO_K_MAX and row["likelihood_pareto_k"] < PARETO_K_MAX
    text = "\n".join(prior_sensitivity_lines(_csv_round_trip(table, tmp_path)))
    assert "<b>Not power-scaled</b>: odd (no log density for Weibull); site (no posterior variable)" in text
    assert f"<b>Power-scaling the prior is unreliable</b> for this fit (Pareto k {row['prior_pareto_k']:.2f} above {PARETO_K_MAX})" in text
    assert "likelihood is unreliable" not in text
    # no prior power-scaled at all: no sensitivity, and the report does not call the effect insensitive
    idata.posterior.attrs["priors"] = to_json({"site": Prior("ZeroSumNormal", {"sigma": 1.0}, "")})
    table = prior_sensitivity_table(idata, {"theta": idata.posterior["theta"]})
    assert np.isnan(table["prior_sensitivity"].iloc[0]) and np.isnan(table["prior_pareto_k"].iloc[0])
    text = "\n".join(prior_sensitivity_lines(_csv_round_trip(table, tmp_path)))
    assert "<b>Prior sensitivity not assessed</b>: no prior of this fit could be power-scaled." in text
    assert "No reported effect is prior-sensitive" not in text and "<b>Not power-scaled</b>: site (no posterior variable)" in text


# ---------------------------------------------------------------- a real fit


@pytest.mark.slow
def test_the_sceptical_preset_pulls_the_effect_towards_0_and_is_flagged(small_trial, tmp_path):
    import deptrial

    settings = deptrial.SamplerSettings(draws=1000, tune=1000, chains=2, seed=5, prior_draws=20)
    runs = {
        preset: deptrial.fit_trial(small_trial, ["treatment"], settings, out=tmp_path / str(preset), jobs=1, prior_preset=preset, mcid=2.0)
        for preset in (None, "sceptical")
    }
    tables = {}
    for preset, run in runs.items():
        idata = run.fits["treatment"].idata
        assert "log_likelihood" in idata.groups()
        tables[preset] = prior_sensitivity_table(idata).set_index("effect")
        assert {"nac_effect at week 12", "placebo_change at week 12"} <= set(tables[preset].index)
    default = runs[None].fits["treatment"].idata.posterior["nac_effect"].sel(week=12).values
    sceptical = runs["sceptical"].fits["treatment"].idata.posterior["nac_effect"].sel(week=12).values
    recorded = json.loads(runs["sceptical"].fits["treatment"].idata.posterior.attrs["priors"])["nac_change"]
    assert recorded["reason"].startswith("sceptical preset") and recorded["params"]["sigma"] == pytest.approx(2.0 / 1.6448536, rel=1e-6)
    assert abs(sceptical.mean()) < abs(default.mean()) and sceptical.std() < default.std()
    row = "nac_effect at week 12"
    assert tables["sceptical"].loc[row, "prior_sensitivity"] > tables[None].loc[row, "prior_sensitivity"]
    assert tables["sceptical"].loc[row, "prior_sensitive"] and tables["sceptical"].loc[row, "diagnosis"] != NO_FLAG


@pytest.mark.slow
def test_every_registered_models_priors_are_stated_for_a_variable_it_stores(small_trial):
    """Builds every model (no sampling; a few seconds, so in the slow tier): each prior it uses is stated for a
    free variable or Deterministic of that name or alias (PRIOR_VARIABLES), so log_prior power-scales it;
    the exceptions are priors of terms the fit lacks."""
    from diagnostics.prior_sensitivity import prior_variable
    from models import REGISTRY, ModelDataError, build_design

    design = build_design(small_trial)
    for name, spec in REGISTRY.items():
        try:
            spec.require(design)
        except ModelDataError:  # data the small trial lacks (mmrm_retrieved: tests/test_retrieved_dropouts.py checks it)
            continue
        built = spec.build(design)
        stored = {v.name for v in built.model.free_RVs} | {v.name for v in built.model.deterministics}
        missing = [p for p in built.priors if prior_variable(p, stored) is None]
        assert set(missing) <= {"student_nu"}, (name, missing)  # the mediation model records it with the normal likelihood too
