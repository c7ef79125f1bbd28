"""Trial planning without a saved fit: closed-form power, type I error, enrichment, Dask reproducibility, MCMC agreement.

Tests of properties of the completers' ANCOVA (its closed-form power, its nominal type I error) say
`method="ancova"` and MCAR dropout; the MMRM analysis and the dropout mechanisms are tested in
test_planning_mmrm.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from maths.gaussian import sequential_moments
from planning import (
    AnalysisSettings,
    PlannedTrial,
    PlanningError,
    PlanSpec,
    Scenario,
    analytic_power,
    fixed_parameters,
    parse_design_prior,
    plan,
    simulate_trials,
)
from planning.simulate import _markers


def unrounded(params):
    """A continuous normal endpoint: no rounding, no clipping to the scale."""
    return replace(params, scale=replace(params.scale, integer_scores=False, score_min=None, score_max=None))


@pytest.mark.unit
def test_sequential_marker_block_becomes_the_right_mvn():
    # z1 = a1 + s1 e1; z2 = a2 + B z1 + s2 e2
    a, s, b = np.array([[0.3, -0.2]]), np.array([[1.2, 0.5]]), np.array([[0.7]])
    mu, chol = sequential_moments(a, s, b, 2, factor=True)
    cov = chol[0] @ chol[0].T
    np.testing.assert_allclose(mu[0], [0.3, -0.2 + 0.7 * 0.3])
    np.testing.assert_allclose(cov, [[1.44, 0.7 * 1.44], [0.7 * 1.44, 0.49 * 1.44 + 0.25]])
    assert np.allclose(np.triu(chol[0], 1), 0)


@pytest.mark.unit
def test_simulated_power_and_type_i_error_match_the_closed_form():
    """Two-arm normal endpoint, known effect: the simulated success rate equals the noncentral-t power."""
    params = unrounded(fixed_parameters())
    analysis = AnalysisSettings(method="ancova")
    designs = [PlannedTrial(30, dropout=0.0, weeks=(0, 12)), PlannedTrial(90, allocation=2.0, dropout=0.0, weeks=(0, 12))]  # the ANCOVA reads weeks 0 and 12
    spec = PlanSpec(designs, [Scenario("fixed", 0.0), Scenario("fixed", -2.0)], analysis, sims=3000, seed=11, chunk_size=500, round_scores=False)
    table, _ = plan(params, spec)
    for row in table.itertuples():
        design = designs[[d.n_control for d in designs].index(row.n_per_arm)]
        expected = analytic_power(params, design, row.effect, analysis)
        assert abs(row.p_success - expected) < 3.5 * np.sqrt(expected * (1 - expected) / row.sims), (row.scenario, row.n_per_arm, row.p_success, expected)
    # power must actually move with n and effect (a simulator ignoring them would fail above too)
    power = table[table.scenario == "effect=-2"].set_index("n_per_arm")["p_success"]
    assert power[90] > power[30] + 0.2
    # at zero effect, the single criterion's type I error is at most its nominal 2.5% (shrinkage makes it a little less)
    zero = table[table.scenario == "effect=0"]
    assert (zero.p_success < 0.025 + 3 * zero.p_success_mcse).all() and (zero.p_success > 0.01).all()


@pytest.mark.unit
def test_type_i_error_is_nominal_with_a_flat_analysis_prior():
    params = unrounded(fixed_parameters())
    analysis = AnalysisSettings(prior_sd=1e4, method="ancova")
    spec = PlanSpec([PlannedTrial(50, dropout=0.3, dropout_mechanism="mcar", weeks=(0, 12))], [Scenario("fixed", 0.0)], analysis, sims=8000, seed=5,
                    chunk_size=2000, round_scores=False)
    table, _ = plan(params, spec)
    row = table.iloc[0]
    assert abs(row.p_success - 0.025) < 3 * np.sqrt(0.025 * 0.975 / row.sims)
    # the dual criterion can only lower it
    dual, _ = plan(params, replace(spec, analysis=replace(analysis, dual=True)))
    assert dual.iloc[0].p_success <= row.p_success


@pytest.mark.unit
def test_enriched_markers_follow_the_truncated_conditional_law():
    params = fixed_parameters()
    rng = np.random.default_rng(0)
    trial = PlannedTrial(2000, enrich_marker="crp", enrich_threshold=3.0)
    z, eligible = _markers(params, np.zeros(4, dtype=int), 2000, trial, rng)
    c = params.z_threshold("crp", 3.0)
    assert c == pytest.approx(np.log(3.0 / 2.0) / 1.0)
    zc = z[:, :, 1].ravel()
    assert zc.min() > c
    tail = stats.norm.sf(c)
    assert eligible == pytest.approx(np.full(4, tail))
    expected_mean = stats.norm.pdf(c) / tail  # E[z | z > c]
    assert zc.mean() == pytest.approx(expected_mean, abs=4 * zc.std() / np.sqrt(zc.size))
    # il6 correlates 0.4 with crp: E[z_il6 | crp enriched] = 0.4 E[z_crp | ...]; bdnf -0.1
    assert z[:, :, 0].mean() == pytest.approx(0.4 * expected_mean, abs=0.03)
    assert z[:, :, 2].mean() == pytest.approx(-0.1 * expected_mean, abs=0.03)


@pytest.mark.unit
def test_enrichment_helps_only_with_a_marker_that_moderates_the_nac_effect():
    """CRP truly moderates the NAC effect (larger benefit at high CRP); IL-6 predicts change in both arms only.

    The markers are made independent here: enriching on a marker correlated with a true moderator
    selects part of the moderator's benefit too (that case is checked through the true effect below)."""
    params = fixed_parameters(nac_change=(-1.0, -1.0), moderation=(-1.5, 0.0, 0.0), nac_moderation=(0.0, -2.0, 0.0), marker_corr=np.eye(3))
    analysis = AnalysisSettings(method="ancova")
    design = PlannedTrial(80, dropout=0.2, dropout_mechanism="mcar", weeks=(0, 12))
    designs = [
        design,
        replace(design, enrich_marker="crp", enrich_threshold=3.0),
        replace(design, enrich_marker="il6", enrich_threshold=2.0),
    ]
    spec = PlanSpec(designs, [Scenario("assurance")], analysis, sims=1500, seed=21, chunk_size=500)
    table, _ = plan(params, spec)
    t = table.set_index("population")
    diff_se = np.sqrt(t.p_success_mcse["all"] ** 2 + t.p_success_mcse["crp>3"] ** 2)
    assert t.p_success["crp>3"] - t.p_success["all"] > 4 * diff_se
    il6_se = np.sqrt(t.p_success_mcse["all"] ** 2 + t.p_success_mcse["il6>2"] ** 2)
    assert abs(t.p_success["il6>2"] - t.p_success["all"]) < 3 * il6_se
    # the enrolled population's true effect: -1 - 2 E[z_crp | z_crp > c]
    c = params.z_threshold("crp", 3.0)
    assert t.mean_true_effect["crp>3"] == pytest.approx(-1 - 2 * stats.norm.pdf(c) / stats.norm.sf(c), abs=0.03)
    assert t.mean_true_effect["il6>2"] == pytest.approx(-1, abs=0.03)
    assert t.expected_screened["crp>3"] == pytest.approx(160 / stats.norm.sf(c), rel=1e-6)
    # with the default correlation 0.4 between IL-6 and CRP, IL-6 enrichment inherits part of the benefit
    correlated = fixed_parameters(nac_change=(-1.0, -1.0), nac_moderation=(0.0, -2.0, 0.0))
    table2, _ = plan(correlated, replace(spec, designs=designs[2:], sims=500))
    assert table2.mean_true_effect.iloc[0] == pytest.approx(-1 - 2 * 0.4 * stats.norm.pdf(0.0) / 0.5, abs=0.05)


@pytest.mark.unit
def test_design_prior_drives_assurance():
    params = unrounded(fixed_parameters())
    assert parse_design_prior(" normal( -2.5 , 1 ) ") == (-2.5, 1.0)
    with pytest.raises(PlanningError, match="Normal"):
        parse_design_prior("Cauchy(0, 1)")
    sims = {}
    for mean in (0.0, -4.0):
        p = params.with_effect_prior(mean, 0.0)
        spec = PlanSpec([PlannedTrial(60, dropout=0.0)], [Scenario("assurance"), Scenario("fixed", mean)], AnalysisSettings(method="ancova"), sims=1000, seed=3,
                        round_scores=False)
        table, _ = plan(p, spec)
        sims[mean] = table
        # a point design prior is a fixed effect: assurance equals power within MCSE (different random
        # streams), and the true effect is exactly the prior mean
        a, f = table.iloc[0], table.iloc[1]
        assert a.mean_true_effect == pytest.approx(mean)
        assert abs(a.p_success - f.p_success) < 3.5 * np.hypot(a.p_success_mcse, f.p_success_mcse) + 1e-9
    assert sims[-4.0].iloc[0].p_success > 0.75 > 0.05 > sims[0.0].iloc[0].p_success


@pytest.mark.unit
def test_bad_designs_are_refused_with_reasons():
    params = fixed_parameters()
    with pytest.raises(PlanningError, match="unknown biomarker 'tnf'"):
        PlannedTrial(50, enrich_marker="tnf", enrich_threshold=1.0).validate(params)
    with pytest.raises(PlanningError, match="beyond the fitted trial's last week 16"):
        PlannedTrial(50, primary_week=24, weeks=(0, 12, 24)).validate(params)
    with pytest.raises(PlanningError, match="must be a post-baseline week"):
        PlannedTrial(50, primary_week=10, weeks=(0, 4, 8, 12)).validate(params)
    with pytest.raises(PlanningError, match="dropout"):
        PlannedTrial(50, dropout=1.0).validate(params)
    with pytest.raises(PlanningError, match="dropout mechanism"):
        PlannedTrial(50, dropout_mechanism="informative").validate(params)
    with pytest.raises(PlanningError, match="entry criterion"):
        simulate_trials(params, PlannedTrial(10, entry_min=60.0), Scenario("assurance"), 5, np.random.default_rng(0))
    with pytest.raises(PlanningError, match="fewer than 1 in a million"):
        simulate_trials(params, PlannedTrial(10, enrich_marker="crp", enrich_threshold=1e6), Scenario("assurance"), 5, np.random.default_rng(0))


@pytest.mark.unit
def test_same_seed_same_table_in_process_and_on_a_dask_cluster():
    from dask.distributed import Client, LocalCluster

    params = fixed_parameters(prognostic=(1.0, 0.0, 0.0))  # eligibility depends on IL-6: people are redrawn
    designs = [PlannedTrial(n, dropout=(0.3, 0.2), entry_min=22.0) for n in (30, 60)] + [PlannedTrial(30, enrich_marker="crp", enrich_threshold=3.0)]
    scenarios = [Scenario("assurance"), Scenario("vague", sd=8.0), Scenario("fixed", 0.0)]
    spec = PlanSpec(designs, scenarios, AnalysisSettings(dual=True), sims=60, seed=8, chunk_size=25, robust_weight=0.2)
    local, _ = plan(params, spec, workers=1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        distributed, _ = plan(params, spec, client=client)
    pd.testing.assert_frame_equal(local, distributed, check_exact=True)
    other, _ = plan(params, replace(spec, seed=9), workers=1)
    assert not other["p_success"].equals(local["p_success"])


@pytest.mark.smoke
def test_fast_decisions_agree_with_mcmc_on_a_few_trials():
    from planning.mcmc_check import mcmc_agreement

    # effect and size chosen so that trials fall on both sides of the decision threshold
    params = fixed_parameters(nac_change=(-2.5, -2.5))
    table, summary = mcmc_agreement(params, PlannedTrial(60, dropout=0.2, dropout_mechanism="mcar"), AnalysisSettings(method="ancova"), n_trials=6, seed=4,
                                    draws=1000, tune=300)
    assert summary["divergences"] == 0
    assert summary["agreement_rate"] >= 5 / 6
    assert summary["max_abs_diff_p_benefit"] < 0.03
    assert summary["max_abs_diff_mean_in_sd"] < 0.15
    assert summary["max_rel_diff_sd"] < 0.1


@pytest.mark.slow
def test_fast_decisions_agree_with_mcmc_on_many_trials():
    from planning.mcmc_check import mcmc_agreement

    params = fixed_parameters(nac_change=(-2.5, -2.5), nac_moderation=(0.0, -1.0, 0.0))
    table, summary = mcmc_agreement(params, PlannedTrial(60, dropout=0.25, dropout_mechanism="mcar"), AnalysisSettings(dual=True, method="ancova"),
                                    n_trials=100, seed=12, draws=1500, tune=500)
    print(summary)
    assert 0.2 < summary["mcmc_success_rate"] < 0.8  # a sample with decisions on both sides
    assert summary["agreement_rate"] >= 0.95
    assert summary["max_abs_diff_p_benefit"] < 0.03


@pytest.mark.slow
def test_power_matches_closed_form_over_a_grid():
    params = unrounded(fixed_parameters(participant_sd=(6.0, 4.0), participant_corr=0.3, prognostic=(1.0, 0.5, 0.0)))
    analysis = AnalysisSettings(threshold=0.95, prior_sd=3.0, method="ancova")
    designs = [PlannedTrial(n, allocation=a, dropout=0.0, primary_week=8, weeks=(0, 4, 8)) for n in (20, 60, 150) for a in (1.0, 1.5)]
    effects = (0.0, -1.0, -2.0, -3.0)
    spec = PlanSpec(designs, [Scenario("fixed", e) for e in effects], analysis, sims=6000, seed=2, chunk_size=1000, round_scores=False)
    table, _ = plan(params, spec, workers=2)
    z = []
    for row in table.itertuples():
        design = next(d for d in designs if d.n_control == row.n_per_arm and d.n_total == row.n_total)
        expected = analytic_power(params, design, row.effect, analysis)
        z.append((row.p_success - expected) / np.sqrt(expected * (1 - expected) / row.sims))
    z = np.array(z)
    print(f"power vs formula over {len(z)} cells: max abs z {np.abs(z).max():.2f}, mean z {z.mean():.2f}")
    assert np.abs(z).max() < 4 and abs(z.mean()) < 3 / np.sqrt(len(z)) * 1.5


def _fake_fit(with_markers: bool, nac_moderation: bool):
    """A two-chain InferenceData with the variables of the treatment / moderation models, fixed values."""
    import json

    import arviz as az

    rng = np.random.default_rng(0)
    c, d = 2, 5
    post = {
        "intercept": np.full((c, d), 28.0),
        "time_change": np.tile([-11.0, -0.5], (c, d, 1)),
        "nac_change": np.tile([-1.5, -1.5], (c, d, 1)),
        "participant_sd": np.tile([5.0, 6.0], (c, d, 1)),
        "participant_corr": np.full((c, d), -0.2),
        "residual_sd": np.full((c, d), 3.0),
    }
    dims = {"time_change": ["phase"], "nac_change": ["phase"], "participant_sd": ["participant_effect"]}
    coords = {"phase": ["treatment", "followup"], "participant_effect": ["intercept", "change"]}
    const = {"treatment_end": 12.0, "last_week": 16.0, "weeks": [0, 2, 4, 6, 8, 12, 16], "score_min": 0.0, "score_max": 60.0, "integer_scores": True}
    if with_markers:
        post.update(
            marker_mean=rng.normal(size=(c, d, 2)) * 0.1,
            marker_sd=np.ones((c, d, 2)),
            marker_regression=np.full((c, d, 1), 0.5),
            marker_prognostic=np.zeros((c, d, 2)),
            marker_moderation=np.tile([-1.5, 0.0], (c, d, 1)),
        )
        dims.update(marker_mean=["marker"], marker_sd=["marker"], marker_regression=["marker_link"], marker_prognostic=["marker"], marker_moderation=["marker"])
        coords.update(marker=["il6", "crp"], marker_link=["crp~il6"])
        const.update(markers=["il6", "crp"], marker_units=["pg/mL", "mg/L"], log_center=[0.7, 0.6], log_scale=[0.7, 1.0])
        if nac_moderation:
            post["nac_marker_moderation"] = np.tile([0.0, -2.0], (c, d, 1))
            dims["nac_marker_moderation"] = ["marker"]
    idata = az.from_dict(posterior=post, dims=dims, coords=coords)
    idata.posterior.attrs["design_constants"] = json.dumps(const)
    return idata


@pytest.mark.unit
def test_parameters_of_other_model_fits():
    from planning import from_posterior

    plain = from_posterior(_fake_fit(False, False))  # the treatment model: no biomarkers
    assert plain.n_draws == 10 and plain.marker_names == () and plain.marker_chol.shape == (10, 0, 0)
    # a fit without the active-arm dim has one active arm; without recorded arms they get generic names
    assert plain.nac_change.shape == (10, 1, 2) and plain.arms == ("control", "active")
    table, _ = plan(plain, PlanSpec([PlannedTrial(40)], [Scenario("assurance")], sims=50))
    assert table.analysis.iloc[0] == "mmrm" and table.failed_analyses.iloc[0] == 0
    assert table.mean_true_effect.iloc[0] == pytest.approx(-1.5)
    with pytest.raises(PlanningError, match="unknown biomarker"):
        PlannedTrial(40, enrich_marker="crp", enrich_threshold=3.0).validate(plain)

    moderated = from_posterior(_fake_fit(True, True))  # the moderation model's NAC x marker term is used
    np.testing.assert_allclose(moderated.nac_moderation[:, 0], np.tile([0.0, -2.0], (10, 1)))
    cov = moderated.marker_chol[0] @ moderated.marker_chol[0].T
    np.testing.assert_allclose(cov, [[1.0, 0.5], [0.5, 1.25]])
    enriched = PlannedTrial(40, enrich_marker="crp", enrich_threshold=3.0)
    table, _ = plan(moderated, PlanSpec([PlannedTrial(40), enriched], [Scenario("assurance")], AnalysisSettings(method="ancova"), sims=400))
    assert table.mean_true_effect.iloc[1] < table.mean_true_effect.iloc[0] - 1.0
    headline = from_posterior(_fake_fit(True, False))
    assert np.all(headline.nac_moderation == 0)
