"""Diagnostics on InferenceData built by hand with known properties: each flags exactly what it should.

Convergence: healthy draws pass; a stuck chain flags R-hat; divergences, max-tree-depth hits (under
PyMC's and nutpie's names) and a random-walk energy (low E-BFMI) flag only themselves.
PPC: a predictive from the data-generating distribution flags nothing; a too-narrow predictive
flags the LOO-PIT and the score SD at every visit but not the means; a shifted predictive flags
the mean of exactly the shifted arm and week. LOO: the participant-level log-likelihood equals an
independent multivariate-normal computation; the comparison ranks the true model first and agrees
with az.compare; models fitted to different observations are refused.
"""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from diagnostics import convergence as cv
from diagnostics import loo as dl
from diagnostics.compare import CLEAR_DIFF_SE, ComparisonError, check_comparable, comparable_groups, compare, plain_language
from diagnostics.ppc import LOO_PIT_P_MIN, PPC_TAIL, obs_index, rate_check, run_ppc

pytestmark = pytest.mark.unit

CHAINS, DRAWS = 4, 500


def sampler_stats(rng, chains=CHAINS, draws=DRAWS, names="nutpie", diverging_frac=0.0, maxdepth_frac=0.0, energy="iid"):
    """sample_stats with the sampler's own names; energy iid (E-BFMI ~ 2) or a random walk (E-BFMI ~ 0)."""
    shape = (chains, draws)
    e = rng.normal(size=shape) if energy == "iid" else np.cumsum(rng.normal(size=shape), axis=1)
    hit = rng.random(shape) < maxdepth_frac
    depth = np.where(hit, 10, 3)
    out = {"energy": e, "diverging": rng.random(shape) < diverging_frac}
    if names == "nutpie":
        out.update(depth=depth, maxdepth_reached=hit)
    else:
        out.update(tree_depth=depth, reached_max_treedepth=hit)
    return out


def healthy_posterior(rng, chains=CHAINS, draws=DRAWS):
    return {"alpha": rng.normal(size=(chains, draws)), "beta": rng.normal(2.0, 0.5, size=(chains, draws, 2))}


def make(posterior, stats_):
    return az.from_dict(posterior=posterior, sample_stats=stats_)


def test_healthy_fit_passes_with_no_flag():
    rng = np.random.default_rng(1)
    v = cv.verdict(make(healthy_posterior(rng), sampler_stats(rng)))
    assert v.ok and v.flags == set() and v.messages == []
    assert v.treedepth_saturated == 0 and min(v.ebfmi) > cv.EBFMI_MIN
    assert v.max_mcse_ratio < cv.MCSE_SD_RATIO_MAX
    assert "mcse_sd_ratio" in v.table.columns and "mcse_mean" in v.table.columns


def test_stuck_chain_flags_rhat_only_among_sampler_checks():
    rng = np.random.default_rng(2)
    post = healthy_posterior(rng)
    post["alpha"][3] = 2.5 + 0.01 * rng.normal(size=DRAWS)  # one chain stuck far from the others
    v = cv.verdict(make(post, sampler_stats(rng)))
    assert not v.ok and "rhat" in v.flags
    assert v.table.loc["alpha", "r_hat"] > cv.RHAT_MAX
    assert not v.flags & {"divergences", "treedepth", "ebfmi"}
    assert all(v.table.loc[f"beta[{i}]", "r_hat"] <= cv.RHAT_MAX for i in range(2))


def test_divergent_fit_flags_divergences_exactly():
    rng = np.random.default_rng(3)
    v = cv.verdict(make(healthy_posterior(rng), sampler_stats(rng, diverging_frac=0.05)))
    assert v.flags == {"divergences"} and v.divergences > cv.DIVERGENCES_MAX


@pytest.mark.parametrize("names", ["nutpie", "pymc"])
def test_tree_depth_saturation_flagged_under_both_samplers_names(names):
    rng = np.random.default_rng(4)
    v = cv.verdict(make(healthy_posterior(rng), sampler_stats(rng, names=names, maxdepth_frac=0.05)))
    assert v.flags == {"treedepth"}
    assert v.treedepth_saturated == pytest.approx(0.05, abs=0.015)


def test_tree_depth_from_depth_alone_uses_default_limit():
    rng = np.random.default_rng(5)
    s = sampler_stats(rng, maxdepth_frac=0.1)
    del s["maxdepth_reached"]
    idata = make(healthy_posterior(rng), s)
    assert cv.treedepth_saturation(idata) == pytest.approx(float((s["depth"] >= cv.DEFAULT_MAX_TREEDEPTH).mean()))


def test_random_walk_energy_flags_ebfmi_exactly():
    rng = np.random.default_rng(6)
    idata = make(healthy_posterior(rng), sampler_stats(rng, energy="walk"))
    v = cv.verdict(idata)
    assert v.flags == {"ebfmi"} and max(v.ebfmi) < cv.EBFMI_MIN
    np.testing.assert_allclose(v.ebfmi, az.bfmi(idata), rtol=1e-10)  # same as ArviZ's definition


def test_autocorrelated_chains_flag_ess_and_mcse():
    rng = np.random.default_rng(7)
    x = np.zeros((CHAINS, DRAWS))
    for t in range(1, DRAWS):
        x[:, t] = 0.995 * x[:, t - 1] + rng.normal(size=CHAINS) * 0.1
    v = cv.verdict(make({"alpha": x}, sampler_stats(rng)))
    assert {"ess", "mcse"} <= v.flags and not v.flags & {"divergences", "treedepth", "ebfmi"}


# ---------------------------------------------------------------- a hand-built trial fit

WEEKS = np.array([0, 4, 8])


def trial_idata(seed=0, n=120, sd=4.0, pred_sd=None, shift=None, chains=2, draws=400, checksum="abc", y=None, arms=("placebo", "nac")):
    """Scores y = 26 - 1.2 week - a week/8 (participant i in arm a = i mod len(arms), 0 the control) + N(0, sd) for n
    participants at weeks 0, 4, 8 with 10% later visits missing; posterior draws of (a, b, sd) near the truth; a
    predictive with SD `pred_sd` (default: sd) and an optional mean shift {(arm index, week): points}. log_likelihood
    matches the predictive; constant_data holds the arms as the models do ('arm_indicator', participant x active arm)."""
    rng = np.random.default_rng(seed)
    treated = (np.arange(n) % len(arms)).astype(float)  # the arm index
    pid = np.repeat(np.arange(n), len(WEEKS))
    week = np.tile(WEEKS, n).astype(float)
    keep = (week == 0) | (np.random.default_rng(n).random(len(week)) > 0.1)  # same visits whatever the seed
    pid, week = pid[keep], week[keep]
    mu_true = 26 - 1.2 * week - treated[pid] * week / 8
    if y is None:
        y = np.round(mu_true + rng.normal(0, sd, size=len(week)))
    s = chains * draws
    a = 26 + rng.normal(0, 0.3, size=s)
    psd = (pred_sd or sd) * np.exp(rng.normal(0, 0.03, size=s))
    mu = a[:, None] - 26 + mu_true[None, :]
    if shift:
        for (arm, w), d in shift.items():
            mu[:, (treated[pid] == arm) & (week == w)] += d
    rep = rng.normal(mu, psd[:, None])
    ll = stats.norm.logpdf(y[None, :], mu, psd[:, None])
    shape = (chains, draws)
    participants = np.array([f"P{i:03d}" for i in range(n)])
    idata = az.InferenceData(
        posterior=xr.Dataset({"intercept": (("chain", "draw"), a.reshape(shape)), "residual_sd": (("chain", "draw"), psd.reshape(shape))}),
        posterior_predictive=xr.Dataset({"y": (("chain", "draw", "obs"), rep.reshape(*shape, -1))}),
        log_likelihood=xr.Dataset({"y": (("chain", "draw", "obs"), ll.reshape(*shape, -1))}),
        observed_data=xr.Dataset({"y": ("obs", y)}),
        constant_data=xr.Dataset(
            {"obs_participant": ("obs", pid), "obs_week": ("obs", week),
             "arm_indicator": (("participant", "active_arm"), (treated[:, None] == np.arange(1, len(arms))[None, :]).astype(float))},
            coords={"participant": participants, "active_arm": list(arms[1:])},
        ),
        sample_stats=xr.Dataset({k: (("chain", "draw"), v) for k, v in sampler_stats(rng, chains, draws).items()}),
    )
    active = list(arms[1:])
    by_arm = {a: int((treated == i).sum()) for i, a in enumerate(arms)}
    info = {"participants": n, "by_arm": {a: by_arm[a] for a in (*active, arms[0])},  # as deptrial.console.data_summary
            "arms": {"control": arms[0], "treatment": active[0] if len(active) == 1 else active},
            "sites": 1, "visits_observed": int(len(y)), "observed_by_week": {int(w): int((week == w).sum()) for w in WEEKS}}
    priors = {"intercept": {"dist": "Normal", "params": {"mu": 30.0, "sigma": 15.0}, "reason": "mid-scale"}}
    for g in idata.groups():
        idata[g].attrs.update(data_checksum=checksum, data_summary=json.dumps(info), priors=json.dumps(priors), model="hand", likelihood="normal", data_source="hand-built")
    return idata


def arm_of(idata) -> np.ndarray:
    """Each participant's arm index, from the arm indicator (participant x active arm) as in the models' constant_data."""
    ind = idata.constant_data["arm_indicator"].values
    return np.where(ind.max(axis=1) > 0.5, ind.argmax(axis=1) + 1, 0).astype(float)


def test_calibrated_predictive_flags_nothing():
    res = run_ppc(trial_idata(seed=11))
    assert res.flags() == [], res.flags()
    assert res.loo_pit["ks_p"] > LOO_PIT_P_MIN
    assert set(res.trajectory["arm"]) == {"placebo", "nac"}  # labels from the fit's data summary


def test_too_narrow_predictive_flags_pit_and_sd_not_means():
    res = run_ppc(trial_idata(seed=12, pred_sd=2.0))
    assert res.loo_pit["flag"] and res.loo_pit["pit_sd"] > 0.3  # U-shaped
    assert res.visits["flag"].all()  # replicated SD too small at every visit
    assert not res.trajectory["flag"].any()
    assert any("LOO-PIT" in f for f in res.flags())


def test_shifted_mean_flags_exactly_that_arm_and_week():
    res = run_ppc(trial_idata(seed=13, shift={(1.0, 8.0): 3.0}))
    flagged = res.trajectory[res.trajectory["flag"]]
    assert list(zip(flagged["arm"], flagged["week"])) == [("nac", 8)]
    assert flagged["ppp"].iloc[0] > 1 - PPC_TAIL  # replications above the observed mean


def test_three_arms_are_checked_arm_by_arm():
    """PPC by arm on a three-arm fit: every arm's mean and rates at every week; a shift of one arm flags that arm only."""
    arms = ("placebo", "low", "high")
    res = run_ppc(trial_idata(seed=16, n=150, arms=arms, shift={(2.0, 8.0): 3.0}))
    assert list(dict.fromkeys(res.trajectory["arm"])) == list(arms) and len(res.trajectory) == 9
    flagged = res.trajectory[res.trajectory["flag"]]
    assert list(zip(flagged["arm"], flagged["week"])) == [("high", 8)]
    assert set(res.rates["arm"]) == set(arms) and len(res.rates) == 3 * 2 * 2  # arm x week x (response, remission)
    idata = trial_idata(seed=16, n=150, arms=arms)
    ix = obs_index(idata)
    pid = idata.constant_data["obs_participant"].values
    assert ix.arm_labels == arms and (ix.arm_index == pid % 3).all() and (ix.arm() == np.asarray(arms)[pid % 3]).all()
    two = trial_idata(seed=16, n=40)  # a two-arm fit saved before the arm indicator: its 0/1 'treated'
    legacy = two.constant_data.drop_vars("arm_indicator").assign(treated=("participant", (np.arange(40) % 2).astype(float)))
    two.constant_data = legacy
    assert (obs_index(two).arm_index == two.constant_data["obs_participant"].values % 2).all()
    with pytest.raises(ValueError, match="arm_indicator"):
        two.constant_data = legacy.drop_vars("treated")
        obs_index(two)


def test_rates_match_an_independent_count():
    idata = trial_idata(seed=14)
    table = rate_check(idata, remission_cutoff=10)
    c = idata.constant_data
    df = pd.DataFrame({"p": c["obs_participant"].values, "w": c["obs_week"].values, "y": idata.observed_data["y"].values})
    wide = df.pivot(index="p", columns="w", values="y")
    arm = np.where(arm_of(idata)[wide.index] > 0.5, "nac", "placebo")
    for w in (4.0, 8.0):
        sub = wide[[0.0, w]].dropna()
        a = arm[np.isin(wide.index, sub.index)]
        for label in ("placebo", "nac"):
            s = sub[a == label]
            resp = table[(table["arm"] == label) & (table["week"] == w) & (table["statistic"] == "response")]["observed"].item()
            remi = table[(table["arm"] == label) & (table["week"] == w) & (table["statistic"] == "remission (<= 10)")]["observed"].item()
            assert resp == pytest.approx(np.mean(s[w] <= 0.5 * s[0.0]))
            assert remi == pytest.approx(np.mean(s[w] <= 10))


def test_obs_index_requires_mapping():
    idata = trial_idata(seed=15)
    del idata.constant_data["obs_week"]
    with pytest.raises(ValueError, match="obs_week"):
        obs_index(idata)


# ---------------------------------------------------------------- LOO


def test_participant_log_likelihood_equals_independent_joint_density():
    idata = trial_idata(seed=21, n=40)
    ll = dl.participant_log_likelihood(idata)
    post = idata.posterior.stack(sample=("chain", "draw"))
    y = idata.observed_data["y"].values
    pid = idata.constant_data["obs_participant"].values
    week = idata.constant_data["obs_week"].values
    treated = arm_of(idata)
    mu_base = 26 - 1.2 * week - treated[pid] * week / 8
    for p in (0, 7, 39):
        rows = pid == p
        expected = [
            stats.multivariate_normal.logpdf(y[rows], mean=a - 26 + mu_base[rows], cov=np.eye(rows.sum()) * s**2)
            for a, s in zip(post["intercept"].values, post["residual_sd"].values)
        ]
        got = ll.sel(participant=f"P{p:03d}").stack(sample=("chain", "draw")).values
        np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_grouped_loo_is_psis_on_the_participant_sums():
    idata = trial_idata(seed=22, n=60)
    res = dl.loo_participants(idata)
    manual = az.InferenceData(posterior=idata.posterior, log_likelihood=xr.Dataset({"y": dl.participant_log_likelihood(idata)}))
    ref = az.loo(manual, pointwise=True)
    np.testing.assert_allclose(res.elpd_i, ref.loo_i.values)
    assert res.elpd == pytest.approx(ref.elpd_loo) and res.se == pytest.approx(ref.se)
    # the posterior is tight, so each participant's elpd is close to its log density at the posterior mean
    post = idata.posterior.mean(("chain", "draw"))
    y, pid = idata.observed_data["y"].values, idata.constant_data["obs_participant"].values
    week, treated = idata.constant_data["obs_week"].values, arm_of(idata)
    mu = float(post["intercept"]) - 26 + 26 - 1.2 * week - treated[pid] * week / 8
    point = pd.Series(stats.norm.logpdf(y, mu, float(post["residual_sd"]))).groupby(pid).sum().values
    np.testing.assert_allclose(res.elpd_i, point, atol=0.25)
    assert res.level == "participant" and len(res.elpd_i) == 60 and res.reliable


def test_high_pareto_k_is_never_silent():
    idata = trial_idata(seed=23, n=30)
    res = dl.loo_participants(idata)
    res.pareto_k[:3] = 0.9
    assert not res.reliable and "unreliable" in res.text()
    table = compare({"a": res, "b": dl.loo_participants(trial_idata(seed=23, n=30, pred_sd=5))})
    assert not table.loc["a", "reliable"]
    assert "Caution" in plain_language(table)


def test_remedy_chooses_refits_or_kfold(monkeypatch):
    idata = trial_idata(seed=24, n=30)
    base = dl.loo_participants(idata)

    class Design:
        participants = np.array([f"P{i:03d}" for i in range(30)])
        obs_participant = idata.constant_data["obs_participant"].values
        arm_idx = arm_of(idata)
        y = idata.observed_data["y"].values
        n_participants = 30

    calls = {}
    monkeypatch.setattr(dl, "heldout_elpd", lambda design, build, groups, settings, quiet=True: calls.setdefault("groups", groups) and np.full(len(groups), -9.0))
    few = dl.LooResult(**{**base.__dict__, "pareto_k": np.where(np.arange(30) < 2, 0.9, 0.1)})
    fixed = dl.remedy(few, Design, None, None)
    assert fixed.reliable and list(fixed.method[:2]) == ["refit", "refit"] and (fixed.elpd_i[:2] == -9).all()
    assert [sorted(set(Design.obs_participant[g])) for g in calls["groups"]] == [[0], [1]]  # each participant's own rows
    monkeypatch.setattr(dl, "grouped_kfold", lambda design, build, settings, k, level, quiet=True: dl.LooResult(level, base.units, base.elpd_i - 1, np.full(30, np.nan), np.array(["kfold"] * 30, dtype=object)))
    many = dl.LooResult(**{**base.__dict__, "pareto_k": np.full(30, 0.9)})
    kf = dl.remedy(many, Design, None, None)
    assert kf.reliable and set(kf.method) == {"kfold"} and kf.elpd == pytest.approx(base.elpd - 30)


def test_kfold_groups_are_a_stratified_partition():
    class Design:
        arm_idx = np.array([0, 1, 2] * 20)
        n_participants = 60

    folds = dl.kfold_groups(Design, 5, seed=3)
    allp = np.concatenate(folds)
    assert sorted(allp) == list(range(60)) and len(folds) == 5
    assert all(abs((Design.arm_idx[f] == a).sum() - len(f) / 3) <= 1 for f in folds for a in range(3))  # every arm in every fold
    assert [list(f) for f in folds] == [list(f) for f in dl.kfold_groups(Design, 5, seed=3)]


# ---------------------------------------------------------------- comparison


@pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.sort_values")  # inside az.compare
def test_comparison_ranks_true_model_first_and_agrees_with_arviz():
    truth = trial_idata(seed=31, n=150)
    y = truth.observed_data["y"].values
    wide = trial_idata(seed=32, n=150, pred_sd=6.5, y=y)  # same observations, wrong (too wide) predictive
    shifted = trial_idata(seed=33, n=150, shift={(1.0, 8.0): 2.5, (0.0, 8.0): 2.5}, y=y)
    fits = {"wide": wide, "truth": truth, "shifted": shifted}
    check_comparable(fits)
    for level, fn in (("participant", dl.loo_participants), ("visit", dl.loo_visits)):
        table = compare({n: fn(i) for n, i in fits.items()})
        assert table.index[0] == "truth" and table.attrs["level"] == level
        assert table["elpd_diff"].iloc[1] > CLEAR_DIFF_SE * table["dse"].iloc[1]  # a clear case
        assert "'truth' is clearly preferred" in plain_language(table)
        if level == "visit":
            ref = az.compare(fits, method="stacking")
            for n in fits:
                assert table.loc[n, "elpd"] == pytest.approx(ref.loc[n, "elpd_loo"], rel=1e-9)
                assert table.loc[n, "se"] == pytest.approx(ref.loc[n, "se"], rel=1e-9)
                assert table.loc[n, "dse"] == pytest.approx(ref.loc[n, "dse"], rel=1e-6, abs=1e-9)
                assert table.loc[n, "weight"] == pytest.approx(ref.loc[n, "weight"], abs=0.02)


def test_close_models_are_not_called_different():
    y = trial_idata(seed=41).observed_data["y"].values
    a, b = trial_idata(seed=41), trial_idata(seed=42, y=y, pred_sd=4.05)
    table = compare({"a": dl.loo_visits(a), "b": dl.loo_visits(b)})
    assert table["elpd_diff"].iloc[1] < CLEAR_DIFF_SE * table["dse"].iloc[1]
    assert "do not separate them" in plain_language(table)


def test_models_on_different_observations_are_refused():
    a = trial_idata(seed=51)
    change = trial_idata(seed=51)
    change.observed_data["y"] = change.observed_data["y"] - 26  # e.g. change scores
    other = trial_idata(seed=51, checksum="different-data")
    with pytest.raises(ComparisonError, match="different observed outcome values"):
        check_comparable({"a": a, "change": change})
    with pytest.raises(ComparisonError, match="checksums differ"):
        check_comparable({"a": a, "other": other})
    assert comparable_groups({"a": a, "b": trial_idata(seed=51), "change": change, "other": other}) == [["a", "b"], ["change"], ["other"]]
    with pytest.raises(ComparisonError, match="different participants"):
        compare({"a": dl.loo_participants(a), "small": dl.loo_participants(trial_idata(seed=52, n=50))})


def test_loo_pit_weights_computed_once_match_arviz():
    from diagnostics.ppc import loo_pit_log_weights, loo_pit_values

    idata = trial_idata(seed=13)
    expected = np.asarray(az.loo_pit(idata, y="y"), dtype=float).ravel()
    np.testing.assert_allclose(loo_pit_values(idata), expected, rtol=1e-12, atol=1e-14)  # sums of the same weights
    assert loo_pit_log_weights(idata) is loo_pit_log_weights(idata)  # cached for the plot
    other = trial_idata(seed=14)
    assert loo_pit_log_weights(other) is not loo_pit_log_weights(idata)


# ---------------------------------------------------------------- sampler settings and defined diagnostics
SETTINGS_GRID = [(1, 9), (1, 10), (1, 39), (1, 40), (2, 19), (2, 20), (4, 9), (4, 10), (3, 500)]


@pytest.mark.parametrize("chains, draws", SETTINGS_GRID)
def test_settings_are_refused_before_a_fit_or_every_diagnostic_is_defined(chains, draws, tmp_path):
    """What fit_trial accepts, the diagnostics, the comparison and the report can handle; the rest is refused up front."""
    from dataclasses import replace

    from deptrial.preflight import MIN_DRAWS_PER_CHAIN, MIN_DRAWS_TOTAL, check_settings
    from diagnostics.outputs import write_outputs
    from diagnostics.run import diagnose_run
    from inference.sampling import SamplerSettings

    settings = replace(SamplerSettings(), chains=chains, draws=draws)
    if draws < MIN_DRAWS_PER_CHAIN or chains * draws < MIN_DRAWS_TOTAL:
        with pytest.raises(ValueError, match="too few"):
            check_settings(settings)
        return
    check_settings(settings)
    fits = {"a": trial_idata(seed=1, n=40, chains=chains, draws=draws), "b": trial_idata(seed=2, n=40, chains=chains, draws=draws, pred_sd=6.0)}
    run = diagnose_run(fits, log=lambda _: None)
    assert set(run.comparisons) == {"participant", "visit"}
    for m in run.models.values():
        text = m.verdict.text()
        assert ("R-hat not available" in text) == (chains == 1) and "nan (" not in text
        if chains == 1:  # one chain cannot confirm convergence
            assert not m.verdict.ok and "rhat" in m.verdict.flags
    report = write_outputs(run, tmp_path).read_text()
    assert "Model comparison" in report


def test_models_are_compared_on_one_quantity_when_only_some_have_the_integrated_form():
    """A fit with integrated densities next to one without: both are scored on the conditional log-likelihood, and the note says why."""
    from diagnostics.run import diagnose_run

    a = trial_idata(seed=3, n=40)
    b = trial_idata(seed=4, n=40, pred_sd=5.0, y=a.observed_data["y"].values)
    ll = a.log_likelihood["y"]
    post = np.flatnonzero(a.constant_data["obs_week"].values > 0)
    a.log_likelihood["y_visit"] = ll.isel(obs=post).rename(obs="scored_visit").assign_coords(scored_visit=post)
    a.log_likelihood["y_participant"] = dl.participant_log_likelihood(a).rename(participant="scored_participant")
    alone = diagnose_run({"a": a}, log=lambda _: None)
    assert alone.models["a"].loo["visit"].integrated and len(alone.models["a"].loo["visit"].units) == len(post)
    both = diagnose_run({"a": a, "b": b}, log=lambda _: None)
    assert not any(m.loo[level].integrated for m in both.models.values() for level in ("visit", "participant"))
    assert any("because b has no integrated form" in n for n in both.comparison_notes)
    assert set(both.comparisons) == {"participant", "visit"}


def test_fits_with_integrated_densities_on_the_same_units_are_comparable_whatever_their_outcome():
    """An MMRM (observed 'change') and a trajectory model ('y') scored on the same participants and visits of the
    same data are compared; on other units, or without the densities, they are not."""
    a = trial_idata(seed=5, n=30)
    post = np.flatnonzero(a.constant_data["obs_week"].values > 0)
    a.log_likelihood["y_visit"] = a.log_likelihood["y"].isel(obs=post).rename(obs="scored_visit").assign_coords(scored_visit=post)
    a.log_likelihood["y_participant"] = dl.participant_log_likelihood(a).rename(participant="scored_participant")
    change = a.copy()
    del change.observed_data["y"]
    change.observed_data["change"] = ("obs", np.zeros(len(post)))
    assert comparable_groups({"traj": a, "mmrm": change}) == [["traj", "mmrm"]]
    fewer = change.copy()
    fewer.log_likelihood = fewer.log_likelihood.isel(scored_visit=slice(1, None))
    assert comparable_groups({"traj": a, "mmrm": fewer}) == [["traj"], ["mmrm"]]


def test_integrated_results_with_high_k_are_replaced_by_integrated_kfold(monkeypatch):
    """On the integrated densities, --kfold K replaces PSIS by grouped K-fold on the same quantity for every model of
    the comparison; without it the note says how."""
    from types import SimpleNamespace

    from diagnostics import remedies as dr

    idata = trial_idata(seed=25, n=20)
    base = dl.loo_participants(idata)
    bad = dl.LooResult(**{**base.__dict__, "pareto_k": np.where(np.arange(20) < 3, 0.9, 0.1), "integrated": True})
    good = dl.LooResult(**{**base.__dict__, "integrated": True})
    models = {n: SimpleNamespace(loo={"participant": r}) for n, r in (("a", bad), ("b", good))}
    notes = dr.apply_remedies(["a", "b"], models, None, {}, None, "participant", kfold=0, log=lambda _: None)
    assert "less reliable" in notes[0] and "--kfold 5" in notes[0] and models["a"].loo["participant"] is bad
    calls = []

    def fake(design, build, settings, k):
        calls.append(build)
        return dl.LooResult("participant", base.units, base.elpd_i - 1, np.full(20, np.nan), np.array(["kfold"] * 20, dtype=object), integrated=True)

    monkeypatch.setattr(dr, "grouped_kfold_integrated", fake)
    settings = SimpleNamespace(chains=2, draws=1000, seed=1)
    monkeypatch.setattr(dr, "refit_settings", lambda s: s)
    notes = dr.apply_remedies(["a", "b"], models, object(), {"a": "build a", "b": "build b"}, settings, "participant", kfold=5, log=lambda _: None)
    assert calls == ["build a", "build b"] and "grouped 5-fold" in notes[0]
    assert all(set(m.loo["participant"].method) == {"kfold"} and m.loo["participant"].integrated for m in models.values())


# ---------------------------------------------------------------- estimands of the effect rows, sensitivity options


def effect_posterior(variables: dict, rng, weeks=(0, 2, 4, 6, 8, 12, 16), markers=("il6", "crp", "bdnf"), chains=2, draws=100,
                     active=("nac",)):
    """A posterior of effect summaries: {name: dims after (chain, draw)} filled with normal draws."""
    coords = {"week": list(weeks), "marker": list(markers), "active_arm": list(active)}
    data = {name: (("chain", "draw", *dims), rng.normal(size=(chains, draws, *[len(coords[d]) for d in dims])))
            for name, dims in variables.items()}
    return az.InferenceData(posterior=xr.Dataset(data, coords={k: v for k, v in coords.items() if any(k in d for d in variables.values())}))


def test_each_kind_of_effect_row_states_its_estimand(small_trial):
    """Generic rows (trajectory models and the MMRM), the moderation levels and the mediation rows: the estimand
    columns follow every other column, and each names population, variable and week, handling and summary."""
    from diagnostics.estimates import model_estimates
    from models import build_design, get
    from models.effects import ESTIMAND_COLUMNS

    design = build_design(small_trial)
    rng = np.random.default_rng(5)
    idata = effect_posterior({"nac_effect": ("active_arm", "week"), "placebo_change": ("week",)}, rng)
    trajectory, mmrm = model_estimates(idata, get("treatment"), design), model_estimates(idata, get("mmrm"), design)
    assert list(trajectory.columns[-4:]) == list(ESTIMAND_COLUMNS) and list(trajectory.columns[:3]) == ["quantity", "week", "marker"]
    assert list(trajectory["variable"]) == ["MADRS score at week 12 (end of treatment)", "MADRS score at week 16 (off-treatment follow-up)",
                                            "MADRS change from baseline at week 12 (end of treatment)"]
    assert list(mmrm["variable"])[:2] == ["MADRS change from baseline at week 12 (end of treatment)",
                                           "MADRS change from baseline at week 16 (off-treatment follow-up)"]
    assert mmrm["summary"].iloc[0] == "difference in mean change from baseline (nac - placebo), adjusted for the baseline score"
    assert "treatment policy" not in trajectory["intercurrent_events"].iloc[0] and "treatment policy" in trajectory["intercurrent_events"].iloc[1]
    assert pd.Series(trajectory["mean"]).tolist() == pytest.approx([idata.posterior["nac_effect"].sel(week=w).values.mean() for w in (12, 16)]
                                                                  + [idata.posterior["placebo_change"].sel(week=12).values.mean()])

    moderation = model_estimates(effect_posterior({"nac_effect": ("active_arm", "week"), "placebo_change": ("week",),
                                                   "nac_marker_moderation": ("active_arm", "marker"),
                                                   "nac_moderation_per_doubling": ("active_arm", "marker")}, rng), get("moderation"), design)
    assert list(moderation.columns[-4:]) == list(ESTIMAND_COLUMNS) and moderation[list(ESTIMAND_COLUMNS)].notna().all().all()
    level = moderation[moderation["quantity"].str.contains("baseline crp 3 mg/L")].iloc[0]
    assert level["summary"].startswith("difference in means (nac - placebo) at the row's level of baseline crp")
    assert moderation["summary"].iloc[-1] == "change in the nac - placebo difference in means per doubling of baseline bdnf"

    mediation_vars = {"total_effect": ("active_arm",), "direct_effect": ("active_arm",), "indirect_effect_total": ("active_arm",),
                      "indirect_effect": ("active_arm", "marker"), "mediator_per_log_unit": ("marker",),
                      "proportion_mediated_total": ("active_arm",), "proportion_mediated": ("active_arm", "marker"),
                      "nac_ratio": ("active_arm", "marker")}
    med = model_estimates(effect_posterior(mediation_vars, rng), get("mediation"), design).set_index("quantity")
    assert list(med.columns[-4:]) == list(ESTIMAND_COLUMNS)
    summaries = med["summary"].tolist()
    assert summaries[:3] == ["total effect: difference in mean change from baseline (nac - placebo)",
                             "natural direct effect: difference in mean change not through the markers (nac - placebo)",
                             "natural indirect effect through all markers (nac - placebo)"]
    assert "natural indirect effect through il6 (nac - placebo)" in summaries and "proportion of the total effect mediated by crp" in summaries
    assert "ratio of geometric means (nac / placebo), given the baseline markers" in summaries
    assert (med["population"] == "participants with a biomarker value or a week-12 MADRS score").all()
    ratios = model_estimates(effect_posterior({"nac_ratio": ("active_arm", "marker")}, rng), get("biomarker_change"), design)
    assert ratios["variable"].tolist() == [f"{m} at week 12 (end of treatment), {u}" for m, u in (("il6", "pg/mL"), ("crp", "mg/L"), ("bdnf", "ng/mL"))]
    assert (ratios["population"] == "participants with at least one biomarker value (the biomarker sub-study)").all()


def test_estimand_wording_by_week_and_refusals():
    from data import DatasetMeta
    from diagnostics.sensitivity_analyses import check_sensitivity_options, unsupported
    from models.effects import estimand, phase

    meta = DatasetMeta(weeks=(0, 4, 8, 12), treatment_end=8)  # a trial with its follow-up at week 12
    assert [phase(w, meta) for w in meta.weeks] == ["baseline", "during treatment", "end of treatment", "off-treatment follow-up"]
    assert estimand(meta, 12, "difference")["intercurrent_events"].startswith("end of treatment (week 8): treatment policy")
    assert estimand(meta, 8, "difference")["variable"] == "MADRS score at week 8 (end of treatment)"
    with pytest.raises(ValueError, match="unknown estimand kind 'odds'"):
        estimand(meta, 8, "odds")
    assert check_sensitivity_options([2, "4"], 0.9) == ((2.0, 4.0), 0.9) and check_sensitivity_options(None, 0.975) == (None, 0.975)
    for deltas, threshold in (([-1], 0.975), ([], 0.975), (["x"], 0.975), (None, 1.0), (None, 0.3)):
        with pytest.raises(ValueError):
            check_sensitivity_options(deltas, threshold)
    fit = az.from_dict(posterior={"nac_ratio": np.zeros((1, 5))})
    fit.posterior.attrs["model"] = "biomarker_change"
    notes = unsupported(fit, None, "biomarker_change")
    assert set(notes) == {"sensitivity", "tipping_point", "responders"} and "has no visit scores" in notes["responders"]
