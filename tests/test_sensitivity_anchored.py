"""The two variances of the reference-based strategies (conditional mean, information anchored) and the weeks the
sensitivity analyses report (--sensitivity-weeks).

Theory (diagnostics/sensitivity.py): the information-anchored draws are the MAR draws moved by the anchoring delta
x the imputed share, so their mean is the strategy's and their SD the MAR SD; the conditional-mean SD of J2R is
(1 - share) x the MAR SD, and CR's and CIR's are smaller than MAR's too. The unit tier checks this on the bundled
trial and on a simulated trial with heavy dropout, with the MMRM's exact posterior of its mean parameters given its
covariance (flat prior; no sampling), and checks the anchoring against an independent computation: Rubin's rules on a
multiple imputation under J2R from the same posterior (what Cro, Carpenter and Kenward 2019 show to be approximately
information anchored). A tiny fit with --sensitivity-weeks and diagnose.py on it: tests/test_submission_tables.py (the
fit its two-arm tables come from); the slow tier repeats the theory on real MMRM fits.
"""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from test_sensitivity import _trial
from test_submission_tables import check_ard_against_sensitivity, check_files

import deptrial
import diagnose
import fit
from data import DEFAULT_DATASET, TrialParameters, load_dataset, simulate_trial
from data.ice import IceTable
from deptrial.console import sensitivity_text
from diagnostics.csr_tables import reported_weeks, saved_submission_tables, submission_tables
from diagnostics.outputs import write_outputs
from diagnostics.report import sensitivity_section
from diagnostics.run import RunDiagnostics
from diagnostics.sensitivity import (
    REFERENCE_BASED,
    arm_strategy_effects,
    information_anchored,
    model_pieces,
    sensitivity_table,
)
from diagnostics.sensitivity_analyses import (
    SensitivityOptions,
    check_sensitivity_options,
    check_sensitivity_weeks,
    model_sensitivity,
    saved_sensitivity,
)
from inference.idata_io import save_idata
from models import build_design
from models.mmrm import mmrm_data

# ---------------------------------------------------------------- the MMRM's posterior given its covariance


def _pairwise_covariance(change: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sigma of the visits' changes: per-visit least-squares residuals on x, their pairwise covariances (eigenvalues kept
    positive)."""
    nv, q = change.shape[1], x.shape[1]
    res = np.full_like(change, np.nan)
    for v in range(nv):
        o = ~np.isnan(change[:, v])
        res[o, v] = change[o, v] - x[o] @ np.linalg.lstsq(x[o], change[o, v], rcond=None)[0]
    sigma = np.empty((nv, nv))
    for i in range(nv):
        for j in range(nv):
            both = ~np.isnan(res[:, i]) & ~np.isnan(res[:, j])
            sigma[i, j] = (res[both, i] * res[both, j]).sum() / max(both.sum() - q, 1)
    w, u = np.linalg.eigh(sigma)
    return (u * np.maximum(w, 1e-3 * w.max())) @ u.T


def gls_posterior(design, draws: int = 2000, chains: int = 2, seed: int = 1):
    """The MMRM (change from baseline at each post-baseline visit ~ visit x (1, arm, centred baseline), unstructured
    Sigma) as a posterior: Sigma a pairwise estimate, held fixed; the mean parameters drawn from their exact posterior
    given Sigma under a flat prior, N(beta_GLS, (sum X_i' Sigma_OO^-1 X_i)^-1), over the participants' observed visits.
    Returns (InferenceData with nac_effect, placebo_change, visit_sd, visit_corr and the MMRM's mean parameters
    visit_mean, nac_visit_effect, baseline_slope (about the MMRM's baseline centre); the pieces for `rubin`)."""
    wide = design.wide_scores()
    keep = ~np.isnan(wide[:, 0])
    base, change = wide[keep, 0], wide[keep, 1:] - wide[keep, :1]
    arm = np.asarray(design.arm_idx)[keep].astype(int)
    n_active, nv = design.n_active, change.shape[1]
    x = np.column_stack([np.ones(len(base)), *(arm == a for a in range(1, n_active + 1)), base - base.mean()]).astype(float)
    q = x.shape[1]
    sigma = _pairwise_covariance(change, x)
    info, score = np.zeros((q * nv, q * nv)), np.zeros(q * nv)
    for i in range(len(base)):
        o = np.flatnonzero(~np.isnan(change[i]))
        if len(o):
            rows = np.zeros((len(o), q * nv))
            for r, v in enumerate(o):
                rows[r, q * v: q * v + q] = x[i]
            w = np.linalg.inv(sigma[np.ix_(o, o)])
            info += rows.T @ w @ rows
            score += rows.T @ w @ change[i, o]
    cov = np.linalg.inv(info)
    s = chains * draws
    beta = np.random.default_rng(seed).multivariate_normal(cov @ score, cov, size=s).reshape(s, nv, q)
    nac = np.transpose(beta[:, :, 1:1 + n_active], (0, 2, 1))  # draws x active arm x visit
    sd = np.sqrt(np.diag(sigma))
    shape = lambda a: a.reshape((chains, draws) + a.shape[1:])  # noqa: E731
    slope = beta[:, :, -1]
    visit_mean = beta[:, :, 0] + slope * (mmrm_data(design).baseline_center - base.mean())  # the same mean, the MMRM's centre
    post = xr.Dataset({
        "visit_mean": (("chain", "draw", "visit"), shape(visit_mean)),
        "nac_visit_effect": (("chain", "draw", "active_arm", "visit"), shape(nac)),
        "baseline_slope": (("chain", "draw", "visit"), shape(slope)),
        "nac_effect": (("chain", "draw", "active_arm", "week"), shape(np.concatenate([np.zeros((s, n_active, 1)), nac], axis=2))),
        "placebo_change": (("chain", "draw", "week"), shape(np.concatenate([np.zeros((s, 1)), beta[:, :, 0]], axis=1))),
        "visit_sd": (("chain", "draw", "visit"), shape(np.broadcast_to(sd, (s, nv)).copy())),
        "visit_corr": (("chain", "draw", "visit", "visit2"), shape(np.broadcast_to(sigma / np.outer(sd, sd), (s, nv, nv)).copy())),
    }, coords={"chain": np.arange(chains), "draw": np.arange(draws), "week": design.weeks, "visit": design.weeks[1:],
               "visit2": design.weeks[1:], "active_arm": list(design.active_arms)})
    post.attrs["model"] = "mmrm"
    return az.InferenceData(posterior=post), {"beta": beta, "sigma": sigma, "x": x, "change": change, "arm": arm}


def rubin(parts: dict, strategy: str, visit: int, imputations: int = 200, seed: int = 2) -> tuple[float, float]:
    """Multiple imputation of every missing change (arm 1 against control) under MAR or J2R from the posterior draws of
    `gls_posterior`, jointly given the participant's observed changes (J2R: the control mean after the last observed
    visit for the active arm), an ANCOVA (change at `visit` ~ arm + baseline) on each completed data set, Rubin's rules:
    (pooled estimate, sqrt(W + (1 + 1/M) B))."""
    rng = np.random.default_rng(seed)
    beta, sigma, x, change, arm = parts["beta"], parts["sigma"], parts["x"], parts["change"], parts["arm"]
    members = (arm == 0) | (arm == 1)
    observed = ~np.isnan(change)
    nv = change.shape[1]
    last = np.where(observed.any(1), np.max(np.where(observed, np.arange(nv), -1), axis=1), -1)
    patterns: dict[tuple, list[int]] = {}
    for i in np.flatnonzero(members & ~observed.all(1)):
        patterns.setdefault((int(arm[i]), tuple(observed[i])), []).append(i)
    plans = []
    for (a, mask), who in patterns.items():
        o, m = np.flatnonzero(mask), np.flatnonzero(~np.asarray(mask))
        gain = sigma[np.ix_(m, o)] @ np.linalg.inv(sigma[np.ix_(o, o)]) if len(o) else np.zeros((len(m), 0))
        chol = np.linalg.cholesky(sigma[np.ix_(m, m)] - gain @ sigma[np.ix_(o, m)])
        plans.append((a, np.asarray(who), o, m, gain, chol))
    control_x = x.copy()
    control_x[:, 1:-1] = 0
    design = np.column_stack([np.ones(members.sum()), arm[members] == 1, x[members, -1]]).astype(float)
    estimates, within = [], []
    for k in rng.choice(len(beta), imputations, replace=False):
        own, reference = x @ beta[k].T, control_x @ beta[k].T  # participant x visit means
        y = change.copy()
        for a, who, o, m, gain, chol in plans:
            nu = own[who].copy()
            if strategy == "J2R" and a > 0:
                after = np.arange(nv)[None, :] > last[who][:, None]
                nu[after] = reference[who][after]
            mean = nu[:, m] + (change[np.ix_(who, o)] - nu[:, o]) @ gain.T
            y[np.ix_(who, m)] = mean + rng.standard_normal(mean.shape) @ chol.T
        outcome = y[members, visit]
        coef = np.linalg.lstsq(design, outcome, rcond=None)[0]
        resid = outcome - design @ coef
        estimates.append(coef[1])
        within.append(resid @ resid / (len(outcome) - 3) * np.linalg.inv(design.T @ design)[1, 1])
    estimates = np.asarray(estimates)
    return float(estimates.mean()), float(np.sqrt(np.mean(within) + (1 + 1 / imputations) * estimates.var(ddof=1)))


# ---------------------------------------------------------------- the trials


@pytest.fixture(scope="module")
def bundled():
    ds = load_dataset(DEFAULT_DATASET)
    design = build_design(ds)
    return ds, design, *gls_posterior(design)


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """The bundled trial's parameters with 60% dropout by the last visit instead of 25%."""
    folder = tmp_path_factory.mktemp("heavy") / "t"
    simulate_trial(TrialParameters(seed=11, dropout_by_last_week=0.6)).write(folder)
    ds = load_dataset(folder)
    design = build_design(ds)
    return ds, design, *gls_posterior(design)


@pytest.fixture(scope="module")
def three_arm(tmp_path_factory):
    """45 participants in three arms with heavy dropout, the MMRM posterior given Sigma, and the dataset as a saved fit
    carries it."""
    ds, design = _trial(tmp_path_factory.mktemp("anch") / "k3", n_participants=45, seed=4, dropout_by_last_week=0.5,
                        intermittent_missing=0.12, treatment_arm="low", more_arms=(("high", -3.0, -3.5),))
    idata, _ = gls_posterior(design, draws=250)
    idata.posterior.attrs["data_source"] = str(ds.attrs["source"])
    idata.add_groups(trial_data=ds)
    return ds, design, idata


def _sensitivity(idata, design, options: SensitivityOptions):
    """model_sensitivity without the responders and the prior sensitivity (not this module's subject)."""
    import diagnostics.sensitivity_analyses as analyses

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(analyses, "prior_sensitivity_table", lambda idata: pd.DataFrame())
        mp.setattr(analyses, "responder_table", lambda *args, **kwargs: pd.DataFrame())
        return model_sensitivity("mmrm", idata, design, options)


# ---------------------------------------------------------------- the anchoring


@pytest.mark.unit
def test_information_anchored_draws_are_the_mar_draws_moved_to_the_strategys_mean(three_arm, tmp_path):
    """Per active arm, strategy and visit: anchored - MAR is one constant, the anchoring delta x the imputed share;
    the anchored mean is the strategy's, the SD is MAR's; with intercurrent events too. Nobody imputed: delta 0."""
    ds, design, idata = three_arm
    pieces = model_pieces(idata, design, "mmrm")
    listed = [str(p) for p, a in zip(ds["participant"].values, ds["arm_index"].values) if a == 2][:3]
    for ice in (None, IceTable(tuple(listed), (4, 8, 12), ("CR", "MAR", "J2R"), source="ice.csv")):
        effects = arm_strategy_effects(pieces, design, ice=ice)
        for arm in design.active_arms:
            mar = effects[(arm, "MAR")]
            assert (mar.share_treatment > 0).all()
            for strategy in REFERENCE_BASED:
                rb = effects[(arm, strategy)]
                anchored = information_anchored(rb, mar)
                assert anchored.variance == "information_anchored" and anchored.strategy == strategy and anchored.arm == arm
                shift = anchored.draws - mar.draws
                np.testing.assert_allclose(shift, shift[:1].repeat(len(shift), axis=0), atol=1e-12)
                np.testing.assert_allclose(shift[0], anchored.anchoring_delta * mar.share_treatment, atol=1e-12)
                np.testing.assert_allclose(anchored.draws.mean(axis=0), rb.draws.mean(axis=0), atol=1e-10)
                np.testing.assert_allclose(anchored.draws.std(axis=0), mar.draws.std(axis=0), rtol=1e-12)
                assert (np.abs(anchored.anchoring_delta) > 0).all()
    with pytest.raises(ValueError, match="shift the MAR draws"):
        information_anchored(effects[("low", "J2R")], effects[("low", "CR")])
    with pytest.raises(ValueError, match="not the same arm"):
        information_anchored(effects[("low", "J2R")], effects[("high", "MAR")])
    # nobody drops out (intermittent gaps only): nothing is imputed after dropout, every anchoring delta is 0 and
    # both variances of every strategy are MAR's draws
    _, complete = _trial(tmp_path / "c", n_participants=30, seed=8, dropout_by_last_week=1e-12, intermittent_missing=0.15)
    effects = arm_strategy_effects(model_pieces(gls_posterior(complete, draws=100)[0], complete, "mmrm"), complete)
    mar = effects[("nac", "MAR")]
    assert (mar.share_treatment == 0).all()
    for strategy in REFERENCE_BASED:
        anchored = information_anchored(effects[("nac", strategy)], mar)
        assert (anchored.anchoring_delta == 0).all()
        np.testing.assert_array_equal(anchored.draws, mar.draws)
        np.testing.assert_allclose(effects[("nac", strategy)].draws, mar.draws, atol=1e-12)


@pytest.mark.unit
@pytest.mark.parametrize("trial", ["bundled", "heavy"])
def test_theory_anchored_sd_is_the_mar_sd_and_conditional_mean_sd_is_smaller(trial, request):
    """sensitivity.csv at the end of treatment and the follow-up: both variances of each strategy have the same mean;
    the information-anchored SD is the MAR SD (within 10%: to float error); the conditional-mean SD is smaller, J2R's
    exactly (1 - share) x MAR's; J2R's anchoring delta is minus the MAR difference (J2R is MAR with the active arm's
    imputed scores worse by the arm's effect)."""
    ds, design, idata, _ = request.getfixturevalue(trial)
    table = sensitivity_table(idata, design, model="mmrm")
    assert set(table["variance"]) == {"conditional_mean", "information_anchored"}
    measured = {}
    for week in (12, 16):
        at = table[table["week"] == week].set_index(["strategy", "variance"])
        mar = at.loc[("MAR", "conditional_mean")]
        share = mar["dropout_share"]
        assert share > (0.45 if trial == "heavy" else 0.15)
        for strategy in REFERENCE_BASED:
            cm, ia = at.loc[(strategy, "conditional_mean")], at.loc[(strategy, "information_anchored")]
            assert ia["mean"] == pytest.approx(cm["mean"], abs=1e-10)
            assert abs(ia["sd"] / mar["sd"] - 1) < 0.10
            assert ia["sd"] == pytest.approx(mar["sd"], rel=1e-9)
            assert cm["sd"] < mar["sd"]
            assert ia["anchoring_delta"] == pytest.approx((cm["mean"] - mar["mean"]) / share, rel=1e-9)
            assert ia["p_below_0"] != cm["p_below_0"] or ia["p_below_0"] in (0.0, 1.0)
            measured[(week, strategy)] = (mar["sd"], cm["sd"], ia["sd"])
        j2r = at.loc[("J2R", "conditional_mean")]
        assert j2r["sd"] == pytest.approx((1 - share) * mar["sd"], rel=1e-9)
        assert at.loc[("J2R", "information_anchored"), "anchoring_delta"] == pytest.approx(-mar["mean"], rel=1e-9)
    # the more is imputed, the smaller the conditional-mean SD against MAR's: heavy dropout shrinks J2R's below 2/3
    ratio = measured[(12, "J2R")][1] / measured[(12, "J2R")][0]
    assert ratio < (0.5 if trial == "heavy" else 0.8)


@pytest.mark.unit
@pytest.mark.parametrize("trial", ["bundled", "heavy"])
def test_rubins_rules_on_a_j2r_imputation_give_about_the_anchored_sd(trial, request):
    """An independent computation: multiple imputation (200 imputations) from the same posterior with Rubin's rules.
    Under MAR its SD is the MAR posterior SD (within 8%: Monte Carlo error); under J2R (approximately information anchored,
    Cro et al. 2019) its SD is far above the conditional-mean SD and within 15% of the information-anchored (= MAR) SD
    (measured, seeds 2-11: 0.99 to 1.01 of it on the bundled trial, 0.88 to 0.92 with heavy dropout), and its estimate
    is the J2R posterior mean to within a fifth of an SD."""
    ds, design, idata, parts = request.getfixturevalue(trial)
    table = sensitivity_table(idata, design, model="mmrm", weeks=[12], deltas=()).set_index(["strategy", "variance"])
    visit = list(design.weeks[1:]).index(12)
    mar_mean, mar_sd = rubin(parts, "MAR", visit)
    j2r_mean, j2r_sd = rubin(parts, "J2R", visit)
    assert abs(mar_sd / table.loc[("MAR", "conditional_mean"), "sd"] - 1) < 0.08
    cm, ia = table.loc[("J2R", "conditional_mean")], table.loc[("J2R", "information_anchored")]
    assert abs(j2r_sd / ia["sd"] - 1) < 0.15
    assert j2r_sd - cm["sd"] > 0.6 * (ia["sd"] - cm["sd"])  # much nearer the anchored SD than the conditional-mean one
    assert abs(j2r_mean - cm["mean"]) < 0.2 * ia["sd"]
    assert abs(mar_mean - table.loc[("MAR", "conditional_mean"), "mean"]) < 0.2 * ia["sd"]


# ---------------------------------------------------------------- the weeks reported


@pytest.mark.unit
def test_weeks_are_whole_scheduled_post_baseline_visits_refused_otherwise(three_arm, tmp_path):
    ds, design, _ = three_arm
    assert check_sensitivity_weeks(None, design.weeks) is None
    assert check_sensitivity_weeks(["16", 12], design.weeks) == (12, 16)  # texts of whole numbers; in schedule order
    with pytest.raises(ValueError, match=r"week 5 is not a post-baseline scheduled visit of the trial \(k3\); the sensitivity "
                                         r"analyses can report weeks 2, 4, 6, 8, 12, 16"):
        check_sensitivity_weeks([12, 5], design.weeks, "k3")
    with pytest.raises(ValueError, match="week 0 is the baseline visit, not a post-baseline"):
        check_sensitivity_weeks([0], design.weeks)
    with pytest.raises(ValueError, match="weeks 5, 20 are not"):
        check_sensitivity_weeks([5, 20], design.weeks)
    for bad, why in (([12.5], "whole numbers"), (["x"], "whole numbers"), ([], "at least one week"), ([12, 12], "more than once")):
        with pytest.raises(ValueError, match=why):
            check_sensitivity_weeks(bad, design.weeks)
    with pytest.raises(ValueError, match="sensitivity_weeks applies only with sensitivity=True"):
        check_sensitivity_options(sensitivity=False, weeks=[12])
    # fit_trial refuses a week the trial does not schedule before any fit: nothing is written
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--sensitivity-weeks / sensitivity_weeks: week 10 is not .* weeks 2, 4, 6, 8, 12, 16"):
        deptrial.fit_trial(ds, ["mmrm"], out=out, sensitivity=True, sensitivity_weeks=[10])
    with pytest.raises(ValueError, match="applies only with sensitivity=True"):
        deptrial.fit_trial(ds, ["mmrm"], out=out, sensitivity_weeks=[12])
    assert not out.exists()
    # diagnose.py / rediagnose on a saved fit: checked against the saved trial before any work
    folder = tmp_path / "saved"
    save_idata(three_arm[2], folder / "mmrm" / "idata.nc")
    with pytest.raises(ValueError, match="week 3 is not a post-baseline scheduled visit"):
        deptrial.rediagnose(folder, sensitivity=True, sensitivity_weeks=[3])
    assert diagnose.main([str(folder), "--sensitivity", "--sensitivity-weeks", "0", "--quiet"]) == 2
    assert diagnose.main([str(folder), "--sensitivity-weeks", "12", "--quiet"]) == 2  # without --sensitivity
    assert sorted(p.name for p in (folder / "mmrm").iterdir()) == ["idata.nc"]
    with pytest.raises(ValueError, match="weeks: week 3 is not"):
        deptrial.api.sensitivity(three_arm[2], design, weeks=[3])


@pytest.mark.unit
def test_fit_py_refuses_bad_weeks_with_exit_2_naming_the_valid_ones(small_trial_dir, tmp_path, capsys):
    base = ["--data", str(small_trial_dir), "--model", "mmrm", "--out", str(tmp_path / "o"), "--quiet"]
    assert fit.main([*base, "--sensitivity", "--sensitivity-weeks", "12", "10"]) == 2
    err = capsys.readouterr().err
    assert "week 10 is not a post-baseline scheduled visit" in err and "weeks 2, 4, 6, 8, 12, 16" in err and "Traceback" not in err
    assert fit.main([*base, "--sensitivity", "--sensitivity-weeks", "twelve"]) == 2
    assert "--sensitivity-weeks must be weeks of the trial's schedule" in capsys.readouterr().err
    assert fit.main([*base, "--sensitivity-weeks", "12"]) == 2
    assert "--sensitivity-weeks applies only with --sensitivity" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.unit
def test_chosen_weeks_give_the_rows_tipping_points_report_console_and_table(three_arm, tmp_path):
    """SensitivityOptions(weeks=(12, 16)): sensitivity.csv at those weeks only (both variances), a tipping point per
    active arm and week, the report and the console at both weeks, the submission table a group of rows per week with
    a Visit column; read back from the folder, the same weeks and the same ARD."""
    ds, design, idata = three_arm
    sens = _sensitivity(idata, design, SensitivityOptions(deltas=(2.0,), weeks=(12, 16)))
    table, tipping = sens.tables["sensitivity"], sens.tables["tipping_point"]
    assert sens.weeks == (12, 16) == sens.report_weeks and sens.row_weeks == (12, 16)
    assert sorted(set(table["week"])) == [12, 16] and len(table) == 2 * (4 + 3 + 1) * 2  # contrasts x analyses x weeks
    assert list(tipping.groupby(["contrast", "week"], sort=False).groups) == [
        ("low - placebo", 12), ("low - placebo", 16), ("high - placebo", 12), ("high - placebo", 16)]
    assert len(sens.tipping_messages) == 4 and all(f"at week {w}" in m for m, w in zip(sens.tipping_messages, (12, 16, 12, 16)))
    html = sensitivity_section(sens)
    assert "<b>Week 12 (end of treatment)</b>" in html and "<b>Week 16 (off-treatment follow-up)</b>" in html
    assert "<b>Conditional mean</b>: the repeated-sampling variance" in html and "<b>Information anchored</b>" in html
    assert html.count("information anchored</td>") == 2 * 2 * 3  # weeks x contrasts x J2R, CR, CIR
    text = sensitivity_text(sens)
    assert "sensitivity at week 16, high - placebo: MAR" in text and "J2R" in text and "information anchored" in text
    # the submission table: from the ARD, at the tipping point's weeks
    tables = submission_tables("mmrm", idata, ds, mcid=1.5, sensitivity=sens, data_source="k3")
    assert reported_weeks(tables.ard, "mmrm") == [12, 16]
    assert set(tables.ard.loc[tables.ard["table"] == "sensitivity", "visit"].dropna()) == {12, 16}
    layout = tables.sensitivity()
    # per week 8 analyses and 2 tipping points (delta, factor)
    assert layout.header[1][0] == ("Visit", 1) and layout.left == 2 and layout.group_rows == (0, 10)
    assert layout.title[1] == "Variable: MADRS change from baseline at weeks 12 and 16"
    run = RunDiagnostics(title="t", data_source="k3", checksum="", generated="", data_summary={}, labels=("placebo", "low", "high"),
                         models={}, comparisons={}, plain_language={}, comparison_notes=[], figures={}, versions={},
                         submission={"mmrm": tables})
    folder = tmp_path / "out"
    write_outputs(run, folder)
    ard = check_files(folder, "mmrm", ["placebo", "low", "high"], [12, 16])
    check_ard_against_sensitivity(ard, table, tipping, "mmrm", ["placebo", "low", "high"])
    # read back from a results folder (diagnose.py without --sensitivity): the weeks, and the ARD recomputed
    save_idata(idata, folder / "mmrm" / "idata.nc")
    pd.DataFrame([{"quantity": "x", "p_below_-1.5": 0.5}]).to_csv(folder / "mmrm" / "estimates.csv", index=False)
    for name in ("sensitivity", "tipping_point"):
        sens.tables[name].to_csv(folder / "mmrm" / f"{name}.csv", index=False)
    (folder / "run.json").write_text(json.dumps({"models": {"mmrm": {}}, "sensitivity": {"ice": None, "weeks": [12, 16]}}))
    saved = saved_sensitivity(folder, {"mmrm": idata})["mmrm"]
    assert saved.weeks == (12, 16) and saved.row_weeks == (12, 16) and saved.tipping_messages == sens.tipping_messages
    again = saved_submission_tables(folder, {"mmrm": idata}, {"mmrm": saved})["mmrm"]
    assert again.notes == {}
    pd.testing.assert_frame_equal(again.ard, tables.ard)
    # the default: sensitivity.csv at every post-baseline week, the rest at the end of treatment
    default = _sensitivity(idata, design, SensitivityOptions(deltas=(2.0,)))
    assert default.weeks == (12,) and default.row_weeks is None
    assert sorted(set(default.tables["sensitivity"]["week"])) == [2, 4, 6, 8, 12, 16]
    assert set(default.tables["tipping_point"]["week"]) == {12}


# ---------------------------------------------------------------- the command lines (one tiny fit)


# ---------------------------------------------------------------- the slow tier: real fits


@pytest.mark.slow
def test_theory_on_real_mmrm_fits_of_the_bundled_and_a_heavy_dropout_trial(tmp_path):
    from inference.sampling import SamplerSettings

    folder = tmp_path / "heavy"
    simulate_trial(TrialParameters(seed=11, dropout_by_last_week=0.6)).write(folder)
    for data in (DEFAULT_DATASET, folder):
        run = deptrial.fit_trial(data, ["mmrm"], SamplerSettings(draws=1000, tune=1000, chains=2, seed=5), out=tmp_path / f"out_{data.name}",
                                 sensitivity=True, sensitivity_weeks=[12, 16])
        table = run.sensitivity["mmrm"]["sensitivity"]
        for week in (12, 16):
            at = table[table["week"] == week].set_index(["strategy", "variance"])
            mar = at.loc[("MAR", "conditional_mean")]
            for strategy in REFERENCE_BASED:
                assert abs(at.loc[(strategy, "information_anchored"), "sd"] / mar["sd"] - 1) < 0.10
                assert at.loc[(strategy, "conditional_mean"), "sd"] < mar["sd"]
