"""Multi-arm planning (issue 26): trials with any number of arms, from a k-arm posterior or a design prior
per arm; a row per active arm and one for "at least one arm"; thresholds calibrated to the family-wise type
I error under the global null; arms dropped for futility at interim looks while the others continue; and
the two-arm tables exactly those of the code before multi-arm support.

Independent checks (written here, not the planning code's formulas):
- the closed-form k-arm MMRM against a direct maximisation of the REML likelihood;
- each arm's power against the exact distribution of the ANCOVA decision (planning.analytic generalised
  to K arms: given the baselines the estimate is normal, the variance estimate an independent chi-square);
- the family's quantities against a normal calculation with the variance estimated (Dunnett's
  multivariate t): the calibrated threshold against Dunnett's critical value of the one-sided many-to-one
  comparison, and the power of "at least one arm" against the multivariate normal of the arms' t
  statistics mixed over the variance estimate. These leave out the baseline covariate's chance imbalance
  (an O(1/N) variance inflation per arm, the F term of planning.analytic); its size is measured as the gap
  between the exact per-arm power and the same calculation without it, and allowed for."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special, stats

import plan as plan_cli
from planning import (
    AnalysisSettings,
    CalibrationSettings,
    InterimSettings,
    PlannedTrial,
    PlanningError,
    PlanSpec,
    Scenario,
    analytic_power,
    conditional_change_sd,
    fixed_parameters,
    from_posterior,
    implied_mmrm,
    mmrm_effect,
    plan,
    simulate_trials,
)
from planning.analysis import analyse, ancova
from planning.mmrm_gls import fit_reml, pattern_stats
from tests.test_planning_mmrm import direct_reml

DOSE = ("placebo", "low", "high")
DOSE_DIR = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "dose"


def unrounded(params):
    return replace(params, scale=replace(params.scale, integer_scores=False, score_min=None, score_max=None))


def dose_parameters(effects=((-1.5, -2.0), (-3.0, -3.5)), **kw):
    """The published-trial calibration with the dose trial's arms: per active arm (treatment phase, follow-up) changes."""
    return fixed_parameters(arms=DOSE, nac_change=effects, **kw)


# ---------------------------------------------------------------- two arms: the tables of the two-arm code


def two_arm_tables() -> dict[str, pd.DataFrame]:
    """Two small two-arm plans through the API: an MMRM family with a design prior, MAR and MNAR dropout, an
    interim look and calibrated thresholds; a trajectory family with enrichment, sites and the dual ANCOVA."""
    weeks = (0, 4, 8, 12)
    params = implied_mmrm(fixed_parameters(), weeks).with_effect_prior(-2.0, 1.0)
    designs = [PlannedTrial(30, weeks=weeks, dropout=(0.2, 0.3)), PlannedTrial(40, allocation=1.5, weeks=weeks, dropout=0.25, dropout_mechanism="mnar")]
    spec = PlanSpec(designs, [Scenario("assurance"), Scenario("vague", sd=6.0), Scenario("fixed", 0.0), Scenario("fixed", -3.0)], AnalysisSettings(),
                    sims=120, seed=1, chunk_size=60, robust_weight=0.2, interim=InterimSettings((0.5,), futility=0.3, accrual_per_week=3.0),
                    calibration=CalibrationSettings(alpha=0.1, sims=300))
    a, _ = plan(params, spec)
    traj = fixed_parameters(nac_moderation=(0.0, -1.0, 0.0))
    designs = [PlannedTrial(40, dropout=0.2, dropout_mechanism="mar", sites=2), PlannedTrial(40, dropout=0.2, sites=2, enrich_marker="crp", enrich_threshold=3.0)]
    spec = PlanSpec(designs, [Scenario("assurance"), Scenario("fixed", -2.0)], AnalysisSettings(method="ancova", dual=True), sims=150, seed=1, chunk_size=75)
    b, _ = plan(traj, spec)
    return {"mmrm_interim_calibrated": a, "trajectory_ancova": b}


# The same plans' columns as the two-arm code computed them (commit e2cbc57, `two_arm_tables` there; plan.py
# runs on saved fits of the bundled trial compared likewise, see docs/planning.md).
REFERENCE_TWO_ARM = {
    'mmrm_interim_calibrated': {
        'n_per_arm': [30, 30, 30, 30, 40, 40, 40, 40],
        'n_treatment': [30, 30, 30, 30, 60, 60, 60, 60],
        'scenario': ['assurance', 'vague', 'effect=0', 'effect=-3', 'assurance', 'vague', 'effect=0', 'effect=-3'],
        'p_success': [0.35, 0.3333333333333333, 0.08333333333333333, 0.49166666666666664, 0.4, 0.2916666666666667, 0.06666666666666667, 0.4583333333333333],
        'mean_p_benefit': [0.687471360728546, 0.5530010509390965, 0.5004549655465573, 0.7967008218775153, 0.7630950656969095, 0.4658538047055588, 0.49166449729581446, 0.8017448891744487],
        'mean_true_effect': [-2.133929083947722, -0.6918212207505922, 0.0, -3.0, -1.8642861574231702, 0.7813573098115069, 0.0, -3.0],
        'interval_width': [8.436271231524081, 8.695322072888604, 9.055693574282339, 8.381021539010195, 6.705223891590191, 7.322004714187553, 7.466566360530749, 6.625120286803028],
        'bias': [0.47397208242275624, 0.2571131426438114, 0.36821638602723, 0.3470259513026937, 0.00673750055750646, -0.00944909116985982, 0.32357107132837626, 0.9691252368410646],
        'mean_completers': [33.24166666666667, 29.408333333333335, 27.941666666666666, 35.858333333333334, 57.85, 46.7, 45.05, 60.7],
        'realised_dropout': [0.2486111111111111, 0.24916666666666665, 0.25625, 0.25125, 0.24666666666666667, 0.2540833333333333, 0.249, 0.24924999999999997],
        'threshold': [0.876760254821277, 0.876760254821277, 0.876760254821277, 0.876760254821277, 0.9093650939758463, 0.9093650939758463, 0.9093650939758463, 0.9093650939758463],
        'failed_analyses': [0, 0, 0, 0, 0, 0, 0, 0],
        'expected_n': [60.0, 60.0, 60.0, 60.0, 93.35, 89.5, 88.68333333333334, 94.51666666666667],
        'p_stop_efficacy': [0.05, 0.1, 0.008333333333333333, 0.041666666666666664, 0.08333333333333333, 0.11666666666666667, 0.0, 0.05],
        'p_stop_futility': [0.475, 0.5916666666666667, 0.7416666666666667, 0.35833333333333334, 0.39166666666666666, 0.6333333333333333, 0.8083333333333333, 0.3416666666666667],
        'expected_duration_weeks': [26.416666666666668, 24.75, 24.166666666666668, 27.666666666666668, 37.08333333333334, 32.5, 31.527777777777775, 38.47222222222222],
        'calibration_type1': [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
        'assurance_robust': [0.3466666666666666, 0.3466666666666666, 0.3466666666666666, 0.3466666666666666, 0.3783333333333334, 0.3783333333333334, 0.3783333333333334, 0.3783333333333334],
        'expected_screened': [60.0, 60.0, 60.0, 60.0, 93.35, 89.5, 88.68333333333334, 94.51666666666667],
    },
    'trajectory_ancova': {
        'n_per_arm': [40, 40, 40, 40],
        'n_treatment': [40, 40, 40, 40],
        'scenario': ['assurance', 'effect=-2', 'assurance', 'effect=-2'],
        'p_success': [0.10666666666666667, 0.11333333333333333, 0.29333333333333333, 0.18],
        'mean_p_benefit': [0.6647728997486693, 0.7763598014375309, 0.847272213678224, 0.785125056065477],
        'mean_true_effect': [-1.5332272257883746, -2.0, -2.5722819178284757, -2.0],
        'interval_width': [6.650474094770389, 6.6853752773651145, 6.6353472426222195, 6.607481573829512],
        'bias': [0.3887784470763844, 0.10013704901925112, -0.0689540367075804, 0.00788253722119291],
        'mean_completers': [64.12666666666667, 63.666666666666664, 63.68, 63.64],
        'realised_dropout': [0.19841666666666669, 0.20416666666666666, 0.20400000000000001, 0.2045],
        'threshold': [0.975, 0.975, 0.975, 0.975],
        'failed_analyses': [0, 0, 0, 0],
        'expected_n': [80.0, 80.0, 80.0, 80.0],
        'assurance_robust': [0.10666666666666667, 0.10666666666666667, 0.29333333333333333, 0.29333333333333333],
        'expected_screened': [80.0, 80.0, 233.53039273935283, 233.53039273935283],
    },
}


@pytest.mark.unit
def test_two_arm_tables_are_those_of_the_two_arm_code():
    """Two arms: one row per design and scenario, of arm 'nac' (no 'any' row: at least one arm is the arm),
    and every number the two-arm code gave for the same seed (the random numbers, the analyses, the
    interim look and the calibration unchanged)."""
    for name, table in two_arm_tables().items():
        assert (table.arm == "nac").all(), name
        reference = REFERENCE_TWO_ARM[name]
        assert len(table) == len(reference["p_success"])
        for column, values in reference.items():
            if isinstance(values[0], str):
                assert table[column].tolist() == values, (name, column)
            else:
                np.testing.assert_allclose(table[column].to_numpy(float), values, rtol=1e-12, atol=0, err_msg=f"{name}: {column}")
        # the new columns: the sizes per arm, planned (no look stops enrolment before it is complete here)
        assert (table.expected_n_control <= table.n_per_arm).all() and (table.expected_n_arm <= table.n_treatment).all()
        np.testing.assert_allclose(table.expected_n, table.expected_n_control + table.expected_n_arm)


# ---------------------------------------------------------------- k-arm posteriors


def save_k_arm_mmrm_fit(path, draws: int = 40, seed: int = 3, effects=((-1.5, -2.0), (-3.0, -3.5))):
    """A saved MMRM fit of the bundled three-arm dose trial built by hand (test_planning_cli.save_mmrm_fit), around
    the MMRM implied by the published-trial calibration with a change per arm (`effects`)."""
    from tests.test_planning_cli import save_mmrm_fit

    return save_mmrm_fit(DOSE_DIR, path, draws=draws, seed=seed, params=dose_parameters(effects), effect_jitter=0.3)


@pytest.fixture(scope="module")
def dose_fit(tmp_path_factory):
    return save_k_arm_mmrm_fit(tmp_path_factory.mktemp("dosefit") / "idata.nc")


def observed_loss_by_arm(week: float) -> dict[str, float]:
    """Per arm: the fraction of the dose trial's participants who attend no visit at or after `week`, from the files."""
    visits = pd.read_csv(DOSE_DIR / "visits.csv").dropna(subset=["madrs"])
    parts = pd.read_csv(DOSE_DIR / "participants.csv")
    parts["last"] = parts["participant_id"].map(visits.groupby("participant_id")["week"].max())
    return {arm: float((parts[parts.arm == arm]["last"] < week).mean()) for arm in DOSE}


@pytest.mark.unit
def test_a_k_arm_mmrm_posterior_gives_its_arms_effects_and_dropout(dose_fit):
    import arviz as az

    params = from_posterior(dose_fit)
    assert params.family == "mmrm" and params.arms == DOSE and params.active_arms == ("low", "high")
    post = az.from_netcdf(dose_fit).posterior
    assert params.nac_visit_effect.shape == (40, 2, 6)
    for a, arm in enumerate(("low", "high")):
        np.testing.assert_array_equal(params.nac_visit_effect[:, a], post["nac_visit_effect"].sel(active_arm=arm).stack(s=("chain", "draw")).transpose("s", ...).values)
    # the fitted trial's loss by week 12, per arm, from its own data
    from planning import calibrated_dropout

    rates, _, source = calibrated_dropout(params.source, params.scale.weeks, 12.0, None, params.arms)
    expected = observed_loss_by_arm(12)
    assert source == "fitted trial: observed loss by visit and arm"
    np.testing.assert_allclose(rates, [round(expected[a], 4) for a in DOSE])
    # a plan from it: a row per arm and 'any'; each arm's true effect is its own
    table, _ = plan(params, PlanSpec([PlannedTrial(30, weeks=(0, 2, 4, 6, 8, 12), dropout=rates)], [Scenario("assurance")], sims=40))
    assert table.arm.tolist() == ["low", "high", "any"]
    arms = table.set_index("arm")
    np.testing.assert_allclose(arms.mean_true_effect[["low", "high"]], params.nac_visit_effect[:, :, 4].mean(axis=0), atol=0.3)
    assert arms.mean_true_effect["high"] < arms.mean_true_effect["low"] - 1
    # a design naming other arms is refused, naming both
    with pytest.raises(PlanningError, match=r"\['placebo', 'nac'\] are not the parameter set's \['placebo', 'low', 'high'\]"):
        PlannedTrial(30, arms=("placebo", "nac")).validate(params)
    with pytest.raises(PlanningError, match="1 active arm"):
        PlannedTrial(30).validate(params)  # one ratio: a two-arm design


@pytest.mark.unit
def test_a_k_arm_trajectory_posterior_and_the_mmrm_it_implies():
    """A treatment-model posterior with a change per arm and phase (nac_change: active_arm x phase), an
    arm x marker term and per-arm curvature: read per arm; without the arm x marker term its implied MMRM
    has each arm's trajectory as its effect; labels of another trial are refused."""
    import arviz as az

    c, d = 2, 5
    post = {
        "intercept": np.full((c, d), 28.0), "time_change": np.tile([-11.0, -0.5], (c, d, 1)),
        "nac_change": np.tile([[-1.0, -1.0], [-3.0, -2.0]], (c, d, 1, 1)), "nac_curvature": np.tile([0.0, 0.5], (c, d, 1)),
        "participant_sd": np.tile([5.0, 6.0], (c, d, 1)), "participant_corr": np.full((c, d), -0.2), "residual_sd": np.full((c, d), 3.0),
    }
    dims = {"time_change": ["phase"], "nac_change": ["active_arm", "phase"], "nac_curvature": ["active_arm"], "participant_sd": ["participant_effect"]}
    coords = {"phase": ["treatment", "followup"], "participant_effect": ["intercept", "change"], "active_arm": ["low", "high"]}
    const = {"treatment_end": 12.0, "last_week": 16.0, "weeks": [0, 2, 4, 6, 8, 12, 16], "score_min": 0.0, "score_max": 60.0, "integer_scores": True,
             "arms": list(DOSE)}
    idata = az.from_dict(posterior=post, dims=dims, coords=coords)
    idata.posterior.attrs["design_constants"] = json.dumps(const)
    params = from_posterior(idata)
    assert params.arms == DOSE and params.nac_change.shape == (10, 2, 2) and params.nac_curvature.shape == (10, 2)
    implied = implied_mmrm(params, (0, 4, 12, 16))
    # effect at week w: change_1 t1 + change_2 t2 + curvature 4 t1 (1 - t1)
    np.testing.assert_allclose(implied.nac_visit_effect[0], [[-1 / 3, -1.0, -2.0], [-1 + 0.5 * 4 / 3 * 2 / 3, -3.0, -5.0]])
    table, _ = plan(params, PlanSpec([PlannedTrial(30, weeks=(0, 4, 8, 12))], [Scenario("assurance")], sims=30))
    np.testing.assert_allclose(table.set_index("arm").mean_true_effect[["low", "high"]], [-1.0, -3.0])
    const["arms"] = ["placebo", "a", "b"]
    idata.posterior.attrs["design_constants"] = json.dumps(const)
    with pytest.raises(PlanningError, match=r"active arms \['low', 'high'\] are not the fitted trial's \['a', 'b'\]"):
        from_posterior(idata)


# ---------------------------------------------------------------- the table: rows per arm and for "any"


@pytest.mark.unit
def test_rows_per_arm_and_for_at_least_one_arm():
    """Three arms from a design prior per arm: a row per active arm and an 'any' row per design and
    scenario; 'any' succeeds when some arm does (between the largest arm's rate and the sum of the arms');
    each arm's true effect is its prior's mean; fixed effects can differ by arm; the 'any' row leaves the
    columns of one arm's estimate empty and states the trial's sizes and dropout."""
    params = unrounded(fixed_parameters()).with_active_arms(DOSE).with_effect_prior(per_arm={"low": (-1.0, 0.0), "high": (-4.0, 0.0)})
    design = PlannedTrial(40, allocation=(1.0, 1.5), dropout=(0.1, 0.2, 0.3), dropout_mechanism="mcar", weeks=(0, 12))
    spec = PlanSpec([design], [Scenario("assurance"), Scenario("fixed", 0.0), Scenario("fixed", (0.0, -3.0))], AnalysisSettings(method="ancova"),
                    sims=400, seed=2, chunk_size=200, round_scores=False)
    table, _ = plan(params, spec)
    assert table.arm.tolist() == ["low", "high", "any"] * 3
    assert table.scenario.tolist() == ["assurance"] * 3 + ["effect=0"] * 3 + ["effect=0,-3"] * 3
    t = table.set_index(["scenario", "arm"])
    for scen in ("assurance", "effect=0", "effect=0,-3"):
        low, high, anyone = (t.p_success[(scen, a)] for a in ("low", "high", "any"))
        assert max(low, high) <= anyone <= low + high
    assert t.mean_true_effect[("assurance", "low")] == pytest.approx(-1.0) and t.mean_true_effect[("assurance", "high")] == pytest.approx(-4.0)
    assert t.effect[("effect=0,-3", "high")] == -3.0 and t.effect[("effect=0,-3", "low")] == 0.0 and np.isnan(t.effect[("effect=0,-3", "any")])
    assert t.p_success[("effect=0,-3", "high")] > 0.25 and t.p_success[("effect=0,-3", "low")] < 0.06
    anyrow = t.loc[("assurance", "any")]
    assert np.isnan(anyrow.interval_width) and np.isnan(anyrow.bias) and np.isnan(anyrow.mean_true_effect)
    assert (anyrow.n_per_arm, anyrow.n_treatment, anyrow.n_total) == (40, 100, 140)
    assert anyrow.dropout == pytest.approx((40 * 0.1 + 40 * 0.2 + 60 * 0.3) / 140) and anyrow.dropout_treatment == pytest.approx((8 + 18) / 100)
    high = t.loc[("assurance", "high")]
    assert (high.n_treatment, high.dropout_control, high.dropout_treatment) == (60, 0.1, 0.3)
    assert high.dropout == pytest.approx((4 + 18) / 100) and abs(high.realised_dropout - 0.22) < 0.02
    assert (table.expected_n_arm == table.n_treatment).all() and (table.expected_n_control == 40).all()
    # the success of 'any' is counted trial by trial, not from the arms' rates: with the arms' decisions
    # correlated through the shared control arm it is below the rate of independent arms
    null = t.xs("effect=0")
    assert null.p_success["any"] < 1 - (1 - null.p_success["low"]) * (1 - null.p_success["high"]) + 3 * null.p_success_mcse["any"]


# ---------------------------------------------------------------- the k-arm MMRM


@pytest.mark.unit
def test_closed_form_k_arm_mmrm_matches_a_direct_reml_maximisation():
    """One simulated three-arm trial with MAR dropout at every visit: REML log-likelihood, every arm's
    difference from control at every visit and its SE as a direct maximisation finds them."""
    weeks = (0, 4, 8, 12)
    params = unrounded(implied_mmrm(dose_parameters(), weeks))
    trial = PlannedTrial(25, allocation=(1.0, 1.4), weeks=weeks, dropout=0.4, dropout_mechanism="mar", dropout_score_effect=1.0)
    sim = simulate_trials(params, trial.with_arms(params), Scenario("assurance"), 1, np.random.default_rng(3), round_scores=False)
    change = sim.y[0, :, 1:] - sim.y[0, :, :1]
    assert 0 < (sim.attended[0] < 3).mean() < 0.7 and set(sim.arm) == {0, 1, 2}
    ll, beta, cov = direct_reml(change, sim.attended[0], sim.arm, sim.y0[0], 3, 2)
    fit = fit_reml(pattern_stats(change[None], sim.attended, sim.arm, sim.y0))
    assert fit.ok[0] and fit.loglik[0] == pytest.approx(ll, abs=1e-7)
    for visit in range(3):
        for a in range(2):
            est, se = fit.effect(visit, a)
            assert est[0] == pytest.approx(beta[visit * 4 + 1 + a], rel=1e-4)
            assert se[0] == pytest.approx(np.sqrt(cov[visit * 4 + 1 + a, visit * 4 + 1 + a]), rel=1e-4)


@pytest.mark.unit
def test_k_arm_mmrm_equals_the_ancova_with_complete_data_and_leaves_out_an_empty_arm():
    weeks = (0, 2, 4, 8, 12)
    params = implied_mmrm(dose_parameters(), weeks)
    sim = simulate_trials(params, PlannedTrial(30, weeks=weeks, dropout=0.0, arms=DOSE), Scenario("assurance"), 30, np.random.default_rng(1))
    m = mmrm_effect(sim.y[:, :, 1:] - sim.y[:, :, :1], sim.attended, sim.arm, sim.y0, sim.primary, n_active=2)
    est, se, df = ancova(sim)
    assert est.shape == se.shape == m["estimate"].shape == (30, 2)
    np.testing.assert_allclose(m["estimate"], est, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(m["se"], se, rtol=1e-8)
    np.testing.assert_array_equal(m["df"][:, 0], df)
    # nobody of the high arm in the analysis (its participants not enrolled): the low arm's comparison is
    # that of the two-arm trial without them, the high arm's a failed analysis
    attended = np.where(sim.arm == 2, 0, sim.attended)
    without = mmrm_effect(sim.y[:, :, 1:] - sim.y[:, :, :1], attended, sim.arm, sim.y0, sim.primary, n_active=2)
    keep = sim.arm < 2
    two = mmrm_effect((sim.y[:, :, 1:] - sim.y[:, :, :1])[:, keep], sim.attended[:, keep], sim.arm[keep], sim.y0[:, keep], sim.primary)
    np.testing.assert_allclose(without["estimate"][:, 0], two["estimate"][:, 0], rtol=1e-6)  # REML to its convergence tolerance
    np.testing.assert_allclose(without["se"][:, 0], two["se"][:, 0], rtol=1e-6)
    assert without["ok"][:, 0].all() and not without["ok"][:, 1].any()
    dropped_est, dropped_se, _ = ancova(sim, np.where(sim.arm == 2, False, sim.completed))
    np.testing.assert_allclose(dropped_est[:, 0], two["estimate"][:, 0], rtol=1e-8)
    assert np.isinf(dropped_se[:, 1]).all()


# ---------------------------------------------------------------- per-arm power, exactly


def arm_power_checks(design: PlannedTrial, effects: tuple[float, ...], threshold: float, sims: int, seed: int):
    """Simulated success rate of each arm and of 'any' (ANCOVA, no dropout, unrounded, a flat analysis prior),
    with each arm's exact power (planning.analytic) and the 'any' power of the normal calculation."""
    params = unrounded(fixed_parameters()).with_active_arms(design.arms)
    analysis = AnalysisSettings(method="ancova", threshold=threshold, prior_sd=1e4)
    spec = PlanSpec([design], [Scenario("fixed", effects)], analysis, sims=sims, seed=seed, chunk_size=1000, round_scores=False)
    table, _ = plan(params, spec)
    exact = [analytic_power(params, design, e, analysis, arm=a) for a, e in enumerate(effects)]
    return table, params, exact


def t_mixture(design: PlannedTrial, sd_c: float, nodes: int = 200):
    """The arms' t statistics as a normal calculation with estimated variance: (correlation R of the arms'
    estimates through the shared control arm, SE of each arm's estimate with the baselines balanced, the
    residual df, the quantiles of s / sigma over the chi-square's `nodes` equal-probability bins)."""
    sizes = np.asarray(design.arm_sizes, float)
    inv0 = 1 / sizes[0]
    var = 1 / sizes[1:] + inv0
    corr = inv0 / np.sqrt(np.outer(var, var))
    np.fill_diagonal(corr, 1.0)
    df = int(sizes.sum()) - len(sizes) - 1
    u = np.sqrt(stats.chi2.ppf((np.arange(nodes) + 0.5) / nodes, df) / df)
    return corr, sd_c * np.sqrt(var), df, u


def any_power_normal(design: PlannedTrial, sd_c: float, effects, threshold: float) -> float:
    """P(at least one arm's t statistic below -t_df^-1(threshold)): the arms' estimates multivariate normal
    around their effects with correlation R, the variance estimate s^2 = sigma^2 chi2_df / df shared."""
    corr, se, df, u = t_mixture(design, sd_c)
    q = special.stdtrit(df, threshold)
    mvn = stats.multivariate_normal(mean=np.zeros(len(se)), cov=corr)
    return float(np.mean([1 - mvn.cdf(q * s + np.asarray(effects) / se) for s in u]))


def dunnett_critical(design: PlannedTrial, alpha: float) -> tuple[float, float]:
    """Dunnett's one-sided many-to-one critical value t* (P(max_a -T_a > t*) = alpha under the global null,
    multivariate t with the arms' correlation) and the density of max_a -T_a there (for the Monte Carlo SE
    of a calibrated quantile)."""
    corr, _, _, u = t_mixture(design, 1.0)
    mvn = stats.multivariate_normal(mean=np.zeros(len(corr)), cov=corr)
    below = lambda t: float(np.mean([mvn.cdf(np.full(len(corr), t * s)) for s in u]))
    t_star = optimize.brentq(lambda t: below(t) - (1 - alpha), 1.0, 5.0, xtol=1e-6)
    h = 1e-3
    return t_star, (below(t_star + h) - below(t_star - h)) / (2 * h)


@pytest.mark.unit
def test_each_arms_power_matches_the_exact_formula_and_any_arm_the_normal_calculation():
    """Three arms, one without an effect and one with -3, 40 per arm, success at P(benefit) > 0.975, no
    dropout: each arm's simulated success rate equals its exact power (the null arm's: its type I
    error) within 3.5 MCSE; 'any' equals the multivariate normal calculation within 3.5 MCSE plus the
    size of the baseline-imbalance term it leaves out (twice the largest gap between an arm's exact power
    and the same calculation for that arm alone)."""
    design = PlannedTrial(40, dropout=0.0, weeks=(0, 12), arms=DOSE)
    effects = (0.0, -3.0)
    table, params, exact = arm_power_checks(design, effects, 0.975, sims=3000, seed=5)
    rows = table.set_index("arm")
    for a, arm in enumerate(("low", "high")):
        p, n = rows.p_success[arm], rows.sims[arm]
        assert abs(p - exact[a]) < 3.5 * np.sqrt(exact[a] * (1 - exact[a]) / n), (arm, p, exact[a])
    sd_c = conditional_change_sd(params, 12.0)
    _, se, df, u = t_mixture(design, sd_c)
    alone = [float(np.mean(special.ndtr(-special.stdtrit(df, 0.975) * u - e / s))) for e, s in zip(effects, se)]
    allowance = 2 * max(abs(x - y) for x, y in zip(exact, alone))
    expected = any_power_normal(design, sd_c, effects, 0.975)
    p, n = rows.p_success["any"], rows.sims["any"]
    assert abs(p - expected) < 3.5 * np.sqrt(expected * (1 - expected) / n) + allowance, (p, expected, allowance)
    assert expected > max(exact) + 0.005  # the null arm's false successes add to 'any'


# ---------------------------------------------------------------- family-wise type I error


def fwer_spec(n: int, sims: int, alpha: float, weeks=(0, 4, 8, 12), looks=(0.5,), futility=0.0, mode="final", seed=3) -> PlanSpec:
    interim = InterimSettings(looks, futility=futility, efficacy=0.995) if looks else None
    return PlanSpec([PlannedTrial(n, weeks=weeks, dropout=0.25, arms=DOSE)], [Scenario("fixed", 0.0)], AnalysisSettings(), sims=sims, seed=seed,
                    chunk_size=1000, interim=interim, calibration=CalibrationSettings(alpha=alpha, mode=mode, sims=sims))


@pytest.mark.unit
def test_family_wise_type_i_error_after_calibration_small():
    """Three arms, MMRM, MAR dropout, a look at half the information: the common threshold calibrated on 1,500
    global-null trials to a family-wise alpha of 0.1 gives, on 1,500 fresh global-null trials, 'any arm
    succeeds' within 3 MC SE (of the difference of two estimates) of 0.1, each arm alone clearly less; the
    threshold is above the one that calibrates a single arm (more arms, more chances)."""
    params = implied_mmrm(dose_parameters(), (0, 4, 8, 12))
    table, _ = plan(params, fwer_spec(30, 1500, 0.1))
    rows = table.set_index("arm")
    assert 0.09 < rows.calibration_type1["any"] <= 0.1 and rows.threshold.nunique() == 1
    assert abs(rows.p_success["any"] - 0.1) < 3 * np.sqrt(2 * 0.1 * 0.9 / 1500), rows.p_success["any"]
    assert (rows.p_success[["low", "high"]] < 0.085).all() and (rows.p_success[["low", "high"]] > 0.03).all()
    two_arm = implied_mmrm(fixed_parameters(), (0, 4, 8, 12))
    single, _ = plan(two_arm, replace(fwer_spec(30, 1500, 0.1), designs=[PlannedTrial(30, weeks=(0, 4, 8, 12), dropout=0.25)]))
    assert rows.threshold["any"] > single.threshold.iloc[0] + 0.005


@pytest.mark.unit
def test_calibrated_threshold_matches_dunnetts_critical_value_small():
    """Flat analysis prior, ANCOVA, no dropout, no looks: P(benefit) > c is t < -t_df^-1(c), so the threshold
    calibrated on global-null trials to family-wise alpha is Dunnett's one-sided critical value (multivariate
    t, correlation 1/2 for equal arms) within 3 Monte Carlo SEs of a quantile estimated from 2,000 trials."""
    design = PlannedTrial(50, dropout=0.0, weeks=(0, 12), arms=DOSE)
    params = unrounded(fixed_parameters()).with_active_arms(DOSE)
    spec = PlanSpec([design], [Scenario("fixed", 0.0)], AnalysisSettings(method="ancova", prior_sd=1e4), sims=200, seed=7, chunk_size=1000,
                    round_scores=False, calibration=CalibrationSettings(alpha=0.05, sims=2000))
    table, _ = plan(params, spec)
    df = sum(design.arm_sizes) - 4
    t_cal = special.stdtrit(df, table.threshold.iloc[0])
    t_star, density = dunnett_critical(design, 0.05)
    quantile_se = np.sqrt(0.05 * 0.95 / 2000) / density
    assert abs(t_cal - t_star) < 3 * quantile_se, (t_cal, t_star, quantile_se)
    assert t_star > special.stdtrit(df, 0.95) + 0.2  # far from the unadjusted one-arm value


# ---------------------------------------------------------------- interim looks: arms dropped


@pytest.mark.unit
def test_interim_looks_drop_an_arm_for_futility_while_the_other_continues():
    """A null arm and an arm with a large effect, slow accrual (the look at a third of the information
    comes when 71 of the 120 have entered), an aggressive futility rule: the null arm is mostly dropped
    (enrolling fewer), the effective arm rarely, and it keeps succeeding; expected sizes add up per arm;
    the control arm enrols fewer only when both arms stop; without futility stopping nothing stops."""
    weeks = (0, 4, 8, 12)
    params = implied_mmrm(dose_parameters(), weeks)
    design = PlannedTrial(40, weeks=weeks, dropout=0.2, arms=DOSE)
    base = PlanSpec([design], [Scenario("fixed", (0.0, -5.0))], AnalysisSettings(), sims=300, seed=11, chunk_size=150,
                    interim=InterimSettings((0.3,), futility=0.3, efficacy=1.0, accrual_per_week=3.0))
    table, _ = plan(params, base)
    rows = table.set_index("arm")
    assert rows.p_stop_futility["low"] > 0.6 and rows.p_stop_futility["high"] < 0.3
    assert rows.expected_n_arm["low"] < 32 and rows.expected_n_arm["low"] < rows.expected_n_arm["high"] < 40
    np.testing.assert_allclose(rows.expected_n, rows.expected_n_control + rows.expected_n_arm["low"] + rows.expected_n_arm["high"])
    assert rows.expected_n_arm["any"] == pytest.approx(rows.expected_n_arm["low"] + rows.expected_n_arm["high"])
    # the trial ends at the look only when both arms are dropped: then the control arm stops enrolling too
    both = rows.p_stop_futility["any"]
    assert 0 < both <= rows.p_stop_futility["high"] and rows.expected_n_control["any"] < 40
    assert rows.p_success["high"] > 0.6 and rows.p_success["low"] < 0.05
    assert rows.expected_duration_weeks["low"] < rows.expected_duration_weeks["high"] <= rows.expected_duration_weeks["any"]
    never, _ = plan(params, replace(base, interim=replace(base.interim, futility=0.0)))
    never = never.set_index("arm")
    assert (never.expected_n_arm[["low", "high"]] == 40).all() and (never.p_stop_futility == 0).all()
    assert never.p_success["high"] >= rows.p_success["high"]


@pytest.mark.unit
def test_a_dropped_arm_enrols_nobody_after_its_look():
    """The sequential rule trial by trial: an arm dropped at a look enrols exactly its participants who had
    entered by then, the control arm everyone while another arm runs; the continuing arm's final analysis
    leaves out the participants never enrolled."""
    from planning.interim import closed_participants, enrolled_by_arm, entry_weeks, sequential

    weeks = (0, 4, 8, 12)
    params = implied_mmrm(dose_parameters(), weeks)
    design = PlannedTrial(30, weeks=weeks, dropout=0.1, arms=DOSE)
    interim = InterimSettings((0.3,), futility=0.4, efficacy=1.0, accrual_per_week=3.0)
    sim = simulate_trials(params, design, Scenario("fixed", (0.0, -4.0)), 200, np.random.default_rng(4))
    res = sequential(sim, design, AnalysisSettings(), interim)
    entry = entry_weeks(design, 3.0)
    look = 0.3 * 90  # 27 participants at week 12: the 27th enters at week 26 / 3
    week = (np.ceil(look) - 1) / 3 + 12
    entered = [(entry[sim.arm == k] <= week + 1e-9).sum() for k in range(3)]
    low_only = (res["stop_look"][:, 0] == 1) & (res["stop_look"][:, 1] == 0)
    assert low_only.sum() > 20
    np.testing.assert_array_equal(res["enrolled_arm"][low_only], np.tile([30, entered[1], 30], (low_only.sum(), 1)))
    both = (res["stop_look"] == 1).all(axis=1)
    np.testing.assert_array_equal(res["enrolled_arm"][both], np.tile(entered, (both.sum(), 1)))
    assert (res["trial_duration"][low_only] > week).all() and (res["duration"][low_only, 0] == week).all()
    # the continuing arm's final analysis: the same as analysing without the never-enrolled
    closed = closed_participants(sim.arm, entry, np.where(res["stop_look"] == 1, week, np.inf))
    assert closed[low_only][:, sim.arm == 1].sum(axis=1).tolist() == [30 - entered[1]] * low_only.sum()
    assert not closed[low_only][:, sim.arm != 1].any() and not closed[:, sim.arm == 0].any()
    direct = analyse(sim, AnalysisSettings(), attended=np.where(closed, 0, sim.attended))
    np.testing.assert_allclose(res["post_mean"][low_only, 1], direct["post_mean"][low_only, 1], rtol=1e-10)
    assert enrolled_by_arm(design, entry, np.full((1, 2), np.inf)).tolist() == [[30, 30, 30]]


# ---------------------------------------------------------------- reproducibility


@pytest.mark.smoke
def test_same_seed_same_k_arm_table_on_one_process_and_two_dask_workers():
    from dask.distributed import Client, LocalCluster

    params = implied_mmrm(dose_parameters(), (0, 4, 8, 12)).with_effect_prior(per_arm={"low": (-1.0, 1.0), "high": (-3.0, 1.0)})
    spec = PlanSpec([PlannedTrial(n, weeks=(0, 4, 8, 12), dropout=(0.2, 0.25, 0.3), arms=DOSE) for n in (20, 30)],
                    [Scenario("assurance"), Scenario("vague", sd=6.0), Scenario("fixed", 0.0)], AnalysisSettings(), sims=60, seed=8, chunk_size=25,
                    robust_weight=0.2, interim=InterimSettings((0.5,), futility=0.2, accrual_per_week=3.0), calibration=CalibrationSettings(0.1, sims=200))
    local, _ = plan(params, spec, workers=1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        distributed, _ = plan(params, spec, client=client)
    pd.testing.assert_frame_equal(local, distributed, check_exact=True)
    assert set(local.arm) == {"low", "high", "any"}


# ---------------------------------------------------------------- plan.py


@pytest.mark.smoke
def test_plan_cli_on_a_three_arm_fit(dose_fit, tmp_path):
    """python plan.py --posterior <three-arm MMRM fit> --allocation 1:1:1 --alpha --interim: rows per arm
    and 'any', arm names from the data in the page and the record, the family-wise calibration stated."""
    out = tmp_path / "plan"
    args = ["--posterior", str(dose_fit), "--n-per-arm", "30", "--sims", "60", "--chunk-size", "30", "--workers", "1", "--seed", "2", "--quiet",
            "--allocation", "1:1:1", "--alpha", "0.1", "--calibration-sims", "200", "--interim", "0.5", "--effects", "-3"]
    assert plan_cli.main([*args, "--out", str(out)]) == 0
    table = pd.read_csv(out / "plan.csv")
    assert table.arm.tolist() == ["low", "high", "any"] * 4
    assert set(table.scenario) == {"assurance", "vague", "effect=0", "effect=-3"}
    assert {"expected_n_arm", "expected_n_control", "p_stop_futility_look1", "calibration_type1"} <= set(table.columns)
    assert (table.calibration_type1 <= 0.1).all() and table.threshold.nunique() == 1
    page = (out / "plan.html").read_text()
    for text in ("allocation placebo:low:high", "<td>1:1:1</td>", "family-wise type I error at most 0.1", "participants per arm (placebo)",
                 "each active arm is compared with placebo"):
        assert text in page, text
    assert "NAC" not in page and "nac" not in page
    rec = json.loads((out / "plan.json").read_text())
    assert rec["designs"]["arms"] == list(DOSE) and rec["designs"]["allocation"] == {"placebo": 1.0, "low": 1.0, "high": 1.0}
    expected = observed_loss_by_arm(12)
    assert rec["designs"]["dropout_by_arm"] == {a: round(expected[a], 4) for a in DOSE}
    best = pd.read_csv(out / "smallest_n.csv")
    assert best.arm.tolist() == ["low", "high", "any"]
    # named allocation and per-arm design priors
    out2 = tmp_path / "named"
    assert plan_cli.main(["--posterior", str(dose_fit), "--n-per-arm", "20", "--sims", "30", "--workers", "1", "--quiet", "--robust-weight", "0",
                          "--allocation", "high=2,placebo=1,low=1", "--design-prior", "low=Normal(0, 0)", "high=Normal(-4, 0)", "--effects",
                          "--analysis", "ancova", "--out", str(out2)]) == 0
    named = pd.read_csv(out2 / "plan.csv").set_index(["scenario", "arm"])
    assert named.n_treatment[("assurance", "high")] == 40 and named.n_treatment[("assurance", "low")] == 20
    assert named.mean_true_effect[("assurance", "low")] == 0 and named.mean_true_effect[("assurance", "high")] == -4


@pytest.mark.unit
def test_plan_cli_help_names_no_arm_and_refusals_name_the_arms(dose_fit, tmp_path, capsys):
    with pytest.raises(SystemExit):
        plan_cli.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "NAC" not in text and "control arm last" in text and "family-wise" in text
    out = tmp_path / "out"
    base = ["--posterior", str(dose_fit), "--out", str(out)]
    assert plan_cli.main([*base, "--allocation", "1:2"]) == 2
    assert "2 parts for the 3 arms low:high:placebo" in capsys.readouterr().err
    assert plan_cli.main([*base, "--allocation", "placebo=1,low=1"]) == 2
    assert "missing ['high']" in capsys.readouterr().err
    assert plan_cli.main([*base, "--allocation", "1:0:1"]) == 2
    assert "positive" in capsys.readouterr().err
    assert plan_cli.main([*base, "--dropout", "0.1,0.2"]) == 2
    assert "one per arm in the order placebo, low, high" in capsys.readouterr().err
    assert plan_cli.main([*base, "--design-prior", "nac=Normal(-2, 1)"]) == 2
    assert "unknown arm(s) ['nac']" in capsys.readouterr().err
    assert plan_cli.main([*base, "--design-prior", "Normal(-2, 1)", "Normal(-3, 1)", "Normal(-1, 1)"]) == 2
    assert "3 design priors for the 2 active arm(s) ['low', 'high']" in capsys.readouterr().err
    assert plan_cli.main([*base, "--design-prior", "low=Normal(-2, 1)", "Normal(-3, 1)"]) == 2
    assert "or of none" in capsys.readouterr().err
    assert not out.exists()
    # a design prior alone, per named arm: the arms are the names given, after the calibration's control
    assert plan_cli.main(["--design-prior", "low=Normal(-1, 0)", "high=Normal(-3, 0)", "--n-per-arm", "20", "--sims", "20", "--workers", "1",
                          "--quiet", "--analysis", "ancova", "--effects", "--robust-weight", "0", "--out", str(out)]) == 0
    table = pd.read_csv(out / "plan.csv")
    assert table.arm.tolist() == ["low", "high", "any"] * 2 and "allocation placebo:low:high" in (out / "plan.html").read_text()


# ---------------------------------------------------------------- slow: the full checks


@pytest.mark.slow
def test_family_wise_type_i_error_holds_at_2_5_percent():
    """The full check: three arms (100 per arm, MMRM, MAR dropout 25%, two looks), the common threshold
    calibrated on 8,000 global-null trials to a family-wise 2.5%, in both calibration modes: 'any arm
    succeeds' on 8,000 fresh global-null trials is 2.5% within 3 MC SE (difference of two estimates)
    without futility stopping, and not above it with binding futility dropping of arms."""
    params = implied_mmrm(dose_parameters(), (0, 2, 4, 8, 12))
    tol = 3 * np.sqrt(2 * 0.025 * 0.975 / 8000)
    for mode in ("final", "common"):
        spec = fwer_spec(100, 8000, 0.025, weeks=(0, 2, 4, 8, 12), looks=(0.5, 0.75), mode=mode)
        table, _ = plan(params, spec, workers=2)
        rows = table.set_index("arm")
        print(f"{mode}: threshold {rows.threshold['any']:.5f}, efficacy {rows.efficacy_threshold['any']:.5f}, calibration FWER "
              f"{rows.calibration_type1['any']:.4f}, fresh FWER {rows.p_success['any']:.4f} (MCSE {rows.p_success_mcse['any']:.4f}), "
              f"per arm {rows.p_success['low']:.4f} {rows.p_success['high']:.4f}")
        assert 0.0235 < rows.calibration_type1["any"] <= 0.025
        assert abs(rows.p_success["any"] - 0.025) < tol
        binding, _ = plan(params, replace(spec, interim=replace(spec.interim, futility=0.1)), workers=2)
        b = binding.set_index("arm")
        print(f"{mode}, binding futility 0.1: fresh FWER {b.p_success['any']:.4f}, arms dropped {b.p_stop_futility['low']:.3f} {b.p_stop_futility['high']:.3f}")
        assert b.threshold["any"] == rows.threshold["any"] and b.p_success["any"] <= rows.p_success["any"] + 2 * b.p_success_mcse["any"]


@pytest.mark.slow
def test_per_arm_and_any_arm_power_and_the_dunnett_threshold_over_a_grid():
    """Three and four arms, equal and unequal allocation: the threshold calibrated to a family-wise 2.5% on
    20,000 global-null trials is Dunnett's critical value within 3 quantile MC SEs; at that threshold each
    arm's simulated power (6,000 trials) equals its exact power within 3.5 MCSE (every cell; |z| summary
    printed), and 'any' equals the normal calculation within 3.5 MCSE plus the baseline-imbalance
    allowance."""
    cells = []
    for arms, allocation, effects in ((DOSE, 1.0, (-2.0, -3.0)), (DOSE, (1.0, 2.0), (0.0, -2.5)), (("placebo", "a", "b", "c"), 1.0, (0.0, -1.5, -3.0))):
        design = PlannedTrial(60, allocation=allocation, dropout=0.0, weeks=(0, 12), arms=arms)
        params = unrounded(fixed_parameters()).with_active_arms(arms)
        cal = PlanSpec([design], [Scenario("fixed", 0.0)], AnalysisSettings(method="ancova", prior_sd=1e4), sims=1, seed=3, chunk_size=2000,
                       round_scores=False, calibration=CalibrationSettings(alpha=0.025, sims=20000))
        threshold = plan(params, cal)[0].threshold.iloc[0]
        df = sum(design.arm_sizes) - len(arms) - 1
        t_star, density = dunnett_critical(design, 0.025)
        t_cal = special.stdtrit(df, threshold)
        quantile_se = np.sqrt(0.025 * 0.975 / 20000) / density
        print(f"{arms} {allocation}: calibrated t {t_cal:.4f}, Dunnett {t_star:.4f} (quantile MC SE {quantile_se:.4f})")
        assert abs(t_cal - t_star) < 3 * quantile_se
        table, params, exact = arm_power_checks(design, effects, threshold, sims=6000, seed=4)
        rows = table.set_index("arm")
        for a, arm in enumerate(arms[1:]):
            z = (rows.p_success[arm] - exact[a]) / np.sqrt(exact[a] * (1 - exact[a]) / rows.sims[arm])
            cells.append(z)
            print(f"  {arm}: simulated {rows.p_success[arm]:.4f}, exact {exact[a]:.4f} (z {z:+.2f})")
        sd_c = conditional_change_sd(params, 12.0)
        _, se, df, u = t_mixture(design, sd_c)
        alone = [float(np.mean(special.ndtr(-special.stdtrit(df, threshold) * u - e / s))) for e, s in zip(effects, se)]
        allowance = 2 * max(abs(x - y) for x, y in zip(exact, alone))
        expected = any_power_normal(design, sd_c, effects, threshold)
        p = rows.p_success["any"]
        print(f"  any: simulated {p:.4f}, normal calculation {expected:.4f} (allowance {allowance:.4f})")
        assert abs(p - expected) < 3.5 * np.sqrt(expected * (1 - expected) / rows.sims["any"]) + allowance
    cells = np.array(cells)
    print(f"per-arm power vs exact over {len(cells)} arms: max |z| {np.abs(cells).max():.2f}, mean z {cells.mean():+.2f}")
    assert np.abs(cells).max() < 3.5


@pytest.mark.smoke
def test_k_arm_closed_form_agrees_with_the_bayesian_mmrm():
    """One simulated three-arm trial (a null-ish and an effective arm, MAR dropout) analysed by the
    closed-form MMRM and by the project's Bayesian MMRM with every arm (2 chains x 1000 draws): for both
    arms P(effect < 0) within max(0.03, 4 MCSE) of the draws', the Rao-Blackwell form within 0.01,
    posterior means within 0.2 posterior SD."""
    from planning.mcmc_check import mmrm_agreement

    params = implied_mmrm(dose_parameters(), (0, 4, 8, 12))
    table, summary = mmrm_agreement(params, PlannedTrial(40, weeks=(0, 4, 8, 12), dropout=0.2), AnalysisSettings(), plan_cli.project_sampler(1000, 300, 2),
                                    n_trials=1, seed=4, scenario=Scenario("fixed", (-1.0, -4.0)))
    assert table.arm.tolist() == ["low", "high"] and summary["comparisons"] == 2
    assert summary["p_outside_bound"] == 0 and summary["max_abs_diff_p_benefit_rb"] < 0.01, summary
    assert summary["max_abs_diff_mean_in_sd"] < 0.2 and summary["agreement_rate"] == 1.0


@pytest.mark.unit
def test_an_allocation_ratio_lists_the_active_arms_then_control():
    """'2:1' keeps its two-arm meaning (two on the active arm per control participant); the named and colon forms agree."""
    assert plan_cli.parse_allocation("2:1", ("placebo", "nac")) == (2.0,)
    assert plan_cli.parse_allocation("2:1:2", ("placebo", "low", "high")) == (1.0, 0.5)
    assert plan_cli.parse_allocation("placebo=2,low=2,high=1", ("placebo", "low", "high")) == (1.0, 0.5)
    assert plan_cli.parse_allocation("1.5", ("placebo", "low", "high")) == 1.5
