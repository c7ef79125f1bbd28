"""MAP priors for the control arm (maths/map_prior.py) and their input (data/historical.py).

The sampled MAP against an independent quadrature (1%), the mixture against the exact MAP density (a stated
distance), the ESS of conjugate cases (= n, both methods), the robust mixture's moments, the conflict p-value
(uniform under no conflict, small under drift), and each refusal of a bad historical table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import integrate, stats

from data.errors import DatasetError
from data.historical import read_historical
from maths.gaussian import conditional_normal, conjugate_normal
from maths.map_prior import (
    NormalMixture,
    conflict_pvalue,
    default_mu_sd,
    ess_elir,
    ess_moment,
    fit_map_prior,
    fit_mixture,
    map_moments_by_quadrature,
    pooled_sd,
    tau_posterior,
)

# historical control arms (MADRS change from baseline at the primary visit)
FEW_SMALL_TAU = {"study": ["A", "B", "C"], "n": [80, 120, 95], "mean": [-10.2, -10.8, -9.9], "sd": [8.5, 9.0, 8.2]}
MANY_LARGE_TAU = {
    "study": [f"T{i}" for i in range(12)],
    "n": [60, 150, 90, 200, 75, 110, 130, 85, 95, 160, 70, 120],
    "mean": [-6.5, -12.8, -9.1, -14.2, -7.9, -10.5, -13.5, -5.8, -11.0, -9.6, -15.1, -8.3],
    "sd": [8.0, 9.5, 8.8, 9.1, 7.6, 8.4, 9.9, 8.1, 8.7, 9.3, 10.2, 8.0],
}
TWO_TRIALS = {"study": ["P", "Q"], "n": [50, 60], "mean": [-8.0, -12.0], "sd": [8.0, 9.0]}
SETS = {"few trials, small tau": FEW_SMALL_TAU, "many trials, large tau": MANY_LARGE_TAU, "two trials": TWO_TRIALS}
N_DRAWS = 8192  # default-tier fits (the default is 2^14)
KS_MAX = 0.01  # the mixture's stated distance: Kolmogorov distance to the exact MAP CDF ...
KL_MAX = 0.005  # ... and KL(exact MAP || mixture), in nats

_FITS: dict = {}


def fitted(name: str):
    if name not in _FITS:
        _FITS[name] = fit_map_prior(**SETS[name], n_draws=N_DRAWS)
    return _FITS[name]


# ---------------------------------------------------------------- the Gaussian pieces


@pytest.mark.unit
def test_conjugate_normal_is_the_conditional_of_the_joint_normal():
    """theta ~ N(m, v), y | theta ~ N(theta, e): (theta, y) is bivariate normal; theta | y by conditional_normal."""
    m, v, y, e = -9.0, 4.0, -12.5, 2.25
    mean, var = conjugate_normal(m, v, y, e)
    _, cvar, cmean = conditional_normal(np.array([m, m]), np.array([[v, v], [v, v + e]]), [1], [0], np.array([[y]]))
    assert mean == pytest.approx(cmean[0, 0], rel=1e-12) and var == pytest.approx(cvar[0, 0], rel=1e-12)
    means, vars_ = conjugate_normal(np.array([0.0, 1.0]), np.array([1.0, 4.0]), 2.0, 1.0)  # broadcasts
    assert np.allclose(means, [1.0, 1.8]) and np.allclose(vars_, [0.5, 0.8])


@pytest.mark.unit
def test_normal_mixture_density_cdf_quantile_moments_and_draws():
    mix = NormalMixture([0.5, 0.3, 0.2], [-10.0, -8.0, -14.0], [1.0, 2.5, 6.0])
    x = np.linspace(-40, 20, 301)
    dens = sum(w * stats.norm(m, s).pdf(x) for w, m, s in zip(mix.weights, mix.means, mix.sds))
    cdf = sum(w * stats.norm(m, s).cdf(x) for w, m, s in zip(mix.weights, mix.means, mix.sds))
    assert np.allclose(mix.pdf(x), dens, rtol=1e-12) and np.allclose(mix.cdf(x), cdf, atol=1e-14)
    assert np.allclose(mix.cdf(x) + mix.sf(x), 1.0)
    assert np.isfinite(mix.logpdf(1e4))  # far in the tail: log density, not log 0
    q = mix.quantile([0.025, 0.5, 0.975])
    assert np.allclose(mix.cdf(q), [0.025, 0.5, 0.975], atol=1e-10)
    mean = integrate.quad(lambda t: t * mix.pdf(t), -np.inf, np.inf)[0]
    second = integrate.quad(lambda t: t * t * mix.pdf(t), -np.inf, np.inf)[0]
    assert mix.mean == pytest.approx(mean, rel=1e-9) and mix.var == pytest.approx(second - mean**2, rel=1e-8)
    draws = mix.sample(200_000, 3)
    assert draws.mean() == pytest.approx(mix.mean, abs=4 * mix.sd / np.sqrt(len(draws)))
    assert draws.std() == pytest.approx(mix.sd, rel=0.01)
    assert NormalMixture.from_dict(json.loads(json.dumps(mix.to_dict()))).to_dict() == mix.to_dict()
    with pytest.raises(ValueError, match="positive"):
        NormalMixture([1.0], [0.0], [0.0])
    with pytest.raises(ValueError, match="as many"):
        NormalMixture([0.5, 0.5], [0.0], [1.0])


@pytest.mark.unit
def test_mixture_posterior_is_bayes_rule_on_a_grid():
    """The conjugate update with reweighting equals prior x likelihood normalised numerically."""
    prior = NormalMixture([0.8, 0.2], [-10.0, -10.0], [1.5, 8.0])
    estimate, se = -15.0, 1.2
    grid = np.linspace(-60, 40, 200_001)
    unnorm = prior.pdf(grid) * stats.norm(grid, se).pdf(estimate)
    direct = unnorm / integrate.trapezoid(unnorm, grid)
    post = prior.posterior(estimate, se)
    assert np.abs(post.pdf(grid) - direct).max() < 1e-8 * direct.max() + 1e-12
    # the component weights: w_k N(estimate; m_k, s_k^2 + se^2), normalised
    w = prior.weights * stats.norm(prior.means, np.sqrt(prior.sds**2 + se**2)).pdf(estimate)
    assert np.allclose(post.weights, w / w.sum(), rtol=1e-12)


# ---------------------------------------------------------------- effective sample size


@pytest.mark.unit
@pytest.mark.parametrize("n", [1.0, 10.0, 57.5, 400.0])
def test_ess_of_a_conjugate_normal_prior_is_its_n(n):
    sigma = 8.7
    prior = NormalMixture([1.0], [-10.0], [sigma / np.sqrt(n)])
    assert ess_moment(prior, sigma) == pytest.approx(n, rel=1e-12)
    assert ess_elir(prior, sigma) == pytest.approx(n, rel=1e-8)


@pytest.mark.unit
def test_elir_of_a_mixture_is_the_average_curvature_of_its_log_density():
    """ESS_elir = sigma^2 E_p[-(log p)''] with the second derivative by finite differences on a fine grid; the moment
    ESS of a heavy-tailed (robust) mixture is smaller (Neuenschwander et al. 2020: moment-based ESS is conservative)."""
    sigma = 9.0
    mix = NormalMixture([0.5, 0.3, 0.2], [-10.0, -9.0, -10.0], [1.0, 2.0, sigma])
    grid = np.linspace(-10 - 12 * sigma, -10 + 12 * sigma, 400_001)
    h = grid[1] - grid[0]
    lp = mix.logpdf(grid)
    curv = -(lp[2:] - 2 * lp[1:-1] + lp[:-2]) / h**2
    assert np.allclose(mix.information(grid[1:-1:1000]), curv[::1000], rtol=1e-4, atol=1e-8)
    direct = sigma**2 * integrate.trapezoid(mix.pdf(grid[1:-1]) * curv, grid[1:-1])
    assert ess_elir(mix, sigma) == pytest.approx(direct, rel=1e-4)
    assert ess_moment(mix, sigma) < ess_elir(mix, sigma)


# ---------------------------------------------------------------- the MAP: sampled, by quadrature, the mixture


@pytest.mark.unit
def test_tau_sampler_inverts_the_grid_cdf():
    y, se = np.array(MANY_LARGE_TAU["mean"]), np.array(MANY_LARGE_TAU["sd"]) / np.sqrt(MANY_LARGE_TAU["n"])
    sigma = pooled_sd(MANY_LARGE_TAU["n"], MANY_LARGE_TAU["sd"])
    post = tau_posterior(y, se, sigma / 2, 0.0, default_mu_sd(y, sigma))
    assert post.masses.sum() == pytest.approx(1.0, abs=1e-12)
    u = np.linspace(0.001, 0.999, 999)
    tau = post.sample(u)
    # the CDF of the piecewise-linear density at the sampled points, integrated independently (fine trapezoid)
    fine = np.linspace(post.tau[0], post.tau[-1], 400_001)
    cdf = integrate.cumulative_trapezoid(np.interp(fine, post.tau, post.density), fine, initial=0.0)
    assert np.allclose(np.interp(tau, fine, cdf), u, atol=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("name", list(SETS))
def test_sampled_map_mean_and_sd_agree_with_quadrature_within_1_percent(name):
    mp = fitted(name)
    q = mp.moments["quadrature"]
    for what, mean, sd in (("draws", mp.moments["draws"]["mean"], mp.moments["draws"]["sd"]),
                           ("mixture", mp.mixture.mean, mp.mixture.sd)):
        assert abs(mean - q["mean"]) <= 0.01 * min(abs(q["mean"]), q["sd"]), (name, what, mean, q)
        assert abs(sd / q["sd"] - 1) <= 0.01, (name, what, sd, q)
    # the grid's own MAP density (the exact one the mixture is judged against) equals the quadrature to 1e-6
    assert mp.exact.mean == pytest.approx(q["mean"], rel=1e-6) and mp.exact.sd == pytest.approx(q["sd"], rel=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("name", list(SETS))
def test_mixture_approximates_the_map_within_the_stated_distance(name):
    mp = fitted(name)
    acc = mp.accuracy
    assert acc["kolmogorov_to_exact"] <= KS_MAX and acc["kl_exact_to_mixture"] <= KL_MAX, acc
    assert acc["kolmogorov_to_draws"] <= KS_MAX
    assert 1 <= len(mp.mixture) <= 4
    best = min(acc["fits"], key=lambda r: r["aic"])
    assert best["fitted_components"] == len(mp.mixture)
    for row in acc["fits"]:  # AIC with RBesT's penalty 6 per parameter, 3K - 1 parameters
        assert row["aic"] == pytest.approx(-2 * row["loglik"] + 6 * (3 * row["fitted_components"] - 1))


@pytest.mark.unit
def test_heterogeneity_discounts_the_historical_information():
    """Few similar trials borrow more per trial than many dissimilar ones; no MAP carries more than the trials' total n,
    and a fully pooled MAP (tau prior scale ~ 0) has ESS = total n under both methods (the pooled sigma's definition)."""
    few, many = fitted("few trials, small tau"), fitted("many trials, large tau")
    assert few.tau["median"] < many.tau["median"]
    assert few.ess["map"]["elir"] / few.ess["historical_total_n"] > many.ess["map"]["elir"] / many.ess["historical_total_n"]
    for mp in (few, many):
        assert mp.ess["map"]["moment"] < mp.ess["historical_total_n"] and mp.ess["map"]["elir"] < mp.ess["historical_total_n"]
    sigma = pooled_sd(FEW_SMALL_TAU["n"], FEW_SMALL_TAU["sd"])
    pooled = fit_map_prior(**FEW_SMALL_TAU, tau_scale=1e-6 * sigma, n_draws=1024, max_components=1)
    total = sum(FEW_SMALL_TAU["n"])
    assert pooled.ess["map"]["moment"] == pytest.approx(total, rel=0.01)
    assert pooled.ess["map"]["elir"] == pytest.approx(total, rel=0.01)


@pytest.mark.unit
def test_quadrature_check_is_independent_of_the_grid_and_right_in_a_closed_form_case():
    """With tau ~ 0 the trials share one mean: theta* | y = mu | y, the Normal(0, mu_sd^2) prior updated by the
    precision-weighted mean of the trials (precision sum 1/s_j^2)."""
    y, se = np.array([-9.0, -11.0, -10.0]), np.array([1.0, 0.8, 1.2])
    w = 1 / se**2
    for mu_sd in (3.0, 1000.0):
        mean, sd = map_moments_by_quadrature(y, se, tau_scale=1e-7, mu_mean=0.0, mu_sd=mu_sd)
        exact_mean, exact_var = conjugate_normal(0.0, mu_sd**2, (w * y).sum() / w.sum(), 1 / w.sum())
        assert mean == pytest.approx(exact_mean, rel=1e-6) and sd == pytest.approx(np.sqrt(exact_var), rel=1e-6)


@pytest.mark.unit
def test_robust_mixture_moments_and_settings():
    mp = fitted("few trials, small tau")
    w, sigma = 0.2, mp.sigma
    assert sigma == pytest.approx(pooled_sd(FEW_SMALL_TAU["n"], FEW_SMALL_TAU["sd"]))
    rob = mp.robust
    assert len(rob) == len(mp.mixture) + 1
    assert rob.weights[-1] == pytest.approx(w) and rob.sds[-1] == pytest.approx(sigma)
    assert rob.means[-1] == pytest.approx(mp.mixture.mean)
    assert np.allclose(rob.weights[:-1], (1 - w) * mp.mixture.weights)
    # centred on the MAP mean: the mean is kept, the variance mixes the MAP's and one participant's
    assert rob.mean == pytest.approx(mp.mixture.mean, rel=1e-12)
    assert rob.var == pytest.approx((1 - w) * mp.mixture.var + w * sigma**2, rel=1e-12)
    assert mp.ess["robust"]["moment"] == pytest.approx(sigma**2 / ((1 - w) * mp.mixture.var + w * sigma**2), rel=1e-12)
    assert mp.ess["robust"]["elir"] < mp.ess["map"]["elir"]
    s = mp.settings
    assert s["tau_scale"] == pytest.approx(sigma / 2) and s["tau_prior"] == "HalfNormal"
    assert s["mu_prior_sd"] == pytest.approx(100 * max(sigma / 10, np.std(FEW_SMALL_TAU["mean"], ddof=1)))
    other = fit_map_prior(**FEW_SMALL_TAU, sigma=10.0, tau_scale=2.0, robust_weight=0.5, n_draws=1024)
    assert other.settings["sigma_source"] == "given" and other.robust.sds[-1] == 10.0 and other.robust.weights[-1] == 0.5
    assert other.settings["tau_scale"] == 2.0


@pytest.mark.unit
def test_map_prior_json_and_determinism():
    mp = fitted("two trials")
    d = json.loads(mp.to_json())
    assert {"model", "historical", "settings", "tau_posterior", "mu_posterior", "map", "mixture", "robust_mixture", "ess",
            "approximation"} <= set(d)
    assert [h["study"] for h in d["historical"]] == TWO_TRIALS["study"]
    assert sum(d["mixture"]["weights"]) == pytest.approx(1.0) and d["robust_mixture"]["vague_component"] == len(mp.mixture)
    assert set(d["ess"]["map"]) == {"elir", "moment"} and set(d["ess"]["robust"]) == {"elir", "moment"}
    assert d["tau_posterior"]["q2.5"] < d["tau_posterior"]["median"] < d["tau_posterior"]["q97.5"]
    small = [fit_map_prior(**TWO_TRIALS, n_draws=1024, seed=seed) for seed in (1, 1, 2)]
    assert small[0].to_json() == small[1].to_json()  # deterministic given the seed
    assert small[2].moments["draws"] != small[0].moments["draws"]
    assert small[2].moments["quadrature"] == small[0].moments["quadrature"] == mp.moments["quadrature"]


@pytest.mark.unit
def test_fit_map_prior_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="at least 2"):
        fit_map_prior(["A"], [50], [-10.0], [8.0])
    with pytest.raises(ValueError, match="robust weight"):
        fit_map_prior(**TWO_TRIALS, robust_weight=1.0)
    with pytest.raises(ValueError, match="HalfNormal"):
        fit_map_prior(**TWO_TRIALS, tau_scale=-1.0)
    with pytest.raises(ValueError, match="sd > 0"):
        fit_map_prior(["A", "B"], [50, 60], [-10.0, -9.0], [8.0, 0.0])
    with pytest.raises(ValueError, match="criterion"):
        fit_mixture(np.arange(10.0), criterion="waic")


# ---------------------------------------------------------------- prior-data conflict


@pytest.mark.unit
def test_conflict_pvalue_is_uniform_without_conflict_and_small_under_drift():
    """New control arms whose true mean is drawn from the sampled MAP (no conflict): the p-values under the mixture are
    uniform; with the true mean 4 predictive SDs from the MAP mean they are small, and the vague component takes over."""
    mp = fitted("many trials, large tau")
    se = 9.0 / np.sqrt(60)  # a new control arm of 60
    rng = np.random.default_rng(11)
    theta = rng.choice(mp.draws["theta"], 3000)
    estimates = theta + se * rng.standard_normal(3000)
    p = np.array([conflict_pvalue(mp.mixture, e, se) for e in estimates])
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert abs(np.mean(p < 0.05) - 0.05) < 0.015
    shift = 4 * mp.mixture.convolve(se).sd
    drift = np.array([conflict_pvalue(mp.mixture, e + shift, se) for e in mp.mixture.mean + se * rng.standard_normal(500)])
    assert np.median(drift) < 0.01
    check = mp.check(mp.mixture.mean + shift, se)
    assert check["p_value"] < 0.01 and check["vague_weight_posterior"] > 0.5 > check["vague_weight_prior"]


@pytest.mark.unit
def test_vague_weight_grows_with_the_drift():
    mp = fitted("few trials, small tau")
    se = 1.2
    drifts = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    weights = [mp.check(mp.mixture.mean + d, se)["vague_weight_posterior"] for d in drifts]
    assert weights[0] < mp.settings["robust_weight"] and np.all(np.diff(weights) > 0) and weights[-1] > 0.99
    p = [mp.check(mp.mixture.mean + d, se)["p_value"] for d in drifts]
    assert p[0] > 0.9 and np.all(np.diff(p) < 0)
    with pytest.raises(ValueError, match="SE"):
        mp.check(-10.0, 0.0)


# ---------------------------------------------------------------- the input: historical.csv


def write(tmp_path, text, name="hist.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(path, *fragments):
    with pytest.raises(DatasetError) as info:
        read_historical(path)
    text = str(info.value)
    for frag in fragments:
        assert frag in text, f"{frag!r} not in error:\n{text}"
    return info.value


GOOD = "study,n,mean,sd,year\nA,80,-10.2,8.5,2001\nB,120,-10.8,9.0,2004\nC,95,-9.9,8.2,2011\n"


@pytest.mark.unit
def test_a_good_table_loads_and_its_ignored_column_is_reported(tmp_path):
    h = read_historical(write(tmp_path, GOOD))
    assert h.study == ("A", "B", "C") and h.n == (80, 120, 95) and h.mean == (-10.2, -10.8, -9.9) and h.sd == (8.5, 9.0, 8.2)
    assert np.allclose(h.se, np.array([8.5, 9.0, 8.2]) / np.sqrt([80, 120, 95]))
    assert [c.action for c in h.changes] == ["ignored_columns"] and "year" in h.changes[0].detail
    mp = fit_map_prior(h.study, h.n, h.mean, h.sd, n_draws=1024, source=h.source)
    assert mp.settings["source"] == "hist.csv"


@pytest.mark.unit
@pytest.mark.parametrize("text, fragments", [
    ("study,n,mean\nA,80,-10\nB,90,-9\n", ["hist.csv, line 1", "missing required column(s) ['sd']"]),
    ("study,n,mean,sd\nA,80,-10,8\nB,ninety,-9,8\n", ["column 'n', line 3", "n is not a number"]),
    ("study,n,mean,sd\nA,80,-10,8\nB,90,-9 points,8\n", ["column 'mean', line 3", "not a number", "no units"]),
    ("study,n,mean,sd\nA,80,-10,8\nB,1,-9,8\n", ["column 'n', line 3", "at least 2"]),
    ("study,n,mean,sd\nA,80.5,-10,8\nB,90,-9,8\n", ["column 'n', line 2", "whole number"]),
    ("study,n,mean,sd\nA,80,-10,0\nB,90,-9,-8\n", ["column 'sd', lines 2, 3", "sd must be positive"]),
    ("study,n,mean,sd\nA,80,-10,8\nA,90,-9,8\n", ["column 'study', lines 2, 3", "more than one row ['A']"]),
    ("study,n,mean,sd\nStudy 1,80,-10,8\nstudy1,90,-9,8\n", ["column 'study', lines 2, 3", "upper/lower case"]),
    ("study,n,mean,sd\nA,80,-10,8\n,90,-9,8\n", ["column 'study', line 3", "study is empty"]),
    ("study,n,mean,sd\nA,80,NA,8\nB,90,-9,\n", ["column 'mean', line 2", "column 'sd', line 3", "missing (an empty or NA cell)"]),
    ("study,n,mean,sd\nA,80,-10,8\n", ["line 2", "1 trial(s)", "at least 2"]),
], ids=["missing column", "n not a number", "mean with units", "n below 2", "n not whole", "sd not positive",
        "duplicate study", "study differs in case", "empty study", "missing cells", "one trial"])
def test_bad_tables_are_refused_with_where_why_and_the_fix(tmp_path, text, fragments):
    error = refused(write(tmp_path, text), *fragments)
    assert all(p.fix for p in error.problems)


@pytest.mark.unit
def test_every_problem_is_reported_at_once(tmp_path):
    error = refused(write(tmp_path, "study,n,mean,sd\nA,1,-10,8\nA,90,x,0\n"), "at least 2", "more than one row", "not a number",
                    "sd must be positive")
    assert len(error.problems) == 4


@pytest.mark.unit
def test_a_missing_file_and_a_folder_are_refused(tmp_path):
    refused(tmp_path / "none.csv", "none.csv: does not exist", "study, n, mean, sd")
    refused(tmp_path, "is a folder")
    refused(write(tmp_path, "study;n;mean;sd\nA;80;-10,2;8\n"), "separated by ';'")


# ---------------------------------------------------------------- the slow tier


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_slow_map_agreement_and_mixture_accuracy_over_sets_and_seeds(seed):
    """At the default 2^14 draws, on five historical sets (those above, a large-n set with moderate tau and a set with
    an outlying trial) and three seeds: draws and mixture within 1% of the quadrature, the mixture within the stated
    distance of the exact MAP."""
    sets = dict(SETS)
    sets["large n, moderate tau"] = {"study": list("ABCDEF"), "n": [300, 450, 280, 500, 350, 420],
                                     "mean": [-10.5, -11.8, -9.7, -12.2, -10.9, -11.1], "sd": [9.0, 9.4, 8.8, 9.9, 9.1, 9.6]}
    sets["an outlying trial"] = {"study": list("ABCDE"), "n": [100, 90, 110, 95, 105],
                                 "mean": [-10.0, -10.6, -9.4, -10.2, -18.5], "sd": [8.5, 8.8, 8.1, 9.0, 9.2]}
    for name, data in sets.items():
        mp = fit_map_prior(**data, seed=seed)
        q = mp.moments["quadrature"]
        for mean, sd in ((mp.moments["draws"]["mean"], mp.moments["draws"]["sd"]), (mp.mixture.mean, mp.mixture.sd)):
            assert abs(mean - q["mean"]) <= 0.01 * min(abs(q["mean"]), q["sd"]), (name, seed, mean, q)
            assert abs(sd / q["sd"] - 1) <= 0.01, (name, seed, sd, q)
        assert mp.accuracy["kolmogorov_to_exact"] <= KS_MAX and mp.accuracy["kl_exact_to_mixture"] <= KL_MAX, (name, mp.accuracy)
