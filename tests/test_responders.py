"""Responder and remission estimands (diagnostics/responders.py): rates against direct counts, the MMRM's conditional
imputation against independent normal algebra, the trajectory models' means at unattended weeks, NNT, seeds, refusals.

The default tier builds posterior draws by hand (named and shaped as the models store them) on small simulated
trials: no sampling. The slow tier fits the MMRM and the headline model through the Python API."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from data import TrialParameters, load_dataset, simulate_trial
from diagnostics.ppc import REMISSION_CUTOFF, RESPONSE_REDUCTION
from diagnostics.responders import completed_scores, contrast_rows, mmrm_mean, responder_table, trajectory_means
from models import build_design
from models.mmrm import mean_change, mmrm_data

RATE_COLUMNS = ["events", "mean", "sd", "median", "hdi_3%", "hdi_97%", "p_above_0", "n", "n_missing"]


def _trial(folder, **overrides):
    """A small trial without biomarkers: (loaded dataset, design)."""
    trial = simulate_trial(TrialParameters(**{"n_participants": 40, "seed": 12, **overrides}))
    trial.biomarkers = trial.biomarkers.iloc[0:0]
    trial.write(folder)
    ds = load_dataset(folder)
    return ds, build_design(ds)


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    # dropout so rare that nobody leaves (the generator's random stream is the same whatever the rates)
    ds, design = _trial(tmp_path_factory.mktemp("responders") / "complete", dropout_by_last_week=1e-9, intermittent_missing=0.0)
    assert not np.isnan(ds["score"].values).any()
    return ds, design


@pytest.fixture(scope="module")
def dropout(tmp_path_factory):
    ds, design = _trial(tmp_path_factory.mktemp("responders") / "dropout", dropout_by_last_week=0.4, intermittent_missing=0.1)
    score = ds["score"].values
    assert np.isnan(score[:, 1:]).all(axis=1).any(), "the fixture needs participants with a baseline only"
    return ds, design


THREE_ARMS = {"treatment_arm": "low", "more_arms": (("high", -3.0, -3.5),), "n_participants": 45}


@pytest.fixture(scope="module")
def three_arm_complete(tmp_path_factory):
    ds, design = _trial(tmp_path_factory.mktemp("responders") / "k3complete", dropout_by_last_week=1e-9, intermittent_missing=0.0,
                        **THREE_ARMS)
    assert not np.isnan(ds["score"].values).any() and design.active_arms == ["low", "high"]
    return ds, design


@pytest.fixture(scope="module")
def three_arm_dropout(tmp_path_factory):
    ds, design = _trial(tmp_path_factory.mktemp("responders") / "k3dropout", dropout_by_last_week=0.4, intermittent_missing=0.1,
                        **THREE_ARMS)
    missing = np.isnan(ds["score"].values[:, 1:])
    arm = ds["arm_index"].values
    assert all(missing[arm == a].any() for a in (0, 1, 2)), "the fixture needs missing visits in every arm"
    return ds, design


def _dataset(variables: dict, model: str, coords: dict | None = None) -> xr.Dataset:
    """A posterior: every array is (draws, ...) with its dims; one chain."""
    data = {}
    for name, (dims, values) in variables.items():
        values = np.asarray(values, dtype=float)
        data[name] = xr.DataArray(values[None], dims=("chain", "draw", *dims))
    post = xr.Dataset(data, coords={"chain": [0], "draw": np.arange(next(iter(data.values())).shape[1]), **(coords or {})})
    post.attrs["model"] = model
    return post


def trajectory_posterior(design, draws: int = 200, seed: int = 0, sigma: float = 3.0, curved: bool = False, model: str = "treatment",
                         fixed: bool = True):
    """Hand-made draws of a trajectory model: the fixed-part coefficients (participant_fixed) and participant effects,
    or (fixed=False) the plain model's free variables they come from; and the residual SD.
    Returns (posterior, coefficients c: draws x participant x K, effects b: draws x participant x 2)."""
    rng = np.random.default_rng(seed)
    n, t = design.n_participants, design.arm_indicator()  # participant x active arm
    intercept = 28.0 + rng.normal(0, 0.5, draws)
    time_change = np.column_stack([-11.0 + rng.normal(0, 1, draws), -0.5 + rng.normal(0, 0.5, draws)])
    nac_change = np.stack([np.column_stack([-1.5 * (a + 1) + rng.normal(0, 1, draws), -1.5 + rng.normal(0, 1, draws)])
                           for a in range(design.n_active)], axis=1)  # draws x active arm x phase
    site = rng.normal(0, 1.5, (draws, len(design.sites)))
    coefs = [intercept[:, None] + site[:, design.site_idx], time_change[:, [0]] + nac_change[..., 0] @ t.T,
             time_change[:, [1]] + nac_change[..., 1] @ t.T]
    bend = (rng.normal(2.0, 0.5, draws), rng.normal(0.5, 0.2, (draws, design.n_active)))  # time_curvature, nac_curvature
    if curved:
        coefs.append(bend[0][:, None] + bend[1] @ t.T)
    chol = np.array([[4.0, 0.0], [0.5, 5.0]])
    raw = rng.normal(0, 1, (draws, n, 2))
    effects = raw @ chol.T
    variables = {"residual_sd": ((), np.full(draws, sigma))}
    if fixed:
        variables["participant_fixed"] = (("participant", "participant_term"), np.stack(coefs, axis=-1))
        variables["participant_effects"] = (("participant", "participant_effect"), effects)
    else:
        variables.update({
            "intercept": ((), intercept), "time_change": (("phase",), time_change), "nac_change": (("active_arm", "phase"), nac_change),
            "site_effect": (("site",), site), "participant_raw": (("participant", "participant_effect"), raw),
            "participant_chol": (("participant_chol_dim_0",), np.tile(chol[np.tril_indices(2)], (draws, 1))),
        })
        if curved:
            variables.update({"time_curvature": ((), bend[0]), "nac_curvature": (("active_arm",), bend[1])})
    post = _dataset(variables, model, {"participant": design.participants, "active_arm": design.active_arms})
    return post, np.stack(coefs, axis=-1), effects


def mmrm_posterior(design, cov_sets, mean_sets, draws: int):
    """Hand-made MMRM draws cycling through parameter sets: draw d uses set d % len(cov_sets).
    mean_sets: dicts of visit_mean, baseline_slope (per visit), nac_visit_effect (per active arm and visit) and
    site_effect (per site)."""
    k = len(cov_sets)
    nv = cov_sets[0].shape[0]
    rows, cols = np.tril_indices(nv)
    packed = np.array([np.linalg.cholesky(c)[rows, cols] for c in cov_sets])
    pick = np.arange(draws) % k
    dims = {"visit_mean": ("visit",), "nac_visit_effect": ("active_arm", "visit"), "baseline_slope": ("visit",), "site_effect": ("site",)}
    variables = {name: (dim, np.array([m[name] for m in mean_sets])[pick]) for name, dim in dims.items()}
    variables["visit_chol"] = (("visit_chol_dim_0",), packed[pick])
    return _dataset(variables, "mmrm", {"active_arm": design.active_arms})


def _idata(post):
    import arviz as az

    return az.InferenceData(posterior=post)


def _ar1(nv: int, rho: float, sd: float) -> np.ndarray:
    lag = np.abs(np.subtract.outer(np.arange(nv), np.arange(nv)))
    return sd**2 * rho**lag


def _means(nv: int, n_sites: int, rng=None, level: float = -10.0, n_active: int = 1) -> dict:
    if rng is None:
        return {"visit_mean": np.full(nv, level), "nac_visit_effect": np.zeros((n_active, nv)), "baseline_slope": np.zeros(nv),
                "site_effect": np.zeros(n_sites)}
    site = rng.normal(0, 1.5, n_sites)
    return {"visit_mean": np.linspace(-4, -12, nv) + rng.normal(0, 1, nv),
            "nac_visit_effect": rng.normal(-1.5, 1, (n_active, nv)) * np.arange(1, n_active + 1)[:, None],
            "baseline_slope": rng.normal(-0.3, 0.1, nv), "site_effect": site - site.mean()}


def direct_counts(ds, week: int, outcome: str):
    """Per arm (control first, then the active arms): (responders among those observed at `week`, participants), from
    the dataset itself."""
    score = ds["score"].values
    col = list(ds["week"].values).index(week)
    y, base = score[:, col], score[:, 0]
    hit = y <= ((1 - RESPONSE_REDUCTION) * base if outcome == "response" else REMISSION_CUTOFF)
    hit &= ~np.isnan(y)
    arm = ds["arm_index"].values
    return [(int(hit[arm == a].sum()), int((arm == a).sum())) for a in range(int(arm.max()) + 1)]


def rate_rows(table, estimand, outcome, week, n_arms: int = 2):
    rows = table[(table.estimand == estimand) & (table.outcome == outcome) & (table.week == week) & table.quantity.str.startswith("rate_")]
    assert len(rows) == n_arms
    return rows


# ---------------------------------------------------------------- rates against direct counts


@pytest.mark.unit
def test_complete_data_rates_are_the_jeffreys_posterior_of_direct_counts_and_estimands_agree(complete):
    ds, design = complete
    meta = design.meta
    nv = len(design.weeks) - 1
    fits = {
        "treatment": trajectory_posterior(design, draws=60)[0],
        "mmrm": mmrm_posterior(design, [_ar1(nv, 0.6, 5.0)], [_means(nv, len(design.sites))], draws=60),
    }
    for name, post in fits.items():
        table = responder_table(_idata(post), design, seed=3)
        assert set(table.week) == {meta.treatment_end, meta.last_week}
        for outcome in ("response", "remission"):
            for week in (meta.treatment_end, meta.last_week):
                counts = direct_counts(ds, week, outcome)
                for estimand in ("MAR", "NRI"):
                    rows = rate_rows(table, estimand, outcome, week)
                    for (x, n), arm in zip(counts, (meta.control_arm, meta.treatment_arm)):
                        row = rows[rows.quantity == f"rate_{arm}"].iloc[0]
                        assert row["n"] == n and row["n_missing"] == 0 and row["events"] == x
                        assert abs(row["mean"] - (x + 0.5) / (n + 1)) < 1e-12, (name, estimand, outcome, week, arm)
                        a, b = x + 0.5, n - x + 0.5
                        assert abs(row["sd"] - np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))) < 1e-12
                mar = table[(table.estimand == "MAR") & (table.outcome == outcome) & (table.week == week)]
                nri = table[(table.estimand == "NRI") & (table.outcome == outcome) & (table.week == week)]
                pd.testing.assert_frame_equal(mar[["quantity", *RATE_COLUMNS]].reset_index(drop=True),
                                              nri[["quantity", *RATE_COLUMNS]].reset_index(drop=True))


@pytest.mark.unit
def test_nri_counts_observed_responders_and_never_exceeds_mar(dropout):
    ds, design = dropout
    meta = design.meta
    nv = len(design.weeks) - 1
    tables = {
        "treatment": responder_table(_idata(trajectory_posterior(design, draws=80)[0]), design, seed=5, weeks="all"),
        "mmrm": responder_table(_idata(mmrm_posterior(design, [_ar1(nv, 0.7, 5.0)], [_means(nv, len(design.sites))], draws=80)), design,
                                seed=5, weeks="all"),
    }
    for name, table in tables.items():
        assert sorted(set(table.week)) == [int(w) for w in design.weeks[1:]]
        more = 0
        for outcome in ("response", "remission"):
            for week in design.weeks[1:]:
                nri, mar = rate_rows(table, "NRI", outcome, week), rate_rows(table, "MAR", outcome, week)
                for (x, n), arm in zip(direct_counts(ds, int(week), outcome), (meta.control_arm, meta.treatment_arm)):
                    r_nri = nri[nri.quantity == f"rate_{arm}"].iloc[0]
                    r_mar = mar[mar.quantity == f"rate_{arm}"].iloc[0]
                    assert r_nri["events"] == x and r_nri["n"] == n
                    assert abs(r_nri["mean"] - (x + 0.5) / (n + 1)) < 1e-12
                    assert r_nri["mean"] <= r_mar["mean"] + 1e-15 and r_nri["events"] <= r_mar["events"]
                    more += r_mar["events"] > r_nri["events"]
        assert more > 0, f"{name}: imputation under MAR never added a responder"
    # non-responder imputation does not use the model
    nri = [t[t.estimand == "NRI"].drop(columns=["estimand_text"]).reset_index(drop=True) for t in tables.values()]
    pd.testing.assert_frame_equal(*nri)


# ---------------------------------------------------------------- the MMRM's conditional imputation


@pytest.mark.unit
def test_mmrm_dropout_with_correlation_099_keeps_their_last_observed_status(dropout):
    ds, design = dropout
    nv = len(design.weeks) - 1
    week = design.meta.treatment_end
    post = mmrm_posterior(design, [_ar1(nv, 0.99, 4.0)], [_means(nv, len(design.sites))], draws=400)
    done = completed_scores(_idata(post), design, weeks=[week], seed=11)
    score = ds["score"].values
    col = list(ds["week"].values).index(week)
    checked = []
    for i, pid in enumerate(done.participants):
        seen = np.flatnonzero(~np.isnan(score[i, 1:])) + 1
        if not len(seen) or seen[-1] >= col:  # keep dropouts: post-baseline visits, none from the week on
            continue
        last, threshold = score[i, seen[-1]], (1 - RESPONSE_REDUCTION) * score[i, 0]
        if abs(last - threshold) < 1.5:  # clear of the threshold (the imputation moves a little toward the mean)
            continue
        imputed = done.scores[:, i, 0] <= threshold
        checked.append(last <= threshold)
        assert np.mean(imputed == (last <= threshold)) > 0.9, (pid, last, threshold, imputed.mean())
    assert any(checked) and not all(checked), "the fixture needs dropouts of both statuses"


@pytest.mark.unit
def test_mmrm_imputations_follow_the_conditional_normal(dropout):
    ds, design = dropout
    nv = len(design.weeks) - 1
    rng = np.random.default_rng(4)
    covs = []
    for _ in range(2):
        a = rng.normal(size=(nv, nv))
        covs.append(a @ a.T + nv * np.eye(nv))
    means = [_means(nv, len(design.sites), rng) for _ in range(2)]
    draws = 4000
    post = mmrm_posterior(design, covs, means, draws)
    d = mmrm_data(design)
    # the mean used for imputation is the model's own at every attended visit
    np.testing.assert_allclose(mmrm_mean(post, design, d.rows, d.baseline_center)[:, d.obs_row, d.obs_visit],
                               mean_change(post, design, d).reshape(draws, -1), rtol=1e-12, atol=1e-12)
    done = completed_scores(_idata(post), design, weeks="all", seed=2, scale=False)
    score = ds["score"].values
    seen = ~done.missing
    np.testing.assert_array_equal(done.scores[:, seen], np.broadcast_to(score[:, 1:][seen], (draws, seen.sum())))
    base = score[:, 0]
    center = base[~np.isnan(score[:, 1:]).all(axis=1)].mean()  # over the participants in the MMRM fit
    treated, site = ds["arm_index"].values, design.site_idx
    worst = 0.0
    for i in np.flatnonzero(done.missing.any(axis=1)):
        o, m = np.flatnonzero(~done.missing[i]), np.flatnonzero(done.missing[i])
        for s in range(2):
            p = means[s]
            mu = p["visit_mean"] + p["nac_visit_effect"][0] * treated[i] + p["baseline_slope"] * (base[i] - center) + p["site_effect"][site[i]]
            c = covs[s]
            change = score[i, 1:] - base[i]
            if len(o):
                w = np.linalg.solve(c[np.ix_(o, o)], c[np.ix_(o, m)]).T
                cmean = mu[m] + w @ (change[o] - mu[o])
                ccov = c[np.ix_(m, m)] - w @ c[np.ix_(o, m)]
            else:
                cmean, ccov = mu[m], c[np.ix_(m, m)]
            imputed = done.scores[s::2, i][:, m] - base[i]
            n = len(imputed)
            z = (imputed.mean(axis=0) - cmean) / np.sqrt(np.diag(ccov) / n)
            worst = max(worst, np.abs(z).max())
            emp = np.cov(imputed, rowvar=False).reshape(len(m), len(m))
            np.testing.assert_allclose(emp, ccov, rtol=0.15, atol=0.15 * np.sqrt(np.outer(np.diag(ccov), np.diag(ccov))).max())
    assert worst < 4.5, worst  # a few hundred z-scores of exact normal means


# ---------------------------------------------------------------- the trajectory models


@pytest.mark.unit
@pytest.mark.parametrize("trial, model, curved, stored", [("dropout", "treatment", False, False), ("dropout", "treatment_curved", True, False),
                                                          ("dropout", "treatment_curved", True, True),
                                                          ("three_arm_dropout", "treatment", False, False)])
def test_trajectory_imputation_is_the_mean_at_the_unattended_week(request, trial, model, curved, stored):
    """With a tiny residual SD the imputed score is the participant's mean at that week: fixed part (their own arm's
    changes) + effects at the week's time codes, computed here from the schedule. stored=False: the model's graph
    computes the mean from its free variables; stored=True: participant_fixed and participant_effects read from the
    posterior."""
    ds, design = request.getfixturevalue(trial)
    meta = design.meta
    post, coefs, effects = trajectory_posterior(design, draws=30, sigma=1e-9, curved=curved, model=model, fixed=stored)
    done = completed_scores(_idata(post), design, weeks="all", seed=1, scale=False)
    weeks = np.asarray(ds["week"].values[1:], dtype=float)
    t1 = np.minimum(weeks, meta.treatment_end) / meta.treatment_end
    t2 = np.maximum(weeks - meta.treatment_end, 0) / (meta.last_week - meta.treatment_end)
    mu = (coefs[..., 0] + effects[..., 0])[..., None] + (coefs[..., 1] + effects[..., 1])[..., None] * t1 + coefs[..., 2][..., None] * t2
    if curved:
        mu = mu + coefs[..., 3][..., None] * 4 * t1 * (1 - t1)
    miss = done.missing
    assert miss.any()
    np.testing.assert_allclose(done.scores[:, miss], mu[:, miss], atol=1e-6)
    on_scale = completed_scores(_idata(post), design, weeks="all", seed=1).scores
    np.testing.assert_array_equal(on_scale[:, miss], np.clip(np.round(mu[:, miss]), meta.score_min, meta.score_max))


# ---------------------------------------------------------------- three arms


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["treatment", "mmrm"])
def test_three_arm_rates_and_each_arms_risk_difference_against_direct_computation(three_arm_complete, kind):
    """Complete data: every arm's rate is the Jeffreys posterior of its direct count; each active arm's risk difference
    against placebo has mean (x_a + 1/2)/(n_a + 1) - (x_0 + 1/2)/(n_0 + 1), SD from the two Beta variances, and
    P(better) the exact P(Beta_a > Beta_0) within Monte Carlo error."""
    from scipy import integrate, stats

    ds, design = three_arm_complete
    meta = design.meta
    nv = len(design.weeks) - 1
    draws = 400
    post = (trajectory_posterior(design, draws=draws)[0] if kind == "treatment" else
            mmrm_posterior(design, [_ar1(nv, 0.6, 5.0)], [_means(nv, len(design.sites), n_active=2)], draws=draws))
    table = responder_table(_idata(post), design, seed=4)
    labels = ["placebo", "low", "high"]
    for outcome in ("response", "remission"):
        for week in (meta.treatment_end, meta.last_week):
            counts = direct_counts(ds, week, outcome)
            at = table[(table.estimand == "MAR") & (table.outcome == outcome) & (table.week == week)]
            assert list(at.quantity) == ["rate_placebo", "rate_low", "rate_high", *["risk_difference", "odds_ratio", "nnt"] * 2]
            assert list(at.arm) == [*labels, "low - placebo", "low vs placebo", "low vs placebo",
                                    "high - placebo", "high vs placebo", "high vs placebo"]
            assert "risk difference of each active arm against placebo (low - placebo, high - placebo)" in at.estimand_text.iloc[0]
            rates = at[at.quantity.str.startswith("rate_")].set_index("arm")
            for (x, n), arm in zip(counts, labels):
                assert rates.loc[arm, "n"] == n and rates.loc[arm, "events"] == x
                assert rates.loc[arm, "mean"] == pytest.approx((x + 0.5) / (n + 1), abs=1e-12)
            (x0, n0) = counts[0]
            beta0 = stats.beta(x0 + 0.5, n0 - x0 + 0.5)
            for (xa, na), arm in zip(counts[1:], labels[1:]):
                rd = at[(at.quantity == "risk_difference") & (at.arm == f"{arm} - placebo")].iloc[0]
                betaa = stats.beta(xa + 0.5, na - xa + 0.5)
                assert rd["n"] == na + n0 and rd["n_missing"] == 0
                assert rd["mean"] == pytest.approx(betaa.mean() - beta0.mean(), abs=1e-12)
                assert rd["sd"] == pytest.approx(np.sqrt(betaa.var() + beta0.var()), abs=1e-12)
                better = integrate.quad(lambda p, a=betaa, c=beta0: a.pdf(p) * c.cdf(p), 0, 1)[0]  # P(Beta_a > Beta_0)
                assert abs(rd["p_above_0"] - better) < 4 * np.sqrt(better * (1 - better) / draws) + 1e-3, (arm, rd["p_above_0"], better)
                assert rd["hdi_3%"] < betaa.mean() - beta0.mean() < rd["hdi_97%"]


@pytest.mark.unit
def test_three_arm_mmrm_imputes_each_participant_from_their_own_arms_mean(three_arm_dropout):
    """mmrm_mean is visit mean + the participant's own arm's visit effect (none for placebo) + baseline slope + site; with
    a covariance near 0 the imputed change is that mean, so each arm's missing scores follow its own effect."""
    ds, design = three_arm_dropout
    nv = len(design.weeks) - 1
    rng = np.random.default_rng(7)
    means = _means(nv, len(design.sites), rng, n_active=2)
    post = mmrm_posterior(design, [_ar1(nv, 0.0, 1e-6)], [means], draws=4)
    d = mmrm_data(design)
    score, arm = ds["score"].values, ds["arm_index"].values
    effect = np.vstack([np.zeros(nv), means["nac_visit_effect"]])  # by arm index: placebo, low, high
    rows = np.arange(design.n_participants)
    mu = (means["visit_mean"] + effect[arm] + means["baseline_slope"] * (score[:, [0]] - d.baseline_center)
          + means["site_effect"][design.site_idx][:, None])
    np.testing.assert_allclose(mmrm_mean(post, design, rows, d.baseline_center), np.broadcast_to(mu, (4, *mu.shape)), rtol=0, atol=1e-12)
    done = completed_scores(_idata(post), design, weeks="all", seed=1, scale=False)
    np.testing.assert_array_equal(done.arm, arm)
    miss = done.missing
    expected = score[:, [0]] + mu
    np.testing.assert_allclose(done.scores[:, miss], np.broadcast_to(expected[miss], (4, miss.sum())), atol=1e-4)
    assert len(set(arm[miss.any(axis=1)])) == 3


# ---------------------------------------------------------------- NNT, seeds, refusals


@pytest.mark.unit
def test_nnt_is_reported_only_when_the_risk_difference_excludes_zero():
    rng = np.random.default_rng(0)
    p0 = rng.beta(30, 70, 4000)
    moments = (np.full(4000, 0.3), np.zeros(4000))
    clear = {r["quantity"]: r for r in contrast_rows(p0, np.clip(p0 + rng.normal(0.2, 0.04, 4000), 0, 1), moments, moments)}
    rd = clear["risk_difference"]
    assert rd["hdi_3%"] > 0 and rd["p_above_0"] == 1.0
    nnt = clear["nnt"]
    assert nnt["median"] == pytest.approx(1 / rd["median"]) and np.isnan(nnt["mean"])
    assert nnt["hdi_3%"] == pytest.approx(1 / rd["hdi_97%"]) and nnt["hdi_97%"] == pytest.approx(1 / rd["hdi_3%"])
    assert 0 < nnt["hdi_3%"] < nnt["median"] < nnt["hdi_97%"]
    harm = {r["quantity"]: r for r in contrast_rows(p0, np.clip(p0 - 0.2, 0.001, 1), moments, moments)}["nnt"]
    assert harm["hdi_97%"] < 0 and "harm" in harm["note"]
    vague = {r["quantity"]: r for r in contrast_rows(p0, rng.permutation(p0), moments, moments)}
    assert vague["risk_difference"]["hdi_3%"] < 0 < vague["risk_difference"]["hdi_97%"]
    assert np.isnan(vague["nnt"]["median"]) and np.isnan(vague["nnt"]["hdi_3%"]) and "not defined" in vague["nnt"]["note"]
    odds = vague["odds_ratio"]
    assert odds["hdi_3%"] < 1 < odds["hdi_97%"]


@pytest.mark.unit
def test_same_seed_same_table(dropout):
    _, design = dropout
    idata = _idata(trajectory_posterior(design, draws=40)[0])
    first = responder_table(idata, design, seed=7, remission_cutoff=10)
    pd.testing.assert_frame_equal(first, responder_table(idata, design, seed=7, remission_cutoff=10))
    other = responder_table(idata, design, seed=8, remission_cutoff=10)
    assert not np.allclose(first["hdi_3%"].fillna(0), other["hdi_3%"].fillna(0))
    assert "score <= 10" in first[first.outcome == "remission"].estimand_text.iloc[0]
    text = first[(first.estimand == "NRI") & (first.outcome == "response")].estimand_text.iloc[0]
    for part in ("Population:", "without a baseline score excluded", "Variable:", ">= 50% reduction from baseline",
                 "composite strategy", "Population-level summary:"):
        assert part in text


@pytest.mark.unit
@pytest.mark.parametrize("model", ["biomarker_change", "biomarker_change_median", "mediation", "no_such_model", None])
def test_models_without_visit_scores_are_refused(dropout, model):
    _, design = dropout
    post = trajectory_posterior(design, draws=5)[0]
    if model is None:
        del post.attrs["model"]
    else:
        post.attrs["model"] = model
    with pytest.raises(ValueError, match="visit scores|unknown model|which model"):
        responder_table(_idata(post), design)


# ---------------------------------------------------------------- fitted models


@pytest.mark.slow
def test_fitted_mar_rates_cover_the_complete_data_rates(tmp_path):
    """MMRM and headline fitted through the Python API to a trial with MAR dropout: the posterior of the MAR response
    and remission rates per arm at the end of treatment and follow-up covers the rates of the same trial without dropout
    (the generator draws every score before dropout, from one random stream, so the same seed with no dropout gives
    this trial's complete data)."""
    import deptrial
    from inference.sampling import SamplerSettings

    params = TrialParameters(n_participants=160, seed=21, dropout_by_last_week=0.3)
    trial = simulate_trial(params)
    trial.write(tmp_path / "trial")
    full = simulate_trial(params.with_(dropout_by_last_week=1e-9, intermittent_missing=0.0))
    full.write(tmp_path / "full")
    full_ds = load_dataset(tmp_path / "full")
    assert not np.isnan(full_ds["score"].values).any()
    ds = load_dataset(tmp_path / "trial")
    np.testing.assert_array_equal(np.isnan(ds["score"].values) | (ds["score"].values == full_ds["score"].values), True)
    design = build_design(ds)
    deptrial.fit_trial(ds, ["mmrm", "headline"], SamplerSettings(draws=500, tune=500, chains=2, seed=3, prior_draws=20),
                             out=tmp_path / "out", jobs=1)
    for name in ("mmrm", "headline"):
        idata = deptrial.load_fit(tmp_path / "out" / name / "idata.nc")  # the saved fit, completed on reading
        if name == "headline":  # the mean imputed from is the fit's own: its pointwise log-likelihood at the attended visits
            mu = trajectory_means(idata, design, name, np.arange(design.n_participants), np.arange(len(design.weeks)))
            mu = mu[:, design.obs_participant, np.searchsorted(design.weeks, design.obs_week.astype(int))]
            sigma = idata.posterior["residual_sd"].values.reshape(-1, 1)
            loglik = idata.log_likelihood["y"].transpose("chain", "draw", "obs").values.reshape(len(sigma), -1)
            np.testing.assert_allclose((design.y - mu) ** 2, -2 * sigma**2 * (loglik + np.log(sigma) + 0.5 * np.log(2 * np.pi)),
                                       rtol=1e-6, atol=1e-8)
        table = responder_table(idata, design, seed=1)
        for outcome in ("response", "remission"):
            for week in (design.meta.treatment_end, design.meta.last_week):
                rows = rate_rows(table, "MAR", outcome, week)
                for (x, n), arm in zip(direct_counts(full_ds, week, outcome), (design.meta.control_arm, design.meta.treatment_arm)):
                    row = rows[rows.quantity == f"rate_{arm}"].iloc[0]
                    assert row["n_missing"] > 0
                    assert row["hdi_3%"] < x / n < row["hdi_97%"], (name, outcome, week, arm, x / n, row.to_dict())
                    # the observed rate among completers is not what MAR targets; NRI is below both
                    nri = rate_rows(table, "NRI", outcome, week)
                    assert nri[nri.quantity == f"rate_{arm}"].iloc[0]["mean"] <= row["mean"]
