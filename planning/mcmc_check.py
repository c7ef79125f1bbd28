"""Agreement of the fast analyses with full MCMC on simulated trials.

The MMRM (`mmrm_agreement`): each simulated trial becomes a dataset (one site, the design's schedule,
the attended visits), is analysed by the closed-form MMRM (planning/mmrm_gls.py: REML, then the
posterior given Sigma at its estimate) and by the project's Bayesian MMRM (models/mmrm.py, with the
analysis' priors on visit means, treatment effects and baseline slopes, its own on Sigma), sampled by
the `sample` function given (plan.py passes the project's sampler; planning itself does not import
inference). The MCMC side's P(benefit) and P(effect < -MCID), and its decisions, are the fractions of
the MCMC draws of the primary-visit effect below 0 and below -MCID, each with its Monte Carlo standard
error sqrt(p (1 - p) / ESS), ESS the effective sample size of the draws' indicator (arviz). The two
analyses agree on a trial when their probabilities differ by at most
    bound = max(P_FLOOR, MCSE_MULTIPLE x MCSE)
(P_FLOOR = 0.03 covers the genuine difference of plugging in the REML Sigma rather than integrating over
it; MCSE_MULTIPLE = 4 covers the draws' Monte Carlo error). A Rao-Blackwell form is reported beside it
(`mcmc_p_benefit_rb`): the average over the draws of Sigma of the exact conditional posterior probability
(given Sigma the MMRM's mean coefficients have a normal posterior: generalised least squares plus the
normal priors of visit_mean, nac_visit_effect and baseline_slope). It has far less Monte Carlo error but
is computed by the same `gls` as the closed form, so an error there would cancel in a comparison; it
serves as a variance-reduced cross-check of the draws, never as the agreement figure.

The ANCOVA (`mcmc_agreement`): the same ANCOVA written as a PyMC model and sampled with NUTS (nutpie):
    change_i ~ Normal(a + sum_a effect_a T_ia + b (baseline_i - mean baseline), sigma)   (completers only)
    effect_a ~ Normal(0, prior_sd), a ~ Normal(0, R), b ~ Normal(0, 10), sigma ~ HalfNormal(R)
with R the outcome range. The model is compiled once; each simulated trial is swapped in as data
(participants who dropped out get weight 0, so every trial has the same array shapes). The decision
P(effect < 0) > threshold (and the dual criterion when set) is taken from the MCMC draws and compared
with the fast analysis' decision for the same trial.

Both compare every active arm of a multi-arm design with control: a row per trial and active arm
(column `arm`), the summaries over all of them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable

import numpy as np
import pandas as pd
from scipy import special

from maths.gaussian import sd_corr_to_cov

from .analysis import analyse
from .design import AnalysisSettings, PlannedTrial, Scenario, SimulatedTrials
from .mmrm_gls import gls, pattern_stats
from .params import ParameterSet
from .simulate import simulate_trials


def _ancova_model(n: int, prior_sd: float, score_range: float, n_active: int = 1):
    import pymc as pm

    zeros = np.zeros(n)
    with pm.Model(coords={"participant": np.arange(n), "active_arm": np.arange(n_active)}) as model:
        change = pm.Data("change", zeros, dims="participant")
        base = pm.Data("baseline_centred", zeros, dims="participant")
        arm = pm.Data("arm_indicator", np.zeros((n, n_active)), dims=("participant", "active_arm"))
        weight = pm.Data("weight", np.ones(n), dims="participant")
        a = pm.Normal("a", 0.0, score_range)
        effect = pm.Normal("effect", 0.0, prior_sd, dims="active_arm")
        b = pm.Normal("b", 0.0, 10.0)
        sigma = pm.HalfNormal("sigma", score_range)
        mu = a + (arm * effect[None, :]).sum(axis=1) + b * base
        pm.Potential("likelihood", (weight * pm.logp(pm.Normal.dist(mu, sigma), change)).sum())
    return model


def mcmc_agreement(
    params: ParameterSet,
    trial: PlannedTrial,
    analysis: AnalysisSettings,
    n_trials: int = 10,
    seed: int = 1,
    scenario: Scenario | None = None,
    draws: int = 1000,
    tune: int = 500,
    chains: int = 2,
) -> tuple[pd.DataFrame, dict]:
    """Simulate `n_trials` trials, analyse each fast and by MCMC; return per-trial rows and a summary."""
    import nutpie

    scenario = scenario or Scenario("assurance")
    analysis = replace(analysis, method="ancova")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7919,)))
    trial = trial.with_arms(params)
    sim = simulate_trials(params, trial, scenario, n_trials, rng)
    fast = analyse(sim, analysis)
    model = _ancova_model(trial.n_total, analysis.prior_sd, params.scale.score_range, sim.n_active)
    compiled = nutpie.compile_pymc_model(model, backend="numba")
    indicator = (sim.arm[:, None] == np.arange(1, sim.n_active + 1)).astype(float)
    rows = []
    for i in range(n_trials):
        w = sim.completed[i].astype(float)
        base = sim.y0[i] - (w * sim.y0[i]).sum() / w.sum()
        data = compiled.with_data(change=sim.yp[i] - sim.y0[i], baseline_centred=base, arm_indicator=indicator, weight=w)
        idata = nutpie.sample(data, draws=draws, tune=tune, chains=chains, cores=1, seed=int(rng.integers(2**31)), progress_bar=False)
        for a in range(sim.n_active):
            eff = idata.posterior["effect"].values[..., a].ravel()
            p_benefit = float(np.mean(eff < 0))
            p_mcid = float(np.mean(eff < -analysis.mcid))
            success = p_benefit > analysis.threshold and (not analysis.dual or p_mcid > analysis.mcid_prob)
            rows.append(
                {
                    "trial": i,
                    "arm": trial.arms[a + 1],
                    "true_effect": float(sim.true_effect[i, a]),
                    "fast_mean": float(fast["post_mean"][i, a]),
                    "mcmc_mean": float(eff.mean()),
                    "fast_sd": float(fast["post_sd"][i, a]),
                    "mcmc_sd": float(eff.std(ddof=1)),
                    "fast_p_benefit": float(fast["p_benefit"][i, a]),
                    "mcmc_p_benefit": p_benefit,
                    "fast_success": bool(fast["success"][i, a]),
                    "mcmc_success": bool(success),
                    "divergences": int(idata.sample_stats["diverging"].sum()),
                }
            )
    table = pd.DataFrame(rows)
    agree = table["fast_success"] == table["mcmc_success"]
    summary = {
        "trials": int(n_trials),
        "comparisons": int(len(table)),
        "agreement_rate": float(agree.mean()),
        "disagreements": int((~agree).sum()),
        "fast_success_rate": float(table["fast_success"].mean()),
        "mcmc_success_rate": float(table["mcmc_success"].mean()),
        "max_abs_diff_p_benefit": float((table["fast_p_benefit"] - table["mcmc_p_benefit"]).abs().max()),
        "max_abs_diff_mean_in_sd": float(((table["fast_mean"] - table["mcmc_mean"]).abs() / table["fast_sd"]).max()),
        "max_rel_diff_sd": float(((table["fast_sd"] - table["mcmc_sd"]).abs() / table["fast_sd"]).max()),
        "divergences": int(table["divergences"].sum()),
        "draws": draws * chains,
    }
    return table, summary


# ---------------------------------------------------------------- the Bayesian MMRM


def trial_dataset(sim: SimulatedTrials, i: int, weeks, scale, arms=("placebo", "nac")):
    """Simulated trial i as a validated dataset (what data.load_dataset returns): one site, the design's
    schedule, scores of the attended visits only, the arms `arms` (control first, as `sim.arm` codes them)."""
    import xarray as xr

    from data import DatasetMeta

    weeks = tuple(int(w) for w in sorted(weeks))
    n = sim.y.shape[1]
    seen = np.arange(len(weeks))[None, :] <= sim.attended[i][:, None]
    score = np.where(seen, sim.y[i], np.nan)
    meta = DatasetMeta(
        outcome="score", outcome_label=scale.outcome_label,
        score_min=scale.score_min if scale.score_min is not None else -1e6,
        score_max=scale.score_max if scale.score_max is not None else 1e6,
        integer_scores=bool(scale.integer_scores), control_arm=arms[0], treatment_arms=tuple(arms[1:]),
        weeks=weeks, treatment_end=int(min(scale.treatment_end, max(weeks))), biomarker_weeks=(), title=f"simulated trial {i}",
    )
    ds = xr.Dataset(
        {
            "arm": ("participant", np.asarray(arms)[sim.arm]),
            "arm_index": ("participant", sim.arm.astype(np.int8)),
            "site": ("participant", np.full(n, "new")),
            "score": (("participant", "week"), score),
        },
        coords={"participant": np.array([f"S{j:05d}" for j in range(n)]), "week": np.array(weeks)},
    )
    ds.attrs.update(meta=json.dumps(meta.to_dict()), outcome="score", source="simulated", checksum=f"simulated-{i}", has_biomarkers=0, changes="[]")
    return ds


def nutpie_sampler(draws: int = 500, tune: int = 500, chains: int = 2) -> Callable:
    """A `sample` function for `mmrm_agreement` through nutpie's compile of the model's graph (slow: one
    compile per trial); plan.py passes the project's sampler, which uses the MMRM's fused log density."""

    def sample(built, seed: int):
        import nutpie

        compiled = nutpie.compile_pymc_model(built.model, backend="numba")
        return nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=1, seed=seed, progress_bar=False).posterior

    return sample


def conditional_p_benefit(posterior, built, visit_week: int, mcid: float) -> tuple[np.ndarray, np.ndarray]:
    """Per posterior draw of Sigma (rows) and active arm (columns): P(effect < 0 | Sigma, data) and
    P(effect < -mcid | Sigma, data) at the primary visit, from the exact normal conditional posterior of
    the MMRM's mean coefficients. Needs a model without site and covariate terms (one site, no covariates)."""
    from models.mmrm import mmrm_data

    if "site_effect" in posterior or "covariate_effect" in posterior:
        raise ValueError("the conditional form covers a single-site MMRM without covariates")
    d = mmrm_data(built.design)
    v = len(d.visits)
    observed = ~np.isnan(d.change)
    attended = observed.sum(axis=1)
    if not np.array_equal(observed, np.arange(v)[None, :] < attended[:, None]):
        raise ValueError("the conditional form here covers drop-out (prefix) patterns only")
    arm = built.design.arm_idx[d.rows]
    n_active = built.design.n_active
    stats = pattern_stats(np.nan_to_num(d.change)[None], attended[None], arm[None], d.baseline[None], n_active)
    sd = posterior["visit_sd"].stack(sample=("chain", "draw")).transpose("sample", ...).values
    corr = posterior["visit_corr"].stack(sample=("chain", "draw")).transpose("sample", ...).values
    sigma = sd_corr_to_cov(sd, corr)
    k = len(sigma)
    many = type(stats)(*(np.broadcast_to(a, (k,) + a.shape[1:]) for a in (stats.n, stats.sxx, stats.scx, stats.scc, stats.n_arm)))
    pri = built.priors
    parts = ("visit_mean", *("nac_visit_effect",) * n_active, "baseline_slope")
    scales = np.array([pri[name].params["sigma"] for name in parts], float)
    means = np.array([pri[name].params.get("mu", 0.0) for name in parts], float)
    fit = gls(many, sigma, prior_precision=np.tile(1 / scales**2, v), prior_mean=np.tile(means, v))
    j = list(d.visits).index(int(visit_week))
    q = stats.n_regressors
    cols = j * q + 1 + np.arange(n_active)
    m, s = fit.beta[:, j, 1 : 1 + n_active], np.sqrt(fit.cov[:, cols, cols])
    return special.ndtr(-m / s), special.ndtr((-mcid - m) / s)


P_FLOOR = 0.03  # MMRM agreement: smallest allowed |P_closed_form - P_mcmc| (module docstring)
MCSE_MULTIPLE = 4.0  # ... or this many Monte Carlo SEs of the MCMC draws' probability, whichever is larger


def draw_probability(draws: np.ndarray, below: float) -> tuple[float, float, float]:
    """The fraction p of MCMC draws (chain, draw) below `below`, its Monte Carlo SE sqrt(p (1 - p) / ESS)
    and ESS, the effective sample size of the indicator draws < below (arviz, method "mean")."""
    import arviz as az

    hit = (np.asarray(draws) < below).astype(float)
    p = float(hit.mean())
    ess = float(az.ess(hit, method="mean")) if 0 < p < 1 else float(hit.size)
    return p, float(np.sqrt(p * (1 - p) / ess)), ess


def mmrm_agreement(
    params,
    trial: PlannedTrial,
    analysis: AnalysisSettings,
    sample: Callable,
    n_trials: int = 10,
    seed: int = 1,
    scenario: Scenario | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Simulate `n_trials` trials of `trial` (its dropout mechanism), analyse each by the closed-form MMRM
    and by the project's Bayesian MMRM (`sample(built, seed)` returns its posterior, with chain and draw
    dimensions); per-trial rows and a summary. The MCMC side's probabilities and decisions are those of
    its draws, with their Monte Carlo SEs; `p_outside_bound` counts the trials whose P(benefit) or
    P(effect < -MCID) differ by more than max(P_FLOOR, MCSE_MULTIPLE x MCSE) (module docstring)."""
    from models import build_design, get

    scenario = scenario or Scenario("assurance")
    analysis = replace(analysis, method="mmrm")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7927,)))
    trial = trial.with_arms(params)
    sim = simulate_trials(params, trial, scenario, n_trials, rng)
    fast = analyse(sim, analysis)
    primary = int(trial.primary_week)
    rows = []
    for i in range(n_trials):
        design = build_design(trial_dataset(sim, i, trial.weeks, params.scale, trial.arms))
        spec = get("mmrm")
        defaults = spec.default_priors(design)
        wanted = {"visit_mean": analysis.visit_mean_prior_sd, "nac_visit_effect": analysis.prior_sd, "baseline_slope": analysis.baseline_slope_prior_sd}
        priors = {k: {"params": {"sigma": sd}} for k, sd in wanted.items() if abs(defaults[k].params["sigma"] - sd) > 1e-12} or None
        built = spec.build(design, priors=priors)
        post = sample(built, int(rng.integers(2**31)))
        effect = post["nac_visit_effect"].sel(visit=primary)
        if "active_arm" not in effect.dims:
            effect = effect.expand_dims("active_arm", axis=-1)
        effect = effect.transpose("chain", "draw", "active_arm").values
        p_rb_all, p_mcid_rb_all = conditional_p_benefit(post, built, primary, analysis.mcid)
        for a in range(sim.n_active):
            draws = effect[..., a]
            eff = draws.ravel()
            p, p_mcse, ess = draw_probability(draws, 0.0)
            p_mcid, p_mcid_mcse, _ = draw_probability(draws, -analysis.mcid)
            p_rb, p_mcid_rb = float(p_rb_all[:, a].mean()), float(p_mcid_rb_all[:, a].mean())
            success = p > analysis.threshold and (not analysis.dual or p_mcid > analysis.mcid_prob)
            rows.append(
                {
                    "trial": i,
                    "arm": trial.arms[a + 1],
                    "true_effect": float(sim.true_effect[i, a]),
                    "completers": int(fast["completers"][i, a]),
                    "fast_estimate": float(fast["estimate"][i, a]),
                    "fast_se": float(fast["se"][i, a]),
                    "fast_mean": float(fast["post_mean"][i, a]),
                    "mcmc_mean": float(eff.mean()),
                    "fast_sd": float(fast["post_sd"][i, a]),
                    "mcmc_sd": float(eff.std(ddof=1)),
                    "fast_df": float(fast["df"][i, a]),
                    "fast_p_benefit": float(fast["p_benefit"][i, a]),
                    "mcmc_p_benefit": p,
                    "mcmc_p_benefit_mcse": p_mcse,
                    "mcmc_ess_benefit": ess,
                    "mcmc_p_benefit_rb": p_rb,
                    "fast_p_mcid": float(fast["p_mcid"][i, a]),
                    "mcmc_p_mcid": p_mcid,
                    "mcmc_p_mcid_mcse": p_mcid_mcse,
                    "mcmc_p_mcid_rb": p_mcid_rb,
                    "fast_success": bool(fast["success"][i, a]),
                    "mcmc_success": bool(success),
                    "mcmc_success_rb": bool(p_rb > analysis.threshold and (not analysis.dual or p_mcid_rb > analysis.mcid_prob)),
                    "draws": int(eff.size),
                }
            )
    table = pd.DataFrame(rows)
    agree = table["fast_success"] == table["mcmc_success"]
    diff = (table["fast_p_benefit"] - table["mcmc_p_benefit"]).abs()
    diff_mcid = (table["fast_p_mcid"] - table["mcmc_p_mcid"]).abs()
    bound = np.maximum(P_FLOOR, MCSE_MULTIPLE * table["mcmc_p_benefit_mcse"])
    bound_mcid = np.maximum(P_FLOOR, MCSE_MULTIPLE * table["mcmc_p_mcid_mcse"])
    summary = {
        "trials": int(n_trials),
        "comparisons": int(len(table)),
        "analysis": "mmrm",
        "dropout_mechanism": trial.dropout_mechanism,
        "n_per_arm": trial.n_control,
        "draws_per_trial": int(table["draws"].min()),
        "agreement_rate": float(agree.mean()),
        "disagreements": int((~agree).sum()),
        "fast_success_rate": float(table["fast_success"].mean()),
        "mcmc_success_rate": float(table["mcmc_success"].mean()),
        "max_abs_diff_p_benefit": float(diff.max()),
        "mean_diff_p_benefit": float((table["fast_p_benefit"] - table["mcmc_p_benefit"]).mean()),
        "max_abs_diff_p_benefit_in_mcse": float((diff / table["mcmc_p_benefit_mcse"].where(table["mcmc_p_benefit_mcse"] > 0)).max()),
        "max_mcse_p_benefit": float(table["mcmc_p_benefit_mcse"].max()),
        "max_abs_diff_p_mcid": float(diff_mcid.max()),
        "p_bound": f"max({P_FLOOR:g}, {MCSE_MULTIPLE:g} MCSE)",
        "p_outside_bound": int(((diff > bound) | (diff_mcid > bound_mcid)).sum()),
        "max_abs_diff_mean_in_sd": float(((table["fast_mean"] - table["mcmc_mean"]).abs() / table["fast_sd"]).max()),
        "max_rel_diff_sd": float(((table["fast_sd"] - table["mcmc_sd"]).abs() / table["fast_sd"]).max()),
        "disagreements_outside_band": int((~agree & ((table["fast_p_benefit"] - analysis.threshold).abs() > bound)).sum()),
        "agreement_rate_rb": float((table["fast_success"] == table["mcmc_success_rb"]).mean()),
        "max_abs_diff_p_benefit_rb": float((table["fast_p_benefit"] - table["mcmc_p_benefit_rb"]).abs().max()),
    }
    return table, summary


def mmrm_validation(sample: Callable, n_trials: int = 100, seed: int = 20261129) -> tuple[pd.DataFrame, dict]:
    """The documented check of the closed-form MMRM against the project's Bayesian MMRM (docs/planning.md):
    scores from the published-trial calibration of the trajectory model (fixed_parameters: IL-6 moderating
    change in both arms, rounded and clipped MADRS), the NAC effect at week 12 from a design prior
    Normal(-2, 1) so that decisions fall on both sides, 100 per arm, visits at weeks 0, 2, 4, 6, 8, 12,
    MAR dropout of 25% by week 12 (log-odds 1 per 5 points of the last score), success if
    P(effect < 0) > 0.975 with a Normal(0, 6) prior."""
    from .params import fixed_parameters

    params = fixed_parameters().with_effect_prior(-2.0, 1.0)
    trial = PlannedTrial(100, weeks=(0, 2, 4, 6, 8, 12), primary_week=12, dropout=0.25, dropout_mechanism="mar", dropout_score_effect=1.0)
    return mmrm_agreement(params, trial, AnalysisSettings(), sample, n_trials=n_trials, seed=seed)
