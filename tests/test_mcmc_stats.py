"""diagnostics.mcmc_stats against ArviZ 0.23 itself, and convergence_table against its previous
az.summary-based implementation.

The vectorised R-hat, bulk/tail ESS and MCSE must equal az.summary(kind="diagnostics") to 1e-8
relative on: 4, 2 and 1 chain(s) (R-hat NaN with one, as in ArviZ), odd draw counts, very short
chains, strongly autocorrelated and alternating chains (Geyer's truncation at its first pair), chains
with different means (large R-hat), ties (average ranks; tail quantiles tied on a 0.1 grid), a
constant, a scalar constant within chains but not between them, a NaN draw and too few draws; with
and without ArviZ's numba variances. The building blocks (split chains, rank normalisation, ESS)
are checked against ArviZ's private functions, and convergence_table (labels, rounding, filtering,
the verdict) against the old implementation, kept below as the reference.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
from arviz.stats import diagnostics as azd
from arviz.utils import Numba
from scipy.stats.mstats import mquantiles

from diagnostics import convergence as cv
from diagnostics import mcmc_stats as ms

RTOL = 1e-8


def old_convergence_table(idata: az.InferenceData, var_names: list[str] | None = None) -> pd.DataFrame:
    """convergence_table by az.summary (one call per statistic group), unrounded: the verdict compares
    the exact values with its thresholds (an R-hat of 1.012 fails R-hat <= 1.01)."""
    with cv.one_chain_quiet():
        summ = az.summary(idata, var_names=var_names, kind="diagnostics", round_to="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sd = az.summary(idata, var_names=var_names, stat_funcs={"sd": lambda x: np.std(x, ddof=1)}, extend=False, round_to="none")["sd"]
        sd = sd.reindex(summ.index)
    one_chain = idata.posterior.sizes.get("chain", 1) < 2
    keep = (summ["ess_bulk"].notna() & (sd > 0)) if one_chain else summ["r_hat"].notna()
    summ = summ[keep.to_numpy()].copy()
    sd = sd[keep.to_numpy()]
    summ["mcse_sd_ratio"] = summ["mcse_mean"] / sd.where(sd > 0)
    return summ


def arviz_columns(draws: np.ndarray) -> pd.DataFrame:
    """az.summary's unrounded diagnostics of draws (chain, draw, n), plus the SD."""
    idata = az.from_dict(posterior={"x": draws})
    with cv.one_chain_quiet():
        diag = az.summary(idata, kind="diagnostics", round_to="none")
        sd = az.summary(idata, stat_funcs={"sd": lambda x: np.std(x, ddof=1)}, extend=False, round_to="none")["sd"]
    return diag.assign(sd=sd)


def ar1(rng, chains, draws, n, phi, shift=0.0):
    eps = rng.normal(size=(chains, draws, n))
    out = np.empty_like(eps)
    out[:, 0] = eps[:, 0] / np.sqrt(1 - phi**2)
    for t in range(1, draws):
        out[:, t] = phi * out[:, t - 1] + eps[:, t]
    return out + shift


def constants(rng, chains, draws):
    """A constant, a scalar constant within chains but different between them, the same with two values
    (kurtosis 1: mcse_sd is rounding noise), one varying below the float resolution, two ordinary scalars."""
    x = rng.normal(size=(chains, draws, 6))
    x[:, :, 0] = 3.7
    x[:, :, 1] = rng.normal(size=(chains, 1))
    x[:, :, 2] = np.where(np.arange(chains) < chains / 2, 0.3, 1.1)[:, None]
    x[:, :, 3] = 1.0 + 1e-17 * rng.normal(size=(chains, draws))
    return x


def grid_ties(rng, chains, draws, n):
    """Draws on a 0.1 grid: scipy's mquantiles puts the 95% quantile of 4 x 101 such draws one ulp below
    1.7 when it is tied there, so the tail indicator leaves every 1.7 out (np.quantile would not)."""
    values = np.array([-2.7, -1.8, -0.9, 0.0, 0.9, 1.7, 2.6])
    return rng.choice(values, p=[0.02, 0.1, 0.2, 0.36, 0.2, 0.1, 0.02], size=(chains, draws, n))


def case(name):
    rng = np.random.default_rng(CASES.index(name))
    if name == "4 chains":
        return rng.normal(size=(4, 1000, 12)) * rng.gamma(2, size=12) + rng.normal(0, 50, size=12)
    if name == "2 chains, odd draws":
        return rng.normal(size=(2, 501, 10)) * 3 + 7
    if name == "1 chain":
        return ar1(rng, 1, 400, 8, 0.5)
    if name == "3 chains, 7 draws":
        return rng.normal(size=(3, 7, 6))
    if name == "AR(1) 0.95":
        return ar1(rng, 4, 300, 8, 0.95)
    if name == "AR(1) 0.99, odd draws":
        return ar1(rng, 4, 499, 6, 0.99)
    if name == "alternating":  # rho_1 near -1: the positive sequence stops at its first pair
        sign = (-1.0) ** np.arange(200)[None, :, None]
        return sign * (1 + 1e-3 * rng.normal(size=(4, 200, 6))) + rng.normal(0, [[[1e-3, 0.01, 0.1, 0.3, 1, 3]]], size=(4, 200, 6))
    if name == "chains disagree":
        return ar1(rng, 4, 400, 6, 0.3, shift=np.array([0.0, 0.0, 0.5, 3.0])[:, None, None])
    if name == "ties":  # discrete draws: average ranks of ties
        return rng.poisson(2.0, size=(4, 250, 6)).astype(float)
    if name == "short chains":  # Geyer's sequence runs to its end, sometimes on a negative even lag
        return ar1(rng, 4, 10, 60, 0.5)
    if name == "ties on a 0.1 grid":
        return grid_ties(rng, 4, 101, 8)
    if name == "constants, 4 chains":
        return constants(rng, 4, 100)
    if name == "constants, 2 chains, odd":
        return constants(rng, 2, 151)
    if name == "constants, 1 chain":
        return constants(rng, 1, 100)
    raise KeyError(name)


CASES = [
    "4 chains",
    "2 chains, odd draws",
    "1 chain",
    "3 chains, 7 draws",
    "AR(1) 0.95",
    "AR(1) 0.99, odd draws",
    "alternating",
    "chains disagree",
    "ties",
    "short chains",
    "ties on a 0.1 grid",
    "constants, 4 chains",
    "constants, 2 chains, odd",
    "constants, 1 chain",
]


def assert_columns_match(ours: dict, ref: pd.DataFrame):
    for col in (*ms.DIAGNOSTICS, "sd"):
        mine, theirs = np.asarray(ours[col]), ref[col].to_numpy()
        assert np.array_equal(np.isnan(mine), np.isnan(theirs)), (col, mine, theirs)
        assert np.array_equal(np.isinf(mine), np.isinf(theirs)), (col, mine, theirs)
        finite = np.isfinite(theirs)
        np.testing.assert_allclose(mine[finite], theirs[finite], rtol=RTOL, atol=0, err_msg=col)


@pytest.mark.unit
@pytest.mark.parametrize("name", CASES)
def test_diagnostics_equal_az_summary(name):
    draws = case(name)
    ours = {**ms.diagnostics(draws, block=5), "sd": ms.posterior_sd(draws)}  # small blocks: several per case
    assert_columns_match(ours, arviz_columns(draws))


@pytest.mark.unit
@pytest.mark.parametrize("name", ["4 chains", "2 chains, odd draws", "constants, 4 chains"])
def test_without_numba_both_follow_numpy_variances(name, monkeypatch):
    """ArviZ without numba takes variances with np.var; mcmc_stats follows the same switch."""
    monkeypatch.setattr(Numba, "numba_flag", False)
    draws = case(name)
    assert_columns_match({**ms.diagnostics(draws), "sd": ms.posterior_sd(draws)}, arviz_columns(draws))


@pytest.mark.unit
def test_cases_reach_what_they_are_meant_to():
    """The cases above exercise what they claim (else agreement would prove less)."""
    ref = arviz_columns(case("chains disagree"))
    assert ref["r_hat"].min() > 1.2
    assert arviz_columns(case("1 chain"))["r_hat"].isna().all()
    split = azd._split_chains(case("alternating")[:, :, 0])  # as _ess_mean reads it
    acov, n = azd._autocov(split, axis=1), split.shape[1]
    mean_var = acov[:, 0].mean() * n / (n - 1)
    rho_1 = 1 - (mean_var - acov[:, 1].mean()) / (mean_var * (n - 1) / n + np.var(split.mean(axis=1), ddof=1))
    assert 1 + rho_1 <= 0  # Geyer's first pair already sums to <= 0
    assert arviz_columns(case("AR(1) 0.99, odd draws"))["ess_bulk"].max() < 100
    grid = case("ties on a 0.1 grid")
    high = [mquantiles(grid[:, :, j], [0.95], alphap=1, betap=1)[0] for j in range(grid.shape[2])]
    assert any(q < 1.7 and np.quantile(grid[:, :, j], 0.95) == 1.7 for j, q in enumerate(high))
    consts = arviz_columns(case("constants, 4 chains"))
    assert np.isnan(consts["r_hat"].iloc[0]) and consts["r_hat"].iloc[1] > 100  # ArviZ's R-hat of a chain-wise constant


@pytest.mark.unit
def test_nan_draws_and_too_few_draws_give_nan_like_arviz():
    rng = np.random.default_rng(5)
    draws = rng.normal(size=(4, 50, 4))
    draws[2, 10, 1] = np.nan
    assert_columns_match({**ms.diagnostics(draws), "sd": ms.posterior_sd(draws)}, arviz_columns(draws))
    assert all(np.isnan(v[1]) and not np.isnan(v[0]) for v in ms.diagnostics(draws).values())
    short = rng.normal(size=(2, 3, 2))
    assert all(np.isnan(v).all() for v in ms.diagnostics(short).values())
    assert arviz_columns(short)[list(ms.DIAGNOSTICS)].isna().all().all()


@pytest.mark.unit
@pytest.mark.parametrize("chains,draws", [(4, 300), (2, 301), (1, 200), (8, 9)])
def test_building_blocks_equal_arviz_private_functions(chains, draws):
    rng = np.random.default_rng(chains * 1000 + draws)
    x = np.concatenate([ar1(rng, chains, draws, 3, phi) for phi in (-0.5, 0.0, 0.9)], axis=2)
    x[:, :, 0] = np.round(x[:, :, 0], 1)  # ties
    split = ms.split_chains(x)
    z = ms.rank_normalize(x)
    ess = ms.ess(x)
    for j in range(x.shape[2]):
        np.testing.assert_array_equal(split[:, :, j], azd._split_chains(x[:, :, j]))
        np.testing.assert_allclose(z[:, :, j], azd._z_scale(x[:, :, j]), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ess[j], azd._ess(x[:, :, j]), rtol=RTOL)


@pytest.mark.unit
def test_ess_is_vectorised_over_scalars_with_different_truncation_points():
    """One call with scalars whose Geyer sequences stop at very different lags equals ArviZ per scalar."""
    rng = np.random.default_rng(11)
    x = np.concatenate([ar1(rng, 4, 500, 1, phi) for phi in (-0.9, -0.3, 0.0, 0.5, 0.9, 0.99)], axis=2)
    expected = [azd._ess(x[:, :, j]) for j in range(x.shape[2])]
    np.testing.assert_allclose(ms.ess(x), expected, rtol=RTOL)
    assert min(expected) < 50 < max(expected)


def trial_like_idata(rng, chains=4, draws=400):
    """A posterior shaped like the project's fits: scalars, vectors with named integer or string
    coordinates, a matrix, a constant (the effect at baseline) and a poorly mixed parameter."""
    weeks = [0, 2, 4, 8, 12]
    nac = rng.normal(-1.0, 0.5, size=(chains, draws, len(weeks)))
    nac[:, :, 0] = 0.0  # fixed at baseline
    corr = rng.normal(0.2, 0.1, size=(chains, draws, 3, 3))
    corr[:, :, [0, 1, 2], [0, 1, 2]] = 1.0  # a correlation matrix's diagonal is constant
    slow = ar1(rng, chains, draws, 1, 0.98)[:, :, 0]
    posterior = {
        "intercept": rng.normal(30.0, 1.0, size=(chains, draws)),
        "nac_effect": nac,
        "participant_sd": np.abs(rng.normal(size=(chains, draws, 2))) + 0.05,
        "visit_corr": corr,
        "slow": slow,
        "sigma": rng.gamma(50.0, 0.1, size=(chains, draws)),
    }
    coords = {"week": weeks, "effect": ["intercept", "slope"], "visit": [2, 4, 8], "visit_bis": [2, 4, 8]}
    dims = {"nac_effect": ["week"], "participant_sd": ["effect"], "visit_corr": ["visit", "visit_bis"]}
    return az.from_dict(posterior=posterior, coords=coords, dims=dims)


@pytest.mark.unit
@pytest.mark.parametrize("chains", [4, 2, 1])
def test_inference_data_labels_and_values_equal_az_summary(chains):
    idata = trial_like_idata(np.random.default_rng(chains), chains=chains)
    draws, labels = cv.scalar_draws(idata.posterior)
    with cv.one_chain_quiet():
        ref = az.summary(idata, kind="diagnostics", round_to="none")
        ref_sd = az.summary(idata, stat_funcs={"sd": lambda x: np.std(x, ddof=1)}, extend=False, round_to="none")["sd"]
    assert labels == list(ref.index)
    assert {"nac_effect[12]", "participant_sd[intercept]", "visit_corr[2, 4]", "sigma"} <= set(labels)
    assert_columns_match({**ms.diagnostics(draws), "sd": ms.posterior_sd(draws)}, ref.assign(sd=ref_sd))


@pytest.mark.unit
@pytest.mark.parametrize("chains", [4, 2, 1])
@pytest.mark.parametrize("var_names", [None, ["nac_effect", "sigma", "visit_corr"], ["~slow", "~intercept"]])
def test_convergence_table_equals_previous_implementation(chains, var_names):
    idata = trial_like_idata(np.random.default_rng(10 + chains), chains=chains)
    new = cv.convergence_table(idata, var_names)
    old = old_convergence_table(idata, var_names)
    pd.testing.assert_frame_equal(new, old, check_exact=False, rtol=RTOL)
    assert "nac_effect[0]" not in new.index and "visit_corr[2, 2]" not in new.index  # constants dropped
    assert len(new) > 5


@pytest.mark.unit
def test_verdict_unchanged(monkeypatch):
    rng = np.random.default_rng(3)
    idata = trial_like_idata(rng)
    shape = (4, 400)
    idata.add_groups(sample_stats={"diverging": np.zeros(shape, bool), "energy": rng.normal(size=shape)})
    new = cv.verdict(idata)
    monkeypatch.setattr(cv, "convergence_table", lambda idata, var_names=None, stats=None: old_convergence_table(idata, var_names))
    old = cv.verdict(idata)
    assert new.text() == old.text() and new.flags == old.flags and "rhat" in new.flags
    pd.testing.assert_frame_equal(new.table, old.table, check_exact=False, rtol=RTOL)


@pytest.mark.unit
def test_verdict_judges_unrounded_r_hat():
    """An R-hat of about 1.012 (1.01 when rounded to two decimals) fails R-hat <= 1.01."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(4, 1000, 1))
    for shift in np.linspace(0.02, 0.2, 60):
        draws = base + shift * np.array([0.0, 1.0, -1.0, 0.5])[:, None, None]
        r_hat = float(ms.diagnostics(draws)["r_hat"][0])
        if 1.0105 < r_hat < 1.0149:
            break
    else:
        pytest.fail("no shift gave an R-hat between 1.0105 and 1.0149")
    idata = az.from_dict(posterior={"theta": draws[:, :, 0]})
    table = cv.convergence_table(idata)
    assert table.loc["theta", "r_hat"] == pytest.approx(r_hat) and table.loc["theta", "r_hat"] > cv.RHAT_MAX
