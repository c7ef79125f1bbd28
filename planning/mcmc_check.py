"""Agreement of the fast analyses with full MCMC on simulated trials.

The MMRM (`mmrm_agreement`): each simulated trial becomes a dataset (one site, the design's schedule,
the attended visits), is analysed by the closed-form MMRM (planning/mmrm_gls.py: REML, then the
posterior given Sigma at its estimate) and by the project's Bayesian MMRM (models/mmrm.py, with the
analysis' priors on visit means, treatment effects and baseline slopes, its own on Sigma), sampled by
the `sample` function given (plan.py
passes the project's sampler; planning itself does not import inference). P(benefit) is read from the
draws in two ways: the fraction of draws of the primary-visit effect below 0, and its Rao-Blackwell
form, the average over the draws of Sigma of the exact conditional posterior probability (given
Sigma the MMRM's mean coefficients have a normal posterior: generalised least squares plus the
normal priors of visit_mean, nac_visit_effect and baseline_slope), which has far less Monte Carlo
error. Decisions are taken from the Rao-Blackwell form.

The ANCOVA (`mcmc_agreement`): the same ANCOVA written as a PyMC model and sampled with NUTS (nutpie):
    change_i ~ Normal(a + effect T_i + b (baseline_i - mean baseline), sigma)   (completers only)
    effect ~ Normal(0, prior_sd), a ~ Normal(0, R), b ~ Normal(0, 10), sigma ~ HalfNormal(R)
with R the outcome range. The model is compiled once; each simulated trial is swapped in as data
(participants who dropped out get weight 0, so every trial has the same array shapes). The decision
P(effect < 0) > threshold (and the dual criterion when set) is taken from the MCMC draws and compared
with the fast analysis' decision for the same trial.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable

import numpy as np
import pandas as pd
from scipy import special

from .mmrm_gls import Q, gls, pattern_stats
from .params import ParameterSet
from .simulate import AnalysisSettings, PlannedTrial, Scenario, SimulatedTrials, analyse, simulate_trials


def _ancova_model(n: int, prior_sd: float, score_range: float):
    import pymc as pm

    zeros = np.zeros(n)
    with pm.Model(coords={"participant": np.arange(n)}) as model:
        change = pm.Data("change", zeros, dims="participant")
        base = pm.Data("baseline_centred", zeros, dims="participant")
        treated = pm.Data("treated", zeros, dims="participant")
        weight = pm.Data("weight", np.ones(n), dims="participant")
        a = pm.Normal("a", 0.0, score_range)
        effect = pm.Normal("effect", 0.0, prior_sd)
        b = pm.Normal("b", 0.0, 10.0)
        sigma = pm.HalfNormal("sigma", score_range)
        mu = a + effect * treated + b * base
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
    sim = simulate_trials(params, trial, scenario, n_trials, rng)
    fast = analyse(sim, analysis)
    model = _ancova_model(trial.n_total, analysis.prior_sd, params.scale.score_range)
    compiled = nutpie.compile_pymc_model(model, backend="numba")
    rows = []
    for i in range(n_trials):
        w = sim.completed[i].astype(float)
        base = sim.y0[i] - (w * sim.y0[i]).sum() / w.sum()
        data = compiled.with_data(change=sim.yp[i] - sim.y0[i], baseline_centred=base, treated=sim.treated, weight=w)
        idata = nutpie.sample(data, draws=draws, tune=tune, chains=chains, cores=1, seed=int(rng.integers(2**31)), progress_bar=False)
        eff = idata.posterior["effect"].values.ravel()
        p_benefit = float(np.mean(eff < 0))
        p_mcid = float(np.mean(eff < -analysis.mcid))
        success = p_benefit > analysis.threshold and (not analysis.dual or p_mcid > analysis.mcid_prob)
        rows.append(
            {
                "trial": i,
                "true_effect": float(sim.true_effect[i]),
                "fast_mean": float(fast["post_mean"][i]),
                "mcmc_mean": float(eff.mean()),
                "fast_sd": float(fast["post_sd"][i]),
                "mcmc_sd": float(eff.std(ddof=1)),
                "fast_p_benefit": float(fast["p_benefit"][i]),
                "mcmc_p_benefit": p_benefit,
                "fast_success": bool(fast["success"][i]),
                "mcmc_success": bool(success),
                "divergences": int(idata.sample_stats["diverging"].sum()),
            }
        )
    table = pd.DataFrame(rows)
    agree = table["fast_success"] == table["mcmc_success"]
    summary = {
        "trials": int(n_trials),
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
    schedule, scores of the attended visits only."""
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
        integer_scores=bool(scale.integer_scores), control_arm=arms[0], treatment_arm=arms[1],
        weeks=weeks, treatment_end=int(min(scale.treatment_end, max(weeks))), biomarker_weeks=(), title=f"simulated trial {i}",
    )
    treated = sim.treated.astype(np.int8)
    ds = xr.Dataset(
        {
            "arm": ("participant", np.where(treated == 1, arms[1], arms[0])),
            "treated": ("participant", treated),
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
    """Per posterior draw of Sigma: P(effect < 0 | Sigma, data) and P(effect < -mcid | Sigma, data) at the
    primary visit, from the exact normal conditional posterior of the MMRM's mean coefficients.
    Needs a model without site and covariate terms (one site, no covariates)."""
    from models.mmrm import mmrm_data

    if "site_effect" in posterior or "covariate_effect" in posterior:
        raise ValueError("the conditional form covers a single-site MMRM without covariates")
    d = mmrm_data(built.design)
    v = len(d.visits)
    observed = ~np.isnan(d.change)
    attended = observed.sum(axis=1)
    if not np.array_equal(observed, np.arange(v)[None, :] < attended[:, None]):
        raise ValueError("the conditional form here covers drop-out (prefix) patterns only")
    treated = built.design.treated[d.rows]
    stats = pattern_stats(np.nan_to_num(d.change)[None], attended[None], treated[None], d.baseline[None])
    sd = posterior["visit_sd"].stack(sample=("chain", "draw")).transpose("sample", ...).values
    corr = posterior["visit_corr"].stack(sample=("chain", "draw")).transpose("sample", ...).values
    sigma = corr * sd[:, :, None] * sd[:, None, :]
    k = len(sigma)
    many = type(stats)(*(np.broadcast_to(a, (k,) + a.shape[1:]) for a in (stats.n, stats.sxx, stats.scx, stats.scc, stats.n_arm)))
    pri = built.priors
    scales = np.array([pri["visit_mean"].params["sigma"], pri["nac_visit_effect"].params["sigma"], pri["baseline_slope"].params["sigma"]], float)
    means = np.array([pri["visit_mean"].params.get("mu", 0.0), pri["nac_visit_effect"].params.get("mu", 0.0), pri["baseline_slope"].params.get("mu", 0.0)], float)
    fit = gls(many, sigma, prior_precision=np.tile(1 / scales**2, v), prior_mean=np.tile(means, v))
    j = list(d.visits).index(int(visit_week))
    m, s = fit.beta[:, j, 1], np.sqrt(fit.cov[:, j * Q + 1, j * Q + 1])
    return special.ndtr(-m / s), special.ndtr((-mcid - m) / s)


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
    and by the project's Bayesian MMRM (`sample(built, seed)` returns its posterior); per-trial rows and
    a summary. Decisions of the MCMC side use the Rao-Blackwell P(benefit) (module docstring)."""
    from models import build_design, get

    scenario = scenario or Scenario("assurance")
    analysis = replace(analysis, method="mmrm")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7927,)))
    sim = simulate_trials(params, trial, scenario, n_trials, rng)
    fast = analyse(sim, analysis)
    primary = int(trial.primary_week)
    rows = []
    for i in range(n_trials):
        design = build_design(trial_dataset(sim, i, trial.weeks, params.scale))
        spec = get("mmrm")
        defaults = spec.default_priors(design)
        wanted = {"visit_mean": analysis.visit_mean_prior_sd, "nac_visit_effect": analysis.prior_sd, "baseline_slope": analysis.baseline_slope_prior_sd}
        priors = {k: {"params": {"sigma": sd}} for k, sd in wanted.items() if abs(defaults[k].params["sigma"] - sd) > 1e-12} or None
        built = spec.build(design, priors=priors)
        post = sample(built, int(rng.integers(2**31)))
        eff = post["nac_visit_effect"].sel(visit=primary).values.ravel()
        p_rb, p_mcid_rb = (x.mean() for x in conditional_p_benefit(post, built, primary, analysis.mcid))
        success = p_rb > analysis.threshold and (not analysis.dual or p_mcid_rb > analysis.mcid_prob)
        rows.append(
            {
                "trial": i,
                "true_effect": float(sim.true_effect[i]),
                "completers": int(sim.completed[i].sum()),
                "fast_estimate": float(fast["estimate"][i]),
                "fast_se": float(fast["se"][i]),
                "fast_mean": float(fast["post_mean"][i]),
                "mcmc_mean": float(eff.mean()),
                "fast_sd": float(fast["post_sd"][i]),
                "mcmc_sd": float(eff.std(ddof=1)),
                "fast_p_benefit": float(fast["p_benefit"][i]),
                "mcmc_p_benefit": float(p_rb),
                "mcmc_p_benefit_draws": float(np.mean(eff < 0)),
                "fast_p_mcid": float(fast["p_mcid"][i]),
                "mcmc_p_mcid": float(p_mcid_rb),
                "fast_success": bool(fast["success"][i]),
                "mcmc_success": bool(success),
                "mcmc_success_draws": bool(np.mean(eff < 0) > analysis.threshold and (not analysis.dual or np.mean(eff < -analysis.mcid) > analysis.mcid_prob)),
            }
        )
    table = pd.DataFrame(rows)
    agree = table["fast_success"] == table["mcmc_success"]
    summary = {
        "trials": int(n_trials),
        "analysis": "mmrm",
        "dropout_mechanism": trial.dropout_mechanism,
        "n_per_arm": trial.n_control,
        "agreement_rate": float(agree.mean()),
        "disagreements": int((~agree).sum()),
        "agreement_rate_draws": float((table["fast_success"] == table["mcmc_success_draws"]).mean()),
        "fast_success_rate": float(table["fast_success"].mean()),
        "mcmc_success_rate": float(table["mcmc_success"].mean()),
        "max_abs_diff_p_benefit": float((table["fast_p_benefit"] - table["mcmc_p_benefit"]).abs().max()),
        "max_abs_diff_p_benefit_draws": float((table["fast_p_benefit"] - table["mcmc_p_benefit_draws"]).abs().max()),
        "max_abs_diff_mean_in_sd": float(((table["fast_mean"] - table["mcmc_mean"]).abs() / table["fast_sd"]).max()),
        "max_rel_diff_sd": float(((table["fast_sd"] - table["mcmc_sd"]).abs() / table["fast_sd"]).max()),
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
