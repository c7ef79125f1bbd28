"""PSIS, LOO, LOO-PIT, the relative efficiency and summary.csv computed once per fit, against ArviZ.

The log-likelihoods are the bundled trial's scores under a Gaussian model with one mean per participant and a
common SD, whose posterior is drawn exactly (conjugate), so no sampling is needed: every visit is influential
for its participant's mean, which spreads the Pareto k over the good, the poor and the bad (above 0.7). A
"sticky" copy repeats draws as a sampler staying put does, giving ties among the largest ratios. Each
replaced computation is checked against the ArviZ function it replaces: az.psislw, az.loo, az.loo_pit,
az.ess(method="mean"), az.hdi, az.summary.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from test_diagnostics import trial_idata

from data import DEFAULT_DATASET, load_dataset
from diagnostics import convergence as cv
from diagnostics import loo as dl
from diagnostics import mcmc_stats as ms
from diagnostics.ppc import loo_pit_values

pytestmark = pytest.mark.unit

PSIS_TOL = 1e-10
VISITS = 600  # the first visits of the bundled trial (about 100 participants): ArviZ's reference runs unit by unit


def bundled_log_likelihood(chains: int = 2, draws: int = 1000, sticky: float = 0.0, seed: int = 0):
    """(log-likelihood (chain, draw, visit), participant of each visit) of the bundled trial's scores under
    y_ij ~ N(mu_i, sigma), flat priors, drawn from the exact posterior; with `sticky`, each draw repeats the
    previous one with that probability (ties among the largest ratios)."""
    ds = load_dataset(DEFAULT_DATASET)
    score = ds["score"].values
    seen = ~np.isnan(score)
    pid = np.nonzero(seen)[0]
    y = score[seen]
    n_i = seen.sum(axis=1)
    ybar = np.nansum(score, axis=1) / n_i
    rng = np.random.default_rng(seed)
    dof = len(y) - len(n_i)
    ss = float(((y - ybar[pid]) ** 2).sum())
    sigma = np.sqrt(ss / rng.chisquare(dof, size=(chains, draws)))
    mu = ybar + sigma[..., None] / np.sqrt(n_i) * rng.standard_normal((chains, draws, len(n_i)))
    if sticky:
        for c in range(chains):
            for d in np.nonzero(rng.random(draws) < sticky)[0]:
                if d:
                    sigma[c, d], mu[c, d] = sigma[c, d - 1], mu[c, d - 1]
    ll = -0.5 * np.log(2 * np.pi) - np.log(sigma[..., None]) - 0.5 * ((y - mu[..., pid]) / sigma[..., None]) ** 2
    return ll, pid, mu, sigma, y


def arviz_psislw(ll: np.ndarray, r_eff: float) -> tuple[np.ndarray, np.ndarray]:
    """az.psislw of -ll (chain, draw, unit): (units x draws log weights, k)."""
    da = xr.DataArray(-ll, dims=("chain", "draw", "unit")).stack(__sample__=("chain", "draw"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lw, k = az.psislw(da, reff=r_eff)
    return lw.transpose("unit", "__sample__").values, k.values


def units_by_draws(ll: np.ndarray) -> np.ndarray:
    return ll.reshape(ll.shape[0] * ll.shape[1], -1).T


@pytest.fixture(scope="module")
def bundled():
    return bundled_log_likelihood()


@pytest.fixture(scope="module")
def sticky():
    return bundled_log_likelihood(sticky=0.25, seed=1)


@pytest.mark.parametrize("r_eff", [1.0, 0.55, 1.7])
def test_psis_equals_arviz_psislw_on_the_bundled_trial(bundled, r_eff):
    ll = bundled[0][..., :VISITS]
    lw, k = dl.psis(-units_by_draws(ll), r_eff)
    ref_lw, ref_k = arviz_psislw(ll, r_eff)
    np.testing.assert_allclose(k, ref_k, rtol=0, atol=PSIS_TOL)
    np.testing.assert_allclose(lw, ref_lw, rtol=0, atol=PSIS_TOL)
    assert (k > dl.PARETO_K_MAX).any() and (k < 0.5).any()  # the rows cover good and bad tails


def test_psis_equals_arviz_with_ties_among_the_largest_ratios(sticky):
    ll = sticky[0]
    sums = np.zeros(ll.shape[:2] + (sticky[1].max() + 1,))
    np.add.at(sums, (slice(None), slice(None), sticky[1]), ll)  # participant sums: many ties at the top
    for values in (ll[..., :VISITS], sums):
        top = np.sort(-units_by_draws(values), axis=1)[:, -120:]
        assert (np.diff(top, axis=1) == 0).any(axis=1).sum() > 10  # the case is reached
        lw, k = dl.psis(-units_by_draws(values), 0.8)
        ref_lw, ref_k = arviz_psislw(values, 0.8)
        np.testing.assert_allclose(k, ref_k, rtol=0, atol=PSIS_TOL)
        np.testing.assert_allclose(lw, ref_lw, rtol=0, atol=PSIS_TOL)


def test_psis_rows_arviz_handles_one_by_one():
    """Short rows (tail of 4 or fewer: k = inf, no smoothing), a constant row, a tie at the cut-off, heavy tails."""
    rng = np.random.default_rng(3)
    cases = [rng.normal(size=(3, 20)), np.zeros((1, 400)), rng.standard_cauchy(size=(4, 400)) * 5]
    tie = rng.normal(size=(1, 400))
    tie[0, np.argsort(tie[0])[-61:-59]] = np.sort(tie[0])[-60]  # the cut-off value repeated in the tail
    cases.append(tie)
    for x in cases:
        lw, k = dl.psis(x, 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_lw, ref_k = az.psislw(x, reff=1.0)
        np.testing.assert_allclose(k, ref_k, rtol=0, atol=PSIS_TOL)
        np.testing.assert_allclose(lw, ref_lw, rtol=0, atol=PSIS_TOL)
    assert np.isinf(dl.psis(cases[0], 1.0)[1]).all()


def test_psis_loo_equals_az_loo(bundled):
    ll = bundled[0][..., :VISITS]
    data = az.InferenceData(posterior=xr.Dataset({"a": (("chain", "draw"), np.zeros(ll.shape[:2]))}),
                            log_likelihood=xr.Dataset({"y": (("chain", "draw", "obs"), ll)}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = az.loo(data, pointwise=True, reff=0.7)
    got = dl.psis_loo(units_by_draws(ll), 0.7)
    np.testing.assert_allclose(got.elpd_i, ref.loo_i.values, rtol=1e-12)
    np.testing.assert_allclose(got.pareto_k, ref.pareto_k.values, atol=PSIS_TOL)
    assert got.p_loo == pytest.approx(float(ref.p_loo), rel=1e-10)


def test_relative_efficiency_is_arviz_and_read_from_the_verdict():
    rng = np.random.default_rng(4)
    idata = trial_idata(seed=31, n=40)
    post = idata.posterior
    ess = az.ess(post, method="mean")
    expected = np.hstack([ess[v].values.ravel() for v in ess.data_vars]).mean() / (post.sizes["chain"] * post.sizes["draw"])
    assert dl.relative_efficiency(idata) == pytest.approx(expected, rel=1e-8)
    check = cv.verdict(idata)
    fresh = trial_idata(seed=31, n=40)
    assert dl.relative_efficiency(fresh, check.stats) == pytest.approx(expected, rel=1e-8)
    one = az.from_dict(posterior={"a": rng.normal(size=(1, 100))})
    assert dl.relative_efficiency(one) == 1.0


def test_loo_levels_use_arviz_r_eff_and_agree_with_az_loo():
    idata = trial_idata(seed=33, n=50)
    for result, ll in ((dl.loo_visits(idata), idata.log_likelihood["y"]),
                       (dl.loo_participants(idata), dl.participant_log_likelihood(idata))):
        data = az.InferenceData(posterior=idata.posterior, log_likelihood=xr.Dataset({"y": ll}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = az.loo(data, pointwise=True)  # ArviZ's own r_eff from the posterior
        np.testing.assert_allclose(result.elpd_i, ref.loo_i.values, rtol=1e-12)
        np.testing.assert_allclose(result.pareto_k, ref.pareto_k.values, atol=PSIS_TOL)


def test_loo_pit_shares_the_visit_level_weights_and_equals_arviz():
    idata = trial_idata(seed=34, n=50)
    visit = dl.pointwise_psis(idata, "y")
    assert dl.pointwise_psis(idata, "y") is visit  # computed once: the LOO at the visit level, the LOO-PIT and its figure
    expected = np.asarray(az.loo_pit(idata, y="y"), dtype=float).ravel()
    np.testing.assert_allclose(loo_pit_values(idata), expected, rtol=1e-12, atol=1e-14)


def test_ess_mean_equals_arviz():
    rng = np.random.default_rng(5)
    x = np.cumsum(rng.normal(size=(3, 300, 4)), axis=1) * 0.1 + rng.normal(size=(3, 300, 4))
    got = ms.ess_mean(x)
    expected = [float(az.ess(x[:, :, j], method="mean")) for j in range(x.shape[2])]
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    assert np.isnan(ms.ess_mean(x[:, :3])).all()


def test_hdi_columns_equal_az_hdi():
    rng = np.random.default_rng(6)
    draws = np.column_stack([rng.normal(size=801), rng.gamma(2.0, size=801), np.round(rng.normal(size=801), 1)])
    lo, hi = cv.hdi_columns(draws, 0.94)
    for j in range(draws.shape[1]):
        assert (lo[j], hi[j]) == tuple(az.hdi(draws[:, j], hdi_prob=0.94))


def test_summary_csv_equals_az_summary_from_the_verdicts_statistics():
    idata = trial_idata(seed=35, n=30)
    rng = np.random.default_rng(7)
    idata.posterior["site_effect"] = (("chain", "draw", "site"), rng.normal(size=idata.posterior["intercept"].shape + (3,)))
    idata.posterior = idata.posterior.assign_coords(site=["a", "b", "c"])
    check = cv.verdict(idata)
    names = cv.summary_names(idata.posterior)
    got = cv.parameter_summary(idata, check.stats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = az.summary(idata, var_names=names, hdi_prob=0.94)
    assert list(got.columns) == list(expected.columns) and list(got.index) == list(expected.index)
    pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-9, rtol=0)
    pd.testing.assert_frame_equal(cv.parameter_summary(idata), got)  # without the verdict: computed, same table
