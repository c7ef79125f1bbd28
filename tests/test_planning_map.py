"""Planning with a MAP prior on the control arm (plan.py --historical-control).

The pieces: the posterior under a mixture prior on the control mean (maths.map_prior.control_prior_posterior, used by
planning/analysis.py) against 2-D numerical integration of prior x likelihood on one simulated trial; a single vague
component reproduces the analysis without borrowing; drift moves the simulated control arm by exactly the stated
amount; the command line end to end (drift rows with and without borrowing, map_prior.json, the page), its refusals
(exit 2, nothing written, before any simulation) and the same numbers on 1 and 2 Dask workers. The type I error and
power under no drift and under drift against an independent computation (the completers' ANCOVA with complete data
and known Sigma: the decision depends on (c_hat, d_hat, s^2) alone, whose law is known, so P(success) is a quadrature
that never touches the simulator), and the qualitative facts (borrowing gains power at drift 0, the type I error
rises with drift toward benefit and falls the other way, the robust prior caps the rise) in both tiers.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import plan
from maths.map_prior import NormalMixture, control_prior_posterior, fit_map_prior
from planning import (
    AnalysisSettings,
    CalibrationSettings,
    MMRMParameters,
    PlannedTrial,
    PlanSpec,
    Scale,
    Scenario,
    analyse,
    fixed_parameters,
    implied_mmrm,
    simulate_trials,
)
from planning import plan as run_plan
from planning.analysis import ancova, borrowing_posterior
from planning.runner import DRIFT_STREAM
from planning.simulate import control_mean_change, drift_shape

# past trials' placebo arms (MADRS change at the primary visit): the bundled example's
HIST = {"study": ["H1", "H2", "H3", "H4", "H5", "H6", "H7", "H8"], "n": [62, 118, 85, 144, 71, 103, 56, 129],
        "mean": [-9.8, -11.4, -10.1, -12.6, -8.9, -11.0, -10.7, -9.6], "sd": [8.6, 9.1, 8.4, 9.6, 8.2, 8.9, 9.3, 8.8]}
HIST_CSV = "study,n,mean,sd\n" + "".join(f"{s},{n},{m},{d}\n" for s, n, m, d in zip(*HIST.values()))
_MAP: dict = {}


def map_prior(robust_weight: float = 0.2):
    if robust_weight not in _MAP:
        _MAP[robust_weight] = fit_map_prior(**HIST, robust_weight=robust_weight, n_draws=4096, seed=1)
    return _MAP[robust_weight]


def as_prior(mix: NormalMixture) -> tuple:
    return tuple(tuple(float(x) for x in v) for v in (mix.weights, mix.means, mix.sds))


SIGMA = 7.0  # the known SD of the change from baseline given the baseline


def known_sigma_params(control_change: float = -11.0) -> MMRMParameters:
    """One post-baseline visit (week 12), change ~ Normal(control_change + effect, SIGMA^2) independent of the baseline
    (slope 0), baselines Normal(28, 5.8^2), no scale limits: the ANCOVA's (c_hat, d_hat) have a known law."""
    return MMRMParameters(visit_weeks=(12,), visit_mean=np.array([[control_change]]), nac_visit_effect=np.zeros((1, 1, 1)),
                          baseline_slope=np.zeros((1, 1)), visit_chol=np.array([[[SIGMA]]]), baseline_mean=np.array([28.0]),
                          baseline_sd=np.array([5.8]), baseline_center=np.array([28.0]),
                          scale=Scale(treatment_end=12, last_week=12, weeks=(0, 12), outcome_label="MADRS"), source={"kind": "fixed"})


def drift_spec(mp, drifts, effects, n0=50, sims=2000, method="ancova", robust=True, seed=11, weeks=(0, 12), dropout=0.0,
               mechanism="mcar", threshold=0.975, chunk=500, calibration=None) -> PlanSpec:
    """A 2:1 design with the MAP prior and the drift scenarios (every effect at every drift, one seed stream)."""
    prior = mp.robust if robust else mp.mixture
    centre = mp.mixture.mean
    design = PlannedTrial(n0, allocation=2.0, primary_week=12, weeks=weeks, dropout=dropout, dropout_mechanism=mechanism, sites=1)
    scenarios = [Scenario("fixed", e, control_mean=centre + d, drift=d, stream=DRIFT_STREAM) for e in effects for d in drifts]
    analysis = AnalysisSettings(method=method, threshold=threshold, control_prior=as_prior(prior))
    return PlanSpec([design], scenarios, analysis, sims=sims, seed=seed, chunk_size=chunk, round_scores=False, calibration=calibration,
                    calibration_scenario=Scenario("fixed", 0.0, control_mean=centre, drift=0.0))


def rate(table, drift, effect, borrowing="map") -> tuple[float, float]:
    row = table[(np.isclose(table["drift"], drift)) & (table["effect"] == effect) & (table["borrowing"] == borrowing)]
    assert len(row) == 1
    return float(row["p_success"].iloc[0]), float(row["p_success_mcse"].iloc[0])


# ---------------------------------------------------------------- the posterior under the mixture prior


def grid_posterior(prior: NormalMixture, c_hat, d_hat, cov, effect_prior_sd=None, mcid=2.0, half_width=10.0, n=1000):
    """P(d < 0), P(d < -mcid), E[d] by the midpoint rule on a (c, d) grid of prior(c) [x Normal(d; 0, sd^2)] x the
    bivariate normal likelihood of (c_hat, d_hat); the d grid has 0 and -mcid on cell edges."""
    sd_c, sd_d = np.sqrt(cov[0, 0]), np.sqrt(cov[1, 1])
    c_lo = min(c_hat - half_width * sd_c, prior.means.min() - 3 * prior.sds.min())
    c_hi = max(c_hat + half_width * sd_c, prior.means.max() + 3 * prior.sds.min())
    c_edges = np.linspace(c_lo, c_hi, n + 1)
    step = 2 * half_width * sd_d / n
    step = mcid / np.ceil(mcid / step)  # 0 and -mcid on edges
    d_edges = np.arange(np.floor((d_hat - half_width * sd_d - abs(d_hat)) / step), np.ceil((d_hat + half_width * sd_d + abs(d_hat)) / step) + 1) * step
    c, d = 0.5 * (c_edges[1:] + c_edges[:-1]), 0.5 * (d_edges[1:] + d_edges[:-1])
    cc, dd = np.meshgrid(c, d, indexing="ij")
    prec = np.linalg.inv(cov)
    ec, ed = c_hat - cc, d_hat - dd
    like = -0.5 * (prec[0, 0] * ec * ec + 2 * prec[0, 1] * ec * ed + prec[1, 1] * ed * ed)  # the bivariate normal, up to a constant
    lp = like + prior.logpdf(c)[:, None] + (0.0 if effect_prior_sd is None else stats.norm(0, effect_prior_sd).logpdf(d)[None, :])
    w = np.exp(lp - lp.max())
    w /= w.sum()
    return float(w[:, d < 0].sum()), float(w[:, d < -mcid].sum()), float((w * dd).sum())


def ols_by_hand(sim, trial: int):
    """The completers' ANCOVA of one simulated trial by numpy least squares: (c_hat, d_hat) and their covariance."""
    keep = sim.completed[trial]
    y0 = sim.y0[trial, keep]
    x = np.column_stack([np.ones(keep.sum()), (sim.arm[keep] == 1).astype(float), y0 - y0.mean()])
    change = sim.yp[trial, keep] - y0
    beta, rss, *_ = np.linalg.lstsq(x, change, rcond=None)
    cov = float(rss[0]) / (len(change) - 3) * np.linalg.inv(x.T @ x)
    return beta[0], beta[1], cov[:2, :2]


@pytest.mark.unit
@pytest.mark.parametrize("drift", [0.0, 6.0])  # agreement with the past trials, and a conflict that moves weight to the vague component
def test_mixture_posterior_matches_2d_integration_on_a_simulated_trial(drift):
    mp = map_prior()
    params = fixed_parameters()
    design = PlannedTrial(40, allocation=2.0, weeks=(0, 2, 4, 6, 8, 12), dropout=0.2, sites=1)
    sim = simulate_trials(params, design, Scenario("fixed", -2.0, control_mean=mp.mixture.mean + drift, drift=drift), 3, np.random.default_rng(5))
    analysis = AnalysisSettings(method="ancova", control_prior=as_prior(mp.robust))
    est, se, df, control = ancova(sim, with_control=True)
    c_post, d_post = borrowing_posterior(analysis, {**control, "estimate": est, "se": se, "ok": np.isfinite(se)})
    res = analyse(sim, analysis)
    for t in range(3):
        c_hat, d_hat, cov = ols_by_hand(sim, t)
        assert control["control_mean"][t] == pytest.approx(c_hat, abs=1e-9) and est[t, 0] == pytest.approx(d_hat, abs=1e-9)
        p0, p_mcid, mean = grid_posterior(mp.robust, c_hat, d_hat, cov, effect_prior_sd=analysis.prior_sd)
        assert d_post.cdf(0.0)[t, 0] == pytest.approx(p0, abs=1e-4)
        assert d_post.cdf(-analysis.mcid)[t, 0] == pytest.approx(p_mcid, abs=1e-4)
        assert d_post.mean[t, 0] == pytest.approx(mean, abs=1e-4)
        # the decision uses each component with Student-t tails on the analysis' degrees of freedom
        tails = (d_post.weights[t, 0] * stats.t.cdf(-d_post.means[t, 0] / d_post.sds[t, 0], df[t])).sum()
        assert res["p_benefit"][t, 0] == pytest.approx(tails, abs=1e-12)
        assert res["control_post_mean"][t, 0] == pytest.approx(c_post.mean[t, 0])
    if drift:  # the conflict moves the posterior weight onto the vague component
        assert (c_post.weights[:, 0, -1] > 0.5).all()
    # the MMRM's flat-control estimate combined the same way (no effect prior to add: it is in the GLS already)
    fit = analyse(sim, replace(analysis, method="mmrm"))
    assert np.isfinite(fit["p_benefit"]).all()
    from planning.mmrm_gls import mmrm_effect

    m = mmrm_effect(sim.y[:, :, 1:] - sim.y[:, :, :1], sim.attended, sim.arm, sim.y0, sim.primary, prior_sd=(15.0, 6.0, 0.5), flat_control=True)
    cov = np.array([[m["control_var"][0], m["control_effect_cov"][0, 0]], [m["control_effect_cov"][0, 0], m["flat_effect_var"][0, 0]]])
    p0, _, _ = grid_posterior(mp.robust, m["control_mean"][0], m["flat_effect_mean"][0, 0], cov)
    _, d_mmrm = control_prior_posterior(mp.robust, m["control_mean"][0], m["flat_effect_mean"][0, 0], cov[0, 0], cov[0, 1], cov[1, 1])
    assert float(d_mmrm.cdf(0.0)) == pytest.approx(p0, abs=1e-4)


@pytest.mark.unit
def test_mixture_quantiles_invert_the_cdf():
    mp = map_prior()
    _, post = control_prior_posterior(mp.robust, np.array([-10.0, -4.0]), np.array([-1.0, 2.0]), 0.9, -0.9, 2.5)
    for q in (0.025, 0.5, 0.975):
        assert np.allclose(post.cdf(post.quantile(q)), q, atol=1e-12)
        assert np.allclose(post.cdf(post.quantile(q, df=30), df=30), q, atol=1e-12)


@pytest.mark.unit
@pytest.mark.parametrize("method", ["mmrm", "ancova"])
def test_a_single_vague_component_gives_the_analysis_without_borrowing(method):
    """With one component N(m, s^2) and s huge the posterior is the flat-control one: the analysis without borrowing's
    (the ANCOVA has a flat intercept; the MMRM's visit means have Normal(0, visit_mean_prior_sd^2) priors, made huge in
    both). With the MMRM's own prior on the control visit mean as the one component, the two are the same analysis."""
    params = fixed_parameters(arms=("placebo", "low", "high"), nac_change=((-1.0, -1.0), (-2.5, -2.0)))
    design = PlannedTrial(30, allocation=(1.0, 2.0), weeks=(0, 2, 4, 6, 8, 12), dropout=0.25, sites=1)
    sim = simulate_trials(params, design, Scenario("assurance"), 40, np.random.default_rng(2))
    base = AnalysisSettings(method=method, visit_mean_prior_sd=1e4)
    cases = [(base, ((1.0,), (-10.0,), (1e4,)))]
    if method == "mmrm":
        own = AnalysisSettings(method="mmrm")
        cases.append((own, ((1.0,), (0.0,), (own.visit_mean_prior_sd,))))
    for settings, prior in cases:
        plain = analyse(sim, settings)
        borrowed = analyse(sim, replace(settings, control_prior=prior))
        assert plain["ok"].all() and (borrowed["ok"] == plain["ok"]).all()
        for key in ("post_mean", "post_sd", "p_benefit", "p_mcid", "width"):
            np.testing.assert_allclose(borrowed[key], plain[key], atol=1e-6, rtol=0, err_msg=key)
        assert (borrowed["success"] == plain["success"]).all()
        for key in ("post_mean", "p_benefit"):  # the analysis without borrowing beside it is the plain one
            np.testing.assert_array_equal(borrowed["reference"][key], plain[key])


# ---------------------------------------------------------------- drift in the simulator


@pytest.mark.unit
@pytest.mark.parametrize("family", ["trajectory", "mmrm"])
def test_drift_sets_the_simulated_control_mean_change(family):
    """The same random numbers with and without a control mean: every score moves by exactly the shift x min(w, 12)/12;
    and the shift is the stated control mean minus the draws' own, which matches the simulated control arms."""
    params = fixed_parameters() if family == "trajectory" else implied_mmrm(fixed_parameters(), (0, 2, 4, 6, 8, 12, 16))
    design = PlannedTrial(300, weeks=(0, 2, 4, 6, 8, 12, 16), entry_min=24.0, dropout=0.1, sites=1)
    own = control_mean_change(params, design, np.zeros(1, int))[0]
    plain = simulate_trials(params, design, Scenario("fixed", -2.0), 60, np.random.default_rng(4), round_scores=False)
    moved = simulate_trials(params, design, Scenario("fixed", -2.0, control_mean=-7.0, drift=3.0), 60, np.random.default_rng(4), round_scores=False)
    shape = drift_shape(design)
    np.testing.assert_allclose(shape, [2 / 12, 4 / 12, 6 / 12, 8 / 12, 1.0, 1.0])
    np.testing.assert_allclose(moved.y[:, :, 1:] - plain.y[:, :, 1:], (-7.0 - own) * np.broadcast_to(shape, plain.y[:, :, 1:].shape), atol=1e-9)
    np.testing.assert_array_equal(moved.y[:, :, 0], plain.y[:, :, 0])
    np.testing.assert_array_equal(moved.true_effect, plain.true_effect)
    control = plain.y[:, plain.arm == 0, 5] - plain.y[:, plain.arm == 0, 0]  # every scheduled score, before dropout
    mcse = control.mean(axis=1).std(ddof=1) / np.sqrt(len(control))
    assert abs(control.mean() - own) < 4 * mcse
    changed = moved.y[:, moved.arm == 0, 5] - moved.y[:, moved.arm == 0, 0]
    assert abs(changed.mean() + 7.0) < 4 * mcse


# ---------------------------------------------------------------- the command line


def write_hist(tmp_path, text=HIST_CSV, name="hist.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


CLI = ["--design-prior", "Normal(-2, 1)", "--allocation", "2:1", "--n-per-arm", "20", "40", "--sims", "60", "--chunk-size", "30",
       "--workers", "1", "--seed", "3", "--quiet", "--effects", "-3"]


@pytest.mark.smoke
def test_plan_cli_with_historical_control_reports_drift_with_and_without_borrowing(tmp_path):
    hist = write_hist(tmp_path)
    out = tmp_path / "plan"
    assert plan.main([*CLI, "--historical-control", str(hist), "--out", str(out)]) == 0
    table = pd.read_csv(out / "plan.csv")
    mp = fit_map_prior(**HIST, seed=3)  # the plan's seed
    saved = json.loads((out / "map_prior.json").read_text())
    assert saved["settings"]["seed"] == 3 and saved["settings"]["robust_weight"] == 0.2
    np.testing.assert_allclose(saved["robust_mixture"]["weights"], mp.robust.weights)
    drifts = sorted(round(d, 2) for d in mp.mixture.sd * np.linspace(-2, 2, 7))
    rows = table[table["drift"].notna()]
    assert sorted(set(rows["drift"])) == pytest.approx(drifts) and 0.0 in set(rows["drift"])
    assert len(rows) == 2 * 7 * 2 * 2  # designs x drifts x effects (0, -3) x (with, without borrowing)
    assert set(rows["borrowing"]) == {"map", "none"} and set(rows["effect"]) == {0.0, -3.0}
    np.testing.assert_allclose(rows["control_mean"], mp.mixture.mean + rows["drift"], atol=1e-4)  # plan.csv keeps 6 digits
    other = table[table["drift"].isna()]
    assert set(other["scenario"]) == {"assurance", "vague", "effect=0", "effect=-3"} and (other["borrowing"] == "map").all()
    assert other["control_mean"].isna().all()
    assert (table["n_treatment"] == 2 * table["n_per_arm"]).all()
    # the same trials with and without borrowing: the same true effects, completers and estimates' bias
    pair = rows.pivot_table(index=["n_per_arm", "drift", "effect"], columns="borrowing", values=["mean_completers", "bias"])
    np.testing.assert_allclose(pair["mean_completers"]["map"], pair["mean_completers"]["none"])
    np.testing.assert_allclose(pair["bias"]["map"], pair["bias"]["none"])
    rec = json.loads((out / "plan.json").read_text())
    b = rec["borrowing"]
    assert b["map_mean"] == pytest.approx(mp.mixture.mean) and b["ess"]["robust"]["elir"] == pytest.approx(mp.ess["robust"]["elir"])
    assert [t["study"] for t in b["historical"]] == HIST["study"] and b["drifts"] == pytest.approx(drifts)
    page = (out / "plan.html").read_text(encoding="utf-8")
    assert "<h2>Borrowing a control arm from past trials</h2>" in page and page.count("data:image/png;base64,") == 2
    for text in ("ELIR", "Drift</b> is", "robust MAP prior", "no borrowing", "map_prior.json", "H8 (n 129)"):
        assert text in page, text
    # calibrated under no drift: each analysis its own threshold; its own drift-0 rows stay near alpha; given drifts
    cal = tmp_path / "cal"
    assert plan.main([*CLI, "--historical-control", str(hist), "--analysis", "ancova", "--alpha", "0.1", "--calibration-sims", "400",
                      "--drift", "-3", "3", "--map-robust-weight", "0.5", "--n-per-arm", "20", "--effects", "--out", str(cal)]) == 0
    t = pd.read_csv(cal / "plan.csv")
    assert sorted(set(t["drift"].dropna())) == [-3.0, 0.0, 3.0]
    assert (t["calibration_type1"] <= 0.1).all()
    thresholds = t.drop_duplicates(["n_per_arm", "borrowing"]).set_index(["n_per_arm", "borrowing"])["threshold"]
    assert all(0.5 <= v < 1 for v in thresholds) and thresholds.loc[(20, "map")] != thresholds.loc[(20, "none")]
    assert set(t["effect"].dropna()) == {0.0} and len(t[t["drift"].notna()]) == 3 * 2
    assert json.loads((cal / "map_prior.json").read_text())["settings"]["robust_weight"] == 0.5
    assert "under no drift" in (cal / "plan.html").read_text(encoding="utf-8")


@pytest.mark.unit
def test_bad_historical_input_exits_2_before_any_simulation(tmp_path, capsys, monkeypatch):
    import planning

    def never(*args, **kwargs):
        raise AssertionError("simulated although the input is bad")

    monkeypatch.setattr(planning, "plan", never)
    monkeypatch.setattr("maths.map_prior.fit_map_prior", never)  # a bad CSV is refused before the MAP prior is fitted
    out = tmp_path / "out"
    cases = [
        (write_hist(tmp_path, "study,n,mean\nA,50,-10\nB,60,-11\n", "nosd.csv"), "sd"),
        (write_hist(tmp_path, "study,n,mean,sd\nA,50,-10,8\nB,1,-11,-2\n", "bad.csv"), "sd must be positive"),
        (write_hist(tmp_path, "study,n,mean,sd\nA,50,-10,8\n", "one.csv"), "at least 2"),
        (tmp_path / "missing.csv", "does not exist"),
    ]
    for path, message in cases:
        assert plan.main(["--design-prior", "Normal(-2, 1)", "--historical-control", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert path.name in err and message in err, err
    hist = write_hist(tmp_path)
    for extra, message in [
        (["--interim", "0.5"], "cannot be combined with --interim"),
        (["--enrich", "crp:3"], "cannot be combined with --enrich"),
        (["--map-robust-weight", "1"], "--map-robust-weight must be in [0, 1)"),
        (["--map-tau-scale", "0"], "--map-tau-scale must be positive"),
    ]:
        assert plan.main(["--design-prior", "Normal(-2, 1)", "--historical-control", str(hist), *extra, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert plan.main(["--design-prior", "Normal(-2, 1)", "--drift", "1", "--out", str(out)]) == 2
    assert "need(s) --historical-control" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.unit
def test_same_seed_same_numbers_on_one_and_two_dask_workers():
    from dask.distributed import Client, LocalCluster

    mp = map_prior()
    spec = drift_spec(mp, [-2.0, 0.0, 2.0], [0.0, -3.0], n0=30, sims=120, chunk=50, method="mmrm", weeks=(0, 4, 8, 12), dropout=0.2,
                      mechanism="mar", calibration=CalibrationSettings(0.1, "final", 200))
    params = fixed_parameters()
    local, _ = run_plan(params, spec, workers=1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as client:
        distributed, _ = run_plan(params, spec, client=client)
    pd.testing.assert_frame_equal(local, distributed, check_exact=True)
    other, _ = run_plan(params, replace(spec, seed=12), workers=1)
    assert not other["p_success"].equals(local["p_success"])


# ---------------------------------------------------------------- against an independent computation


def independent_success(prior: NormalMixture, c_true: float, d_true: float, n0: int, n1: int, threshold: float, prior_sd: float,
                        nodes_q: int = 6, nodes_c: int = 20, nodes_s: int = 8, grid: int = 241) -> float:
    """P(success) of the completers' ANCOVA with the mixture prior on the control mean, without the simulator.

    With complete data, change = c + d T + b (y0 - centre) + e, b = 0, e ~ Normal(0, SIGMA^2) independent of the baseline.
    The ANCOVA's intercept (at the mean baseline) and effect are c_hat = ybar_c - b_hat x0 and d_hat = (ybar_t - ybar_c) +
    b_hat delta, with delta the control - active difference of mean baselines, x0 = (n1/N) delta the control arm's mean
    centred baseline and W the baselines' within-arm sum of squares. Given the baselines, (c_hat, d_hat) ~ Normal((c, d),
    SIGMA^2 M(q)), M(q) = (1/n0 + (n1/N)^2 q, -1/n0 - (n1/N) q; ., 1/n0 + 1/n1 + q), q = delta^2 / W; the residual
    variance s^2 ~ SIGMA^2 chi2_df / df (df = N - 3) is independent of both, and the analysis' covariance is s^2 M(q).
    q = (1/n0 + 1/n1) chi2_1 / chi2_(N-2), taken as (1/n0 + 1/n1) chi2_1 / (N - 4) (1/chi2_(N-2) at its mean: exact in
    E[q], off by O(N^-3/2) relative in the variances). The decision: success if sum_k w_k T_df(-m_k / s_k) > threshold
    over d's posterior mixture. P(success) = E_q E_{s^2} E_{c_hat | q} P(d_hat in the success set | c_hat, q, s^2): q and
    s^2 by generalised Gauss-Laguerre, c_hat by Gauss-Hermite, and the success set in d_hat from the decision on a grid of
    +-9 conditional SDs, its edges refined by bisection, its probability from the normal CDF."""
    big_n = n0 + n1
    df = big_n - 3
    share = n1 / big_n
    u, wu = special.roots_genlaguerre(nodes_s, df / 2 - 1)  # chi2_df = 2u
    s2 = SIGMA**2 * 2 * u / df
    wu = wu / wu.sum()
    x, wx = special.roots_genlaguerre(nodes_q, -0.5)  # chi2_1 = 2x
    qs = (1 / n0 + 1 / n1) * 2 * x / (big_n - 4)
    wx = wx / wx.sum()
    z, wz = special.roots_hermitenorm(nodes_c)
    wz = wz / wz.sum()
    t = np.linspace(-9.0, 9.0, grid)
    total = 0.0
    for q, weight_q in zip(qs, wx):
        m = np.array([[1 / n0 + share**2 * q, -1 / n0 - share * q], [-1 / n0 - share * q, 1 / n0 + 1 / n1 + q]])
        v_c, v_cd, v_d = SIGMA**2 * m[0, 0], SIGMA**2 * m[0, 1], SIGMA**2 * m[1, 1]
        c_hat = c_true + np.sqrt(v_c) * z
        cond_mean = d_true + v_cd / v_c * (c_hat - c_true)
        cond_sd = np.sqrt(v_d - v_cd**2 / v_c)

        def decide(i, j, tt):  # success at s^2 node i, c_hat node j, standardised d_hat tt (arrays of one shape)
            s = s2[i]
            _, post = control_prior_posterior(prior, c_hat[j], cond_mean[j] + cond_sd * tt, s * m[0, 0], s * m[0, 1], s * m[1, 1],  # noqa: B023
                                              effect_prior_sd=prior_sd)
            return (post.weights * special.stdtr(df, -post.means / post.sds)).sum(axis=-1) > threshold

        i, j, _ = np.meshgrid(np.arange(nodes_s), np.arange(nodes_c), t, indexing="ij")
        ok = decide(i, j, np.broadcast_to(t, i.shape))
        s_idx, c_idx, g_idx = np.nonzero(ok[..., 1:] != ok[..., :-1])  # the success set's edges, between grid points
        lo, hi = t[g_idx], t[g_idx + 1]
        left = ok[s_idx, c_idx, g_idx]  # success just below the edge: the edge leaves the set
        for _ in range(50):  # bisection of every edge at once
            mid = 0.5 * (lo + hi)
            same = decide(s_idx, c_idx, mid) == left
            lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
        # P(success | q, s^2, c_hat) = [success below the grid] - sum over leaving edges Phi(-e) + sum over entering edges
        # Phi(-e) (the tails beyond +-9 SD carry less than 1e-18)
        prob = ok[..., 0].astype(float)
        np.add.at(prob, (s_idx, c_idx), np.where(left, -1.0, 1.0) * special.ndtr(-0.5 * (lo + hi)))
        total += weight_q * float(wu @ prob @ wz)
    return total


def check_against_independent(sims: int, drifts_sd: tuple[float, ...], effects=(0.0, -3.0), **quadrature):
    mp = map_prior()
    sd = mp.mixture.sd
    drifts = [round(k * sd, 4) for k in drifts_sd]
    spec = drift_spec(mp, drifts, list(effects), n0=50, sims=sims, chunk=1000)
    table, _ = run_plan(known_sigma_params(), spec, workers=1)
    report = []
    for d in drifts:
        for e in effects:
            p, mcse = rate(table, d, e)
            expected = independent_success(mp.robust, mp.mixture.mean + d, e, 50, 100, 0.975, spec.analysis.prior_sd, **quadrature)
            report.append((d, e, p, expected, mcse))
            assert abs(p - expected) < 3 * max(mcse, np.sqrt(expected * (1 - expected) / sims)), report
    return report


@pytest.mark.unit
def test_type_i_error_and_power_under_drift_match_an_independent_computation_small():
    check_against_independent(1500, (0.0, 1.0), nodes_q=4, nodes_c=16, nodes_s=6, grid=181)  # quadrature error below 1e-4


@pytest.mark.slow
def test_type_i_error_and_power_under_drift_match_an_independent_computation():
    """20,000 trials per drift and effect (50 placebo, 100 active, complete data, known SD): the simulated type I error
    and power at drifts -1, 0 and +1 MAP SD within 3 MCSE of the quadrature."""
    check_against_independent(20_000, (-1.0, 0.0, 1.0))


# ---------------------------------------------------------------- what borrowing does


def qualitative(sims: int, method: str, params, weeks, dropout, mechanism):
    mp = map_prior()
    sd = mp.mixture.sd
    drifts = [-4 * sd, -2 * sd, 0.0, 2 * sd]
    robust, _ = run_plan(params, drift_spec(mp, drifts, [0.0, -3.0], n0=40, sims=sims, method=method, weeks=weeks, dropout=dropout,
                                            mechanism=mechanism), workers=1)
    plain, _ = run_plan(params, drift_spec(mp, drifts, [0.0], n0=40, sims=sims, method=method, weeks=weeks, dropout=dropout,
                                           mechanism=mechanism, robust=False), workers=1)
    # borrowing gains power at drift 0 (the same trials analysed both ways)
    with_map, m1 = rate(robust, 0.0, -3.0)
    without, m2 = rate(robust, 0.0, -3.0, "none")
    assert with_map - without > 3 * np.hypot(m1, m2), (with_map, without)
    # the type I error rises with drift toward benefit (the new control improves more than predicted) and falls the other way
    t0, s0 = rate(robust, 0.0, 0.0)
    up, s_up = rate(robust, -2 * sd, 0.0)
    down, _ = rate(robust, 2 * sd, 0.0)
    assert up > t0 + 3 * np.hypot(s0, s_up) and down < t0, (up, t0, down)
    # without borrowing it does not depend on the drift
    flat = [rate(robust, d, 0.0, "none")[0] for d in drifts]
    assert max(flat) - min(flat) < 4 * np.sqrt(0.025 * 0.975 / sims)
    # the robust prior caps the rise: below the MAP mixture alone under conflict (clearly so at -4 SD; at -2 SD too with
    # enough trials), and falling back as the conflict grows
    for d in (-2 * sd, -4 * sd):
        r, rm = rate(robust, d, 0.0)
        n, nm = rate(plain, d, 0.0)
        assert n - r > (3 * np.hypot(rm, nm) if d < -3 * sd or sims >= 10_000 else 0.0), (d, r, n)
    assert rate(robust, -4 * sd, 0.0)[0] < rate(robust, -2 * sd, 0.0)[0] < rate(plain, -4 * sd, 0.0)[0]
    return robust, plain


@pytest.mark.unit
def test_borrowing_gains_power_at_no_drift_and_the_robust_prior_caps_the_type_i_error_small():
    qualitative(1500, "ancova", known_sigma_params(), (0, 12), 0.0, "mcar")


@pytest.mark.slow
def test_borrowing_gains_power_at_no_drift_and_the_robust_prior_caps_the_type_i_error():
    """The MMRM with 20% MAR dropout on the published-trial calibration, 10,000 trials per drift."""
    qualitative(10_000, "mmrm", fixed_parameters(), (0, 2, 4, 6, 8, 12), 0.2, "mar")
