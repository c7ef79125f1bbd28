"""Agreement of the fast analysis with full MCMC on simulated trials.

The reference is the same ANCOVA written as a PyMC model and sampled with NUTS (nutpie):
    change_i ~ Normal(a + effect T_i + b (baseline_i - mean baseline), sigma)   (completers only)
    effect ~ Normal(0, prior_sd), a ~ Normal(0, R), b ~ Normal(0, 10), sigma ~ HalfNormal(R)
with R the outcome range. The model is compiled once; each simulated trial is swapped in as data
(participants who dropped out get weight 0, so every trial has the same array shapes). The decision
P(effect < 0) > threshold (and the dual criterion when set) is taken from the MCMC draws and compared
with the fast analysis' decision for the same trial.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .params import ParameterSet
from .simulate import AnalysisSettings, PlannedTrial, Scenario, analyse, simulate_trials


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
