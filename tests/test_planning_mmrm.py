"""Planning on the trial's real analysis: the closed-form MMRM against an independent REML fit and against
the Bayesian MMRM, full visit schedules, entry screening, dropout mechanisms, the bias of the MAR
analysis under MNAR dropout, robust assurance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from planning import (
    AnalysisSettings,
    PlannedTrial,
    PlanSpec,
    Scenario,
    analytic_power,
    fixed_parameters,
    implied_mmrm,
    mmrm_effect,
    plan,
    simulate_trials,
)
from planning.analysis import analyse, ancova
from planning.mmrm_gls import fit_reml, pattern_stats


def unrounded(params):
    return replace(params, scale=replace(params.scale, integer_scores=False, score_min=None, score_max=None))


def small_trial(seed=3, n=60, weeks=(0, 4, 8, 12), mechanism="mar", dropout=0.4):
    """One simulated trial with dropout (a known MMRM truth, unrounded)."""
    params = unrounded(implied_mmrm(fixed_parameters(), weeks))
    trial = PlannedTrial(n // 2, weeks=weeks, dropout=dropout, dropout_mechanism=mechanism, dropout_score_effect=1.0)
    return simulate_trials(params, trial, Scenario("fixed", -2.0), 1, np.random.default_rng(seed), round_scores=False)


def direct_reml(change, attended, arm, baseline, n_visits, n_active=1):
    """The MMRM's REML maximised directly (scipy BFGS on the log-Cholesky factor of Sigma), participant
    by participant with explicit design matrices X_i (visits x V Q, Q = A + 2: intercept, arm indicators,
    centred baseline; arm: 0 control, a the a-th active arm).
    -1/2 [sum_i log|Sigma_i| + log|sum_i X_i' Sigma_i^-1 X_i| + sum_i r_i' Sigma_i^-1 r_i]."""
    keep = attended >= 1
    change, attended, arm, baseline = change[keep], attended[keep], arm[keep], baseline[keep]
    q = n_active + 2
    x = np.column_stack([np.ones(len(baseline)), *(arm == a for a in range(1, n_active + 1)), baseline - baseline.mean()]).astype(float)
    groups = []
    for k in range(1, n_visits + 1):
        rows = attended == k
        if rows.any():
            design = np.zeros((rows.sum(), k, q * n_visits))
            for v in range(k):
                design[:, v, q * v : q * v + q] = x[rows]
            groups.append((change[rows, :k], design))
    tril = np.tril_indices(n_visits)

    def reml(theta):
        lower = np.zeros((n_visits, n_visits))
        lower[tril] = np.where(tril[0] == tril[1], np.exp(theta), theta)
        sigma = lower @ lower.T
        h, g, logdet, parts = 0.0, 0.0, 0.0, []
        for y, design in groups:
            k = y.shape[1]
            w = np.linalg.inv(sigma[:k, :k])
            logdet += len(y) * np.linalg.slogdet(sigma[:k, :k])[1]
            h = h + np.einsum("nvp,vu,nuq->pq", design, w, design)
            g = g + np.einsum("nvp,vu,nu->p", design, w, y)
            parts.append((y, design, w))
        beta = np.linalg.solve(h, g)
        quad = sum(np.einsum("nv,vu,nu->", y - design @ beta, w, y - design @ beta) for y, design, w in parts)
        return -0.5 * (logdet + np.linalg.slogdet(h)[1] + quad), beta, np.linalg.inv(h)

    res = optimize.minimize(lambda th: -reml(th)[0], np.zeros(len(tril[0])), method="BFGS", options={"gtol": 1e-9, "maxiter": 3000})
    return reml(res.x)


@pytest.mark.unit
def test_closed_form_reml_matches_a_direct_maximisation_of_the_reml_likelihood():
    sim = small_trial()
    change = sim.y[0, :, 1:] - sim.y[0, :, :1]
    assert 0 < (sim.attended[0] < 3).mean() < 0.7  # dropout at every stage, some with no post-baseline visit
    ll, beta, cov = direct_reml(change, sim.attended[0], sim.treated, sim.y0[0], 3)
    fit = fit_reml(pattern_stats(change[None], sim.attended, sim.treated, sim.y0))
    assert fit.ok[0] and fit.iterations < 15
    assert fit.loglik[0] == pytest.approx(ll, abs=1e-7)
    for visit in range(3):
        est, se = fit.effect(visit)
        assert est[0] == pytest.approx(beta[visit * 3 + 1], rel=1e-4)
        assert se[0] == pytest.approx(np.sqrt(cov[visit * 3 + 1, visit * 3 + 1]), rel=1e-4)


@pytest.mark.unit
def test_mmrm_equals_the_ancova_with_complete_data():
    """Unstructured covariance, the same regressors at every visit, nothing missing: REML is least squares
    at each visit with Sigma = residual cross-products / (n - 3), so estimate and SE equal the ANCOVA's."""
    params = implied_mmrm(fixed_parameters(), (0, 2, 4, 8, 12))
    sim = simulate_trials(params, PlannedTrial(40, weeks=(0, 2, 4, 8, 12), dropout=0.0), Scenario("assurance"), 50, np.random.default_rng(1))
    assert (sim.attended == 4).all()
    m = mmrm_effect(sim.y[:, :, 1:] - sim.y[:, :, :1], sim.attended, sim.treated, sim.y0, sim.primary)
    est, se, df = ancova(sim)
    np.testing.assert_allclose(m["estimate"], est, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(m["se"], se, rtol=1e-8)
    np.testing.assert_array_equal(m["df"][:, 0], df)


@pytest.mark.unit
def test_trajectory_scores_given_the_baseline_follow_the_implied_mmrm_even_after_screening():
    """All visits of one large simulated trajectory trial: the regression of each visit's change on the
    baseline (per arm) and its residual covariance are the MMRM the trajectory model implies, also when
    entry screening truncates the baseline (screening acts on the baseline only)."""
    params = unrounded(fixed_parameters(prognostic=(1.0, 0.5, 0.0), nac_change=(-3.0, -2.0)))
    weeks = (0, 2, 6, 12, 16)
    implied = implied_mmrm(params, weeks)
    trial = PlannedTrial(10_000, weeks=weeks, primary_week=12, dropout=0.0, entry_min=26.0)
    sim = simulate_trials(params, trial, Scenario("assurance"), 1, np.random.default_rng(2), round_scores=False)
    assert sim.y0.min() >= 26.0
    # the baseline is normal with the implied mean and SD, truncated at 26: eligible fraction and mean
    m, s = implied.baseline_mean[0], implied.baseline_sd[0]
    a = (26.0 - m) / s
    assert sim.eligible[0] == pytest.approx(stats.norm.sf(a), rel=0.01)
    assert sim.y0.mean() == pytest.approx(m + s * stats.norm.pdf(a) / stats.norm.sf(a), abs=0.06)
    change = sim.y[0, :, 1:] - sim.y[0, :, :1]
    resid = []
    for arm in (0, 1):
        rows = sim.treated == arm
        x = np.column_stack([np.ones(rows.sum()), sim.y0[0, rows] - implied.baseline_center[0]])
        coef, *_ = np.linalg.lstsq(x, change[rows], rcond=None)
        r = change[rows] - x @ coef
        se = np.sqrt(np.diag(np.linalg.inv(x.T @ x))[:, None] * r.var(axis=0)[None, :])  # (coefficient, visit)
        expected = np.vstack([implied.visit_mean[0] + arm * implied.nac_visit_effect[0, 0], implied.baseline_slope[0]])
        assert np.all(np.abs(coef - expected) < 4 * se), (arm, coef, expected, se)
        resid.append(r)
    cov = np.cov(np.vstack(resid).T)
    np.testing.assert_allclose(cov, implied.sigma()[0], rtol=0.05, atol=0.5)


@pytest.mark.unit
@pytest.mark.parametrize("mechanism", ["mcar", "mar", "mnar"])
def test_dropout_by_visit_and_arm_matches_the_design(mechanism):
    params = fixed_parameters()
    shape = (0.3, 0.6, 0.8, 0.9, 1.0, 1.3)
    trial = PlannedTrial(100, weeks=(0, 2, 4, 6, 8, 12, 16), dropout=(0.35, 0.15), dropout_mechanism=mechanism, dropout_shape=shape,
                         dropout_score_effect=1.5)
    sim = simulate_trials(params, trial, Scenario("assurance"), 300, np.random.default_rng(4))
    want = trial.cumulative_dropout()
    np.testing.assert_allclose(want[:, trial.primary_index], [0.35, 0.15])
    for arm in (0, 1):
        lost = (sim.attended[:, sim.treated == arm][:, :, None] <= np.arange(6)).mean(axis=(0, 1))  # lost by each visit
        mcse = np.sqrt(want[arm] * (1 - want[arm]) / (300 * 100))
        assert np.all(np.abs(lost - want[arm]) < 4 * mcse + 0.002), (arm, lost, want[arm])
    if mechanism != "mcar":  # the score matters: those who leave had worse scores than those who stay
        left = sim.attended < 6
        score = sim.y[:, :, 3] if mechanism == "mar" else sim.y[:, :, 6]
        assert score[left & (sim.attended >= 2)].mean() > score[~left].mean() + 1.0


@pytest.mark.unit
def test_mar_analysis_is_biased_under_mnar_dropout_in_the_expected_direction():
    """With the truth known: under MAR the MMRM is unbiased (the completers' ANCOVA is not); under MNAR
    dropout by worse current scores, the arm losing more people looks better than it is, so the NAC -
    placebo estimate moves towards the arm with more dropout (positive when placebo loses more)."""
    params = unrounded(implied_mmrm(fixed_parameters(), (0, 4, 8, 12)))
    base = dict(weeks=(0, 4, 8, 12), dropout_score_effect=2.0)
    designs = [
        PlannedTrial(50, dropout=(0.4, 0.1), dropout_mechanism="mnar", **base),
        PlannedTrial(51, dropout=(0.1, 0.4), dropout_mechanism="mnar", **base),
        PlannedTrial(52, dropout=(0.4, 0.1), dropout_mechanism="mar", **base),
    ]
    spec = PlanSpec(designs, [Scenario("fixed", -2.0)], AnalysisSettings(), sims=800, seed=6, chunk_size=400, round_scores=False)
    table, _ = plan(params, spec)
    bias = table.set_index("n_per_arm")["bias"]
    mcse = table.set_index("n_per_arm")["bias_mcse"]
    assert (table.mean_true_effect == -2.0).all() and (table.failed_analyses == 0).all()
    assert bias[50] > 5 * mcse[50] and bias[51] < -5 * mcse[51]
    assert abs(bias[52]) < 3.5 * mcse[52]
    np.testing.assert_allclose(table.realised_dropout, [0.25, 0.25, 0.25], atol=0.01)
    ancova_table, _ = plan(params, replace(spec, designs=designs[2:], analysis=AnalysisSettings(method="ancova")))
    assert ancova_table.bias.iloc[0] > 5 * ancova_table.bias_mcse.iloc[0]  # completers only: biased under MAR


@pytest.mark.unit
def test_robust_assurance_mixes_plain_and_vague_assurance():
    """A point design prior (effect -3) mixed with weight 0.3 with Normal(0, 4): the vague scenario's
    success rate is the closed-form power averaged over Normal(0, 4), and the robust assurance is the
    mixture, between the plain and the vague assurance."""
    params = unrounded(fixed_parameters()).with_effect_prior(-3.0, 0.0)
    analysis = AnalysisSettings(method="ancova")
    design = PlannedTrial(60, dropout=0.0)
    spec = PlanSpec([design], [Scenario("assurance"), Scenario("vague", sd=4.0)], analysis, sims=4000, seed=9, chunk_size=1000,
                    round_scores=False, robust_weight=0.3)
    table, _ = plan(params, spec)
    plain, vague = table.set_index("scenario").loc["assurance"], table.set_index("scenario").loc["vague"]
    nodes = stats.norm.ppf((np.arange(40) + 0.5) / 40) * 4.0
    expected = np.mean([analytic_power(params, design, e, analysis) for e in nodes])
    assert abs(vague.p_success - expected) < 3.5 * np.sqrt(expected * (1 - expected) / vague.sims)
    assert abs(vague.mean_true_effect) < 4 * 4.0 / np.sqrt(vague.sims)
    robust = table.assurance_robust.iloc[0]
    assert robust == pytest.approx(0.7 * plain.p_success + 0.3 * vague.p_success)
    assert vague.p_success < robust < plain.p_success
    assert (table.assurance == plain.p_success).all() and (table.robust_weight == 0.3).all()


@pytest.mark.unit
def test_analysis_takes_the_visits_attended_at_a_look():
    """The analysis of the data available earlier (fewer attended visits) is the same call; participants
    who have not reached the primary visit contribute their early visits to the MMRM only."""
    params = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    sim = simulate_trials(params, PlannedTrial(60, weeks=(0, 4, 8, 12), dropout=0.0), Scenario("fixed", -2.0), 40, np.random.default_rng(8))
    look = np.minimum(sim.attended, np.where(np.arange(120) % 2 == 0, 3, 1)[None, :])  # half have reached week 12
    full, early = analyse(sim, AnalysisSettings()), analyse(sim, AnalysisSettings(), attended=look)
    completers = analyse(sim, AnalysisSettings(method="ancova"), attended=look)
    assert (early["completers"] == 60).all() and (full["completers"] == 120).all()
    assert early["ok"].all() and full["ok"].all()
    # the SE is estimated (Sigma differs by data), so compare it on average over the trials
    assert full["se"].mean() < early["se"].mean() < completers["se"].mean()


# ---------------------------------------------------------------- against the Bayesian MMRM


@pytest.mark.slow
def test_rao_blackwell_p_benefit_matches_the_draws_of_the_bayesian_mmrm():
    """The conditional (given Sigma) P(benefit), the variance-reduced cross-check reported beside the
    draws, equals the fraction of the Bayesian MMRM's draws below 0 within 4 Monte Carlo SEs of the draws
    (+ 0.005), on a fit of the project's model."""
    import plan as plan_cli
    from planning.mcmc_check import mmrm_agreement

    params = implied_mmrm(fixed_parameters(nac_change=(-1.5, -1.5)), (0, 4, 8, 12))
    table, _ = mmrm_agreement(params, PlannedTrial(40, weeks=(0, 4, 8, 12), dropout=0.3), AnalysisSettings(), plan_cli.project_sampler(400, 400, 2),
                              n_trials=1, seed=2)
    row = table.iloc[0]
    assert abs(row.mcmc_p_benefit - row.mcmc_p_benefit_rb) < 4 * row.mcmc_p_benefit_mcse + 0.005
    assert abs(row.fast_p_benefit - row.mcmc_p_benefit_rb) < 0.03


AGREEMENT_RESULT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "planning_mmrm_agreement"


def write_agreement(table: pd.DataFrame, summary: dict, path: Path) -> None:
    """The MMRM agreement run's summary and per-trial rows as `path`.json, its figures as `path`.md."""
    import datetime as dt
    import json
    import platform

    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record = {"measured": when, "test": "tests/test_planning_mmrm.py::test_mmrm_decisions_agree_with_the_bayesian_mmrm", "machine": platform.machine(),
              "summary": summary, "trials": json.loads(table.to_json(orient="records"))}
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    d = table["fast_p_benefit"] - table["mcmc_p_benefit"]
    rb = table["fast_p_benefit"] - table["mcmc_p_benefit_rb"]
    ratio = table["mcmc_sd"] / table["fast_sd"]
    lines = [
        f"# Closed-form MMRM vs the Bayesian MMRM's draws ({when}, written by {record['test']})",
        "",
        (f"{summary['trials']} simulated trials (`planning.mcmc_check.mmrm_validation`), {summary['draws_per_trial']} MCMC draws per trial. "
         "P(benefit) of the MCMC side: the fraction of its draws of the week-12 effect below 0, with its Monte Carlo SE "
         "sqrt(p (1 - p) / ESS), ESS that of the indicator draws."),
        "",
        "| | closed-form MMRM vs Bayesian MMRM |",
        "|---|---|",
        (f"| decisions agree (MCMC decisions from the draws) | {summary['trials'] - summary['disagreements']} of {summary['trials']} "
         f"({int(table['fast_success'].sum())} closed-form successes, {int(table['mcmc_success'].sum())} MCMC) |"),
        f"| P(effect < 0): largest difference | {summary['max_abs_diff_p_benefit']:.4f} (mean {d.mean():+.4f}, SD {d.std():.4f}) |",
        f"| P(effect < 0): largest difference in MCSEs of the draws | {summary['max_abs_diff_p_benefit_in_mcse']:.2f} |",
        (f"| MCSE of the draws' P(effect < 0) | median {table['mcmc_p_benefit_mcse'].median():.4f}, largest {summary['max_mcse_p_benefit']:.4f} "
         f"(ESS median {table['mcmc_ess_benefit'].median():.0f}) |"),
        f"| P(effect < -MCID): largest difference | {summary['max_abs_diff_p_mcid']:.4f} |",
        f"| trials outside the bound {summary['p_bound']} | {summary['p_outside_bound']} |",
        f"| posterior SD, Bayesian / closed form | {ratio.mean():.2f} on average ({ratio.min():.2f} to {ratio.max():.2f}) |",
        f"| posterior mean: largest difference in closed-form SDs | {summary['max_abs_diff_mean_in_sd']:.3f} |",
        (f"| Rao-Blackwell P(effect < 0) (shares `gls` with the closed form): decisions agree, largest difference | "
         f"{int((table['fast_success'] == table['mcmc_success_rb']).sum())} of {summary['trials']}, {summary['max_abs_diff_p_benefit_rb']:.4f} "
         f"(mean {rb.mean():+.4f}) |"),
        "",
    ]
    path.with_suffix(".md").write_text("\n".join(lines))


@pytest.mark.slow
def test_mmrm_decisions_agree_with_the_bayesian_mmrm():
    """60 simulated trials (trajectory-model truth, MAR dropout 25%, 100 per arm, effects from a design
    prior so that decisions fall on both sides; 2 chains x 500 draws each): the closed-form MMRM's
    P(effect < 0) and P(effect < -MCID) and the fractions of the project's Bayesian MMRM's draws below 0
    and -MCID differ on every trial by at most max(0.03, 4 MCSE), MCSE = sqrt(p (1 - p) / ESS) of the
    draws; a decision taken from the draws differs from the closed form's only on a trial whose closed-form
    P(effect < 0) lies within that bound of the threshold (Monte Carlo error of 1,000 draws, not a
    disagreement of the models); the Rao-Blackwell decisions (no Monte Carlo error in the indicator) agree
    on at least 95% of trials. Writes the figures to benchmarks/results/planning_mmrm_agreement.{json,md}
    (docs/planning.md)."""
    import plan as plan_cli
    from planning.mcmc_check import mmrm_validation

    table, summary = mmrm_validation(plan_cli.project_sampler(500, 500, 2), n_trials=60)
    write_agreement(table, summary, AGREEMENT_RESULT)
    print(summary)
    assert 0.2 < summary["mcmc_success_rate"] < 0.8
    assert summary["p_outside_bound"] == 0, table[["fast_p_benefit", "mcmc_p_benefit", "mcmc_p_benefit_mcse", "fast_p_mcid", "mcmc_p_mcid"]]
    assert summary["disagreements_outside_band"] == 0, table.loc[table["fast_success"] != table["mcmc_success"]]
    assert summary["agreement_rate_rb"] >= 0.95
    assert summary["max_abs_diff_mean_in_sd"] < 0.2 and summary["max_rel_diff_sd"] < 0.15, summary


# interim looks (planning.interim.sequential)


def interim_spec(**kw):
    from planning import InterimSettings

    designs = [PlannedTrial(30, weeks=(0, 4, 8, 12), dropout=0.2)]
    spec = PlanSpec(designs, [Scenario("fixed", 0.0), Scenario("fixed", -3.0)], AnalysisSettings(), sims=60, seed=4, chunk_size=30)
    return spec, (replace(spec, interim=InterimSettings(**kw)) if kw else None)


@pytest.mark.unit
def test_interim_looks_that_never_stop_leave_the_table_unchanged():
    params = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    spec, looked = interim_spec(fractions=(0.3, 0.6), futility=0.0, efficacy=1.0)
    plain, _ = plan(params, spec)
    with_looks, _ = plan(params, looked)
    pd.testing.assert_frame_equal(plain, with_looks[plain.columns], check_exact=True)
    assert (with_looks[["p_stop_efficacy", "p_stop_futility", "p_stop_efficacy_look2", "p_stop_futility_look1"]] == 0).all().all()
    assert (with_looks.expected_n == with_looks.n_total).all()
    # enrolment takes as long as the treatment period by default: the last participant's week 12 at 59/60 x 12 + 12
    assert np.allclose(with_looks.expected_duration_weeks, 12 * 59 / 60 + 12)


@pytest.mark.unit
def test_interim_aggressive_futility_stops_most_null_trials_early():
    params = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    _, looked = interim_spec(fractions=(0.3, 0.6), futility=0.5, accrual_per_week=2.0)
    table, _ = plan(params, looked)
    null = table[table.scenario == "effect=0"].iloc[0]
    assert null.p_stop_futility > 0.5 and null.p_stop_efficacy == 0
    assert np.isclose(null.p_stop_futility, null.p_stop_futility_look1 + null.p_stop_futility_look2)
    assert null.expected_n < null.n_total and null.expected_duration_weeks < 59 / 2.0 + 12
    # at the first look (18 of 60 at week 12: week 8.5 + 12) 42 have entered; at the second (36) 60
    stopped1 = null.p_stop_futility_look1 + null.p_stop_efficacy_look1
    assert np.isclose(null.expected_n, 42 * stopped1 + 60 * (1 - stopped1))
    # the sequential success can only come from efficacy stops or final successes of trials still running
    effect = table[table.scenario == "effect=-3"].iloc[0]
    assert effect.p_success >= effect.p_stop_efficacy and effect.p_stop_futility < null.p_stop_futility


@pytest.mark.unit
def test_ppos_is_a_probability_increasing_with_the_interim_benefit():
    from planning import InterimSettings, ppos, sequential
    from planning.design import accrual_rate
    from planning.interim import attended_at, entry_weeks, look_weeks

    m = np.linspace(6.0, -6.0, 49)
    p = ppos(m, np.full_like(m, 2.0), np.full_like(m, 1.2), np.full_like(m, -2.4))
    assert ((p >= 0) & (p <= 1)).all() and (np.diff(p) > 0).all()
    assert np.isclose(ppos(np.array([-2.4]), np.array([2.0]), np.array([1.2]), np.array([-2.4]))[0], 0.5)
    # no information left to come: PPoS is the interim decision itself
    assert ppos(np.array([-3.0, -1.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.array([-2.0, -2.0])).tolist() == [1.0, 0.0]
    params = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    trial = PlannedTrial(30, weeks=(0, 4, 8, 12), dropout=0.2)
    sim = simulate_trials(params, trial, Scenario("fixed", -2.0), 40, np.random.default_rng(1))
    settings = InterimSettings((0.5,), futility=0.0, efficacy=1.0)
    res = sequential(sim, trial, AnalysisSettings(), settings)
    pp = res["ppos"][:, 0, 0]  # look 1, the one active arm
    assert np.isfinite(pp).all() and ((pp >= 0) & (pp <= 1)).all()
    # across simulated trials, a larger interim benefit means a larger PPoS (rank correlation)
    at_look = attended_at(sim, trial, entry_weeks(trial, accrual_rate(trial, settings)), look_weeks(trial, settings)[0])
    assert (at_look <= sim.attended).all() and (at_look < sim.attended).any()
    interim = analyse(sim, AnalysisSettings(), attended=at_look)
    assert stats.spearmanr(-interim["post_mean"][:, 0], pp).statistic > 0.5


@pytest.mark.slow  # beside the default tier's Dask tests it could not start its workers; alone it passes
def test_interim_tables_are_the_same_on_one_and_two_workers():
    params = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    _, looked = interim_spec(fractions=(0.5,), futility=0.3, accrual_per_week=3.0)
    local, _ = plan(params, looked, workers=1)
    distributed, _ = plan(params, looked, workers=2)  # the runner's own local Dask cluster
    pd.testing.assert_frame_equal(local, distributed, check_exact=True)


@pytest.mark.unit
@pytest.mark.parametrize("method", ["mmrm", "ancova"])
def test_final_posterior_sd_predicted_at_a_look_matches_the_final_analysis(method):
    """At looks at 30% and 60% information, the final analysis' posterior SD predicted from the interim
    data (expected final pattern counts from the design's dropout, Sigma at the interim REML estimate)
    is within 4% of the realised final posterior SD in the median over simulated trials, and its
    degrees of freedom within 2 of the realised ones on average."""
    from planning import InterimSettings
    from planning.interim import stage_results

    params = implied_mmrm(fixed_parameters(), (0, 2, 4, 8, 12))
    trial = PlannedTrial(50, weeks=(0, 2, 4, 8, 12), dropout=(0.2, 0.3), dropout_mechanism="mar")
    sim = simulate_trials(params, trial, Scenario("fixed", -2.0), 300, np.random.default_rng(1))
    final, looks = stage_results(sim, trial, AnalysisSettings(method=method), InterimSettings((0.3, 0.6)))
    for look in looks:
        ok = look["ok"] & final["ok"]
        assert ok.mean() > 0.95
        ratio = look["final_sd"][ok] / final["post_sd"][ok]
        assert abs(np.median(ratio) - 1) < 0.04, np.median(ratio)
        assert abs(look["final_df"][ok].mean() - final["df"][ok].mean()) < 2
        assert (look["post_sd"][ok] > look["final_sd"][ok]).mean() > 0.95  # information still to come


@pytest.mark.unit
@pytest.mark.parametrize("method", ["mmrm", "ancova"])
def test_ppos_is_calibrated_when_effects_follow_the_analysis_prior(method):
    """PPoS is the probability, under the analysis' own prior, that the final analysis succeeds: with the
    true effects drawn from that prior (Normal(0, 6)), the mean PPoS at a look at half the information
    equals the final success rate within Monte Carlo error, and so it does among trials with low and
    with high PPoS."""
    from planning import InterimSettings
    from planning.interim import stage_results

    params = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    trial = PlannedTrial(30, weeks=(0, 4, 8, 12), dropout=0.25, dropout_mechanism="mar")
    sim = simulate_trials(params, trial, Scenario("vague", sd=6.0), 2000, np.random.default_rng(5))
    final, (look,) = stage_results(sim, trial, AnalysisSettings(method=method), InterimSettings((0.5,)))
    ok = look["ok"] & final["ok"]
    pp, won = look["ppos"][ok], final["success"][ok].astype(float)
    diff = pp - won
    assert abs(diff.mean()) < 3 * diff.std() / np.sqrt(len(diff)) + 0.01, (pp.mean(), won.mean())
    for part in (pp < 0.5, pp >= 0.5):
        assert part.sum() > 300 and abs(pp[part].mean() - won[part].mean()) < 0.05, (pp[part].mean(), won[part].mean())


@pytest.mark.unit
def test_a_look_by_calendar_week_equals_the_look_at_the_same_information_fraction():
    """Looks by calendar week are the same analysis as looks by information fraction: a look at the week
    a fraction's look falls on gives the same table, and the table states each look's week and
    information."""
    from planning import InterimSettings
    from planning.interim import look_information, look_weeks

    params = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    spec, by_fraction = interim_spec(fractions=(0.4, 0.7), futility=0.2, accrual_per_week=3.0)
    weeks = tuple(look_weeks(spec.designs[0], by_fraction.interim))
    by_week = replace(spec, interim=InterimSettings(weeks=weeks, futility=0.2, accrual_per_week=3.0))
    a, _ = plan(params, by_fraction)
    b, _ = plan(params, by_week)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # 24 of 60 at the primary visit: week 23 / 3 + 12; 42 of 60: 41 / 3 + 12
    assert np.allclose(a[["look1_week", "look2_week"]].iloc[0], [23 / 3 + 12, 41 / 3 + 12])
    assert np.allclose(a[["look1_information", "look2_information"]].iloc[0], [0.4, 0.7])
    assert np.allclose(look_information(spec.designs[0], by_week.interim), [0.4, 0.7])
    with pytest.raises(Exception, match="final analysis"):
        plan(params, replace(spec, interim=InterimSettings(weeks=(50.0,), accrual_per_week=3.0)))


# type I error calibration (planning/calibration.py)


@pytest.mark.unit
def test_calibrated_thresholds_are_the_smallest_that_keep_the_type_i_error():
    from planning import CalibrationSettings, PlanningError
    from planning.calibration import choose_thresholds

    rng = np.random.default_rng(0)
    q = rng.uniform(0.5, 1.0, size=(1000, 3))  # two looks and the final analysis
    settings = CalibrationSettings(alpha=0.05, sims=1000)
    t = choose_thresholds(q, settings, efficacy=0.998)
    stopped = (q[:, :2] > 0.998).any(axis=1)
    rejected = stopped | (q[:, 2] > t.final)
    assert rejected.sum() == 50 and t.type1 == 0.05 and t.efficacy == 0.998
    below = np.nextafter(t.final, 0)  # any smaller threshold rejects once more
    assert (stopped | (q[:, 2] > below)).sum() == 51
    common = choose_thresholds(q, replace(settings, mode="common"), efficacy=0.998)
    assert common.final == common.efficacy and (q.max(axis=1) > common.final).sum() == 50
    assert (q.max(axis=1) > np.nextafter(common.final, 0)).sum() == 51
    with pytest.raises(PlanningError, match="raise --efficacy"):
        choose_thresholds(q, settings, efficacy=0.9)
    with pytest.raises(PlanningError, match="--calibration-sims 1000"):
        CalibrationSettings(alpha=0.01, sims=500).validate()


@pytest.mark.unit
def test_calibrated_design_keeps_its_type_i_error_on_fresh_trials():
    """The final threshold calibrated on 2,000 null trials (alpha 0.05, a look at half the information with
    efficacy stopping, MMRM, MAR dropout) gives a type I error within 3 MC SE of alpha on 2,000 fresh null
    trials (the SE of the difference of two estimates, 0.007); the uncalibrated threshold 0.975 is far from
    alpha, and the calibrated one is stated on every row of the design."""
    from planning import CalibrationSettings, InterimSettings

    params = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    spec = PlanSpec([PlannedTrial(30, weeks=(0, 4, 8, 12), dropout=0.2)], [Scenario("fixed", 0.0), Scenario("fixed", -3.0)],
                    AnalysisSettings(threshold=0.975), sims=2000, seed=9, chunk_size=1000,
                    interim=InterimSettings((0.5,), futility=0.0, efficacy=0.99), calibration=CalibrationSettings(alpha=0.05, sims=2000))
    table, timings = plan(params, spec)
    null = table[table.scenario == "effect=0"].iloc[0]
    assert 0.045 < null.calibration_type1 <= 0.05 and "calibration_s" in timings
    assert abs(null.p_success - 0.05) < 3 * np.sqrt(2 * 0.05 * 0.95 / 2000), null.p_success
    assert 0.5 < null.threshold < 0.965 and null.efficacy_threshold == 0.99
    assert table.threshold.nunique() == 1 and (table.calibration_alpha == 0.05).all()
    plain, _ = plan(params, replace(spec, calibration=None, scenarios=spec.scenarios[:1]))
    assert plain.p_success.iloc[0] < 0.035 and plain.threshold.iloc[0] == 0.975


@pytest.mark.slow
def test_calibration_holds_the_type_i_error_at_2_5_percent():
    """The full check: thresholds calibrated to 2.5% on 8,000 null trials (two looks, 100 per arm, MMRM,
    MAR dropout 25%) give a type I error of 2.5% within 3 MC SE on 8,000 fresh null trials without
    futility stopping, and below it with binding futility stopping, in both modes; the same table on one
    process and on two Dask workers."""
    from planning import CalibrationSettings, InterimSettings

    params = implied_mmrm(fixed_parameters(), (0, 2, 4, 8, 12))
    tol = 3 * np.sqrt(2 * 0.025 * 0.975 / 8000)
    for mode in ("final", "common"):
        spec = PlanSpec([PlannedTrial(100, weeks=(0, 2, 4, 8, 12), dropout=0.25)], [Scenario("fixed", 0.0)], AnalysisSettings(), sims=8000, seed=3,
                        chunk_size=1000, interim=InterimSettings((0.5, 0.75), futility=0.0, efficacy=0.995),
                        calibration=CalibrationSettings(alpha=0.025, mode=mode, sims=8000))
        table, _ = plan(params, spec)
        null = table.iloc[0]
        print(mode, null.threshold, null.efficacy_threshold, null.calibration_type1, null.p_success)
        assert 0.0235 < null.calibration_type1 <= 0.025
        assert abs(null.p_success - 0.025) < tol
        binding, _ = plan(params, replace(spec, interim=replace(spec.interim, futility=0.1)))
        print(mode, "binding futility", binding.p_success.iloc[0], binding.p_stop_futility.iloc[0])
        assert binding.threshold.iloc[0] == null.threshold and binding.p_success.iloc[0] <= null.p_success
    small = replace(spec, sims=1000, calibration=replace(spec.calibration, sims=1000), interim=replace(spec.interim, futility=0.1))
    one, _ = plan(params, small, workers=1)
    two, _ = plan(params, small, workers=2)
    pd.testing.assert_frame_equal(one, two, check_exact=True)


@pytest.mark.unit
def test_new_sites_vary_as_the_fitted_sites_and_the_pooled_analysis_stays_unbiased():
    """Ten new sites with offsets of SD 3 on the change (MMRM family): the variance of the site means of
    the primary-visit change is 9 + the within-site variance / 20 (a site holds 20 participants); the
    pooled MMRM estimate stays unbiased and its type I error at most nominal. Trajectory family: the
    offsets move the scores' level, baseline included. One site draws no offsets."""
    params = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    params = replace(params, site_sd=np.full(params.n_draws, 3.0))
    trial = PlannedTrial(100, weeks=(0, 4, 8, 12), dropout=0.0, sites=10)
    sim = simulate_trials(params, trial, Scenario("fixed", 0.0), 400, np.random.default_rng(1), round_scores=False)
    assert np.array_equal(np.bincount(sim.site[sim.treated == 1]), np.full(10, 10)) and (sim.site_sd == 3.0).all()
    change = sim.y[:, :, 3] - sim.y[:, :, 0]
    means = np.stack([change[:, sim.site == k].mean(axis=1) for k in range(10)], axis=1)
    expected = 9.0 + params.sigma()[0, 2, 2] / 20
    assert abs(means.var(axis=1, ddof=1).mean() / expected - 1) < 0.1
    res = analyse(sim, AnalysisSettings())
    assert abs(res["estimate"].mean()) < 3 * res["estimate"].std() / np.sqrt(400) and res["success"].mean() <= 0.025 + 3 * np.sqrt(0.025 * 0.975 / 400)
    traj = simulate_trials(fixed_parameters(), trial, Scenario("fixed", 0.0), 400, np.random.default_rng(1), round_scores=False)
    base = np.stack([traj.y0[:, traj.site == k].mean(axis=1) for k in range(10)], axis=1)
    assert abs(base.var(axis=1, ddof=1).mean() / (1.5**2 + (4.9**2 + 3.0**2) / 20) - 1) < 0.1
    one = simulate_trials(params, replace(trial, sites=1), Scenario("fixed", 0.0), 5, np.random.default_rng(1))
    assert one.site is None and one.site_sd is None
    with pytest.raises(Exception, match="--sites"):
        replace(trial, sites=101).validate(params)
